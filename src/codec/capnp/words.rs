//! A small bounds-checked reader of single-segment Cap'n Proto messages, for the one message the
//! runner reads on every call (`HTTPReqCallReq`) and the pairs of its lists.
//!
//! The capnp crate's reader pays, per pointer followed, for segment look-ups, far-pointer
//! handling and traversal accounting; on a call with a dozen headers that was most of the
//! runner's work. The messages our encoders (and gateways built on the standard libraries)
//! send are one segment with near pointers only, so this reader handles exactly that: a struct,
//! text, data or struct-list pointer whose target lies inside the segment. Anything else —
//! several segments, a far pointer, a list of another element size, text without its NUL, a
//! target out of bounds — is [`Unusual`], and the caller asks the crate, which reads every legal
//! encoding and names what is wrong with an illegal one. So this reader never decides that a
//! message is malformed, only that it is not the simple case.
//!
//! Amplification stays bounded without the crate's traversal limit: every list read here is
//! refused past [`crate::codec::MAX_ENTRIES`] elements by the caller, and nothing is followed
//! recursively.

/// Not the simple encoding this reader handles (or not valid at all): ask the crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unusual;

type Result<T> = std::result::Result<T, Unusual>;

/// The segment of a one-segment message: the payload after its 8-byte segment table, whose
/// size must account for every byte.
pub fn single_segment(payload: &[u8]) -> Result<&[u8]> {
    let count = u32_at(payload, 0)?;
    let words = u32_at(payload, 4)? as usize;
    if count != 0 || words.checked_mul(8).and_then(|n| n.checked_add(8)) != Some(payload.len()) {
        return Err(Unusual);
    }
    Ok(&payload[8..])
}

fn u32_at(buf: &[u8], at: usize) -> Result<u32> {
    let b = buf.get(at..at.wrapping_add(4)).ok_or(Unusual)?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn u64_at(buf: &[u8], at: usize) -> Result<u64> {
    let b = buf.get(at..at.wrapping_add(8)).ok_or(Unusual)?;
    let mut w = [0; 8];
    w.copy_from_slice(b);
    Ok(u64::from_le_bytes(w))
}

/// Where the near pointer `p`, stored at byte `at`, points: `(kind, byte offset of its target)`.
fn target(seg: &[u8], at: usize, p: u64) -> Result<(u64, usize)> {
    let kind = p & 3;
    if kind > 1 {
        // A far pointer (2) or a capability (3).
        return Err(Unusual);
    }
    // The offset, in words from the end of the pointer, is the signed upper 30 bits of the
    // low half.
    let offset = i64::from((p as u32 as i32) >> 2);
    let word = (at / 8) as i64 + 1 + offset;
    let byte = usize::try_from(word).map_err(|_| Unusual)?.checked_mul(8);
    byte.filter(|&b| b <= seg.len())
        .map(|b| (kind, b))
        .ok_or(Unusual)
}

/// A struct of a segment: its data section and pointer section.
#[derive(Clone, Copy, Debug)]
pub struct Struct<'a> {
    seg: &'a [u8],
    data: usize,
    data_bytes: usize,
    pointers: usize,
    pointer_count: usize,
}

impl<'a> Struct<'a> {
    /// The root struct; a null root is [`Unusual`] (the crate reads it as all defaults).
    pub fn root(seg: &'a [u8]) -> Result<Struct<'a>> {
        let p = u64_at(seg, 0)?;
        if p == 0 {
            return Err(Unusual);
        }
        Struct::at(seg, 0, p)
    }

    /// The struct the struct pointer `p`, stored at byte `at`, points to.
    fn at(seg: &'a [u8], at: usize, p: u64) -> Result<Struct<'a>> {
        let (kind, data) = target(seg, at, p)?;
        if kind != 0 {
            return Err(Unusual);
        }
        let data_words = ((p >> 32) & 0xFFFF) as usize;
        let pointer_count = (p >> 48) as usize;
        Struct::laid_out(seg, data, data_words, pointer_count)
    }

    fn laid_out(
        seg: &'a [u8],
        data: usize,
        data_words: usize,
        pointer_count: usize,
    ) -> Result<Struct<'a>> {
        let pointers = data + data_words * 8;
        if pointers + pointer_count * 8 > seg.len() {
            return Err(Unusual);
        }
        Ok(Struct {
            seg,
            data,
            data_bytes: data_words * 8,
            pointers,
            pointer_count,
        })
    }

    /// The `u32` at byte `at` of the data section; 0 past its end (an older, smaller struct).
    pub fn u32(&self, at: usize) -> u32 {
        if at + 4 > self.data_bytes {
            return 0;
        }
        u32_at(self.seg, self.data + at).unwrap_or(0)
    }

    /// The `u16` at byte `at` of the data section; 0 past its end.
    pub fn u16(&self, at: usize) -> u16 {
        if at + 2 > self.data_bytes {
            return 0;
        }
        let b = &self.seg[self.data + at..self.data + at + 2];
        u16::from_le_bytes([b[0], b[1]])
    }

    /// Pointer `i` and where it is stored; `None` when null or past the pointer section.
    fn pointer(&self, i: usize) -> Result<Option<(usize, u64)>> {
        if i >= self.pointer_count {
            return Ok(None);
        }
        let at = self.pointers + i * 8;
        let p = u64_at(self.seg, at)?;
        Ok((p != 0).then_some((at, p)))
    }

    /// The bytes of the byte-list pointer `i`; `None` when null.
    fn byte_list(&self, i: usize) -> Result<Option<&'a [u8]>> {
        let Some((at, p)) = self.pointer(i)? else {
            return Ok(None);
        };
        let (kind, start) = target(self.seg, at, p)?;
        // A list of bytes: element size code 2.
        if kind != 1 || (p >> 32) & 7 != 2 {
            return Err(Unusual);
        }
        let len = (p >> 35) as usize;
        self.seg.get(start..start + len).map(Some).ok_or(Unusual)
    }

