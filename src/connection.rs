//! One gateway connection: read a frame, serve the call, write the reply, repeat.
//!
//! The connection owns every buffer a call needs (read buffer, write buffer, decoded messages,
//! call state) and reuses them, so a steady stream of calls does not allocate for framing or
//! decoding. A reply leaves in one write, and the replies to calls the gateway pipelined (their
//! frames already read) leave together, in one write. The only reads inside a call are the answers to the
//! call's own `extra_info` requests; an answer a plugin stopped waiting for (it dropped the
//! fetch) is read and dropped before the reply is written, so the stream stays in step.
//!
//! Limits (docs/HARDENING.md): a frame over `max_frame` closes the connection; a frame (or a
//! reply) that stops making progress for `stall_timeout`, or is not whole within
//! `frame_timeout`, closes it; so does a frame the process-wide `max_buffered_bytes` has no room
//! for (answered SERVICE_UNAVAILABLE first), and `idle_timeout` with no call in flight. A call
//! over `call_timeout`, or reading more `extra_info` answers than `extra_info_budget`, is
//! answered SERVICE_UNAVAILABLE, as is a reply too large to frame. Hits are logged through
//! [`crate::limits`], one line per limit per interval.

mod io;
mod lent;
mod shutdown;

use std::future::{poll_fn, Future};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::net::UnixStream;
use tokio::sync::watch;
use tokio::time::{sleep_until, timeout_at, Instant};
use tracing::{debug, warn};

use crate::codec::{detect, Protocol, ProtocolSetting};
use crate::conf_cache::MAX_KEY_LEN;
use crate::frame::{Frame, FrameType};
use crate::framed::FramedError;
use crate::metrics::{CallOutcome, CloseReason, Meter};
use crate::model::{
    ErrorCode, HttpReqCallReq, HttpReqCallResp, HttpRespCallReq, Pair, PrepareConfReq,
    PrepareConfResp, ReqAction,
};
use crate::pool::Pool;
use crate::server::Shared;
use ext_plugin_sdk::host::ChainFailure;
use ext_plugin_sdk::host::{CallState, RespState};
use ext_plugin_sdk::PluginError;
use io::{Close, Io};
use lent::Lent;
use shutdown::Shutdown;

/// Decoded messages and call state, reused from call to call.
#[derive(Default)]
struct Scratch {
    prepare: PrepareConfReq,
    req: HttpReqCallReq,
    resp_req: HttpRespCallReq,
    call: CallState,
    resp: RespState,
    /// The call being measured (metrics).
    meter: Meter,
}

/// Scratch storage a thread keeps for its connections that wait for their next call, at most.
const PARKED_SCRATCH: usize = 128;

thread_local! {
    /// Lent by connections while they wait: an idle connection holds no scratch.
    static SCRATCH: Pool<Box<Scratch>> = const { Pool::new(PARKED_SCRATCH) };
}

/// Entries a decoded list keeps room for between calls. Calls rarely carry more than a few
/// dozen headers; a larger one (up to [`crate::codec::MAX_ENTRIES`]) gives its room back after
/// the call, so an idle connection never pins what one oversized frame needed.
const KEEP_ENTRIES: usize = 128;

impl Scratch {
    /// Drops what the last call decoded, so the read buffer's storage is no longer shared and
    /// can be reused for the next frame, and gives back room an oversized call grew.
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
        self.req.args.shrink_to(KEEP_ENTRIES);
        self.req.headers.shrink_to(KEEP_ENTRIES);
        self.prepare.conf.shrink_to(KEEP_ENTRIES);
        self.req.extra_info.shrink_to(KEEP_ENTRIES);
        self.resp_req.headers.shrink_to(KEEP_ENTRIES);
    }

    /// Bytes of decode storage kept between calls.
    #[cfg(test)]
    fn retained_bytes(&self) -> usize {
        use std::mem::size_of;
        self.req.args.capacity_bytes()
            + self.req.headers.capacity_bytes()
            + self.prepare.conf.capacity() * size_of::<crate::model::Pair>()
            + self.req.extra_info.capacity() * size_of::<crate::model::DataPair>()
            + self.resp_req.headers.capacity() * size_of::<crate::model::Pair>()
    }
}

