//! Metrics a plugin exports beside the runner's own: counters, gauges and duration histograms
//! with bounded labels. The runner serves them all in the Prometheus text format when it runs
//! with `--metrics-listen` (every name gets the `ext_plugin_runner_` prefix); without it the
//! handles still work, and nothing is exported.
//!
//! Register at prepare time, through [`PrepareEnv::metrics`](crate::PrepareEnv::metrics), and
//! keep the handle in the plugin or its state; the hot path is then one atomic operation:
//!
//! ```
//! use std::sync::atomic::AtomicU64;
//! use std::sync::Arc;
//! use ext_plugin_sdk::metrics::{Counter, Metrics};
//!
//! struct Pool { open: AtomicU64 }
//!
//! let metrics = Metrics::new(100); // a runner makes this; a plugin gets it from its PrepareEnv
//! let route = "route#1";
//! // A counter, resolved once; `.inc()` per event.
//! let retries: Counter = metrics.counter(
//!     "pool_retries_total",
//!     "Connections the pool retried.",
//!     &[("route", route), ("plugin", "my-plugin")],
//! );
//! retries.inc();
//! // A gauge read from plugin state when the metrics are scraped: nothing on the hot path, and
//! // the series goes away with the state.
//! let pool = Arc::new(Pool { open: AtomicU64::new(3) });
//! metrics.sampled_gauge(
//!     "pool_open_connections",
//!     "Connections the pool holds open.",
//!     &[("route", route), ("plugin", "my-plugin")],
//!     &pool,
//!     |p| p.open.load(std::sync::atomic::Ordering::Relaxed) as i64,
//! );
//! let snapshot = metrics.snapshot();
//! assert_eq!(snapshot.counter("pool_retries_total", &[("route", "route#1"), ("plugin", "my-plugin")]), Some(1));
//! assert_eq!(snapshot.gauge("pool_open_connections", &[("route", "route#1"), ("plugin", "my-plugin")]), Some(3));
//! ```
//!
//! # Rules
//!
//! * **Names**: lower-case `[a-z_][a-z0-9_]*`, without the prefix. Counters end in `_total`;
//!   nothing else may. Name them after the plugin or the subsystem (`breaker_…`, `redis_…`).
//! * **Labels are bounded.** A label named `route` is the route part of the conf key
//!   ([`PrepareEnv::route`](crate::PrepareEnv::route)); the registry tracks at most the
//!   runner's `--metrics-max-routes` distinct routes, and later ones are counted under
//!   `route="_other"`. Every other label must take a fixed, small set of values (a plugin name,
//!   an outcome, a backend the conf names): never a client address, a key, a consumer or
//!   anything else a request chooses. A family that still grows past [`MAX_SERIES`] series
//!   counts the excess under a series whose labels are all `_other`.
//! * **Same name, same shape**: registering a name again with the same type, help and label
//!   names returns the same series for the same label values (so every chain of a route shares
//!   one counter). A different type, help or label set for a name is a programming error and
//!   panics, in the plugin's first test.
//! * **Sampled** series ([`Metrics::sampled_gauge`], [`Metrics::sampled_counter`]) read an
//!   `Arc`'d value at scrape time and hold it weakly: they disappear when the value is dropped.
//!   Several live values with the same labels add up; registering the same value again with the
//!   same labels counts it once (one value may feed several label sets, each read its own way). A sampled counter should be owned by something that lives as long as the process,
//!   or its series resets when the owner goes.

use std::any::Any;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

/// The most series one family holds; past it, new label sets share an all-`_other` series.
pub const MAX_SERIES: usize = 100_000;

/// The label value for routes past the registry's route bound, and for series past
/// [`MAX_SERIES`].
pub const OTHER: &str = "_other";

/// The label whose values the registry bounds by route count.
pub const ROUTE_LABEL: &str = "route";

/// A monotonically increasing count. Cloning shares the count.
#[derive(Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// A counter that is not exported (what a disabled registry hands out).
    pub fn detached() -> Counter {
        Counter::default()
    }

    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for Counter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Counter({})", self.get())
    }
}

