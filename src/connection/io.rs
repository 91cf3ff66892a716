//! A connection's socket in frames ([`crate::framed`]): reading calls with the idle timeout,
//! queueing and sending replies, and the runner's side of an `extra_info` exchange.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::{pin, Pin};
use std::sync::LazyLock;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UnixStream;
use tokio::time::{Instant, Sleep};
use tracing::warn;

use crate::codec::RunnerCodec;
use crate::config::Config;
use crate::frame::{Frame, FrameType, FrameWriteError, MAX_PAYLOAD};
use crate::framed::{poll_once, ByteBudget, Framed, FramedError};
use crate::limits::LimitLog;
use crate::model::{ErrorCode, ExtraInfoReq};
use ext_plugin_sdk::host::GatewayVars;
use ext_plugin_sdk::PluginError;

use super::shutdown::Shutdown;

/// Buffer storage a connection keeps between calls. Buffers are reused so steady traffic does
/// not allocate, but one large frame or reply must not pin its size for the connection's life
/// (thousands of pooled connections each holding megabytes): past this, storage is given back
/// once the call is done.
const RETAINED_BUFFER: usize = 256 * 1024;

/// Replies held back for one write while pipelined calls are served, at most: past this they go
/// out, so a gateway pipelining many calls gets answers while the rest are served.
const BATCH_LIMIT: usize = 64 * 1024;

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
    /// Shutting down past the drain timeout: the call in flight was answered with an error.
    #[error("call abandoned at shutdown")]
    Abandoned,
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
    /// The idle timer: one per connection, registered once and moved on only when it fires
    /// early (see [`Io::next_frame`]), instead of a timer set and cancelled around every wait.
    idle: Pin<Box<Sleep>>,
    /// extra_info requests queued whose answers have not been read. A plugin may drop a fetch
    /// (a timeout or `select!` around it): its request is still sent, whole, and its answer
    /// still comes, so it is read and dropped before anything else is read or written.
    owed: usize,
    /// Why an exchange with the gateway broke during this call: the stream may be out of step,
    /// so the call fails and the connection closes, whatever the plugin made of the error.
    broken: Option<String>,
    /// Bytes of extra_info answers a call may read ([`Config::extra_info_budget`]), and how
    /// many this call has read. The answers stay alive as long as the call (plugins keep what
    /// they fetched), so this bounds what one call can make the runner hold.
    answer_budget: usize,
    answered: usize,
    /// The connection's clock: when it last woke up with bytes to serve, read once (on first
    /// use) for everything timed until the next wait: the calls' deadlines, the conf cache's
    /// last use, the metrics, and the idle timeout's start. Calls that finish without waiting
    /// take microseconds, so serving them moves the clock less than the timers' own slack;
    /// anything that waits (a read, a flush that blocked, a chain that waited) makes it stale
    /// (`None`), and the next use reads it again.
    woke: Option<Instant>,
}

impl Io {
    pub(super) fn new(
        stream: UnixStream,
        codec: Box<dyn RunnerCodec>,
        config: &Config,
        buffers: &ByteBudget,
    ) -> Io {
        let framed = Framed::with_limits(stream, config.max_frame, Some(config.stall_timeout))
            .with_frame_timeout(config.frame_timeout)
            .with_budget(buffers.clone());
        Io {
            framed,
            codec,
            idle_timeout: config.idle_timeout,
            idle: Box::pin(tokio::time::sleep(config.idle_timeout)),
            owed: 0,
            broken: None,
            answer_budget: config.extra_info_budget,
            answered: 0,
            woke: None,
        }
    }

    /// The connection's clock (see `woke`): the time of the last wake-up, read at most once
    /// per wake-up.
    pub(super) fn now(&mut self) -> Instant {
        *self.woke.get_or_insert_with(Instant::now)
    }

    /// Something waited: the next [`Io::now`] reads the clock again.
    pub(super) fn waited(&mut self) {
        self.woke = None;
    }

    /// Starts a call: its extra_info answers count from zero.
    pub(super) fn begin_call(&mut self) {
        self.answered = 0;
    }

