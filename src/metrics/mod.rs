//! The runner's metrics (docs/operations.md has the reference): what the connections, calls,
//! conf cache and plugin chains do, kept in the SDK's [`Metrics`] registry beside what plugins
//! register there, and served in the Prometheus text format ([`text`]) by the `endpoint` module
//! when the runner runs with `--metrics-listen`.
//!
//! Cost: with metrics off, the runner's handles are `None` and every hook is a branch. With
//! them on, every handle a call touches is resolved before the call (per runner, or per chain at
//! prepare time), so a call costs a clock read at each end, a counter increment, a histogram
//! observation and one increment per plugin that ran: single relaxed atomics, no lock, no
//! allocation, no lookup.

pub(crate) mod endpoint;
pub mod text;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use ext_plugin_sdk::host::{ChainObserver, Decision, GatewayVars, Phase};
use ext_plugin_sdk::metrics::{Counter, Gauge, Histogram, Metrics};
use ext_plugin_sdk::model::ExtraInfoReq;
use ext_plugin_sdk::{Chain, ChainError, PluginError, Registry};

pub use endpoint::{parse_metrics_address, MetricsAddress};

use crate::conf_cache::PrepareError;
use crate::server::Shared;

/// Every metric name the runner exports starts with this.
pub const PREFIX: &str = "ext_plugin_runner_";

/// The default of `--metrics-max-routes`.
pub const DEFAULT_MAX_ROUTES: usize = 1000;

/// Upper bounds of the call duration histogram, in seconds: a call the runner answers alone
/// takes tens of microseconds; extra_info round trips, delays and slow plugins take longer.
const CALL_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// A frame the gateway sent, as the `type` label names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CallType {
    PrepareConf,
    HttpReqCall,
    HttpRespCall,
    /// A frame type the gateway does not send.
    Unknown,
}

impl CallType {
    const ALL: [CallType; 4] = [
        CallType::PrepareConf,
        CallType::HttpReqCall,
        CallType::HttpRespCall,
        CallType::Unknown,
    ];

    fn label(self) -> &'static str {
        match self {
            CallType::PrepareConf => "prepare_conf",
            CallType::HttpReqCall => "http_req_call",
            CallType::HttpRespCall => "http_resp_call",
            CallType::Unknown => "unknown",
        }
    }

    /// The outcomes a call of this type can have.
    fn outcomes(self) -> &'static [CallOutcome] {
        use CallOutcome::*;
        match self {
            CallType::PrepareConf => &[Ok, BadRequest, Refused],
            CallType::HttpReqCall | CallType::HttpRespCall => &[
                Ok,
                BadRequest,
                TokenNotFound,
                Error,
                Panic,
                Timeout,
                GatewayError,
            ],
            CallType::Unknown => &[BadRequest],
        }
    }
}

/// How a call ended, as the `outcome` label names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CallOutcome {
    /// Answered as the protocol expects (a stop is a plugin's answer, so `ok` too).
    Ok,
    /// The payload did not decode (or the frame type is unknown): BAD_REQUEST.
    BadRequest,
    /// prepare_conf only: the chain did not prepare.
    Refused,
    /// The conf token is unknown or expired: CONF_TOKEN_NOT_FOUND.
    TokenNotFound,
    /// A plugin returned an error: SERVICE_UNAVAILABLE.
    Error,
    /// A plugin panicked: SERVICE_UNAVAILABLE.
    Panic,
    /// Over `--call-timeout-ms`: SERVICE_UNAVAILABLE.
    Timeout,
    /// The gateway broke an extra_info exchange; the connection closes.
    GatewayError,
}

impl CallOutcome {
    const COUNT: usize = 8;

    fn label(self) -> &'static str {
        match self {
            CallOutcome::Ok => "ok",
            CallOutcome::BadRequest => "bad_request",
            CallOutcome::Refused => "refused",
            CallOutcome::TokenNotFound => "token_not_found",
            CallOutcome::Error => "error",
            CallOutcome::Panic => "panic",
            CallOutcome::Timeout => "timeout",
            CallOutcome::GatewayError => "gateway_error",
        }
    }
}