/// A value that goes up and down. Cloning shares the value.
#[derive(Clone, Default)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    /// A gauge that is not exported.
    pub fn detached() -> Gauge {
        Gauge::default()
    }

    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn inc(&self) {
        self.add(1);
    }

    pub fn dec(&self) {
        self.add(-1);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for Gauge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Gauge({})", self.get())
    }
}

/// A distribution of durations over fixed buckets, without a lock: one atomic add for the
/// bucket and one for the sum per observation. Cloning shares the buckets.
#[derive(Clone)]
pub struct Histogram(Arc<HistogramCells>);

struct HistogramCells {
    /// Upper bounds in seconds, as registered (for the exposition).
    bounds: &'static [f64],
    /// The same bounds in nanoseconds (for observing).
    bounds_nanos: Box<[u64]>,
    /// Observations per bucket, not cumulative; the last one is above every bound (`+Inf`).
    buckets: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// A histogram that is not exported.
    ///
    /// # Panics
    /// When `bounds` is empty, or not finite, positive and strictly increasing.
    pub fn detached(bounds: &'static [f64]) -> Histogram {
        check_bounds(bounds);
        Histogram(Arc::new(HistogramCells {
            bounds,
            bounds_nanos: bounds.iter().map(|s| (s * 1e9).round() as u64).collect(),
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }))
    }

    pub fn observe(&self, d: Duration) {
        self.observe_nanos(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    pub fn observe_nanos(&self, nanos: u64) {
        let cells = &*self.0;
        // Most observations land in the first buckets: a linear scan beats a binary search.
        let i = cells
            .bounds_nanos
            .iter()
            .position(|&b| nanos <= b)
            .unwrap_or(cells.bounds_nanos.len());
        cells.buckets[i].fetch_add(1, Ordering::Relaxed);
        cells.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The observations so far: `(upper bound in seconds, cumulative count)` per bucket, the
    /// `+Inf` bucket last, and the sum in seconds. The count is the last bucket's.
    pub fn value(&self) -> HistogramValue {
        let cells = &*self.0;
        let mut total = 0;
        let mut buckets = Vec::with_capacity(cells.buckets.len());
        for (i, cell) in cells.buckets.iter().enumerate() {
            total += cell.load(Ordering::Relaxed);
            let bound = cells.bounds.get(i).copied().unwrap_or(f64::INFINITY);
            buckets.push((bound, total));
        }
        HistogramValue {
            buckets,
            count: total,
            sum_seconds: cells.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

impl fmt::Debug for Histogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Histogram").field(&self.value()).finish()
    }
}

fn check_bounds(bounds: &[f64]) {
    assert!(!bounds.is_empty(), "a histogram needs at least one bucket");
    assert!(
        bounds.iter().all(|b| b.is_finite() && *b > 0.0) && bounds.windows(2).all(|w| w[0] < w[1]),
        "histogram buckets must be finite, positive and strictly increasing: {bounds:?}"
    );
}

/// The metric types of the exposition format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    /// The exposition format's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A histogram's contents at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramValue {
    /// `(upper bound in seconds, observations at or below it)`, ending with `+Inf`.
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_seconds: f64,
}

/// One series' value at one moment.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Counter(u64),
    Gauge(i64),
    Histogram(HistogramValue),
}

/// One series of a [`FamilySnapshot`].
#[derive(Clone, Debug)]
pub struct SeriesSnapshot {
    /// Label names and values, in the family's label order.
    pub labels: Vec<(&'static str, Box<str>)>,
    pub value: Value,
}

/// One metric family at one moment: its name (without the exporter's prefix), help, type and
/// series, sorted by label values.
#[derive(Clone, Debug)]
pub struct FamilySnapshot {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub series: Vec<SeriesSnapshot>,
}

/// Every family of a registry at one moment, sorted by name: what an exporter renders.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub families: Vec<FamilySnapshot>,
}

impl Snapshot {
    /// The value of the series `name{labels}` (label order does not matter).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<&Value> {
        let family = self.families.iter().find(|f| f.name == name)?;
        family
            .series
            .iter()
            .find(|s| {
                s.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(n, v)| s.labels.iter().any(|(sn, sv)| sn == n && &**sv == *v))
            })
            .map(|s| &s.value)
    }

    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
        match self.value(name, labels)? {
            Value::Counter(v) => Some(*v),
            _ => None,
        }
    }

    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<i64> {
        match self.value(name, labels)? {
            Value::Gauge(v) => Some(*v),
            _ => None,
        }
    }

    pub fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Option<&HistogramValue> {
        match self.value(name, labels)? {
            Value::Histogram(v) => Some(v),
            _ => None,
        }
    }
}

