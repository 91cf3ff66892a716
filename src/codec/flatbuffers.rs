//! The FlatBuffers codec: what stock Apache APISIX speaks (ext-plugin-proto v0.6.1,
//! `schema/ext-plugin.fbs`, docs/protocol.md §7).
//!
//! A payload is one finished buffer: root offset at byte 0, no size prefix, no file identifier.
//! The runner reads incoming buffers with its own bounds-checked reader (`table`), field by
//! field as it needs them, without an upfront verification of the whole buffer; a call's
//! headers and arguments are only located ([`Entries`]), their text read when a plugin asks.
//! Strings come out as [`Text`] slices of the payload, so decoding copies nothing. The replies of
//! a call are written by hand straight into the output (`reply`: stop, rewrite, the response
//! phase's), and the continue reply is copied from a template with its id patched in; the rest
//! (prepare_conf, extra_info, errors: rare) is built with the crate's `FlatBufferBuilder`, one
//! per thread so its buffer is reused from reply to reply.
//!
//! Wire quirks kept here: an absent `TextEntry.value` is `None` (a bare flag / a deletion); an
//! absent `ExtraInfo.Resp.result` is `None`, an empty one `Some("")`; `Rewrite.body` and
//! `HTTPRespCall.Resp.body` are written only when `Some` (stock APISIX reads an empty body as "no
//! change" too); `src_ip` is 4 or 16 bytes, empty or absent for none. FlatBuffers has no field for
//! variables pushed with a request, so `HttpReqCallReq::extra_info` stays empty.

mod gateway;
mod reply;
mod schema;
mod table;

use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::LazyLock;

use ::flatbuffers::{
    FlatBufferBuilder, ForwardsUOffset, TableFinishedWIPOffset, VOffsetT, Verifiable, Verifier,
    WIPOffset,
};
use bytes::Bytes;

use super::reply_template::ReplyTemplate;
use super::{too_many, DecodeError, Protocol, RunnerCodec, MAX_ENTRIES};
use crate::model::{
    ip_from_bytes, Entries, ErrorCode, ExtraInfoReq, ExtraInfoResp, HttpReqCallReq,
    HttpReqCallResp, HttpRespCallReq, HttpRespCallResp, ListAt, Method, Pair, PrepareConfReq,
    PrepareConfResp, ReqAction, Rewrite, Spans, Stop,
};
use ext_plugin_sdk::Text;
use schema::{TextEntry, VERIFIER_OPTIONS};
use table::{Table, Tables};

/// The builder's starting capacity; most replies fit without growing.
const BUILDER_BYTES: usize = 1024;

/// A builder that grew past this for one large reply is replaced afterwards, so an idle pooled
/// connection does not keep a body-sized buffer.
const BUILDER_KEEP_BYTES: usize = 64 * 1024;

/// True when `payload` has the shape of a FlatBuffers buffer: a root offset at byte 0 leading to
/// a table whose vtable and fields lie inside the payload (docs/protocol.md §9).
pub fn root_table_fits(payload: &[u8]) -> bool {
    Table::root(payload).is_ok()
}

type Finished = WIPOffset<TableFinishedWIPOffset>;
type EntryVector = ::flatbuffers::Vector<'static, ForwardsUOffset<TableFinishedWIPOffset>>;

/// The continue reply, the most common one, built once for the process.
static CONTINUE_REPLY: LazyLock<ReplyTemplate> = LazyLock::new(|| {
    ReplyTemplate::new(|id| {
        let mut out = Vec::new();
        FlatBuffersCodec::new().encode_http_req_call_resp_built(
            &HttpReqCallResp {
                id,
                action: ReqAction::Continue,
            },
            &mut out,
        );
        out
    })
});

/// Why a verified buffer still could not be read.
type Reason = Cow<'static, str>;

thread_local! {
    /// Where replies are built. A buffer is built and copied out in one go, without an await,
    /// so the connections a thread serves share one builder: an idle connection's codec holds
    /// no builder storage (thousands of pooled connections would each hold theirs).
    static BUILDER: RefCell<FlatBuffersCodec> = RefCell::new(FlatBuffersCodec {
        fbb: Box::new(FlatBufferBuilder::with_capacity(BUILDER_BYTES)),
        entries: Vec::new(),
    });
}

