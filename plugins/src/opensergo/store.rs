//! The rule store: what the sources read, merged, compiled per app, and swapped in atomically.
//!
//! * Each source (the file, the control plane) hands in a whole [`SourceRules`]; the store keeps
//!   the last one of each and rebuilds the compiled view of every app a prepared `opensergo`
//!   conf names. Requests read a view through an [`ArcSwap`]: no lock, and a reload never
//!   shows a half-built set.
//! * **Merging.** Per `(namespace, app)`: the rules of both sources apply (their union); a
//!   strategy or router defined by both under the same kind and name is the control plane's
//!   (a warning names it); strategy references resolve against the merged strategies; fallback
//!   actions come from the file only, by name.
//! * **State.** A strategy's engine is keyed by `(app, resource, normalised spec)` and kept
//!   across rebuilds while that key stays; a changed threshold gets a fresh engine. Engines
//!   hold no clock: the plugin hands them readings of
//!   [`PrepareEnv::clock`](ext_plugin_sdk::PrepareEnv::clock), the runner's one clock.
//! * **Problems** (skipped objects, dangling references, lenient readings) are logged as
//!   warnings once: a rebuild logs only those the previous one did not have.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use ext_plugin_sdk::Stop;

use super::guard::{Engine, Guard, Step};
use super::metrics::{Loaded, StreamStats};
use super::model::*;
use super::tagging::Tagging;
use crate::support::keyed::lock;

/// The most `(namespace, app)` pairs the route confs may name (each is a subscription).
pub const MAX_APPS: usize = 1024;

/// Where a source's rules came from, for logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    File,
    ControlPlane,
}

/// The compiled rules of one app: what a request reads.
#[derive(Default)]
pub struct Compiled {
    pub resources: HashMap<Box<str>, Arc<Guard>>,
    pub tagging: Option<Arc<Tagging>>,
}

/// One app's current rules; prepared confs hold it.
pub struct AppView {
    key: AppKey,
    current: ArcSwap<Compiled>,
    loaded: Loaded,
}

impl AppView {
    pub fn key(&self) -> &AppKey {
        &self.key
    }

    /// The rules now (a cheap, lock-free load).
    pub fn load(&self) -> arc_swap::Guard<Arc<Compiled>> {
        self.current.load()
    }

    /// What each source holds for this app, for the metrics.
    pub fn loaded(&self) -> &Loaded {
        &self.loaded
    }

    /// The rules now, held (across an `.await`).
    pub fn load_full(&self) -> Arc<Compiled> {
        self.current.load_full()
    }
}

/// Runner-wide defaults of the route conf.
#[derive(Clone, Debug, Default)]
pub struct Defaults {
    pub namespace: Option<String>,
    pub app: Option<String>,
}

/// The OpenSergo rules of this process: provided to the registry as a service
/// ([`ext_plugin_sdk::Registry::provide`]) and fed by the rule sources.
pub struct RuleStore {
    defaults: Defaults,
    inner: Mutex<Inner>,
    apps: watch::Sender<BTreeSet<AppKey>>,
    stream: StreamStats,
}

#[derive(Default)]
struct Inner {
    file: Arc<SourceRules>,
    control: Arc<SourceRules>,
    views: BTreeMap<AppKey, Arc<AppView>>,
    engines: HashMap<(AppKey, Box<str>, String), Arc<Engine>>,
    problems: HashSet<String>,
    summaries: BTreeMap<AppKey, String>,
}

impl RuleStore {
    pub fn new(defaults: Defaults) -> Arc<RuleStore> {
        Arc::new(RuleStore {
            defaults,
            inner: Mutex::new(Inner::default()),
            apps: watch::channel(BTreeSet::new()).0,
            stream: StreamStats::default(),
        })
    }

    /// The control-plane stream's state and counts, for the metrics.
    pub fn stream(&self) -> &StreamStats {
        &self.stream
    }

    pub fn defaults(&self) -> &Defaults {
        &self.defaults
    }