/// The registry: where plugins and the runner register their metrics and an exporter reads
/// them. Cloning shares it. [`Metrics::disabled`] (the default) hands out working handles that
/// nothing exports.
#[derive(Clone, Default)]
pub struct Metrics {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    max_routes: usize,
    routes: Mutex<HashSet<Box<str>>>,
    families: Mutex<BTreeMap<&'static str, Family>>,
}

struct Family {
    help: &'static str,
    kind: Kind,
    label_names: Box<[&'static str]>,
    /// Histograms only.
    bounds: &'static [f64],
    series: BTreeMap<Box<[Box<str>]>, Series>,
}

enum Series {
    Counter(Counter),
    Gauge(Gauge),
    Histogram(Histogram),
    Sampled(Vec<Sample>),
}

/// A value read at scrape time from something held weakly; `None` once it is gone.
struct Sample {
    owner: Weak<dyn Any + Send + Sync>,
    read: Box<dyn Fn() -> Option<i64> + Send + Sync>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a map operation or a read: a poisoned lock is still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            None => f.write_str("Metrics(disabled)"),
            Some(inner) => f
                .debug_struct("Metrics")
                .field("families", &lock(&inner.families).len())
                .field("max_routes", &inner.max_routes)
                .finish(),
        }
    }
}

/// What a registration asks for.
enum Want {
    Counter,
    Gauge,
    Histogram(&'static [f64]),
    Sampled(Kind, Sample),
}

impl Metrics {
    /// An exporting registry that tracks at most `max_routes` distinct `route` label values.
    pub fn new(max_routes: usize) -> Metrics {
        Metrics {
            inner: Some(Arc::new(Inner {
                max_routes,
                routes: Mutex::new(HashSet::new()),
                families: Mutex::new(BTreeMap::new()),
            })),
        }
    }

    /// A registry that exports nothing; its handles still count.
    pub fn disabled() -> Metrics {
        Metrics::default()
    }

    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// The counter `name{labels}`; see the [module documentation](self) for the rules.
    pub fn counter(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
    ) -> Counter {
        match self.register(name, help, labels, Want::Counter) {
            Some(Series::Counter(c)) => c,
            _ => Counter::detached(),
        }
    }

    /// The gauge `name{labels}`.
    pub fn gauge(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
    ) -> Gauge {
        match self.register(name, help, labels, Want::Gauge) {
            Some(Series::Gauge(g)) => g,
            _ => Gauge::detached(),
        }
    }

