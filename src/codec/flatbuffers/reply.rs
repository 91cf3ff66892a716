//! The `http_req_call` stop and rewrite replies and the `http_resp_call` reply, written by hand
//! into the output buffer. The crate's `FlatBufferBuilder` builds back to front and spends most
//! of such a reply's cost on vtable bookkeeping (deduplicating vtables it has already written)
//! and string creation; these replies have a small layout fixed by the schema, so they are laid
//! out here front to back in one pass, each offset patched in once its target is written.
//!
//! Encoding (flatbuffers.dev, "internals"): byte 0 holds the root table's offset. An offset
//! (`uoffset`, u32) is counted from where it is stored and points forward, so every object is
//! written after whatever refers to it. A table starts with an i32 that locates its vtable (the
//! vtable lies at `table - i32`; here it always sits just before its table); the vtable is u16s:
//! its own size in bytes, the table's size, then per field id the field's offset within the
//! table, 0 for absent. A string is a u32 length, the bytes and a NUL the length leaves out; a
//! byte vector the same without the NUL; a vector of tables a u32 count then one offset each.
//! Every table, offset, length and u32 is 4-byte aligned and every u16 2-byte aligned, counted
//! from the payload's start.
//!
//! Fields are written as the builder-based encoder writes them (the module docs' wire quirks):
//! an absent value stays absent, an empty list is left out, a rewrite's path and body and a
//! response's body are written when `Some` (even empty), a stop's body when not empty. Scalars
//! are always present (a 0 reads the same as an absent one). The unit tests decode every field
//! combination with the verifying gateway decoder and compare with the builder's encoding.

use super::schema;
use crate::model::{HttpReqCallResp, HttpRespCallResp, Pair, ReqAction, Rewrite, Stop};

/// Appends a stop or rewrite reply to `out`. Continue replies are copied from the codec's
/// template instead.
pub(super) fn write_http_req_call_resp(msg: &HttpReqCallResp, out: &mut Vec<u8>) {
    use schema::HttpReqCallResp as S;
    let mut buf = Buffer::begin(out);
    match &msg.action {
        ReqAction::Stop(stop) => {
            let action = write_root(&mut buf, msg.id, S::STOP);
            write_stop(&mut buf, action, stop);
        }
        ReqAction::Rewrite(rewrite) => {
            let action = write_root(&mut buf, msg.id, S::REWRITE);
            write_rewrite(&mut buf, action, rewrite);
        }
        ReqAction::Continue => unreachable!("a continue reply is copied from its template"),
    }
}

/// The `HTTPReqCall.Resp` root: id (id 0), action_type (id 1), action (id 2). Returns where
/// the offset to the action's table lies.
fn write_root(buf: &mut Buffer<'_>, id: u32, tag: u8) -> usize {
    // Table: vtable locator, id, action, action_type.
    const ID: u16 = 4;
    const ACTION: u16 = 8;
    const ACTION_TYPE: u16 = 12;
    let root = buf.table(0, &[ID, ACTION_TYPE, ACTION], ACTION_TYPE + 1);
    buf.put(root + usize::from(ID), &id.to_le_bytes());
    buf.put(root + usize::from(ACTION_TYPE), &[tag]);
    root + usize::from(ACTION)
}

/// Stop: status (id 0), headers (id 1), body (id 2).
fn write_stop(buf: &mut Buffer<'_>, from: usize, stop: &Stop) {
    // Table: vtable locator, headers, body, status.
    const HEADERS: u16 = 4;
    const BODY: u16 = 8;
    const STATUS: u16 = 12;
    let headers = present(!stop.headers.is_empty(), HEADERS);
    let body = present(!stop.body.is_empty(), BODY);
    let t = buf.table(from, &[STATUS, headers, body], STATUS + 2);
    buf.put(t + usize::from(STATUS), &stop.status.to_le_bytes());
    if headers != 0 {
        buf.entries(t + usize::from(HEADERS), &stop.headers);
    }
    if body != 0 {
        buf.bytes(t + usize::from(BODY), &stop.body, false);
    }
}

/// Rewrite: path (id 0), headers (id 1), args (id 2), resp_headers (id 3), body (id 4), laid
/// out in that order after the vtable locator.
fn write_rewrite(buf: &mut Buffer<'_>, from: usize, rw: &Rewrite) {
    let lists = [&rw.headers, &rw.args, &rw.resp_headers];
    let mut fields = [0u16; 5];
    fields[0] = present(rw.path.is_some(), 4);
    for (i, list) in lists.iter().enumerate() {
        fields[i + 1] = present(!list.is_empty(), 8 + 4 * i as u16);
    }
    fields[4] = present(rw.body.is_some(), 20);
    let t = buf.table(from, &fields, 24);
    if let Some(path) = &rw.path {
        buf.bytes(t + 4, path.as_bytes(), true);
    }
    for (i, list) in lists.into_iter().enumerate() {
        if !list.is_empty() {
            buf.entries(t + 8 + 4 * i, list);
        }
    }
    if let Some(body) = &rw.body {
        buf.bytes(t + 20, body, false);
    }
}