/// Why a connection ended, as the `reason` label names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// The gateway closed it between calls.
    Eof,
    /// The runner closed it between calls while draining.
    Shutdown,
    /// `--idle-timeout-secs`.
    Idle,
    /// A frame stalled part-way (`--stall-timeout-ms`).
    Stall,
    /// The gateway stopped reading replies (`--stall-timeout-ms`).
    WriteStall,
    /// A frame over `--max-frame`.
    FrameTooLarge,
    /// The gateway broke the protocol: a truncated frame, a bad extra_info answer.
    Protocol,
    /// A socket error.
    Io,
}

impl CloseReason {
    const ALL: [CloseReason; 8] = [
        CloseReason::Eof,
        CloseReason::Shutdown,
        CloseReason::Idle,
        CloseReason::Stall,
        CloseReason::WriteStall,
        CloseReason::FrameTooLarge,
        CloseReason::Protocol,
        CloseReason::Io,
    ];

    fn label(self) -> &'static str {
        match self {
            CloseReason::Eof => "eof",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Idle => "idle",
            CloseReason::Stall => "stall",
            CloseReason::WriteStall => "write_stall",
            CloseReason::FrameTooLarge => "frame_too_large",
            CloseReason::Protocol => "protocol",
            CloseReason::Io => "io",
        }
    }
}

/// One call being measured: its type, how it ended (set by the handler on its way out) and when
/// it started (only with metrics on).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Meter {
    ty: CallType,
    pub(crate) outcome: CallOutcome,
    started: Option<Instant>,
}

impl Default for Meter {
    fn default() -> Meter {
        Meter {
            ty: CallType::Unknown,
            outcome: CallOutcome::Ok,
            started: None,
        }
    }
}

/// The runner's handles into the registry, resolved once.
struct Handles {
    /// `[type][outcome]`; a combination a type cannot have is a detached counter.
    calls: [[Counter; CallOutcome::COUNT]; 4],
    durations: [Histogram; 4],
    /// var, req_body, resp_body.
    extra_info: [Counter; 3],
    accepted: Counter,
    open: Gauge,
    closed: [Counter; 8],
    built: Counter,
}

/// The runner's metrics: the registry plugins share, and the runner's own handles when on.
#[derive(Default)]
pub(crate) struct RunnerMetrics {
    registry: Metrics,
    on: Option<Box<Handles>>,
}

impl RunnerMetrics {
    /// Metrics on, with at most `max_routes` routes tracked in `route` labels.
    pub(crate) fn new(max_routes: usize) -> RunnerMetrics {
        let m = Metrics::new(max_routes);
        m.gauge(
            "build_info",
            "Always 1; the runner's version is in the label.",
            &[("version", env!("CARGO_PKG_VERSION"))],
        )
        .set(1);
        let calls = CallType::ALL.map(|ty| {
            let mut row: [Counter; CallOutcome::COUNT] = Default::default();
            for &outcome in ty.outcomes() {
                row[outcome as usize] = m.counter(
                    "calls_total",
                    "Frames the gateway sent, by type and by how the runner answered them.",
                    &[("type", ty.label()), ("outcome", outcome.label())],
                );
            }
            row
        });
        let durations = CallType::ALL.map(|ty| {
            m.histogram(
                "call_duration_seconds",
                "Time from a frame's arrival to its answer being queued, extra_info round trips included.",
                CALL_BUCKETS,
                &[("type", ty.label())],
            )
        });
        let extra_info = ["var", "req_body", "resp_body"].map(|kind| {
            m.counter(
                "extra_info_total",
                "extra_info round trips to the gateway, by what was asked.",
                &[("kind", kind)],
            )
        });
        let closed = CloseReason::ALL.map(|reason| {
            m.counter(
                "connections_closed_total",
                "Gateway connections ended, by why.",
                &[("reason", reason.label())],
            )
        });
        let handles = Handles {
            calls,
            durations,
            extra_info,
            accepted: m.counter(
                "connections_accepted_total",
                "Gateway connections accepted.",
                &[],
            ),
            open: m.gauge("connections", "Gateway connections open now.", &[]),
            closed,
            built: m.counter(
                "chains_prepared_total",
                "Chains prepared (prepare_conf calls that built a chain rather than reusing a cached token).",
                &[],
            ),
        };
        RunnerMetrics {
            registry: m,
            on: Some(Box::new(handles)),
        }
    }

    /// The registry plugins register in (a disabled one with metrics off).
    pub(crate) fn registry(&self) -> &Metrics {
        &self.registry
    }

    pub(crate) fn is_on(&self) -> bool {
        self.on.is_some()
    }

