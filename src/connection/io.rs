//! A connection's socket and buffers: reading whole frames, queueing and sending replies, and
//! the runner's side of an `extra_info` exchange, with the connection's limits on each.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::watch;
use tokio::time::timeout;
use tracing::warn;

use crate::codec::RunnerCodec;
use crate::config::Config;
use crate::frame::{split_frame, write_frame, Frame, FrameHeader, FrameType, HEADER_LEN};
use crate::model::{ErrorCode, ExtraInfoReq};
use ext_plugin_sdk::host::GatewayVars;
use ext_plugin_sdk::PluginError;

/// Read-buffer growth per read while a frame is incomplete: large frames are read in steps, so a
/// header that promises 16 MiB costs nothing until the bytes arrive.
const READ_CHUNK: usize = 64 * 1024;

/// The least spare room a read is given.
const READ_MIN: usize = 4096;

/// Buffer storage a connection keeps between calls. Buffers are reused so steady traffic does
/// not allocate, but one large frame or reply must not pin its size for the connection's life
/// (thousands of pooled connections each holding megabytes): past this, storage is given back
/// once the call is done.
const RETAINED_BUFFER: usize = 256 * 1024;

/// Why a connection ends.
#[derive(Debug, thiserror::Error)]
pub(super) enum Close {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("connection closed inside a frame")]
    Truncated,
    #[error("frame of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("idle for the idle timeout")]
    Idle,
    #[error("frame stalled after {have} of {want} bytes")]
    Stalled { have: usize, want: usize },
    #[error("reply write stalled with {0} bytes unsent")]
    WriteStalled(usize),
    #[error("{0}")]
    Gateway(String),
}

/// The socket, its buffers and its codec.
pub(super) struct Io {
    pub(super) stream: UnixStream,
    pub(super) rbuf: BytesMut,
    pub(super) wbuf: Vec<u8>,
    pub(super) codec: Box<dyn RunnerCodec>,
    pub(super) max_frame: usize,
    pub(super) idle_timeout: Duration,
    pub(super) stall_timeout: Duration,
    /// An extra_info request is out and its answer not yet read: if the call is abandoned now,
    /// the stream is out of step and the connection must close.
    pub(super) in_exchange: bool,
}

impl Io {
    pub(super) fn new(stream: UnixStream, codec: Box<dyn RunnerCodec>, config: &Config) -> Io {
        Io {
            stream,
            rbuf: BytesMut::new(),
            wbuf: Vec::new(),
            codec,
            max_frame: config.max_frame,
            idle_timeout: config.idle_timeout,
            stall_timeout: config.stall_timeout,
            in_exchange: false,
        }
    }

