//! Reading FlatBuffers tables with safe, bounds-checked code.
//!
//! The `flatbuffers` crate reads through `unsafe` accessors that trust an earlier verification;
//! this crate forbids unsafe code, and a verification visits every field of a buffer before the
//! first is read. So the runner reads buffers here instead, where every offset, length and
//! vtable is checked as it is followed: a malformed buffer is a decode error, never a panic, and
//! the fields nobody reads cost nothing. (The gateway side, for tests and the replayer, still
//! verifies replies with the crate's verifier first.)
//!
//! [`Table::root`] is the shape test of protocol detection: it accepts a buffer only if
//! its root is a table whose vtable and fields lie inside the buffer.

use std::borrow::Cow;

use ::flatbuffers::VOffsetT;

/// A buffer that is not the FlatBuffers it claims to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl From<Malformed> for Cow<'static, str> {
    fn from(m: Malformed) -> Self {
        Cow::Borrowed(m.0)
    }
}

type Result<T> = std::result::Result<T, Malformed>;

fn u16_at(buf: &[u8], pos: usize) -> Result<u16> {
    let b = buf
        .get(pos..pos.wrapping_add(2))
        .ok_or(Malformed("u16 out of bounds"))?;
    Ok(u16::from_le_bytes([b[0], b[1]]))
}

fn u32_at(buf: &[u8], pos: usize) -> Result<u32> {
    let b = buf
        .get(pos..pos.wrapping_add(4))
        .ok_or(Malformed("u32 out of bounds"))?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Follows the forward offset stored at `pos`.
fn follow(buf: &[u8], pos: usize) -> Result<usize> {
    let off = u32_at(buf, pos)? as usize;
    pos.checked_add(off)
        .filter(|&p| p < buf.len())
        .ok_or(Malformed("offset points outside the buffer"))
}

/// One table of a buffer.
#[derive(Clone, Copy, Debug)]
pub struct Table<'a> {
    buf: &'a [u8],
    pos: usize,
    vtable: usize,
    /// Bytes of the vtable, its two header fields included.
    vtable_len: usize,
    /// Bytes of the table's inline data, its vtable offset included.
    inline_len: usize,
}

