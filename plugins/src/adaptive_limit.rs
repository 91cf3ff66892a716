//! `adaptive-limit` *(ext)*: BBR-style adaptive concurrency. Sheds load before the upstream
//! falls over, with no fixed number to tune.
//!
//! The idea is TCP BBR's, as Sentinel's system rule and Kratos's BBR limiter apply it to
//! servers: an upstream that completes at most `max_pass` requests per second, each taking at
//! least `min_rt`, needs `max_pass × min_rt` requests in flight to be fully busy (Little's law);
//! more in flight only queue, and every queued request waits longer. So the plugin admits while
//!
//! ```text
//! inflight < max(min_limit, ceil(max_pass/s × min_rt_s × (1 + headroom)))
//! ```
//!
//! where `max_pass/s` is the highest completion rate over any tenth of the last `window_ms`
//! (counted in `buckets` buckets) and `min_rt` the smallest response time in that window; the
//! bucket still filling is left out of both. The check applies only while **triggered**: the
//! last complete bucket's mean response time is at least `trigger_rt_ms`, or `inflight` is at
//! least `trigger_inflight`, or a request was rejected in the last `cooldown_ms` (Sentinel
//! checks BBR only under load, and Kratos keeps checking for a second after a drop: at light
//! load the throughput seen measures demand, not capacity).
//!
//! Under sustained load every response has waited in the upstream's queue, so the window's
//! smallest time would creep up with the limit it produced. Every half window, while triggered,
//! the limit drops to `min_limit` for three minimum response times: the queue drains and the
//! true minimum is measured again (BBR's ProbeRTT).
//!
//! Conf: `{"trigger_rt_ms": 200, "trigger_inflight": null, "min_limit": 4, "headroom": 0.1,
//! "window_ms": 10000, "buckets": 100, "cooldown_ms": 1000, "rejected_code": 503,
//! "rejected_msg": null, "rejected_headers": [], "dry_run": false, "lease_timeout": 30,
//! "correlation_header": null}`; at least one trigger (`trigger_rt_ms: 0` checks always).
//!
//! * Request phase: admit (count in flight, and remember when) or reject: `rejected_code`,
//!   `rejected_headers`, `{"error_msg": rejected_msg}\n`. With `dry_run` nothing is rejected;
//!   a request that would have been gets the response header `x-dry-run-reject: adaptive-limit`.
//! * Response phase (the same conf as `ext-plugin-post-resp`): the request's completion and
//!   response time (the runner's clock, from admission to the response call) are recorded. The
//!   request is found through a correlation header, as limit-conn does; a response that never
//!   comes frees its slot after `lease_timeout` without a time recorded.
//! * State: per route and conf (one upstream), shared by every connection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Deserialize;

use crate::support::clock::{secs_to_nanos, Nanos, NANOS_PER_MS};
use crate::support::keyed::lock;
use crate::support::lease::{Correlation, Leases, MAX_LEASES};
use crate::support::reject::{self, HeaderConf};
use ext_plugin_sdk::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveLimitConf {
    trigger_rt_ms: Option<f64>,
    trigger_inflight: Option<u64>,
    #[serde(default = "default_min_limit")]
    min_limit: u64,
    #[serde(default = "default_headroom")]
    headroom: f64,
    #[serde(default = "default_window_ms")]
    window_ms: u64,
    #[serde(default = "default_buckets")]
    buckets: usize,
    #[serde(default = "default_cooldown_ms")]
    cooldown_ms: u64,
    #[serde(default = "default_rejected_code")]
    rejected_code: u16,
    rejected_msg: Option<String>,
    #[serde(default)]
    rejected_headers: Vec<HeaderConf>,
    #[serde(default)]
    dry_run: bool,
    #[serde(default = "default_lease_timeout")]
    lease_timeout: f64,
    correlation_header: Option<String>,
}

