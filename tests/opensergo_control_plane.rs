//! The `opensergo` plugin with rules from a control plane: the real runner binary, a fake
//! control plane on 127.0.0.1 (a tonic server on the runner's own protos), and the fake gateway.

#[path = "opensergo/fake.rs"]
mod fake;
#[path = "opensergo/runner.rs"]
mod runner;

use ext_plugin_catalogue::opensergo::pack;
use ext_plugin_catalogue::opensergo::proto::fault_tolerance as ft;
use ext_plugin_catalogue::opensergo::proto::transport::{
    DataWithVersion, Status, SubscribeResponse,
};
use ext_plugin_runner::model::Method;
use ext_plugin_runner::testing::{request, FakeGateway};
use fake::{acks, rate, rule, Fake, RATE, RULE};
use prost_types::Any;
use runner::{set_header, spawn, status, stopped, Spawned};

const NS: &str = "default";
const APP: &str = "foo-app";
const THROTTLE: &str = "fault-tolerance.opensergo.io/v1alpha1/ThrottlingStrategy";
const CONC: &str = "fault-tolerance.opensergo.io/v1alpha1/ConcurrencyLimitStrategy";
const BREAKER: &str = "fault-tolerance.opensergo.io/v1alpha1/CircuitBreakerStrategy";
const PRE: &str = "route#1#ext-plugin-pre-req#1";
const POST: &str = "route#1#ext-plugin-post-resp#1";
const CONF: &str = r#"{"app": "foo-app"}"#;

/// Gives the fake a rate limit of `threshold` per minute on `GET:/rate`.
fn seed_rate(fake: &Fake, threshold: i64) {
    fake.set(NS, APP, RATE, vec![rate(threshold)]);
    fake.set(
        NS,
        APP,
        RULE,
        vec![rule("GET:/rate", "rate", "RateLimitStrategy")],
    );
}

/// Starts a runner following `fake`, prepares the route and waits for `acks` ACKs.
async fn follow(fake: &Fake, acks: usize) -> (Spawned, FakeGateway, u32) {
    let runner = spawn(&[("OPENSERGO_BOOTSTRAP_CONFIG", &fake.bootstrap())]);
    let mut gw = runner.gateway().await;
    let token = gw
        .prepare(PRE, &[("opensergo", CONF)])
        .await
        .expect("the conf prepares");
    fake.wait_acks(acks).await;
    (runner, gw, token)
}

#[tokio::test]
async fn the_initial_push_applies_and_each_strategy_kind_stops_a_request() {
    let fake = Fake::start().await;
    fake.set(NS, APP, RATE, vec![rate(2)]);
    fake.set(
        NS,
        APP,
        THROTTLE,
        vec![pack(
            THROTTLE,
            &ft::ThrottlingStrategy {
                name: "throttle".into(),
                min_interval_millis_of_requests: 60_000,
                queue_timeout_millis: 0,
            },
        )],
    );
    fake.set(
        NS,
        APP,
        CONC,
        vec![pack(
            CONC,
            &ft::ConcurrencyLimitStrategy {
                name: "conc".into(),
                limit_mode: 1,
                max_concurrency: 1,
            },
        )],
    );
    fake.set(
        NS,
        APP,
        BREAKER,
        vec![pack(
            BREAKER,
            &ft::CircuitBreakerStrategy {
                name: "breaker".into(),
                strategy: 2,
                trigger_ratio: 0.5,
                stat_duration: 600, // "60s" after the control plane's ×10: 600 ms of UNKNOWN unit
                recovery_timeout: 600_000,
                recovery_timeout_time_unit: 1,
                min_request_amount: 2,
                ..Default::default()
            },
        )],
    );
    fake.set(
        NS,
        APP,
        RULE,
        vec![
            rule("GET:/rate", "rate", "RateLimitStrategy"),
            rule("GET:/throttle", "throttle", "ThrottlingStrategy"),
            rule("GET:/conc", "conc", "ConcurrencyLimitStrategy"),
            rule("GET:/breaker", "breaker", "CircuitBreakerStrategy"),
        ],
    );
    let (runner, mut gw, token) = follow(&fake, 5).await;

    let got = fake.received();
    let subscribe = got
        .iter()
        .find(|m| m.response_ack.is_empty())
        .expect("a subscribe request");
    let target = subscribe.target.as_ref().unwrap();
    assert_eq!((target.namespace.as_str(), target.app.as_str()), (NS, APP));
    assert_eq!(target.kinds.len(), 6, "{:?}", target.kinds);
    assert!(
        !subscribe.identifier.is_empty(),
        "the stream has an identifier"
    );
    let ack = got.iter().find(|m| m.response_ack == "ACK").unwrap();
    assert_eq!(ack.status.as_ref().unwrap().code, 1);
    assert_eq!(
        ack.request_id, subscribe.request_id,
        "an initial push is acknowledged by its response id"
    );

    assert_eq!(status(&mut gw, token, "/rate").await, 0);
    assert_eq!(status(&mut gw, token, "/rate").await, 0);
    let resp = gw
        .call(token, &request(Method::Get, "/rate"))
        .await
        .unwrap();
    let s = stopped(&resp).expect("the third request is over the threshold");
    assert_eq!(s.status, 429);
    assert_eq!(
        &s.body[..],
        b"{\"error_msg\":\"blocked by OpenSergo RateLimitStrategy\"}\n"
    );

    assert_eq!(status(&mut gw, token, "/throttle").await, 0);
    assert_eq!(
        status(&mut gw, token, "/throttle").await,
        429,
        "one per minute, no queue"
    );

    assert_eq!(status(&mut gw, token, "/conc").await, 0);
    assert_eq!(
        status(&mut gw, token, "/conc").await,
        429,
        "the first still holds the only slot"
    );

    // The breaker learns from the response phase: two 502s of two requests open it.
    let post = gw.prepare(POST, &[("opensergo", CONF)]).await.unwrap();
    for _ in 0..2 {
        let resp = gw
            .call(token, &request(Method::Get, "/breaker"))
            .await
            .unwrap();
        let id = set_header(&resp, "x-a6-runner-req")
            .expect("a correlation id")
            .to_owned();
        gw.set_var("http_x_a6_runner_req", &id);
        gw.resp_call(post, 502, &[]).await.unwrap();
    }
    assert_eq!(status(&mut gw, token, "/breaker").await, 429);
    assert!(
        runner.log().contains("read as seconds"),
        "the UNKNOWN unit is noted"
    );
}

