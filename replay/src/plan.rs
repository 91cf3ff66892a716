//! From a corpus to ready-to-send calls: prepare the corpus' confs on the target, remap the
//! recorded conf tokens to the fresh ones, and encode every call once, before any timing starts.

use std::collections::HashMap;
use std::io;
use std::os::unix::net::UnixStream;

use ext_plugin_runner::codec::{GatewayCodec, Protocol};
use ext_plugin_runner::frame::{write_frame, Frame, FrameType};
use ext_plugin_runner::framed::{BlockingFramed, FramedError};
use ext_plugin_runner::model::ExtraInfoReq;

use super::check::Expect;
use super::corpus::Corpus;

/// One call as the replayer sends it.
#[derive(Clone, Debug)]
pub struct Call {
    /// The whole request frame, header included.
    pub wire: Vec<u8>,
    /// The corpus' answers to the runner's extra_info requests during this call, each with its
    /// whole answer frame.
    pub extra: Vec<(ExtraInfoReq, Vec<u8>)>,
    pub expect: Expect,
}

/// The calls of a corpus, ready for one target.
#[derive(Clone, Debug)]
pub struct Plan {
    pub protocol: Protocol,
    pub calls: Vec<Call>,
}

impl Plan {
    /// True when some call needs extra_info round trips (which rules out pipelining: the runner
    /// would read the next pipelined call where it waits for an answer).
    pub fn needs_extra_info(&self) -> bool {
        self.calls.iter().any(|c| !c.extra.is_empty())
    }
}

/// Why a corpus could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("i/o with the target: {0}")]
    Io(#[from] io::Error),
    #[error("corpus {what} #{index}: {reason}")]
    Corpus {
        what: &'static str,
        index: usize,
        reason: String,
    },
    #[error("the target refused prepare_conf #{index} (key {key}): {reason}")]
    Prepare {
        index: usize,
        key: String,
        reason: String,
    },
    #[error("the corpus has no calls")]
    Empty,
}

impl From<FramedError> for PlanError {
    fn from(e: FramedError) -> PlanError {
        PlanError::Io(e.into())
    }
}

fn frame_bytes(ty: FrameType, encode: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::new();
    write_frame(&mut out, ty as u8, encode).expect("a corpus message fits in a frame");
    out
}

/// A frame as it goes on the wire.
fn whole(f: &Frame) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + f.payload.len());
    f.write_to(&mut out);
    out
}

/// Sends the corpus' prepares on `stream`, then encodes its calls with the tokens they got.
///
/// A call whose recorded token no prepare produced keeps it (a corpus may test unknown tokens).
pub fn prepare(corpus: &Corpus, stream: &mut UnixStream) -> Result<Plan, PlanError> {
    let mut codec = corpus.protocol.gateway_codec();
    let mut tokens = HashMap::new();
    let mut framed = BlockingFramed::new(stream);
    for (index, p) in corpus.prepares.iter().enumerate() {
        let corpus_err = |reason: String| PlanError::Corpus {
            what: "prepare",
            index,
            reason,
        };
        let key =
            prepare_key(corpus.protocol, &p.request).map_err(|e| corpus_err(e.to_string()))?;
        let recorded = match FrameType::from_u8(p.reply.ty) {
            Some(FrameType::PrepareConf) => Some(
                codec
                    .decode_prepare_conf_resp(&p.reply.payload)
                    .map_err(|e| corpus_err(e.to_string()))?
                    .conf_token,
            ),
            _ => None,
        };
        framed.send_frame(&p.request)?;
        let reply = framed.expect_frame()?;
        let refused = |reason: String| PlanError::Prepare {
            index,
            key: key.clone(),
            reason,
        };
        match FrameType::from_u8(reply.ty) {
            Some(FrameType::PrepareConf) => {
                let fresh = codec
                    .decode_prepare_conf_resp(&reply.payload)
                    .map_err(|e| refused(e.to_string()))?
                    .conf_token;
                if let Some(old) = recorded {
                    tokens.insert(old, fresh);
                }
            }
            Some(FrameType::Error) if recorded.is_none() => {} // the corpus expects a refusal
            _ => {
                let code = codec.decode_error_resp(&reply.payload);
                return Err(refused(format!(
                    "reply of type {} ({code:?}); is the conf valid for this runner's plugins?",
                    reply.ty
                )));
            }
        }
    }
    encode_calls(corpus, &mut *codec, |t| *tokens.get(&t).unwrap_or(&t))
}

/// A prepare request's key, for messages. The gateway codec has no prepare-request decoder; the
/// runner codec of the same protocol has.
fn prepare_key(
    protocol: Protocol,
    f: &Frame,
) -> Result<String, ext_plugin_runner::codec::DecodeError> {
    let runner = protocol.runner_codec();
    let mut req = ext_plugin_runner::model::PrepareConfReq::default();
    runner.decode_prepare_conf_req(&f.payload, &mut req)?;
    Ok(req.key.to_string())
}

/// The calls of `corpus` with tokens passed through `token`.
pub fn encode_calls(
    corpus: &Corpus,
    codec: &mut dyn GatewayCodec,
    token: impl Fn(u32) -> u32,
) -> Result<Plan, PlanError> {
    // Requests are decoded with the runner-side decoder of the same protocol.
    let runner = corpus.protocol.runner_codec();
    let mut calls = Vec::with_capacity(corpus.calls.len());
    for (index, c) in corpus.calls.iter().enumerate() {
        let err = |reason: String| PlanError::Corpus {
            what: "call",
            index,
            reason,
        };
        let expect = Expect::from_reply(codec, &c.reply).map_err(|e| err(e.to_string()))?;
        let wire = match FrameType::from_u8(c.request.ty) {
            Some(FrameType::HttpReqCall) => {
                let mut req = Default::default();
                runner
                    .decode_http_req_call_req(&c.request.payload, &mut req)
                    .map_err(|e| err(e.to_string()))?;
                req.conf_token = token(req.conf_token);
                frame_bytes(FrameType::HttpReqCall, |o| {
                    codec.encode_http_req_call_req(&req, o)
                })
            }
            _ => {
                let mut req = Default::default();
                runner
                    .decode_http_resp_call_req(&c.request.payload, &mut req)
                    .map_err(|e| err(e.to_string()))?;
                req.conf_token = token(req.conf_token);
                frame_bytes(FrameType::HttpRespCall, |o| {
                    codec.encode_http_resp_call_req(&req, o)
                })
            }
        };
        let mut extra = Vec::with_capacity(c.extra.len());
        for (ask, answer) in &c.extra {
            let ask = codec
                .decode_extra_info_req(&ask.payload)
                .map_err(|e| err(e.to_string()))?;
            extra.push((ask, whole(answer)));
        }
        calls.push(Call {
            wire,
            extra,
            expect,
        });
    }
    if calls.is_empty() {
        return Err(PlanError::Empty);
    }
    Ok(Plan {
        protocol: corpus.protocol,
        calls,
    })
}

/// The corpus' calls for the echo floor: the same request frames (tokens as recorded), each
/// expected back unchanged in type and length. No prepares, no extra_info.
pub fn echo_plan(corpus: &Corpus) -> Result<Plan, PlanError> {
    let calls: Vec<Call> = corpus
        .calls
        .iter()
        .map(|c| Call {
            wire: whole(&c.request),
            extra: Vec::new(),
            expect: Expect::Echo {
                ty: c.request.ty,
                len: c.request.payload.len(),
            },
        })
        .collect();
    if calls.is_empty() {
        return Err(PlanError::Empty);
    }
    Ok(Plan {
        protocol: corpus.protocol,
        calls,
    })
}
