//! The Cap'n Proto codec: `schema/ext_plugin.capnp`, standard unpacked serialization.
//!
//! Payloads are read in place (the `unaligned` feature lets the reader work at offset 4 of a
//! frame), and strings come out as [`Text`] slices of the payload, so decoding copies nothing.
//! The message every call brings, `HTTPReqCallReq`, is read by a small reader of our own
//! (`words.rs`) when it is in the simple one-segment encoding (as every standard encoder writes
//! it), and by the crate otherwise; its headers and arguments are only found at decode
//! ([`Entries`]): their pairs are located when a plugin first reads the list, their text when
//! it reads the pair.
//! Replies are built in a per-thread scratch segment, so small replies do not allocate, and a
//! connection's codec holds no storage of its own (thousands of idle connections would each
//! hold its scratch). The commonest reply (an `http_req_call` continue) is copied from a
//! template, and a stop or rewrite is written by hand (`capnp/reply.rs`), as capnp-rust's
//! builder allocates per message.

use std::cell::RefCell;
use std::sync::LazyLock;

use bytes::Bytes;
use capnp::message::{self, ReaderOptions, ScratchSpaceHeapAllocator};
use capnp::serialize::{self, NoAllocSliceSegments};
use capnp::{data, struct_list, text};

use super::reply_template::ReplyTemplate;
use super::{too_many, DecodeError, GatewayCodec, Protocol, RunnerCodec, MAX_ENTRIES};
use crate::model::{
    ip_from_bytes, ip_to_bytes, DataPair, Entries, ErrorCode, ExtraInfoReq, ExtraInfoResp,
    HttpReqCallReq, HttpReqCallResp, HttpRespCallReq, HttpRespCallResp, ListAt, Method, Pair,
    PrepareConfReq, PrepareConfResp, ReqAction, Rewrite, Spans, Stop,
};
use crate::proto::ext_plugin_capnp as schema;
use ext_plugin_sdk::Text;
use words::{Struct, StructList, Unusual};

mod words;

mod reply;

/// Bytes of scratch space for building replies; larger replies spill to the heap.
const SCRATCH_BYTES: usize = 2048;

/// Segment counts above this are not a message this protocol produces.
const MAX_SEGMENTS: usize = 512;

/// True when `payload` starts with a Cap'n Proto segment table that accounts exactly for its
/// length (docs/protocol.md §9).
pub fn segment_table_fits(payload: &[u8]) -> bool {
    let word = |i: usize| -> Option<usize> {
        let b = payload.get(i * 4..i * 4 + 4)?;
        Some(u32::from_le_bytes(b.try_into().ok()?) as usize)
    };
    let Some(count) = word(0).and_then(|n| n.checked_add(1)) else {
        return false;
    };
    if count > MAX_SEGMENTS {
        return false;
    }
    // The table is (1 + count) u32s, padded to a whole 8-byte word.
    let table_bytes = (4 * (1 + count)).next_multiple_of(8);
    let mut total = table_bytes;
    for i in 0..count {
        let Some(words) = word(1 + i) else {
            return false;
        };
        total += words * 8;
    }
    total == payload.len()
}

thread_local! {
    /// Where replies are built: a message is built and serialized in one go, without an await,
    /// so the connections a thread serves share one scratch segment.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_BYTES].into_boxed_slice());
}

/// The continue reply, the most common one, built once for the process: capnp-rust's message
/// builder allocates its segment table for every message, and this crate forbids the `unsafe` a
/// custom allocator needs, so the reply most calls get is copied and its id patched in.
static CONTINUE_REPLY: LazyLock<ReplyTemplate> = LazyLock::new(|| {
    ReplyTemplate::new(|id| {
        let mut out = Vec::new();
        CapnpCodec.encode_http_req_call_resp_built(
            &HttpReqCallResp {
                id,
                action: ReqAction::Continue,
            },
            &mut out,
        );
        out
    })
});

/// One connection's Cap'n Proto codec: stateless, so boxing it allocates nothing.
pub struct CapnpCodec;

impl CapnpCodec {
    pub fn new() -> CapnpCodec {
        CapnpCodec
    }

    /// Builds an `http_req_call` reply with the message builder.
    fn encode_http_req_call_resp_built(&mut self, msg: &HttpReqCallResp, out: &mut Vec<u8>) {
        self.encode(out, |b| {
            let mut root = b.init_root::<schema::h_t_t_p_req_call_resp::Builder<'_>>();
            root.set_id(msg.id);
            let mut action = root.get_action();
            match &msg.action {
                ReqAction::Continue => action.set_continue(()),
                ReqAction::Stop(stop) => write_stop(action.init_stop(), stop),
                ReqAction::Rewrite(rewrite) => write_rewrite(action.init_rewrite(), rewrite),
            }
        });
    }

