//! A hostile gateway against the runner's budgets (issue 11, docs/HARDENING.md), over a real
//! socket: a prepare that never finishes, keys and confs of any size, extra_info answers and
//! replies past what a call may hold, frames that pile up across connections or trickle past
//! the frame deadline, and a token count that wraps. Each test asserts the bound, then that a
//! normal call still succeeds.
//!
//! Memory bounds are asserted through the runner's own counters (the budget in use, the cache's
//! accounted bytes), not through timing; the timeouts here are hang guards only.

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{fresh_call_works, guarded, plugins, prepare_frame, stop};
use ext_plugin_runner::codec::Protocol;
use ext_plugin_runner::frame::{FrameHeader, FrameType, HEADER_LEN};
use ext_plugin_runner::framed::FREE_ALLOWANCE;
use ext_plugin_runner::model::{ErrorCode, Method};
use ext_plugin_runner::testing::{request, FakeGateway, GatewayError, TestRunner};
use ext_plugin_runner::{Config, Registry};
use ext_plugin_sdk::*;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// The built-in and shared test plugins, and this file's own.
fn registry() -> Registry {
    plugins::registry()
        .with::<Block>()
        .with::<AskMany>()
        .with::<HugeBody>()
}

async fn start_with(config: Config) -> TestRunner {
    TestRunner::start_with(config, registry()).await
}

fn refused<T: std::fmt::Debug>(r: &Result<T, GatewayError>) -> bool {
    matches!(r, Err(GatewayError::Runner(ErrorCode::BadRequest)))
}

