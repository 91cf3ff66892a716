//! The control-plane source: one long-lived `SubscribeConfig` stream.
//!
//! * The six kinds are subscribed for every `(namespace, app)` a prepared conf names, on the same
//!   stream as they appear (one request per app, all kinds in it).
//! * Each stream has its own identifier `<hostname>-<pid>-<n>` (the control plane keys streams by
//!   it) and its own version table: a push older than the last one of its `(app, kind)` on this
//!   stream is answered `ACK` 4010 and ignored; a new stream starts from nothing, so a restarted
//!   control plane (versions from 1 again) is believed.
//! * Every push is answered: `ACK` code 1 when applied; `NACK` 4007 with the reason when its
//!   data does not decode (the kind's previous list stays). A response with code 500 (or any
//!   code but 1 and 200) or without data is an error, never "no rules": nothing is cleared.
//! * Keep-alive stays within what the control plane's gRPC server tolerates (pings at most every
//!   5 minutes, none while idle; TCP keepalive every 60 s).
//! * A broken stream is reopened after an exponential backoff from 1 s to 30 s with jitter; the
//!   last rules keep applying meanwhile (fail-static).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tonic::transport::Endpoint;

use super::metrics::Push;
use super::model::AppKey;
use super::proto::transport::open_sergo_universal_transport_service_client::OpenSergoUniversalTransportServiceClient;
use super::proto::transport::{Status, SubscribeRequest, SubscribeRequestTarget, SubscribeResponse};
use super::store::{RuleStore, Source};
use super::wire::{self, Pushed, KINDS};

/// Status codes of the transport.
pub const CODE_SUCCESS: i32 = 1;
pub const CODE_PUSH: i32 = 200;
pub const CODE_HANDLER_ERROR: i32 = 4007;
pub const CODE_VERSION_OUTDATED: i32 = 4010;

const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A stream that lived this long was healthy: the next failure starts the backoff over.
const HEALTHY: Duration = Duration::from_secs(30);

/// Reads the bootstrap: `OPENSERGO_BOOTSTRAP_CONFIG` (JSON `{"endpoint": "host:port"}`) first,
/// else the JSON file at `OPENSERGO_BOOTSTRAP`. `Ok(None)` when neither is set.
pub fn bootstrap_endpoint(
    config: Option<&str>,
    file: Option<&std::path::Path>,
) -> Result<Option<String>, String> {
    #[derive(serde::Deserialize)]
    struct Bootstrap {
        endpoint: String,
    }
    let (json, from) = match (config.filter(|c| !c.trim().is_empty()), file) {
        (Some(c), _) => (c.to_owned(), "OPENSERGO_BOOTSTRAP_CONFIG".to_owned()),
        (None, Some(path)) => (
            std::fs::read_to_string(path)
                .map_err(|e| format!("OPENSERGO_BOOTSTRAP {}: {e}", path.display()))?,
            format!("OPENSERGO_BOOTSTRAP {}", path.display()),
        ),
        (None, None) => return Ok(None),
    };
    let b: Bootstrap = serde_json::from_str(&json)
        .map_err(|e| format!("{from}: not {{\"endpoint\": \"host:port\"}}: {e}"))?;
    let endpoint = b.endpoint.trim();
    let valid = endpoint
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        && !endpoint.contains("://");
    if !valid {
        return Err(format!("{from}: endpoint {endpoint:?} is not host:port"));
    }
    Ok(Some(endpoint.to_owned()))
}

/// The control-plane client of one store.
pub struct ControlPlane {
    store: Arc<RuleStore>,
    endpoint: String,
    /// The last accepted list per `(app, kind)`: kept across streams (fail-static).
    pushed: BTreeMap<(AppKey, &'static str), Pushed>,
    streams: u64,
}

/// Why a stream ended.
type StreamEnd = Result<(), String>;

impl ControlPlane {
    pub fn new(store: Arc<RuleStore>, endpoint: String) -> ControlPlane {
        store.stream().configured();
        ControlPlane {
            store,
            endpoint,
            pushed: BTreeMap::new(),
            streams: 0,
        }
    }

