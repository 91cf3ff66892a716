//! A hostile or broken gateway, over a real socket (issue 7, docs/HARDENING.md): resources.
//! Many distinct prepares, thousands of idle connections, connections idle past the timeout or
//! over the connection limit. Each test checks the runner's bound, then that a normal call still
//! succeeds.
//!
//! Tests that measure the whole process (open files, RSS) take [`FDS`] exclusively, the rest
//! share it, so their counts are not disturbed. Timeouts in the tests are hang guards only.

mod common;

use std::time::{Duration, Instant};

use common::{
    call_frame, closed, fresh_call_works, guarded, plugins, prepare_frame, rss_kib, small_limits,
};
use ext_plugin_runner::codec::Protocol;
use ext_plugin_runner::frame::FrameType;
use ext_plugin_runner::model::{ErrorCode, Method};
use ext_plugin_runner::testing::{request, TestRunner};
use ext_plugin_runner::Config;
use tokio::sync::RwLock;

/// Held exclusively by tests that measure the whole process (open files, RSS).
static FDS: RwLock<()> = RwLock::const_new(());

/// A runner with the small limits and every test plugin.
async fn start() -> TestRunner {
    common::start_small().await
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
    let runner = TestRunner::start_with(config, plugins::registry()).await;
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
    // Per connection: a task, its socket registration and timers, and two sockets (no read
    // buffer or call storage while idle: they are lent to the thread's pools).
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
    let runner = TestRunner::start_with(config, plugins::registry()).await;
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
    let runner = TestRunner::start_with(config, plugins::registry()).await;
    let mut a = runner.connect().await;
    let token = a
        .prepare("route#max#ext-plugin-pre-req#1", &[("debug-echo", "{}")])
        .await
        .unwrap();
    let _b = runner.connect().await;
    // The third connects (the backlog takes it) but is not served while two are open.
    let mut c = runner.connect().await;
    let mut codec = Protocol::Capnp.gateway_codec();
    let bytes = call_frame(codec.as_mut(), token, &request(Method::Get, "/"));
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
