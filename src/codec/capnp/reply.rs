//! `http_req_call` replies (stop and rewrite) written straight into the output buffer, word by
//! word, in the standard single-segment Cap'n Proto serialization of `schema/ext_plugin.capnp`.
//!
//! Why not the capnp crate's builder: it allocates its segment table for every message it
//! builds, and the custom allocator that would avoid that needs `unsafe`, which this crate
//! forbids. The layout of these replies is small and fixed by our own schema, so they are laid
//! out here the way the builder lays them out — objects in the order the builder allocates
//! them, each pointer aimed forward at its target — and the unit tests check, for every field
//! combination, that the capnp crate reads back exactly what was written and that the bytes are
//! the builder's own.
//!
//! Encoding (capnproto.org/encoding.html): a segment table (`segment count - 1`, then each
//! segment's size in words, padded to a word), then the segment. Word 0 is the root pointer.
//! A struct pointer holds the target's offset in words from the end of the pointer (bits 2..32),
//! the data section's size in words (bits 32..48) and the pointer count (bits 48..64). A list
//! pointer has tag 1, the offset, the element size (bits 32..35: 2 = bytes, 7 = structs) and the
//! element count (bits 35..64; for structs the words of its elements, which follow a tag word
//! shaped like a struct pointer whose offset field is the element count). Text is a byte list
//! ending in a NUL that the count includes; Data has no NUL. Objects are padded to whole words.

use capnp::private::layout::StructSize;
use capnp::traits::HasStructSize;

use crate::model::{HttpReqCallResp, Pair, ReqAction, Rewrite, Stop};
use crate::proto::ext_plugin_capnp as schema;

const RESP: StructSize = <schema::h_t_t_p_req_call_resp::Builder<'_> as HasStructSize>::STRUCT_SIZE;
const STOP: StructSize = <schema::stop::Builder<'_> as HasStructSize>::STRUCT_SIZE;
const REWRITE: StructSize = <schema::rewrite::Builder<'_> as HasStructSize>::STRUCT_SIZE;
const PAIR: StructSize = <schema::pair::Builder<'_> as HasStructSize>::STRUCT_SIZE;

/// HTTPReqCallResp: `id` is the data section's first u32, the `action` union's discriminant its
/// u16 at byte 4 (1 = stop, 2 = rewrite), and stop or rewrite its pointer 0.
const ACTION_AT: usize = 4;
const ACTION_STOP: u16 = 1;
const ACTION_REWRITE: u16 = 2;

/// List pointer element sizes.
const BYTES: u64 = 2;
const STRUCTS: u64 = 7;

/// Appends the serialization of a stop or rewrite reply to `out`. Continue replies are copied
/// from the codec's template instead.
pub(super) fn write_http_req_call_resp(msg: &HttpReqCallResp, out: &mut Vec<u8>) {
    let mut seg = Segment::begin(out);
    let root_ptr = seg.alloc(1);
    let root = seg.init_struct(root_ptr, RESP);
    seg.put(root, 0, &msg.id.to_le_bytes());
    match &msg.action {
        ReqAction::Stop(stop) => {
            seg.put(root, ACTION_AT, &ACTION_STOP.to_le_bytes());
            let at = seg.pointer(root, RESP, 0);
            write_stop(&mut seg, at, stop);
        }
        ReqAction::Rewrite(rewrite) => {
            seg.put(root, ACTION_AT, &ACTION_REWRITE.to_le_bytes());
            let at = seg.pointer(root, RESP, 0);
            write_rewrite(&mut seg, at, rewrite);
        }
        ReqAction::Continue => unreachable!("a continue reply is copied from its template"),
    }
    seg.finish();
}

/// Stop: `status` u16 at byte 0; pointers headers, body. As the builder is driven, an empty
/// header list or body stays null.
fn write_stop(seg: &mut Segment<'_>, at: usize, stop: &Stop) {
    let s = seg.init_struct(at, STOP);
    seg.put(s, 0, &stop.status.to_le_bytes());
    if !stop.headers.is_empty() {
        seg.pairs(seg.pointer(s, STOP, 0), &stop.headers);
    }
    if !stop.body.is_empty() {
        seg.bytes(seg.pointer(s, STOP, 1), &stop.body, false);
    }
}