/// Polls `done` until it holds (within the hang guard).
async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    guarded(what, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// #1: every prepare_conf is answered within the prepare deadline.

/// Where `test-block` prepares wait until the test opens it; every build of it passes here.
static GATE: Gate = Gate {
    state: Mutex::new((0, false)),
    changed: Condvar::new(),
};

struct Gate {
    /// Builds that reached the gate; open.
    state: Mutex<(usize, bool)>,
    changed: Condvar,
}

impl Gate {
    fn pass(&self) {
        let mut s = self.state.lock().unwrap();
        s.0 += 1;
        while !s.1 {
            s = self.changed.wait(s).unwrap();
        }
    }

    fn entered(&self) -> usize {
        self.state.lock().unwrap().0
    }

    fn open(&self) {
        self.state.lock().unwrap().1 = true;
        self.changed.notify_all();
    }
}

/// Opens the gate when dropped, so a failing test leaves no blocked thread behind (the runtime
/// waits for its blocking threads when it shuts down).
struct Opener;

impl Drop for Opener {
    fn drop(&mut self) {
        GATE.open();
    }
}

/// A plugin whose prepare blocks its thread until the gate opens: a hung prepare (a FIFO read,
/// a pathological regex).
struct Block;

impl Plugin for Block {
    const NAME: &'static str = "test-block";
    type Conf = serde_json::Value;

    fn prepare(_: serde_json::Value, _: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        GATE.pass();
        Ok(Block)
    }
}

#[tokio::test]
async fn a_prepare_that_never_finishes_is_refused_and_the_runner_serves_meanwhile() {
    const STUCK: &str = "route#stuck#ext-plugin-pre-req#1";
    let _opener = Opener;
    let runner = start_with(Config {
        prepare_timeout: Duration::from_millis(500),
        max_prepares_in_flight: 2,
        ..common::small_limits()
    })
    .await;
    let mut gw = runner.connect().await;
    let quick = gw
        .prepare("route#quick#ext-plugin-pre-req#1", &[("debug-echo", "{}")])
        .await
        .unwrap();

    // A prepare that hangs, and a second of the same key waiting for its build.
    let mut stuck = Vec::new();
    for _ in 0..2 {
        let mut other = runner.connect().await;
        stuck.push(tokio::spawn(async move {
            other.prepare(STUCK, &[("test-block", "{}")]).await
        }));
    }
    wait_for("the hung build to start", || GATE.entered() == 1).await;
    // Calls are served while it hangs.
    let get = request(Method::Get, "/");
    let reply = guarded("a call while a prepare hangs", gw.call(quick, &get)).await;
    assert_eq!(common::echoed(reply.unwrap())["path"], "/");
    for p in stuck {
        let answer = guarded("the hung prepare and its waiter", p).await.unwrap();
        assert!(refused(&answer), "refused at the deadline: {answer:?}");
    }
    // Prepared again while the build still hangs: refused, not built a second time.
    let again = guarded("a re-prepare", gw.prepare(STUCK, &[("test-block", "{}")])).await;
    assert!(refused(&again), "{again:?}");
    assert_eq!(
        GATE.entered(),
        1,
        "one build, however often the key is prepared"
    );

    // A second hung key takes the other build slot; then no thread is left for builds, so a
    // third key is refused too, at its deadline, rather than adding a thread.
    let mut other = runner.connect().await;
    let second = tokio::spawn(async move {
        other
            .prepare("route#stuck2#ext-plugin-pre-req#1", &[("test-block", "{}")])
            .await
    });
    wait_for("the second hung build", || GATE.entered() == 2).await;
    assert!(refused(
        &guarded("the second hung prepare", second).await.unwrap()
    ));
    let busy = gw
        .prepare("route#new#ext-plugin-pre-req#1", &[("debug-echo", "{}")])
        .await;
    assert!(refused(&busy), "every build slot is held: {busy:?}");
    assert_eq!(GATE.entered(), 2);

    // Once the builds finish, the slots are free again and the hung key was cached.
    GATE.open();
    wait_for("the hung chains to be cached", || {
        runner.runner().cached_confs() == 3
    })
    .await;
    let token = gw.prepare(STUCK, &[("test-block", "{}")]).await.unwrap();
    assert_ne!(token, quick);
    fresh_call_works(&runner, Protocol::Capnp).await;
}

// ---------------------------------------------------------------------------------------------
// #4: keys and confs are capped, and the cache is bounded by bytes, not only by count.

#[tokio::test]
async fn long_keys_and_confs_are_refused_and_the_cache_is_bounded_by_bytes() {
    const BUDGET: usize = 4 << 20;
    let runner = start_with(Config {
        conf_cache_bytes: BUDGET,
        ..Config::default()
    })
    .await;
    let mut gw = runner.connect().await;
    let long_key = format!("route#{}#ext-plugin-pre-req#1", "k".repeat(64 * 1024));
    assert!(refused(
        &gw.prepare(&long_key, &[("debug-echo", "{}")]).await
    ));
    let huge = format!(r#"{{"status": 200, "body": "{}"}}"#, "b".repeat(1 << 20));
    let huge = gw
        .prepare("route#huge#ext-plugin-pre-req#1", &[("test-stop", &huge)])
        .await;
    assert!(refused(&huge), "{huge:?}");
    assert_eq!(runner.runner().cached_confs(), 0);

    // 200 confs of 100 KiB: 20 MiB, five times the budget, far under the count capacity.
    let conf = format!(r#"{{"status": 200, "body": "{}"}}"#, "b".repeat(100 * 1024));
    let mut tokens = Vec::new();
    for i in 0..200 {
        let key = format!("route#{i}#ext-plugin-pre-req#1");
        tokens.push(gw.prepare(&key, &[("test-stop", &conf)]).await.unwrap());
        assert!(runner.runner().cached_conf_bytes() <= BUDGET);
    }
    let cached = runner.runner().cached_confs();
    println!(
        "figures: 200 prepares of 100 KiB confs, budget {BUDGET}: {cached} cached, {} bytes accounted",
        runner.runner().cached_conf_bytes()
    );
    assert!(
        cached < 200 && cached * 100 * 1024 <= BUDGET,
        "{cached} cached"
    );
    let first = gw.call(tokens[0], &request(Method::Get, "/")).await;
    assert!(
        matches!(
            first,
            Err(GatewayError::Runner(ErrorCode::ConfTokenNotFound))
        ),
        "the least recently used went first: {first:?}"
    );
    let last = gw.call(tokens[199], &request(Method::Get, "/")).await;
    assert_eq!(stop(last.unwrap()).status, 200);
    fresh_call_works(&runner, Protocol::Capnp).await;
}

// ---------------------------------------------------------------------------------------------
// #10: what a call may hold from extra_info answers, and what its reply may come to.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AskManyConf {
    count: usize,
    /// Fetches on past errors, then answers as if nothing failed.
    #[serde(default)]
    ignore_errors: bool,
}

/// Asks for `count` variables (`v0`, `v1`, …), keeps them all, and stops 200 with how many
/// bytes it got.
struct AskMany(AskManyConf);

impl Plugin for AskMany {
    const NAME: &'static str = "test-ask-many";
    type Conf = AskManyConf;

    fn prepare(conf: AskManyConf, _: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        Ok(AskMany(conf))
    }

    async fn request_filter(&self, call: &mut RequestCall<'_>) -> Result<Flow, PluginError> {
        let mut kept = Vec::new();
        for i in 0..self.0.count {
            match call.var(&format!("v{i}")).await {
                Ok(v) => kept.push(v),
                Err(_) if self.0.ignore_errors => {}
                Err(e) => return Err(e),
            }
        }
        let got: usize = kept.iter().flatten().map(|v| v.len()).sum();
        Ok(Flow::Stop(Stop::new(200).with_body(got.to_string())))
    }
}

#[tokio::test]
async fn extra_info_answers_past_the_budget_fail_the_call_cleanly() {
    const BUDGET: usize = 4 << 20;
    let runner = start_with(Config {
        extra_info_budget: BUDGET,
        ..Config::default()
    })
    .await;
    let mut gw = runner.connect().await;
    // Thirty answers of 1 MiB (one buffer on the gateway's side), 30 MiB for a 4 MiB budget.
    let value = Bytes::from(vec![b'x'; 1 << 20]);
    for i in 0..30 {
        gw.vars.insert(format!("v{i}"), Some(value.clone()));
    }
    for conf in [
        r#"{"count": 30}"#,
        r#"{"count": 30, "ignore_errors": true}"#,
    ] {
        let token = gw
            .prepare(
                &format!("route#{conf}#ext-plugin-pre-req#1"),
                &[("test-ask-many", conf)],
            )
            .await
            .unwrap();
        gw.asked.clear();
        let r = guarded(
            "a call past its budget",
            gw.call(token, &request(Method::Get, "/")),
        )
        .await;
        assert!(
            matches!(r, Err(GatewayError::Runner(ErrorCode::ServiceUnavailable))),
            "{conf}: {r:?}"
        );
        assert!(
            gw.asked.len() <= BUDGET / (1 << 20) + 1,
            "{conf}: {} answers read for a budget of four",
            gw.asked.len()
        );
    }
    // The same connection goes on: a call within the budget succeeds.
    let token = gw
        .prepare(
            "route#few#ext-plugin-pre-req#1",
            &[("test-ask-many", r#"{"count": 3}"#)],
        )
        .await
        .unwrap();
    let within = gw.call(token, &request(Method::Get, "/")).await.unwrap();
    assert_eq!(common::body(&stop(within)), (3 << 20).to_string());
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HugeBodyConf {
    len: usize,
}

/// Stops with a body of `len` zero bytes (allocated zeroed, so untouched pages cost nothing
/// until something copies them).
struct HugeBody(usize);

impl Plugin for HugeBody {
    const NAME: &'static str = "test-huge-body";
    type Conf = HugeBodyConf;

    fn prepare(conf: HugeBodyConf, _: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        Ok(HugeBody(conf.len))
    }

    async fn request_filter(&self, _: &mut RequestCall<'_>) -> Result<Flow, PluginError> {
        Ok(Flow::Stop(Stop::new(200).with_body(vec![0u8; self.0])))
    }
}

#[tokio::test]
async fn a_reply_too_large_to_frame_is_service_unavailable_not_a_crash() {
    let runner = start_with(common::small_limits()).await;
    for p in Protocol::ALL {
        let mut gw = runner.connect_with(p).await;
        // 2^29 bytes: past what the Cap'n Proto encoder can build without panicking.
        let token = gw
            .prepare(
                "route#huge#ext-plugin-pre-req#1",
                &[("test-huge-body", r#"{"len": 536870912}"#)],
            )
            .await
            .unwrap();
        let r = guarded(
            "a reply too large",
            gw.call(token, &request(Method::Get, "/")),
        )
        .await;
        assert!(
            matches!(r, Err(GatewayError::Runner(ErrorCode::ServiceUnavailable))),
            "{p:?}: {r:?}"
        );
        let echo = gw
            .prepare("route#echo#ext-plugin-pre-req#1", &[("debug-echo", "{}")])
            .await
            .unwrap();
        assert!(
            gw.call(echo, &request(Method::Get, "/")).await.is_ok(),
            "{p:?}: the connection lives"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// #11: frames in flight share one budget, and a frame has a total deadline.

/// What became of a connection that sent a frame short of its last byte.
async fn held_or_closed(mut gw: FakeGateway, len: usize, closed: Arc<AtomicUsize>) {
    let mut bytes = FrameHeader::encode(FrameType::PrepareConf as u8, len).to_vec();
    bytes.resize(HEADER_LEN + len - 1, b'x');
    // A refused connection's write fails part way: what matters is what the runner does next.
    let _ = gw.send_raw(&bytes).await;
    let next = gw.read_frame().await;
    // A refused connection is answered SERVICE_UNAVAILABLE and closed; the answer may be lost to
    // the reset of a close with bytes unread.
    if let Ok(Some(f)) = next {
        assert_eq!(gw.decode_error(&f).unwrap(), ErrorCode::ServiceUnavailable);
    }
    closed.fetch_add(1, Ordering::SeqCst);
}

#[tokio::test]
async fn frames_in_flight_share_one_budget_across_connections() {
    const BUDGET: usize = 4 << 20;
    const CONNECTIONS: usize = 16;
    const FRAME: usize = 1 << 20;
    // Stall and frame deadlines past the hang guard: only the budget can close a connection
    // within it.
    let runner = start_with(Config {
        max_buffered_bytes: BUDGET,
        stall_timeout: Duration::from_secs(60),
        frame_timeout: Duration::from_secs(60),
        ..Config::default()
    })
    .await;
    let closed = Arc::new(AtomicUsize::new(0));
    let mut senders = Vec::new();
    for _ in 0..CONNECTIONS {
        let gw = runner.connect().await;
        senders.push(tokio::spawn(held_or_closed(gw, FRAME, closed.clone())));
    }
    // 16 MiB offered against 4 MiB: connections past the budget are refused, and the rest hold
    // their frames.
    let mut peak = 0;
    wait_for("connections past the budget to be closed", || {
        peak = peak.max(runner.runner().buffered_bytes());
        closed.load(Ordering::SeqCst) >= CONNECTIONS - BUDGET / FRAME
    })
    .await;
    println!(
        "figures: {CONNECTIONS} frames of {FRAME} bytes short of one, budget {BUDGET}: {} closed, peak {peak} bytes taken",
        closed.load(Ordering::SeqCst)
    );
    assert!(peak <= BUDGET);
    for s in senders {
        s.abort();
    }
    wait_for("every charge to be given back", || {
        runner.runner().buffered_bytes() == 0
    })
    .await;
    fresh_call_works(&runner, Protocol::Capnp).await;
}

#[tokio::test]
async fn a_frame_trickled_under_the_stall_timeout_is_closed_at_the_frame_deadline() {
    let runner = start_with(Config {
        stall_timeout: Duration::from_millis(600),
        frame_timeout: Duration::from_secs(1),
        ..Config::default()
    })
    .await;
    let mut codec = Protocol::Capnp.gateway_codec();
    let bytes = prepare_frame(
        codec.as_mut(),
        "route#trickle#ext-plugin-pre-req#1",
        "debug-echo",
    );
    let stream = UnixStream::connect(runner.path()).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let written = Arc::new(AtomicUsize::new(0));
    let trickle = {
        let written = written.clone();
        tokio::spawn(async move {
            // A byte every 200 ms: well within the stall timeout, every time.
            for b in bytes {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if write.write_all(&[b]).await.is_err() {
                    return;
                }
                written.fetch_add(1, Ordering::SeqCst);
            }
            std::future::pending::<()>().await
        })
    };
    let total = prepare_frame(
        codec.as_mut(),
        "route#trickle#ext-plugin-pre-req#1",
        "debug-echo",
    )
    .len();
    let mut buf = [0u8; 64];
    let n = guarded(
        "the runner to close the trickling connection",
        read.read(&mut buf),
    )
    .await
    .unwrap_or(0);
    let sent = written.load(Ordering::SeqCst);
    trickle.abort();
    assert_eq!(n, 0, "closed without an answer");
    assert!(
        sent < total,
        "closed only after the whole frame arrived ({sent} of {total})"
    );
    fresh_call_works(&runner, Protocol::Capnp).await;
}

// ---------------------------------------------------------------------------------------------
// #16: a token count that wraps skips live tokens.

#[tokio::test]
async fn a_wrapped_token_count_never_takes_a_live_chains_token() {
    let runner = start_with(common::small_limits()).await;
    let mut gw = runner.connect().await;
    let a = gw
        .prepare(
            "route#a#ext-plugin-pre-req#1",
            &[("test-stop", r#"{"status": 201}"#)],
        )
        .await
        .unwrap();
    // The count has come round to `a` again (2^32 prepares later, in production).
    runner.runner().set_next_conf_token(a);
    let b = gw
        .prepare(
            "route#b#ext-plugin-pre-req#1",
            &[("test-stop", r#"{"status": 202}"#)],
        )
        .await
        .unwrap();
    assert_ne!(b, a);
    let status = |r: Result<_, GatewayError>| stop(r.unwrap()).status;
    assert_eq!(
        status(gw.call(a, &request(Method::Get, "/")).await),
        201,
        "a runs its own chain"
    );
    assert_eq!(status(gw.call(b, &request(Method::Get, "/")).await), 202);
}

// ---------------------------------------------------------------------------------------------

#[test]
fn the_defaults_hold_the_issues_bounds() {
    let c = Config::default();
    assert!(c.prepare_timeout <= Duration::from_secs(2));
    assert!(c.extra_info_budget <= 64 << 20);
    // The budget plus every connection's free allowance.
    assert!(c.max_buffered_bytes + c.max_connections * FREE_ALLOWANCE <= 256 << 20);
    assert!(
        c.frame_timeout < Duration::from_secs(60),
        "below the gateway's read timeout"
    );
}

// ---------------------------------------------------------------------------------------------
// The runner binary: its own memory, and what it logs of a refusal.

/// The runner binary (built-in plugins only) on a fresh socket with `flags`, stderr kept; its
/// socket and a connection to it.
async fn spawn_binary(flags: &[&str]) -> (common::Spawned, PathBuf, FakeGateway) {
    let socket = ext_plugin_runner::testing::temp_socket_path();
    let child = common::runner_command(&socket)
        .args(flags)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawning the runner");
    let spawned = common::Spawned(child);
    let gw = common::connect_spawned(&socket).await;
    (spawned, socket, gw)
}

/// The process's resident memory, from its own /proc/<pid>/status.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("the runner's /proc status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[tokio::test]
async fn the_runner_process_holds_no_more_than_its_frame_budget() {
    const BUDGET: usize = 8 << 20;
    const CONNECTIONS: usize = 16;
    const FRAME: usize = 4 << 20;
    let budget = BUDGET.to_string();
    let (runner, socket, gw) = spawn_binary(&[
        "--max-buffered-bytes",
        &budget,
        "--stall-timeout-ms",
        "60000",
        "--frame-timeout-ms",
        "60000",
    ])
    .await;
    drop(gw);
    let pid = runner.0.id();
    let before = rss_kib(pid);
    let mut held = Vec::new();
    let mut senders = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut gw = FakeGateway::connect(&socket, Protocol::Capnp)
            .await
            .unwrap();
        senders.push(tokio::spawn(async move {
            let mut bytes = FrameHeader::encode(FrameType::PrepareConf as u8, FRAME).to_vec();
            bytes.resize(HEADER_LEN + FRAME - 1, b'x');
            // Refused connections fail part way; the others are read whole but for one byte.
            let _ = gw.send_raw(&bytes).await;
            gw
        }));
    }
    for s in senders {
        held.push(
            guarded("a frame's bytes to be read or refused", s)
                .await
                .unwrap(),
        );
    }
    let during = rss_kib(pid);
    println!(
        "figures: runner binary, {CONNECTIONS} frames of {FRAME} bytes short of one, budget {BUDGET}: \
         RSS {before} -> {during} KiB"
    );
    // 64 MiB offered; the budget, the connections' allowances and allocator slack stay far below.
    assert!(
        during.saturating_sub(before) < 3 * (BUDGET as u64 >> 10),
        "RSS grew from {before} to {during} KiB against a budget of {BUDGET} bytes"
    );
    drop(held);
}

#[tokio::test]
async fn refusals_by_size_name_the_limit_and_log_no_more_than_a_key() {
    let (runner, _, mut gw) = spawn_binary(&["--max-conf-bytes", "1000"]).await;
    let long_key = format!("route#{}#ext-plugin-pre-req#1", "k".repeat(64 * 1024));
    assert!(refused(
        &gw.prepare(&long_key, &[("debug-echo", "{}")]).await
    ));
    // Refused for its size before the plugin reads it.
    let conf = format!(r#"{{"padding": "{}"}}"#, "b".repeat(2000));
    let key = "route#big#ext-plugin-pre-req#1";
    assert!(refused(&gw.prepare(key, &[("debug-echo", &conf)]).await));
    drop(gw);
    let mut child = runner;
    let _ = child.0.kill();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut stderr).unwrap();
    let key_line = stderr
        .lines()
        .find(|l| l.contains("conf key is"))
        .unwrap_or_else(|| panic!("no line for the long key in: {stderr}"));
    assert!(key_line.contains("over the limit of 4096"), "{key_line}");
    assert!(
        key_line.len() < 4096 + 512,
        "a {} byte log line",
        key_line.len()
    );
    let conf_line = stderr
        .lines()
        .find(|l| l.contains(key))
        .unwrap_or_else(|| panic!("no line for {key} in: {stderr}"));
    assert!(conf_line.contains("--max-conf-bytes"), "{conf_line}");
}