/// One connection's FlatBuffers codec. Its own builder is empty (no storage) except while it
/// encodes: then it has the thread's.
pub struct FlatBuffersCodec {
    /// Boxed, so that swapping builders moves a pointer, not the builder.
    fbb: Box<FlatBufferBuilder<'static>>,
    /// Entry tables of the vector being built, reused across vectors and replies.
    entries: Vec<Finished>,
}

impl FlatBuffersCodec {
    pub fn new() -> FlatBuffersCodec {
        FlatBuffersCodec {
            fbb: Box::new(FlatBufferBuilder::new()),
            entries: Vec::new(),
        }
    }

    /// Builds one buffer whose root `build` returns and appends it to `out`, with the thread's
    /// builder. (A `build` that panics leaves the builders swapped: each is reset before use,
    /// so that costs nothing but where the storage sits.)
    fn encode(&mut self, out: &mut Vec<u8>, build: impl FnOnce(&mut Self) -> Finished) {
        BUILDER.with_borrow_mut(|shared| {
            std::mem::swap(self, shared);
            self.encode_here(out, build);
            std::mem::swap(self, shared);
        });
    }

    /// [`FlatBuffersCodec::encode`] with this codec's own builder.
    fn encode_here(&mut self, out: &mut Vec<u8>, build: impl FnOnce(&mut Self) -> Finished) {
        self.fbb.reset();
        let root = build(self);
        self.fbb.finish_minimal(root);
        let data = self.fbb.finished_data();
        out.extend_from_slice(data);
        if data.len() > BUILDER_KEEP_BYTES {
            *self.fbb = FlatBufferBuilder::with_capacity(BUILDER_BYTES);
        }
    }

    /// Builds an `http_req_call` reply with the builder: the continue reply's template (and its
    /// id-0 form); what the hand-written stop and rewrite (`reply`) are checked against.
    fn encode_http_req_call_resp_built(&mut self, msg: &HttpReqCallResp, out: &mut Vec<u8>) {
        use schema::HttpReqCallResp as S;
        self.encode(out, |c| {
            let (tag, action) = match &msg.action {
                ReqAction::Continue => (0, None),
                ReqAction::Stop(stop) => (S::STOP, Some(c.stop(stop))),
                ReqAction::Rewrite(rw) => (S::REWRITE, Some(c.rewrite(rw))),
            };
            let t = c.fbb.start_table();
            c.fbb.push_slot(S::ID, msg.id, 0);
            if let Some(action) = action {
                c.fbb.push_slot_always(S::ACTION, action);
            }
            c.fbb.push_slot(S::ACTION_TYPE, tag, 0);
            c.fbb.end_table(t)
        });
    }

    /// Builds an `http_resp_call` reply with the builder: what the hand-written one
    /// (`reply`) is checked against.
    #[cfg(test)]
    fn encode_http_resp_call_resp_built(&mut self, msg: &HttpRespCallResp, out: &mut Vec<u8>) {
        use schema::HttpRespCallResp as S;
        self.encode(out, |c| {
            let headers = c.non_empty_entries(&msg.headers);
            let body = msg.body.as_ref().map(|b| c.bytes(b));
            let t = c.fbb.start_table();
            c.fbb.push_slot(S::ID, msg.id, 0);
            c.fbb.push_slot(S::STATUS, msg.status, 0);
            if let Some(headers) = headers {
                c.fbb.push_slot_always(S::HEADERS, headers);
            }
            if let Some(body) = body {
                c.fbb.push_slot_always(S::BODY, body);
            }
            c.fbb.end_table(t)
        });
    }

