//! One gateway connection: read a frame, serve the call, write the reply, repeat.
//!
//! The connection owns every buffer a call needs (read buffer, write buffer, decoded messages,
//! call state) and reuses them, so a steady stream of calls does not allocate for framing or
//! decoding. A reply leaves in one write. The only reads inside a call are the answers to the
//! call's own `extra_info` requests.

use std::future::Future;
use std::io;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::codec::{detect, Protocol, ProtocolSetting, RunnerCodec};
use crate::frame::{split_frame, write_frame, Frame, FrameHeader, FrameType, HEADER_LEN};
use crate::model::{
    ErrorCode, ExtraInfoReq, HttpReqCallReq, HttpReqCallResp, HttpRespCallReq, PrepareConfReq,
    PrepareConfResp, ReqAction,
};
use crate::plugin::{CallState, GatewayVars, PluginError, RespState};
use crate::server::Shared;

/// Read-buffer growth per read while a frame is incomplete: large frames are read in steps, so a
/// header that promises 16 MiB costs nothing until the bytes arrive.
const READ_CHUNK: usize = 64 * 1024;

/// Why a connection ends.
#[derive(Debug, thiserror::Error)]
enum Close {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("connection closed inside a frame")]
    Truncated,
    #[error("frame of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("{0}")]
    Gateway(String),
}

/// The socket, its buffers and its codec.
struct Io {
    stream: UnixStream,
    rbuf: BytesMut,
    wbuf: Vec<u8>,
    codec: Box<dyn RunnerCodec>,
    max_frame: usize,
    /// An extra_info request is out and its answer not yet read: if the call is abandoned now,
    /// the stream is out of step and the connection must close.
    in_exchange: bool,
}

impl Io {
    /// The next whole frame; `None` on a clean end of stream, or on shutdown while idle.
    async fn read_frame(
        &mut self,
        mut shutdown: Option<&mut watch::Receiver<bool>>,
    ) -> Result<Option<Frame>, Close> {
        loop {
            if let Some(header) = FrameHeader::parse(&self.rbuf) {
                if header.len > self.max_frame {
                    return Err(Close::TooLarge(header.len));
                }
            }
            if let Some(frame) = split_frame(&mut self.rbuf) {
                return Ok(Some(frame));
            }
            let wanted = FrameHeader::parse(&self.rbuf)
                .map_or(READ_CHUNK, |h| HEADER_LEN + h.len - self.rbuf.len());
            self.rbuf.reserve(wanted.clamp(4096, READ_CHUNK));
            let idle = self.rbuf.is_empty();
            let n = match shutdown.as_deref_mut() {
                Some(rx) if idle => {
                    if *rx.borrow() {
                        return Ok(None);
                    }
                    tokio::select! {
                        n = self.stream.read_buf(&mut self.rbuf) => n?,
                        _ = rx.changed() => return Ok(None),
                    }
                }
                _ => self.stream.read_buf(&mut self.rbuf).await?,
            };
            if n == 0 {
                return if self.rbuf.is_empty() {
                    Ok(None)
                } else {
                    Err(Close::Truncated)
                };
            }
        }
    }

    /// Appends a frame whose payload `encode` writes; a payload the protocol cannot carry (over
    /// 16 MiB) is replaced by a SERVICE_UNAVAILABLE error frame.
    fn queue(&mut self, ty: FrameType, encode: impl FnOnce(&mut dyn RunnerCodec, &mut Vec<u8>)) {
        let Io { wbuf, codec, .. } = self;
        if let Err(e) = write_frame(wbuf, ty as u8, |out| encode(codec.as_mut(), out)) {
            warn!(error = %e, frame = ?ty, "reply cannot be framed; answering SERVICE_UNAVAILABLE");
            self.queue_error(ErrorCode::ServiceUnavailable);
        }
    }

    fn queue_error(&mut self, code: ErrorCode) {
        let Io { wbuf, codec, .. } = self;
        write_frame(wbuf, FrameType::Error as u8, |out| {
            codec.encode_error_resp(code, out)
        })
        .expect("an error message is a few bytes");
    }

    async fn flush(&mut self) -> io::Result<()> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    async fn exchange(&mut self, req: ExtraInfoReq) -> Result<Option<Bytes>, PluginError> {
        let gateway = |what: &str, e: &dyn std::fmt::Display| {
            PluginError::gateway(format!("extra_info: {what}: {e}"))
        };
        self.queue(FrameType::ExtraInfo, |c, out| {
            c.encode_extra_info_req(&req, out)
        });
        self.in_exchange = true;
        self.flush()
            .await
            .map_err(|e| gateway("writing the request", &e))?;
        let frame = match self.read_frame(None).await {
            Ok(Some(frame)) => frame,
            Ok(None) => return Err(gateway("reading the answer", &"connection closed")),
            Err(e) => return Err(gateway("reading the answer", &e)),
        };
        self.in_exchange = false;
        if frame.ty != FrameType::ExtraInfo as u8 {
            return Err(PluginError::gateway(format!(
                "extra_info: expected an answer of type 3, got a frame of type {}",
                frame.ty
            )));
        }
        match self.codec.decode_extra_info_resp(&frame.payload) {
            Ok(resp) => Ok(resp.result),
            Err(e) => Err(gateway("decoding the answer", &e)),
        }
    }
}

