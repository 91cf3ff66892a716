//! What the integration tests share: test plugins ([`plugins`]), request and reply fixtures
//! ([`fixtures`], also used by the benches), real Redis servers ([`redis_server`]),
//! connect-and-prepare set-ups, and helpers that take replies apart. Each test crate includes it
//! with `mod common;` and uses a part.

#![allow(dead_code)] // each test crate uses a part

pub mod fixtures;
pub mod plugins;
pub mod redis_server;

use std::fmt::Debug;
use std::future::Future;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ext_plugin_runner::codec::{GatewayCodec, Protocol};
use ext_plugin_runner::frame::{write_frame, FrameType};
use ext_plugin_runner::model::{
    ErrorCode, HttpReqCallReq, HttpReqCallResp, Method, Pair, PrepareConfReq, ReqAction, Rewrite,
    Stop,
};
use ext_plugin_runner::testing::{request, FakeGateway, GatewayError, TestRunner};
use ext_plugin_runner::{Config, Registry};
use serde_json::Value;

/// The key most tests prepare their chain under: a route's request phase.
pub const PRE: &str = "route#1#ext-plugin-pre-req#1";
/// The same route's response phase.
pub const POST: &str = "route#1#ext-plugin-post-resp#1";

/// Hang guard for anything the runner should answer promptly. A guard, not a measurement: it
/// only turns a hang into a failure.
pub const GUARD: Duration = Duration::from_secs(20);

pub async fn guarded<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {GUARD:?}"))
}

/// Defines a test that runs `scenario(protocol)` once per codec.
#[macro_export]
macro_rules! for_each_protocol {
    ($name:ident, $scenario:ident) => {
        #[tokio::test]
        async fn $name() {
            for p in ext_plugin_runner::codec::Protocol::ALL {
                $scenario(p).await;
            }
        }
    };
}