    fn bytes(&mut self, b: &[u8]) -> WIPOffset<::flatbuffers::Vector<'static, u8>> {
        self.fbb.create_vector(b)
    }

    /// A `[TextEntry]` vector of `(name, value)` pairs; an absent value stays absent.
    fn entries<'p>(
        &mut self,
        pairs: impl IntoIterator<Item = (&'p str, Option<&'p str>)>,
    ) -> WIPOffset<EntryVector> {
        self.entries.clear();
        for (name, value) in pairs {
            let name = self.fbb.create_string(name);
            let value = value.map(|v| self.fbb.create_string(v));
            let t = self.fbb.start_table();
            self.fbb.push_slot_always(TextEntry::NAME, name);
            if let Some(value) = value {
                self.fbb.push_slot_always(TextEntry::VALUE, value);
            }
            self.entries.push(self.fbb.end_table(t));
        }
        self.fbb.create_vector(&self.entries)
    }

    /// The entry vector of `pairs`, or `None` when there are none: replies leave empty vectors
    /// out, which the gateway reads the same way.
    fn non_empty_entries(&mut self, pairs: &[Pair]) -> Option<WIPOffset<EntryVector>> {
        (!pairs.is_empty()).then(|| self.entries(items(pairs)))
    }

    /// A root table holding a single scalar (or nothing, when it equals the default 0).
    fn scalar_root<X: ::flatbuffers::Push + PartialEq + Default>(
        &mut self,
        slot: VOffsetT,
        x: X,
    ) -> Finished {
        let t = self.fbb.start_table();
        self.fbb.push_slot(slot, x, X::default());
        self.fbb.end_table(t)
    }
}

impl Default for FlatBuffersCodec {
    fn default() -> Self {
        FlatBuffersCodec::new()
    }
}

/// `(name, value)` of each pair, as [`FlatBuffersCodec::entries`] writes them.
fn items(pairs: &[Pair]) -> impl Iterator<Item = (&str, Option<&str>)> {
    pairs.iter().map(|p| (p.name.as_str(), p.value.as_deref()))
}

/// Reads `payload` with `read`, every access bounds-checked where it happens ([`table`]): the
/// runner's decoders walk only the fields they read, never the whole buffer up front.
fn read<T>(
    payload: &Bytes,
    message: &'static str,
    read: impl FnOnce(Table<'_>) -> Result<T, Reason>,
) -> Result<T, DecodeError> {
    Table::open(payload)
        .map_err(Reason::from)
        .and_then(read)
        .map_err(|reason| DecodeError::new(message, reason))
}

/// Verifies `payload` as a buffer whose root is a `V`, then reads it with `read`: the gateway
/// side's decoders (tests, the replayer), where a full check of the runner's replies is wanted.
fn decode<V: Verifiable, T>(
    payload: &Bytes,
    message: &'static str,
    read: impl FnOnce(Table<'_>) -> Result<T, Reason>,
) -> Result<T, DecodeError> {
    let mut verifier = Verifier::new(&VERIFIER_OPTIONS, payload);
    <ForwardsUOffset<V>>::run_verifier(&mut verifier, 0)
        .map_err(|e| DecodeError::new(message, e.to_string()))?;
    Table::root(payload)
        .map_err(Reason::from)
        .and_then(read)
        .map_err(|reason| DecodeError::new(message, reason))
}

/// Bytes of the payload, shared.
fn data(payload: &Bytes, d: &[u8]) -> Bytes {
    if d.is_empty() {
        Bytes::new()
    } else {
        payload.slice_ref(d)
    }
}

/// A string of the payload as a [`Text`] sharing its storage, validated once; invalid UTF-8
/// (a percent-decoded `/%FF`) is replaced rather than failing the call.
fn read_text(payload: &Bytes, t: &Table<'_>, slot: VOffsetT) -> Result<Option<Text>, Reason> {
    Ok(t.bytes(slot)?.map(|b| Text::slice_lossy(payload, b)))
}

fn read_data(payload: &Bytes, t: &Table<'_>, slot: VOffsetT) -> Result<Option<Bytes>, Reason> {
    Ok(t.bytes(slot)?.map(|d| data(payload, d)))
}

/// The entry tables of a `[TextEntry]` field, refused past [`MAX_ENTRIES`].
fn entry_tables<'a>(t: &Table<'a>, slot: VOffsetT) -> Result<Tables<'a>, Reason> {
    let tables = t.tables(slot)?;
    if tables.len() > MAX_ENTRIES {
        return Err(too_many(tables.len()));
    }
    Ok(tables)
}