    /// The view of `(namespace, app)`, made (and subscribed to) on first use.
    pub fn view(&self, namespace: &str, app: &str) -> Result<Arc<AppView>, String> {
        let key = (namespace.to_owned(), app.to_owned());
        let mut inner = lock(&self.inner);
        if let Some(v) = inner.views.get(&key) {
            return Ok(v.clone());
        }
        if inner.views.len() >= MAX_APPS {
            return Err(format!(
                "the route confs already name {MAX_APPS} (namespace, app) pairs, the most this runner follows"
            ));
        }
        let view = Arc::new(AppView {
            key: key.clone(),
            current: ArcSwap::from_pointee(Compiled::default()),
            loaded: Loaded::default(),
        });
        inner.views.insert(key.clone(), view.clone());
        self.rebuild(&mut inner, Some(&key));
        drop(inner);
        self.apps.send_modify(|apps| {
            apps.insert(key);
        });
        Ok(view)
    }

    /// The apps the route confs name, as they grow (the control-plane client subscribes them).
    pub fn apps(&self) -> watch::Receiver<BTreeSet<AppKey>> {
        self.apps.subscribe()
    }

    /// Replaces one source's rules and recompiles every view.
    pub fn set(&self, source: Source, rules: SourceRules) {
        let mut inner = lock(&self.inner);
        match source {
            Source::File => inner.file = Arc::new(rules),
            Source::ControlPlane => inner.control = Arc::new(rules),
        }
        self.rebuild(&mut inner, None);
    }

    /// A listing of the loaded rules per app and of what guards each resource.
    pub fn describe(&self) -> String {
        let inner = lock(&self.inner);
        let mut out = String::new();
        for (src, rules) in [("file", &inner.file), ("control plane", &inner.control)] {
            for ((ns, app), a) in &rules.apps {
                let _ = writeln!(out, "{src}: {ns}/{app}: {}", a.counts());
            }
        }
        for (key, view) in &inner.views {
            let compiled = view.load();
            let mut resources: Vec<_> = compiled.resources.iter().collect();
            resources.sort_by(|a, b| a.0.cmp(b.0));
            for (resource, guard) in resources {
                let steps: Vec<_> = guard.steps().iter().map(|s| s.label.as_str()).collect();
                let _ = writeln!(out, "{}/{}: {resource}: {}", key.0, key.1, steps.join("; "));
            }
        }
        for p in &inner.file.problems {
            let _ = writeln!(out, "problem: {p}");
        }
        out
    }

    /// Recompiles the views (`only` one when a view was just made), logs what changed.
    fn rebuild(&self, inner: &mut Inner, only: Option<&AppKey>) {
        let mut problems: Vec<String> = Vec::new();
        if only.is_none() {
            problems.extend(inner.file.problems.iter().cloned());
            problems.extend(inner.control.problems.iter().cloned());
        }
        let mut engines = HashMap::new();
        let keys: Vec<AppKey> = match only {
            Some(k) => vec![k.clone()],
            None => inner.views.keys().cloned().collect(),
        };
        for key in &keys {
            let compiled = compile(key, &inner.file, &inner.control, &inner.engines, &mut engines, &mut problems);
            let summary = summary(key, &inner.file, &inner.control, &compiled);
            if inner.summaries.get(key) != Some(&summary) {
                tracing::info!(namespace = %key.0, app = %key.1, "opensergo rules: {summary}");
                inner.summaries.insert(key.clone(), summary);
            }
            let view = &inner.views[key];
            view.current.store(Arc::new(compiled));
            view.loaded.set(Source::File, inner.file.apps.get(key));
            view.loaded.set(Source::ControlPlane, inner.control.apps.get(key));
        }
        match only {
            // Engines of the other views stay as they are.
            Some(_) => inner.engines.extend(engines),
            None => inner.engines = engines,
        }
        for p in &problems {
            if !inner.problems.contains(p) {
                tracing::warn!("opensergo: {p}");
            }
        }
        if only.is_none() {
            inner.problems = problems.into_iter().collect();
        } else {
            inner.problems.extend(problems);
        }
    }
}

fn summary(key: &AppKey, file: &SourceRules, control: &SourceRules, c: &Compiled) -> String {
    let part = |name: &str, s: &SourceRules| match s.apps.get(key) {
        Some(a) if !a.is_empty() => format!("{name} {}", a.counts()),
        _ => format!("{name} none"),
    };
    format!(
        "{}; {}; {} resources guarded{}",
        part("file", file),
        part("control plane", control),
        c.resources.len(),
        if c.tagging.is_some() { ", tagging on" } else { "" }
    )
}

