//! Cluster-wide limits against real `redis-server` processes, each test with its own server on a
//! unix socket (no port races, never 6379).
//!
//! Without `redis-server` on the PATH these tests print that they were skipped and pass, unless
//! `REDIS_TESTS=require` (CI) makes that a failure (tests/common/redis_server.rs).

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::redis_server::Server as Redis;
use common::{connect_spawned, runner_command, status, storm, Spawned};
use ext_plugin_catalogue as plugins;
use ext_plugin_runner::model::{HttpReqCallReq, ReqAction};
use ext_plugin_runner::testing::{request, temp_socket_path, FakeGateway, TestRunner};
use ext_plugin_sdk::Method;

const PRE: &str = "route#1#ext-plugin-pre-req#1";

/// Whether the tests can run; loud when they cannot.
fn redis_available() -> bool {
    common::redis_server::available("redis_limits")
}

/// A runner process (killed on drop) and the socket it listens on.
struct Runner {
    _process: Spawned,
    socket: PathBuf,
}

fn spawn_runner() -> Runner {
    let socket = temp_socket_path();
    let child = runner_command(&socket)
        .spawn()
        .expect("spawning the runner");
    Runner {
        _process: Spawned(child),
        socket,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_runner_processes_share_one_count_and_one_rate() {
    if !redis_available() {
        return;
    }
    let redis = Redis::unix();
    let runners: Vec<Runner> = (0..3).map(|_| spawn_runner()).collect();
    let count = format!(
        r#"{{"count": 10, "time_window": 60, "rejected_code": 429, "policy": "redis",
            "redis_host": "{}", "redis_timeout": 2000}}"#,
        redis.host()
    );
    // Two connections per runner, as two gateway workers.
    let gws = prepared(&runners, 2, PRE, &[("limit-count", &count)]).await;
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
    let key = "route#2#ext-plugin-pre-req#1";
    let gws = prepared(&runners, 1, key, &[("limit-req", &rate)]).await;
    let codes = storm(gws, &req, 6).await;
    assert_eq!(codes.iter().filter(|&&c| c == 200).count(), 3, "{codes:?}");
}

/// The outage tests' set-up: a server, an in-process runner, the `redis_timeout` they use and
/// the longest a call may take (a margin for a loaded machine: the point is "not seconds of
/// reconnect back-off").
async fn outage_setup() -> (Redis, TestRunner, Duration, Duration) {
    let redis = Redis::unix();
    let runner = TestRunner::start(plugins::builtin()).await;
    let timeout = Duration::from_millis(300);
    (redis, runner, timeout, timeout + Duration::from_secs(2))
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
    let (mut redis, runner, timeout, bound) = outage_setup().await;
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
        redis.outage(phase);
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

/// `gateways` connections to each of `runners`, each with `chain` prepared under `key`.
async fn prepared(
    runners: &[Runner],
    gateways: usize,
    key: &str,
    chain: &[(&str, &str)],
) -> Vec<(FakeGateway, u32)> {
    common::prepared(runners.iter().map(|r| &r.socket), gateways, key, chain).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_runners_share_a_sliding_window_and_a_leased_quota() {
    if !redis_available() {
        return;
    }
    let redis = Redis::unix();
    let runners: Vec<Runner> = (0..3).map(|_| spawn_runner()).collect();
    let req = request(Method::Get, "/").with_src_ip("10.0.0.1");

    // Sliding, exact: one round trip per request, `count` in total.
    let sliding = format!(
        r#"{{"count": 10, "time_window": 60, "window_type": "sliding", "rejected_code": 429,
            "policy": "redis", "redis_host": "{}", "redis_timeout": 2000}}"#,
        redis.host()
    );
    let gws = prepared(&runners, 2, PRE, &[("limit-count", &sliding)]).await;
    let codes = storm(gws, &req, 8).await;
    assert_eq!(
        codes.iter().filter(|&&c| c == 200).count(),
        10,
        "sliding: exactly `count` across three runners: {codes:?}"
    );
    assert!(codes.iter().all(|&c| c == 200 || c == 429), "{codes:?}");

    // Leasing: runners take grants and spend them locally; never more than `count` in total,
    // and the shared counter says so too.
    let leased = format!(
        r#"{{"count": 50, "time_window": 60, "sync_interval": 0.2, "rejected_code": 429,
            "policy": "redis", "redis_host": "{}", "redis_timeout": 2000}}"#,
        redis.host()
    );
    let key = "route#2#ext-plugin-pre-req#1";
    let gws = prepared(&runners, 2, key, &[("limit-count", &leased)]).await;
    let codes = storm(gws, &req, 40).await;
    let admitted = codes.iter().filter(|&&c| c == 200).count();
    assert!(
        admitted <= 50,
        "leasing never over-admits: {admitted} of {}",
        codes.len()
    );
    // Under-admission is bounded by the grants left unspent (at most a quarter of what was
    // left per grant per runner): with 240 requests for 50 most of the quota is spent.
    assert!(admitted >= 25, "leasing admitted only {admitted}");
    assert!(codes.iter().all(|&c| c == 200 || c == 429), "{codes:?}");
    let redis::Value::Array(keys) = redis.cmd(&["KEYS", "{a6r:limit-count:*"]).unwrap() else {
        panic!()
    };
    let mut granted = 0;
    for k in keys {
        let redis::Value::BulkString(k) = k else {
            panic!()
        };
        let k = String::from_utf8(k).unwrap();
        if let Ok(redis::Value::BulkString(v)) = redis.cmd(&["GET", &k]) {
            granted = String::from_utf8(v).unwrap().parse::<usize>().unwrap();
        }
    }
    assert!(
        (admitted..=50).contains(&granted),
        "granted {granted}, admitted {admitted}"
    );
}

