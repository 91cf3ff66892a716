//! `opensergo`: OpenSergo's fault-tolerance and traffic rules, from a rules file and from the
//! OpenSergo control plane, applied to the requests of the routes that name this plugin.
//!
//! Route conf: `{"app": "foo-app", "namespace": "default", "resource": "$request_method:$uri",
//! "fallback": {"status": 429, "headers": {"X-Limited": "1"}, "body": "..."}, "tag_header":
//! "x-opensergo-tag", "lease_timeout": 30}`. `app` and `namespace` default to the runner's
//! `--opensergo-app` / `--opensergo-namespace` (namespace: `default`); `resource` is a template
//! of `$var`s resolved per request (locally for request data).
//!
//! * Every FaultToleranceRule of the app whose `targetResourceName` equals the resolved
//!   resource applies its strategies (Sentinel's order, rollback on reject). A reject
//!   answers the rule's HttpRequestFallbackAction, else the conf's `fallback`, else 429 with
//!   `{"error_msg": "blocked by OpenSergo <Kind>"}`.
//! * The app's TrafficLanes and TrafficRouters label the request (docs/opensergo.md).
//! * Concurrency slots and circuit-breaker outcomes need the response phase: attach the same
//!   conf as `ext-plugin-post-resp` too (the request carries a correlation header, as with
//!   limit-conn). Without it, slots are freed and probes failed after `lease_timeout`.
//!
//! The rules come from a [`RuleStore`] the runner provides to the registry (see [`start`]); a
//! runner without one refuses the conf, saying how to configure a source.

mod client;
mod file;
mod guard;
pub mod proto;
mod store;
mod tagging;
mod wire;
mod yaml;
pub mod model;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use ext_plugin_sdk::*;

use crate::support::clock::{secs_to_nanos, Nanos, NANOS_PER_MS};
use crate::support::template::{self, Part};
use crate::support::lease::{Correlation, Full, Leases, MAX_LEASES};
use guard::{Held, Verdict};
use self::model::StrategyKind;

pub use client::{bootstrap_endpoint, ControlPlane};
pub use file::RulesFile;
pub use store::{AppView, Defaults, RuleStore, Source, MAX_APPS};
pub use wire::{pack, KINDS};

