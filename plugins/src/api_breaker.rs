//! `api-breaker` (docs/plugins/traffic.md): a circuit breaker in front of the upstream.
//!
//! * Request phase (admit): closed, the request passes untouched; open (or half-open with its
//!   probe budget used) it gets `Stop{break_response_code, break_response_headers,
//!   break_response_body}` plus *(ext)* `Retry-After` = the remaining open time in whole seconds
//!   (at least 1). Unlike APISIX the headers go out even without a body.
//! * Response phase (record): needs the same conf under `ext-plugin-post-resp`. The outcome is
//!   judged from `HTTPRespCall.status` (`unhealthy.http_statuses` are errors) and, for
//!   `slow_ratio` only, `Var request_time` (slow above `max_allowed_rt_ms`). The breaker is found
//!   by the request's lease when it holds one, else by scope: `route` needs nothing more,
//!   `host_uri` (APISIX's keying) costs `Var host` and `Var uri`.
//! * Leases ([`lease`](crate::support::lease), shared with limit-conn): a probe holds
//!   one from its request to its answer, so the answer can decide the breaker; with
//!   `count_missing_response_as_error` every admitted request holds one. A lease whose answer
//!   never comes within `lease_timeout` (the gateway answered 502 itself, a later plugin
//!   rejected, no post-resp) counts as a failure: a stuck probe re-opens the breaker.
//! * `breaker` is the state machine of each policy.
//! * *(ext)* `dry_run`: an open breaker lets requests through with
//!   `x-dry-run-reject: api-breaker`; their answers are recorded as any other.
//!
//! Without the post-resp half the breaker never learns anything (except, with
//! `count_missing_response_as_error`, that answers are missing): a warning is logged once per
//! route and conf when requests keep coming `lease_timeout` after the first prepare and no answer
//! was ever recorded. It is not logged at prepare: the gateway prepares the post-resp half only
//! when the first request reaches it, after the request half, so a prepare-time warning would
//! fire for every correctly configured route.

pub(crate) mod breaker;
mod conf;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ext_plugin_sdk::*;
use crate::support::clock::{self, secs_until, Nanos};
use crate::support::keyed::KeyedStore;
use crate::support::lease::{Correlation, Full, Leases, MAX_LEASES};
use crate::support::reject;
use crate::support::template::{self, Template};

use breaker::{Admit, Breaker, BreakerMetrics, Outcome, Policy, Settings, Ticket};
pub use conf::ApiBreakerConf;
use conf::{Prepared, Scope};

pub struct ApiBreaker {
    settings: Settings,
    /// `unhealthy.http_statuses`, `healthy.http_statuses`.
    unhealthy: Box<[u16]>,
    healthy: Box<[u16]>,
    /// `slow_ratio`: answers slower than this (nanoseconds) are bad.
    max_rt: u64,
    scope: Scope,
    count_missing: bool,
    dry_run: bool,
    lease_timeout: u64,
    corr: Correlation,
    /// The request and response chains of the route see the same breakers.
    state: Arc<BreakerState>,
    reject: Stop,
    reject_vars: Vec<(Text, Template)>,
    clock: Clock,
}

/// Shared by the request (admit) and response (record) chains of a route.
pub struct BreakerState {
    /// `scope: route`: the route's one breaker, reached without a lookup.
    route: Arc<Breaker>,
    /// `scope: host_uri`: a breaker per host and uri.
    breakers: KeyedStore<Breaker>,
    leases: Leases<Held>,
    /// For the missing-post-resp warning: which route, since when.
    route_name: Box<str>,
    prepared_at: u64,
    /// Set by the first answer recorded, or at the prepare of the post-resp half.
    seen_response: AtomicBool,
    /// The missing-post-resp check is done (warned, or an answer was seen).
    checked: AtomicBool,
}

/// What a request holds until its answer.
struct Held {
    breaker: Arc<Breaker>,
    ticket: Option<Ticket>,
}

impl Plugin for ApiBreaker {
    const NAME: &'static str = "api-breaker";
    type Conf = ApiBreakerConf;

    fn prepare(conf: ApiBreakerConf, env: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        let clock = env.clock().clone();
        let p: Prepared = conf.validate()?;
        let now = clock.nanos();
        let idle = p.idle;
        let max_keys = p.max_keys;
        let lease_timeout = p.lease_timeout;
        let settings = Settings {
            metrics: BreakerMetrics::new(env.metrics(), env.route()),
            ..p.settings
        };
        let route_name = env.route().into();
        let state = env.state(|| BreakerState {
            route: Arc::new(Breaker::new(&settings)),
            breakers: KeyedStore::new(max_keys, idle),
            leases: Leases::new(lease_timeout, MAX_LEASES),
            route_name,
            prepared_at: now,
            seen_response: AtomicBool::new(false),
            checked: AtomicBool::new(false),
        });
        if env.attachment() == Attachment::PostResp {
            state.seen_response.store(true, Ordering::Relaxed);
        }
        Ok(ApiBreaker {
            settings,
            unhealthy: p.unhealthy,
            healthy: p.healthy,
            max_rt: p.max_rt,
            scope: p.scope,
            count_missing: p.count_missing,
            dry_run: p.dry_run,
            lease_timeout,
            corr: Correlation::new(None),
            state,
            reject: p.reject,
            reject_vars: p.reject_vars,
            clock,
        })
    }