impl<'a> Table<'a> {
    /// The root table, for reading: the buffer starts with the root's offset. Only the table
    /// itself is checked here; each field is checked when it is read.
    pub fn open(buf: &'a [u8]) -> Result<Table<'a>> {
        Table::at(buf, follow(buf, 0)?)
    }

    /// The root table, for telling a FlatBuffers buffer from other bytes: [`Table::open`], and
    /// every field the root declares must lie inside it.
    pub fn root(buf: &'a [u8]) -> Result<Table<'a>> {
        let root = Table::open(buf)?;
        // Every field the root declares lies inside it: a cheap shape test that the bytes of
        // some other format almost never pass. Done for the root only, so a hostile vtable shared
        // by many tables cannot multiply the work.
        for slot in (4..root.vtable_len).step_by(2) {
            root.field(slot as VOffsetT)?;
        }
        Ok(root)
    }

    fn at(buf: &'a [u8], pos: usize) -> Result<Table<'a>> {
        if !pos.is_multiple_of(4) {
            return Err(Malformed("table is not 4-byte aligned"));
        }
        // The vtable sits at `pos - soffset`.
        let soffset = u32_at(buf, pos)? as i32;
        let vtable = (pos as i64)
            .checked_sub(i64::from(soffset))
            .and_then(|v| usize::try_from(v).ok())
            .filter(|v| v % 2 == 0)
            .ok_or(Malformed("vtable offset out of bounds"))?;
        let vtable_len = usize::from(u16_at(buf, vtable)?);
        let inline_len = usize::from(u16_at(buf, vtable + 2)?);
        if vtable_len < 4 || vtable_len % 2 != 0 || vtable + vtable_len > buf.len() {
            return Err(Malformed("vtable out of bounds"));
        }
        if inline_len < 4 || pos + inline_len > buf.len() {
            return Err(Malformed("table out of bounds"));
        }
        Ok(Table {
            buf,
            pos,
            vtable,
            vtable_len,
            inline_len,
        })
    }

    /// Where the field at vtable offset `slot` lives; `None` when it is absent.
    fn field(&self, slot: VOffsetT) -> Result<Option<usize>> {
        let slot = usize::from(slot);
        if slot + 2 > self.vtable_len {
            return Ok(None);
        }
        match usize::from(u16_at(self.buf, self.vtable + slot)?) {
            0 => Ok(None),
            off if off < 4 || off >= self.inline_len => Err(Malformed("field outside its table")),
            off => Ok(Some(self.pos + off)),
        }
    }

    /// A `ubyte` field; absent reads as 0.
    pub fn u8(&self, slot: VOffsetT) -> Result<u8> {
        match self.field(slot)? {
            None => Ok(0),
            Some(p) => self
                .buf
                .get(p)
                .copied()
                .ok_or(Malformed("u8 out of bounds")),
        }
    }

    /// A `uint16` field; absent reads as 0.
    pub fn u16(&self, slot: VOffsetT) -> Result<u16> {
        self.field(slot)?.map_or(Ok(0), |p| u16_at(self.buf, p))
    }

    /// A `uint32` field; absent reads as 0.
    pub fn u32(&self, slot: VOffsetT) -> Result<u32> {
        self.field(slot)?.map_or(Ok(0), |p| u32_at(self.buf, p))
    }

    /// Where the object an offset field points to starts; `None` when the field is absent.
    fn target(&self, slot: VOffsetT) -> Result<Option<usize>> {
        self.field(slot)?.map(|p| follow(self.buf, p)).transpose()
    }

    /// A table field.
    pub fn table(&self, slot: VOffsetT) -> Result<Option<Table<'a>>> {
        self.target(slot)?
            .map(|p| Table::at(self.buf, p))
            .transpose()
    }

    /// The length and element start of the vector at `pos`, with room for `elem` bytes each.
    fn vector(&self, pos: usize, elem: usize) -> Result<(usize, usize)> {
        let len = u32_at(self.buf, pos)? as usize;
        let start = pos + 4;
        len.checked_mul(elem)
            .and_then(|n| n.checked_add(start))
            .filter(|&end| end <= self.buf.len())
            .ok_or(Malformed("vector out of bounds"))?;
        Ok((len, start))
    }

    /// A `[ubyte]` field.
    pub fn bytes(&self, slot: VOffsetT) -> Result<Option<&'a [u8]>> {
        let Some(pos) = self.target(slot)? else {
            return Ok(None);
        };
        let (len, start) = self.vector(pos, 1)?;
        Ok(Some(&self.buf[start..start + len]))
    }

    /// A `string` field, checked as UTF-8 (the codec reads strings leniently through
    /// [`Table::bytes`]; tests read them strictly).
    #[cfg(test)]
    pub fn str(&self, slot: VOffsetT) -> Result<Option<&'a str>> {
        self.bytes(slot)?
            .map(|b| std::str::from_utf8(b).map_err(|_| Malformed("string is not UTF-8")))
            .transpose()
    }

    /// A `[Table]` field; an absent vector reads as empty.
    pub fn tables(&self, slot: VOffsetT) -> Result<Tables<'a>> {
        let (len, start) = match self.target(slot)? {
            Some(pos) => self.vector(pos, 4)?,
            None => (0, 0),
        };
        Ok(Tables {
            buf: self.buf,
            next: start,
            end: start + 4 * len,
        })
    }
}

/// The tables of a vector of tables, in order.
pub struct Tables<'a> {
    buf: &'a [u8],
    next: usize,
    end: usize,
}

impl<'a> Tables<'a> {
    /// The `len` tables of a vector whose elements start at `start`, as
    /// [`Tables::location`] gave them. Each element is checked as it is read, so a location that
    /// is not a vector's yields errors, never a panic.
    pub fn at(buf: &'a [u8], start: usize, len: usize) -> Tables<'a> {
        Tables {
            buf,
            next: start,
            end: start.saturating_add(len.saturating_mul(4)),
        }
    }

    /// Where the elements start, and how many there are.
    pub fn location(&self) -> (usize, usize) {
        (self.next, (self.end - self.next) / 4)
    }
}

impl<'a> Iterator for Tables<'a> {
    type Item = Result<Table<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.end {
            return None;
        }
        let at = self.next;
        self.next += 4;
        Some(follow(self.buf, at).and_then(|p| Table::at(self.buf, p)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = (self.end - self.next) / 4;
        (n, Some(n))
    }
}

impl ExactSizeIterator for Tables<'_> {}