/// Refills `out` with where a `[TextEntry]` field lies: only the vector's bounds and length are
/// checked here; its entries are located when a plugin first reads the list
/// ([`locate_text_entries`]), their text only when it reads that entry. Absent reads as empty.
fn lazy_entries(
    payload: &Bytes,
    t: &Table<'_>,
    slot: VOffsetT,
    out: &mut Entries,
) -> Result<(), Reason> {
    let (start, len) = entry_tables(t, slot)?.location();
    // A payload is at most 16 MiB (a frame's 24-bit length), so its offsets fit a u32.
    let list = ListAt {
        start: start as u32,
        len: len as u32,
        layout: 0,
    };
    out.start_lazy(payload, list, locate_text_entries);
    Ok(())
}

/// The [`Entries`] locator of a `[TextEntry]` vector found by [`lazy_entries`]: follows each
/// entry's table, name and value, every offset checked as it is followed; an absent name is "".
fn locate_text_entries(
    frame: &[u8],
    list: ListAt,
    out: &mut Spans<'_>,
) -> Result<(), &'static str> {
    for entry in Tables::at(frame, list.start as usize, list.len as usize) {
        let entry = entry.map_err(|m| m.0)?;
        let name = entry.bytes(TextEntry::NAME).map_err(|m| m.0)?;
        let value = entry.bytes(TextEntry::VALUE).map_err(|m| m.0)?;
        out.push(name.unwrap_or_default(), value)
            .map_err(|_| "entry outside the payload")?;
    }
    Ok(())
}

/// Refills `out` with a `[TextEntry]` field; absent reads as empty, an absent name as "".
fn read_entries(
    payload: &Bytes,
    t: &Table<'_>,
    slot: VOffsetT,
    out: &mut Vec<Pair>,
) -> Result<(), Reason> {
    out.clear();
    for entry in entry_tables(t, slot)? {
        let entry = entry?;
        out.push(Pair {
            name: read_text(payload, &entry, TextEntry::NAME)?.unwrap_or_default(),
            value: read_text(payload, &entry, TextEntry::VALUE)?,
        });
    }
    Ok(())
}

fn entries_of(payload: &Bytes, t: &Table<'_>, slot: VOffsetT) -> Result<Vec<Pair>, Reason> {
    let mut out = Vec::new();
    read_entries(payload, t, slot, &mut out)?;
    Ok(out)
}

impl RunnerCodec for FlatBuffersCodec {
    fn protocol(&self) -> Protocol {
        Protocol::FlatBuffers
    }

    fn decode_prepare_conf_req(
        &self,
        payload: &Bytes,
        out: &mut PrepareConfReq,
    ) -> Result<(), DecodeError> {
        use schema::PrepareConfReq as S;
        read(payload, "PrepareConf.Req", |t| {
            out.key = read_text(payload, &t, S::KEY)?.unwrap_or_default();
            read_entries(payload, &t, S::CONF, &mut out.conf)
        })
    }

    fn decode_http_req_call_req(
        &self,
        payload: &Bytes,
        out: &mut HttpReqCallReq,
    ) -> Result<(), DecodeError> {
        use schema::HttpReqCallReq as S;
        read(payload, "HTTPReqCall.Req", |t| {
            out.id = t.u32(S::ID)?;
            out.conf_token = t.u32(S::CONF_TOKEN)?;
            out.src_ip = ip_from_bytes(t.bytes(S::SRC_IP)?.unwrap_or_default())
                .map_err(|n| format!("src_ip has {n} bytes, expected 4 or 16"))?;
            let method = t.u8(S::METHOD)?;
            out.method = Method::from_u8(method)
                .ok_or_else(|| format!("method {method} is not in the schema"))?;
            out.path = read_text(payload, &t, S::PATH)?.unwrap_or_default();
            lazy_entries(payload, &t, S::ARGS, &mut out.args)?;
            lazy_entries(payload, &t, S::HEADERS, &mut out.headers)?;
            out.extra_info.clear();
            Ok(())
        })
    }

    fn decode_http_resp_call_req(
        &self,
        payload: &Bytes,
        out: &mut HttpRespCallReq,
    ) -> Result<(), DecodeError> {
        use schema::HttpRespCallReq as S;
        read(payload, "HTTPRespCall.Req", |t| {
            out.id = t.u32(S::ID)?;
            out.status = t.u16(S::STATUS)?;
            out.conf_token = t.u32(S::CONF_TOKEN)?;
            read_entries(payload, &t, S::HEADERS, &mut out.headers)
        })
    }