    /// Builds one message in the scratch space and appends its serialization to `out`.
    fn encode(
        &mut self,
        out: &mut Vec<u8>,
        build: impl FnOnce(&mut message::Builder<ScratchSpaceHeapAllocator<'_>>),
    ) {
        SCRATCH.with_borrow_mut(|scratch| {
            let mut builder = message::Builder::new(ScratchSpaceHeapAllocator::new(scratch));
            build(&mut builder);
            serialize::write_message(out, &builder).expect("writing to a Vec cannot fail");
        });
    }
}

impl Default for CapnpCodec {
    fn default() -> Self {
        CapnpCodec::new()
    }
}

fn err(message: &'static str) -> impl Fn(capnp::Error) -> DecodeError {
    move |e| DecodeError::new(message, e.to_string())
}

/// Opens a payload that must hold exactly one message.
fn open<'a>(
    payload: &'a [u8],
    message: &'static str,
) -> Result<message::Reader<NoAllocSliceSegments<'a>>, DecodeError> {
    let mut rest = payload;
    // Reads are bounded by the payload's size, not the library's default of 64 MiB: a list of
    // zero-sized structs claims any number of elements in one pointer (and pointers may alias),
    // so under the default an 88-byte frame decoded to 4 million headers (found by fuzzing;
    // tests/fuzz_regressions.rs). Decoders read each word of a message once, so twice its
    // size plus some slack never refuses a real message.
    let mut options = ReaderOptions::new();
    options.traversal_limit_in_words(Some(payload.len() / 8 * 2 + 64));
    let reader = serialize::read_message_from_flat_slice_no_alloc(&mut rest, options)
        .map_err(err(message))?;
    if !rest.is_empty() {
        return Err(DecodeError::new(
            message,
            format!("{} bytes after the message", rest.len()),
        ));
    }
    Ok(reader)
}

fn read_text(
    payload: &Bytes,
    r: capnp::Result<text::Reader<'_>>,
    message: &'static str,
) -> Result<Text, DecodeError> {
    // Validated once, here, as the Text is made; invalid UTF-8 is replaced, not refused.
    let bytes = r.map_err(err(message))?.as_bytes();
    Ok(Text::slice_lossy(payload, bytes))
}

fn read_data(payload: &Bytes, d: data::Reader<'_>) -> Bytes {
    if d.is_empty() {
        Bytes::new()
    } else {
        payload.slice_ref(d)
    }
}

/// A list of pairs, refused past [`MAX_ENTRIES`].
fn pair_list<'a>(
    list: capnp::Result<struct_list::Reader<'a, schema::pair::Owned>>,
    message: &'static str,
) -> Result<struct_list::Reader<'a, schema::pair::Owned>, DecodeError> {
    let list = list.map_err(err(message))?;
    if list.len() as usize > MAX_ENTRIES {
        return Err(DecodeError::new(message, too_many(list.len() as usize)));
    }
    Ok(list)
}

/// Refills `out` with the locations of a list's names and values (see [`Entries`]): each
/// pair's pointers are checked here, its text only when a plugin reads it.
fn locate_pairs(
    payload: &Bytes,
    list: capnp::Result<struct_list::Reader<'_, schema::pair::Owned>>,
    out: &mut Entries,
    message: &'static str,
) -> Result<(), DecodeError> {
    let list = pair_list(list, message)?;
    out.start(payload, list.len() as usize);
    for p in list {
        let name = p.get_name().map_err(err(message))?.as_bytes();
        let value = if p.has_value() {
            Some(p.get_value().map_err(err(message))?.as_bytes())
        } else {
            None
        };
        out.push_located(name, value)
            .map_err(|_| DecodeError::new(message, "pair outside the payload"))?;
    }
    Ok(())
}

fn read_pairs(
    payload: &Bytes,
    list: capnp::Result<struct_list::Reader<'_, schema::pair::Owned>>,
    out: &mut Vec<Pair>,
    message: &'static str,
) -> Result<(), DecodeError> {
    out.clear();
    for p in pair_list(list, message)? {
        let value = if p.has_value() {
            Some(read_text(payload, p.get_value(), message)?)
        } else {
            None
        };
        out.push(Pair {
            name: read_text(payload, p.get_name(), message)?,
            value,
        });
    }
    Ok(())
}

/// `HTTPReqCallReq`'s layout, as `src/proto/ext_plugin_capnp.rs` reads it: byte offsets in the
/// data section, indices in the pointer section. (Tests decode every field both ways.)
mod req_layout {
    pub const ID: usize = 0;
    pub const METHOD: usize = 4;
    pub const CONF_TOKEN: usize = 8;
    pub const SRC_IP: usize = 0;
    pub const PATH: usize = 1;
    pub const ARGS: usize = 2;
    pub const HEADERS: usize = 3;
    pub const EXTRA_INFO: usize = 4;
}

/// `Pair` and `PairData`'s pointer indices.
const PAIR_NAME: usize = 0;
const PAIR_VALUE: usize = 1;