/// Rewrite: pointers path, headers, args, respHeaders, body. An absent path or body stays null
/// (present but empty is not null), and so does an empty list.
fn write_rewrite(seg: &mut Segment<'_>, at: usize, rw: &Rewrite) {
    let r = seg.init_struct(at, REWRITE);
    if let Some(path) = &rw.path {
        seg.bytes(seg.pointer(r, REWRITE, 0), path.as_bytes(), true);
    }
    for (index, pairs) in [(1, &rw.headers), (2, &rw.args), (3, &rw.resp_headers)] {
        if !pairs.is_empty() {
            seg.pairs(seg.pointer(r, REWRITE, index), pairs);
        }
    }
    if let Some(body) = &rw.body {
        seg.bytes(seg.pointer(r, REWRITE, 4), body, false);
    }
}

/// The one segment of a message being appended to `out`, addressed in words from its start.
struct Segment<'a> {
    out: &'a mut Vec<u8>,
    /// Where word 0 lies in `out`.
    base: usize,
}

impl<'a> Segment<'a> {
    /// Writes the segment table of a one-segment message (its size patched in by `finish`).
    fn begin(out: &'a mut Vec<u8>) -> Segment<'a> {
        out.extend_from_slice(&[0; 8]);
        let base = out.len();
        Segment { out, base }
    }

    fn finish(self) {
        let words = self.words();
        let size = u32::try_from(words).expect("a reply fits a frame, far below 2^32 words");
        self.out[self.base - 4..self.base].copy_from_slice(&size.to_le_bytes());
    }

    fn words(&self) -> usize {
        (self.out.len() - self.base) / 8
    }

    /// Appends `words` zeroed words; returns the first one's index.
    fn alloc(&mut self, words: usize) -> usize {
        let at = self.words();
        self.out.resize(self.out.len() + words * 8, 0);
        at
    }

    /// Writes `bytes` at byte `offset` of word `word`.
    fn put(&mut self, word: usize, offset: usize, bytes: &[u8]) {
        let at = self.base + word * 8 + offset;
        self.out[at..at + bytes.len()].copy_from_slice(bytes);
    }

    /// The word of pointer `index` of the struct at `at`.
    fn pointer(&self, at: usize, size: StructSize, index: u16) -> usize {
        debug_assert!(index < size.pointers);
        at + usize::from(size.data) + usize::from(index)
    }

    /// Sets pointer word `ptr` to `tag | offset to target | upper`. Targets always follow
    /// their pointers here, so the offset is never negative.
    fn link(&mut self, ptr: usize, target: usize, tag: u64, upper: u64) {
        let offset = (target - ptr - 1) as u64;
        debug_assert!(offset < 1 << 29, "a reply fits a frame");
        self.put(ptr, 0, &(tag | offset << 2 | upper << 32).to_le_bytes());
    }

    /// Allocates a zeroed struct and points `ptr` at it; returns its first word.
    fn init_struct(&mut self, ptr: usize, size: StructSize) -> usize {
        let at = self.alloc(usize::from(size.data) + usize::from(size.pointers));
        self.link(ptr, at, 0, struct_sizes(size));
        at
    }

    /// A Text (`nul`: with its terminating NUL) or a Data value, pointed at by `ptr`.
    fn bytes(&mut self, ptr: usize, bytes: &[u8], nul: bool) {
        let count = bytes.len() + usize::from(nul);
        let at = self.alloc(count.div_ceil(8));
        self.put(at, 0, bytes);
        self.link(ptr, at, 1, BYTES | (count as u64) << 3);
    }

    /// A List(Pair), pointed at by `ptr`; an absent value stays a null pointer.
    fn pairs(&mut self, ptr: usize, pairs: &[Pair]) {
        let per = usize::from(PAIR.data) + usize::from(PAIR.pointers);
        let tag = self.alloc(1 + pairs.len() * per);
        self.link(ptr, tag, 1, STRUCTS | ((pairs.len() * per) as u64) << 3);
        self.put(
            tag,
            0,
            &((pairs.len() as u64) << 2 | struct_sizes(PAIR) << 32).to_le_bytes(),
        );
        for (i, pair) in pairs.iter().enumerate() {
            let element = tag + 1 + i * per;
            self.bytes(self.pointer(element, PAIR, 0), pair.name.as_bytes(), true);
            if let Some(value) = &pair.value {
                self.bytes(self.pointer(element, PAIR, 1), value.as_bytes(), true);
            }
        }
    }
}

/// The upper half of a struct pointer (or a composite list's tag): data words, pointer count.
fn struct_sizes(size: StructSize) -> u64 {
    u64::from(size.data) | u64::from(size.pointers) << 16
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::codec::capnp::CapnpCodec;
    use crate::codec::GatewayCodec;

    fn pair_lists() -> Vec<Vec<Pair>> {
        vec![
            vec![],
            vec![
                Pair::new("x-a", "1"),
                Pair {
                    name: "x-gone".into(),
                    value: None,
                },
                Pair::new("x-empty", ""),
                Pair::new("x-eight-b", "éèêë"),
                Pair::new(
                    "",
                    "a value of more than one word, long enough to span several",
                ),
            ],
        ]
    }

    fn bodies() -> Vec<Bytes> {
        [&b""[..], b"x", b"12345678", b"123456789", b"\0binary\xff"]
            .iter()
            .map(|b| Bytes::copy_from_slice(b))
            .collect()
    }

    /// Every stop and rewrite whose fields take each shape: absent, empty, and present at
    /// word-boundary lengths.
    fn replies() -> Vec<HttpReqCallResp> {
        let mut replies = Vec::new();
        for status in [0, 200, 403, u16::MAX] {
            for headers in pair_lists() {
                for body in bodies() {
                    let stop = Stop {
                        status,
                        headers: headers.clone(),
                        body,
                    };
                    replies.push(ReqAction::Stop(stop));
                }
            }
        }
        let paths = [
            None,
            Some(""),
            Some("/"),
            Some("/seven/"),
            Some("/a/longer/path"),
        ];
        let bodies = std::iter::once(None).chain(bodies().into_iter().map(Some));
        for body in bodies {
            for path in paths {
                for mask in 0..8 {
                    let list = |bit: u32| pair_lists()[usize::from(mask & (1 << bit) != 0)].clone();
                    replies.push(ReqAction::Rewrite(Rewrite {
                        path: path.map(Into::into),
                        headers: list(0),
                        args: list(1),
                        resp_headers: list(2),
                        body: body.clone(),
                    }));
                }
            }
        }
        replies
            .into_iter()
            .zip([0, 1, 0xDEAD_BEEF, u32::MAX].into_iter().cycle())
            .map(|(action, id)| HttpReqCallResp { id, action })
            .collect()
    }

    fn written(msg: &HttpReqCallResp) -> Vec<u8> {
        let mut out = b"kept".to_vec();
        write_http_req_call_resp(msg, &mut out);
        assert_eq!(&out[..4], b"kept", "appends");
        out.split_off(4)
    }

    #[test]
    fn the_capnp_crate_reads_back_every_reply_as_written() {
        let gateway = CapnpCodec::new();
        for msg in replies() {
            let bytes = written(&msg);
            assert!(super::super::segment_table_fits(&bytes), "{msg:?}");
            let decoded = gateway
                .decode_http_req_call_resp(&Bytes::from(bytes))
                .unwrap_or_else(|e| panic!("{msg:?}: {e:?}"));
            assert_eq!(decoded, msg);
        }
    }

    #[test]
    fn the_bytes_are_the_message_builders() {
        let mut codec = CapnpCodec::new();
        for msg in replies() {
            let mut built = Vec::new();
            codec.encode_http_req_call_resp_built(&msg, &mut built);
            assert_eq!(written(&msg), built, "{msg:?}");
        }
    }

    #[test]
    fn a_reply_larger_than_the_builders_scratch_space_is_still_one_segment() {
        let header = Pair::new("x-big", "v".repeat(4000));
        let msg = HttpReqCallResp {
            id: 9,
            action: ReqAction::Rewrite(Rewrite {
                headers: vec![header; 20],
                body: Some(Bytes::from(vec![7; 100_000])),
                ..Rewrite::default()
            }),
        };
        let bytes = written(&msg);
        assert_eq!(bytes[..4], [0; 4], "one segment");
        let decoded = CapnpCodec::new().decode_http_req_call_resp(&Bytes::from(bytes));
        assert_eq!(decoded.unwrap(), msg);
    }
}