    fn decode_extra_info_resp(&self, payload: &Bytes) -> Result<ExtraInfoResp, DecodeError> {
        use schema::ExtraInfoResp as S;
        read(payload, "ExtraInfo.Resp", |t| {
            Ok(ExtraInfoResp {
                result: read_data(payload, &t, S::RESULT)?,
            })
        })
    }

    fn encode_prepare_conf_resp(&mut self, msg: &PrepareConfResp, out: &mut Vec<u8>) {
        self.encode(out, |c| {
            c.scalar_root(schema::PrepareConfResp::CONF_TOKEN, msg.conf_token)
        });
    }

    fn encode_http_req_call_resp(&mut self, msg: &HttpReqCallResp, out: &mut Vec<u8>) {
        match msg.action {
            // Id 0 is left out of the table by the builder: another layout (`reply_template`).
            ReqAction::Continue if msg.id != 0 => CONTINUE_REPLY.write(msg.id, out),
            ReqAction::Continue => self.encode_http_req_call_resp_built(msg, out),
            ReqAction::Stop(_) | ReqAction::Rewrite(_) => reply::write_http_req_call_resp(msg, out),
        }
    }

    fn encode_http_resp_call_resp(&mut self, msg: &HttpRespCallResp, out: &mut Vec<u8>) {
        reply::write_http_resp_call_resp(msg, out);
    }

    fn encode_extra_info_req(&mut self, msg: &ExtraInfoReq, out: &mut Vec<u8>) {
        use schema::ExtraInfoReq as S;
        self.encode(out, |c| {
            let (tag, info) = match msg {
                ExtraInfoReq::Var(name) => {
                    let name = c.fbb.create_string(name);
                    let t = c.fbb.start_table();
                    c.fbb.push_slot_always(schema::Var::NAME, name);
                    (S::VAR, c.fbb.end_table(t))
                }
                ExtraInfoReq::ReqBody => (S::REQ_BODY, c.empty_table()),
                ExtraInfoReq::RespBody => (S::RESP_BODY, c.empty_table()),
            };
            let t = c.fbb.start_table();
            c.fbb.push_slot_always(S::INFO, info);
            c.fbb.push_slot(S::INFO_TYPE, tag, 0);
            c.fbb.end_table(t)
        });
    }

    fn encode_error_resp(&mut self, code: ErrorCode, out: &mut Vec<u8>) {
        self.encode(out, |c| c.scalar_root(schema::ErrResp::CODE, code as u8));
    }
}

impl FlatBuffersCodec {
    fn empty_table(&mut self) -> Finished {
        let t = self.fbb.start_table();
        self.fbb.end_table(t)
    }

    fn stop(&mut self, stop: &Stop) -> Finished {
        use schema::Stop as S;
        let headers = self.non_empty_entries(&stop.headers);
        let body = (!stop.body.is_empty()).then(|| self.bytes(&stop.body));
        let t = self.fbb.start_table();
        self.fbb.push_slot(S::STATUS, stop.status, 0);
        if let Some(headers) = headers {
            self.fbb.push_slot_always(S::HEADERS, headers);
        }
        if let Some(body) = body {
            self.fbb.push_slot_always(S::BODY, body);
        }
        self.fbb.end_table(t)
    }

    fn rewrite(&mut self, rw: &Rewrite) -> Finished {
        use schema::Rewrite as S;
        let path = rw.path.as_ref().map(|p| self.fbb.create_string(p));
        let headers = self.non_empty_entries(&rw.headers);
        let args = self.non_empty_entries(&rw.args);
        let resp_headers = self.non_empty_entries(&rw.resp_headers);
        let body = rw.body.as_ref().map(|b| self.bytes(b));
        let t = self.fbb.start_table();
        if let Some(path) = path {
            self.fbb.push_slot_always(S::PATH, path);
        }
        for (slot, v) in [
            (S::HEADERS, headers),
            (S::ARGS, args),
            (S::RESP_HEADERS, resp_headers),
        ] {
            if let Some(v) = v {
                self.fbb.push_slot_always(slot, v);
            }
        }
        if let Some(body) = body {
            self.fbb.push_slot_always(S::BODY, body);
        }
        self.fbb.end_table(t)
    }
}

#[cfg(test)]
mod tests;