/// Decodes an `http_req_call` in the simple encoding ([`words`]): the id, token, method, address
/// and path, and where `args` and `headers` lie, located when a plugin first reads them
/// ([`locate_args`], [`locate_headers`]). Variables pushed along are read here (a call rarely
/// has any). On [`Unusual`] `out` may be half written: the crate's decoder refills all of it.
fn decode_simple_req(payload: &Bytes, out: &mut HttpReqCallReq) -> Result<(), Unusual> {
    use req_layout as L;
    let seg = words::single_segment(payload)?;
    let root = Struct::root(seg)?;
    let method = u8::try_from(root.u16(L::METHOD)).map_err(|_| Unusual)?;
    let method = Method::from_u8(method).ok_or(Unusual)?;
    let src_ip = ip_from_bytes(root.data(L::SRC_IP)?.unwrap_or_default()).map_err(|_| Unusual)?;
    let path = root.text(L::PATH)?;
    let args = root.struct_list(L::ARGS)?;
    let headers = root.struct_list(L::HEADERS)?;
    let pushed = root.struct_list(L::EXTRA_INFO)?;
    if [args.len, headers.len, pushed.len]
        .iter()
        .any(|&n| n > MAX_ENTRIES)
    {
        return Err(Unusual);
    }
    out.extra_info.clear();
    for i in 0..pushed.len {
        let p = pushed.get(seg, i)?;
        out.extra_info.push(DataPair {
            name: Text::slice_lossy(payload, p.text(PAIR_NAME)?.unwrap_or_default()),
            value: p.data(PAIR_VALUE)?.map(|v| read_data(payload, v)),
        });
    }
    out.id = root.u32(L::ID);
    out.conf_token = root.u32(L::CONF_TOKEN);
    out.src_ip = src_ip;
    out.method = method;
    out.path = path.map_or_else(Text::default, |p| Text::slice_lossy(payload, p));
    out.args.start_lazy(payload, list_at(args), locate_args);
    out.headers
        .start_lazy(payload, list_at(headers), locate_headers);
    Ok(())
}

/// Decodes an `http_req_call` with the capnp crate, locating its pairs up front: for what
/// [`decode_simple_req`] leaves aside. Public for the fuzz checks, which compare the two.
#[doc(hidden)]
pub fn decode_req_with_the_crate(
    payload: &Bytes,
    out: &mut HttpReqCallReq,
) -> Result<(), DecodeError> {
    const M: &str = "HTTPReqCallReq";
    let msg = open(payload, M)?;
    let r = msg
        .get_root::<schema::h_t_t_p_req_call_req::Reader<'_>>()
        .map_err(err(M))?;
    out.id = r.get_id();
    out.conf_token = r.get_conf_token();
    out.src_ip = ip_from_bytes(r.get_src_ip().map_err(err(M))?)
        .map_err(|n| DecodeError::new(M, format!("srcIp has {n} bytes, expected 4 or 16")))?;
    let method = r
        .get_method()
        .map_err(|e| DecodeError::new(M, format!("method {} is not in the schema", e.0)))?;
    out.method = Method::from_u8(method as u8).expect("schema and model list the same methods");
    out.path = read_text(payload, r.get_path(), M)?;
    locate_pairs(payload, r.get_args(), &mut out.args, M)?;
    locate_pairs(payload, r.get_headers(), &mut out.headers, M)?;
    out.extra_info.clear();
    let pushed = r.get_extra_info().map_err(err(M))?;
    if pushed.len() as usize > MAX_ENTRIES {
        return Err(DecodeError::new(M, too_many(pushed.len() as usize)));
    }
    for p in pushed {
        let value = if p.has_value() {
            Some(read_data(payload, p.get_value().map_err(err(M))?))
        } else {
            None
        };
        out.extra_info.push(DataPair {
            name: read_text(payload, p.get_name(), M)?,
            value,
        });
    }
    Ok(())
}

/// A struct list as an [`Entries`] location: a payload is at most 16 MiB (a frame's 24-bit
/// length) and a struct's sections at most 65 535 words each, so everything fits.
fn list_at(list: StructList) -> ListAt {
    ListAt {
        start: list.start as u32,
        len: list.len as u32,
        layout: list.data_words as u32 | (list.pointer_count as u32) << 16,
    }
}

/// Which list of the request a lazy location is for (the crate's fallback reads it by name).
#[derive(Clone, Copy)]
enum PairList {
    Args,
    Headers,
}