    /// The duration histogram `name{labels}` with upper bounds `buckets` in seconds (the same
    /// for every series of the name).
    pub fn histogram(
        &self,
        name: &'static str,
        help: &'static str,
        buckets: &'static [f64],
        labels: &[(&'static str, &str)],
    ) -> Histogram {
        check_bounds(buckets);
        match self.register(name, help, labels, Want::Histogram(buckets)) {
            Some(Series::Histogram(h)) => h,
            _ => Histogram::detached(buckets),
        }
    }

    /// A gauge `name{labels}` read from `owner` by `read` at every scrape, for as long as
    /// `owner` lives (it is held weakly).
    pub fn sampled_gauge<T: Any + Send + Sync>(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
        owner: &Arc<T>,
        read: fn(&T) -> i64,
    ) {
        self.sampled_boxed(name, help, labels, Kind::Gauge, owner, Box::new(read));
    }

    /// A counter `name{labels}` read from `owner` by `read` at every scrape, for counts kept
    /// elsewhere (in atomics of a long-lived value).
    pub fn sampled_counter<T: Any + Send + Sync>(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
        owner: &Arc<T>,
        read: fn(&T) -> u64,
    ) {
        let read: Box<dyn Fn(&T) -> i64 + Send + Sync> =
            Box::new(move |t| i64::try_from(read(t)).unwrap_or(i64::MAX));
        self.sampled_boxed(name, help, labels, Kind::Counter, owner, read);
    }

    fn sampled_boxed<T: Any + Send + Sync>(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
        kind: Kind,
        owner: &Arc<T>,
        read: Box<dyn Fn(&T) -> i64 + Send + Sync>,
    ) {
        if self.inner.is_none() {
            return;
        }
        let weak = Arc::downgrade(owner);
        let erased: Weak<dyn Any + Send + Sync> = weak.clone();
        let sample = Sample {
            owner: erased,
            read: Box::new(move || weak.upgrade().map(|t| read(&t))),
        };
        self.register(name, help, labels, Want::Sampled(kind, sample));
    }

    /// The value `route` is exported under: itself while fewer than the bound are tracked (or
    /// when it already is), else [`OTHER`].
    fn route_value<'a>(&self, inner: &Inner, route: &'a str) -> &'a str {
        let mut routes = lock(&inner.routes);
        if routes.contains(route) {
            return route;
        }
        if routes.len() < inner.max_routes {
            routes.insert(route.into());
            return route;
        }
        OTHER
    }

    fn register(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
        want: Want,
    ) -> Option<Series> {
        let inner = self.inner.as_ref()?;
        let kind = match &want {
            Want::Counter => Kind::Counter,
            Want::Gauge => Kind::Gauge,
            Want::Histogram(_) => Kind::Histogram,
            Want::Sampled(kind, _) => *kind,
        };
        check_name(name, kind);
        for (label, _) in labels {
            check_label(name, label, kind);
        }
        let values: Box<[Box<str>]> = labels
            .iter()
            .map(|&(label, value)| match label {
                ROUTE_LABEL => self.route_value(inner, value).into(),
                _ => value.into(),
            })
            .collect();
        let bounds = match &want {
            Want::Histogram(b) => b,
            _ => &[][..],
        };
        let mut families = lock(&inner.families);
        let family = families.entry(name).or_insert_with(|| Family {
            help,
            kind,
            label_names: labels.iter().map(|(n, _)| *n).collect(),
            bounds,
            series: BTreeMap::new(),
        });
        let same_labels = family.label_names.len() == labels.len()
            && family
                .label_names
                .iter()
                .zip(labels)
                .all(|(a, (b, _))| a == b);
        assert!(
            family.kind == kind && family.help == help && same_labels && family.bounds == bounds,
            "metric `{name}` registered again with another type, help, label set or buckets"
        );
        let values = if family.series.len() >= MAX_SERIES && !family.series.contains_key(&values) {
            labels.iter().map(|_| Box::<str>::from(OTHER)).collect()
        } else {
            values
        };
        match want {
            Want::Sampled(_, sample) => {
                let entry = family
                    .series
                    .entry(values)
                    .or_insert_with(|| Series::Sampled(Vec::new()));
                let Series::Sampled(samples) = entry else {
                    panic!("metric `{name}` has both sampled and direct series of one label set");
                };
                samples.retain(|s| s.owner.strong_count() > 0);
                if !samples.iter().any(|s| s.owner.ptr_eq(&sample.owner)) {
                    samples.push(sample);
                }
                None
            }
            direct => {
                let entry = family.series.entry(values).or_insert_with(|| match direct {
                    Want::Counter => Series::Counter(Counter::default()),
                    Want::Gauge => Series::Gauge(Gauge::default()),
                    Want::Histogram(b) => Series::Histogram(Histogram::detached(b)),
                    Want::Sampled(..) => unreachable!("handled above"),
                });
                Some(match entry {
                    Series::Counter(c) => Series::Counter(c.clone()),
                    Series::Gauge(g) => Series::Gauge(g.clone()),
                    Series::Histogram(h) => Series::Histogram(h.clone()),
                    Series::Sampled(_) => panic!(
                        "metric `{name}` has both sampled and direct series of one label set"
                    ),
                })
            }
        }
    }

