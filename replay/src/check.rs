//! What a reply must be, and checking a reply against it.
//!
//! Only what a corpus can promise is checked: the frame type, the call id, the action kind
//! (continue, stop, rewrite) with a stop's status, a response call's status, an error's code.
//! Header values and bodies are not compared: request-id makes a fresh id per call and
//! limit-count's headers carry the time.

use bytes::Bytes;

use ext_plugin_runner::codec::{DecodeError, GatewayCodec};
use ext_plugin_runner::frame::{Frame, FrameType};
use ext_plugin_runner::model::{ErrorCode, ReqAction};

/// The kind of a request-phase action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionKind {
    Continue,
    Stop,
    Rewrite,
}

impl ActionKind {
    pub fn of(action: &ReqAction) -> ActionKind {
        match action {
            ReqAction::Continue => ActionKind::Continue,
            ReqAction::Stop(_) => ActionKind::Stop,
            ReqAction::Rewrite(_) => ActionKind::Rewrite,
        }
    }
}

/// What the reply to one call must be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// An `http_req_call` reply.
    Req {
        id: u32,
        action: ActionKind,
        /// A stop's status (0 = 200 at the gateway, compared as sent).
        status: Option<u16>,
    },
    /// An `http_resp_call` reply.
    Resp { id: u32, status: u16 },
    /// An error frame.
    Error(ErrorCode),
    /// The echo floor: the same frame type and length as the request.
    Echo { ty: u8, len: usize },
}

impl Expect {
    /// The expectation a corpus reply frame states.
    pub fn from_reply(codec: &dyn GatewayCodec, reply: &Frame) -> Result<Expect, DecodeError> {
        match FrameType::from_u8(reply.ty) {
            Some(FrameType::HttpReqCall) => {
                let r = codec.decode_http_req_call_resp(&reply.payload)?;
                let status = match &r.action {
                    ReqAction::Stop(s) => Some(s.status),
                    _ => None,
                };
                Ok(Expect::Req {
                    id: r.id,
                    action: ActionKind::of(&r.action),
                    status,
                })
            }
            Some(FrameType::HttpRespCall) => {
                let r = codec.decode_http_resp_call_resp(&reply.payload)?;
                Ok(Expect::Resp {
                    id: r.id,
                    status: r.status,
                })
            }
            _ => Ok(Expect::Error(codec.decode_error_resp(&reply.payload)?)),
        }
    }
}

/// Why a reply did not match. The names are the report's keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mismatch {
    FrameType,
    Id,
    Action,
    Status,
    ErrorCode,
    Length,
    Undecodable,
    UnexpectedExtraInfo,
}

impl Mismatch {
    pub fn name(self) -> &'static str {
        match self {
            Mismatch::FrameType => "frame type",
            Mismatch::Id => "id",
            Mismatch::Action => "action",
            Mismatch::Status => "status",
            Mismatch::ErrorCode => "error code",
            Mismatch::Length => "length",
            Mismatch::Undecodable => "undecodable reply",
            Mismatch::UnexpectedExtraInfo => "unexpected extra_info",
        }
    }
}

/// A failed check: its kind and a line saying what was expected and what came.
#[derive(Clone, Debug)]
pub struct Failure {
    pub kind: Mismatch,
    pub detail: String,
}

fn fail(kind: Mismatch, detail: String) -> Result<(), Failure> {
    Err(Failure { kind, detail })
}

/// Checks the final reply to a call. Detail strings are built only on failure.
pub fn check(
    codec: &dyn GatewayCodec,
    expect: &Expect,
    ty: u8,
    payload: &Bytes,
) -> Result<(), Failure> {
    let want_ty = match expect {
        Expect::Req { .. } => FrameType::HttpReqCall as u8,
        Expect::Resp { .. } => FrameType::HttpRespCall as u8,
        Expect::Error(_) => FrameType::Error as u8,
        Expect::Echo { ty, .. } => *ty,
    };
    if ty != want_ty {
        let mut detail = format!("expected a frame of type {want_ty}, got type {ty}");
        if ty == FrameType::Error as u8 {
            if let Ok(code) = codec.decode_error_resp(payload) {
                detail.push_str(&format!(" ({code:?})"));
            }
        }
        return fail(Mismatch::FrameType, detail);
    }
    let undecodable = |e: DecodeError| Failure {
        kind: Mismatch::Undecodable,
        detail: e.to_string(),
    };
    match expect {
        Expect::Req { id, action, status } => {
            let r = codec
                .decode_http_req_call_resp(payload)
                .map_err(undecodable)?;
            if r.id != *id {
                return fail(Mismatch::Id, format!("expected id {id}, got {}", r.id));
            }
            let got = ActionKind::of(&r.action);
            if got != *action {
                return fail(
                    Mismatch::Action,
                    format!("id {id}: expected {action:?}, got {:?}", r.action),
                );
            }
            if let (Some(want), ReqAction::Stop(s)) = (status, &r.action) {
                if s.status != *want {
                    return fail(
                        Mismatch::Status,
                        format!("id {id}: expected stop status {want}, got {}", s.status),
                    );
                }
            }
        }
        Expect::Resp { id, status } => {
            let r = codec
                .decode_http_resp_call_resp(payload)
                .map_err(undecodable)?;
            if r.id != *id {
                return fail(Mismatch::Id, format!("expected id {id}, got {}", r.id));
            }
            if r.status != *status {
                return fail(
                    Mismatch::Status,
                    format!("id {id}: expected status {status}, got {}", r.status),
                );
            }
        }
        Expect::Error(code) => {
            let got = codec.decode_error_resp(payload).map_err(undecodable)?;
            if got != *code {
                return fail(
                    Mismatch::ErrorCode,
                    format!("expected error {code:?}, got {got:?}"),
                );
            }
        }
        Expect::Echo { len, .. } => {
            if payload.len() != *len {
                return fail(
                    Mismatch::Length,
                    format!("expected {len} payload bytes, got {}", payload.len()),
                );
            }
        }
    }
    Ok(())
}
