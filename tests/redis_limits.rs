//! Cluster-wide limits against real `redis-server` processes, each test with its own server on a
//! unix socket (no port races, never 6379).
//!
//! Without `redis-server` on the PATH these tests print that they were skipped and pass, unless
//! `REDIS_TESTS=require` (CI) makes that a failure (tests/common/redis_server.rs).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::redis_server::Server as Redis;
use common::{status, storm};
use ext_plugin_catalogue as plugins;
use ext_plugin_runner::codec::Protocol;
use ext_plugin_runner::model::{HttpReqCallReq, ReqAction};
use ext_plugin_runner::testing::{request, temp_socket_path, FakeGateway, TestRunner};
use ext_plugin_sdk::Method;

const BIN: &str = env!("CARGO_BIN_EXE_ext-plugin-runner");
const PRE: &str = "route#1#ext-plugin-pre-req#1";

/// Whether the tests can run; loud when they cannot.
fn redis_available() -> bool {
    common::redis_server::available("redis_limits")
}

/// A runner process, killed on drop.
struct Spawned(Child, PathBuf);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_runner() -> Spawned {
    let path = temp_socket_path();
    let child = Command::new(BIN)
        .env("APISIX_LISTEN_ADDRESS", format!("unix:{}", path.display()))
        .env("APISIX_CONF_EXPIRE_TIME", "3600")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning the runner");
    Spawned(child, path)
}

async fn connect(path: &Path) -> FakeGateway {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match FakeGateway::connect(path, Protocol::Capnp).await {
            Ok(gw) => return gw,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("runner never listened on {}: {e}", path.display()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_runner_processes_share_one_count_and_one_rate() {
    if !redis_available() {
        return;
    }
    let redis = Redis::unix();
    let runners: Vec<Spawned> = (0..3).map(|_| spawn_runner()).collect();
    let count = format!(
        r#"{{"count": 10, "time_window": 60, "rejected_code": 429, "policy": "redis",
            "redis_host": "{}", "redis_timeout": 2000}}"#,
        redis.host()
    );
    // Two connections per runner, as two gateway workers.
    let mut gws = Vec::new();
    for r in &runners {
        for _ in 0..2 {
            let mut gw = connect(&r.1).await;
            let token = gw.prepare(PRE, &[("limit-count", &count)]).await.unwrap();
            gws.push((gw, token));
        }
    }
    let req = request(Method::Get, "/").with_src_ip("10.0.0.1");
    let codes = storm(gws, &req, 8).await;
    let admitted = codes.iter().filter(|&&c| c == 200).count();
    assert_eq!(
        admitted, 10,
        "exactly `count` across three runners: {codes:?}"
    );
    assert!(codes.iter().all(|&c| c == 200 || c == 429), "{codes:?}");
    // Rejected requests were not counted: the counter stays at the limit.
    let keys = redis.cmd(&["KEYS", "*"]).unwrap();
    let redis::Value::Array(keys) = keys else {
        panic!("{keys:?}")
    };
    assert_eq!(keys.len(), 1, "one key for one limit key: {keys:?}");
    let redis::Value::BulkString(key) = &keys[0] else {
        panic!()
    };
    let key = String::from_utf8(key.clone()).unwrap();
    assert!(
        key.starts_with("{a6r:limit-count:") && key.ends_with(":0:10.0.0.1}"),
        "{key}"
    );
    assert_eq!(
        redis.cmd(&["GET", &key]).unwrap(),
        redis::Value::BulkString(b"10".to_vec())
    );

    // limit-req: one request per 10 s with a burst of 2, across the three: exactly 3 pass.
    let rate = format!(
        r#"{{"rate": 0.1, "burst": 2, "nodelay": true, "rejected_code": 429, "policy": "redis",
            "redis_host": "{}"}}"#,
        redis.host()
    );
    let mut gws = Vec::new();
    for r in &runners {
        let mut gw = connect(&r.1).await;
        let token = gw
            .prepare("route#2#ext-plugin-pre-req#1", &[("limit-req", &rate)])
            .await
            .unwrap();
        gws.push((gw, token));
    }
    let codes = storm(gws, &req, 6).await;
    assert_eq!(codes.iter().filter(|&&c| c == 200).count(), 3, "{codes:?}");
}