/// Parses a rules file's text as the file source does, for tools and tests: the rules it
/// holds, or the parse error with line and column.
pub fn parse_rules(text: &str) -> Result<model::SourceRules, String> {
    yaml::parse(text, "text")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenSergoConf {
    app: Option<String>,
    namespace: Option<String>,
    #[serde(default = "default_resource")]
    resource: String,
    fallback: Option<FallbackConf>,
    #[serde(default = "default_tag_header")]
    tag_header: String,
    #[serde(default = "default_lease_timeout")]
    lease_timeout: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FallbackConf {
    #[serde(default = "default_status")]
    status: u16,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: String,
}

fn default_resource() -> String {
    "$request_method:$uri".into()
}
fn default_tag_header() -> String {
    "x-opensergo-tag".into()
}
fn default_lease_timeout() -> f64 {
    30.0
}
fn default_status() -> u16 {
    429
}

/// How the resource string is made from the request.
enum Template {
    /// Parts answered from the request itself: rendered without an allocation.
    Local(Vec<LocalPart>),
    /// At least one variable the gateway must answer (or a default).
    Remote(template::Template),
}

enum LocalPart {
    Literal(Box<str>),
    Method,
    Uri,
    Header(Box<str>),
    Arg(Box<str>),
}

impl Template {
    fn parse(s: &str) -> Result<Template, ConfError> {
        if s.is_empty() {
            return Err(ConfError::new("`resource` must not be empty"));
        }
        let parsed = template::Template::parse(s);
        let local: Option<Vec<LocalPart>> = parsed
            .parts()
            .iter()
            .map(|p| match p {
                Part::Lit(l) => Some(LocalPart::Literal(l.clone())),
                Part::Var { default: Some(_), .. } | Part::Capture(_) => None,
                Part::Var { name: v, default: None } => match &**v {
                    "request_method" => Some(LocalPart::Method),
                    "uri" => Some(LocalPart::Uri),
                    v => {
                        if let Some(h) = v.strip_prefix("http_") {
                            Some(LocalPart::Header(h.replace('_', "-").into()))
                        } else {
                            v.strip_prefix("arg_").map(|a| LocalPart::Arg(a.into()))
                        }
                    }
                },
            })
            .collect();
        Ok(match local {
            Some(l) => Template::Local(l),
            None => Template::Remote(parsed),
        })
    }
}

thread_local! {
    /// Where a local template is rendered: one buffer per thread, reused by every request.
    static RESOURCE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Shared by a route's request and response chains (same conf).
struct RouteState {
    leases: Leases<Held>,
    seen_response: AtomicBool,
    warned: AtomicBool,
}

pub struct OpenSergo {
    view: Arc<AppView>,
    resource: Template,
    fallback: Option<Stop>,
    /// The answer per strategy kind when no fallback is configured.
    defaults: [Stop; 4],
    tag_header: Text,
    fallback_header: Text,
    corr: Correlation,
    route: Arc<RouteState>,
    clock: Clock,
}

impl Plugin for OpenSergo {
    const NAME: &'static str = "opensergo";
    type Conf = OpenSergoConf;

    fn prepare(conf: OpenSergoConf, env: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        let Some(store) = env.service::<RuleStore>() else {
            return Err(ConfError::new(
                "this runner has no OpenSergo rule source: start it with --opensergo-rules PATH \
                 (EXT_PLUGIN_RUNNER_OPENSERGO_RULES) or OPENSERGO_BOOTSTRAP_CONFIG / \
                 OPENSERGO_BOOTSTRAP (APISIX passes environment variables only when \
                 nginx_config.envs lists them)",
            ));
        };
        let d = store.defaults();
        let namespace = conf
            .namespace
            .or_else(|| d.namespace.clone())
            .unwrap_or_else(|| "default".into());
        let app = conf.app.or_else(|| d.app.clone()).ok_or_else(|| {
            ConfError::new("`app` is required (or start the runner with --opensergo-app)")
        })?;
        if namespace.is_empty() || app.is_empty() {
            return Err(ConfError::new("`app` and `namespace` must not be empty"));
        }
        if !crate::support::reject::is_token(&conf.tag_header) {
            return Err(ConfError::new(format!(
                "`tag_header` {:?} is not a header name",
                conf.tag_header
            )));
        }
        if !(conf.lease_timeout >= 1.0 && conf.lease_timeout <= 3600.0) {
            return Err(ConfError::new("`lease_timeout` must be 1 to 3600 seconds"));
        }
        let fallback = match conf.fallback {
            Some(f) => {
                let headers: Vec<_> = f
                    .headers
                    .into_iter()
                    .map(|(key, value)| crate::support::reject::HeaderConf { key, value })
                    .collect();
                crate::support::reject::check_status("fallback.status", f.status)?;
                Some(crate::support::reject::with_headers(
                    Stop::new(f.status).with_body(f.body),
                    &headers,
                )?)
            }
            None => None,
        };
        let view = store.view(&namespace, &app).map_err(ConfError::new)?;
        let lease = secs_to_nanos(conf.lease_timeout);
        let route = env.state(|| RouteState {
            leases: Leases::new(lease, MAX_LEASES),
            seen_response: AtomicBool::new(false),
            warned: AtomicBool::new(false),
        });
        if env.attachment() == Attachment::PostResp {
            route.seen_response.store(true, Ordering::Relaxed);
        }
        let tag_header = conf.tag_header.to_ascii_lowercase();
        Ok(OpenSergo {
            view,
            resource: Template::parse(&conf.resource)?,
            fallback,
            defaults: StrategyKind::ALL.map(|k| {
                Stop::json_message(429, "error_msg", &format!("blocked by OpenSergo {}", k.name()))
            }),
            fallback_header: Text::from(format!("{tag_header}-fallback")),
            tag_header: Text::from(tag_header),
            corr: Correlation::new(None),
            route,
            clock: env.clock().clone(),
        })
    }

    async fn request_filter(&self, call: &mut RequestCall<'_>) -> Result<Flow, PluginError> {
        let compiled = self.view.load_full();
        if let Some(tagging) = &compiled.tagging {
            tagging.apply(call, &self.tag_header, &self.fallback_header).await?;
        }
        if compiled.resources.is_empty() {
            return Ok(Flow::Continue);
        }
        let guard = match &self.resource {
            Template::Local(parts) => RESOURCE.with_borrow_mut(|buf| {
                buf.clear();
                for p in parts {
                    match p {
                        LocalPart::Literal(l) => buf.push_str(l),
                        LocalPart::Method => buf.push_str(call.method().as_str()),
                        LocalPart::Uri => buf.push_str(call.path()),
                        LocalPart::Header(h) => buf.push_str(call.header(h).unwrap_or("")),
                        LocalPart::Arg(a) => buf.push_str(call.arg(a).unwrap_or("")),
                    }
                }
                compiled.resources.get(buf.as_str()).cloned()
            }),
            Template::Remote(parsed) => {
                let resource = parsed.render(call).await?.text;
                compiled.resources.get(resource.as_str()).cloned()
            }
        };
        drop(compiled);
        let Some(guard) = guard else {
            return Ok(Flow::Continue);
        };
        let now = self.clock.nanos();
        self.expire(now);
        match guard.enter(now) {
            Verdict::Reject(step) => {
                tracing::debug!(step = %step.label, "opensergo: rejected");
                let stop = step
                    .reject
                    .as_ref()
                    .or(self.fallback.as_ref())
                    .unwrap_or(&self.defaults[step.kind as usize]);
                Ok(Flow::Stop(stop.clone()))
            }
            Verdict::Pass { held, delay } => {
                if let Some(held) = held {
                    let id = self.corr.id_for_call(call);
                    if let Err(Full(held)) = self.route.leases.insert(&id, now, held) {
                        // Untracked, it could never be released: treat it as lost now.
                        tracing::debug!("opensergo: lease table full");
                        held.lost(now);
                    }
                }
                if delay >= NANOS_PER_MS {
                    tokio::time::sleep(Duration::from_nanos(delay)).await;
                }
                Ok(Flow::Continue)
            }
        }
    }

    async fn response_filter(&self, call: &mut ResponseCall<'_>) -> Result<(), PluginError> {
        if !self.route.seen_response.load(Ordering::Relaxed) {
            self.route.seen_response.store(true, Ordering::Relaxed);
        }
        if self.route.leases.is_empty() {
            return Ok(());
        }
        let Some(id) = call.var(&self.corr.var).await? else {
            return Ok(());
        };
        if let Some(held) = self.route.leases.take(&id) {
            held.answered(call.original_status(), self.clock.nanos());
        }
        Ok(())
    }
}

impl OpenSergo {
    /// Frees what requests whose answer never came still hold; warns once when no answer ever
    /// reached this route's response phase.
    fn expire(&self, now: u64) {
        let mut lost = 0usize;
        self.route.leases.sweep(now, |held| {
            lost += 1;
            held.lost(now)
        });
        if lost > 0
            && !self.route.seen_response.load(Ordering::Relaxed)
            && !self.route.warned.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                "opensergo: concurrency slots and circuit-breaker outcomes are released only by an \
                 `ext-plugin-post-resp` entry with the same conf; without it they expire after \
                 `lease_timeout`"
            );
        }
    }
}

/// What a rules file applies: for each app it binds, every resource and its strategies, then
/// the objects skipped or read leniently. `Err` when the file cannot be read or parsed.
pub fn check_file(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let rules = yaml::parse(&text, "file")?;
    let apps: Vec<_> = rules.apps.keys().cloned().collect();
    let store = RuleStore::new(Defaults::default());
    store.set(Source::File, rules);
    for (ns, app) in &apps {
        store.view(ns, app)?;
    }
    Ok(store.describe())
}

/// Where the runner's OpenSergo rules come from (its flags and environment).
#[derive(Clone, Debug, Default)]
pub struct Sources {
    /// `--opensergo-rules` / `EXT_PLUGIN_RUNNER_OPENSERGO_RULES`.
    pub rules_file: Option<PathBuf>,
    /// `OPENSERGO_BOOTSTRAP_CONFIG`: `{"endpoint": "host:port"}`.
    pub bootstrap_config: Option<String>,
    /// `OPENSERGO_BOOTSTRAP`: the path of such a JSON file.
    pub bootstrap_file: Option<PathBuf>,
    pub defaults: Defaults,
}

impl Sources {
    /// Whether any source is configured (a runner with none opens no file and no connection).
    pub fn any(&self) -> bool {
        self.rules_file.is_some() || self.bootstrap_config.is_some() || self.bootstrap_file.is_some()
    }
}

/// Starts the configured sources on the current tokio runtime and returns the store to
/// [`provide`](ext_plugin_sdk::Registry::provide); `None` when no source is configured. The
/// rules file is read once before this returns; a bad bootstrap is logged and the control plane
/// left out (the runner serves file rules, or none).
pub fn start(sources: &Sources) -> Option<Arc<RuleStore>> {
    if !sources.any() {
        return None;
    }
    let store = RuleStore::new(sources.defaults.clone());
    if let Some(path) = &sources.rules_file {
        RulesFile::new(store.clone(), path.clone()).spawn();
    }
    match bootstrap_endpoint(sources.bootstrap_config.as_deref(), sources.bootstrap_file.as_deref()) {
        Ok(Some(endpoint)) => {
            tracing::info!(%endpoint, "opensergo: following the control plane");
            ControlPlane::new(store.clone(), endpoint).spawn();
        }
        Ok(None) => {}
        Err(e) => tracing::error!("opensergo: control plane not used: {e}"),
    }
    Some(store)
}

#[cfg(test)]
mod tests;