/// Serves one connection until the gateway closes it, it breaks the protocol, or the runner
/// shuts down (between calls).
pub(crate) async fn serve(
    stream: UnixStream,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) {
    let mut shutdown = Shutdown::new(shutdown);
    let protocol = match shared.config.protocol {
        ProtocolSetting::Fixed(p) => p,
        ProtocolSetting::Auto => Protocol::Capnp,
    };
    let mut conn = Connection {
        io: Io::new(
            stream,
            protocol.runner_codec(),
            &shared.config,
            &shared.buffers,
        ),
        scratch: Lent::new(&SCRATCH),
        shared: &shared,
    };
    let limits = &shared.limits;
    let result = conn.run(&mut shutdown).await;
    shared
        .metrics
        .connection_closed(close_reason(&result, shutdown.requested()));
    match result {
        Ok(()) => debug!("connection closed"),
        Err(Close::Framed(FramedError::TooLarge(len))) => {
            if let Some(hits) = limits.frame_size.hit() {
                warn!(
                    len,
                    limit = conn.io.max_frame(),
                    hits,
                    "frame over --max-frame; answered BAD_REQUEST and closed the connection"
                );
            }
            conn.io.queue_error(ErrorCode::BadRequest);
            let _ = conn.io.flush().await;
        }
        Err(Close::Idle) => debug!(
            timeout = ?conn.io.idle_timeout,
            "connection idle past --idle-timeout-secs; closed"
        ),
        Err(Close::Framed(e @ FramedError::Stalled { .. })) => {
            if let Some(hits) = limits.stalled_read.hit() {
                warn!(error = %e, timeout = ?conn.io.stall_timeout(), hits,
                    "frame made no progress for --stall-timeout-ms; closed the connection");
            }
        }
        Err(Close::Framed(e @ FramedError::OverBudget { .. })) => {
            if let Some(hits) = limits.buffered_bytes.hit() {
                warn!(error = %e, hits,
                    "frame needs more than --max-buffered-bytes leaves; answered SERVICE_UNAVAILABLE and closed the connection");
            }
            conn.io.queue_error(ErrorCode::ServiceUnavailable);
            let _ = conn.io.flush().await;
        }
        Err(Close::Framed(e @ FramedError::Overdue { .. })) => {
            if let Some(hits) = limits.frame_deadline.hit() {
                warn!(error = %e, timeout = ?shared.config.frame_timeout, hits,
                    "frame not whole within --frame-timeout-ms; closed the connection");
            }
        }
        Err(Close::Framed(e @ FramedError::WriteStalled(_))) => {
            if let Some(hits) = limits.stalled_write.hit() {
                warn!(error = %e, timeout = ?conn.io.stall_timeout(), hits,
                    "gateway stopped reading replies for --stall-timeout-ms; closed the connection");
            }
        }
        Err(e) => debug!(error = %e, "connection ended"),
    }
}

struct Connection<'s> {
    io: Io,
    /// Held while a call is served; lent to the thread's pool while the connection waits.
    scratch: Lent<Scratch>,
    shared: &'s Arc<Shared>,
}