/// The correlation id the runner set on an admitted request (limit-conn's release key).
fn correlation_id(resp: &ext_plugin_runner::model::HttpReqCallResp) -> String {
    let ReqAction::Rewrite(r) = &resp.action else {
        panic!("expected a rewrite: {:?}", resp.action)
    };
    let h = r.headers.iter().find(|h| h.name == "x-a6-runner-req");
    h.and_then(|h| h.value.as_deref()).unwrap().to_owned()
}

/// Calls `token` until it is admitted; how long that took (a rejected call is not counted).
async fn until_admitted(
    gw: &mut FakeGateway,
    token: u32,
    req: &HttpReqCallReq,
    within: Duration,
) -> Duration {
    let start = Instant::now();
    while status(&gw.call(token, req).await.unwrap().action) != 200 {
        assert!(start.elapsed() < within, "not admitted within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_conn_holds_across_runners_and_a_dead_runners_slots_free_within_a_lease() {
    if !redis_available() {
        return;
    }
    let redis = Redis::unix();
    let mut runners: Vec<Runner> = (0..3).map(|_| spawn_runner()).collect();
    let conf = format!(
        r#"{{"conn": 2, "burst": 1, "default_conn_delay": 0.01, "rejected_code": 429,
            "policy": "redis", "redis_host": "{}", "redis_timeout": 2000, "key_ttl": 2}}"#,
        redis.host()
    );
    let chain = [("limit-conn", conf.as_str())];
    let req = request(Method::Get, "/").with_src_ip("10.0.0.1");
    // No response phase: every admitted request stays in flight.
    let gws = prepared(&runners, 2, PRE, &chain).await;
    let codes = storm(gws, &req, 3).await;
    assert_eq!(
        codes.iter().filter(|&&c| c == 200).count(),
        3,
        "`conn + burst` in flight across three runners: {codes:?}"
    );
    assert!(codes.iter().all(|&c| c == 200 || c == 429), "{codes:?}");

    // The slots expire after `key_ttl`: then one runner takes all three and is killed.
    let mut gws = prepared(&runners[..1], 1, PRE, &chain).await;
    let (mut a, a_token) = gws.pop().unwrap();
    until_admitted(&mut a, a_token, &req, Duration::from_secs(6)).await;
    for _ in 0..2 {
        assert_eq!(status(&a.call(a_token, &req).await.unwrap().action), 200);
    }
    let killed = Instant::now();
    drop(a);
    drop(runners.remove(0));
    let mut gws = prepared(&runners[..1], 1, PRE, &chain).await;
    let (mut b, b_token) = gws.pop().unwrap();
    assert_eq!(
        status(&b.call(b_token, &req).await.unwrap().action),
        429,
        "the dead runner's slots are still held"
    );
    until_admitted(&mut b, b_token, &req, Duration::from_secs(6)).await;
    let freed = killed.elapsed();
    // Within one lease (2 s) plus a margin for a loaded machine; APISIX's default is an hour.
    assert!(freed < Duration::from_secs(4), "freed after {freed:?}");

    // The response phase releases a slot at once: B holds one, takes two more, is full, and
    // answering one of its requests lets the next in.
    let post = b
        .prepare("route#1#ext-plugin-post-resp#1", &chain)
        .await
        .unwrap();
    let held = b.call(b_token, &req).await.unwrap();
    let id = correlation_id(&held);
    b.call(b_token, &req).await.unwrap();
    assert_eq!(status(&b.call(b_token, &req).await.unwrap().action), 429);
    b.set_var("http_x_a6_runner_req", &id);
    b.resp_call(post, 200, &[]).await.unwrap();
    let took = until_admitted(&mut b, b_token, &req, Duration::from_secs(1)).await;
    assert!(
        took < Duration::from_secs(1),
        "released by the response: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_conn_with_redis_paused_or_stopped_answers_by_the_failure_order() {
    if !redis_available() {
        return;
    }
    let (mut redis, runner, timeout, bound) = outage_setup().await;
    let conf = |extra: &str| {
        format!(
            r#"{{"conn": 1, "burst": 1, "default_conn_delay": 0.01, "policy": "redis",
                "redis_host": "{}", "redis_timeout": {} {extra}}}"#,
            redis.host(),
            timeout.as_millis()
        )
    };
    let mut gw = runner.connect().await;
    let mut tokens = Vec::new();
    for (i, extra) in [
        "",
        r#", "allow_degradation": true"#,
        r#", "fallback": "local""#,
    ]
    .into_iter()
    .enumerate()
    {
        let key = format!("route#{}#ext-plugin-pre-req#1", i + 1);
        let chain = [("limit-conn", conf(extra))];
        let chain: Vec<(&str, &str)> = chain.iter().map(|(p, c)| (*p, c.as_str())).collect();
        tokens.push(gw.prepare(&key, &chain).await.unwrap());
    }
    let [strict, degrade, local] = tokens[..] else {
        unreachable!()
    };
    let req = request(Method::Get, "/").with_src_ip("10.0.0.7");
    // Up: the strict route counts in Redis.
    assert_eq!(status(&timed(&mut gw, strict, &req).await.0), 200);
    for phase in ["paused", "stopped"] {
        redis.outage(phase);
        let (a, took) = timed(&mut gw, strict, &req).await;
        assert!(took < bound, "{phase}: waited {took:?}");
        let ReqAction::Stop(s) = a else {
            panic!("{phase}: {a:?}")
        };
        assert_eq!(
            (s.status, &s.body[..]),
            (500, &b""[..]),
            "{phase}: APISIX's 500"
        );
        let (a, took) = timed(&mut gw, degrade, &req).await;
        assert!(took < bound, "{phase}: waited {took:?}");
        assert!(
            matches!(a, ReqAction::Continue | ReqAction::Rewrite(_)),
            "{phase}: {a:?}"
        );
        // The local limiter counts: `conn + burst` of this runner, then 503.
        let mut codes = Vec::new();
        for _ in 0..3 {
            let (a, took) = timed(&mut gw, local, &req).await;
            assert!(took < bound, "{phase}: waited {took:?}");
            codes.push(status(&a));
        }
        let expect: &[u16] = if phase == "paused" {
            &[200, 200, 503]
        } else {
            &[503, 503, 503]
        };
        assert_eq!(codes, expect, "{phase}: the local limiter decides");
    }
    runner.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leasing_spends_its_grant_through_an_outage_and_then_fails_by_the_order() {
    if !redis_available() {
        return;
    }
    let (mut redis, runner, timeout, bound) = outage_setup().await;
    let conf = format!(
        r#"{{"count": 100, "time_window": 60, "sync_interval": 0.5, "policy": "redis",
            "redis_host": "{}", "redis_timeout": {}}}"#,
        redis.host(),
        timeout.as_millis()
    );
    let mut gw = runner.connect().await;
    let token = gw.prepare(PRE, &[("limit-count", &conf)]).await.unwrap();
    let req = request(Method::Get, "/").with_src_ip("10.0.0.9");
    // Enough requests for the grants to follow the rate, then time for the last refill to land.
    for _ in 0..20 {
        assert_eq!(status(&timed(&mut gw, token, &req).await.0), 200);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    redis.outage("stopped");
    // Whatever was granted is spent without Redis; once the pool is empty each call fails as
    // the conf says (500, no fallback), never waiting past the timeout.
    let mut codes = Vec::new();
    for _ in 0..30 {
        let (a, took) = timed(&mut gw, token, &req).await;
        assert!(took < bound, "waited {took:?}");
        codes.push(status(&a));
    }
    assert_eq!(codes[0], 200, "the pool held tokens: {codes:?}");
    let first_500 = codes
        .iter()
        .position(|&c| c == 500)
        .expect("the pool empties");
    assert!(
        codes[first_500..].iter().all(|&c| c == 500),
        "after the pool emptied: {codes:?}"
    );
    runner.stop().await;
}

