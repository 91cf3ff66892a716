//! The `opensergo` plugin with rules from a file: the real runner binary watching a YAML file of
//! CRDs, driven by the fake gateway.

#[path = "opensergo/runner.rs"]
mod runner;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ext_plugin_runner::model::Method;
use ext_plugin_runner::testing::{request, FakeGateway};
use runner::{set_header, spawn, status, stopped, Spawned};

const PRE: &str = "route#1#ext-plugin-pre-req#1";
const POST: &str = "route#1#ext-plugin-post-resp#1";
const CONF: &str = r#"{"app": "foo-app"}"#;

fn fixture() -> String {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/tests/fixtures/opensergo-rules.yaml");
    std::fs::read_to_string(path).unwrap()
}

struct Rules {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn rules_file(text: &str) -> Rules {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.yaml");
    std::fs::write(&path, text).unwrap();
    Rules { _dir: dir, path }
}

async fn start(rules: &Rules) -> (Spawned, FakeGateway, u32) {
    let runner = spawn(&[(
        "EXT_PLUGIN_RUNNER_OPENSERGO_RULES",
        rules.path.to_str().unwrap(),
    )]);
    let mut gw = runner.gateway().await;
    let token = gw
        .prepare(PRE, &[("opensergo", CONF)])
        .await
        .expect("the conf prepares");
    (runner, gw, token)
}

/// Waits (up to 20 s) until the runner logged `needle` `n` times.
async fn wait_count(runner: &Spawned, needle: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while runner.log().matches(needle).count() < n {
        assert!(
            Instant::now() < deadline,
            "never logged {needle:?} {n} times:\n{}",
            runner.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const LOADED: &str = "rules file loaded";

#[tokio::test]
async fn every_kind_from_the_file_applies() {
    let rules = rules_file(&fixture());
    let (_runner, mut gw, token) = start(&rules).await;

    // RateLimitStrategy, with the rule's HttpRequestFallbackAction.
    assert_eq!(status(&mut gw, token, "/rate").await, 0);
    assert_eq!(status(&mut gw, token, "/rate").await, 0);
    let resp = gw
        .call(token, &request(Method::Get, "/rate"))
        .await
        .unwrap();
    let s = stopped(&resp).expect("over the threshold");
    assert_eq!((s.status, &s.body[..]), (429, &b"Blocked by Sentinel"[..]));
    assert!(s
        .headers
        .iter()
        .any(|h| h.name.as_str() == "X-Sentinel-Limit" && h.value.as_deref() == Some("foo")));

    // ThrottlingStrategy: 100 ms apart, 200 ms of queue.
    let start = Instant::now();
    let codes = [
        status(&mut gw, token, "/throttle").await,
        status(&mut gw, token, "/throttle").await,
        status(&mut gw, token, "/throttle").await,
    ];
    assert_eq!(codes[..2], [0, 0]);
    assert!(
        start.elapsed() >= Duration::from_millis(100),
        "the second request was queued"
    );
    let _ = codes[2]; // passes or not depending on how fast the machine is

    // ConcurrencyLimitStrategy, released by the response phase.
    let post = gw.prepare(POST, &[("opensergo", CONF)]).await.unwrap();
    let held = gw
        .call(token, &request(Method::Get, "/concurrency"))
        .await
        .unwrap();
    assert_eq!(status(&mut gw, token, "/concurrency").await, 429);
    gw.set_var(
        "http_x_a6_runner_req",
        set_header(&held, "x-a6-runner-req").unwrap(),
    );
    gw.resp_call(post, 200, &[]).await.unwrap();
    assert_eq!(status(&mut gw, token, "/concurrency").await, 0, "released");

    // CircuitBreakerStrategy: two 5xx of two answers open it.
    for _ in 0..2 {
        let resp = gw
            .call(token, &request(Method::Get, "/breaker"))
            .await
            .unwrap();
        gw.set_var(
            "http_x_a6_runner_req",
            set_header(&resp, "x-a6-runner-req").unwrap(),
        );
        gw.resp_call(post, 503, &[]).await.unwrap();
    }
    assert_eq!(status(&mut gw, token, "/breaker").await, 429);

    // TrafficRouter and TrafficLane label the request.
    let resp = gw
        .call(
            token,
            &request(Method::Get, "/x").with_header("x-mse-tag", "v2"),
        )
        .await
        .unwrap();
    assert_eq!(set_header(&resp, "x-opensergo-tag"), Some("v2"));
    assert_eq!(set_header(&resp, "x-opensergo-tag-fallback"), Some("v1"));
    let resp = gw
        .call(
            token,
            &request(Method::Get, "/lane").with_header("x-user-id", "12345"),
        )
        .await
        .unwrap();
    assert_eq!(set_header(&resp, "x-opensergo-traffic"), Some("gray"));
    assert_eq!(set_header(&resp, "x-opensergo-tag"), Some("v1"));
}

#[tokio::test]
async fn a_written_file_reloads_a_renamed_one_too_and_a_broken_edit_keeps_the_rules() {
    let text = fixture();
    let rules = rules_file(&text);
    let (runner, mut gw, token) = start(&rules).await;
    wait_count(&runner, LOADED, 1).await;
    for _ in 0..2 {
        assert_eq!(status(&mut gw, token, "/rate").await, 0);
    }
    assert_eq!(status(&mut gw, token, "/rate").await, 429);

    // Written in place.
    std::fs::write(&rules.path, text.replace("threshold: 2", "threshold: 40")).unwrap();
    wait_count(&runner, LOADED, 2).await;
    for _ in 0..5 {
        assert_eq!(status(&mut gw, token, "/rate").await, 0, "threshold 40");
    }

    // Replaced by an atomic rename.
    let tmp = rules.path.with_extension("tmp");
    std::fs::write(&tmp, text.replace("threshold: 2", "threshold: 1")).unwrap();
    std::fs::rename(&tmp, &rules.path).unwrap();
    wait_count(&runner, LOADED, 3).await;
    assert_eq!(status(&mut gw, token, "/rate").await, 0);
    assert_eq!(status(&mut gw, token, "/rate").await, 429, "threshold 1");

    // A broken edit: the error names line and column, the rules stay.
    std::fs::write(
        &rules.path,
        format!(
            "{}\nspec: [unclosed\n",
            text.replace("threshold: 2", "threshold: 1")
        ),
    )
    .unwrap();
    let log = runner.wait_log("does not parse").await;
    assert!(log.contains("line ") && log.contains("column"), "{log}");
    assert_eq!(
        status(&mut gw, token, "/rate").await,
        429,
        "the previous rules stay"
    );

    // A bad object is skipped with a warning naming it; the rest applies.
    std::fs::write(
        &rules.path,
        text.replace("threshold: 2", "threshold: 3").replace(
            "minIntervalOfRequests: '100ms'",
            "minIntervalOfRequests: 'soon'",
        ),
    )
    .unwrap();
    wait_count(&runner, LOADED, 4).await;
    let log = runner.wait_log("ThrottlingStrategy throttling-foo").await;
    assert!(log.contains("skipped"), "{log}");
    assert!(
        log.contains("rule throttle-rule skipped"),
        "the rule that referenced it: {log}"
    );
    for _ in 0..3 {
        assert_eq!(status(&mut gw, token, "/rate").await, 0, "threshold 3");
    }
    assert_eq!(status(&mut gw, token, "/rate").await, 429);
    for _ in 0..5 {
        assert_eq!(
            status(&mut gw, token, "/throttle").await,
            0,
            "no throttling any more"
        );
    }
}

#[test]
fn opensergo_check_lists_what_applies_and_fails_on_a_broken_file() {
    let bin = env!("CARGO_BIN_EXE_ext-plugin-runner");
    let rules = rules_file(&fixture());
    let out = Command::new(bin)
        .args(["--opensergo-check", "--opensergo-rules"])
        .arg(&rules.path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let listing = String::from_utf8(out.stdout).unwrap();
    assert!(
        listing.contains(
            "default/foo-app: GET:/rate: rule rate-rule: RateLimitStrategy rate-limit-foo"
        ),
        "{listing}"
    );
    std::fs::write(&rules.path, "kind: [\n").unwrap();
    let out = Command::new(bin)
        .args(["--opensergo-check", "--opensergo-rules"])
        .arg(&rules.path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line "));
}
