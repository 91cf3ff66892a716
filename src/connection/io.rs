//! A connection's socket in frames ([`crate::framed`]): reading calls with the idle timeout,
//! queueing and sending replies, and the runner's side of an `extra_info` exchange.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UnixStream;
use tokio::sync::watch;
use tokio::time::timeout;
use tracing::warn;

use crate::codec::RunnerCodec;
use crate::config::Config;
use crate::frame::{Frame, FrameType};
use crate::framed::{Framed, FramedError};
use crate::model::{ErrorCode, ExtraInfoReq};
use ext_plugin_sdk::host::GatewayVars;
use ext_plugin_sdk::PluginError;

/// Buffer storage a connection keeps between calls. Buffers are reused so steady traffic does
/// not allocate, but one large frame or reply must not pin its size for the connection's life
/// (thousands of pooled connections each holding megabytes): past this, storage is given back
/// once the call is done.
const RETAINED_BUFFER: usize = 256 * 1024;

/// Why a connection ends.
#[derive(Debug, thiserror::Error)]
pub(super) enum Close {
    /// Reading or writing frames failed: i/o, a frame over the limit, a stall.
    #[error(transparent)]
    Framed(#[from] FramedError),
    #[error("idle for the idle timeout")]
    Idle,
    #[error("{0}")]
    Gateway(String),
}

impl From<std::io::Error> for Close {
    fn from(e: std::io::Error) -> Close {
        Close::Framed(e.into())
    }
}

/// The socket in frames, and the codec.
pub(super) struct Io {
    pub(super) framed: Framed<UnixStream>,
    pub(super) codec: Box<dyn RunnerCodec>,
    pub(super) idle_timeout: Duration,
    /// An extra_info request is out and its answer not yet read: if the call is abandoned now,
    /// the stream is out of step and the connection must close.
    pub(super) in_exchange: bool,
}

impl Io {
    pub(super) fn new(stream: UnixStream, codec: Box<dyn RunnerCodec>, config: &Config) -> Io {
        Io {
            framed: Framed::with_limits(stream, config.max_frame, Some(config.stall_timeout)),
            codec,
            idle_timeout: config.idle_timeout,
            in_exchange: false,
        }
    }

    pub(super) fn max_frame(&self) -> usize {
        self.framed.max_frame()
    }

    pub(super) fn stall_timeout(&self) -> Option<Duration> {
        self.framed.stall_timeout()
    }

    /// The next call's frame; `None` on a clean end of stream, or on shutdown while idle.
    ///
    /// Between calls the idle timeout applies, and shutdown ends the wait; once a frame has
    /// started, its bytes must keep coming within the stall timeout (slowloris).
    pub(super) async fn next_frame(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Option<Frame>, Close> {
        if self.framed.read_buffer().is_empty() {
            if *shutdown.borrow() {
                return Ok(None);
            }
            tokio::select! {
                n = timeout(self.idle_timeout, self.framed.fill()) => {
                    if n.map_err(|_| Close::Idle)?? == 0 {
                        return Ok(None);
                    }
                }
                _ = shutdown.changed() => return Ok(None),
            }
        }
        Ok(self.framed.read_frame().await?)
    }

    /// Appends a frame whose payload `encode` writes; a payload the protocol cannot carry (over
    /// 16 MiB) is replaced by a SERVICE_UNAVAILABLE error frame.
    pub(super) fn queue(
        &mut self,
        ty: FrameType,
        encode: impl FnOnce(&mut dyn RunnerCodec, &mut Vec<u8>),
    ) {
        let Io { framed, codec, .. } = self;
        if let Err(e) = framed
            .queue()
            .push_with(ty as u8, |out| encode(codec.as_mut(), out))
        {
            warn!(error = %e, frame = ?ty, "reply cannot be framed; answering SERVICE_UNAVAILABLE");
            self.queue_error(ErrorCode::ServiceUnavailable);
        }
    }

    pub(super) fn queue_error(&mut self, code: ErrorCode) {
        let Io { framed, codec, .. } = self;
        framed
            .queue()
            .push_with(FrameType::Error as u8, |out| {
                codec.encode_error_resp(code, out)
            })
            .expect("an error message is a few bytes");
    }

    /// Sends the queued bytes. A gateway that stops reading (its socket buffer full) stalls
    /// the write; past the stall timeout without progress the connection is given up.
    pub(super) async fn flush(&mut self) -> Result<(), Close> {
        Ok(self.framed.flush().await?)
    }

    /// Gives back buffer storage past [`RETAINED_BUFFER`] (bytes of a next frame already read
    /// stay).
    pub(super) fn trim_buffers(&mut self) {
        self.framed.trim(RETAINED_BUFFER);
    }

    async fn exchange(&mut self, req: ExtraInfoReq) -> Result<Option<Bytes>, PluginError> {
        let gateway = |what: &str, e: &dyn fmt::Display| {
            PluginError::gateway(format!("extra_info: {what}: {e}"))
        };
        self.queue(FrameType::ExtraInfo, |c, out| {
            c.encode_extra_info_req(&req, out)
        });
        self.in_exchange = true;
        self.flush()
            .await
            .map_err(|e| gateway("writing the request", &e))?;
        let frame = match self.framed.read_frame().await {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Protocol;

    fn pair(config: &Config) -> (Io, UnixStream) {
        let (runner, gateway) = UnixStream::pair().expect("a socket pair");
        (
            Io::new(runner, Protocol::Capnp.runner_codec(), config),
            gateway,
        )
    }

    #[tokio::test]
    async fn no_call_and_no_bytes_for_the_idle_timeout_closes() {
        let config = Config {
            idle_timeout: Duration::from_millis(50),
            ..Config::default()
        };
        let (mut io, _gateway) = pair(&config);
        let (_tx, mut rx) = watch::channel(false);
        assert!(matches!(io.next_frame(&mut rx).await, Err(Close::Idle)));
    }
}
