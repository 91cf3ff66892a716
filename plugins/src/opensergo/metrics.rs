//! What the OpenSergo rule sources export (docs/operations.md, "Redis and OpenSergo"): the
//! control-plane stream's state and the pushes it brought, and the rules loaded per app.
//!
//! The sources count in atomics of the store and its views; an `opensergo` conf registers them
//! at prepare as sampled series (read at scrape time, nothing on the request path). `namespace`
//! and `app` are those the route confs name, at most [`MAX_APPS`](super::MAX_APPS) pairs.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use ext_plugin_sdk::metrics::Metrics;

use super::model::AppRules;
use super::store::{AppView, RuleStore, Source};

/// What a push from the control plane came to, as the `outcome` label says it.
#[derive(Clone, Copy, Debug)]
pub enum Push {
    /// Applied and ACKed.
    Applied,
    /// Did not decode: NACKed, the kind's last rules stay.
    Nacked,
    /// Older than the last of its kind on the stream: ACKed 4010 and ignored.
    Outdated,
    /// A kind this runner does not read, or an app no conf names: ACKed and ignored.
    Ignored,
    /// The control plane answered an error code: nothing changed.
    Error,
}

/// The control-plane stream's counts, kept in the store.
#[derive(Default)]
pub struct StreamStats {
    /// A control plane is configured (else its series are not exported).
    configured: AtomicBool,
    open: AtomicBool,
    opened: AtomicU64,
    /// By [`Push`], in its order.
    pushes: [AtomicU64; 5],
}

impl StreamStats {
    pub fn configured(&self) {
        self.configured.store(true, Ordering::Relaxed);
    }

    /// The stream opened (`true`) or ended.
    pub fn set_open(&self, open: bool) {
        if open {
            self.opened.fetch_add(1, Ordering::Relaxed);
        }
        self.open.store(open, Ordering::Relaxed);
    }

    pub fn push(&self, p: Push) {
        self.pushes[p as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// The objects of one app loaded from one source, by kind: what `opensergo_rules_loaded` reads.
#[derive(Default)]
pub struct Loaded {
    /// `[file, control plane]` × `[rules, strategies, routers, lanes]`.
    counts: [[Arc<AtomicI64>; 4]; 2],
}

const KINDS: [&str; 4] = ["rules", "strategies", "routers", "lanes"];

fn source_index(s: Source) -> usize {
    match s {
        Source::File => 0,
        Source::ControlPlane => 1,
    }
}

impl Loaded {
    /// Records what `source` holds for the app now (`None`: nothing).
    pub fn set(&self, source: Source, rules: Option<&AppRules>) {
        let n = rules.map_or([0; 4], |a| {
            [a.rules.len(), a.strategies.len(), a.routers.len(), a.lanes.len()]
        });
        for (cell, n) in self.counts[source_index(source)].iter().zip(n) {
            cell.store(n as i64, Ordering::Relaxed);
        }
    }
}

/// Registers the store's stream series and `view`'s rule counts in `metrics`.
pub fn register(metrics: &Metrics, store: &Arc<RuleStore>, view: &AppView) {
    if !metrics.is_enabled() {
        return;
    }
    let (ns, app) = view.key();
    for (source, name) in [(Source::File, "file"), (Source::ControlPlane, "control_plane")] {
        for (cell, kind) in view.loaded().counts[source_index(source)].iter().zip(KINDS) {
            metrics.sampled_gauge(
                "opensergo_rules_loaded",
                "OpenSergo objects loaded for an app, by source and kind (rules = \
                 FaultToleranceRules, strategies, routers = TrafficRouters, lanes = TrafficLanes).",
                &[("namespace", ns), ("app", app), ("source", name), ("kind", kind)],
                cell,
                |c| c.load(Ordering::Relaxed),
            );
        }
    }
    if !store.stream().configured.load(Ordering::Relaxed) {
        return;
    }
    metrics.sampled_gauge(
        "opensergo_stream_up",
        "1 while the stream to the OpenSergo control plane is open, 0 while it reconnects.",
        &[],
        store,
        |s| i64::from(s.stream().open.load(Ordering::Relaxed)),
    );
    metrics.sampled_counter(
        "opensergo_streams_opened_total",
        "Streams to the OpenSergo control plane opened (the first, then every reconnect).",
        &[],
        store,
        |s| s.stream().opened.load(Ordering::Relaxed),
    );
    const HELP: &str = "Pushes from the OpenSergo control plane by outcome: applied, nacked \
        (did not decode), outdated (an older version), ignored (a kind or app not followed), \
        error (the control plane answered an error).";
    type Read = fn(&RuleStore) -> u64;
    let pushes: [(&str, Read); 5] = [
        ("applied", |s| s.stream().pushes[Push::Applied as usize].load(Ordering::Relaxed)),
        ("nacked", |s| s.stream().pushes[Push::Nacked as usize].load(Ordering::Relaxed)),
        ("outdated", |s| s.stream().pushes[Push::Outdated as usize].load(Ordering::Relaxed)),
        ("ignored", |s| s.stream().pushes[Push::Ignored as usize].load(Ordering::Relaxed)),
        ("error", |s| s.stream().pushes[Push::Error as usize].load(Ordering::Relaxed)),
    ];
    for (outcome, read) in pushes {
        metrics.sampled_counter(
            "opensergo_pushes_total",
            HELP,
            &[("outcome", outcome)],
            store,
            read,
        );
    }
}