fn locate_args(frame: &[u8], list: ListAt, out: &mut Spans<'_>) -> Result<(), &'static str> {
    locate_pairs_lazily(frame, list, out, PairList::Args)
}

fn locate_headers(frame: &[u8], list: ListAt, out: &mut Spans<'_>) -> Result<(), &'static str> {
    locate_pairs_lazily(frame, list, out, PairList::Headers)
}

/// Locates the pairs of a list [`decode_simple_req`] found, with the simple reader; a pair in
/// another encoding (a far pointer, say) sends the whole list to the crate, which refuses
/// only what is not valid.
fn locate_pairs_lazily(
    frame: &[u8],
    list: ListAt,
    out: &mut Spans<'_>,
    which: PairList,
) -> Result<(), &'static str> {
    if locate_simple_pairs(frame, list, out).is_ok() {
        return Ok(());
    }
    out.clear();
    locate_pairs_with_the_crate(frame, which, out)
}

fn locate_simple_pairs(frame: &[u8], list: ListAt, out: &mut Spans<'_>) -> Result<(), Unusual> {
    let seg = words::single_segment(frame)?;
    let list = StructList {
        start: list.start as usize,
        len: list.len as usize,
        data_words: (list.layout & 0xFFFF) as usize,
        pointer_count: (list.layout >> 16) as usize,
    };
    for i in 0..list.len {
        let p = list.get(seg, i)?;
        let name = p.text(PAIR_NAME)?.unwrap_or_default();
        out.push(name, p.text(PAIR_VALUE)?).map_err(|_| Unusual)?;
    }
    Ok(())
}

fn locate_pairs_with_the_crate(
    frame: &[u8],
    which: PairList,
    out: &mut Spans<'_>,
) -> Result<(), &'static str> {
    let unreadable = |_| "pair list not readable";
    let msg = open(frame, "HTTPReqCallReq").map_err(|_| "message not readable")?;
    let r = msg
        .get_root::<schema::h_t_t_p_req_call_req::Reader<'_>>()
        .map_err(unreadable)?;
    let list = match which {
        PairList::Args => r.get_args(),
        PairList::Headers => r.get_headers(),
    }
    .map_err(unreadable)?;
    for p in list {
        let name = p.get_name().map_err(unreadable)?.as_bytes();
        let value = if p.has_value() {
            Some(p.get_value().map_err(unreadable)?.as_bytes())
        } else {
            None
        };
        out.push(name, value)
            .map_err(|_| "pair outside the payload")?;
    }
    Ok(())
}

fn write_pairs(list: struct_list::Builder<'_, schema::pair::Owned>, pairs: &[Pair]) {
    write_items(
        list,
        pairs.iter().map(|p| (p.name.as_str(), p.value.as_deref())),
    );
}

fn write_entries(list: struct_list::Builder<'_, schema::pair::Owned>, entries: &Entries) {
    write_items(list, entries.iter().map(|e| (e.name(), e.value())));
}

fn write_items<'p>(
    mut list: struct_list::Builder<'_, schema::pair::Owned>,
    items: impl Iterator<Item = (&'p str, Option<&'p str>)>,
) {
    for (i, (name, value)) in items.enumerate() {
        let mut p = list.reborrow().get(i as u32);
        p.set_name(name);
        if let Some(v) = value {
            p.set_value(v);
        }
    }
}

fn method_to_schema(m: Method) -> schema::Method {
    use schema::Method as S;
    match m {
        Method::Get => S::Get,
        Method::Head => S::Head,
        Method::Post => S::Post,
        Method::Put => S::Put,
        Method::Delete => S::Delete,
        Method::Mkcol => S::Mkcol,
        Method::Copy => S::Copy,
        Method::Move => S::Move,
        Method::Options => S::Options,
        Method::Propfind => S::Propfind,
        Method::Proppatch => S::Proppatch,
        Method::Lock => S::Lock,
        Method::Unlock => S::Unlock,
        Method::Patch => S::Patch,
        Method::Trace => S::Trace,
    }
}

fn error_code_to_schema(c: ErrorCode) -> schema::ErrorCode {
    match c {
        ErrorCode::BadRequest => schema::ErrorCode::BadRequest,
        ErrorCode::ServiceUnavailable => schema::ErrorCode::ServiceUnavailable,
        ErrorCode::ConfTokenNotFound => schema::ErrorCode::ConfTokenNotFound,
    }
}

fn list_len(n: usize) -> u32 {
    // A frame caps payloads at 16 MiB, so no encodable list comes near u32::MAX entries.
    u32::try_from(n).expect("list longer than u32::MAX")
}

impl RunnerCodec for CapnpCodec {
    fn protocol(&self) -> Protocol {
        Protocol::Capnp
    }

    fn decode_prepare_conf_req(
        &self,
        payload: &Bytes,
        out: &mut PrepareConfReq,
    ) -> Result<(), DecodeError> {
        const M: &str = "PrepareConfReq";
        let msg = open(payload, M)?;
        let r = msg
            .get_root::<schema::prepare_conf_req::Reader<'_>>()
            .map_err(err(M))?;
        out.key = read_text(payload, r.get_key(), M)?;
        read_pairs(payload, r.get_conf(), &mut out.conf, M)
    }