/// Appends an `http_resp_call` reply to `out`: id (id 0), status (id 1), headers (id 2), body
/// (id 3).
pub(super) fn write_http_resp_call_resp(msg: &HttpRespCallResp, out: &mut Vec<u8>) {
    // Table: vtable locator, id, headers, body, status.
    const ID: u16 = 4;
    const HEADERS: u16 = 8;
    const BODY: u16 = 12;
    const STATUS: u16 = 16;
    let mut buf = Buffer::begin(out);
    let headers = present(!msg.headers.is_empty(), HEADERS);
    let body = present(msg.body.is_some(), BODY);
    let t = buf.table(0, &[ID, STATUS, headers, body], STATUS + 2);
    buf.put(t + usize::from(ID), &msg.id.to_le_bytes());
    buf.put(t + usize::from(STATUS), &msg.status.to_le_bytes());
    if headers != 0 {
        buf.entries(t + usize::from(HEADERS), &msg.headers);
    }
    if let Some(body) = &msg.body {
        buf.bytes(t + usize::from(BODY), body, false);
    }
}

/// A vtable entry: the field's place in its table, or 0 (absent).
fn present(is: bool, at: u16) -> u16 {
    if is {
        at
    } else {
        0
    }
}

/// One FlatBuffers buffer being appended to `out`, addressed in bytes from its start (where
/// alignment is counted from). Every object is padded to a multiple of 4 bytes, so the next
/// one starts aligned without a check.
struct Buffer<'a> {
    out: &'a mut Vec<u8>,
    /// Where byte 0 of the buffer lies in `out`.
    base: usize,
}

