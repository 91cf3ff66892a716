//! The boundary between wire payloads and the model.
//!
//! A codec turns a frame's payload into a [`crate::model`] message and back. The server only ever
//! talks to [`RunnerCodec`]; the fake gateway and the replayer use [`GatewayCodec`]. A connection
//! owns its codec (encoders keep scratch space), chosen from the configured [`ProtocolSetting`]
//! or, with `auto`, from the connection's first frame ([`detect`]).

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use bytes::Bytes;

use crate::model::{
    ErrorCode, ExtraInfoReq, ExtraInfoResp, HttpReqCallReq, HttpReqCallResp, HttpRespCallReq,
    HttpRespCallResp, PrepareConfReq, PrepareConfResp,
};

pub mod capnp;
pub mod flatbuffers;
mod reply_template;

/// A payload encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// This project's schema, `schema/ext_plugin.capnp`.
    Capnp,
    /// Stock Apache APISIX's ext-plugin-proto v0.6.1, `schema/ext-plugin.fbs`.
    FlatBuffers,
}

impl Protocol {
    pub const ALL: [Protocol; 2] = [Protocol::Capnp, Protocol::FlatBuffers];

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Capnp => "capnp",
            Protocol::FlatBuffers => "flatbuffers",
        }
    }

    /// A fresh runner-side codec for one connection.
    pub fn runner_codec(self) -> Box<dyn RunnerCodec> {
        match self {
            Protocol::Capnp => Box::new(capnp::CapnpCodec::new()),
            Protocol::FlatBuffers => Box::new(flatbuffers::FlatBuffersCodec::new()),
        }
    }

    /// A fresh gateway-side codec for one connection.
    pub fn gateway_codec(self) -> Box<dyn GatewayCodec> {
        match self {
            Protocol::Capnp => Box::new(capnp::CapnpCodec::new()),
            Protocol::FlatBuffers => Box::new(flatbuffers::FlatBuffersCodec::new()),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which protocol the runner speaks: one forced, or decided per connection from its first frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProtocolSetting {
    #[default]
    Auto,
    Fixed(Protocol),
}

impl FromStr for ProtocolSetting {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            return Ok(ProtocolSetting::Auto);
        }
        Protocol::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .map(ProtocolSetting::Fixed)
            .ok_or_else(|| {
                let names: Vec<_> = Protocol::ALL.iter().map(|p| p.name()).collect();
                format!(
                    "unknown protocol `{s}`: expected auto or {}",
                    names.join(", ")
                )
            })
    }
}

impl fmt::Display for ProtocolSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolSetting::Auto => f.write_str("auto"),
            ProtocolSetting::Fixed(p) => p.fmt(f),
        }
    }
}

/// Tells which protocol a payload is in (docs/protocol.md §9); `None` when it fits none.
///
/// Cap'n Proto is tried first because its test is the stricter one (the segment table must
/// account for every byte of the payload). The two cannot both fit in practice: a one-segment
/// Cap'n Proto message starts with a zero word, which as a FlatBuffers root offset points at a
/// zero-length vtable.
pub fn detect(payload: &[u8]) -> Option<Protocol> {
    if capnp::segment_table_fits(payload) {
        return Some(Protocol::Capnp);
    }
    if flatbuffers::root_table_fits(payload) {
        return Some(Protocol::FlatBuffers);
    }
    None
}

/// Entries (headers, query arguments, conf entries) one list of a message may hold; a message
/// with more is refused as BAD_REQUEST before any is read. Stock APISIX sends at most 100 headers
/// and 100 arguments (nginx's `get_headers` / `get_uri_args` defaults); without a cap, one
/// 16 MiB frame of empty headers made a million entries and left their vectors' storage pinned
/// on the connection (docs/HARDENING.md).
pub const MAX_ENTRIES: usize = 1024;

/// The reason for a list over [`MAX_ENTRIES`]. Built only on the error path.
pub(crate) fn too_many(n: usize) -> Cow<'static, str> {
    format!("{n} entries in one list, more than {MAX_ENTRIES}").into()
}

/// A payload that could not be decoded. Built only on the error path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("undecodable {message} payload: {reason}")]
pub struct DecodeError {
    pub message: &'static str,
    pub reason: Cow<'static, str>,
}

impl DecodeError {
    pub fn new(message: &'static str, reason: impl Into<Cow<'static, str>>) -> DecodeError {
        DecodeError {
            message,
            reason: reason.into(),
        }
    }
}

/// The runner's side of a protocol: decode what the gateway sends, encode what the runner answers.
///
/// Decoders refill the `out` message in place (reusing its vectors); strings in it share the
/// payload's storage. Encoders append exactly one payload to `out`.
pub trait RunnerCodec: Send {
    fn protocol(&self) -> Protocol;

    fn decode_prepare_conf_req(
        &self,
        payload: &Bytes,
        out: &mut PrepareConfReq,
    ) -> Result<(), DecodeError>;
    fn decode_http_req_call_req(
        &self,
        payload: &Bytes,
        out: &mut HttpReqCallReq,
    ) -> Result<(), DecodeError>;
    fn decode_http_resp_call_req(
        &self,
        payload: &Bytes,
        out: &mut HttpRespCallReq,
    ) -> Result<(), DecodeError>;
    fn decode_extra_info_resp(&self, payload: &Bytes) -> Result<ExtraInfoResp, DecodeError>;

    fn encode_prepare_conf_resp(&mut self, msg: &PrepareConfResp, out: &mut Vec<u8>);
    fn encode_http_req_call_resp(&mut self, msg: &HttpReqCallResp, out: &mut Vec<u8>);
    fn encode_http_resp_call_resp(&mut self, msg: &HttpRespCallResp, out: &mut Vec<u8>);
    fn encode_extra_info_req(&mut self, msg: &ExtraInfoReq, out: &mut Vec<u8>);
    fn encode_error_resp(&mut self, code: ErrorCode, out: &mut Vec<u8>);
}

/// The gateway's side of a protocol, for the fake gateway and the replayer.
pub trait GatewayCodec: Send {
    fn protocol(&self) -> Protocol;

    fn encode_prepare_conf_req(&mut self, msg: &PrepareConfReq, out: &mut Vec<u8>);
    fn encode_http_req_call_req(&mut self, msg: &HttpReqCallReq, out: &mut Vec<u8>);
    fn encode_http_resp_call_req(&mut self, msg: &HttpRespCallReq, out: &mut Vec<u8>);
    fn encode_extra_info_resp(&mut self, msg: &ExtraInfoResp, out: &mut Vec<u8>);

    fn decode_prepare_conf_resp(&self, payload: &Bytes) -> Result<PrepareConfResp, DecodeError>;
    fn decode_http_req_call_resp(&self, payload: &Bytes) -> Result<HttpReqCallResp, DecodeError>;
    fn decode_http_resp_call_resp(&self, payload: &Bytes) -> Result<HttpRespCallResp, DecodeError>;
    fn decode_extra_info_req(&self, payload: &Bytes) -> Result<ExtraInfoReq, DecodeError>;
    fn decode_error_resp(&self, payload: &Bytes) -> Result<ErrorCode, DecodeError>;
}
