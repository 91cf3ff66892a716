//! A fake OpenSergo control plane: a tonic server built from the runner's own protos, behaving
//! as the real one does on the wire (docs/opensergo.md, "What the control plane does"):
//!
//! * an invalid subscribe (no namespace, app or kinds) is answered `NACK` 4002;
//! * a subscribe registers the stream under `(namespace, app, kind)`; an unknown kind is
//!   answered code 500 without data; a known kind with rules is pushed at once (code 1,
//!   `response_id` = the request's id); an empty one is not pushed at all;
//! * [`Fake::set`] pushes the whole new list (code 200, `response_id ""`, version + 1) to every
//!   stream subscribed to it; an empty list is pushed as `data: []`;
//! * streams are keyed by their first non-empty identifier; ACKs and NACKs are recorded;
//! * [`Fake::restart`] comes back on the same port with versions from 1 again.
//!
//! Listens on 127.0.0.1 only.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ext_plugin_catalogue::opensergo::proto::transport::open_sergo_universal_transport_service_server::{
    OpenSergoUniversalTransportService, OpenSergoUniversalTransportServiceServer,
};
use ext_plugin_catalogue::opensergo::proto::transport::{
    ControlPlaneDesc, DataWithVersion, Status, SubscribeRequest, SubscribeResponse,
};
use ext_plugin_catalogue::opensergo::proto::fault_tolerance as ft;
use ext_plugin_catalogue::opensergo::{pack, KINDS};
use futures_util::Stream;
use prost_types::Any;
use tokio::sync::mpsc;
use tonic::{Request, Response, Streaming};

type Key = (String, String, String);
type Out = mpsc::UnboundedSender<Result<SubscribeResponse, tonic::Status>>;

#[derive(Default)]
struct State {
    rules: HashMap<Key, Vec<Any>>,
    versions: HashMap<Key, i64>,
    /// Streams by identifier, with what each subscribed.
    streams: HashMap<String, (Out, HashSet<Key>)>,
    /// Every message a client sent, in order.
    received: Vec<SubscribeRequest>,
    /// Every identifier a stream was opened with.
    identifiers: Vec<String>,
}

#[derive(Clone)]
struct Service {
    state: Arc<Mutex<State>>,
    /// Set to end every response stream (a stopped control plane).
    kill: tokio::sync::watch::Receiver<bool>,
}

fn status(code: i32, message: &str) -> Option<Status> {
    Some(Status {
        code,
        message: message.into(),
        details: vec![],
    })
}

impl State {
    fn push(&mut self, key: &Key, code: i32, response_id: &str) -> Option<SubscribeResponse> {
        let data = self.rules.get(key)?.clone();
        let version = *self.versions.get(key).unwrap_or(&0);
        Some(SubscribeResponse {
            status: status(code, "Get and send rule success"),
            ack: String::new(),
            namespace: key.0.clone(),
            app: key.1.clone(),
            kind: key.2.clone(),
            data_with_version: Some(DataWithVersion { data, version }),
            control_plane: Some(ControlPlaneDesc {
                identifier: "osg-fake".into(),
            }),
            response_id: response_id.into(),
        })
    }

    fn handle(&mut self, msg: SubscribeRequest, stream_key: &mut Option<String>, out: &Out) {
        self.received.push(msg.clone());
        if msg.response_ack == "ACK" || msg.response_ack == "NACK" {
            return;
        }
        let target = msg.target.clone().unwrap_or_default();
        if target.namespace.is_empty() || target.app.is_empty() || target.kinds.is_empty() {
            let _ = out.send(Ok(SubscribeResponse {
                status: status(4002, "Request is invalid"),
                ack: "NACK".into(),
                response_id: msg.request_id.clone(),
                ..Default::default()
            }));
            return;
        }
        if stream_key.is_none() {
            *stream_key = Some(msg.identifier.clone());
            self.identifiers.push(msg.identifier.clone());
            // As the real one: a second stream with the same identifier is not stored.
            self.streams
                .entry(msg.identifier.clone())
                .or_insert_with(|| (out.clone(), HashSet::new()));
        }
        let id = stream_key.clone().unwrap_or_default();
        for kind in &target.kinds {
            let key = (target.namespace.clone(), target.app.clone(), kind.clone());
            if !KINDS.contains(&kind.as_str()) {
                let _ = out.send(Ok(SubscribeResponse {
                    status: status(500, "Register watcher error"),
                    namespace: key.0,
                    app: key.1,
                    kind: key.2,
                    response_id: msg.request_id.clone(),
                    ..Default::default()
                }));
                continue;
            }
            if let Some((_, subs)) = self.streams.get_mut(&id) {
                subs.insert(key.clone());
            }
            if self.rules.get(&key).is_some_and(|r| !r.is_empty()) {
                if let Some(resp) = self.push(&key, 1, &msg.request_id) {
                    let _ = out.send(Ok(resp));
                }
            }
        }
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<SubscribeResponse, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl OpenSergoUniversalTransportService for Service {
    type SubscribeConfigStream = ResponseStream;

    async fn subscribe_config(
        &self,
        request: Request<Streaming<SubscribeRequest>>,
    ) -> Result<Response<ResponseStream>, tonic::Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::unbounded_channel();
        let state = self.state.clone();
        tokio::spawn(async move {
            let mut key = None;
            while let Ok(Some(msg)) = inbound.message().await {
                state.lock().unwrap().handle(msg, &mut key, &tx);
            }
            if let Some(k) = key {
                state.lock().unwrap().streams.remove(&k);
            }
        });
        let out = futures_util::stream::unfold(
            (rx, self.kill.clone()),
            |(mut rx, mut kill)| async move {
                let next = tokio::select! {
                    m = rx.recv() => m,
                    _ = kill.wait_for(|k| *k) => None,
                };
                next.map(|m| (m, (rx, kill)))
            },
        );
        Ok(Response::new(Box::pin(out)))
    }
}

pub struct Fake {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    server: tokio::task::JoinHandle<()>,
    kill: tokio::sync::watch::Sender<bool>,
}

impl Fake {
    pub async fn start() -> Fake {
        Fake::start_on("127.0.0.1:0".parse().unwrap(), State::default())
            .await
            .expect("binding the fake control plane")
    }