impl<'a> Buffer<'a> {
    /// Starts a buffer with its root offset (patched in by the root table's [`Buffer::table`]).
    fn begin(out: &'a mut Vec<u8>) -> Buffer<'a> {
        let base = out.len();
        out.extend_from_slice(&[0; 4]);
        Buffer { out, base }
    }

    fn len(&self) -> usize {
        self.out.len() - self.base
    }

    /// Writes `bytes` at buffer position `at`.
    fn put(&mut self, at: usize, bytes: &[u8]) {
        let at = self.base + at;
        self.out[at..at + bytes.len()].copy_from_slice(bytes);
    }

    /// Aims the offset stored at `from` at `target`.
    fn aim(&mut self, from: usize, target: usize) {
        let offset = u32::try_from(target - from).expect("a reply fits a frame");
        self.put(from, &offset.to_le_bytes());
    }

    /// Writes a vtable with `fields` (each field's place in the table, 0 when absent) and then
    /// a zeroed table of `size` bytes, aimed at by the offset at `from`; returns the table's
    /// position.
    fn table(&mut self, from: usize, fields: &[u16], size: u16) -> usize {
        let vtable_size = 4 + 2 * fields.len();
        // The table after the vtable must start 4-byte aligned.
        if !vtable_size.is_multiple_of(4) {
            self.out.extend_from_slice(&[0; 2]);
        }
        let vtable = self.len();
        let vtable_size = u16::try_from(vtable_size).expect("a schema table has few fields");
        self.out.extend_from_slice(&vtable_size.to_le_bytes());
        self.out.extend_from_slice(&size.to_le_bytes());
        for field in fields {
            self.out.extend_from_slice(&field.to_le_bytes());
        }
        let table = self.len();
        self.aim(from, table);
        let end = self.out.len() + usize::from(size).next_multiple_of(4);
        self.out.resize(end, 0);
        // The vtable lies at `table - locator`.
        let locator = i32::try_from(table - vtable).expect("a vtable is small");
        self.put(table, &locator.to_le_bytes());
        table
    }

    /// A string (`nul`: with its terminating NUL) or a byte vector, aimed at by the offset at
    /// `from`.
    fn bytes(&mut self, from: usize, bytes: &[u8], nul: bool) {
        self.aim(from, self.len());
        self.append(bytes, nul);
    }

    /// A string or byte vector at the end of the buffer: length, bytes, the NUL if `nul`, and
    /// zeros to the next multiple of 4.
    fn append(&mut self, bytes: &[u8], nul: bool) {
        let len = u32::try_from(bytes.len()).expect("a reply fits a frame");
        self.out.extend_from_slice(&len.to_le_bytes());
        self.out.extend_from_slice(bytes);
        let padding = (bytes.len() + usize::from(nul)).next_multiple_of(4) - bytes.len();
        self.out.extend_from_slice(&[0; 4][..padding]);
    }

    /// A `[TextEntry]` vector, aimed at by the offset at `from`; each entry (its vtable, its
    /// table, then its name and value) follows the vector.
    fn entries(&mut self, from: usize, pairs: &[Pair]) {
        self.aim(from, self.len());
        let count = u32::try_from(pairs.len()).expect("a reply fits a frame");
        self.out.extend_from_slice(&count.to_le_bytes());
        let first = self.len();
        self.out.resize(self.out.len() + 4 * pairs.len(), 0);
        for (i, pair) in pairs.iter().enumerate() {
            let table = self.len() + ENTRY_VTABLE;
            self.aim(first + 4 * i, table);
            let name_size = 4 + (pair.name.len() + 1).next_multiple_of(4);
            self.out
                .extend_from_slice(&entry_head(pair.value.is_some(), name_size));
            self.append(pair.name.as_bytes(), true);
            if let Some(value) = &pair.value {
                self.append(value.as_bytes(), true);
            }
        }
    }
}

/// Bytes of a `TextEntry`'s vtable (its own size, the table's, name's and value's places).
const ENTRY_VTABLE: usize = 8;

/// A `TextEntry`'s vtable and table in one piece (an entry is written per header, so this is
/// the hot part): name (id 0) at table byte 4, pointing just past the table; value (id 1) at
/// byte 8, pointing past the name's `name_size` bytes, or absent.
fn entry_head(has_value: bool, name_size: usize) -> [u8; ENTRY_VTABLE + 12] {
    const NAME: u16 = 4;
    const VALUE: u16 = 8;
    const TABLE: u16 = 12;
    let mut head = [0; ENTRY_VTABLE + 12];
    head[0..2].copy_from_slice(&(ENTRY_VTABLE as u16).to_le_bytes());
    head[2..4].copy_from_slice(&TABLE.to_le_bytes());
    head[4..6].copy_from_slice(&NAME.to_le_bytes());
    // The table: its vtable locator, then the two offsets, each counted from where it lies.
    head[8..12].copy_from_slice(&(ENTRY_VTABLE as i32).to_le_bytes());
    head[12..16].copy_from_slice(&u32::from(TABLE - NAME).to_le_bytes());
    if has_value {
        head[6..8].copy_from_slice(&VALUE.to_le_bytes());
        let value = usize::from(TABLE - VALUE) + name_size;
        let value = u32::try_from(value).expect("a reply fits a frame");
        head[16..20].copy_from_slice(&value.to_le_bytes());
    }
    head
}

#[cfg(test)]
mod tests {
    use ::flatbuffers::{ForwardsUOffset, Verifiable, Verifier, VerifierOptions};
    use bytes::Bytes;

    use super::*;
    use crate::codec::flatbuffers::FlatBuffersCodec;
    use crate::codec::GatewayCodec;

    fn pair_lists() -> Vec<Vec<Pair>> {
        let many = (0..300)
            .map(|i| Pair::new(format!("x-h{i}"), "v".repeat(i % 7)))
            .collect();
        vec![
            vec![],
            vec![Pair::absent("x-only-gone")],
            vec![
                Pair::new("x-a", "1"),
                Pair::absent("x-gone"),
                Pair::new("x-empty", ""),
                Pair::new("x-unicode", "éèêë ✓ 𝄞"),
                Pair::new(
                    "",
                    "a value long enough to cross several alignment boundaries",
                ),
                Pair::new("x-abc", "abc"),
            ],
            many,
        ]
    }

    fn bodies() -> Vec<Bytes> {
        [&b""[..], b"x", b"abc", b"abcd", b"\0binary\xff"]
            .iter()
            .map(|b| Bytes::copy_from_slice(b))
            .chain([Bytes::from(vec![7; 70_000])])
            .collect()
    }

    const IDS: [u32; 4] = [0, 1, 0xDEAD_BEEF, u32::MAX];

    /// Every stop and rewrite whose fields take each shape: absent, empty, and present at
    /// lengths around the 4-byte alignment.
    fn req_replies() -> Vec<HttpReqCallResp> {
        let lists = pair_lists();
        let mut actions = Vec::new();
        for status in [0, 200, 403, u16::MAX] {
            for headers in &lists {
                for body in bodies() {
                    actions.push(ReqAction::Stop(Stop {
                        status,
                        headers: headers.clone(),
                        body,
                    }));
                }
            }
        }
        let paths = [None, Some(""), Some("/"), Some("/abc"), Some("/a/ü/longer")];
        for body in std::iter::once(None).chain(bodies().into_iter().map(Some)) {
            for path in paths {
                // Each list takes each shape at least once, in varying combinations.
                for mask in 0..lists.len() * lists.len() {
                    let list = |k: usize| lists[(mask / k.max(1) + k) % lists.len()].clone();
                    actions.push(ReqAction::Rewrite(Rewrite {
                        path: path.map(Into::into),
                        headers: list(0),
                        args: list(1),
                        resp_headers: list(lists.len()),
                        body: body.clone(),
                    }));
                }
            }
        }
        actions
            .into_iter()
            .zip(IDS.into_iter().cycle())
            .map(|(action, id)| HttpReqCallResp { id, action })
            .collect()
    }

