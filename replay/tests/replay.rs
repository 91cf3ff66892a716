//! The replayer against an in-process runner: generated corpora replay with every reply
//! checked, wrong expectations are caught, and a recording reproduces the actions it saw.
//! Small corpora and counts: these run in CI.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use ext_plugin_replay::check::{ActionKind, Expect};
use ext_plugin_replay::compare::compare;
use ext_plugin_replay::corpus::Corpus;
use ext_plugin_replay::drive::{self, Limit, Mode, Settings};
use ext_plugin_replay::echo::EchoServer;
use ext_plugin_replay::plan::{self, Plan};
use ext_plugin_replay::record::{record, Recording};
use ext_plugin_replay::report::Report;
use ext_plugin_replay::scenario::Scenario;
use ext_plugin_runner::codec::Protocol;
use ext_plugin_runner::model::{Method, ReqAction};
use ext_plugin_runner::testing::{request, temp_socket_path, FakeGateway, TestRunner};

fn scenario_file(name: &str) -> Scenario {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../benches/scenarios")
        .join(name);
    Scenario::parse(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn count(connections: usize, depth: usize, n: u64) -> Settings {
    Settings {
        connections,
        mode: Mode::Closed { depth },
        limit: Limit::Count(n),
        warmup: Duration::ZERO,
    }
}

/// Prepares `corpus` on the runner at `path` and replays it (blocking work off the runtime).
async fn replay(path: &Path, corpus: Corpus, settings: Settings) -> Report {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let plan = plan::prepare(&corpus, &mut UnixStream::connect(&path).unwrap()).unwrap();
        drive::run(&path, "runner", &plan, &settings).unwrap()
    })
    .await
    .unwrap()
}