    /// Every family and series now, sorted; sampled series whose owners are gone are dropped.
    pub fn snapshot(&self) -> Snapshot {
        let Some(inner) = &self.inner else {
            return Snapshot::default();
        };
        let mut families = lock(&inner.families);
        let mut out = Vec::with_capacity(families.len());
        for (&name, family) in families.iter_mut() {
            let mut series = Vec::with_capacity(family.series.len());
            family.series.retain(|values, s| {
                let value = match s {
                    Series::Counter(c) => Value::Counter(c.get()),
                    Series::Gauge(g) => Value::Gauge(g.get()),
                    Series::Histogram(h) => Value::Histogram(h.value()),
                    Series::Sampled(samples) => {
                        let mut sum = 0i64;
                        samples.retain(|s| match (s.read)() {
                            Some(v) => {
                                sum = sum.saturating_add(v);
                                true
                            }
                            None => false,
                        });
                        if samples.is_empty() {
                            return false;
                        }
                        match family.kind {
                            Kind::Counter => Value::Counter(sum.max(0) as u64),
                            _ => Value::Gauge(sum),
                        }
                    }
                };
                series.push(SeriesSnapshot {
                    labels: family
                        .label_names
                        .iter()
                        .copied()
                        .zip(values.iter().cloned())
                        .collect(),
                    value,
                });
                true
            });
            out.push(FamilySnapshot {
                name,
                help: family.help,
                kind: family.kind,
                series,
            });
        }
        Snapshot { families: out }
    }
}

fn check_name(name: &str, kind: Kind) {
    let valid = name
        .bytes()
        .enumerate()
        .all(|(i, b)| b == b'_' || b.is_ascii_lowercase() || (i > 0 && b.is_ascii_digit()));
    assert!(
        valid && !name.is_empty(),
        "metric name `{name}` must be lower-case [a-z_][a-z0-9_]*"
    );
    let total = name.ends_with("_total");
    assert!(
        total == (kind == Kind::Counter),
        "metric `{name}`: counters, and only counters, end in `_total`"
    );
    assert!(
        !["_count", "_sum", "_bucket"]
            .iter()
            .any(|s| name.ends_with(s)),
        "metric `{name}` ends like a histogram's own series"
    );
}

fn check_label(name: &str, label: &str, kind: Kind) {
    let valid = label
        .bytes()
        .enumerate()
        .all(|(i, b)| b == b'_' || b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()));
    assert!(
        valid && !label.is_empty() && !label.starts_with("__"),
        "metric `{name}`: label `{label}` must be [a-zA-Z_][a-zA-Z0-9_]* without a leading `__`"
    );
    assert!(
        !(kind == Kind::Histogram && label == "le"),
        "metric `{name}`: `le` is the histogram's own label"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUCKETS: &[f64] = &[0.001, 0.01, 0.1];

    #[test]
    fn the_same_name_and_labels_share_a_series_and_other_labels_do_not() {
        let m = Metrics::new(10);
        let a = m.counter("x_total", "X.", &[("route", "r1")]);
        let b = m.counter("x_total", "X.", &[("route", "r1")]);
        let c = m.counter("x_total", "X.", &[("route", "r2")]);
        a.inc();
        b.add(2);
        c.inc();
        let s = m.snapshot();
        assert_eq!(s.counter("x_total", &[("route", "r1")]), Some(3));
        assert_eq!(s.counter("x_total", &[("route", "r2")]), Some(1));
    }

    #[test]
    fn routes_past_the_bound_are_counted_as_other() {
        let m = Metrics::new(2);
        for r in ["r1", "r2", "r3", "r4"] {
            m.counter("y_total", "Y.", &[("route", r), ("plugin", "p")])
                .inc();
        }
        // A tracked route stays itself in any family.
        m.gauge("z", "Z.", &[("route", "r1")]).set(5);
        let s = m.snapshot();
        assert_eq!(
            s.counter("y_total", &[("route", "r1"), ("plugin", "p")]),
            Some(1)
        );
        assert_eq!(
            s.counter("y_total", &[("route", "r2"), ("plugin", "p")]),
            Some(1)
        );
        assert_eq!(
            s.counter("y_total", &[("route", OTHER), ("plugin", "p")]),
            Some(2)
        );
        assert_eq!(s.gauge("z", &[("route", "r1")]), Some(5));
    }

    #[test]
    fn sampled_series_add_up_count_an_owner_once_and_go_with_it() {
        let m = Metrics::new(10);
        let a = Arc::new(AtomicI64::new(2));
        let b = Arc::new(AtomicI64::new(5));
        let read = |v: &AtomicI64| v.load(Ordering::Relaxed);
        m.sampled_gauge("keys", "Keys.", &[("route", "r")], &a, read);
        m.sampled_gauge("keys", "Keys.", &[("route", "r")], &a, read);
        m.sampled_gauge("keys", "Keys.", &[("route", "r")], &b, read);
        m.sampled_gauge("keys", "Keys.", &[("route", "s")], &a, |v| {
            10 * v.load(Ordering::Relaxed)
        });
        let s = m.snapshot();
        assert_eq!(s.gauge("keys", &[("route", "r")]), Some(7));
        assert_eq!(
            s.gauge("keys", &[("route", "s")]),
            Some(20),
            "one owner, another series"
        );
        drop(b);
        assert_eq!(m.snapshot().gauge("keys", &[("route", "r")]), Some(2));
        drop(a);
        let s = m.snapshot();
        assert_eq!(s.gauge("keys", &[("route", "r")]), None);
        assert_eq!(s.gauge("keys", &[("route", "s")]), None);
        assert!(s.families[0].series.is_empty(), "the family stays, empty");
    }

    #[test]
    fn histograms_are_cumulative_with_an_inf_bucket() {
        let m = Metrics::new(10);
        let h = m.histogram("lat_seconds", "Latency.", BUCKETS, &[]);
        for ms in [0, 1, 5, 50, 500, 5000] {
            h.observe(Duration::from_millis(ms));
        }
        let s = m.snapshot();
        let v = s.histogram("lat_seconds", &[]).unwrap();
        let counts: Vec<u64> = v.buckets.iter().map(|b| b.1).collect();
        assert_eq!(counts, [2, 3, 4, 6]);
        assert_eq!(v.buckets[3].0, f64::INFINITY);
        assert_eq!(v.count, 6);
        assert!((v.sum_seconds - 5.556).abs() < 1e-9, "{}", v.sum_seconds);
    }

    #[test]
    fn a_disabled_registry_counts_but_exports_nothing() {
        let m = Metrics::disabled();
        let c = m.counter("x_total", "X.", &[]);
        c.inc();
        assert_eq!(c.get(), 1);
        m.sampled_gauge("g", "G.", &[], &Arc::new(()), |_| 1);
        assert!(m.snapshot().families.is_empty());
    }

    #[test]
    fn families_past_the_series_bound_share_an_other_series() {
        let m = Metrics::new(10);
        for i in 0..MAX_SERIES + 5 {
            m.counter("big_total", "Big.", &[("k", &i.to_string())])
                .inc();
        }
        let s = m.snapshot();
        assert_eq!(s.families[0].series.len(), MAX_SERIES + 1);
        assert_eq!(s.counter("big_total", &[("k", OTHER)]), Some(5));
    }

    #[test]
    #[should_panic(expected = "counters, and only counters")]
    fn a_counter_without_total_is_refused() {
        Metrics::new(1).counter("calls", "Calls.", &[]);
    }

    #[test]
    #[should_panic(expected = "registered again")]
    fn one_name_with_two_types_is_refused() {
        let m = Metrics::new(1);
        m.gauge("g", "G.", &[]);
        m.histogram("g", "G.", BUCKETS, &[]);
    }

    #[test]
    #[should_panic(expected = "label `bad-label`")]
    fn bad_label_names_are_refused() {
        Metrics::new(1).gauge("g", "G.", &[("bad-label", "v")]);
    }
}