    async fn request_filter(&self, call: &mut RequestCall<'_>) -> Result<Flow, PluginError> {
        let now = self.clock.nanos();
        self.expire(now);
        self.check_post_resp(now);
        let breaker = match self.scope {
            Scope::Route => self.state.route.clone(),
            Scope::HostUri => {
                let host = call.var("host").await?;
                let uri = call.var("uri").await?;
                self.breaker(&host_uri(host.as_deref(), uri.as_deref()), now)
            }
        };
        let ticket = match breaker.admit(&self.settings, now) {
            Admit::Reject { .. } if self.dry_run => {
                reject::dry_run_reject(call, Self::NAME);
                return Ok(Flow::Continue);
            }
            Admit::Reject { until } => {
                let mut stop = self.rejection(now, until);
                for (name, value) in &self.reject_vars {
                    let value = template::header_safe(value.render(call).await?.text);
                    stop = stop.with_header(name.clone(), value);
                }
                return Ok(Flow::Stop(stop));
            }
            Admit::Pass if !self.count_missing => return Ok(Flow::Continue),
            Admit::Pass => None,
            Admit::Probe(ticket) => Some(ticket),
        };
        let id = self.corr.id_for_call(call);
        if let Err(Full(held)) = self.state.leases.insert(&id, now, Held { breaker, ticket }) {
            // Untracked, its answer could never count: count it now as a lost one would.
            tracing::debug!("api-breaker: lease table full");
            held.breaker
                .record(&self.settings, now, Outcome::Failure, held.ticket);
        }
        Ok(Flow::Continue)
    }

    async fn response_filter(&self, call: &mut ResponseCall<'_>) -> Result<(), PluginError> {
        let now = self.clock.nanos();
        if !self.state.seen_response.load(Ordering::Relaxed) {
            self.state.seen_response.store(true, Ordering::Relaxed);
        }
        self.expire(now);
        let outcome = self.outcome(call).await?;
        // Only a request that holds a lease carries an id worth a round trip.
        let held = if self.state.leases.is_empty() {
            None
        } else {
            match call.var(&self.corr.var).await? {
                Some(id) => self.state.leases.take(&id),
                None => None,
            }
        };
        let (breaker, ticket) = match held {
            Some(h) => (h.breaker, h.ticket),
            None => match self.scope {
                Scope::Route => (self.state.route.clone(), None),
                Scope::HostUri => {
                    let host = call.var("host").await?;
                    let uri = call.var("uri").await?;
                    let key = host_uri(host.as_deref(), uri.as_deref());
                    (self.breaker(&key, now), None)
                }
            },
        };
        breaker.record(&self.settings, now, outcome, ticket);
        Ok(())
    }
}

impl ApiBreaker {
    fn breaker(&self, key: &str, now: u64) -> Arc<Breaker> {
        self.state
            .breakers
            .get_or_insert(key, now, || Breaker::new(&self.settings))
    }

    /// Answers that never came count as failures (a lost probe re-opens its breaker).
    fn expire(&self, now: u64) {
        self.state.leases.sweep(now, |held| {
            held.breaker
                .record(&self.settings, now, Outcome::Failure, held.ticket)
        });
    }

    /// Warns once when requests keep coming and no answer ever reached the response phase.
    fn check_post_resp(&self, now: u64) {
        let state = &self.state;
        if state.checked.load(Ordering::Relaxed)
            || now < state.prepared_at.saturating_add(self.lease_timeout)
        {
            return;
        }
        if !state.checked.swap(true, Ordering::Relaxed)
            && !state.seen_response.load(Ordering::Relaxed)
        {
            tracing::warn!(
                route = &*state.route_name,
                "api-breaker: no answer reached the breaker since it was prepared; it learns \
                 only through an `ext-plugin-post-resp` entry with the same conf on the route"
            );
        }
    }

    /// The policy's judgement of the upstream's answer.
    async fn outcome(&self, call: &mut ResponseCall<'_>) -> Result<Outcome, PluginError> {
        let status = call.original_status();
        let bad_status = self.unhealthy.contains(&status);
        Ok(match self.settings.policy {
            Policy::Consecutive if bad_status => Outcome::Failure,
            Policy::Consecutive if self.healthy.contains(&status) => Outcome::Success,
            Policy::Consecutive => Outcome::Neutral,
            Policy::ErrorRatio | Policy::ErrorCount if bad_status => Outcome::Failure,
            Policy::ErrorRatio | Policy::ErrorCount => Outcome::Success,
            // An answer without a usable time is not slow: a probe must still decide.
            Policy::SlowRatio => match request_time(call).await? {
                Some(rt) if rt > self.max_rt => Outcome::Failure,
                Some(_) => Outcome::Success,
                None => {
                    tracing::debug!("api-breaker: no usable request_time; counted as not slow");
                    Outcome::Success
                }
            },
        })
    }

    fn rejection(&self, now: u64, until: u64) -> Stop {
        let secs = secs_until(now, until).max(1);
        self.reject.clone().with_header("Retry-After", secs.to_string())
    }
}

/// `Var request_time` (seconds, fractional) in nanoseconds.
async fn request_time(call: &mut ResponseCall<'_>) -> Result<Option<u64>, PluginError> {
    Ok(call
        .var("request_time")
        .await?
        .and_then(|t| t.trim().parse::<f64>().ok())
        .filter(|t| t.is_finite() && *t >= 0.0)
        .map(clock::secs_to_nanos))
}

/// APISIX's breaker key: host and uri, concatenated.
fn host_uri(host: Option<&str>, uri: Option<&str>) -> String {
    let (host, uri) = (host.unwrap_or(""), uri.unwrap_or(""));
    let mut key = String::with_capacity(host.len() + uri.len());
    key.push_str(host);
    key.push_str(uri);
    key
}

#[cfg(test)]
mod tests;