    fn resp_replies() -> Vec<HttpRespCallResp> {
        let mut replies = Vec::new();
        for (status, id) in [0, 200, 502, u16::MAX].into_iter().zip(IDS) {
            for headers in pair_lists() {
                for body in std::iter::once(None).chain(bodies().into_iter().map(Some)) {
                    replies.push(HttpRespCallResp {
                        id,
                        status,
                        headers: headers.clone(),
                        body,
                    });
                }
            }
        }
        replies
    }

    /// Runs a writer after some bytes already in the output (a reply is appended to a frame
    /// header) and returns what it appended, checked with the crate's verifier at its
    /// strictest (NUL-terminated strings included) as a root `V`.
    fn written<V: Verifiable>(write: impl FnOnce(&mut Vec<u8>)) -> Bytes {
        let mut out = b"kept!".to_vec();
        write(&mut out);
        assert_eq!(&out[..5], b"kept!", "appends");
        let payload = Bytes::from(out.split_off(5));
        let options = VerifierOptions::default();
        let mut verifier = Verifier::new(&options, &payload);
        <ForwardsUOffset<V>>::run_verifier(&mut verifier, 0).expect("a valid buffer");
        payload
    }

    #[test]
    fn every_req_call_reply_reads_as_the_builders() {
        let mut codec = FlatBuffersCodec::new();
        for msg in req_replies() {
            let hand = written::<schema::HttpReqCallResp>(|o| write_http_req_call_resp(&msg, o));
            let mut built = Vec::new();
            codec.encode_http_req_call_resp_built(&msg, &mut built);
            let gateway = FlatBuffersCodec::new();
            let decoded = gateway
                .decode_http_req_call_resp(&hand)
                .unwrap_or_else(|e| panic!("{msg:?}: {e:?}"));
            assert_eq!(decoded, msg);
            let from_builder = gateway.decode_http_req_call_resp(&Bytes::from(built));
            assert_eq!(decoded, from_builder.unwrap());
        }
    }

    #[test]
    fn every_resp_call_reply_reads_as_the_builders() {
        let mut codec = FlatBuffersCodec::new();
        for msg in resp_replies() {
            let hand = written::<schema::HttpRespCallResp>(|o| write_http_resp_call_resp(&msg, o));
            let mut built = Vec::new();
            codec.encode_http_resp_call_resp_built(&msg, &mut built);
            let gateway = FlatBuffersCodec::new();
            let decoded = gateway
                .decode_http_resp_call_resp(&hand)
                .unwrap_or_else(|e| panic!("{msg:?}: {e:?}"));
            assert_eq!(decoded, msg);
            let from_builder = gateway.decode_http_resp_call_resp(&Bytes::from(built));
            assert_eq!(decoded, from_builder.unwrap());
        }
    }

    /// What the gateway tells apart by presence: a rewrite's empty path or body is written
    /// (present, empty), an absent one and an empty list are not there at all, and an entry
    /// without a value has no value field.
    #[test]
    fn absent_fields_stay_absent_on_the_wire() {
        use super::super::table::Table;
        use schema::Rewrite as R;
        let msg = HttpReqCallResp {
            id: 5,
            action: ReqAction::Rewrite(Rewrite {
                path: Some("".into()),
                headers: vec![Pair::absent("x-gone")],
                ..Rewrite::default()
            }),
        };
        let payload = written::<schema::HttpReqCallResp>(|o| write_http_req_call_resp(&msg, o));
        let root = Table::root(&payload).unwrap();
        let rewrite = root
            .table(schema::HttpReqCallResp::ACTION)
            .unwrap()
            .unwrap();
        assert_eq!(rewrite.bytes(R::PATH).unwrap(), Some(&b""[..]));
        assert_eq!(rewrite.bytes(R::BODY).unwrap(), None);
        assert_eq!(rewrite.tables(R::ARGS).unwrap().len(), 0);
        assert!(rewrite.table(R::ARGS).unwrap().is_none());
        let entry = rewrite.tables(R::HEADERS).unwrap().next().unwrap().unwrap();
        assert_eq!(entry.bytes(schema::TextEntry::VALUE).unwrap(), None);
    }
}