    fn decode_http_req_call_req(
        &self,
        payload: &Bytes,
        out: &mut HttpReqCallReq,
    ) -> Result<(), DecodeError> {
        if decode_simple_req(payload, out).is_ok() {
            return Ok(());
        }
        // Not the simple encoding (or not valid): the crate reads every legal encoding and
        // names what is wrong with the rest.
        decode_req_with_the_crate(payload, out)
    }

    fn decode_http_resp_call_req(
        &self,
        payload: &Bytes,
        out: &mut HttpRespCallReq,
    ) -> Result<(), DecodeError> {
        const M: &str = "HTTPRespCallReq";
        let msg = open(payload, M)?;
        let r = msg
            .get_root::<schema::h_t_t_p_resp_call_req::Reader<'_>>()
            .map_err(err(M))?;
        out.id = r.get_id();
        out.status = r.get_status();
        out.conf_token = r.get_conf_token();
        read_pairs(payload, r.get_headers(), &mut out.headers, M)
    }

    fn decode_extra_info_resp(&self, payload: &Bytes) -> Result<ExtraInfoResp, DecodeError> {
        const M: &str = "ExtraInfoResp";
        let msg = open(payload, M)?;
        let r = msg
            .get_root::<schema::extra_info_resp::Reader<'_>>()
            .map_err(err(M))?;
        let result = if r.has_result() {
            Some(read_data(payload, r.get_result().map_err(err(M))?))
        } else {
            None
        };
        Ok(ExtraInfoResp { result })
    }

    fn encode_prepare_conf_resp(&mut self, msg: &PrepareConfResp, out: &mut Vec<u8>) {
        self.encode(out, |b| {
            b.init_root::<schema::prepare_conf_resp::Builder<'_>>()
                .set_conf_token(msg.conf_token);
        });
    }

    fn encode_http_req_call_resp(&mut self, msg: &HttpReqCallResp, out: &mut Vec<u8>) {
        match msg.action {
            ReqAction::Continue => CONTINUE_REPLY.write(msg.id, out),
            // Written by hand: the builder would allocate its segment table per reply.
            _ => reply::write_http_req_call_resp(msg, out),
        }
    }

    fn encode_http_resp_call_resp(&mut self, msg: &HttpRespCallResp, out: &mut Vec<u8>) {
        self.encode(out, |b| {
            let mut root = b.init_root::<schema::h_t_t_p_resp_call_resp::Builder<'_>>();
            root.set_id(msg.id);
            root.set_status(msg.status);
            if !msg.headers.is_empty() {
                write_pairs(
                    root.reborrow().init_headers(list_len(msg.headers.len())),
                    &msg.headers,
                );
            }
            if let Some(body) = &msg.body {
                root.set_body(body);
            }
        });
    }

    fn encode_extra_info_req(&mut self, msg: &ExtraInfoReq, out: &mut Vec<u8>) {
        self.encode(out, |b| {
            let mut info = b
                .init_root::<schema::extra_info_req::Builder<'_>>()
                .get_info();
            match msg {
                ExtraInfoReq::Var(name) => info.set_var(name.as_str()),
                ExtraInfoReq::ReqBody => info.set_req_body(()),
                ExtraInfoReq::RespBody => info.set_resp_body(()),
            }
        });
    }

    fn encode_error_resp(&mut self, code: ErrorCode, out: &mut Vec<u8>) {
        self.encode(out, |b| {
            b.init_root::<schema::error_resp::Builder<'_>>()
                .set_code(error_code_to_schema(code));
        });
    }
}

fn write_stop(mut b: schema::stop::Builder<'_>, stop: &Stop) {
    b.set_status(stop.status);
    if !stop.headers.is_empty() {
        write_pairs(
            b.reborrow().init_headers(list_len(stop.headers.len())),
            &stop.headers,
        );
    }
    if !stop.body.is_empty() {
        b.set_body(&stop.body);
    }
}

fn write_rewrite(mut b: schema::rewrite::Builder<'_>, rw: &Rewrite) {
    if let Some(path) = &rw.path {
        b.set_path(path.as_str());
    }
    if !rw.headers.is_empty() {
        write_pairs(
            b.reborrow().init_headers(list_len(rw.headers.len())),
            &rw.headers,
        );
    }
    if !rw.args.is_empty() {
        write_pairs(b.reborrow().init_args(list_len(rw.args.len())), &rw.args);
    }
    if !rw.resp_headers.is_empty() {
        write_pairs(
            b.reborrow()
                .init_resp_headers(list_len(rw.resp_headers.len())),
            &rw.resp_headers,
        );
    }
    if let Some(body) = &rw.body {
        b.set_body(body);
    }
}

fn read_stop(payload: &Bytes, r: schema::stop::Reader<'_>) -> Result<Stop, DecodeError> {
    const M: &str = "Stop";
    let mut headers = Vec::new();
    read_pairs(payload, r.get_headers(), &mut headers, M)?;
    Ok(Stop {
        status: r.get_status(),
        headers,
        body: read_data(payload, r.get_body().map_err(err(M))?),
    })
}