impl Connection<'_> {
    async fn run(&mut self, shutdown: &mut Shutdown) -> Result<(), Close> {
        // With `auto`, the first payload that fits a protocol decides the connection's. A first
        // frame that fits none gets BAD_REQUEST (in the default codec) and decides nothing, so
        // one bad frame cannot pin the connection to a protocol its gateway does not speak.
        let mut undecided = self.shared.config.protocol == ProtocolSetting::Auto;
        // Past the drain timeout the call in flight is answered SERVICE_UNAVAILABLE (not left
        // to a bare end of stream); one waiter for the connection's life, like the stop's.
        let mut abandon = Shutdown::new(self.shared.abandon.subscribe());
        loop {
            if !self.io.framed.read_buffer().has_frame() {
                // The next call may be long in coming (pooled connections idle for minutes):
                // the call storage, released by the last call, and the write queue, flushed,
                // are lent out meanwhile (and the read buffer, once the read would block:
                // `Io::next_frame`).
                self.scratch.park();
                self.io.framed.queue().park();
            }
            let Some(frame) = self.io.next_frame(shutdown).await? else {
                break;
            };
            if undecided {
                if let Some(p) = detect(&frame.payload) {
                    undecided = false;
                    if p != self.io.codec.protocol() {
                        self.io.codec = p.runner_codec();
                    }
                }
            }
            let io = &mut self.io;
            self.scratch.get().meter = self.shared.metrics.start(frame.ty, || io.now().into_std());
            let result = tokio::select! {
                biased;
                r = self.serve_frame(frame) => r,
                () = abandon.wait() => {
                    self.io.queue_error(ErrorCode::ServiceUnavailable);
                    Err(Close::Abandoned)
                }
            };
            let scratch = self.scratch.get();
            self.shared.metrics.finish(&scratch.meter);
            scratch.release();
            // Replies wait for the next pipelined call's only while the runner is not
            // abandoning calls: then what is queued leaves at once.
            if result.is_ok() && self.io.batching() && !abandon.requested() {
                continue;
            }
            self.io.flush().await?;
            self.io.trim_buffers();
            result?;
        }
        Ok(())
    }

    /// Serves one frame, queueing its reply. An error means the connection must close after the
    /// queued bytes are sent.
    async fn serve_frame(&mut self, frame: Frame) -> Result<(), Close> {
        match FrameType::from_u8(frame.ty) {
            Some(FrameType::PrepareConf) => {
                self.prepare_conf(&frame.payload).await;
                // A build may have taken a while (it runs on the blocking pool): a call
                // pipelined behind it must not count its deadline from before.
                self.io.waited();
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

    async fn prepare_conf(&mut self, payload: &Bytes) {
        let Connection {
            io,
            scratch,
            shared,
        } = self;
        let scratch = scratch.get();
        if let Err(e) = io
            .codec
            .decode_prepare_conf_req(payload, &mut scratch.prepare)
        {
            debug!(error = %e, "BAD_REQUEST");
            scratch.meter.outcome = CallOutcome::BadRequest;
            return io.queue_error(ErrorCode::BadRequest);
        }
        let req = &scratch.prepare;
        // The build runs on the blocking pool (the cache's docs say why), so it takes its own
        // handles: the request's strings still share the frame, the chain copies what it keeps.
        let build = {
            let (req, shared) = (req.clone(), Arc::clone(shared));
            move || {
                let clock = &shared.config.clock;
                let built = shared.registry.build_chain(&req, &shared.state, clock);
                shared.metrics.prepared(built)
            }
        };
        let conf_bytes = pairs_len(&req.conf);
        let result = shared.cache.prepare(&req.key, conf_bytes, build).await;
        match result {
            Ok(conf_token) => {
                debug!(key = %req.key, conf_token, "prepared");
                io.queue(FrameType::PrepareConf, 0, |c, out| {
                    c.encode_prepare_conf_resp(&PrepareConfResp { conf_token }, out)
                });
            }
            Err(e) => {
                scratch.meter.outcome = CallOutcome::Refused;
                shared.metrics.refused(&shared.registry, &e);
                // A key refused for its length is logged, and remembered by the log's throttle,
                // only up to the length a key may have.
                let key = truncated(&req.key, MAX_KEY_LEN);
                if let Some(hits) = shared.limits.refused_prepares.hit(key) {
                    warn!(key, hits, "prepare_conf refused: {e}");
                }
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
        let scratch = scratch.get();
        if let Err(e) = io.codec.decode_http_req_call_req(payload, &mut scratch.req) {
            debug!(error = %e, "BAD_REQUEST");
            scratch.meter.outcome = CallOutcome::BadRequest;
            io.queue_error(ErrorCode::BadRequest);
            return Ok(());
        }
        let Some(chain) = shared
            .cache
            .get_at(scratch.req.conf_token, io.now().into_std())
        else {
            scratch.meter.outcome = CallOutcome::TokenNotFound;
            io.queue_error(ErrorCode::ConfTokenNotFound);
            return Ok(());
        };
        let deadline = io.now() + shared.config.call_timeout;
        io.begin_call();
        let mut gateway = shared.metrics.gateway(io);
        let run = chain.run_request(&scratch.req, &mut scratch.call, &mut gateway);
        let (mut outcome, waited) = guard(deadline, run).await;
        if waited {
            io.waited();
        }
        if io.owes_answers() {
            read_owed_answers(io, deadline, &mut outcome).await;
        }
        scratch.meter.outcome = outcome.metric(io);
        let Some(action) = settle(io, shared, chain.key(), outcome)? else {
            return Ok(());
        };
        if let Some(why) = scratch.req.malformed() {
            // A plugin read a list that turned out malformed, and saw it empty: whatever it
            // decided on that is not an answer (docs/protocol.md §4).
            debug!(
                error = why,
                "BAD_REQUEST: malformed entry found during the call"
            );
            scratch.meter.outcome = CallOutcome::BadRequest;
            io.queue_error(ErrorCode::BadRequest);
            if let ReqAction::Rewrite(rewrite) = action {
                scratch.call.recycle(rewrite);
            }
            return Ok(());
        }
        let reply = HttpReqCallResp {
            id: scratch.req.id,
            action,
        };
        io.queue(
            FrameType::HttpReqCall,
            action_len(&reply.action),
            |c, out| c.encode_http_req_call_resp(&reply, out),
        );
        if let ReqAction::Rewrite(rewrite) = reply.action {
            // Hand the rewrite's vectors back for the next call.
            scratch.call.recycle(rewrite);
        }
        Ok(())
    }

    async fn http_resp_call(&mut self, payload: &Bytes) -> Result<(), Close> {
        let Connection {
            io,
            scratch,
            shared,
        } = self;
        let scratch = scratch.get();
        if let Err(e) = io
            .codec
            .decode_http_resp_call_req(payload, &mut scratch.resp_req)
        {
            debug!(error = %e, "BAD_REQUEST");
            scratch.meter.outcome = CallOutcome::BadRequest;
            io.queue_error(ErrorCode::BadRequest);
            return Ok(());
        }
        let Some(chain) = shared
            .cache
            .get_at(scratch.resp_req.conf_token, io.now().into_std())
        else {
            scratch.meter.outcome = CallOutcome::TokenNotFound;
            io.queue_error(ErrorCode::ConfTokenNotFound);
            return Ok(());
        };
        let deadline = io.now() + shared.config.call_timeout;
        io.begin_call();
        let mut gateway = shared.metrics.gateway(io);
        let run = chain.run_response(&scratch.resp_req, &mut scratch.resp, &mut gateway);
        let (mut outcome, waited) = guard(deadline, run).await;
        if waited {
            io.waited();
        }
        if io.owes_answers() {
            read_owed_answers(io, deadline, &mut outcome).await;
        }
        scratch.meter.outcome = outcome.metric(io);
        if settle(io, shared, chain.key(), outcome)?.is_none() {
            return Ok(());
        }
        let reply = scratch.resp.take_reply(scratch.resp_req.id);
        let floor = pairs_len(&reply.headers) + reply.body.as_ref().map_or(0, |b| b.len());
        io.queue(FrameType::HttpRespCall, floor, |c, out| {
            c.encode_http_resp_call_resp(&reply, out)
        });
        Ok(())
    }
}

/// The first `max` bytes of `s` at most, cut at a character boundary.
fn truncated(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The bytes a request call's reply carries (strings, body): a floor of its encoded size.
fn action_len(action: &ReqAction) -> usize {
    match action {
        ReqAction::Continue => 0,
        ReqAction::Stop(s) => pairs_len(&s.headers) + s.body.len(),
        ReqAction::Rewrite(r) => {
            r.path.as_ref().map_or(0, |p| p.len())
                + pairs_len(&r.headers)
                + pairs_len(&r.args)
                + pairs_len(&r.resp_headers)
                + r.body.as_ref().map_or(0, |b| b.len())
        }
    }
}

fn pairs_len(pairs: &[Pair]) -> usize {
    pairs
        .iter()
        .map(|p| p.name.len() + p.value.as_ref().map_or(0, |v| v.len()))
        .sum()
}

enum Outcome<T> {
    Done(T),
    Panicked,
    TimedOut,
}

impl<T> Outcome<Result<T, ChainFailure>> {
    /// How the call ended, for the metrics ([`settle`] decides the same way).
    fn metric(&self, io: &Io) -> CallOutcome {
        match self {
            _ if io.broken().is_some() => CallOutcome::GatewayError,
            _ if io.over_budget() => CallOutcome::Error,
            Outcome::Done(Ok(_)) => CallOutcome::Ok,
            Outcome::Done(Err(f)) if f.error.is_gateway_failure() => CallOutcome::GatewayError,
            Outcome::Done(Err(_)) => CallOutcome::Error,
            Outcome::Panicked => CallOutcome::Panic,
            Outcome::TimedOut => CallOutcome::Timeout,
        }
    }
}

/// Why a connection ended, for the metrics.
fn close_reason(result: &Result<(), Close>, shutting_down: bool) -> CloseReason {
    match result {
        Ok(()) if shutting_down => CloseReason::Shutdown,
        Ok(()) => CloseReason::Eof,
        Err(Close::Idle) => CloseReason::Idle,
        Err(Close::Framed(e)) => match e {
            // Both are a peer holding a frame's storage too long or too much: reported with the
            // reasons whose limits they extend.
            FramedError::Stalled { .. } | FramedError::Overdue { .. } => CloseReason::Stall,
            FramedError::OverBudget { .. } => CloseReason::FrameTooLarge,
            FramedError::WriteStalled(_) => CloseReason::WriteStall,
            FramedError::TooLarge(_) => CloseReason::FrameTooLarge,
            FramedError::Closed | FramedError::Truncated => CloseReason::Protocol,
            FramedError::Io(_) | FramedError::Unframeable(_) => CloseReason::Io,
        },
        Err(Close::Gateway(_)) => CloseReason::Protocol,
        Err(Close::Abandoned) => CloseReason::Shutdown,
    }
}

/// Runs a chain with the call deadline, turning a plugin panic into an outcome.
///
/// The chain is polled in place, and the deadline's timer is made only if it has to wait: most
/// chains finish in their first poll, and then the call costs no timer (no runtime handle
/// taken, nothing in the timer wheel). Also says whether the chain waited: then the caller marks
/// the connection's clock stale ([`Io::waited`]), so what comes next does not count from
/// before the wait.
async fn guard<T>(deadline: Instant, run: impl Future<Output = T>) -> (Outcome<T>, bool) {
    let mut run = pin!(run);
    let mut poll_run =
        |cx: &mut Context<'_>| match catch_unwind(AssertUnwindSafe(|| run.as_mut().poll(cx))) {
            Ok(Poll::Ready(value)) => Poll::Ready(Outcome::Done(value)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_panic) => Poll::Ready(Outcome::Panicked),
        };
    let first = poll_fn(|cx| Poll::Ready(poll_run(cx))).await;
    if let Poll::Ready(outcome) = first {
        return (outcome, false);
    }
    // As `timeout_at` does: the chain is polled first, so one that finishes as the deadline
    // passes counts as done.
    let mut expired = pin!(sleep_until(deadline));
    let outcome = poll_fn(|cx| {
        if let Poll::Ready(outcome) = poll_run(cx) {
            return Poll::Ready(outcome);
        }
        expired.as_mut().poll(cx).map(|()| Outcome::TimedOut)
    })
    .await;
    (outcome, true)
}

/// Reads, and drops, the answers still owed to fetches a plugin abandoned (dropped their futures,
/// in a timeout or a `select!`), within the call's deadline, so that the reply goes out in step
/// and the next frame read is the gateway's next call, not one of those answers. A deadline that
/// passes first makes the call a timed-out one; a failure leaves the exchange broken, which
/// [`settle`] answers.
async fn read_owed_answers<T>(io: &mut Io, deadline: Instant, outcome: &mut Outcome<T>) {
    if matches!(outcome, Outcome::TimedOut) {
        return;
    }
    if timeout_at(deadline, io.catch_up()).await.is_err() {
        *outcome = Outcome::TimedOut;
    }
    io.waited();
}

/// A chain's result, or `None` when the call failed and was answered here with an error frame;
/// `Err` when the connection must close. A call whose exchange with the gateway broke fails and
/// closes the connection even when the plugin ignored the error.
fn settle<T>(
    io: &mut Io,
    shared: &Shared,
    key: &str,
    outcome: Outcome<Result<T, ChainFailure>>,
) -> Result<Option<T>, Close> {
    if let Some(why) = io.broken() {
        debug!(key, error = why, "gateway failed during the call");
        let close = Close::Gateway(why.to_owned());
        io.queue_error(ErrorCode::BadRequest);
        return Err(close);
    }
    if io.over_budget() {
        if let Some(hits) = shared.limits.extra_info_budget.hit() {
            warn!(
                key,
                budget = shared.config.extra_info_budget,
                hits,
                "call read extra_info answers past --extra-info-budget; answered SERVICE_UNAVAILABLE"
            );
        }
        return answer_unavailable(io).map(|()| None);
    }
    let answered = match outcome {
        Outcome::Done(Ok(value)) => return Ok(Some(value)),
        Outcome::Done(Err(f)) => fail(io, shared, key, Some(f.plugin), &f.error),
        Outcome::Panicked => fail(io, shared, key, None, &panicked()),
        Outcome::TimedOut => deadline_passed(io, shared, key),
    };
    answered.map(|()| None)
}

fn panicked() -> PluginError {
    PluginError::new("a plugin panicked")
}

/// Answers a call over `call_timeout`; a limit hit, so logged at most once per interval.
fn deadline_passed(io: &mut Io, shared: &Shared, key: &str) -> Result<(), Close> {
    if let Some(hits) = shared.limits.call_deadline.hit() {
        warn!(
            key,
            deadline = ?shared.config.call_timeout,
            hits,
            "call over --call-timeout-ms; answered SERVICE_UNAVAILABLE"
        );
    }
    answer_unavailable(io)
}

/// Answers a failed call. The connection closes when the plugin says the gateway failed, or the
/// call ended with an extra_info answer still owed (the stream is out of step).
/// A plugin failure is logged at most once per interval (a broken plugin fails every request).
fn fail(
    io: &mut Io,
    shared: &Shared,
    key: &str,
    plugin: Option<&str>,
    error: &PluginError,
) -> Result<(), Close> {
    if error.is_gateway_failure() {
        debug!(key, error = %error, "gateway failed during the call");
        io.queue_error(ErrorCode::BadRequest);
        return Err(Close::Gateway(error.to_string()));
    }
    if let Some(hits) = shared.limits.plugin_failures.hit() {
        warn!(key, plugin = plugin.unwrap_or("-"), error = %error, hits,
              "call failed; SERVICE_UNAVAILABLE");
    }
    answer_unavailable(io)
}

/// Answers SERVICE_UNAVAILABLE; closes when the call ended with an extra_info answer still owed
/// (its deadline passed while the gateway was answering): the stream is out of step.
fn answer_unavailable(io: &mut Io) -> Result<(), Close> {
    io.queue_error(ErrorCode::ServiceUnavailable);
    if io.owes_answers() {
        return Err(Close::Gateway(
            "call abandoned during an extra_info exchange".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use futures_util::FutureExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::codec::MAX_ENTRIES;
    use crate::config::Config;
    use crate::model::Pair;
    use crate::server::Runner;
    use ext_plugin_sdk::Registry;
    use std::time::Duration;

    /// Issue 11 #3: after a call of the most entries a frame may carry, the connection keeps a
    /// small, fixed amount of decode storage, whatever the frame held.
    #[test]
    fn an_oversized_call_leaves_little_storage_behind() {
        let mut scratch = Scratch::default();
        let frame = Bytes::from(vec![b'x'; 16]);
        for entries in [&mut scratch.req.headers, &mut scratch.req.args] {
            entries.start(&frame, MAX_ENTRIES);
            for _ in 0..MAX_ENTRIES {
                entries
                    .push_located(&frame[..1], Some(&frame[1..]))
                    .unwrap();
            }
            assert!(!entries.as_pairs().is_empty());
        }
        for list in [&mut scratch.prepare.conf, &mut scratch.resp_req.headers] {
            list.extend((0..MAX_ENTRIES).map(|_| Pair::new("x", "y")));
        }
        let full = scratch.retained_bytes();
        scratch.release();
        let kept = scratch.retained_bytes();
        assert!(kept < 32 * 1024, "{kept} bytes kept (from {full})");
        assert!(full > 4 * kept, "the test filled the vectors");
    }

    /// A connection served over one end of a socket pair, in Cap'n Proto, and the other end.
    fn connection(shared: &Arc<Shared>) -> (Connection<'_>, UnixStream) {
        let (stream, gateway) = UnixStream::pair().unwrap();
        let io = Io::new(
            stream,
            Protocol::Capnp.runner_codec(),
            &shared.config,
            &shared.buffers,
        );
        let scratch = Lent::new(&SCRATCH);
        (
            Connection {
                io,
                scratch,
                shared,
            },
            gateway,
        )
    }

    /// A call whose payload no codec decodes: answered with a BAD_REQUEST error frame, without
    /// a prepared chain.
    const UNDECODABLE_CALL: [u8; 5] = [FrameType::HttpReqCall as u8, 0, 0, 1, 0xFF];

    /// Reads one frame off the gateway's end, which must be an error frame.
    async fn read_error_frame(gateway: &mut UnixStream) {
        let mut head = [0u8; 4];
        gateway.read_exact(&mut head).await.unwrap();
        assert_eq!(head[0], FrameType::Error as u8);
        let len = u32::from_be_bytes([0, head[1], head[2], head[3]]) as usize;
        gateway.read_exact(&mut vec![0; len]).await.unwrap();
    }

    /// Issue 15: a connection waiting for its next call holds neither a read buffer nor the
    /// call storage (thousands of pooled connections idle for minutes); both are lent to the
    /// thread's pools, and the next call takes them back.
    #[tokio::test]
    async fn a_connection_waiting_for_its_next_call_holds_no_call_storage() {
        let runner = Runner::new(Config::default(), Registry::new());
        let shared = runner.shared();
        let (mut conn, mut gateway) = connection(shared);
        let (_tx, rx) = watch::channel(false);
        let mut shutdown = Shutdown::new(rx);
        for _ in 0..2 {
            let mut run = Box::pin(conn.run(&mut shutdown));
            gateway.write_all(&UNDECODABLE_CALL).await.unwrap();
            tokio::select! {
                r = &mut run => panic!("the connection ended: {:?}", r.err()),
                () = read_error_frame(&mut gateway) => {}
            };
            // Served and answered: once it waits again, it has given its storage back.
            assert!(run.as_mut().now_or_never().is_none(), "waits for a call");
            drop(run);
            assert_eq!(conn.io.framed.read_buffer().capacity(), 0, "a read buffer");
            assert!(conn.scratch.is_parked(), "the call storage");
            assert_eq!(conn.io.framed.queue().capacity(), 0, "a write queue");
        }
    }

    /// Issue 15: what a connection's task holds inline is its state machine, for its whole
    /// life; the call storage is not part of it ([`Lent`]). 1.6 KiB in a debug build, 2.5 KiB
    /// with the call storage inline.
    #[tokio::test]
    async fn a_connection_task_holds_no_call_storage_inline() {
        let runner = Runner::new(Config::default(), Registry::new());
        let (stream, _gateway) = UnixStream::pair().unwrap();
        let (_tx, rx) = watch::channel(false);
        let task = serve(stream, runner.shared().clone(), rx);
        let size = std::mem::size_of_val(&task);
        assert!(size < 2048, "{size} bytes");
    }

    /// Conf `[prepare_ms, call_ms]`: blocks its prepare for the first, waits the second in its
    /// request filter, then lets the request through.
    struct Sleeper(Duration);

    impl ext_plugin_sdk::Plugin for Sleeper {
        const NAME: &'static str = "test-sleep";
        type Conf = (u64, u64);

        fn prepare(
            (prepare_ms, call_ms): (u64, u64),
            _: &mut ext_plugin_sdk::PrepareEnv<'_>,
        ) -> Result<Self, ext_plugin_sdk::ConfError> {
            std::thread::sleep(Duration::from_millis(prepare_ms));
            Ok(Sleeper(Duration::from_millis(call_ms)))
        }

        async fn request_filter(
            &self,
            _: &mut ext_plugin_sdk::RequestCall<'_>,
        ) -> Result<ext_plugin_sdk::Flow, PluginError> {
            tokio::time::sleep(self.0).await;
            Ok(ext_plugin_sdk::Flow::Continue)
        }
    }

    /// Serves a runner with [`Sleeper`] (conf `conf`) and `call_timeout` one connection: a
    /// prepare, answered before the calls are sent when `prepare_apart`, otherwise in the same
    /// write, then `calls` calls in one write. The types of the replies to the calls.
    ///
    /// Metrics are on (nothing listens), so the clock is read as the connection wakes up, for
    /// the first frame's meter, not first by a call.
    async fn pipelined(call_timeout: u64, conf: &str, prepare_apart: bool, calls: u32) -> Vec<u8> {
        let config = Config {
            protocol: ProtocolSetting::Fixed(Protocol::Capnp),
            call_timeout: Duration::from_millis(call_timeout),
            metrics_listen: Some(crate::metrics::MetricsAddress::Unix("unused".into())),
            ..Config::default()
        };
        let runner = Runner::new(config, Registry::new().with::<Sleeper>());
        const TOKEN: u32 = 7;
        runner.set_next_conf_token(TOKEN);
        let shared = runner.shared();
        let (mut conn, gateway) = connection(shared);
        let gateway = async move {
            let mut codec = Protocol::Capnp.gateway_codec();
            let mut gw = crate::framed::Framed::new(gateway);
            let prepare = PrepareConfReq {
                key: "route".into(),
                conf: vec![Pair::new("test-sleep", conf.to_owned())],
            };
            gw.queue()
                .push_with(FrameType::PrepareConf as u8, |o| {
                    codec.encode_prepare_conf_req(&prepare, o)
                })
                .unwrap();
            if prepare_apart {
                gw.flush().await.unwrap();
            }
            for id in 1..=calls {
                let call = HttpReqCallReq {
                    id,
                    conf_token: TOKEN,
                    ..Default::default()
                };
                gw.queue()
                    .push_with(FrameType::HttpReqCall as u8, |o| {
                        codec.encode_http_req_call_req(&call, o)
                    })
                    .unwrap();
            }
            gw.flush().await.unwrap();
            let prepared = gw.expect_frame().await.unwrap();
            assert_eq!(prepared.ty, FrameType::PrepareConf as u8);
            let mut replies = Vec::new();
            for _ in 0..calls {
                replies.push(gw.expect_frame().await.unwrap().ty);
            }
            replies
        };
        let (_tx, rx) = watch::channel(false);
        let mut shutdown = Shutdown::new(rx);
        tokio::select! {
            r = conn.run(&mut shutdown) => panic!("the connection ended first: {r:?}"),
            replies = gateway => replies,
        }
    }

    /// The connection reads the clock once per wake-up and shares it among the calls it serves
    /// then; a call whose chain waited makes it stale. Two calls pipelined behind one wake-up,
    /// each waiting 300 ms of a 500 ms deadline: the second's deadline counts from when it
    /// started (after the first), not from the wake-up, so both are answered.
    #[tokio::test(start_paused = true)]
    async fn a_call_behind_one_that_waited_gets_its_whole_deadline() {
        let replies = pipelined(500, "[0, 300]", true, 2).await;
        assert_eq!(replies, [FrameType::HttpReqCall as u8; 2]);
    }

    /// The same behind a prepare whose build took a while (1.5 s, on the blocking pool, in real
    /// time): the call pipelined behind it still has its 1 s for its 100 ms wait.
    #[tokio::test]
    async fn a_call_behind_a_slow_prepare_gets_its_whole_deadline() {
        let replies = pipelined(1000, "[1500, 100]", false, 1).await;
        assert_eq!(replies, [FrameType::HttpReqCall as u8]);
    }

    #[tokio::test]
    async fn replies_to_pipelined_calls_leave_in_one_write() {
        let config = Config {
            protocol: ProtocolSetting::Fixed(Protocol::Capnp),
            ..Config::default()
        };
        let runner = Runner::new(config, Registry::new());
        let shared = runner.shared();
        let (mut conn, mut gateway) = connection(shared);
        // Sixteen calls in one write, each answered with an error frame.
        const CALLS: usize = 16;
        let gateway = async move {
            gateway
                .write_all(&UNDECODABLE_CALL.repeat(CALLS))
                .await
                .unwrap();
            for _ in 0..CALLS {
                read_error_frame(&mut gateway).await;
            }
        };
        let (_tx, rx) = watch::channel(false);
        let mut shutdown = Shutdown::new(rx);
        let (served, ()) = tokio::join!(conn.run(&mut shutdown), gateway);
        served.unwrap();
        let writes = conn.io.framed.writes();
        // One write when the runner's first read takes all sixteen calls, as it does here; a
        // few more if the socket split them. One write per reply is what batching prevents.
        assert!(writes <= 3, "{writes} writes for {CALLS} pipelined replies");
    }
}