/// Round trips the runners have made to Redis so far: the script calls (`EVAL`, `EVALSHA`,
/// `SCRIPT LOAD`, ...) in `INFO commandstats`. Redis also counts each command a script runs,
/// under that command's name, so the total of every command is not the number of round trips;
/// the limiters send nothing but scripts.
fn round_trips(redis: &Redis) -> u64 {
    let info = redis.text(&["INFO", "commandstats"]);
    info.lines()
        .filter_map(|l| l.strip_prefix("cmdstat_"))
        .filter_map(|l| l.split_once(':'))
        .filter(|(name, _)| {
            name.starts_with("eval") || name.starts_with("fcall") || name.starts_with("script|")
        })
        .map(|(_, stats)| {
            let calls = stats.split(',').find_map(|s| s.strip_prefix("calls="));
            calls.unwrap().parse::<u64>().unwrap()
        })
        .sum()
}

/// Calls `token` `n` times; every answer's status must be `want`.
async fn calls(gw: &mut FakeGateway, token: u32, req: &HttpReqCallReq, n: usize, want: u16) {
    for i in 0..n {
        let got = status(&gw.call(token, req).await.unwrap().action);
        assert_eq!(got, want, "call {i} of {n}");
    }
}

/// Round trips counted, not timed: exact mode makes one per admitted request and none per
/// reject once a key is known to be exhausted; leasing far fewer than one per call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_mode_makes_one_round_trip_per_admit_and_none_per_known_reject() {
    if !redis_available() {
        return;
    }
    let redis = Redis::unix();
    let runner = spawn_runner();
    let mut gw = connect_spawned(&runner.socket).await;
    let req = request(Method::Get, "/").with_src_ip("10.0.0.1");

    let exact = format!(
        r#"{{"count": 40, "time_window": 60, "rejected_code": 429, "policy": "redis",
            "redis_host": "{}", "redis_timeout": 2000}}"#,
        redis.host()
    );
    let token = gw.prepare(PRE, &[("limit-count", &exact)]).await.unwrap();
    // The first call connects and loads the script: not counted.
    calls(&mut gw, token, &req, 1, 200).await;
    let before = round_trips(&redis);
    calls(&mut gw, token, &req, 39, 200).await;
    let admitted = round_trips(&redis);
    assert_eq!(admitted - before, 39, "one round trip per admitted request");
    // The first reject is Redis's answer; after it the runner knows the window is spent.
    calls(&mut gw, token, &req, 1, 429).await;
    let learned = round_trips(&redis);
    assert_eq!(learned - admitted, 1, "the first reject asks Redis once");
    calls(&mut gw, token, &req, 200, 429).await;
    assert_eq!(
        round_trips(&redis) - learned,
        0,
        "no round trip per reject while the key is exhausted"
    );

    // Leasing: grants sized by the key's rate; a long sync_interval so only the pool running
    // low triggers a refill during the run.
    let leased = format!(
        r#"{{"count": 1000000, "time_window": 60, "sync_interval": 5, "policy": "redis",
            "redis_host": "{}", "redis_timeout": 2000}}"#,
        redis.host()
    );
    let key = "route#2#ext-plugin-pre-req#1";
    let token = gw.prepare(key, &[("limit-count", &leased)]).await.unwrap();
    let before = round_trips(&redis);
    calls(&mut gw, token, &req, 1000, 200).await;
    let spent = round_trips(&redis) - before;
    assert!(
        spent <= 100,
        "leasing: {spent} round trips for 1000 admitted calls (at most one per ten expected)"
    );
}
