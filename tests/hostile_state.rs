//! Hostile clients and confs against the limiters' state, over the real socket (issue 11):
//! leases a client cannot end for another, route state that outlives conf churn, limiter
//! memory that grows with key count and not key length, a warning that is not repeated per
//! prepare, and response replies without hop-by-hop headers.

mod common;

use std::process::Stdio;

use common::{
    connect_spawned, guarded, rewrite, runner_command, runner_error, stop, Spawned, POST, PRE,
};
use ext_plugin_runner::codec::Protocol;
use ext_plugin_runner::model::{ErrorCode, HttpReqCallReq, Method, ReqAction};
use ext_plugin_runner::testing::{request, temp_socket_path, FakeGateway, TestRunner};
use ext_plugin_runner::Config;

/// What nginx's `$http_<name>` holds in the response phase for a request the runner answered
/// with `action`: the header as the runner rewrote it, else as the client sent it.
fn forwarded(req: &HttpReqCallReq, action: &ReqAction, header: &str) -> Option<String> {
    let rewritten = match action {
        ReqAction::Rewrite(r) => r
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(header))
            .map(|h| h.value.as_deref()),
        _ => None,
    };
    rewritten
        .or_else(|| {
            req.headers
                .iter()
                .find(|h| h.name_eq_ignore_case(header))
                .map(|h| h.value())
        })
        .flatten()
        .map(str::to_owned)
}

/// Answers the response phase of a request as the gateway would: every correlation variable
/// a plugin may ask for is the request's header as it was forwarded.
async fn answer(gw: &mut FakeGateway, post: u32, req: &HttpReqCallReq, action: &ReqAction) {
    gw.vars.clear();
    for header in ["x-request-id", "x-a6-runner-req"] {
        if let Some(v) = forwarded(req, action, header) {
            gw.set_var(&format!("http_{}", header.replace('-', "_")), &v);
        }
    }
    guarded("response phase", gw.resp_call(post, 200, &[]))
        .await
        .expect("the response phase succeeds");
}

/// Finding 6: with request-id in the chain, client B sending client A's `X-Request-Id` must not
/// free A's limit-conn slot when B's answer comes back.
async fn a_client_cannot_end_another_clients_lease(p: Protocol) {
    let runner = TestRunner::start(ext_plugin_catalogue::builtin()).await;
    let mut gw = runner.connect_with(p).await;
    let conf = r#"{"conn": 1, "burst": 0, "default_conn_delay": 0.1, "rejected_code": 503}"#;
    let chain = [("request-id", "{}"), ("limit-conn", conf)];
    let pre = gw.prepare(PRE, &chain).await.unwrap();
    let post = gw.prepare(POST, &chain).await.unwrap();
    let from = |ip: &str| {
        request(Method::Get, "/")
            .with_src_ip(ip)
            .with_header("X-Request-Id", "shared")
    };
    let (a, b) = (from("192.0.2.1"), from("192.0.2.2"));
    let a_action = gw.call(pre, &a).await.unwrap().action;
    rewrite(a_action.clone());
    let b_action = gw.call(pre, &b).await.unwrap().action;
    rewrite(b_action.clone());
    // B's answer comes back: it may free B's slot, never A's.
    answer(&mut gw, post, &b, &b_action).await;
    assert_eq!(
        stop(gw.call(pre, &a).await.unwrap()).status,
        503,
        "{p:?}: A still holds its one slot"
    );
    assert!(
        matches!(
            gw.call(pre, &b).await.unwrap().action,
            ReqAction::Rewrite(_)
        ),
        "{p:?}: B's own answer freed B's slot"
    );
    // A's answer frees A's slot.
    answer(&mut gw, post, &a, &a_action).await;
    rewrite(gw.call(pre, &a).await.unwrap());
}
for_each_protocol!(
    a_client_cannot_end_another_clients_lease_over_each_codec,
    a_client_cannot_end_another_clients_lease
);

/// Finding 20: a plugin that changes one response header gets back every upstream header
/// except the hop-by-hop and framing ones, which the gateway sets itself (echoed, the client
/// would see `Transfer-Encoding: chunked` twice).
async fn response_replies_carry_no_hop_by_hop_headers(p: Protocol) {
    let runner = TestRunner::start(ext_plugin_catalogue::builtin()).await;
    let mut gw = runner.connect_with(p).await;
    let conf = r#"{"headers": {"set": {"X-Rewritten": "1"}}}"#;
    let post = gw
        .prepare(POST, &[("response-rewrite", conf)])
        .await
        .unwrap();
    let upstream = [
        ("Content-Type", "text/plain"),
        ("Transfer-Encoding", "chunked"),
        ("Connection", "keep-alive, X-Hop"),
        ("X-Hop", "1"),
        ("Keep-Alive", "timeout=60"),
        ("TE", "trailers"),
        ("Trailer", "X-Checksum"),
        ("Upgrade", "h2c"),
        ("Proxy-Connection", "keep-alive"),
        ("Content-Length", "5"),
        ("X-Kept", "yes"),
    ];
    let reply = gw.resp_call(post, 200, &upstream).await.unwrap();
    let names: Vec<&str> = reply.headers.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(
        names,
        ["Content-Type", "X-Kept", "X-Rewritten"],
        "{p:?}: {reply:?}"
    );
}
for_each_protocol!(
    response_replies_carry_no_hop_by_hop_headers_over_each_codec,
    response_replies_carry_no_hop_by_hop_headers
);