fn read_rewrite(payload: &Bytes, r: schema::rewrite::Reader<'_>) -> Result<Rewrite, DecodeError> {
    const M: &str = "Rewrite";
    let mut rw = Rewrite {
        path: if r.has_path() {
            Some(read_text(payload, r.get_path(), M)?)
        } else {
            None
        },
        body: if r.has_body() {
            Some(read_data(payload, r.get_body().map_err(err(M))?))
        } else {
            None
        },
        ..Rewrite::default()
    };
    read_pairs(payload, r.get_headers(), &mut rw.headers, M)?;
    read_pairs(payload, r.get_args(), &mut rw.args, M)?;
    read_pairs(payload, r.get_resp_headers(), &mut rw.resp_headers, M)?;
    Ok(rw)
}

impl GatewayCodec for CapnpCodec {
    fn protocol(&self) -> Protocol {
        Protocol::Capnp
    }

    fn encode_prepare_conf_req(&mut self, msg: &PrepareConfReq, out: &mut Vec<u8>) {
        self.encode(out, |b| {
            let mut root = b.init_root::<schema::prepare_conf_req::Builder<'_>>();
            root.set_key(msg.key.as_str());
            write_pairs(root.init_conf(list_len(msg.conf.len())), &msg.conf);
        });
    }

    fn encode_http_req_call_req(&mut self, msg: &HttpReqCallReq, out: &mut Vec<u8>) {
        self.encode(out, |b| {
            let mut root = b.init_root::<schema::h_t_t_p_req_call_req::Builder<'_>>();
            root.set_id(msg.id);
            if let Some(ip) = msg.src_ip {
                root.set_src_ip(&ip_to_bytes(ip)[..]);
            }
            root.set_method(method_to_schema(msg.method));
            root.set_path(msg.path.as_str());
            write_entries(
                root.reborrow().init_args(list_len(msg.args.len())),
                &msg.args,
            );
            write_entries(
                root.reborrow().init_headers(list_len(msg.headers.len())),
                &msg.headers,
            );
            root.set_conf_token(msg.conf_token);
            if !msg.extra_info.is_empty() {
                let mut list = root.init_extra_info(list_len(msg.extra_info.len()));
                for (i, pair) in msg.extra_info.iter().enumerate() {
                    let mut p = list.reborrow().get(i as u32);
                    p.set_name(pair.name.as_str());
                    if let Some(v) = &pair.value {
                        p.set_value(v);
                    }
                }
            }
        });
    }

    fn encode_http_resp_call_req(&mut self, msg: &HttpRespCallReq, out: &mut Vec<u8>) {
        self.encode(out, |b| {
            let mut root = b.init_root::<schema::h_t_t_p_resp_call_req::Builder<'_>>();
            root.set_id(msg.id);
            root.set_status(msg.status);
            root.set_conf_token(msg.conf_token);
            write_pairs(root.init_headers(list_len(msg.headers.len())), &msg.headers);
        });
    }

    fn encode_extra_info_resp(&mut self, msg: &ExtraInfoResp, out: &mut Vec<u8>) {
        self.encode(out, |b| {
            let mut root = b.init_root::<schema::extra_info_resp::Builder<'_>>();
            if let Some(result) = &msg.result {
                root.set_result(result);
            }
        });
    }

    fn decode_prepare_conf_resp(&self, payload: &Bytes) -> Result<PrepareConfResp, DecodeError> {
        const M: &str = "PrepareConfResp";
        let msg = open(payload, M)?;
        let r = msg
            .get_root::<schema::prepare_conf_resp::Reader<'_>>()
            .map_err(err(M))?;
        Ok(PrepareConfResp {
            conf_token: r.get_conf_token(),
        })
    }

    fn decode_http_req_call_resp(&self, payload: &Bytes) -> Result<HttpReqCallResp, DecodeError> {
        const M: &str = "HTTPReqCallResp";
        use schema::h_t_t_p_req_call_resp::action::Which;
        let msg = open(payload, M)?;
        let r = msg
            .get_root::<schema::h_t_t_p_req_call_resp::Reader<'_>>()
            .map_err(err(M))?;
        let action = match r
            .get_action()
            .which()
            .map_err(|e| DecodeError::new(M, format!("action {} is not in the schema", e.0)))?
        {
            Which::Continue(()) => ReqAction::Continue,
            Which::Stop(s) => ReqAction::Stop(read_stop(payload, s.map_err(err(M))?)?),
            Which::Rewrite(rw) => ReqAction::Rewrite(read_rewrite(payload, rw.map_err(err(M))?)?),
        };
        Ok(HttpReqCallResp {
            id: r.get_id(),
            action,
        })
    }