    /// True when this call read more extra_info answers than its budget allows: it fails with
    /// SERVICE_UNAVAILABLE, whatever the plugin made of the error (the stream is in step).
    pub(super) fn over_budget(&self) -> bool {
        self.answered > self.answer_budget
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
    ///
    /// The idle timer is checked lazily: a wait only notes when it began (the connection's
    /// clock, [`Io::now`]: no clock read of its own after calls that did not wait). The
    /// connection's one timer fires at the deadline of some earlier wait; if a call came since,
    /// it is moved to this wait's deadline and the wait goes on. A busy connection so touches
    /// the timer wheel about once per idle timeout instead of twice per call.
    pub(super) async fn next_frame(
        &mut self,
        shutdown: &mut Shutdown,
    ) -> Result<Option<Frame>, Close> {
        let whole = self.framed.read_buffer().has_frame();
        if self.framed.read_buffer().is_empty() {
            if shutdown.requested() {
                return Ok(None);
            }
            let due = self.now() + self.idle_timeout;
            loop {
                // Biased, the read first: when the call has arrived, nothing else is polled.
                tokio::select! {
                    biased;
                    n = self.framed.fill_or_park() => {
                        if n? == 0 {
                            return Ok(None);
                        }
                        break;
                    }
                    () = self.idle.as_mut() => {
                        if Instant::now() >= due {
                            return Err(Close::Idle);
                        }
                        self.idle.as_mut().reset(due);
                    }
                    () = shutdown.wait() => return Ok(None),
                }
            }
        }
        let frame = self.framed.read_frame().await?;
        if !whole {
            // Bytes were read: this is a wake-up, and the clock is read again when next asked.
            self.waited();
        }
        Ok(frame)
    }

    /// Appends a frame whose payload `encode` writes, of at least `floor` bytes (what the reply
    /// carries: a body, header strings). A payload the protocol cannot carry (over 16 MiB) is
    /// replaced by a SERVICE_UNAVAILABLE error frame; one whose floor is already over that is
    /// not encoded at all (encoders allocate, and Cap'n Proto's panics past 2^29 bytes), and a
    /// panicking encoder is caught, leaving nothing queued.
    pub(super) fn queue(
        &mut self,
        ty: FrameType,
        floor: usize,
        encode: impl FnOnce(&mut dyn RunnerCodec, &mut Vec<u8>),
    ) {
        let refused = if floor > MAX_PAYLOAD {
            Err(FrameWriteError::TooLarge(floor))
        } else {
            let Io { framed, codec, .. } = self;
            framed.queue().push_with(ty as u8, |out| {
                let start = out.len();
                let encoded = catch_unwind(AssertUnwindSafe(|| encode(codec.as_mut(), out)));
                if encoded.is_err() {
                    // Whatever was written goes: an empty payload is refused, nothing queued.
                    out.truncate(start);
                }
            })
        };
        if let Err(e) = refused {
            // A chain that answers too much does so on every request: one line per interval.
            static OVERSIZED_REPLIES: LazyLock<LimitLog> = LazyLock::new(LimitLog::default);
            if let Some(hits) = OVERSIZED_REPLIES.hit() {
                warn!(error = %e, frame = ?ty, hits, "reply cannot be framed; answering SERVICE_UNAVAILABLE");
            }
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

    /// True when the replies queued may wait for the next call's: its frame is already read,
    /// so serving it needs no read (which could block with replies unsent), and the queue is
    /// under [`BATCH_LIMIT`]. The replies to calls a gateway pipelined then leave in one write.
    pub(super) fn batching(&self) -> bool {
        self.framed.read_buffer().has_frame() && self.framed.queued() < BATCH_LIMIT
    }

    /// Sends the queued bytes. A gateway that stops reading (its socket buffer full) stalls
    /// the write; past the stall timeout without progress the connection is given up.
    pub(super) async fn flush(&mut self) -> Result<(), Close> {
        let Io { framed, woke, .. } = self;
        let mut flush = pin!(framed.flush());
        // Nearly always the socket has room and the flush is done in its first poll; one that
        // had to wait makes the clock stale.
        let flushed = match poll_once(flush.as_mut()).await {
            Poll::Ready(flushed) => flushed,
            Poll::Pending => {
                *woke = None;
                flush.await
            }
        };
        Ok(flushed?)
    }

    /// Gives back buffer storage past [`RETAINED_BUFFER`] (bytes of a next frame already read
    /// stay).
    pub(super) fn trim_buffers(&mut self) {
        self.framed.trim(RETAINED_BUFFER);
    }

    /// True when the gateway still owes answers to requests a plugin abandoned.
    pub(super) fn owes_answers(&self) -> bool {
        self.owed > 0
    }

    /// Why an exchange broke during this call, if one did.
    pub(super) fn broken(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    /// Sends what abandoned fetches left queued and reads, and drops, the answers owed to them,
    /// so that the next frame read or written is in step with the gateway. Cancel safe: what is
    /// still owed stays counted.
    pub(super) async fn catch_up(&mut self) -> Result<(), PluginError> {
        if let Some(why) = &self.broken {
            return Err(PluginError::gateway(why.clone()));
        }
        if self.owed == 0 {
            return Ok(());
        }
        if let Err(e) = self.framed.flush().await {
            return Err(self.break_off(format!("extra_info: writing a request: {e}")));
        }
        while self.owed > 0 {
            self.read_answer().await?;
        }
        Ok(())
    }

    fn budget_spent(&self) -> PluginError {
        PluginError::new(format!(
            "extra_info answers of this call passed --extra-info-budget ({} bytes)",
            self.answer_budget
        ))
    }

    /// Records that the exchange broke; the error for the plugin.
    fn break_off(&mut self, why: String) -> PluginError {
        let error = PluginError::gateway(why.clone());
        self.broken = Some(why);
        error
    }

    /// Reads the answer to the oldest request owed.
    async fn read_answer(&mut self) -> Result<Frame, PluginError> {
        let frame = match self.framed.read_frame().await {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                return Err(
                    self.break_off("extra_info: reading the answer: connection closed".into())
                )
            }
            Err(e) => return Err(self.break_off(format!("extra_info: reading the answer: {e}"))),
        };
        // Counted off as soon as it is read, before any await: a fetch dropped from here on
        // owes nothing.
        self.owed -= 1;
        if frame.ty != FrameType::ExtraInfo as u8 {
            return Err(self.break_off(format!(
                "extra_info: expected an answer of type 3, got a frame of type {}",
                frame.ty
            )));
        }
        Ok(frame)
    }

    async fn exchange(&mut self, req: ExtraInfoReq) -> Result<Option<Bytes>, PluginError> {
        self.catch_up().await?;
        if self.over_budget() {
            return Err(self.budget_spent());
        }
        let Io { framed, codec, .. } = self;
        if let Err(e) = framed.queue().push_with(FrameType::ExtraInfo as u8, |out| {
            codec.encode_extra_info_req(&req, out)
        }) {
            // Nothing was queued; the plugin asked for something no frame can carry.
            return Err(PluginError::new(format!("extra_info request: {e}")));
        }
        // From here the request is committed: if the fetch is dropped, even half written, the
        // rest is sent and the answer read by the next catch_up.
        self.owed += 1;
        if let Err(e) = self.framed.flush().await {
            return Err(self.break_off(format!("extra_info: writing the request: {e}")));
        }
        let answer = self.read_answer().await?;
        self.answered = self.answered.saturating_add(answer.payload.len());
        if self.over_budget() {
            return Err(self.budget_spent());
        }
        match self.codec.decode_extra_info_resp(&answer.payload) {
            Ok(resp) => Ok(resp.result),
            Err(e) => Err(self.break_off(format!("extra_info: decoding the answer: {e}"))),
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
    use crate::model::ExtraInfoResp;
    use futures_util::FutureExt;

    fn pair(config: &Config) -> (Io, UnixStream) {
        let (runner, gateway) = UnixStream::pair().expect("a socket pair");
        (
            Io::new(
                runner,
                Protocol::Capnp.runner_codec(),
                config,
                &ByteBudget::new(config.max_buffered_bytes),
            ),
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
        let (_tx, rx) = tokio::sync::watch::channel(false);
        assert!(matches!(
            io.next_frame(&mut Shutdown::new(rx)).await,
            Err(Close::Idle)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn the_idle_timeout_counts_from_the_last_call_not_from_the_timer() {
        let config = Config {
            idle_timeout: Duration::from_secs(10),
            ..Config::default()
        };
        let (mut io, mut gateway) = pair(&config);
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let mut shutdown = Shutdown::new(rx);
        let start = Instant::now();
        // A call at 6 s: the timer, set at the start for 10 s, fires while the connection has
        // been idle for 4 s only, and must move on to 16 s.
        tokio::time::sleep(Duration::from_secs(6)).await;
        let frame = [FrameType::HttpReqCall as u8, 0, 0, 1, 0];
        tokio::io::AsyncWriteExt::write_all(&mut gateway, &frame)
            .await
            .unwrap();
        assert!(io.next_frame(&mut shutdown).await.unwrap().is_some());
        assert!(matches!(
            io.next_frame(&mut shutdown).await,
            Err(Close::Idle)
        ));
        assert_eq!(start.elapsed(), Duration::from_secs(16));
    }

    #[tokio::test]
    async fn shutdown_ends_the_wait_between_calls() {
        let (mut io, _gateway) = pair(&Config::default());
        let (tx, rx) = tokio::sync::watch::channel(false);
        let mut shutdown = Shutdown::new(rx);
        let stop = tokio::spawn(async move {
            tokio::task::yield_now().await;
            tx.send(true).unwrap();
            tx
        });
        assert!(io.next_frame(&mut shutdown).await.unwrap().is_none());
        assert!(shutdown.requested());
        let _tx = stop.await.unwrap();
        assert!(
            io.next_frame(&mut shutdown).await.unwrap().is_none(),
            "asked again, it still says so"
        );
    }

    /// What is queued: the frame types and, for error frames, their codes.
    fn queued(io: &mut Io) -> Vec<(u8, Option<ErrorCode>)> {
        let mut frames = crate::framed::FrameBuffer::new(MAX_PAYLOAD);
        let mut src = io.framed.queue().unsent();
        let mut chunk = vec![0; 4096];
        while frames.read_blocking(&mut src, &mut chunk).unwrap() > 0 {}
        let codec = Protocol::Capnp.gateway_codec();
        std::iter::from_fn(|| frames.next_frame().unwrap())
            .map(|f| (f.ty, codec.decode_error_resp(&f.payload).ok()))
            .collect()
    }

    #[tokio::test]
    async fn a_reply_too_large_to_frame_is_not_encoded_and_a_panicking_encoder_is_caught() {
        let (mut io, _gateway) = pair(&Config::default());
        let unavailable = (FrameType::Error as u8, Some(ErrorCode::ServiceUnavailable));
        io.queue(FrameType::HttpReqCall, MAX_PAYLOAD + 1, |_, _| {
            panic!("a reply over the protocol's limit was encoded")
        });
        assert_eq!(queued(&mut io), [unavailable]);
        io.framed.queue().clear();
        io.queue(FrameType::HttpReqCall, 10, |_, out| {
            out.extend_from_slice(b"half a reply");
            panic!("an encoder panics")
        });
        assert_eq!(queued(&mut io), [unavailable], "nothing of the half reply");
    }

    #[tokio::test]
    async fn a_fetch_dropped_half_written_is_finished_and_its_answer_read_first() {
        let (mut io, gateway) = pair(&Config::default());
        // Far more than the socket buffers hold: one poll writes part of it, then waits.
        let huge = "v".repeat(4 << 20);
        let dropped = io.fetch(ExtraInfoReq::Var(huge.into())).now_or_never();
        assert!(dropped.is_none(), "the request cannot have been sent whole");
        assert!(io.owes_answers());
        // The gateway answers each variable with the length of its name.
        let gw = tokio::spawn(async move {
            let mut framed = Framed::new(gateway);
            let mut codec = Protocol::Capnp.gateway_codec();
            let mut asked = Vec::new();
            for _ in 0..2 {
                let f = framed.expect_frame().await.unwrap();
                let ExtraInfoReq::Var(name) = codec.decode_extra_info_req(&f.payload).unwrap()
                else {
                    panic!("a variable was asked")
                };
                let result = Some(Bytes::from(name.len().to_string()));
                framed
                    .queue()
                    .push_with(FrameType::ExtraInfo as u8, |o| {
                        codec.encode_extra_info_resp(&ExtraInfoResp { result }, o)
                    })
                    .unwrap();
                framed.flush().await.unwrap();
                asked.push(name.len());
            }
            asked
        });
        let got = io.fetch(ExtraInfoReq::Var("fast".into())).await.unwrap();
        assert_eq!(
            got.as_deref(),
            Some(&b"4"[..]),
            "its own answer, not the dropped one's"
        );
        assert!(!io.owes_answers());
        assert_eq!(gw.await.unwrap(), [4 << 20, 4]);
    }
}