/// Finding 7: a route's limiter state survives its chain's eviction from the conf cache. A
/// used-up limit-count quota, a conf cache churned past its capacity by unrelated routes (a
/// small cache keeps the test fast), the route prepared again: the quota is still used up.
#[tokio::test]
async fn limiter_state_survives_conf_cache_churn() {
    let config = Config {
        conf_cache_capacity: 16,
        ..Config::default()
    };
    let runner = TestRunner::start_with(config, ext_plugin_catalogue::builtin()).await;
    let mut gw = runner.connect().await;
    let quota = [("limit-count", r#"{"count": 2, "time_window": 600}"#)];
    let key = "route#victim#ext-plugin-pre-req#1";
    let token = gw.prepare(key, &quota).await.unwrap();
    let req = request(Method::Get, "/");
    for _ in 0..2 {
        rewrite(gw.call(token, &req).await.unwrap());
    }
    assert_eq!(stop(gw.call(token, &req).await.unwrap()).status, 503);
    // Unrelated routes, half of them limiters with state of their own, churn the cache.
    for i in 0..64 {
        let chain: &[(&str, &str)] = if i % 2 == 0 {
            &[("limit-count", r#"{"count": 9, "time_window": 60}"#)]
        } else {
            &[("request-id", "{}")]
        };
        gw.prepare(&format!("route#churn{i}#ext-plugin-pre-req#1"), chain)
            .await
            .unwrap();
    }
    assert_eq!(
        runner_error(gw.call(token, &req).await),
        ErrorCode::ConfTokenNotFound,
        "the route's chain was evicted"
    );
    let token = gw.prepare(key, &quota).await.unwrap();
    assert_eq!(
        stop(gw.call(token, &req).await.unwrap()).status,
        503,
        "the quota is still used up"
    );
}

/// Finding 13: limit-conn without its post-resp half warns once per route, not on every
/// prepare (5 000 prepares once wrote 329 MB of log).
#[tokio::test]
async fn a_missing_post_resp_half_is_logged_once_per_route() {
    let socket = temp_socket_path();
    let mut child = Spawned(
        runner_command(&socket)
            .args(["--log", "info"])
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning the runner"),
    );
    let stderr = drain_stderr(&mut child);
    let mut gw = connect_spawned(&socket).await;
    let conf = r#"{"conn": 1, "burst": 0, "default_conn_delay": 0.1}"#;
    for version in 0..200 {
        for route in ["a", "b"] {
            let key = format!("route#{route}#ext-plugin-pre-req#{version}");
            gw.prepare(&key, &[("limit-conn", conf)]).await.unwrap();
        }
    }
    drop(gw);
    let stderr = stop_spawned(child, stderr);
    let warned: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("ext-plugin-post-resp") && l.contains("WARN"))
        .collect();
    assert_eq!(warned.len(), 2, "one line per route: {warned:#?}");
}

/// SIGTERM, then what the runner wrote to stderr.
fn stop_spawned(child: Spawned, stderr: std::thread::JoinHandle<String>) -> String {
    let pid = nix::unistd::Pid::from_raw(child.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    drop(child);
    stderr.join().expect("the stderr reader")
}

/// Reads the child's stderr as it comes (a full pipe would block the runner's logging).
fn drain_stderr(child: &mut Spawned) -> std::thread::JoinHandle<String> {
    use std::io::Read;
    let mut pipe = child.0.stderr.take().expect("stderr piped");
    std::thread::spawn(move || {
        let mut out = String::new();
        pipe.read_to_string(&mut out).unwrap();
        out
    })
}

/// The runner's resident memory, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status");
    kb * 1024
}

/// Finding 12: a limiter's memory grows with the number of keys, not their length. 8 000
/// clients with 4 KiB keys would pin 32 MiB of key bytes alone; stored as hashes they take a
/// few hundred KiB. Measured as the runner process's own RSS growth.
#[tokio::test]
async fn limiter_memory_grows_with_key_count_not_key_length() {
    const KEYS: usize = 8_000;
    const KEY_LEN: usize = 4096;
    let socket = temp_socket_path();
    let child = Spawned(
        runner_command(&socket)
            .spawn()
            .expect("spawning the runner"),
    );
    let mut gw = connect_spawned(&socket).await;
    let conf = r#"{"count": 1000, "time_window": 600, "key_type": "var", "key": "http_x_user"}"#;
    let token = gw.prepare(PRE, &[("limit-count", conf)]).await.unwrap();
    let user = |i: usize| format!("{i:0KEY_LEN$}");
    // Warm up: the connection's buffers and the store's first allocations.
    for i in 0..200 {
        let req = request(Method::Get, "/").with_header("x-user", &user(KEYS + i));
        rewrite(gw.call(token, &req).await.unwrap());
    }
    let before = rss_bytes(child.0.id());
    for i in 0..KEYS {
        let req = request(Method::Get, "/").with_header("x-user", &user(i));
        rewrite(gw.call(token, &req).await.unwrap());
    }
    let grown = rss_bytes(child.0.id()).saturating_sub(before);
    let key_bytes = (KEYS * KEY_LEN) as u64;
    eprintln!("{KEYS} keys of {KEY_LEN} bytes: RSS +{} KiB", grown / 1024);
    assert!(
        grown < key_bytes / 3,
        "{KEYS} keys of {KEY_LEN} bytes grew the runner by {} KiB",
        grown / 1024
    );
}