/// The runner binary, killed (and reaped) when dropped: a failing test leaves no runner behind.
pub struct Spawned(pub Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The runner binary as a gateway spawns it, listening on `socket` (APISIX's environment), its
/// stdio discarded: add flags or redirect stderr, then spawn.
pub fn runner_command(socket: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ext-plugin-runner"));
    command
        .env(
            "APISIX_LISTEN_ADDRESS",
            format!("unix:{}", socket.display()),
        )
        .env("APISIX_CONF_EXPIRE_TIME", "3600")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

/// `child`'s exit status once it exits, or `None` if it still runs after `within`.
pub fn wait_exit(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A gateway connection to a runner just spawned, once it listens (within [`GUARD`]).
pub async fn connect_spawned(socket: &Path) -> FakeGateway {
    FakeGateway::connect_when_listening(socket, Protocol::Capnp, GUARD)
        .await
        .unwrap_or_else(|e| panic!("runner never listened on {}: {e}", socket.display()))
}

/// `per_runner` connections to each runner listening on `sockets`, each with `chain` prepared
/// under `key`: the gateways of several nodes sharing one limit.
pub async fn prepared<P: AsRef<Path>>(
    sockets: impl IntoIterator<Item = P>,
    per_runner: usize,
    key: &str,
    chain: &[(&str, &str)],
) -> Vec<(FakeGateway, u32)> {
    let mut gws = Vec::new();
    for socket in sockets {
        for _ in 0..per_runner {
            let mut gw = connect_spawned(socket.as_ref()).await;
            let token = gw.prepare(key, chain).await.expect("the conf prepares");
            gws.push((gw, token));
        }
    }
    gws
}

/// A runner with default settings serving the built-in and the test plugins.
pub async fn start() -> TestRunner {
    TestRunner::start(plugins::registry()).await
}

/// Small deadlines and frame cap, so every limit is reached quickly (the hostile-gateway tests).
pub fn small_limits() -> Config {
    Config {
        call_timeout: Duration::from_millis(300),
        stall_timeout: Duration::from_millis(300),
        max_frame: 64 * 1024,
        ..Config::default()
    }
}

/// A runner with [`small_limits`] and every test plugin.
pub async fn start_small() -> TestRunner {
    TestRunner::start_with(small_limits(), plugins::registry()).await
}

/// A runner serving `registry`, a gateway connection, and the token of `chain` prepared on it
/// under [`PRE`].
pub async fn setup(registry: Registry, chain: &[(&str, &str)]) -> (TestRunner, FakeGateway, u32) {
    let runner = TestRunner::start(registry).await;
    let mut gw = runner.connect().await;
    let token = gw.prepare(PRE, chain).await.expect("the chain prepares");
    (runner, gw, token)
}

/// Prepares `plugin` (conf `{}`) under `key` on a connection of its own; the token.
pub async fn prepare_apart(runner: &TestRunner, p: Protocol, key: &str, plugin: &str) -> u32 {
    let mut gw = runner.connect_with(p).await;
    gw.prepare(key, &[(plugin, "{}")])
        .await
        .expect("the chain prepares")
}

/// What the runner answers for one request (the call must succeed).
pub async fn act(gw: &mut FakeGateway, token: u32, req: &HttpReqCallReq) -> ReqAction {
    gw.call(token, req).await.expect("the call succeeds").action
}

/// Expects `conf` for `plugin` to fail `prepare_conf` with BAD_REQUEST, on a fresh runner with
/// the built-in plugins.
pub async fn assert_rejected(plugin: &str, conf: &str) {
    let runner = TestRunner::start(ext_plugin_catalogue::builtin()).await;
    assert_refused(&mut runner.connect().await, plugin, conf).await;
}

/// Expects `conf` for `plugin` to fail `prepare_conf` with BAD_REQUEST.
pub async fn assert_refused(gw: &mut FakeGateway, plugin: &str, conf: &str) {
    match gw
        .prepare("route#bad#ext-plugin-pre-req#1", &[(plugin, conf)])
        .await
    {
        Err(GatewayError::Runner(ErrorCode::BadRequest)) => {}
        other => panic!("{plugin} {conf}: expected BAD_REQUEST, got {other:?}"),
    }
}

/// The error code a call was answered with.
pub fn runner_error<T: Debug>(r: Result<T, GatewayError>) -> ErrorCode {
    match r {
        Err(GatewayError::Runner(code)) => code,
        other => panic!("expected an error frame, got {other:?}"),
    }
}

/// A call's action, from the action itself or from the whole reply.
pub trait IntoAction {
    fn into_action(self) -> ReqAction;
}

impl IntoAction for ReqAction {
    fn into_action(self) -> ReqAction {
        self
    }
}

impl IntoAction for HttpReqCallResp {
    fn into_action(self) -> ReqAction {
        self.action
    }
}

impl IntoAction for &HttpReqCallResp {
    fn into_action(self) -> ReqAction {
        self.action.clone()
    }
}

pub fn stop(reply: impl IntoAction) -> Stop {
    match reply.into_action() {
        ReqAction::Stop(s) => s,
        other => panic!("expected a stop, got {other:?}"),
    }
}

pub fn rewrite(reply: impl IntoAction) -> Rewrite {
    match reply.into_action() {
        ReqAction::Rewrite(r) => r,
        other => panic!("expected a rewrite, got {other:?}"),
    }
}

/// A stop's body as text.
pub fn body(s: &Stop) -> &str {
    std::str::from_utf8(&s.body).expect("a text body")
}

/// The debug-echo plugin's JSON answer.
pub fn echoed(reply: impl IntoAction) -> Value {
    serde_json::from_slice(&stop(reply).body).expect("debug-echo answers JSON")
}

/// Pairs from `(name, value)`s.
pub fn pairs(list: &[(&str, &str)]) -> Vec<Pair> {
    list.iter()
        .map(|(n, v)| Pair::new(n.to_string(), v.to_string()))
        .collect()
}

/// `(name, value)` of pairs, for exact comparisons that show absent values.
pub fn tuples(p: &[Pair]) -> Vec<(&str, Option<&str>)> {
    p.iter()
        .map(|p| (p.name.as_str(), p.value.as_deref()))
        .collect()
}

/// One whole frame of `ty` with a payload `encode` writes.
pub fn frame(ty: FrameType, encode: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::new();
    write_frame(&mut out, ty as u8, encode).expect("a test message fits in a frame");
    out
}

/// A whole `prepare_conf` frame: `plugin` (conf `{}`) under `key`.
pub fn prepare_frame(codec: &mut dyn GatewayCodec, key: &str, plugin: &str) -> Vec<u8> {
    let req = PrepareConfReq {
        key: key.to_owned().into(),
        conf: vec![Pair::new(plugin.to_owned(), "{}")],
    };
    frame(FrameType::PrepareConf, |o| {
        codec.encode_prepare_conf_req(&req, o)
    })
}

/// The code of the error frame the runner sends next (not a close, not another frame).
pub async fn error_code(gw: &mut FakeGateway) -> ErrorCode {
    let f = guarded("an error frame", gw.read_frame())
        .await
        .unwrap()
        .expect("an error frame, not a close");
    gw.decode_error(&f).unwrap()
}

/// True when the runner closes the connection before sending anything else.
pub async fn closed(gw: &mut FakeGateway) -> bool {
    matches!(guarded("a close", gw.read_frame()).await, Ok(None) | Err(_))
}

/// A whole `http_req_call` frame of `req` for chain `token`.
pub fn call_frame(codec: &mut dyn GatewayCodec, token: u32, req: &HttpReqCallReq) -> Vec<u8> {
    let mut req = req.clone();
    req.conf_token = token;
    frame(FrameType::HttpReqCall, |o| {
        codec.encode_http_req_call_req(&req, o)
    })
}

/// Leaves a call in flight on `gw`: prepared, sent, and waiting for an extra_info answer this
/// gateway never sends (the runner's request has been read).
pub async fn call_left_waiting(gw: &mut FakeGateway) {
    let token = gw
        .prepare(PRE, &[("debug-echo", r#"{"vars": ["route_id"]}"#)])
        .await
        .unwrap();
    let mut codec = Protocol::Capnp.gateway_codec();
    gw.send_raw(&call_frame(
        codec.as_mut(),
        token,
        &request(Method::Get, "/"),
    ))
    .await
    .unwrap();
    let asked = guarded("the extra_info request", gw.read_frame())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        asked.ty,
        FrameType::ExtraInfo as u8,
        "the call is in flight"
    );
}

/// A normal call on a fresh connection: prepare debug-echo, call it, get its answer.
pub async fn fresh_call_works(runner: &TestRunner, p: Protocol) {
    guarded("a normal call", async {
        let mut gw = runner.connect_with(p).await;
        let token = gw
            .prepare("route#ok#ext-plugin-pre-req#1", &[("debug-echo", "{}")])
            .await
            .expect("prepare on a fresh connection");
        let resp = gw.call(token, &request(Method::Get, "/ok")).await.unwrap();
        assert_eq!(echoed(resp)["path"], "/ok");
    })
    .await
}

/// The test process's resident set (both ends of in-process runners), in KiB.
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// The status of an answer: 200 for continue / rewrite.
pub fn status(action: &ReqAction) -> u16 {
    match action {
        ReqAction::Stop(s) => s.status,
        _ => 200,
    }
}

/// Runs `per_gateway` calls on each of `gws` at once (a task per connection); returns every
/// status.
pub async fn storm(
    gws: Vec<(FakeGateway, u32)>,
    req: &HttpReqCallReq,
    per_gateway: usize,
) -> Vec<u16> {
    let tasks: Vec<_> = gws
        .into_iter()
        .map(|(mut gw, token)| {
            let req = req.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                for _ in 0..per_gateway {
                    out.push(status(&gw.call(token, &req).await.unwrap().action));
                }
                out
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}