    /// `Data` pointer `i`; `None` when null.
    pub fn data(&self, i: usize) -> Result<Option<&'a [u8]>> {
        self.byte_list(i)
    }

    /// `Text` pointer `i`, without its NUL; `None` when null.
    pub fn text(&self, i: usize) -> Result<Option<&'a [u8]>> {
        match self.byte_list(i)? {
            Some([text @ .., 0]) => Ok(Some(text)),
            Some(_) => Err(Unusual),
            None => Ok(None),
        }
    }

    /// Struct-list pointer `i`: where its elements lie; an empty list when null.
    pub fn struct_list(&self, i: usize) -> Result<StructList> {
        let Some((at, p)) = self.pointer(i)? else {
            return Ok(StructList::default());
        };
        let (kind, tag_at) = target(self.seg, at, p)?;
        // An inline-composite list (element size code 7): a tag word, then the elements.
        if kind != 1 || (p >> 32) & 7 != 7 {
            return Err(Unusual);
        }
        let words = (p >> 35) as usize;
        let tag = u64_at(self.seg, tag_at)?;
        if tag & 3 != 0 {
            return Err(Unusual);
        }
        let len = ((tag as u32) >> 2) as usize;
        let data_words = ((tag >> 32) & 0xFFFF) as usize;
        let pointer_count = (tag >> 48) as usize;
        let start = tag_at + 8;
        if len * (data_words + pointer_count) > words || start + words * 8 > self.seg.len() {
            return Err(Unusual);
        }
        Ok(StructList {
            start,
            len,
            data_words,
            pointer_count,
        })
    }
}

/// Where the elements of an inline-composite list lie in the segment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StructList {
    pub start: usize,
    pub len: usize,
    pub data_words: usize,
    pub pointer_count: usize,
}

impl StructList {
    /// Element `i` (of the elements [`Struct::struct_list`] checked to lie in the segment).
    pub fn get<'a>(&self, seg: &'a [u8], i: usize) -> Result<Struct<'a>> {
        if i >= self.len {
            return Err(Unusual);
        }
        let words = self.data_words + self.pointer_count;
        Struct::laid_out(
            seg,
            self.start + i * words * 8,
            self.data_words,
            self.pointer_count,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-segment message: the segment table, then `words`.
    fn message(words: &[u64]) -> Vec<u8> {
        let mut out = vec![0, 0, 0, 0];
        out.extend_from_slice(&(words.len() as u32).to_le_bytes());
        for w in words {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out
    }

    fn struct_pointer(offset: i32, data: u16, pointers: u16) -> u64 {
        u64::from((offset << 2) as u32) | u64::from(data) << 32 | u64::from(pointers) << 48
    }

    fn list_pointer(offset: i32, size: u64, count: u64) -> u64 {
        u64::from((offset << 2) as u32) | 1 | size << 32 | count << 35
    }

    #[test]
    fn reads_scalars_text_and_lists_of_a_simple_message() {
        let msg = message(&[
            struct_pointer(0, 1, 2),
            0x0000_0007_0000_002A,
            list_pointer(1, 2, 3), // text "hi\0", one word after this pointer
            list_pointer(1, 7, 1), // one element of one word, after the text
            u64::from_le_bytes(*b"hi\0\0\0\0\0\0"),
            (1 << 2) | 1 << 32, // tag: one element, one data word
            99,
        ]);
        let seg = single_segment(&msg).unwrap();
        let root = Struct::root(seg).unwrap();
        assert_eq!(root.u32(0), 42);
        assert_eq!(root.u16(4), 7);
        assert_eq!(root.u32(8), 0, "past the data section reads as 0");
        assert_eq!(root.text(0).unwrap(), Some(&b"hi"[..]));
        let list = root.struct_list(1).unwrap();
        assert_eq!(list.len, 1);
        assert_eq!(list.get(seg, 0).unwrap().u32(0), 99);
        assert_eq!(
            root.text(5).unwrap(),
            None,
            "past the pointers reads as null"
        );
    }

    #[test]
    fn anything_but_the_simple_case_is_left_to_the_crate() {
        // Two segments.
        assert_eq!(single_segment(&[1, 0, 0, 0, 0, 0, 0, 0]), Err(Unusual));
        // A table that does not account for the payload.
        assert_eq!(single_segment(&message(&[0])[..12]), Err(Unusual));
        // A far pointer as the root.
        let far = message(&[2]);
        assert_eq!(
            Struct::root(single_segment(&far).unwrap()).unwrap_err(),
            Unusual
        );
        // Text pointing past the segment, and text without its NUL.
        let msg = message(&[
            struct_pointer(0, 0, 2),
            list_pointer(5, 2, 3),
            list_pointer(0, 2, 1),
            1,
        ]);
        let root = Struct::root(single_segment(&msg).unwrap()).unwrap();
        assert_eq!(root.text(0), Err(Unusual));
        assert_eq!(root.text(1), Err(Unusual));
        // A struct list whose tag claims more than its words.
        let msg = message(&[
            struct_pointer(0, 0, 1),
            list_pointer(0, 7, 1),
            (5 << 2) | 1 << 32,
            0,
        ]);
        let root = Struct::root(single_segment(&msg).unwrap()).unwrap();
        assert_eq!(root.struct_list(0), Err(Unusual));
    }
}