    async fn start_on(addr: SocketAddr, state: State) -> std::io::Result<Fake> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(state));
        let (kill, killed) = tokio::sync::watch::channel(false);
        let service = OpenSergoUniversalTransportServiceServer::new(Service {
            state: state.clone(),
            kill: killed,
        });
        let incoming = futures_util::stream::unfold(listener, |l| async move {
            let r = l.accept().await.map(|(s, _)| s);
            Some((r, l))
        });
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        Ok(Fake {
            addr,
            state,
            server,
            kill,
        })
    }

    /// `{"endpoint": "127.0.0.1:PORT"}`.
    pub fn bootstrap(&self) -> String {
        format!(r#"{{"endpoint": "{}"}}"#, self.addr)
    }

    /// Replaces the list of `kind` for the app and pushes it to every subscribed stream.
    pub fn set(&self, ns: &str, app: &str, kind: &str, data: Vec<Any>) {
        let mut s = self.state.lock().unwrap();
        let key = (ns.to_owned(), app.to_owned(), kind.to_owned());
        s.rules.insert(key.clone(), data);
        *s.versions.entry(key.clone()).or_insert(0) += 1;
        let resp = s.push(&key, 200, "").unwrap();
        for (out, subs) in s.streams.values() {
            if subs.contains(&key) {
                let _ = out.send(Ok(resp.clone()));
            }
        }
    }

    /// Sends `resp` to every stream as it is (error pushes, undecodable data).
    pub fn send(&self, resp: SubscribeResponse) {
        for (out, _) in self.state.lock().unwrap().streams.values() {
            let _ = out.send(Ok(resp.clone()));
        }
    }

    pub fn received(&self) -> Vec<SubscribeRequest> {
        self.state.lock().unwrap().received.clone()
    }

    pub fn identifiers(&self) -> Vec<String> {
        self.state.lock().unwrap().identifiers.clone()
    }

    /// Waits (up to 20 s) until what clients sent satisfies `ok`; returns it.
    pub async fn wait_for(
        &self,
        what: &str,
        ok: impl Fn(&[SubscribeRequest]) -> bool,
    ) -> Vec<SubscribeRequest> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = self.received();
            if ok(&got) {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; received {got:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `n` ACKs (code 1) were received in all.
    pub async fn wait_acks(&self, n: usize) {
        self.wait_for(&format!("{n} ACKs"), |r| acks(r) >= n).await;
    }

    /// Ends every stream (the client sees the stream close) and stops listening.
    fn stop(self) -> (SocketAddr, Arc<Mutex<State>>) {
        self.server.abort();
        let _ = self.kill.send(true);
        self.state.lock().unwrap().streams.clear();
        (self.addr, self.state)
    }

    /// Stops, then serves again on the same port with the same rules but versions from 1 and
    /// no memory of clients, as a restarted control plane.
    pub async fn restart(self) -> Fake {
        let (addr, state) = self.stop();
        let rules = state.lock().unwrap().rules.clone();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let fresh = State {
                versions: rules.keys().map(|k| (k.clone(), 1)).collect(),
                rules: rules.clone(),
                ..State::default()
            };
            match Fake::start_on(addr, fresh).await {
                Ok(f) => return f,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot listen on {addr} again: {e}"),
            }
        }
    }
}

/// ACKs with code 1.
pub fn acks(r: &[SubscribeRequest]) -> usize {
    r.iter()
        .filter(|m| m.response_ack == "ACK" && m.status.as_ref().is_some_and(|s| s.code == 1))
        .count()
}

pub const RULE: &str = "fault-tolerance.opensergo.io/v1alpha1/FaultToleranceRule";
pub const RATE: &str = "fault-tolerance.opensergo.io/v1alpha1/RateLimitStrategy";

/// A FaultToleranceRule applying strategy `name` of `kind` to resource `target`.
pub fn rule(target: &str, name: &str, kind: &str) -> Any {
    use ft::fault_tolerance_rule::{FaultToleranceRuleTargetRef, FaultToleranceStrategyRef};
    pack(
        RULE,
        &ft::FaultToleranceRule {
            targets: vec![FaultToleranceRuleTargetRef {
                target_resource_name: target.into(),
            }],
            strategies: vec![FaultToleranceStrategyRef {
                name: name.into(),
                kind: kind.into(),
            }],
            action: None,
        },
    )
}

/// A rate limit named `rate`, per minute, as the real control plane sends it: UNKNOWN mode,
/// metric and unit.
pub fn rate(threshold: i64) -> Any {
    pack(
        RATE,
        &ft::RateLimitStrategy {
            name: "rate".into(),
            threshold,
            stat_duration: 60,
            ..Default::default()
        },
    )
}