#[tokio::test]
async fn updates_apply_state_survives_an_unchanged_strategy_and_an_empty_push_clears() {
    let fake = Fake::start().await;
    seed_rate(&fake, 2);
    let (_runner, mut gw, token) = follow(&fake, 2).await;
    assert_eq!(status(&mut gw, token, "/rate").await, 0);
    assert_eq!(status(&mut gw, token, "/rate").await, 0);
    assert_eq!(status(&mut gw, token, "/rate").await, 429);

    // The same strategy pushed again (version 2, response id ""): its count stays.
    fake.set(NS, APP, RATE, vec![rate(2)]);
    let got = fake
        .wait_for("the ACK of version 2", |r| acks(r) >= 3)
        .await;
    assert!(
        got.iter()
            .any(|m| m.response_ack == "ACK" && m.request_id.is_empty()),
        "a later push is acknowledged with its empty response id"
    );
    assert_eq!(status(&mut gw, token, "/rate").await, 429, "state kept");

    fake.set(NS, APP, RATE, vec![rate(3)]);
    fake.wait_acks(4).await;
    for _ in 0..3 {
        assert_eq!(
            status(&mut gw, token, "/rate").await,
            0,
            "a new threshold, a fresh count"
        );
    }
    assert_eq!(status(&mut gw, token, "/rate").await, 429);

    // An error answer (code 500, no data) is not "no rules".
    fake.send(SubscribeResponse {
        status: Some(Status {
            code: 500,
            message: "Register watcher error".into(),
            details: vec![],
        }),
        namespace: NS.into(),
        app: APP.into(),
        kind: RULE.into(),
        ..Default::default()
    });
    // Pushes on a stream are handled in order: once the next one is acknowledged, the error
    // answer before it has been seen.
    fake.set(NS, APP, RATE, vec![rate(3)]);
    fake.wait_acks(5).await;
    assert_eq!(
        status(&mut gw, token, "/rate").await,
        429,
        "an error push does not clear"
    );

    fake.set(NS, APP, RULE, vec![]);
    fake.wait_acks(6).await;
    for _ in 0..5 {
        assert_eq!(
            status(&mut gw, token, "/rate").await,
            0,
            "an empty push cleared the rules"
        );
    }
}

#[tokio::test]
async fn an_undecodable_push_is_nacked_and_the_stream_lives() {
    let fake = Fake::start().await;
    seed_rate(&fake, 1);
    let (_runner, mut gw, token) = follow(&fake, 2).await;
    fake.send(SubscribeResponse {
        status: Some(Status {
            code: 200,
            message: String::new(),
            details: vec![],
        }),
        namespace: NS.into(),
        app: APP.into(),
        kind: RATE.into(),
        data_with_version: Some(DataWithVersion {
            data: vec![Any {
                type_url:
                    "type.googleapis.com/io.opensergo.proto.fault_tolerance.v1.RateLimitStrategy"
                        .into(),
                value: vec![0xff, 0xff],
            }],
            version: 9,
        }),
        response_id: "bad-1".into(),
        ..Default::default()
    });
    let got = fake
        .wait_for("a NACK", |r| r.iter().any(|m| m.response_ack == "NACK"))
        .await;
    let nack = got.iter().find(|m| m.response_ack == "NACK").unwrap();
    assert_eq!(nack.status.as_ref().unwrap().code, 4007);
    assert_eq!(nack.request_id, "bad-1");
    assert!(nack
        .status
        .as_ref()
        .unwrap()
        .message
        .contains("does not decode"));
    assert_eq!(status(&mut gw, token, "/rate").await, 0);
    assert_eq!(
        status(&mut gw, token, "/rate").await,
        429,
        "the previous rules stay"
    );

    fake.set(NS, APP, RATE, vec![rate(5)]);
    fake.wait_acks(3).await;
    assert_eq!(
        status(&mut gw, token, "/rate").await,
        0,
        "the same stream took the next push"
    );
    assert_eq!(fake.identifiers().len(), 1, "no reconnect was needed");
}