    fn decode_http_resp_call_resp(&self, payload: &Bytes) -> Result<HttpRespCallResp, DecodeError> {
        const M: &str = "HTTPRespCallResp";
        let msg = open(payload, M)?;
        let r = msg
            .get_root::<schema::h_t_t_p_resp_call_resp::Reader<'_>>()
            .map_err(err(M))?;
        let mut headers = Vec::new();
        read_pairs(payload, r.get_headers(), &mut headers, M)?;
        Ok(HttpRespCallResp {
            id: r.get_id(),
            status: r.get_status(),
            headers,
            body: if r.has_body() {
                Some(read_data(payload, r.get_body().map_err(err(M))?))
            } else {
                None
            },
        })
    }

    fn decode_extra_info_req(&self, payload: &Bytes) -> Result<ExtraInfoReq, DecodeError> {
        const M: &str = "ExtraInfoReq";
        use schema::extra_info_req::info::Which;
        let msg = open(payload, M)?;
        let r = msg
            .get_root::<schema::extra_info_req::Reader<'_>>()
            .map_err(err(M))?;
        Ok(
            match r
                .get_info()
                .which()
                .map_err(|e| DecodeError::new(M, format!("info {} is not in the schema", e.0)))?
            {
                Which::Var(name) => ExtraInfoReq::Var(read_text(payload, name, M)?),
                Which::ReqBody(()) => ExtraInfoReq::ReqBody,
                Which::RespBody(()) => ExtraInfoReq::RespBody,
            },
        )
    }