fn default_min_limit() -> u64 {
    4
}
fn default_headroom() -> f64 {
    0.1
}
fn default_window_ms() -> u64 {
    10_000
}
fn default_buckets() -> usize {
    100
}
fn default_cooldown_ms() -> u64 {
    1000
}
fn default_rejected_code() -> u16 {
    503
}
fn default_lease_timeout() -> f64 {
    30.0
}

pub struct AdaptiveLimit {
    state: Arc<Bbr>,
    corr: Correlation,
    reject: Stop,
    dry_run: bool,
    clock: Clock,
}

/// Settings of the estimator, from the conf.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub trigger_rt: Option<u64>,
    pub trigger_inflight: Option<u64>,
    pub min_limit: u64,
    pub headroom: f64,
    pub window: u64,
    pub buckets: usize,
    pub cooldown: u64,
}

/// The shared estimator of one route and conf.
pub struct Bbr {
    settings: Settings,
    inflight: AtomicU64,
    /// When the last request was rejected (0: never).
    last_drop: AtomicU64,
    /// When the next min-RT probe may start, and when the current one ends.
    next_probe: AtomicU64,
    probe_until: AtomicU64,
    window: Mutex<Window>,
    /// Admission times by correlation id.
    leases: Leases<u64>,
}

/// Per-bucket completions and response times.
struct Window {
    bucket_ns: u64,
    buckets: Vec<Bucket>,
    /// The stats for the bucket starting at `.0` (they change only when a bucket completes).
    cached: Option<(u64, Option<Stats>)>,
    /// Completions by bucket age, reused.
    by_age: Vec<u64>,
}

#[derive(Clone, Copy)]
struct Bucket {
    /// Start of the bucket's span; `u64::MAX` before its first completion.
    start: u64,
    passed: u64,
    rt_sum: u64,
    min_rt: u64,
}

const EMPTY: Bucket = Bucket {
    start: u64::MAX,
    passed: 0,
    rt_sum: 0,
    min_rt: u64::MAX,
};

/// What the window says, over its complete buckets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    /// Most completions in one bucket, per second.
    pub max_pass_per_sec: f64,
    /// Smallest response time, nanoseconds.
    pub min_rt: u64,
    /// Mean response time in the last complete bucket (0 when it saw no completion).
    pub recent_rt: u64,
}

impl Window {
    fn new(window: u64, buckets: usize) -> Window {
        Window {
            bucket_ns: (window / buckets as u64).max(1),
            buckets: vec![EMPTY; buckets],
            cached: None,
            by_age: vec![0; buckets],
        }
    }

    fn record(&mut self, now: u64, rt: u64) {
        let start = now - now % self.bucket_ns;
        let i = (now / self.bucket_ns) as usize % self.buckets.len();
        let b = &mut self.buckets[i];
        if b.start != start {
            *b = Bucket { start, ..EMPTY };
        }
        b.passed += 1;
        b.rt_sum += rt;
        b.min_rt = b.min_rt.min(rt);
    }

    /// Over the buckets inside the window, without the one covering `now` (so they stay the
    /// same until that bucket completes, and are computed once per bucket).
    fn stats(&mut self, now: u64) -> Option<Stats> {
        let current = now - now % self.bucket_ns;
        if let Some((at, stats)) = self.cached {
            if at == current {
                return stats;
            }
        }
        let n = self.buckets.len();
        let span = self.bucket_ns * n as u64;
        let previous = current.saturating_sub(self.bucket_ns);
        let (mut min_rt, mut recent_rt, mut any) = (u64::MAX, 0, false);
        self.by_age.iter_mut().for_each(|c| *c = 0);
        for b in &self.buckets {
            if b.start == u64::MAX || b.start >= current || now - b.start > span {
                continue;
            }
            any = true;
            min_rt = min_rt.min(b.min_rt);
            if b.start == previous {
                recent_rt = b.rt_sum / b.passed;
            }
            let age = ((current - b.start) / self.bucket_ns) as usize;
            if let Some(c) = self.by_age.get_mut(age) {
                *c += b.passed;
            }
        }
        // Throughput over a tenth of the window at a time: single buckets are noisy (requests
        // admitted together complete together), and their maximum would overstate it.
        let k = (n / 10).max(1);
        let max_pass = self.by_age[1..]
            .windows(k.min(n - 1))
            .map(|w| w.iter().sum::<u64>())
            .max()
            .unwrap_or(0);
        let stats = any.then(|| Stats {
            max_pass_per_sec: max_pass as f64 * 1e9 / (k.min(n - 1) as u64 * self.bucket_ns) as f64,
            min_rt,
            recent_rt,
        });
        self.cached = Some((current, stats));
        stats
    }
}

