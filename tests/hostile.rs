//! A hostile or broken gateway, over a real socket (issue 7, docs/HARDENING.md): each test does
//! something a gateway must not, checks what the runner answers, and then checks that a normal
//! call on a fresh connection still succeeds.
//!
//! Runners here use small limits (deadlines of a few hundred milliseconds) so the suite is
//! fast; timeouts in the tests themselves are hang guards only. Tests that count the process's
//! open files take [`FDS`] exclusively, the rest share it, so their counts are not disturbed.

use std::future::Future;
use std::time::{Duration, Instant};

use ext_plugin_runner::codec::{GatewayCodec, Protocol};
use ext_plugin_runner::frame::{write_frame, FrameType};
use ext_plugin_runner::model::{ErrorCode, ExtraInfoReq, Method, PrepareConfReq, ReqAction};
use ext_plugin_runner::testing::{request, FakeGateway, TestRunner};
use ext_plugin_runner::{Config, Registry};
use ext_plugin_sdk::*;
use serde_json::Value;
use tokio::sync::RwLock;

/// Held exclusively by tests that measure the whole process (open files, RSS).
static FDS: RwLock<()> = RwLock::const_new(());

/// Hang guard for anything the runner should answer promptly.
const GUARD: Duration = Duration::from_secs(20);

async fn guarded<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {GUARD:?}"))
}

// ---------------------------------------------------------------------------------------------
// Test plugins, through the public plugin API.

/// Panics.
struct Panicker;

impl Plugin for Panicker {
    const NAME: &'static str = "test-panic";
    type Conf = Value;

    fn prepare(_: Value, _: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        Ok(Panicker)
    }

    async fn request_filter(&self, _: &mut RequestCall<'_>) -> Result<Flow, PluginError> {
        panic!("test plugin panics on purpose")
    }
}

/// Loops forever on an await that keeps completing (a timer), never returning.
struct Spinner;

impl Plugin for Spinner {
    const NAME: &'static str = "test-spin";
    type Conf = Value;

    fn prepare(_: Value, _: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        Ok(Spinner)
    }