async fn timed(gw: &mut FakeGateway, token: u32, req: &HttpReqCallReq) -> (ReqAction, Duration) {
    let start = Instant::now();
    let action = gw.call(token, req).await.unwrap().action;
    (action, start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_stopped_and_restarted_answers_by_the_failure_order() {
    if !redis_available() {
        return;
    }
    let mut redis = Redis::unix();
    let runner = TestRunner::start(plugins::builtin()).await;
    let timeout = Duration::from_millis(300);
    // A margin for a loaded machine: the point is "not seconds of reconnect back-off".
    let bound = timeout + Duration::from_secs(2);
    let conf = |extra: &str| {
        format!(
            r#"{{"count": 3, "time_window": 60, "policy": "redis", "redis_host": "{}",
                "redis_timeout": {} {extra}}}"#,
            redis.host(),
            timeout.as_millis()
        )
    };
    let mut gw = runner.connect().await;
    let strict = gw
        .prepare(
            "route#1#ext-plugin-pre-req#1",
            &[("limit-count", &conf(""))],
        )
        .await
        .unwrap();
    let degrade = gw
        .prepare(
            "route#2#ext-plugin-pre-req#1",
            &[("limit-count", &conf(r#", "allow_degradation": true"#))],
        )
        .await
        .unwrap();
    let local = gw
        .prepare(
            "route#3#ext-plugin-pre-req#1",
            &[("limit-count", &conf(r#", "fallback": "local""#))],
        )
        .await
        .unwrap();
    let req = request(Method::Get, "/").with_src_ip("10.0.0.7");

    for phase in ["paused", "stopped"] {
        if phase == "paused" {
            redis.cmd(&["CLIENT", "PAUSE", "4000", "ALL"]).unwrap();
        } else {
            redis.stop();
        }
        // No fallback: APISIX's 500.
        let (a, took) = timed(&mut gw, strict, &req).await;
        assert!(took < bound, "{phase}: waited {took:?}");
        let ReqAction::Stop(s) = a else {
            panic!("{phase}: {a:?}")
        };
        assert_eq!(s.status, 500, "{phase}");
        assert_eq!(&s.body[..], b"{\"error_msg\":\"failed to limit count\"}\n");
        // allow_degradation: passes, without quota headers.
        let (a, took) = timed(&mut gw, degrade, &req).await;
        assert!(took < bound, "{phase}: waited {took:?}");
        assert_eq!(a, ReqAction::Continue, "{phase}");
        // fallback local: the in-process limiter counts (3 per window, per node).
        let mut codes = Vec::new();
        for _ in 0..4 {
            let (a, took) = timed(&mut gw, local, &req).await;
            assert!(took < bound, "{phase}: waited {took:?}");
            codes.push(status(&a));
        }
        if phase == "paused" {
            assert_eq!(
                codes,
                [200, 200, 200, 503],
                "{phase}: the local limiter decides"
            );
        } else {
            assert_eq!(
                codes, [503; 4],
                "{phase}: the local count of this window goes on"
            );
        }
    }

    // Back: exact again within seconds (the breaker probes every 1 to 5 s).
    redis.restart();
    let fresh = request(Method::Get, "/").with_src_ip("10.0.0.8");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (a, took) = timed(&mut gw, strict, &fresh).await;
        assert!(took < bound, "recovering: waited {took:?}");
        if status(&a) != 500 {
            break;
        }
        assert!(Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut codes = Vec::new();
    for _ in 0..3 {
        codes.push(status(&timed(&mut gw, strict, &fresh).await.0));
    }
    assert_eq!(
        codes,
        [200, 200, 503],
        "one was admitted while probing; 3 in all"
    );
    runner.stop().await;
}

#[tokio::test]
async fn an_unreachable_backend_prepares_lazily_and_fails_fast() {
    let runner = TestRunner::start(plugins::builtin()).await;
    let mut gw = runner.connect().await;
    let missing = std::env::temp_dir().join(format!("no-redis-{}.sock", std::process::id()));
    let conf = format!(
        r#"{{"count": 3, "time_window": 60, "policy": "redis", "redis_host": "unix:{}", "redis_timeout": 200}}"#,
        missing.display()
    );
    let token = gw
        .prepare(PRE, &[("limit-count", &conf)])
        .await
        .expect("lazy connect");
    let req = request(Method::Get, "/").with_src_ip("10.0.0.1");
    for _ in 0..3 {
        let (a, took) = timed(&mut gw, token, &req).await;
        assert!(took < Duration::from_secs(3), "{took:?}");
        assert_eq!(status(&a), 500);
    }
    // Bad confs fail prepare (each under its own key: a prepared key is cached).
    for (i, bad) in [
        r#"{"count": 1, "time_window": 1, "policy": "redis"}"#,
        r#"{"count": 1, "time_window": 1, "policy": "redis", "redis_host": "h", "redis_cluster_name": "c"}"#,
        r#"{"count": 1, "time_window": 1, "redis_host": "127.0.0.1"}"#,
    ]
    .into_iter()
    .enumerate()
    {
        let key = format!("route#{}#ext-plugin-pre-req#1", i + 10);
        assert!(gw.prepare(&key, &[("limit-count", bad)]).await.is_err(), "{bad}");
    }
    runner.stop().await;
}