fn assert_clean(r: &Report, calls: u64) {
    assert_eq!(r.mismatch_total(), 0, "{r}");
    assert_eq!(r.error_total(), 0, "{r}");
    assert_eq!(r.calls, calls, "{r}");
    assert_eq!(r.ok, calls, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_corpus_replays_cleanly_in_both_codecs() {
    let runner = TestRunner::start(ext_plugin_catalogue::builtin()).await;
    for protocol in Protocol::ALL {
        // Stops, rewrites, continues, IPv4 and IPv6, extra_info vars and bodies, a resp call.
        let corpus = scenario_file("mixed.json").generate(protocol).unwrap();
        assert!(corpus.calls.iter().any(|c| !c.extra.is_empty()));
        let r = replay(runner.path(), corpus, count(2, 1, 300)).await;
        assert_clean(&r, 300);
        assert_eq!(r.protocol, protocol.name());
    }
    runner.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_and_open_loop_modes_check_every_reply() {
    let runner = TestRunner::start(ext_plugin_catalogue::builtin()).await;
    for protocol in Protocol::ALL {
        let corpus = scenario_file("realistic.json").generate(protocol).unwrap();
        let r = replay(runner.path(), corpus.clone(), count(2, 8, 256)).await;
        assert_clean(&r, 256);
        assert_eq!(r.depth, 8);

        let open = Settings {
            mode: Mode::Open { rate: 4000.0 },
            ..count(2, 1, 100)
        };
        let r = replay(runner.path(), corpus, open).await;
        assert_clean(&r, 100);
        assert_eq!(r.mode, "open");
    }
    runner.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_expectations_are_counted_as_mismatches() {
    let runner = TestRunner::start(ext_plugin_catalogue::builtin()).await;
    // An empty chain continues; this corpus says stop 418, and a resp call status 201.
    let text = r#"{"routes": [{"name": "r"}], "requests": [
        {"route": "r", "count": 30, "expect": {"action": "stop", "status": 418}},
        {"route": "r", "count": 10, "phase": "resp", "expect": {"status": 201}}]}"#;
    let corpus = Scenario::parse(text)
        .unwrap()
        .generate(Protocol::FlatBuffers)
        .unwrap();
    let r = replay(runner.path(), corpus, count(1, 1, 40)).await;
    assert_eq!(r.ok, 0, "{r}");
    assert_eq!(r.mismatches.get("action"), Some(&30), "{r}");
    assert_eq!(r.mismatches.get("status"), Some(&10), "{r}");
    assert!(
        r.samples.iter().any(|s| s.contains("expected Stop")),
        "{:?}",
        r.samples
    );
    runner.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelining_a_corpus_with_extra_info_is_refused() {
    let runner = TestRunner::start(ext_plugin_catalogue::builtin()).await;
    let corpus = scenario_file("mixed.json")
        .generate(Protocol::Capnp)
        .unwrap();
    let path = runner.path().to_owned();
    let err = tokio::task::spawn_blocking(move || {
        let plan = plan::prepare(&corpus, &mut UnixStream::connect(&path).unwrap()).unwrap();
        drive::run(&path, "runner", &plan, &count(1, 4, 10)).unwrap_err()
    })
    .await
    .unwrap();
    assert!(err.to_string().contains("without extra_info"), "{err}");
    runner.stop().await;
}

#[test]
fn the_echo_floor_returns_every_frame() {
    let corpus = scenario_file("trivial.json")
        .generate(Protocol::Capnp)
        .unwrap();
    let echo = EchoServer::start(&temp_socket_path()).unwrap();
    let plan = plan::echo_plan(&corpus).unwrap();
    for depth in [1, 16] {
        let r = drive::run(echo.path(), "echo", &plan, &count(3, depth, 500)).unwrap();
        assert_clean(&r, 500);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_pairs_the_runner_with_the_echo_floor() {
    let runner = TestRunner::start(ext_plugin_catalogue::builtin()).await;
    let corpus = scenario_file("trivial.json")
        .generate(Protocol::FlatBuffers)
        .unwrap();
    let path = runner.path().to_owned();
    let cmp = tokio::task::spawn_blocking(move || {
        let settings: Vec<Settings> = [(1, 1), (2, 4)]
            .into_iter()
            .map(|(c, d)| count(c, d, 200))
            .collect();
        compare("trivial", &corpus, &path, &settings).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(cmp.failures(), 0, "{cmp}");
    assert_eq!(cmp.pairings.len(), 2);
    for p in &cmp.pairings {
        assert_eq!((p.echo.calls, p.runner.calls), (200, 200));
        assert!(p.ratio > 0.0);
    }
    assert!(cmp.to_string().contains("| 2 | 4 |"), "{cmp}");
    runner.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_replays_to_the_same_actions() {
    for protocol in Protocol::ALL {
        let runner = TestRunner::start(ext_plugin_catalogue::builtin()).await;
        let proxy_path = temp_socket_path();
        let file = tempfile::NamedTempFile::new().unwrap();
        let recording = Recording::new(file.path());
        let listener = tokio::net::UnixListener::bind(&proxy_path).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let proxy = tokio::spawn(record(
            listener,
            runner.path().to_owned(),
            recording.clone(),
            async move {
                let _ = stopped.await;
            },
        ));

        // A gateway talking through the proxy: a rewrite, a stop, a continue, an extra_info
        // var, and a response call.
        let mut gw = FakeGateway::connect(&proxy_path, protocol).await.unwrap();
        let guarded = gw
            .prepare(
                "route#g#ext-plugin-pre-req#1",
                &[
                    ("ip-restriction", r#"{"whitelist": ["10.0.0.0/8"]}"#),
                    ("request-id", "{}"),
                ],
            )
            .await
            .unwrap();
        let by_var = gw
            .prepare(
                "route#v#ext-plugin-pre-req#1",
                &[(
                    "limit-count",
                    r#"{"count": 1, "time_window": 600, "key": "server_addr", "rejected_code": 429}"#,
                )],
            )
            .await
            .unwrap();
        let open = gw
            .prepare("route#o#ext-plugin-pre-req#1", &[])
            .await
            .unwrap();
        gw.set_var("server_addr", "10.1.1.1");
        let mut seen = Vec::new();
        for (token, ip) in [
            (guarded, "10.0.0.5"),
            (guarded, "192.0.2.1"),
            (open, "10.0.0.5"),
            (by_var, "10.0.0.5"),
            (by_var, "10.0.0.5"), // over the quota: a 429 stop
        ] {
            let reply = gw
                .call(token, &request(Method::Get, "/x").with_src_ip(ip))
                .await
                .unwrap();
            seen.push(reply.action);
        }
        gw.resp_call(open, 200, &[("content-type", "text/plain")])
            .await
            .unwrap();
        drop(gw);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = stop.send(());
        proxy.await.unwrap();
        assert_eq!(recording.exchanges(), 3 + 5 + 1);

        let corpus = Corpus::parse(&std::fs::read(file.path()).unwrap()).unwrap();
        assert_eq!(corpus.protocol, protocol);
        assert_eq!((corpus.prepares.len(), corpus.calls.len()), (3, 6));
        assert_eq!(corpus.calls[3].extra.len(), 1, "the server_addr lookup");
        let kinds: Vec<ActionKind> = seen.iter().map(ActionKind::of).collect();
        assert_eq!(
            kinds,
            [
                ActionKind::Rewrite,
                ActionKind::Stop,
                ActionKind::Continue,
                ActionKind::Rewrite, // limit-count's quota headers
                ActionKind::Stop
            ]
        );
        assert!(matches!(&seen[4], ReqAction::Stop(s) if s.status == 429));

        // Replayed once, in order, against a fresh runner: the same actions, and limit-count's
        // quota runs out at the same call.
        let fresh = TestRunner::start(ext_plugin_catalogue::builtin()).await;
        let path = fresh.path().to_owned();
        let replayed = corpus.clone();
        let (plan, r) = tokio::task::spawn_blocking(move || {
            let plan: Plan =
                plan::prepare(&replayed, &mut UnixStream::connect(&path).unwrap()).unwrap();
            let r = drive::run(&path, "runner", &plan, &count(1, 1, 6)).unwrap();
            (plan, r)
        })
        .await
        .unwrap();
        assert_clean(&r, 6);
        let expected: Vec<Expect> = plan.calls.iter().map(|c| c.expect.clone()).collect();
        assert!(matches!(
            expected[1],
            Expect::Req {
                action: ActionKind::Stop,
                status: Some(403),
                ..
            }
        ));
        assert!(matches!(
            expected[4],
            Expect::Req {
                action: ActionKind::Stop,
                status: Some(429),
                ..
            }
        ));
        fresh.stop().await;
        runner.stop().await;
    }
}

#[test]
fn bad_scenarios_say_what_is_wrong() {
    let cases = [
        (
            r#"{"routes": [], "requests": [], "bogus": 1}"#,
            "unknown field `bogus`",
        ),
        (
            r#"{"routes": [{"name": "a"}], "requests": [{"route": "b", "count": 1, "expect": {"action": "continue"}}]}"#,
            "requests[0]: no route is named `b`",
        ),
        (
            r#"{"routes": [{"name": "a"}], "requests": [{"route": "a", "count": 1, "method": "FETCH", "expect": {"action": "continue"}}]}"#,
            "unknown method `FETCH`",
        ),
        (
            r#"{"routes": [{"name": "a"}], "requests": [{"route": "a", "count": 1, "src_ip": "v5", "expect": {"action": "continue"}}]}"#,
            "src_ip `v5`",
        ),
        (
            r#"{"routes": [{"name": "a"}], "requests": [{"route": "a", "count": 1, "expect": {}}]}"#,
            "expect needs an action",
        ),
        (
            r#"{"routes": [{"name": "a"}, {"name": "a"}], "requests": []}"#,
            "routes[1]: route name `a` is used twice",
        ),
        (
            r#"{"routes": [{"name": "a"}], "requests": []}"#,
            "makes no calls",
        ),
    ];
    for (text, want) in cases {
        let err = Scenario::parse(text)
            .and_then(|s| s.generate(Protocol::Capnp))
            .unwrap_err();
        assert!(err.to_string().contains(want), "{text}: {err}");
    }
}

#[test]
fn generation_is_deterministic() {
    let a = scenario_file("mixed.json")
        .generate(Protocol::Capnp)
        .unwrap();
    let b = scenario_file("mixed.json")
        .generate(Protocol::Capnp)
        .unwrap();
    assert_eq!(a.to_bytes(), b.to_bytes());
    assert_eq!(Corpus::parse(&a.to_bytes()).unwrap(), a);
}