/// The default answer when no fallback is configured anywhere: `None` here, the plugin's own.
fn fallback_stop(f: &Fallback) -> Stop {
    let mut stop = Stop::new(f.status).with_body(f.body.clone());
    for (k, v) in &f.headers {
        stop = stop.with_header(k.clone(), v.clone());
    }
    stop
}

/// Builds one app's view from both sources, reusing `old` engines whose key stays.
fn compile(
    key: &AppKey,
    file: &SourceRules,
    control: &SourceRules,
    old: &HashMap<(AppKey, Box<str>, String), Arc<Engine>>,
    engines: &mut HashMap<(AppKey, Box<str>, String), Arc<Engine>>,
    problems: &mut Vec<String>,
) -> Compiled {
    let empty = AppRules::default();
    let f = file.apps.get(key).unwrap_or(&empty);
    let c = control.apps.get(key).unwrap_or(&empty);
    let app = format!("{}/{}", key.0, key.1);

    let mut strategies = f.strategies.clone();
    for (k, s) in &c.strategies {
        if strategies.insert(k.clone(), s.clone()).is_some() {
            problems.push(format!(
                "{app}: {} {} is defined by the file and the control plane; the control plane's applies",
                k.0.name(),
                k.1
            ));
        }
    }

    // resource -> (spec key -> step)
    let mut by_resource: BTreeMap<&str, BTreeMap<String, Step>> = BTreeMap::new();
    for rule in f.rules.iter().chain(&c.rules) {
        let mut resolved = Vec::new();
        for r in &rule.strategies {
            let found = match r.kind {
                Some(kind) => strategies.get(&(kind, r.name.clone())).map(|s| (kind, s)),
                None => {
                    let mut named = strategies.iter().filter(|((_, n), _)| *n == r.name);
                    match (named.next(), named.next()) {
                        (Some(((kind, _), s)), None) => Some((*kind, s)),
                        _ => None,
                    }
                }
            };
            match found {
                Some((kind, s)) => resolved.push((kind, &r.name, s)),
                None => {
                    let kind = r.kind.map_or("a strategy", StrategyKind::name);
                    problems.push(format!(
                        "{app}: rule {} skipped: it references {kind} {:?}, which is not loaded{}",
                        rule.name,
                        r.name,
                        if r.kind.is_none() { " (or whose name is not unique)" } else { "" }
                    ));
                    resolved.clear();
                    break;
                }
            }
        }
        if resolved.is_empty() {
            continue;
        }
        let reject = rule.fallback.as_ref().and_then(|name| match file.fallbacks.get(name) {
            Some(fb) => Some(fallback_stop(fb)),
            None => {
                problems.push(format!(
                    "{app}: rule {}: fallback action {name:?} is not loaded; the route conf's fallback answers",
                    rule.name
                ));
                None
            }
        });
        for target in &rule.targets {
            let steps = by_resource.entry(target).or_default();
            for (kind, name, s) in &resolved {
                let spec = s.spec_key();
                if steps.contains_key(&spec) {
                    continue; // the same strategy twice on one resource applies once
                }
                let engine_key = (key.clone(), Box::<str>::from(target.as_str()), spec.clone());
                let engine = match engines.get(&engine_key).or_else(|| old.get(&engine_key)) {
                    Some(e) => e.clone(),
                    None => Arc::new(Engine::new(s)),
                };
                engines.insert(engine_key, engine.clone());
                steps.insert(
                    spec.clone(),
                    Step {
                        kind: *kind,
                        engine,
                        reject: reject.clone(),
                        label: format!("rule {}: {} {name} ({spec})", rule.name, kind.name()),
                    },
                );
            }
        }
    }

    let mut routers: Vec<_> = f.routers.clone();
    for r in &c.routers {
        if let Some(i) = routers.iter().position(|x| x.name == r.name) {
            problems.push(format!(
                "{app}: TrafficRouter {} is defined by the file and the control plane; the control plane's applies",
                r.name
            ));
            routers[i] = r.clone();
        } else {
            routers.push(r.clone());
        }
    }
    Compiled {
        resources: by_resource
            .into_iter()
            .map(|(r, steps)| (Box::from(r), Arc::new(Guard::new(steps.into_values().collect()))))
            .collect(),
        tagging: Tagging::new(f.lanes.clone(), &routers).map(Arc::new),
    }
}