impl GatewayVars for Io {
    fn fetch<'a>(
        &'a mut self,
        req: ExtraInfoReq,
    ) -> Pin<Box<dyn Future<Output = Result<Option<Bytes>, PluginError>> + Send + 'a>> {
        Box::pin(self.exchange(req))
    }
}

/// Decoded messages and call state, reused from call to call.
#[derive(Default)]
struct Scratch {
    prepare: PrepareConfReq,
    req: HttpReqCallReq,
    resp_req: HttpRespCallReq,
    call: CallState,
    resp: RespState,
}

impl Scratch {
    /// Drops what the last call decoded, so the read buffer's storage is no longer shared and
    /// can be reused for the next frame.
    fn release(&mut self) {
        self.prepare.conf.clear();
        self.prepare.key = Default::default();
        self.req.path = Default::default();
        self.req.args.clear();
        self.req.headers.clear();
        self.req.extra_info.clear();
        self.resp_req.headers.clear();
        self.call.reset();
        self.resp.reset();
    }
}

/// Serves one connection until the gateway closes it, it breaks the protocol, or the runner
/// shuts down (between calls).
pub(crate) async fn serve(
    stream: UnixStream,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let protocol = match shared.config.protocol {
        ProtocolSetting::Fixed(p) => p,
        ProtocolSetting::Auto => Protocol::Capnp,
    };
    let mut conn = Connection {
        io: Io {
            stream,
            rbuf: BytesMut::new(),
            wbuf: Vec::new(),
            codec: protocol.runner_codec(),
            max_frame: shared.config.max_frame,
            in_exchange: false,
        },
        scratch: Scratch::default(),
        shared: &shared,
    };
    match conn.run(&mut shutdown).await {
        Ok(()) => debug!("connection closed"),
        Err(Close::TooLarge(len)) => {
            warn!(
                len,
                limit = conn.io.max_frame,
                "frame over the size limit; closing the connection"
            );
            conn.io.queue_error(ErrorCode::BadRequest);
            let _ = conn.io.flush().await;
        }
        Err(e) => debug!(error = %e, "connection ended"),
    }
}

struct Connection<'s> {
    io: Io,
    scratch: Scratch,
    shared: &'s Shared,
}