    /// The exposition: every family in the text format.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        text::encode(PREFIX, &self.registry.snapshot(), &mut out);
        out
    }

    /// Starts measuring a call of frame type `ty` that arrived at `now()` (asked only when
    /// metrics are on: the connection's clock of its last wake-up, no clock read of its own).
    pub(crate) fn start(&self, ty: u8, now: impl FnOnce() -> Instant) -> Meter {
        use crate::frame::FrameType;
        if self.on.is_none() {
            return Meter::default();
        }
        let ty = match FrameType::from_u8(ty) {
            Some(FrameType::PrepareConf) => CallType::PrepareConf,
            Some(FrameType::HttpReqCall) => CallType::HttpReqCall,
            Some(FrameType::HttpRespCall) => CallType::HttpRespCall,
            _ => CallType::Unknown,
        };
        Meter {
            ty,
            outcome: if ty == CallType::Unknown {
                CallOutcome::BadRequest
            } else {
                CallOutcome::Ok
            },
            started: Some(now()),
        }
    }

    /// Counts a call that ended as `meter` says.
    pub(crate) fn finish(&self, meter: &Meter) {
        let (Some(h), Some(started)) = (&self.on, meter.started) else {
            return;
        };
        let ty = meter.ty as usize;
        h.calls[ty][meter.outcome as usize].inc();
        h.durations[ty].observe(started.elapsed());
    }

    pub(crate) fn connection_opened(&self) {
        if let Some(h) = &self.on {
            h.accepted.inc();
            h.open.inc();
        }
    }

    pub(crate) fn connection_closed(&self, reason: CloseReason) {
        if let Some(h) = &self.on {
            h.closed[reason as usize].inc();
            h.open.dec();
        }
    }

    /// A chain `prepare_conf` built: counted, and watched per plugin when metrics are on.
    pub(crate) fn prepared(&self, chain: Result<Chain, ChainError>) -> Result<Chain, ChainError> {
        let Some(h) = &self.on else {
            return chain;
        };
        let mut chain = chain?;
        h.built.inc();
        let route = chain.route().to_owned();
        let links = chain
            .plugin_names()
            .map(|plugin| Arc::new(self.decision_counters(&route, plugin)))
            .collect();
        chain.set_observer(Arc::new(ChainCounters { links }));
        Ok(chain)
    }

    fn decision_counters(&self, route: &str, plugin: &'static str) -> [Counter; 4] {
        ["pass", "delay", "reject", "error"].map(|decision| {
            self.registry.counter(
                "plugin_decisions_total",
                "What each plugin decided, per route: pass, delay (passed after holding the request), reject (answered the client itself) or error (failed the call, in either phase).",
                &[("route", route), ("plugin", plugin), ("decision", decision)],
            )
        })
    }

    /// Counts a refused prepare_conf by the plugin whose entry was refused: `_unknown` for a
    /// name the registry does not have (names the gateway sends are not a bounded label),
    /// `_panicked` when a plugin panicked while preparing; `_too_large`, `_timeout`, `_busy`
    /// for prepares refused by the cache's own bounds, whatever the plugins.
    pub(crate) fn refused(&self, registry: &Registry, error: &PrepareError) {
        if self.on.is_none() {
            return;
        }
        let plugin = match error {
            PrepareError::Refused(e) => registry
                .names()
                .into_iter()
                .find(|n| *n == e.plugin)
                .unwrap_or("_unknown"),
            PrepareError::Panicked => "_panicked",
            PrepareError::TooLarge { .. } => "_too_large",
            PrepareError::TimedOut(_) => "_timeout",
            PrepareError::Busy(_) => "_busy",
        };
        self.registry
            .counter(
                "prepare_refusals_total",
                "prepare_conf calls refused, by the plugin whose entry was refused.",
                &[("plugin", plugin)],
            )
            .inc();
    }

    /// `gateway` with its extra_info round trips counted.
    pub(crate) fn gateway<'a>(&'a self, gateway: &'a mut dyn GatewayVars) -> CountedVars<'a> {
        CountedVars {
            gateway,
            counters: self.on.as_ref().map(|h| &h.extra_info),
        }
    }
}

/// Chains the conf cache dropped, counted where it drops them.
#[derive(Default)]
pub(crate) struct Evictions {
    pub(crate) capacity: AtomicU64,
    pub(crate) expired: AtomicU64,
}