/// What [`Bbr::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admitted,
    /// Over the limit (the limit then).
    Rejected(u64),
}

impl Bbr {
    pub fn new(settings: Settings, lease_timeout: u64) -> Bbr {
        Bbr {
            settings,
            inflight: AtomicU64::new(0),
            last_drop: AtomicU64::new(0),
            next_probe: AtomicU64::new(0),
            probe_until: AtomicU64::new(0),
            window: Mutex::new(Window::new(settings.window, settings.buckets)),
            leases: Leases::new(lease_timeout, MAX_LEASES),
        }
    }

    /// The concurrency limit the window supports now; `None` before any complete bucket.
    pub fn limit(&self, now: u64) -> Option<u64> {
        let stats = lock(&self.window).stats(now)?;
        Some(self.limit_of(&stats))
    }

    fn limit_of(&self, stats: &Stats) -> u64 {
        let s = &self.settings;
        let bdp = stats.max_pass_per_sec * (stats.min_rt as f64 / 1e9) * (1.0 + s.headroom);
        (bdp.ceil() as u64).max(s.min_limit)
    }

    fn triggered(&self, inflight: u64, now: u64, stats: Option<&Stats>) -> bool {
        let s = &self.settings;
        let last_drop = self.last_drop.load(Ordering::Relaxed);
        if last_drop != 0 && now.saturating_sub(last_drop) < s.cooldown {
            return true;
        }
        if s.trigger_inflight.is_some_and(|t| inflight >= t) {
            return true;
        }
        match s.trigger_rt {
            Some(0) => true,
            Some(t) => stats.is_some_and(|st| st.recent_rt >= t),
            None => false,
        }
    }