impl Connection<'_> {
    async fn run(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<(), Close> {
        // With `auto`, the first payload that fits a protocol decides the connection's. A first
        // frame that fits none gets BAD_REQUEST (in the default codec) and decides nothing, so
        // one bad frame cannot pin the connection to a protocol its gateway does not speak.
        let mut undecided = self.shared.config.protocol == ProtocolSetting::Auto;
        while let Some(frame) = self.io.read_frame(Some(shutdown)).await? {
            if undecided {
                if let Some(p) = detect(&frame.payload) {
                    undecided = false;
                    if p != self.io.codec.protocol() {
                        self.io.codec = p.runner_codec();
                    }
                }
            }
            let result = self.serve_frame(frame).await;
            self.scratch.release();
            self.io.flush().await?;
            result?;
        }
        Ok(())
    }

    /// Serves one frame, queueing its reply. An error means the connection must close after the
    /// queued bytes are sent.
    async fn serve_frame(&mut self, frame: Frame) -> Result<(), Close> {
        match FrameType::from_u8(frame.ty) {
            Some(FrameType::PrepareConf) => {
                self.prepare_conf(&frame.payload);
                Ok(())
            }
            Some(FrameType::HttpReqCall) => self.http_req_call(&frame.payload).await,
            Some(FrameType::HttpRespCall) => self.http_resp_call(&frame.payload).await,
            _ => {
                debug!(
                    ty = frame.ty,
                    "frame type the gateway does not send; BAD_REQUEST"
                );
                self.io.queue_error(ErrorCode::BadRequest);
                Ok(())
            }
        }
    }

    fn prepare_conf(&mut self, payload: &Bytes) {
        let Connection {
            io,
            scratch,
            shared,
        } = self;
        if let Err(e) = io
            .codec
            .decode_prepare_conf_req(payload, &mut scratch.prepare)
        {
            debug!(error = %e, "BAD_REQUEST");
            return io.queue_error(ErrorCode::BadRequest);
        }
        let req = &scratch.prepare;
        let result = shared
            .cache
            .prepare(&req.key, || shared.registry.build_chain(req, &shared.state));
        match result {
            Ok(conf_token) => {
                debug!(key = %req.key, conf_token, "prepared");
                io.queue(FrameType::PrepareConf, |c, out| {
                    c.encode_prepare_conf_resp(&PrepareConfResp { conf_token }, out)
                });
            }
            Err(e) => {
                warn!(key = %req.key, "prepare_conf refused: {e}");
                io.queue_error(ErrorCode::BadRequest);
            }
        }
    }

    async fn http_req_call(&mut self, payload: &Bytes) -> Result<(), Close> {
        let Connection {
            io,
            scratch,
            shared,
        } = self;
        if let Err(e) = io.codec.decode_http_req_call_req(payload, &mut scratch.req) {
            debug!(error = %e, "BAD_REQUEST");
            io.queue_error(ErrorCode::BadRequest);
            return Ok(());
        }
        let Some(chain) = shared.cache.get(scratch.req.conf_token) else {
            io.queue_error(ErrorCode::ConfTokenNotFound);
            return Ok(());
        };
        let run = chain.run_request(&scratch.req, &mut scratch.call, io);
        let outcome = guard(shared.config.call_timeout, run).await;
        let action = match outcome {
            Outcome::Done(Ok(action)) => action,
            Outcome::Done(Err(failure)) => {
                return fail(io, chain.key(), Some(failure.plugin), &failure.error)
            }
            Outcome::Panicked => return fail(io, chain.key(), None, &panicked()),
            Outcome::TimedOut => return fail(io, chain.key(), None, &timed_out()),
        };
        let reply = HttpReqCallResp {
            id: scratch.req.id,
            action,
        };
        io.queue(FrameType::HttpReqCall, |c, out| {
            c.encode_http_req_call_resp(&reply, out)
        });
        if let ReqAction::Rewrite(rewrite) = reply.action {
            // Hand the rewrite's vectors back for the next call.
            scratch.call.rewrite = rewrite;
        }
        Ok(())
    }

    async fn http_resp_call(&mut self, payload: &Bytes) -> Result<(), Close> {
        let Connection {
            io,
            scratch,
            shared,
        } = self;
        if let Err(e) = io
            .codec
            .decode_http_resp_call_req(payload, &mut scratch.resp_req)
        {
            debug!(error = %e, "BAD_REQUEST");
            io.queue_error(ErrorCode::BadRequest);
            return Ok(());
        }
        let Some(chain) = shared.cache.get(scratch.resp_req.conf_token) else {
            io.queue_error(ErrorCode::ConfTokenNotFound);
            return Ok(());
        };
        let run = chain.run_response(&scratch.resp_req, &mut scratch.resp, io);
        match guard(shared.config.call_timeout, run).await {
            Outcome::Done(Ok(())) => {}
            Outcome::Done(Err(failure)) => {
                return fail(io, chain.key(), Some(failure.plugin), &failure.error)
            }
            Outcome::Panicked => return fail(io, chain.key(), None, &panicked()),
            Outcome::TimedOut => return fail(io, chain.key(), None, &timed_out()),
        }
        let reply = scratch.resp.take_reply(scratch.resp_req.id);
        io.queue(FrameType::HttpRespCall, |c, out| {
            c.encode_http_resp_call_resp(&reply, out)
        });
        Ok(())
    }
}

enum Outcome<T> {
    Done(T),
    Panicked,
    TimedOut,
}

/// Runs a chain with the call deadline, turning a plugin panic into an outcome.
async fn guard<T>(deadline: std::time::Duration, run: impl Future<Output = T>) -> Outcome<T> {
    match tokio::time::timeout(deadline, AssertUnwindSafe(run).catch_unwind()).await {
        Ok(Ok(value)) => Outcome::Done(value),
        Ok(Err(_panic)) => Outcome::Panicked,
        Err(_elapsed) => Outcome::TimedOut,
    }
}

fn panicked() -> PluginError {
    PluginError::new("a plugin panicked")
}

fn timed_out() -> PluginError {
    PluginError::new("the call exceeded its deadline")
}

/// Answers a failed call. The connection closes when the gateway broke the exchange or the call
/// was abandoned with an extra_info request outstanding (the stream is out of step).
fn fail(io: &mut Io, key: &str, plugin: Option<&str>, error: &PluginError) -> Result<(), Close> {
    if error.is_gateway_failure() {
        debug!(key, error = %error, "gateway failed during the call");
        io.queue_error(ErrorCode::BadRequest);
        return Err(Close::Gateway(error.to_string()));
    }
    warn!(key, plugin = plugin.unwrap_or("-"), error = %error, "call failed; SERVICE_UNAVAILABLE");
    io.queue_error(ErrorCode::ServiceUnavailable);
    if io.in_exchange {
        return Err(Close::Gateway(
            "call abandoned during an extra_info exchange".into(),
        ));
    }
    Ok(())
}