    async fn request_filter(&self, _: &mut RequestCall<'_>) -> Result<Flow, PluginError> {
        loop {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// Asks the gateway for a variable, so the test can misbehave inside the exchange.
struct AskVar;

impl Plugin for AskVar {
    const NAME: &'static str = "test-ask-var";
    type Conf = Value;

    fn prepare(_: Value, _: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        Ok(AskVar)
    }

    async fn request_filter(&self, call: &mut RequestCall<'_>) -> Result<Flow, PluginError> {
        call.var("remote_user").await?;
        Ok(Flow::Continue)
    }
}

fn registry() -> Registry {
    ext_plugin_catalogue::builtin()
        .with::<Panicker>()
        .with::<Spinner>()
        .with::<AskVar>()
}

/// Small deadlines, so every limit is reached quickly.
fn small_limits() -> Config {
    Config {
        call_timeout: Duration::from_millis(300),
        stall_timeout: Duration::from_millis(300),
        max_frame: 64 * 1024,
        ..Config::default()
    }
}

async fn start() -> TestRunner {
    TestRunner::start_with(small_limits(), registry()).await
}

/// A normal call on a fresh connection: prepare echo, call it, get echo's answer.
async fn fresh_call_works(runner: &TestRunner, p: Protocol) {
    guarded("a normal call", async {
        let mut gw = runner.connect_with(p).await;
        let token = gw
            .prepare("route#ok#ext-plugin-pre-req#1", &[("debug-echo", "{}")])
            .await
            .expect("prepare on a fresh connection");
        let resp = gw.call(token, &request(Method::Get, "/ok")).await.unwrap();
        assert!(matches!(resp.action, ReqAction::Stop(_)), "{resp:?}");
    })
    .await
}

/// One whole frame of `ty` with a payload `encode` writes.
fn frame(ty: FrameType, encode: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::new();
    write_frame(&mut out, ty as u8, encode).unwrap();
    out
}

fn prepare_frame(codec: &mut dyn GatewayCodec, key: &str, plugin: &str) -> Vec<u8> {
    let req = PrepareConfReq {
        key: key.to_owned().into(),
        conf: vec![ext_plugin_runner::model::Pair::new(plugin.to_owned(), "{}")],
    };
    frame(FrameType::PrepareConf, |o| {
        codec.encode_prepare_conf_req(&req, o)
    })
}

async fn error_code(gw: &mut FakeGateway) -> ErrorCode {
    let f = guarded("an error frame", gw.read_frame())
        .await
        .unwrap()
        .expect("an error frame, not a close");
    gw.decode_error(&f).unwrap()
}

async fn closed(gw: &mut FakeGateway) -> bool {
    matches!(guarded("a close", gw.read_frame()).await, Ok(None) | Err(_))
}

/// Prepares `plugin` on its own connection and returns the token.
async fn prepare(runner: &TestRunner, p: Protocol, key: &str, plugin: &str) -> u32 {
    let mut gw = runner.connect_with(p).await;
    gw.prepare(key, &[(plugin, "{}")]).await.unwrap()
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn frames_written_one_byte_at_a_time() {
    let _shared = FDS.read().await;
    let runner = start().await;
    for p in Protocol::ALL {
        let mut gw = runner.connect_with(p).await;
        let mut codec = p.gateway_codec();
        let bytes = prepare_frame(
            codec.as_mut(),
            "route#bytes#ext-plugin-pre-req#1",
            "debug-echo",
        );
        for b in &bytes {
            gw.send_raw(std::slice::from_ref(b)).await.unwrap();
            tokio::task::yield_now().await;
        }
        let reply = guarded("prepare reply", gw.read_frame())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reply.ty, FrameType::PrepareConf as u8, "{p}");
        let token = codec.decode_prepare_conf_resp(&reply.payload).unwrap();
        // The same connection goes on normally.
        let resp = gw.call(token.conf_token, &request(Method::Get, "/")).await;
        assert!(resp.is_ok(), "{p}: {resp:?}");
        fresh_call_works(&runner, p).await;
    }
}

#[tokio::test]
async fn a_promised_16_mib_then_silence_is_closed_after_the_stall_timeout() {
    let _shared = FDS.read().await;
    let config = Config {
        max_frame: ext_plugin_runner::frame::MAX_PAYLOAD,
        ..small_limits()
    };
    let runner = TestRunner::start_with(config, registry()).await;
    let mut bystander = runner.connect().await;
    let token = bystander
        .prepare("route#by#ext-plugin-pre-req#1", &[("debug-echo", "{}")])
        .await
        .unwrap();

    let mut slow = runner.connect().await;
    let started = Instant::now();
    slow.send_raw(&[2, 0xFF, 0xFF, 0xFF, 1, 2, 3])
        .await
        .unwrap();
    // While the slow connection stalls, others are served as usual.
    for _ in 0..3 {
        assert!(bystander
            .call(token, &request(Method::Get, "/"))
            .await
            .is_ok());
    }
    assert!(closed(&mut slow).await, "the stalled connection is closed");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "closed before the stall timeout"
    );
    assert!(bystander
        .call(token, &request(Method::Get, "/"))
        .await
        .is_ok());
    fresh_call_works(&runner, Protocol::Capnp).await;
}

#[tokio::test]
async fn a_gateway_that_stops_reading_replies_is_closed_after_the_stall_timeout() {
    let _shared = FDS.read().await;
    let runner = start().await;
    let mut gw = runner.connect().await;
    let token = gw
        .prepare("route#deaf#ext-plugin-pre-req#1", &[("debug-echo", "{}")])
        .await
        .unwrap();
    // 64 pipelined calls whose echoed replies (~30 KB each) far exceed the sockets' buffers.
    const CALLS: usize = 64;
    let big = "x".repeat(30_000);
    let mut codec = Protocol::Capnp.gateway_codec();
    let mut calls = Vec::new();
    for id in 0..CALLS as u32 {
        let mut call = request(Method::Get, "/").with_header("x-big", &big);
        call.conf_token = token;
        call.id = id;
        calls.extend(frame(FrameType::HttpReqCall, |o| {
            codec.encode_http_req_call_req(&call, o)
        }));
    }
    // Never reading, the gateway's own write blocks once the runner stops reading; it fails
    // when the runner, its reply write stalled, gives the connection up.
    let sent = guarded("the runner to give up", gw.send_raw(&calls)).await;
    assert!(
        sent.is_err(),
        "every call was taken: the runner never stalled"
    );
    let mut replies = 0;
    while let Ok(Some(_)) = guarded("the buffered replies", gw.read_frame()).await {
        replies += 1;
    }
    assert!(
        replies < CALLS,
        "{replies} replies: the connection was not closed"
    );
    fresh_call_works(&runner, Protocol::Capnp).await;
}

#[tokio::test]
async fn lengths_up_to_the_cap_are_read_and_one_over_closes() {
    let _shared = FDS.read().await;
    let runner = start().await;
    let max = small_limits().max_frame;
    for p in Protocol::ALL {
        // Exactly the cap: read whole (garbage, so BAD_REQUEST), the connection stays. (A
        // valid call first, so an `auto` runner knows the connection's protocol.)
        let mut gw = runner.connect_with(p).await;
        let token = gw
            .prepare("route#cap#ext-plugin-pre-req#1", &[("debug-echo", "{}")])
            .await
            .unwrap();
        let mut at_cap = ext_plugin_runner::frame::FrameHeader::encode(2, max).to_vec();
        at_cap.resize(4 + max, 0xAB);
        gw.send_raw(&at_cap).await.unwrap();
        assert_eq!(error_code(&mut gw).await, ErrorCode::BadRequest);
        assert!(gw.call(token, &request(Method::Get, "/")).await.is_ok());
        // One over: refused from the header alone, then closed.
        let over = ext_plugin_runner::frame::FrameHeader::encode(2, max + 1);
        gw.send_raw(&over).await.unwrap();
        assert_eq!(error_code(&mut gw).await, ErrorCode::BadRequest);
        assert!(closed(&mut gw).await);
        fresh_call_works(&runner, p).await;
    }
}

#[tokio::test]
async fn every_frame_type_with_garbage_is_refused_and_the_connection_kept() {
    let _shared = FDS.read().await;
    let runner = start().await;
    for p in Protocol::ALL {
        let mut gw = runner.connect_with(p).await;
        let token = gw
            .prepare("route#g#ext-plugin-pre-req#1", &[("debug-echo", "{}")])
            .await
            .unwrap();
        for ty in 0..=255u8 {
            for garbage in [&[0u8][..], &[0xFF; 9][..], &[0, 0, 0, 0, 1, 0, 0, 0][..]] {
                let mut f =
                    ext_plugin_runner::frame::FrameHeader::encode(ty, garbage.len()).to_vec();
                f.extend_from_slice(garbage);
                gw.send_raw(&f).await.unwrap();
                assert_eq!(
                    error_code(&mut gw).await,
                    ErrorCode::BadRequest,
                    "{p}: type {ty}, payload {garbage:?}"
                );
            }
        }
        assert!(gw.call(token, &request(Method::Get, "/")).await.is_ok());
        fresh_call_works(&runner, p).await;
    }
}

#[tokio::test]
async fn truncated_payloads_get_an_answer_and_the_connection_kept() {
    let _shared = FDS.read().await;
    let runner = start().await;
    for p in Protocol::ALL {
        let mut gw = runner.connect_with(p).await;
        let token = gw
            .prepare("route#t#ext-plugin-pre-req#1", &[("debug-echo", "{}")])
            .await
            .unwrap();
        let mut codec = p.gateway_codec();
        let mut whole = Vec::new();
        let req = request(Method::Post, "/a/b")
            .with_header("host", "example.com")
            .with_arg("q", "1");
        codec.encode_http_req_call_req(&req, &mut whole);
        let mut refused = 0;
        for cut in 1..whole.len() {
            let f = frame(FrameType::HttpReqCall, |o| {
                o.extend_from_slice(&whole[..cut])
            });
            gw.send_raw(&f).await.unwrap();
            let reply = guarded("a reply", gw.read_frame()).await.unwrap().unwrap();
            // A cut that still decodes names token 0 at worst: never a crash or a hang.
            if reply.ty == FrameType::Error as u8 {
                refused += 1;
            }
        }
        assert!(
            refused > whole.len() / 2,
            "{p}: only {refused} cuts refused"
        );
        assert!(gw.call(token, &request(Method::Get, "/")).await.is_ok());
        fresh_call_works(&runner, p).await;
    }
}

#[tokio::test]
async fn a_connection_reset_mid_call_or_mid_extra_info_costs_only_itself() {
    let _shared = FDS.read().await;
    let runner = start().await;
    for p in Protocol::ALL {
        // Mid-call: the plugin is still running when the gateway goes away.
        let spin = prepare(&runner, p, "route#spin#ext-plugin-pre-req#1", "test-spin").await;
        let mut gw = runner.connect_with(p).await;
        let mut codec = p.gateway_codec();
        let mut call = request(Method::Get, "/");
        call.conf_token = spin;
        let bytes = frame(FrameType::HttpReqCall, |o| {
            codec.encode_http_req_call_req(&call, o)
        });
        gw.send_raw(&bytes).await.unwrap();
        drop(gw);

        // Mid-extra_info: the gateway reads the runner's question and goes away.
        let ask = prepare(&runner, p, "route#ask#ext-plugin-pre-req#1", "test-ask-var").await;
        let mut gw = runner.connect_with(p).await;
        call.conf_token = ask;
        let bytes = frame(FrameType::HttpReqCall, |o| {
            codec.encode_http_req_call_req(&call, o)
        });
        gw.send_raw(&bytes).await.unwrap();
        let question = guarded("extra_info", gw.read_frame())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(question.ty, FrameType::ExtraInfo as u8);
        drop(gw);

        fresh_call_works(&runner, p).await;
    }
}

/// Sends a call to the ask-var chain and returns once the runner's question has arrived.
async fn asked(runner: &TestRunner, p: Protocol, token: u32) -> FakeGateway {
    let mut gw = runner.connect_with(p).await;
    let mut codec = p.gateway_codec();
    let mut call = request(Method::Get, "/");
    call.conf_token = token;
    let bytes = frame(FrameType::HttpReqCall, |o| {
        codec.encode_http_req_call_req(&call, o)
    });
    gw.send_raw(&bytes).await.unwrap();
    let question = guarded("extra_info", gw.read_frame())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(question.ty, FrameType::ExtraInfo as u8);
    assert_eq!(
        codec.decode_extra_info_req(&question.payload).unwrap(),
        ExtraInfoReq::Var("remote_user".into())
    );
    gw
}

#[tokio::test]
async fn an_extra_info_answered_wrongly_or_never_closes_the_connection() {
    let _shared = FDS.read().await;
    let runner = start().await;
    for p in Protocol::ALL {
        let ask = prepare(&runner, p, "route#ask#ext-plugin-pre-req#1", "test-ask-var").await;
        let mut codec = p.gateway_codec();

        // Answered with another frame type (a new call, as a confused gateway would).
        let mut gw = asked(&runner, p, ask).await;
        let mut call = request(Method::Get, "/");
        call.conf_token = ask;
        let wrong = frame(FrameType::HttpReqCall, |o| {
            codec.encode_http_req_call_req(&call, o)
        });
        gw.send_raw(&wrong).await.unwrap();
        assert_eq!(error_code(&mut gw).await, ErrorCode::BadRequest, "{p}");
        assert!(closed(&mut gw).await, "{p}: out of step, so closed");

        // Answered with garbage of the right type.
        let mut gw = asked(&runner, p, ask).await;
        gw.send_raw(&[3, 0, 0, 2, 0xFF, 0xFF]).await.unwrap();
        assert_eq!(error_code(&mut gw).await, ErrorCode::BadRequest, "{p}");
        assert!(closed(&mut gw).await, "{p}");

        // Never answered: the call deadline answers, and the connection closes.
        let mut gw = asked(&runner, p, ask).await;
        assert_eq!(
            error_code(&mut gw).await,
            ErrorCode::ServiceUnavailable,
            "{p}"
        );
        assert!(closed(&mut gw).await, "{p}");

        fresh_call_works(&runner, p).await;
    }
}

#[tokio::test]
async fn a_plugin_that_panics_or_loops_on_an_await_costs_one_call() {
    let _shared = FDS.read().await;
    let runner = start().await;
    for p in Protocol::ALL {
        for plugin in ["test-panic", "test-spin"] {
            let key = format!("route#{plugin}#ext-plugin-pre-req#1");
            let token = prepare(&runner, p, &key, plugin).await;
            let mut gw = runner.connect_with(p).await;
            for _ in 0..2 {
                let r = guarded(plugin, gw.call(token, &request(Method::Get, "/"))).await;
                assert!(
                    matches!(
                        r,
                        Err(ext_plugin_runner::testing::GatewayError::Runner(
                            ErrorCode::ServiceUnavailable
                        ))
                    ),
                    "{p} {plugin}: {r:?}"
                );
            }
            // The same connection still serves other chains.
            let echo = gw
                .prepare("route#e#ext-plugin-pre-req#1", &[("debug-echo", "{}")])
                .await
                .unwrap();
            assert!(gw.call(echo, &request(Method::Get, "/")).await.is_ok());
            fresh_call_works(&runner, p).await;
        }
    }
}

#[tokio::test]
async fn a_hundred_thousand_distinct_prepares_stay_within_the_cache_capacity() {
    // Exclusive: it measures the process's RSS.
    let _exclusive = FDS.write().await;
    const PREPARES: usize = 100_000;
    const CAPACITY: usize = 1000;
    const BATCH: usize = 500;
    let config = Config {
        conf_cache_capacity: CAPACITY,
        ..small_limits()
    };
    let runner = TestRunner::start_with(config, registry()).await;
    let mut gw = runner.connect().await;
    let mut codec = Protocol::Capnp.gateway_codec();
    let rss_before = rss_kib();
    let started = Instant::now();
    let mut first = None;
    let mut out = Vec::new();
    for batch in 0..PREPARES / BATCH {
        // Pipelined: a batch of prepares in one write, then their answers.
        out.clear();
        for i in batch * BATCH..(batch + 1) * BATCH {
            let key = format!("route#{i}#ext-plugin-pre-req#1");
            out.extend(prepare_frame(codec.as_mut(), &key, "debug-echo"));
        }
        gw.send_raw(&out).await.unwrap();
        for _ in 0..BATCH {
            let f = guarded("prepare", gw.read_frame()).await.unwrap().unwrap();
            assert_eq!(f.ty, FrameType::PrepareConf as u8);
            let token = codec
                .decode_prepare_conf_resp(&f.payload)
                .unwrap()
                .conf_token;
            first.get_or_insert(token);
        }
        assert!(runner.runner().cached_confs() <= CAPACITY);
    }
    let elapsed = started.elapsed();
    let rss_after = rss_kib();
    println!(
        "figures: {PREPARES} prepares in {elapsed:?}; cached {}; RSS {rss_before} -> {rss_after} KiB",
        runner.runner().cached_confs()
    );
    assert_eq!(runner.runner().cached_confs(), CAPACITY);
    let r = gw.call(first.unwrap(), &request(Method::Get, "/")).await;
    assert!(
        matches!(
            r,
            Err(ext_plugin_runner::testing::GatewayError::Runner(
                ErrorCode::ConfTokenNotFound
            ))
        ),
        "an evicted token: {r:?}"
    );
    // 100 000 chains, had they all been kept, would be tens of MiB; the bound keeps 1000.
    assert!(
        rss_after.saturating_sub(rss_before) < 64 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
    fresh_call_works(&runner, Protocol::Capnp).await;
}

// ---------------------------------------------------------------------------------------------
// Open files and memory: thousands of idle connections.

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// Idle connections to open: 2000 (each is two descriptors here, the gateway's end and the
/// runner's, so 4000 plus the test's own), fewer if the hard open-file limit cannot allow it.
/// Thousands, as the issue asks, while a default soft limit of 1024 only needs raising to the
/// usual hard limit (4096 or more) — which this does, in-process.
fn idle_connection_count() -> usize {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    const WANTED: usize = 2000;
    const SPARE: u64 = 256;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    let need = 2 * WANTED as u64 + SPARE;
    if soft < need {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, need.min(hard), hard);
    }
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    WANTED.min((soft.saturating_sub(SPARE) / 2) as usize)
}

/// The open-file count once the runner has closed what it is closing.
async fn settled_fds() -> usize {
    let mut last = open_fds();
    let mut same = 0;
    guarded("the open-file count to settle", async {
        while same < 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = open_fds();
            same = if now == last { same + 1 } else { 0 };
            last = now;
        }
    })
    .await;
    last
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    guarded(what, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

#[tokio::test]
async fn thousands_of_idle_connections_then_a_call_and_back_to_baseline() {
    let _exclusive = FDS.write().await;
    let n = idle_connection_count();
    assert!(
        n >= 1000,
        "only {n} idle connections possible under the open-file limit"
    );
    let runner = start().await;
    fresh_call_works(&runner, Protocol::Capnp).await;
    let fds_before = settled_fds().await;
    let rss_before = rss_kib();

    let mut idle = Vec::with_capacity(n);
    for _ in 0..n {
        idle.push(runner.connect().await);
    }
    // Both ends of each: the runner accepted every one.
    wait_for("the runner to accept every connection", || {
        open_fds() >= fds_before + 2 * n
    })
    .await;
    let fds_open = open_fds();
    let rss_open = rss_kib();
    fresh_call_works(&runner, Protocol::Capnp).await;

    drop(idle);
    // The runner notices each close and frees its end.
    wait_for("the runner to close its ends", || {
        open_fds() <= fds_before + 2
    })
    .await;
    let fds_after = open_fds();
    println!(
        "figures: {n} idle connections; fds {fds_before} -> {fds_open} -> {fds_after}; \
         RSS {rss_before} -> {rss_open} KiB ({} KiB per connection, both ends)",
        rss_open.saturating_sub(rss_before) / n as u64
    );
    // Per connection: a task, its buffers (4 KiB read buffer while idle) and two sockets.
    assert!(
        rss_open.saturating_sub(rss_before) < 32 * n as u64,
        "RSS grew from {rss_before} to {rss_open} KiB for {n} idle connections"
    );
    fresh_call_works(&runner, Protocol::Capnp).await;
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let _shared = FDS.read().await;
    let config = Config {
        idle_timeout: Duration::from_millis(200),
        ..small_limits()
    };
    let runner = TestRunner::start_with(config, registry()).await;
    let mut gw = runner.connect().await;
    let token = gw
        .prepare("route#idle#ext-plugin-pre-req#1", &[("debug-echo", "{}")])
        .await
        .unwrap();
    let since = Instant::now();
    assert!(closed(&mut gw).await, "an idle connection is closed");
    assert!(since.elapsed() >= Duration::from_millis(200));
    // A connection that keeps calling is never idle.
    let mut busy = runner.connect().await;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(busy.call(token, &request(Method::Get, "/")).await.is_ok());
    }
    fresh_call_works(&runner, Protocol::Capnp).await;
}

#[tokio::test]
async fn connections_over_the_limit_wait_and_are_served_when_one_closes() {
    let _shared = FDS.read().await;
    let config = Config {
        max_connections: 2,
        ..small_limits()
    };
    let runner = TestRunner::start_with(config, registry()).await;
    let mut a = runner.connect().await;
    let token = a
        .prepare("route#max#ext-plugin-pre-req#1", &[("debug-echo", "{}")])
        .await
        .unwrap();
    let _b = runner.connect().await;
    // The third connects (the backlog takes it) but is not served while two are open.
    let mut c = runner.connect().await;
    let mut codec = Protocol::Capnp.gateway_codec();
    let mut call = request(Method::Get, "/");
    call.conf_token = token;
    let bytes = frame(FrameType::HttpReqCall, |o| {
        codec.encode_http_req_call_req(&call, o)
    });
    c.send_raw(&bytes).await.unwrap();
    let early = tokio::time::timeout(Duration::from_millis(300), c.read_frame()).await;
    assert!(early.is_err(), "served past max_connections: {early:?}");
    drop(a);
    let reply = guarded("the waiting connection", c.read_frame())
        .await
        .unwrap()
        .expect("a reply once a slot frees up");
    assert_eq!(reply.ty, FrameType::HttpReqCall as u8);
}