    /// Runs the client on the current runtime until the process ends.
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.run())
    }

    async fn run(mut self) {
        let mut failures = 0u32;
        loop {
            let started = tokio::time::Instant::now();
            let end = self.stream().await;
            self.store.stream().set_open(false);
            if started.elapsed() >= HEALTHY {
                failures = 0;
            }
            let wait = backoff(failures);
            failures = failures.saturating_add(1);
            match end {
                Ok(()) => tracing::warn!(endpoint = %self.endpoint, "opensergo: the control plane closed the stream; reconnecting in {wait:?}, the last rules keep applying"),
                Err(e) => tracing::warn!(endpoint = %self.endpoint, "opensergo: control plane stream failed: {e}; reconnecting in {wait:?}, the last rules keep applying"),
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// One stream, from connect to its end.
    async fn stream(&mut self) -> StreamEnd {
        self.streams += 1;
        let identifier = format!("{}-{}-{}", hostname(), std::process::id(), self.streams);
        let channel = Endpoint::from_shared(format!("http://{}", self.endpoint))
            .map_err(|e| format!("bad endpoint: {e}"))?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(300))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(false)
            .tcp_keepalive(Some(Duration::from_secs(60)))
            .connect()
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (tx, rx) = mpsc::channel::<SubscribeRequest>(64);
        let outbound = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|m| (m, rx))
        });
        let mut apps = self.store.apps();
        let mut subscribed = BTreeSet::new();
        let mut requests = 0u64;
        let mut send_new = |apps: &BTreeSet<AppKey>, tx: &mpsc::Sender<SubscribeRequest>| {
            for app in apps.difference(&subscribed.clone()) {
                requests += 1;
                let req = SubscribeRequest {
                    target: Some(SubscribeRequestTarget {
                        namespace: app.0.clone(),
                        app: app.1.clone(),
                        labels: Vec::new(),
                        kinds: KINDS.iter().map(|k| (*k).to_owned()).collect(),
                    }),
                    identifier: identifier.clone(),
                    request_id: format!("sub-{requests}"),
                    ..SubscribeRequest::default()
                };
                // The channel holds 64; a fuller one means the stream is stuck: it will fail.
                if tx.try_send(req).is_err() {
                    return false;
                }
                subscribed.insert(app.clone());
            }
            true
        };
        send_new(&apps.borrow_and_update(), &tx);
        let mut client = OpenSergoUniversalTransportServiceClient::new(channel);
        let mut inbound = client
            .subscribe_config(outbound)
            .await
            .map_err(|e| format!("subscribe: {e}"))?
            .into_inner();
        tracing::info!(endpoint = %self.endpoint, %identifier, "opensergo: control plane stream open");
        self.store.stream().set_open(true);
        let mut versions: HashMap<(AppKey, &'static str), i64> = HashMap::new();
        loop {
            tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(resp)) => {
                        if let Some(reply) = self.handle(resp, &mut versions, &identifier) {
                            tx.send(reply).await.map_err(|_| "the request stream closed".to_owned())?;
                        }
                    }
                    Ok(None) => return Ok(()),
                    Err(status) => return Err(status.to_string()),
                },
                changed = apps.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    if !send_new(&apps.borrow_and_update(), &tx) {
                        return Err("subscriptions are not being sent".into());
                    }
                }
            }
        }
    }

    /// Applies one response; returns the ACK/NACK to send, if any.
    fn handle(
        &mut self,
        resp: SubscribeResponse,
        versions: &mut HashMap<(AppKey, &'static str), i64>,
        identifier: &str,
    ) -> Option<SubscribeRequest> {
        if !resp.ack.is_empty() {
            let code = resp.status.as_ref().map_or(0, |s| s.code);
            let msg = resp.status.as_ref().map(|s| s.message.as_str()).unwrap_or("");
            tracing::debug!(ack = %resp.ack, code, msg, "opensergo: control plane reply");
            return None;
        }
        let (outcome, reply) = self.apply(resp, versions, identifier);
        self.store.stream().push(outcome);
        reply
    }

    /// Applies one push; what it came to, and the ACK/NACK to send, if any.
    fn apply(
        &mut self,
        resp: SubscribeResponse,
        versions: &mut HashMap<(AppKey, &'static str), i64>,
        identifier: &str,
    ) -> (Push, Option<SubscribeRequest>) {
        let code = resp.status.as_ref().map_or(0, |s| s.code);
        let reply = |ack: &str, code: i32, message: String| SubscribeRequest {
            response_ack: ack.to_owned(),
            status: Some(Status {
                code,
                message,
                details: Vec::new(),
            }),
            identifier: identifier.to_owned(),
            request_id: resp.response_id.clone(),
            ..SubscribeRequest::default()
        };
        let Some(kind) = KINDS.iter().copied().find(|k| *k == resp.kind) else {
            tracing::debug!(kind = %resp.kind, "opensergo: push of a kind this runner does not read; ignored");
            return (Push::Ignored, Some(reply("ACK", CODE_SUCCESS, String::new())));
        };
        let app = (resp.namespace.clone(), resp.app.clone());
        if !self.store.apps().borrow().contains(&app) {
            // Only what was subscribed is kept: the lists stay bounded by the route confs.
            tracing::debug!(namespace = %app.0, app = %app.1, "opensergo: push for an app not subscribed; ignored");
            return (Push::Ignored, Some(reply("ACK", CODE_SUCCESS, String::new())));
        }
        if code != CODE_SUCCESS && code != CODE_PUSH {
            let msg = resp.status.as_ref().map(|s| s.message.as_str()).unwrap_or("");
            tracing::warn!(namespace = %app.0, app = %app.1, kind, code, msg, "opensergo: the control plane answered an error; the last rules of this kind stay");
            return (Push::Error, None);
        }
        let Some(data) = resp.data_with_version.clone() else {
            return (Push::Nacked, Some(reply("NACK", CODE_HANDLER_ERROR, "a push without dataWithVersion".into())));
        };
        let key = (app.clone(), kind);
        if let Some(&seen) = versions.get(&key) {
            if data.version < seen {
                tracing::debug!(kind, version = data.version, seen, "opensergo: stale push ignored");
                return (Push::Outdated, Some(reply("ACK", CODE_VERSION_OUTDATED, format!("version {} is older than {seen}", data.version))));
            }
        }
        if let Err(e) = wire::check(kind, &data.data) {
            tracing::warn!(namespace = %app.0, app = %app.1, kind, version = data.version, "opensergo: push NACKed, the last rules of this kind stay: {e}");
            return (Push::Nacked, Some(reply("NACK", CODE_HANDLER_ERROR, e)));
        }
        versions.insert(key.clone(), data.version);
        self.pushed.insert(
            key,
            Pushed {
                version: data.version,
                data: data.data,
            },
        );
        self.publish();
        (Push::Applied, Some(reply("ACK", CODE_SUCCESS, String::new())))
    }

    fn publish(&self) {
        self.store.set(Source::ControlPlane, wire::build(&self.pushed));
    }
}

/// The wait before reconnect attempt `failures` (0-based): 1 s doubling to 30 s, each scaled by a
/// random 50–100 % so that many runners do not reconnect in step.
pub fn backoff(failures: u32) -> Duration {
    let base = BACKOFF_MIN.saturating_mul(1u32 << failures.min(5)).min(BACKOFF_MAX);
    base.mul_f64(0.5 + rand::random::<f64>() * 0.5)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "runner".into())
}