#[tokio::test]
async fn a_restarted_control_plane_is_followed_and_the_last_rules_apply_meanwhile() {
    let fake = Fake::start().await;
    seed_rate(&fake, 1);
    let (runner, mut gw, token) = follow(&fake, 2).await;
    // Versions on this stream reach 3.
    fake.set(NS, APP, RATE, vec![rate(1)]);
    fake.set(NS, APP, RATE, vec![rate(1)]);
    fake.wait_acks(4).await;
    assert_eq!(status(&mut gw, token, "/rate").await, 0);

    // Disconnected: the last rules keep applying.
    let fake = fake.restart().await;
    assert_eq!(status(&mut gw, token, "/rate").await, 429, "fail-static");
    // The runner reconnects with a new identifier and subscribes again; the restarted control
    // plane counts versions from 1, and its version 2 (below the old stream's 3) is believed.
    fake.wait_acks(2).await;
    let id = fake.identifiers()[0].clone();
    assert!(id.ends_with("-2"), "the second stream of this runner: {id}");
    fake.set(NS, APP, RATE, vec![rate(4)]);
    fake.wait_acks(3).await;
    for _ in 0..4 {
        assert_eq!(
            status(&mut gw, token, "/rate").await,
            0,
            "threshold 4 applies"
        );
    }
    assert_eq!(status(&mut gw, token, "/rate").await, 429);
    assert!(runner.log().contains("reconnecting in"));
}

#[tokio::test]
async fn bootstrap_from_a_file_and_a_bad_bootstrap_is_an_error_the_runner_survives() {
    let fake = Fake::start().await;
    seed_rate(&fake, 1);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), fake.bootstrap()).unwrap();
    let runner = spawn(&[("OPENSERGO_BOOTSTRAP", file.path().to_str().unwrap())]);
    let mut gw = runner.gateway().await;
    let token = gw.prepare(PRE, &[("opensergo", CONF)]).await.unwrap();
    fake.wait_acks(2).await;
    assert_eq!(status(&mut gw, token, "/rate").await, 0);
    assert_eq!(status(&mut gw, token, "/rate").await, 429);

    let bad = spawn(&[("OPENSERGO_BOOTSTRAP_CONFIG", "{\"endpoint\": 10246")]);
    let mut gw = bad.gateway().await;
    let log = bad.wait_log("control plane not used").await;
    assert!(log.contains("OPENSERGO_BOOTSTRAP_CONFIG"), "{log}");
    let token = gw
        .prepare(PRE, &[("opensergo", CONF)])
        .await
        .expect("the runner still serves");
    assert_eq!(status(&mut gw, token, "/rate").await, 0);
    let echo = gw
        .prepare("route#2#ext-plugin-pre-req#1", &[("debug-echo", "{}")])
        .await
        .unwrap();
    assert!(stopped(&gw.call(echo, &request(Method::Get, "/")).await.unwrap()).is_some());
}

/// The TCP sockets a process holds (inodes of /proc/net/tcp{,6} among its fds).
fn tcp_sockets(pid: u32) -> usize {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            l.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(str::to_owned)
        })
        .collect();
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|t| {
            t.lines()
                .skip(1)
                .filter_map(|l| l.split_whitespace().nth(9).map(str::to_owned))
                .collect::<Vec<_>>()
        })
        .filter(|i| inodes.contains(i))
        .count()
}

#[tokio::test]
async fn a_plain_runner_opens_no_connection_and_refuses_the_conf_clearly() {
    let plain = spawn(&[]);
    let mut gw = plain.gateway().await;
    let err = gw.prepare(PRE, &[("opensergo", CONF)]).await;
    assert!(err.is_err(), "no rule source: the conf is refused");
    assert!(plain
        .wait_log("no OpenSergo rule source")
        .await
        .contains("--opensergo-rules"));
    assert_eq!(tcp_sockets(plain.child.id()), 0);

    let fake = Fake::start().await;
    let following = spawn(&[("OPENSERGO_BOOTSTRAP_CONFIG", &fake.bootstrap())]);
    let mut gw = following.gateway().await;
    gw.prepare(PRE, &[("opensergo", CONF)]).await.unwrap();
    fake.wait_for("a subscription", |r| !r.is_empty()).await;
    assert_eq!(
        tcp_sockets(following.child.id()),
        1,
        "the check sees a connection when there is one"
    );
}
