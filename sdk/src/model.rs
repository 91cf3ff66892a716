//! The protocol's messages as one codec-independent model (docs/protocol.md §4).
//!
//! Codecs decode wire payloads into these types and encode these types into payloads; the server
//! and the plugins see nothing else. Request-side structs are reused across calls on a connection
//! (decoders clear and refill them), so steady-state decoding does not allocate.

use std::net::IpAddr;

use bytes::Bytes;

pub use crate::entries::{Entries, Entry, ListAt, Locator, OutsideFrame, Spans};
use crate::text::Text;

/// A name with an optional value. An absent value differs from an empty one: on input a bare
/// query flag (`?debug`), on output "delete this entry".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pair {
    pub name: Text,
    pub value: Option<Text>,
}

impl Pair {
    pub fn new(name: impl Into<Text>, value: impl Into<Text>) -> Pair {
        Pair {
            name: name.into(),
            value: Some(value.into()),
        }
    }

    /// A pair without a value: a bare flag on input, a deletion on output.
    pub fn absent(name: impl Into<Text>) -> Pair {
        Pair {
            name: name.into(),
            value: None,
        }
    }
}

/// A name with an optional binary value (variables the gateway pushes with a request).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DataPair {
    pub name: Text,
    pub value: Option<Bytes>,
}

/// HTTP methods, numbered as the protocol numbers them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Method {
    #[default]
    Get = 0,
    Head = 1,
    Post = 2,
    Put = 3,
    Delete = 4,
    Mkcol = 5,
    Copy = 6,
    Move = 7,
    Options = 8,
    Propfind = 9,
    Proppatch = 10,
    Lock = 11,
    Unlock = 12,
    Patch = 13,
    Trace = 14,
}

impl Method {
    pub const ALL: [Method; 15] = [
        Method::Get,
        Method::Head,
        Method::Post,
        Method::Put,
        Method::Delete,
        Method::Mkcol,
        Method::Copy,
        Method::Move,
        Method::Options,
        Method::Propfind,
        Method::Proppatch,
        Method::Lock,
        Method::Unlock,
        Method::Patch,
        Method::Trace,
    ];

    /// The method with this protocol number, if there is one.
    pub fn from_u8(n: u8) -> Option<Method> {
        Method::ALL.get(usize::from(n)).copied()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Mkcol => "MKCOL",
            Method::Copy => "COPY",
            Method::Move => "MOVE",
            Method::Options => "OPTIONS",
            Method::Propfind => "PROPFIND",
            Method::Proppatch => "PROPPATCH",
            Method::Lock => "LOCK",
            Method::Unlock => "UNLOCK",
            Method::Patch => "PATCH",
            Method::Trace => "TRACE",
        }
    }

    /// Parses an upper-case method name.
    pub fn parse(name: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.as_str() == name)
    }
}

/// Error codes of a type 0 frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ErrorCode {
    BadRequest = 0,
    ServiceUnavailable = 1,
    ConfTokenNotFound = 2,
}

impl ErrorCode {
    pub fn from_u8(n: u8) -> Option<ErrorCode> {
        match n {
            0 => Some(ErrorCode::BadRequest),
            1 => Some(ErrorCode::ServiceUnavailable),
            2 => Some(ErrorCode::ConfTokenNotFound),
            _ => None,
        }
    }
}

/// Type 1 request: a plugin chain to prepare.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrepareConfReq {
    /// `plugin name` → `JSON conf`, in chain order.
    pub conf: Vec<Pair>,
    pub key: Text,
}

/// Type 1 reply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrepareConfResp {
    pub conf_token: u32,
}

/// Type 2 request: one HTTP request to run through a chain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpReqCallReq {
    pub id: u32,
    /// `None` when the gateway sent no address (an empty `src_ip`).
    pub src_ip: Option<IpAddr>,
    pub method: Method,
    pub path: Text,
    /// Read from the frame when a plugin asks (see [`Entries`]).
    pub args: Entries,
    /// Read from the frame when a plugin asks (see [`Entries`]).
    pub headers: Entries,
    pub conf_token: u32,
    /// Variables pushed up front (Cap'n Proto only; FlatBuffers has no such field).
    pub extra_info: Vec<DataPair>,
}

