//! A gateway's side of a call: while it awaits the call's reply, the runner may ask for
//! variables and bodies (`extra_info`); each request is answered from a table, in order, and the
//! first frame that is not a request ends the wait.
//!
//! [`step`] is the decision for one frame, free of I/O, so the async and the blocking adapters
//! ([`super::Framed::await_reply`], [`super::BlockingFramed::await_reply`]) are the same loop:
//! read a frame, step, send the answer or return the reply.

use std::time::Duration;

use bytes::Bytes;

use super::{FrameQueue, FramedError};
use crate::codec::{DecodeError, GatewayCodec};
use crate::frame::{Frame, FrameType};
use crate::model::{ExtraInfoReq, ExtraInfoResp};

/// Where a gateway finds its answers to `extra_info` requests.
pub trait AnswerTable {
    type Error;

    /// The answer to `asked` (`Err` when the request did not decode). An error ends the wait.
    fn answer(
        &mut self,
        asked: Result<ExtraInfoReq, DecodeError>,
    ) -> Result<Answer<'_>, Self::Error>;
}

/// How a request is answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer<'a> {
    /// This value (`None` is nil), encoded by the gateway's codec.
    Value(Option<Bytes>),
    /// A whole answer frame encoded earlier, sent as it is.
    Wire(&'a [u8]),
    /// This value, sent after a pause: a slow gateway, for tests.
    Late(Duration, Option<Bytes>),
}

/// What one frame meant to a gateway awaiting a reply.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// The frame is not an `extra_info` request: the call's reply (or an error frame).
    Reply(Frame),
    /// A request whose answer is now queued, to be sent after `delay`.
    Answered { delay: Duration },
}

/// Takes one frame read while a call's reply is awaited: a request is answered from `table`
/// into `out`; anything else is the reply.
pub fn step<T>(
    frame: Frame,
    codec: &mut dyn GatewayCodec,
    table: &mut T,
    out: &mut FrameQueue,
) -> Result<Step, T::Error>
where
    T: AnswerTable + ?Sized,
    T::Error: From<FramedError>,
{
    if frame.ty != FrameType::ExtraInfo as u8 {
        return Ok(Step::Reply(frame));
    }
    let asked = codec.decode_extra_info_req(&frame.payload);
    let (result, delay) = match table.answer(asked)? {
        Answer::Wire(wire) => {
            out.push_raw(wire);
            return Ok(Step::Answered {
                delay: Duration::ZERO,
            });
        }
        Answer::Value(result) => (result, Duration::ZERO),
        Answer::Late(delay, result) => (result, delay),
    };
    out.push_with(FrameType::ExtraInfo as u8, |o| {
        codec.encode_extra_info_resp(&ExtraInfoResp { result }, o)
    })
    .map_err(FramedError::from)?;
    Ok(Step::Answered { delay })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Protocol;
    use crate::framed::BlockingFramed;

    /// Answers every variable with its own name; records what was asked.
    #[derive(Default)]
    struct Names {
        asked: Vec<ExtraInfoReq>,
    }

    impl AnswerTable for Names {
        type Error = FramedError;

        fn answer(
            &mut self,
            asked: Result<ExtraInfoReq, DecodeError>,
        ) -> Result<Answer<'_>, FramedError> {
            let asked = asked.expect("a valid request");
            let value = match &asked {
                ExtraInfoReq::Var(name) => Some(Bytes::from(name.to_string())),
                _ => None,
            };
            self.asked.push(asked);
            Ok(Answer::Value(value))
        }
    }

    fn frame(ty: FrameType, encode: impl FnOnce(&mut Vec<u8>)) -> Frame {
        let mut out = Vec::new();
        crate::frame::write_frame(&mut out, ty as u8, encode).unwrap();
        Frame {
            ty: ty as u8,
            payload: Bytes::copy_from_slice(&out[4..]),
        }
    }

    #[test]
    fn requests_are_answered_and_anything_else_is_the_reply() {
        for p in Protocol::ALL {
            let mut runner = p.runner_codec();
            let mut gateway = p.gateway_codec();
            let mut table = Names::default();
            let mut out = FrameQueue::new();
            let ask = frame(FrameType::ExtraInfo, |o| {
                runner.encode_extra_info_req(&ExtraInfoReq::Var("route_id".into()), o)
            });
            let s = step(ask, gateway.as_mut(), &mut table, &mut out).unwrap();
            assert_eq!(
                s,
                Step::Answered {
                    delay: Duration::ZERO
                }
            );
            let mut sent = bytes::BytesMut::from(out.unsent());
            let answer = crate::frame::split_frame(&mut sent).unwrap();
            assert_eq!(answer.ty, FrameType::ExtraInfo as u8);
            let resp = runner.decode_extra_info_resp(&answer.payload).unwrap();
            assert_eq!(resp.result.as_deref(), Some(&b"route_id"[..]));

            let reply = frame(FrameType::Error, |o| {
                runner.encode_error_resp(crate::model::ErrorCode::BadRequest, o)
            });
            let s = step(reply.clone(), gateway.as_mut(), &mut table, &mut out).unwrap();
            assert_eq!(s, Step::Reply(reply));
            assert_eq!(table.asked, [ExtraInfoReq::Var("route_id".into())]);
        }
    }

    #[test]
    fn a_blocking_gateway_answers_until_the_reply() {
        let (gw, runner) = std::os::unix::net::UnixStream::pair().unwrap();
        let p = Protocol::Capnp;
        let fake_runner = std::thread::spawn(move || {
            let mut codec = p.runner_codec();
            let mut framed = BlockingFramed::new(runner);
            let mut got = Vec::new();
            for name in ["a", "bb"] {
                framed
                    .queue()
                    .push_with(FrameType::ExtraInfo as u8, |o| {
                        codec.encode_extra_info_req(&ExtraInfoReq::Var(name.into()), o)
                    })
                    .unwrap();
                framed.flush().unwrap();
                let answer = framed.expect_frame().unwrap();
                got.push(
                    codec
                        .decode_extra_info_resp(&answer.payload)
                        .unwrap()
                        .result,
                );
            }
            framed.send_raw(&[2, 0, 0, 1, 0]).unwrap();
            got
        });
        let mut framed = BlockingFramed::new(gw);
        let mut table = Names::default();
        let reply = framed
            .await_reply(p.gateway_codec().as_mut(), &mut table)
            .unwrap();
        assert_eq!((reply.ty, &reply.payload[..]), (2, &[0u8][..]));
        assert_eq!(
            fake_runner.join().unwrap(),
            [Some(Bytes::from("a")), Some(Bytes::from("bb"))]
        );
    }
}