/// Exports the conf cache's size and evictions, read at scrape time.
pub(crate) fn watch_conf_cache(shared: &Arc<Shared>) {
    let m = shared.metrics.registry();
    m.sampled_gauge(
        "conf_cache_entries",
        "Prepared chains in the conf cache (expired ones not yet swept included).",
        &[],
        shared,
        |s| s.cache.len() as i64,
    );
    type Read = fn(&Shared) -> u64;
    let evictions: [(&str, Read); 2] = [
        ("capacity", |s| {
            s.cache.evictions.capacity.load(Ordering::Relaxed)
        }),
        ("expired", |s| {
            s.cache.evictions.expired.load(Ordering::Relaxed)
        }),
    ];
    for (reason, read) in evictions {
        m.sampled_counter(
            "conf_cache_evictions_total",
            "Chains the conf cache dropped: capacity (--conf-cache-capacity reached, least recently used first) or expired (unused for 1.2 x the conf expiry).",
            &[("reason", reason)],
            shared,
            read,
        );
    }
}

/// A connection's [`GatewayVars`] that counts each round trip by kind.
pub(crate) struct CountedVars<'a> {
    gateway: &'a mut dyn GatewayVars,
    counters: Option<&'a [Counter; 3]>,
}

impl GatewayVars for CountedVars<'_> {
    fn fetch<'a>(
        &'a mut self,
        req: ExtraInfoReq,
    ) -> Pin<Box<dyn Future<Output = Result<Option<Bytes>, PluginError>> + Send + 'a>> {
        if let Some(c) = self.counters {
            let kind = match req {
                ExtraInfoReq::Var(_) => 0,
                ExtraInfoReq::ReqBody => 1,
                ExtraInfoReq::RespBody => 2,
            };
            c[kind].inc();
        }
        self.gateway.fetch(req)
    }
}

/// A chain's decision counters, one set per plugin, resolved when it was prepared.
struct ChainCounters {
    /// `[pass, delay, reject, error]` per chain entry.
    links: Box<[Arc<[Counter; 4]>]>,
}

impl ChainObserver for ChainCounters {
    fn decided(&self, phase: Phase, plugin: usize, decision: Decision) {
        let Some(counters) = self.links.get(plugin) else {
            return;
        };
        let i = match (phase, decision) {
            // A response filter cannot reject or delay: only its failures are decisions.
            (Phase::Response, Decision::Pass) => return,
            (_, Decision::Pass) => 0,
            (_, Decision::Delay) => 1,
            (_, Decision::Reject) => 2,
            (_, Decision::Error | Decision::Abandoned) => 3,
        };
        counters[i].inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_call_type_has_ok_or_bad_request_and_outcomes_fit_the_table() {
        for ty in CallType::ALL {
            assert!(ty.outcomes().contains(&CallOutcome::BadRequest));
            for o in ty.outcomes() {
                assert!((*o as usize) < CallOutcome::COUNT);
            }
        }
        assert_eq!(CloseReason::ALL.len(), 8);
    }

    #[test]
    fn off_is_inert_and_on_counts_calls_with_their_duration() {
        let off = RunnerMetrics::default();
        let meter = off.start(2, Instant::now);
        assert!(meter.started.is_none());
        off.finish(&meter);
        assert!(off.registry().snapshot().families.is_empty());

        let on = RunnerMetrics::new(10);
        let mut meter = on.start(2, Instant::now);
        meter.outcome = CallOutcome::Timeout;
        on.finish(&meter);
        on.finish(&on.start(1, Instant::now));
        on.finish(&on.start(9, Instant::now));
        let s = on.registry().snapshot();
        let calls = |ty, outcome| s.counter("calls_total", &[("type", ty), ("outcome", outcome)]);
        assert_eq!(calls("http_req_call", "timeout"), Some(1));
        assert_eq!(calls("http_req_call", "ok"), Some(0));
        assert_eq!(calls("prepare_conf", "ok"), Some(1));
        assert_eq!(calls("unknown", "bad_request"), Some(1));
        assert_eq!(
            calls("prepare_conf", "timeout"),
            None,
            "not a prepare outcome"
        );
        let h = s
            .histogram("call_duration_seconds", &[("type", "http_req_call")])
            .unwrap();
        assert_eq!(h.count, 1);
    }
}