    fn decode_error_resp(&self, payload: &Bytes) -> Result<ErrorCode, DecodeError> {
        const M: &str = "ErrorResp";
        let msg = open(payload, M)?;
        let r = msg
            .get_root::<schema::error_resp::Reader<'_>>()
            .map_err(err(M))?;
        let code = r
            .get_code()
            .map_err(|e| DecodeError::new(M, format!("code {} is not in the schema", e.0)))?;
        Ok(ErrorCode::from_u8(code as u8).expect("schema and model list the same codes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway() -> CapnpCodec {
        CapnpCodec::new()
    }

    #[test]
    fn a_continue_reply_from_the_template_is_the_built_one() {
        let mut codec = CapnpCodec::new();
        for id in [0, 1, 0x1234_5678, u32::MAX] {
            let reply = HttpReqCallResp {
                id,
                action: ReqAction::Continue,
            };
            let (mut copied, mut built) = (b"prefix".to_vec(), b"prefix".to_vec());
            codec.encode_http_req_call_resp(&reply, &mut copied);
            codec.encode_http_req_call_resp_built(&reply, &mut built);
            assert_eq!(copied, built, "id {id}");
            let decoded = codec.decode_http_req_call_resp(&Bytes::from(copied).slice(6..));
            assert_eq!(decoded.unwrap(), reply);
        }
    }

    /// A request the simple reader leaves to the library: built with one-word segments, so
    /// it spans several segments joined by far pointers. It decodes all the same.
    #[test]
    fn a_request_in_several_segments_is_read_by_the_library() {
        use capnp::message::{AllocationStrategy, HeapAllocator};
        let alloc = HeapAllocator::new()
            .first_segment_words(1)
            .allocation_strategy(AllocationStrategy::FixedSize);
        let mut b = message::Builder::new(alloc);
        let mut root = b.init_root::<schema::h_t_t_p_req_call_req::Builder<'_>>();
        root.set_id(9);
        root.set_conf_token(3);
        root.set_method(schema::Method::Post);
        root.set_path("/far");
        let mut headers = root.init_headers(2);
        headers.reborrow().get(0).set_name("host");
        headers.reborrow().get(0).set_value("example.com");
        headers.reborrow().get(1).set_name("x-flag");
        let mut bytes = Vec::new();
        serialize::write_message(&mut bytes, &b).unwrap();
        let payload = Bytes::from(bytes);
        let mut out = HttpReqCallReq::default();
        assert_eq!(decode_simple_req(&payload, &mut out), Err(Unusual));
        CapnpCodec::new()
            .decode_http_req_call_req(&payload, &mut out)
            .unwrap();
        assert_eq!((out.id, out.conf_token, out.method), (9, 3, Method::Post));
        assert_eq!(out.path, "/far");
        assert_eq!(
            out.headers,
            vec![Pair::new("host", "example.com"), Pair::absent("x-flag")]
        );
    }

    /// Issue 15: replies are built in the thread's scratch segment and the continue template
    /// is the process's: a connection's codec holds no storage (boxing it allocates nothing).
    #[test]
    fn a_codec_holds_no_storage() {
        assert_eq!(std::mem::size_of::<CapnpCodec>(), 0);
    }

    fn payload(encode: impl FnOnce(&mut Vec<u8>)) -> Bytes {
        let mut out = Vec::new();
        encode(&mut out);
        Bytes::from(out)
    }

    #[test]
    fn request_round_trips_with_absent_and_empty_values() {
        let req = HttpReqCallReq {
            id: 7,
            src_ip: Some("::1".parse().unwrap()),
            method: Method::Put,
            path: "/a b".into(),
            args: vec![
                Pair::absent("flag"),
                Pair::new("e", ""),
                Pair::new("k", "v"),
            ]
            .into(),
            headers: vec![Pair::new("x", "1"), Pair::new("x", "2")].into(),
            conf_token: 99,
            extra_info: vec![
                DataPair {
                    name: "route_id".into(),
                    value: Some(Bytes::from_static(b"1")),
                },
                DataPair {
                    name: "nil".into(),
                    value: None,
                },
            ],
        };
        let p = payload(|o| gateway().encode_http_req_call_req(&req, o));
        assert!(segment_table_fits(&p));
        let mut decoded = HttpReqCallReq::default();
        gateway()
            .decode_http_req_call_req(&p, &mut decoded)
            .unwrap();
        assert_eq!(decoded, req);
    }

    #[test]
    fn decoding_reuses_vectors_and_shares_the_payload() {
        let req = HttpReqCallReq {
            path: "/p".into(),
            headers: vec![Pair::new("a", "b")].into(),
            ..Default::default()
        };
        let p = payload(|o| gateway().encode_http_req_call_req(&req, o));
        let mut out = HttpReqCallReq {
            headers: vec![Pair::new("stale", "x"); 3].into(),
            ..Default::default()
        };
        gateway().decode_http_req_call_req(&p, &mut out).unwrap();
        assert_eq!(out.headers, vec![Pair::new("a", "b")]);
        let start = p.as_ptr() as usize;
        let at = out.path.as_bytes().as_ptr() as usize;
        assert!(
            (start..start + p.len()).contains(&at),
            "path points into the payload"
        );
    }

    #[test]
    fn every_action_round_trips() {
        let actions = [
            ReqAction::Continue,
            ReqAction::Stop(Stop {
                status: 0,
                headers: vec![Pair::new("a", "1"), Pair::new("a", "2"), Pair::absent("d")],
                body: Bytes::new(),
            }),
            ReqAction::Rewrite(Rewrite {
                path: Some("/new".into()),
                headers: vec![Pair::absent("x")],
                args: vec![Pair::new("a", "1")],
                resp_headers: vec![Pair::new("r", "v")],
                body: Some(Bytes::from_static(b"body")),
            }),
        ];
        for action in actions {
            let msg = HttpReqCallResp { id: 3, action };
            let p = payload(|o| RunnerCodec::encode_http_req_call_resp(&mut gateway(), &msg, o));
            assert_eq!(gateway().decode_http_req_call_resp(&p).unwrap(), msg);
        }
    }

    #[test]
    fn absent_and_empty_extra_info_results_differ() {
        for result in [None, Some(Bytes::new()), Some(Bytes::from_static(b"x"))] {
            let msg = ExtraInfoResp { result };
            let p = payload(|o| gateway().encode_extra_info_resp(&msg, o));
            assert_eq!(gateway().decode_extra_info_resp(&p).unwrap(), msg);
        }
    }

    #[test]
    fn garbage_and_trailing_bytes_are_decode_errors() {
        let mut out = HttpReqCallReq::default();
        for bad in [&b"garbage!"[..], &[0, 0, 0, 0, 9, 0, 0, 0][..], &[]] {
            assert!(gateway()
                .decode_http_req_call_req(&Bytes::copy_from_slice(bad), &mut out)
                .is_err());
        }
        let mut ok = Vec::new();
        gateway().encode_error_resp(ErrorCode::BadRequest, &mut ok);
        ok.extend_from_slice(&[0; 8]);
        assert!(!segment_table_fits(&ok));
        assert!(gateway().decode_error_resp(&Bytes::from(ok)).is_err());
    }

    #[test]
    fn non_utf8_text_is_decoded_lossily_not_refused() {
        let mut msg = message::Builder::new_default();
        let mut root = msg.init_root::<schema::h_t_t_p_req_call_req::Builder<'_>>();
        root.set_path(text::Reader::from(&b"/caf\xe9"[..]));
        let mut p = Vec::new();
        serialize::write_message(&mut p, &msg).unwrap();
        let mut out = HttpReqCallReq::default();
        gateway()
            .decode_http_req_call_req(&Bytes::from(p), &mut out)
            .unwrap();
        assert_eq!(out.path, "/caf\u{fffd}");
    }

    #[test]
    fn bad_src_ip_length_is_rejected() {
        let mut msg = message::Builder::new_default();
        let mut root = msg.init_root::<schema::h_t_t_p_req_call_req::Builder<'_>>();
        root.set_src_ip(&[1u8, 2, 3][..]);
        let mut p = Vec::new();
        serialize::write_message(&mut p, &msg).unwrap();
        let e = gateway()
            .decode_http_req_call_req(&Bytes::from(p), &mut HttpReqCallReq::default())
            .unwrap_err();
        assert!(e.reason.contains("3 bytes"), "{e}");
    }
}