    /// The next whole frame; `None` on a clean end of stream, or on shutdown while idle.
    pub(super) async fn read_frame(
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
            // Until a header says more, a small read: an idle pooled connection (there may be
            // thousands) then holds 4 KiB, not a whole chunk, and most calls fit in it anyway.
            let wanted = FrameHeader::parse(&self.rbuf)
                .map_or(READ_MIN, |h| HEADER_LEN + h.len - self.rbuf.len());
            // Grow only when the spare room is nearly used up, and by no more than what has
            // arrived (at most a chunk): memory follows the bytes received, never the length a
            // header promises, and a large frame still takes few reads.
            if self.rbuf.capacity() - self.rbuf.len() < READ_MIN {
                let step = wanted.clamp(READ_MIN, READ_CHUNK);
                self.rbuf.reserve(step.min(self.rbuf.len().max(READ_MIN)));
            }
            let n = if !self.rbuf.is_empty() {
                // A frame under way must keep making progress (slowloris).
                let have = self.rbuf.len();
                match timeout(self.stall_timeout, self.stream.read_buf(&mut self.rbuf)).await {
                    Ok(n) => n?,
                    Err(_) => {
                        let want = FrameHeader::parse(&self.rbuf).map_or(HEADER_LEN, |h| h.len);
                        return Err(Close::Stalled { have, want });
                    }
                }
            } else if let Some(rx) = shutdown.as_deref_mut() {
                // Between calls: the idle timeout, and shutdown ends the wait.
                if *rx.borrow() {
                    return Ok(None);
                }
                tokio::select! {
                    n = timeout(self.idle_timeout, self.stream.read_buf(&mut self.rbuf)) => {
                        n.map_err(|_| Close::Idle)??
                    }
                    _ = rx.changed() => return Ok(None),
                }
            } else {
                // Inside a call, awaiting an extra_info answer: the call's deadline applies.
                self.stream.read_buf(&mut self.rbuf).await?
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
    pub(super) fn queue(
        &mut self,
        ty: FrameType,
        encode: impl FnOnce(&mut dyn RunnerCodec, &mut Vec<u8>),
    ) {
        let Io { wbuf, codec, .. } = self;
        if let Err(e) = write_frame(wbuf, ty as u8, |out| encode(codec.as_mut(), out)) {
            warn!(error = %e, frame = ?ty, "reply cannot be framed; answering SERVICE_UNAVAILABLE");
            self.queue_error(ErrorCode::ServiceUnavailable);
        }
    }

    pub(super) fn queue_error(&mut self, code: ErrorCode) {
        let Io { wbuf, codec, .. } = self;
        write_frame(wbuf, FrameType::Error as u8, |out| {
            codec.encode_error_resp(code, out)
        })
        .expect("an error message is a few bytes");
    }

    /// Sends the queued bytes. A gateway that stops reading (its socket buffer full) stalls
    /// the write; past `stall_timeout` without progress the connection is given up.
    pub(super) async fn flush(&mut self) -> Result<(), Close> {
        let mut sent = 0;
        while sent < self.wbuf.len() {
            let write = self.stream.write(&self.wbuf[sent..]);
            match timeout(self.stall_timeout, write).await {
                Ok(Ok(0)) => return Err(Close::Io(io::ErrorKind::WriteZero.into())),
                Ok(Ok(n)) => sent += n,
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => return Err(Close::WriteStalled(self.wbuf.len() - sent)),
            }
        }
        self.wbuf.clear();
        Ok(())
    }

    /// Gives back buffer storage past [`RETAINED_BUFFER`] (bytes of a next frame already read
    /// stay).
    pub(super) fn trim_buffers(&mut self) {
        if self.rbuf.is_empty() && self.rbuf.capacity() > RETAINED_BUFFER {
            self.rbuf = BytesMut::new();
        }
        if self.wbuf.capacity() > RETAINED_BUFFER {
            self.wbuf = Vec::new();
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Protocol;
    use crate::frame::MAX_PAYLOAD;

    fn pair(config: &Config) -> (Io, UnixStream) {
        let (runner, gateway) = UnixStream::pair().expect("a socket pair");
        (
            Io::new(runner, Protocol::Capnp.runner_codec(), config),
            gateway,
        )
    }

    #[tokio::test]
    async fn a_promised_length_is_not_reserved_up_front_and_a_stall_closes() {
        let config = Config {
            stall_timeout: Duration::from_millis(50),
            ..Config::default()
        };
        let (mut io, mut gateway) = pair(&config);
        gateway
            .write_all(&[2, 0xFF, 0xFF, 0xFF, 1, 2, 3])
            .await
            .unwrap();
        match io.read_frame(None).await {
            Err(Close::Stalled { want, .. }) => assert_eq!(want, MAX_PAYLOAD),
            other => panic!("expected a stall, got {other:?}"),
        }
        assert!(
            io.rbuf.capacity() <= 2 * READ_MIN,
            "{} bytes reserved for a 16 MiB promise",
            io.rbuf.capacity()
        );
    }

    #[tokio::test]
    async fn no_call_and_no_bytes_for_the_idle_timeout_closes() {
        let config = Config {
            idle_timeout: Duration::from_millis(50),
            ..Config::default()
        };
        let (mut io, _gateway) = pair(&config);
        let (_tx, mut rx) = watch::channel(false);
        assert!(matches!(
            io.read_frame(Some(&mut rx)).await,
            Err(Close::Idle)
        ));
    }

    #[tokio::test]
    async fn a_large_frame_does_not_pin_its_buffer() {
        let (mut io, mut gateway) = pair(&Config::default());
        let len = 4 * RETAINED_BUFFER;
        let mut frame = FrameHeader::encode(1, len).to_vec();
        frame.resize(HEADER_LEN + len, 7);
        let writer = tokio::spawn(async move {
            gateway.write_all(&frame).await.unwrap();
            gateway
        });
        let got = io.read_frame(None).await.unwrap().expect("a frame");
        assert_eq!(got.payload.len(), len);
        drop(got);
        io.wbuf.resize(2 * RETAINED_BUFFER, 0);
        io.wbuf.clear();
        io.trim_buffers();
        assert!(io.rbuf.capacity() <= RETAINED_BUFFER);
        assert!(io.wbuf.capacity() <= RETAINED_BUFFER);
        drop(writer.await.unwrap());
    }
}