impl HttpReqCallReq {
    /// Why the call's arguments or headers could not be read, when a read (by a plugin, or
    /// anything else since decoding) found either list malformed; it then read as empty, so the
    /// chain's verdict must not stand (docs/protocol.md §4).
    pub fn malformed(&self) -> Option<&'static str> {
        self.args.malformed().or_else(|| self.headers.malformed())
    }
}

/// Type 2 reply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpReqCallResp {
    pub id: u32,
    pub action: ReqAction,
}

/// What the gateway does with the request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ReqAction {
    /// Proxy the request unchanged.
    #[default]
    Continue,
    /// Answer the client now.
    Stop(Stop),
    /// Change the request, then proxy it.
    Rewrite(Rewrite),
}

/// Answer the client directly.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stop {
    /// 0 means 200 at the gateway.
    pub status: u16,
    /// Added in order; an absent value removes the header.
    pub headers: Vec<Pair>,
    pub body: Bytes,
}

/// Changes to the request before it is proxied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rewrite {
    /// `None` keeps the path.
    pub path: Option<Text>,
    /// Set in order (the last duplicate wins); an absent value deletes.
    pub headers: Vec<Pair>,
    /// The first entry of a name replaces, repeats append; an absent value deletes.
    pub args: Vec<Pair>,
    /// Set on the client response.
    pub resp_headers: Vec<Pair>,
    /// `None` keeps the body.
    pub body: Option<Bytes>,
}

impl Rewrite {
    /// True when applying this rewrite changes nothing.
    pub fn is_empty(&self) -> bool {
        self.path.is_none()
            && self.headers.is_empty()
            && self.args.is_empty()
            && self.resp_headers.is_empty()
            && self.body.is_none()
    }

    pub fn clear(&mut self) {
        self.path = None;
        self.headers.clear();
        self.args.clear();
        self.resp_headers.clear();
        self.body = None;
    }
}

/// Type 3 request, sent by the runner inside a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExtraInfoReq {
    Var(Text),
    ReqBody,
    RespBody,
}

/// Type 3 reply from the gateway.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtraInfoResp {
    /// `None` = nil variable / no body.
    pub result: Option<Bytes>,
}

/// Type 4 request: the upstream's answer, for the response phase.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpRespCallReq {
    pub id: u32,
    pub status: u16,
    pub headers: Vec<Pair>,
    pub conf_token: u32,
}

/// Type 4 reply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpRespCallResp {
    pub id: u32,
    /// 0 keeps the upstream's status.
    pub status: u16,
    /// When non-empty, the complete set of headers the client gets.
    pub headers: Vec<Pair>,
    /// `None` keeps the upstream's body.
    pub body: Option<Bytes>,
}

/// The bytes of an IP address as the protocol carries them.
pub fn ip_to_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// Reads `src_ip`: 4 or 16 bytes, or empty for "none". Any other length is malformed.
pub fn ip_from_bytes(bytes: &[u8]) -> Result<Option<IpAddr>, usize> {
    match bytes.len() {
        0 => Ok(None),
        4 => Ok(Some(IpAddr::from(
            <[u8; 4]>::try_from(bytes).expect("length checked"),
        ))),
        16 => Ok(Some(IpAddr::from(
            <[u8; 16]>::try_from(bytes).expect("length checked"),
        ))),
        n => Err(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_round_trip_through_numbers_and_names() {
        for (n, m) in Method::ALL.into_iter().enumerate() {
            assert_eq!(Method::from_u8(n as u8), Some(m));
            assert_eq!(m as u8, n as u8);
            assert_eq!(Method::parse(m.as_str()), Some(m));
        }
        assert_eq!(Method::from_u8(15), None);
    }

    #[test]
    fn src_ip_lengths() {
        assert_eq!(ip_from_bytes(&[]), Ok(None));
        assert_eq!(
            ip_from_bytes(&[10, 0, 0, 1]),
            Ok(Some("10.0.0.1".parse().unwrap()))
        );
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(ip_from_bytes(&ip_to_bytes(v6)), Ok(Some(v6)));
        assert_eq!(ip_from_bytes(&[1, 2, 3]), Err(3));
    }
}