    /// Whether a min-RT probe runs at `now`: under sustained load every response waits in the
    /// upstream's queue, so the window's smallest time creeps up with the limit it produced (and
    /// the limit with it). Every half window the limit drops to `min_limit` for three minimum
    /// response times, so the queue drains and the true minimum is measured again (BBR's
    /// ProbeRTT).
    fn probing(&self, now: u64, min_rt: u64) -> bool {
        if now < self.probe_until.load(Ordering::Relaxed) {
            return true;
        }
        let next = self.next_probe.load(Ordering::Relaxed);
        if next == 0 {
            let _ = self.next_probe.compare_exchange(0, now + self.settings.window / 2, Ordering::AcqRel, Ordering::Relaxed);
            return false;
        }
        if now >= next
            && self
                .next_probe
                .compare_exchange(next, now + self.settings.window / 2, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.probe_until.store(now + 3 * min_rt, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Checks one request and, when admitted (or `force`d, for a dry run), counts it in flight.
    pub fn admit(&self, now: u64, force: bool) -> Admission {
        let inflight = self.inflight.load(Ordering::Acquire);
        let mut verdict = Admission::Admitted;
        if inflight >= self.settings.min_limit {
            let stats = lock(&self.window).stats(now);
            if let Some(stats) = stats.filter(|st| self.triggered(inflight, now, Some(st))) {
                let limit = if self.probing(now, stats.min_rt) {
                    self.settings.min_limit
                } else {
                    self.limit_of(&stats)
                };
                if inflight >= limit {
                    self.last_drop.store(now, Ordering::Relaxed);
                    verdict = Admission::Rejected(limit);
                }
            }
        }
        if verdict == Admission::Admitted || force {
            self.inflight.fetch_add(1, Ordering::AcqRel);
        }
        verdict
    }

    /// A request admitted at `admitted` completed at `now`.
    pub fn complete(&self, admitted: u64, now: u64) {
        self.release();
        lock(&self.window).record(now, now.saturating_sub(admitted).max(1));
    }

    /// A request left without a completion (its response never came).
    pub fn release(&self) {
        let _ = self
            .inflight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    pub fn inflight(&self) -> u64 {
        self.inflight.load(Ordering::Acquire)
    }
}

impl Plugin for AdaptiveLimit {
    const NAME: &'static str = "adaptive-limit";
    type Conf = AdaptiveLimitConf;

    fn prepare(conf: AdaptiveLimitConf, env: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        let clock = env.clock().clone();
        if conf.trigger_rt_ms.is_none() && conf.trigger_inflight.is_none() {
            return Err(ConfError::new(
                "set `trigger_rt_ms` or `trigger_inflight` (`trigger_rt_ms: 0` limits always): at \
                 light load the throughput seen measures demand, not the upstream's capacity",
            ));
        }
        if let Some(t) = conf.trigger_rt_ms {
            if !(0.0..=600_000.0).contains(&t) {
                return Err(ConfError::field("trigger_rt_ms", format!("must be 0 to 600000, got {t}")));
            }
        }
        if conf.trigger_inflight == Some(0) {
            return Err(ConfError::field("trigger_inflight", "must be at least 1"));
        }
        if conf.min_limit == 0 {
            return Err(ConfError::field("min_limit", "must be at least 1"));
        }
        if !(0.0..=10.0).contains(&conf.headroom) {
            return Err(ConfError::field("headroom", format!("must be 0 to 10, got {}", conf.headroom)));
        }
        if !(100..=600_000).contains(&conf.window_ms) {
            return Err(ConfError::field("window_ms", "must be 100 to 600000"));
        }
        if !(2..=1000).contains(&conf.buckets) || conf.window_ms / conf.buckets as u64 == 0 {
            return Err(ConfError::field(
                "buckets",
                "must be 2 to 1000, and at most one per millisecond of `window_ms`",
            ));
        }
        if conf.cooldown_ms > 600_000 {
            return Err(ConfError::field("cooldown_ms", "must be at most 600000"));
        }
        if !(conf.lease_timeout >= 1.0 && conf.lease_timeout <= 3600.0) {
            return Err(ConfError::field("lease_timeout", "must be 1 to 3600 seconds"));
        }
        if let Some(h) = &conf.correlation_header {
            if !reject::is_token(h) {
                return Err(ConfError::field("correlation_header", format!("{h:?} is not a header name")));
            }
        }
        let settings = Settings {
            trigger_rt: conf.trigger_rt_ms.map(|ms| (ms * NANOS_PER_MS as f64) as u64),
            trigger_inflight: conf.trigger_inflight,
            min_limit: conf.min_limit,
            headroom: conf.headroom,
            window: conf.window_ms * NANOS_PER_MS,
            buckets: conf.buckets,
            cooldown: conf.cooldown_ms * NANOS_PER_MS,
        };
        let lease = secs_to_nanos(conf.lease_timeout);
        if env.attachment() != Attachment::PostResp {
            tracing::debug!(
                route = env.route(),
                "adaptive-limit learns only from an `ext-plugin-post-resp` entry with the same conf"
            );
        }
        Ok(AdaptiveLimit {
            state: env.state(|| Bbr::new(settings, lease)),
            corr: Correlation::new(conf.correlation_header.as_deref()),
            reject: reject::rejection(
                "rejected_code",
                conf.rejected_code,
                conf.rejected_msg.as_deref(),
                &conf.rejected_headers,
            )?,
            dry_run: conf.dry_run,
            clock,
        })
    }

    fn request_filter_sync(&self, call: &mut RequestCall<'_>) -> Option<Result<Flow, PluginError>> {
        let now = self.clock.nanos();
        let state = &self.state;
        state.leases.sweep(now, |_| state.release());
        match state.admit(now, self.dry_run) {
            Admission::Rejected(limit) if !self.dry_run => {
                tracing::debug!(limit, inflight = state.inflight(), "adaptive-limit: rejected");
                return Some(Ok(Flow::Stop(self.reject.clone())));
            }
            Admission::Rejected(_) => reject::dry_run_reject(call, Self::NAME),
            Admission::Admitted => {}
        }
        let id = self.corr.id_for_call(call);
        if state.leases.insert(&id, now, now).is_err() {
            // Admitted but untracked, it could never be released: give it back and refuse.
            state.release();
            tracing::debug!("adaptive-limit: lease table full");
            return Some(Ok(Flow::Stop(self.reject.clone())));
        }
        Some(Ok(Flow::Continue))
    }

    async fn response_filter(&self, call: &mut ResponseCall<'_>) -> Result<(), PluginError> {
        if self.state.leases.is_empty() {
            return Ok(());
        }
        let Some(id) = call.var(&self.corr.var).await? else {
            tracing::debug!(header = %self.corr.header, "adaptive-limit: response without correlation id");
            return Ok(());
        };
        if let Some(admitted) = self.state.leases.take(&id) {
            self.state.complete(admitted, self.clock.nanos());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::support::clock::NANOS_PER_SEC;
    use ext_plugin_sdk::harness::{request, TestCall, TestEnv, TestResp};
    use std::time::Duration;

    const MS: u64 = NANOS_PER_MS;

    fn settings() -> Settings {
        Settings {
            trigger_rt: Some(0),
            trigger_inflight: None,
            min_limit: 2,
            headroom: 0.0,
            window: 1000 * MS,
            buckets: 10,
            cooldown: 1000 * MS,
        }
    }

    #[test]
    fn the_limit_is_max_pass_times_min_rt() {
        let bbr = Bbr::new(settings(), 30 * NANOS_PER_SEC);
        let t0 = 1000 * NANOS_PER_SEC;
        // 100 ms buckets; 20 completions of 50 ms in the first: 200/s × 0.05 s = 10.
        for _ in 0..20 {
            bbr.complete(t0, t0 + 50 * MS);
        }
        assert_eq!(bbr.limit(t0 + 60 * MS), None, "the bucket is still filling");
        assert_eq!(bbr.limit(t0 + 150 * MS), Some(10));
        for _ in 0..10 {
            assert_eq!(bbr.admit(t0 + 150 * MS, false), Admission::Admitted);
        }
        assert_eq!(bbr.admit(t0 + 150 * MS, false), Admission::Rejected(10));
        assert_eq!(bbr.inflight(), 10, "a rejection is not counted");
        bbr.release();
        assert_eq!(bbr.admit(t0 + 150 * MS, false), Admission::Admitted);
        assert_eq!(bbr.admit(t0 + 150 * MS, true), Admission::Rejected(10), "forced: counted");
        assert_eq!(bbr.inflight(), 11);
    }

    #[test]
    fn untriggered_it_admits_and_a_drop_keeps_it_armed() {
        let s = Settings { trigger_rt: Some(200 * MS), ..settings() };
        let bbr = Bbr::new(s, 30 * NANOS_PER_SEC);
        let t0 = 1000 * NANOS_PER_SEC;
        for _ in 0..20 {
            bbr.complete(t0, t0 + 50 * MS);
        }
        let t = t0 + 150 * MS;
        for _ in 0..30 {
            assert_eq!(bbr.admit(t, false), Admission::Admitted, "mean 50 ms < trigger 200 ms");
        }
        // Two slow completions: the mean passes the trigger, and 20/s × 1 s = 20 < 30 in flight.
        for _ in 0..2 {
            bbr.complete(t0, t0 + 1000 * MS);
        }
        assert!(matches!(bbr.admit(t0 + 1100 * MS, false), Admission::Rejected(_)));
    }

    #[tokio::test]
    async fn the_plugin_correlates_responses_and_rejects() {
        let env = TestEnv::default().with_clock(Clock::manual());
        let clock = env.clock().clone();
        let conf = r#"{"trigger_rt_ms": 0, "min_limit": 1, "headroom": 0, "window_ms": 1000, "rejected_code": 429, "rejected_msg": "shed"}"#;
        let parsed: AdaptiveLimitConf = serde_json::from_str(conf).unwrap();
        let p = env
            .with("route#1#ext-plugin-post-resp#1", AdaptiveLimit::NAME, conf, &[AdaptiveLimit::NAME], |e| {
                AdaptiveLimit::prepare(parsed, e)
            })
            .unwrap();
        // Two requests of 100 ms complete in one 100 ms bucket: 20/s × 0.1 s = 2.
        let mut ids = Vec::new();
        for _ in 0..2 {
            let mut c = TestCall::new(request(Method::Get, "/"));
            assert_eq!(p.request_filter(&mut c.call()).await.unwrap(), Flow::Continue);
            ids.push(c.set_headers()[0].value.clone().unwrap());
        }
        clock.advance(Duration::from_millis(100));
        for id in ids {
            let mut r = TestResp::new(200).with_gateway_var("http_x_a6_runner_req", &id);
            p.response_filter(&mut r.call()).await.unwrap();
        }
        assert_eq!(p.state.inflight(), 0);
        clock.advance(Duration::from_millis(100));
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut c = TestCall::new(request(Method::Get, "/"));
            assert_eq!(p.request_filter(&mut c.call()).await.unwrap(), Flow::Continue);
            held.push(c);
        }
        let mut c = TestCall::new(request(Method::Get, "/"));
        let Flow::Stop(s) = p.request_filter(&mut c.call()).await.unwrap() else {
            panic!("over the limit")
        };
        assert_eq!((s.status, &s.body[..]), (429, &b"{\"error_msg\":\"shed\"}\n"[..]));
    }

    #[test]
    fn a_dry_run_counts_and_marks_but_never_rejects() {
        let bbr = Bbr::new(settings(), 30 * NANOS_PER_SEC);
        let t0 = 1000 * NANOS_PER_SEC;
        for _ in 0..20 {
            bbr.complete(t0, t0 + 50 * MS);
        }
        let t = t0 + 150 * MS;
        for _ in 0..10 {
            bbr.admit(t, true);
        }
        assert_eq!(bbr.admit(t, true), Admission::Rejected(10));
        assert_eq!(bbr.inflight(), 11, "counted as it is let through");
    }

    #[test]
    fn bad_confs_name_the_field() {
        let env = TestEnv::default();
        for (conf, says) in [
            (r#"{}"#, "trigger_rt_ms"),
            (r#"{"trigger_inflight": 0}"#, "trigger_inflight"),
            (r#"{"trigger_rt_ms": 1, "min_limit": 0}"#, "min_limit"),
            (r#"{"trigger_rt_ms": 1, "headroom": -1}"#, "headroom"),
            (r#"{"trigger_rt_ms": 1, "buckets": 1}"#, "buckets"),
            (r#"{"trigger_rt_ms": 1, "window_ms": 10}"#, "window_ms"),
            (r#"{"trigger_rt_ms": 1, "rejected_code": 99}"#, "rejected_code"),
        ] {
            let parsed: AdaptiveLimitConf = serde_json::from_str(conf).unwrap();
            let e = env
                .with("route#1#ext-plugin-pre-req#1", AdaptiveLimit::NAME, conf, &[], |e| {
                    AdaptiveLimit::prepare(parsed, e)
                })
                .err()
                .expect(conf);
            assert!(e.message().contains(says), "{conf}: {e}");
        }
    }
}
