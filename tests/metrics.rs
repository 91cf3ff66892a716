//! The metrics endpoint (docs/operations.md): the runner binary started with `--metrics-listen`
//! counts exactly what the calls did, its exposition parses as the Prometheus text format (with
//! the strict parser below) and `promtool check metrics` accepts it; the bind is retried.

mod common;
#[path = "opensergo/fake.rs"]
#[allow(dead_code)] // the opensergo tests use the rest
mod opensergo_fake;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{connect_spawned, runner_command, Spawned};
use ext_plugin_runner::config::Config;
use ext_plugin_runner::metrics::MetricsAddress;
use ext_plugin_runner::model::{ErrorCode, Method, ReqAction};
use ext_plugin_runner::testing::{
    request, temp_socket_path, FakeGateway, GatewayError, TestRunner,
};
use ext_plugin_sdk::harness::Scripted;

fn spawn(socket: &Path, extra: &[&str]) -> Spawned {
    Spawned(
        runner_command(socket)
            .args(["--log", "error"])
            .args(extra)
            .spawn()
            .expect("spawning the runner"),
    )
}

async fn connect(path: &Path) -> FakeGateway {
    connect_spawned(path).await
}

/// Where a test scrapes.
#[derive(Clone)]
enum Target {
    Unix(PathBuf),
    Tcp(std::net::SocketAddr),
}

impl Target {
    fn flag(&self) -> String {
        match self {
            Target::Unix(p) => format!("unix:{}", p.display()),
            Target::Tcp(a) => a.to_string(),
        }
    }
}

/// An HTTP answer: status code, headers (names lower-cased) and body.
struct Answer {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

/// One HTTP/1.1 request (blocking; the endpoint answers and closes).
fn http(target: &Target, method: &str, path: &str) -> std::io::Result<Answer> {
    let request = format!("{method} {path} HTTP/1.1\r\nHost: runner\r\n\r\n");
    let mut raw = Vec::new();
    match target {
        Target::Unix(p) => {
            let mut s = std::os::unix::net::UnixStream::connect(p)?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(request.as_bytes())?;
            s.read_to_end(&mut raw)?;
        }
        Target::Tcp(a) => {
            let mut s = std::net::TcpStream::connect(a)?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(request.as_bytes())?;
            s.read_to_end(&mut raw)?;
        }
    }
    let text = String::from_utf8(raw).expect("an answer in UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect::<HashMap<_, _>>();
    if let Some(len) = headers.get("content-length") {
        assert_eq!(len.parse::<usize>().unwrap(), body.len(), "Content-Length");
    }
    Ok(Answer {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// Scrapes `/metrics`, waiting (within a generous deadline) for the endpoint to come up.
async fn scrape(target: &Target) -> Exposition {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let t = target.clone();
        match tokio::task::spawn_blocking(move || http(&t, "GET", "/metrics"))
            .await
            .unwrap()
        {
            Ok(a) => {
                assert_eq!(a.status, 200);
                assert_eq!(
                    a.headers["content-type"],
                    "text/plain; version=0.0.4; charset=utf-8"
                );
                return Exposition::parse(&a.body)
                    .unwrap_or_else(|e| panic!("bad exposition: {e}\n{}", a.body));
            }
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("no metrics at {}: {e}", target.flag()),
        }
    }
}

/// A strict reader of the text exposition format 0.0.4, as Prometheus parses it, plus the
/// conventions `promtool check metrics` enforces (HELP and TYPE for every family, counters named
/// `*_total`, cumulative histogram buckets ending in `+Inf` = `_count`).
struct Exposition {
    /// Family name → type.
    types: HashMap<String, String>,
    /// `(metric name, sorted labels)` → value.
    samples: HashMap<(String, Labels), f64>,
    text: String,
}

impl Exposition {
    fn parse(text: &str) -> Result<Exposition, String> {
        let mut types = HashMap::new();
        let mut helps = HashMap::new();
        let mut samples = HashMap::new();
        let mut seen_samples = std::collections::HashSet::new();
        for (n, line) in text.lines().enumerate() {
            let err = |what: &str| format!("line {}: {what}: {line}", n + 1);
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, _help) = rest.split_once(' ').ok_or_else(|| err("HELP"))?;
                check_name(name).map_err(|e| err(&e))?;
                if helps.insert(name.to_owned(), ()).is_some() {
                    return Err(err("a second HELP"));
                }
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, ty) = rest.split_once(' ').ok_or_else(|| err("TYPE"))?;
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&ty) {
                    return Err(err("unknown type"));
                }
                if seen_samples.contains(name) {
                    return Err(err("TYPE after the family's samples"));
                }
                if ty == "counter" && !name.ends_with("_total") {
                    return Err(err("a counter not named *_total"));
                }
                if types.insert(name.to_owned(), ty.to_owned()).is_some() {
                    return Err(err("a second TYPE"));
                }
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (name, labels, value) = sample(line).map_err(|e| err(&e))?;
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    let base = name.strip_suffix(s)?;
                    (types.get(base).map(String::as_str) == Some("histogram")).then_some(base)
                })
                .unwrap_or(&name)
                .to_owned();
            if !types.contains_key(&family) || !helps.contains_key(&family) {
                return Err(err("a sample before its family's HELP and TYPE"));
            }
            seen_samples.insert(family);
            let mut sorted = labels;
            sorted.sort();
            if samples.insert((name, sorted), value).is_some() {
                return Err(err("a repeated series"));
            }
        }
        let exposition = Exposition {
            types,
            samples,
            text: text.to_owned(),
        };
        exposition.check_histograms()?;
        Ok(exposition)
    }

    fn check_histograms(&self) -> Result<(), String> {
        for (family, _) in self.types.iter().filter(|(_, t)| *t == "histogram") {
            // Group buckets by their labels without `le`.
            let mut series: HashMap<Labels, Vec<(f64, f64)>> = HashMap::new();
            for ((name, labels), value) in &self.samples {
                if *name != format!("{family}_bucket") {
                    continue;
                }
                let le = labels
                    .iter()
                    .find(|(n, _)| n == "le")
                    .ok_or("bucket without le")?;
                let bound = parse_float(&le.1)?;
                let rest: Vec<_> = labels.iter().filter(|(n, _)| n != "le").cloned().collect();
                series.entry(rest).or_default().push((bound, *value));
            }
            for (labels, mut buckets) in series {
                buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
                if buckets.last().map(|b| b.0) != Some(f64::INFINITY) {
                    return Err(format!("{family}{labels:?}: no +Inf bucket"));
                }
                if buckets.windows(2).any(|w| w[0].1 > w[1].1) {
                    return Err(format!("{family}{labels:?}: buckets not cumulative"));
                }
                let count = self
                    .samples
                    .get(&(format!("{family}_count"), labels.clone()));
                if count != Some(&buckets.last().unwrap().1) {
                    return Err(format!("{family}{labels:?}: _count is not the +Inf bucket"));
                }
                if !self
                    .samples
                    .contains_key(&(format!("{family}_sum"), labels.clone()))
                {
                    return Err(format!("{family}{labels:?}: no _sum"));
                }
            }
        }
        Ok(())
    }

    /// The value of `name{labels}`, with the runner's prefix added.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut labels: Vec<(String, String)> = labels
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        labels.sort();
        self.samples
            .get(&(format!("ext_plugin_runner_{name}"), labels))
            .copied()
    }

    /// Like [`Exposition::get`], for a series that must exist.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no {name}{labels:?} in\n{}", self.text))
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.bytes().enumerate().all(|(i, b)| {
            b == b'_' || b == b':' || b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit())
        });
    ok.then_some(())
        .ok_or_else(|| format!("bad metric name `{name}`"))
}

fn parse_float(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse().map_err(|_| format!("bad value `{s}`")),
    }
}

type Labels = Vec<(String, String)>;

/// `name{a="x",b="y"} value`.
fn sample(line: &str) -> Result<(String, Labels, f64), String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    check_name(name)?;
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let eq = rest.find('=').ok_or("label without =")?;
            let label = &rest[..eq];
            let valid = !label.is_empty()
                && label.bytes().enumerate().all(|(i, b)| {
                    b == b'_' || b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit())
                });
            if !valid {
                return Err(format!("bad label name `{label}`"));
            }
            rest = rest[eq + 1..]
                .strip_prefix('"')
                .ok_or("unquoted label value")?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                match chars.next().ok_or("unterminated label value")? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        'n' => value.push('\n'),
                        c => return Err(format!("bad escape \\{c}")),
                    },
                    (_, '\n') => return Err("newline in a label value".into()),
                    (_, c) => value.push(c),
                }
            };
            if labels.iter().any(|(n, _): &(String, String)| n == label) {
                return Err(format!("label `{label}` twice"));
            }
            labels.push((label.to_owned(), value));
            rest = &rest[end + 1..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
    }
    let value = rest.strip_prefix(' ').ok_or("no space before the value")?;
    let value = value.split(' ').next().unwrap_or(value);
    Ok((name.to_owned(), labels, parse_float(value)?))
}

fn calls(e: &Exposition, ty: &str, outcome: &str) -> f64 {
    e.value("calls_total", &[("type", ty), ("outcome", outcome)])
}

fn decisions(e: &Exposition, route: &str, plugin: &str, decision: &str) -> f64 {
    e.value(
        "plugin_decisions_total",
        &[("route", route), ("plugin", plugin), ("decision", decision)],
    )
}

const PRE: &str = "ext-plugin-pre-req";

#[tokio::test]
async fn counters_move_by_exactly_what_the_calls_did() {
    let socket = temp_socket_path();
    let metrics = Target::Unix(temp_socket_path());
    let _runner = spawn(
        &socket,
        &[
            "--metrics-listen",
            &metrics.flag(),
            "--call-timeout-ms",
            "300",
        ],
    );
    let before = scrape(&metrics).await;
    assert_eq!(
        before.value("build_info", &[("version", env!("CARGO_PKG_VERSION"))]),
        1.0
    );
    assert_eq!(calls(&before, "http_req_call", "ok"), 0.0);
    assert_eq!(before.value("connections", &[]), 0.0);
    assert_eq!(before.value("conf_cache_entries", &[]), 0.0);

    let mut gw = connect(&socket).await;
    gw.set_var("server_addr", "10.0.0.1");
    let chain = [
        ("ip-restriction", r#"{"whitelist": ["192.0.2.0/24"]}"#),
        (
            "limit-count",
            r#"{"count": 100, "time_window": 60, "key": "server_addr", "show_limit_quota_header": false}"#,
        ),
    ];
    let guarded = gw
        .prepare(&format!("route#1#{PRE}#1"), &chain)
        .await
        .unwrap();
    let again = gw
        .prepare(&format!("route#1#{PRE}#1"), &chain)
        .await
        .unwrap();
    assert_eq!(again, guarded, "a cached key builds nothing");
    let delayed = gw
        .prepare(
            &format!("route#2#{PRE}#1"),
            &[("fault-injection", r#"{"delay": {"duration": 0.01}}"#)],
        )
        .await
        .unwrap();
    let stuck = gw
        .prepare(
            &format!("route#3#{PRE}#1"),
            &[("fault-injection", r#"{"delay": {"duration": 5}}"#)],
        )
        .await
        .unwrap();
    let post = gw
        .prepare("route#1#ext-plugin-post-resp#1", &[("request-id", "{}")])
        .await
        .unwrap();
    for refused in [
        vec![("no-such-plugin", "{}")],
        vec![(
            "limit-count",
            r#"{"count": 1, "time_window": 60, "bogus": 1}"#,
        )],
    ] {
        let err = gw
            .prepare(&format!("route#4#{PRE}#1"), &refused)
            .await
            .unwrap_err();
        assert!(
            matches!(err, GatewayError::Runner(ErrorCode::BadRequest)),
            "{err}"
        );
    }

    // Pass three times (one extra_info each: limit-count's key), reject twice.
    let inside = request(Method::Get, "/").with_src_ip("192.0.2.10");
    let outside = request(Method::Get, "/").with_src_ip("198.51.100.1");
    for _ in 0..3 {
        assert_eq!(
            gw.call(guarded, &inside).await.unwrap().action,
            ReqAction::Continue
        );
    }
    for _ in 0..2 {
        let reply = gw.call(guarded, &outside).await.unwrap();
        assert!(matches!(reply.action, ReqAction::Stop(s) if s.status == 403));
    }
    // A delay that passes, a delay past the call deadline, an unknown token, a response call.
    assert_eq!(
        gw.call(delayed, &inside).await.unwrap().action,
        ReqAction::Continue
    );
    let late = gw.call(stuck, &inside).await.unwrap_err();
    assert!(
        matches!(late, GatewayError::Runner(ErrorCode::ServiceUnavailable)),
        "{late}"
    );
    let unknown = gw.call(0, &inside).await.unwrap_err();
    assert!(
        matches!(unknown, GatewayError::Runner(ErrorCode::ConfTokenNotFound)),
        "{unknown}"
    );
    gw.resp_call(post, 200, &[]).await.unwrap();

    let after = scrape(&metrics).await;
    assert_eq!(calls(&after, "prepare_conf", "ok"), 5.0);
    assert_eq!(calls(&after, "prepare_conf", "refused"), 2.0);
    assert_eq!(calls(&after, "prepare_conf", "bad_request"), 0.0);
    assert_eq!(
        calls(&after, "http_req_call", "ok"),
        6.0,
        "passes, rejects and the delay"
    );
    assert_eq!(calls(&after, "http_req_call", "timeout"), 1.0);
    assert_eq!(calls(&after, "http_req_call", "token_not_found"), 1.0);
    assert_eq!(calls(&after, "http_req_call", "error"), 0.0);
    assert_eq!(calls(&after, "http_resp_call", "ok"), 1.0);
    assert_eq!(after.value("chains_prepared_total", &[]), 4.0);
    assert_eq!(
        after.value("prepare_refusals_total", &[("plugin", "_unknown")]),
        1.0
    );
    assert_eq!(
        after.value("prepare_refusals_total", &[("plugin", "limit-count")]),
        1.0
    );
    assert_eq!(after.value("conf_cache_entries", &[]), 4.0);
    // Three for limit-count's key, one for request-id's id in the response phase.
    assert_eq!(after.value("extra_info_total", &[("kind", "var")]), 4.0);
    assert_eq!(
        after.value("extra_info_total", &[("kind", "req_body")]),
        0.0
    );
    let r1 = "route#1";
    assert_eq!(decisions(&after, r1, "ip-restriction", "pass"), 3.0);
    assert_eq!(decisions(&after, r1, "ip-restriction", "reject"), 2.0);
    assert_eq!(decisions(&after, r1, "limit-count", "pass"), 3.0);
    assert_eq!(decisions(&after, r1, "limit-count", "reject"), 0.0);
    assert_eq!(
        decisions(&after, "route#2", "fault-injection", "delay"),
        1.0
    );
    assert_eq!(decisions(&after, "route#2", "fault-injection", "pass"), 0.0);
    assert_eq!(
        decisions(&after, "route#3", "fault-injection", "error"),
        1.0,
        "abandoned at the deadline"
    );
    assert_eq!(
        decisions(&after, r1, "request-id", "pass"),
        0.0,
        "response passes are not decisions"
    );
    assert_eq!(
        after.value("limit_keys", &[("route", r1), ("plugin", "limit-count")]),
        1.0
    );
    let durations = |ty| after.value("call_duration_seconds_count", &[("type", ty)]);
    assert_eq!(durations("http_req_call"), 8.0);
    assert_eq!(durations("prepare_conf"), 7.0);
    assert_eq!(durations("http_resp_call"), 1.0);
    assert!(
        after.value("call_duration_seconds_sum", &[("type", "http_req_call")]) >= 0.3,
        "the timed-out call alone took the 300 ms deadline"
    );
    assert_eq!(after.value("connections_accepted_total", &[]), 1.0);
    assert_eq!(after.value("connections", &[]), 1.0);

    // The gateway hangs up: the connection is counted closed, by its reason.
    drop(gw);
    let deadline = Instant::now() + Duration::from_secs(20);
    let closed = loop {
        let e = scrape(&metrics).await;
        if e.value("connections", &[]) == 0.0 || Instant::now() > deadline {
            break e;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(closed.value("connections", &[]), 0.0);
    assert_eq!(
        closed.value("connections_closed_total", &[("reason", "eof")]),
        1.0
    );
    assert_eq!(
        closed.value("connections_closed_total", &[("reason", "idle")]),
        0.0
    );
}

/// Plugin errors and panics need a plugin that fails: an in-process runner with one, scraped
/// over its own endpoint.
#[tokio::test]
async fn plugin_errors_and_panics_are_counted_per_route_and_plugin() {
    let metrics = temp_socket_path();
    let config = Config {
        metrics_listen: Some(MetricsAddress::Unix(metrics.clone())),
        metrics_max_routes: 2,
        ..Config::default()
    };
    let registry = ext_plugin_sdk::Registry::new().with::<Scripted>();
    let runner = TestRunner::start_with(config, registry).await;
    let mut gw = runner.connect().await;
    let mut tokens = HashMap::new();
    for (route, conf) in [
        ("route#a", "error"),
        ("route#b", "panic"),
        ("route#c", "reject"),
        ("route#d", "reject"),
    ] {
        let key = format!("{route}#{PRE}#1");
        let chain = [
            ("scripted", "\"pass\""),
            ("scripted", &format!("\"{conf}\"") as &str),
        ];
        tokens.insert(route, gw.prepare(&key, &chain).await.unwrap());
    }
    let req = request(Method::Get, "/");
    for route in ["route#a", "route#b"] {
        let err = gw.call(tokens[route], &req).await.unwrap_err();
        assert!(
            matches!(err, GatewayError::Runner(ErrorCode::ServiceUnavailable)),
            "{err}"
        );
    }
    for route in ["route#c", "route#d"] {
        assert!(matches!(
            gw.call(tokens[route], &req).await.unwrap().action,
            ReqAction::Stop(_)
        ));
    }
    let e = scrape(&Target::Unix(metrics)).await;
    assert_eq!(calls(&e, "http_req_call", "error"), 1.0);
    assert_eq!(calls(&e, "http_req_call", "panic"), 1.0);
    assert_eq!(calls(&e, "http_req_call", "ok"), 2.0);
    // Two plugins of the same name in a chain share their route's series.
    assert_eq!(decisions(&e, "route#a", "scripted", "pass"), 1.0);
    assert_eq!(decisions(&e, "route#a", "scripted", "error"), 1.0);
    assert_eq!(
        decisions(&e, "route#b", "scripted", "error"),
        1.0,
        "the panicking plugin"
    );
    // --metrics-max-routes 2: the third and fourth routes are counted together.
    assert_eq!(
        e.get(
            "plugin_decisions_total",
            &[
                ("route", "route#c"),
                ("plugin", "scripted"),
                ("decision", "pass")
            ]
        ),
        None
    );
    assert_eq!(decisions(&e, "_other", "scripted", "pass"), 2.0);
    assert_eq!(decisions(&e, "_other", "scripted", "reject"), 2.0);
    assert_eq!(
        runner
            .runner()
            .render_metrics()
            .map(|t| t.contains("ext_plugin_runner_calls_total")),
        Some(true)
    );
    runner.stop().await;
}

#[tokio::test]
async fn conf_cache_evictions_are_counted_by_reason() {
    let config = Config {
        metrics_listen: Some(MetricsAddress::Unix(temp_socket_path())),
        conf_cache_capacity: 1,
        ..Config::default()
    };
    let runner = TestRunner::start_with(config, ext_plugin_catalogue::builtin()).await;
    let mut gw = runner.connect().await;
    for route in ["route#1", "route#2", "route#3"] {
        gw.prepare(&format!("{route}#{PRE}#1"), &[("request-id", "{}")])
            .await
            .unwrap();
    }
    let snapshot = runner.runner().metrics().snapshot();
    let evictions = |reason| snapshot.counter("conf_cache_evictions_total", &[("reason", reason)]);
    assert_eq!(evictions("capacity"), Some(2));
    assert_eq!(evictions("expired"), Some(0));
    assert_eq!(snapshot.gauge("conf_cache_entries", &[]), Some(1));
    runner.stop().await;
}

#[tokio::test]
async fn metrics_off_serve_nothing() {
    let runner = TestRunner::start(ext_plugin_catalogue::builtin()).await;
    assert_eq!(runner.runner().render_metrics(), None);
    assert!(runner.runner().metrics().snapshot().families.is_empty());
    runner.stop().await;
}

#[tokio::test]
async fn a_busy_tcp_address_is_retried_and_healthz_answers() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = Target::Tcp(held.local_addr().unwrap());
    let socket = temp_socket_path();
    let _runner = spawn(&socket, &["--metrics-listen", &target.flag()]);
    // The gateway is served while the metrics address is still taken.
    let mut gw = connect(&socket).await;
    gw.prepare(&format!("route#1#{PRE}#1"), &[("request-id", "{}")])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(held);
    let e = scrape(&target).await;
    assert_eq!(calls(&e, "prepare_conf", "ok"), 1.0);
    let t = target.clone();
    let (health, missing, post) = tokio::task::spawn_blocking(move || {
        (
            http(&t, "GET", "/healthz").unwrap(),
            http(&t, "GET", "/nope").unwrap(),
            http(&t, "POST", "/metrics").unwrap(),
        )
    })
    .await
    .unwrap();
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    assert_eq!(missing.status, 404);
    assert_eq!(post.status, 405);
}

/// Whether promtool (Debian package `prometheus`) can run here. Without it the calling test is
/// skipped, loudly, unless `PROMTOOL_TESTS=require` (CI installs it and sets that).
fn have_promtool(test: &str) -> bool {
    if Command::new("promtool").arg("--version").output().is_ok() {
        return true;
    }
    let required = std::env::var("PROMTOOL_TESTS").as_deref() == Ok("require");
    assert!(
        !required,
        "PROMTOOL_TESTS=require but promtool is not installed"
    );
    // Past the test harness's capture, so that a skip is seen even when the test passes.
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED {test}: promtool is not installed (apt-get install prometheus; CI \
         requires it) ***\n"
    );
    false
}

/// Runs `promtool args...` with `input` on stdin (or as the file `-` names) and expects it to
/// pass without a remark.
fn promtool(args: &[&str], input: &str) {
    let mut run = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    run.stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = run.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "promtool {args:?} failed:\n{said}");
    let remarks = said
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.contains("SUCCESS") && !l.starts_with("Checking"))
        .count();
    assert_eq!(remarks, 0, "promtool {args:?} has remarks:\n{said}");
}

/// `promtool check metrics` accepts the exposition.
#[tokio::test]
async fn promtool_accepts_the_exposition() {
    if !have_promtool("promtool_accepts_the_exposition") {
        return;
    }
    let socket = temp_socket_path();
    let metrics = Target::Unix(temp_socket_path());
    let _runner = spawn(&socket, &["--metrics-listen", &metrics.flag()]);
    let mut gw = connect(&socket).await;
    // Series with route labels, a breaker, limiter keys and every histogram.
    let token = gw
        .prepare(
            &format!("route#\"q\\uote\"#{PRE}#1"),
            &[
                ("api-breaker", r#"{"break_response_code": 502}"#),
                ("limit-req", r#"{"rate": 100, "burst": 0, "nodelay": true}"#),
            ],
        )
        .await
        .unwrap();
    gw.call(token, &request(Method::Get, "/")).await.unwrap();
    gw.resp_call(token, 200, &[]).await.unwrap();
    let exposition = scrape(&metrics).await;
    assert_eq!(
        exposition.value("breakers_open", &[("route", "route#\"q\\uote\"")]),
        0.0
    );
    promtool(&["check", "metrics"], &exposition.text);
}

/// The scrape config and alerts docs/operations.md shows are valid Prometheus config and rules.
#[test]
fn the_documented_scrape_config_and_alerts_pass_promtool() {
    if !have_promtool("the_documented_scrape_config_and_alerts_pass_promtool") {
        return;
    }
    let doc = include_str!("../docs/operations.md");
    let yaml = |first: &str| {
        doc.split("```yaml\n")
            .filter_map(|b| b.split("```").next())
            .find(|b| b.starts_with(first))
            .unwrap_or_else(|| panic!("no yaml block starting with {first}"))
            .to_owned()
    };
    let dir = tempfile::tempdir().unwrap();
    for (first, check) in [("scrape_configs:", "config"), ("groups:", "rules")] {
        let file = dir.path().join(format!("{check}.yml"));
        std::fs::write(&file, yaml(first)).unwrap();
        promtool(&["check", check, file.to_str().unwrap()], "");
    }
}

/// `redis_commands_total` of `backend` with `outcome`.
fn redis_commands(e: &Exposition, backend: &str, outcome: &str) -> f64 {
    e.value(
        "redis_commands_total",
        &[("backend", backend), ("outcome", outcome)],
    )
}

/// A Redis backend's commands by outcome, their latency and its up/down state move exactly as
/// the limiter's calls and the server's life say, on a real `redis-server`.
#[tokio::test]
async fn redis_backends_count_commands_by_outcome_and_export_their_state() {
    if !common::redis_server::available(
        "redis_backends_count_commands_by_outcome_and_export_their_state",
    ) {
        return;
    }
    let mut redis = common::redis_server::Server::unix();
    let socket = temp_socket_path();
    let metrics = Target::Unix(temp_socket_path());
    let _runner = spawn(&socket, &["--metrics-listen", &metrics.flag()]);
    let mut gw = connect(&socket).await;
    let conf = format!(
        r#"{{"count": 2, "time_window": 60, "policy": "redis", "redis_host": "{}",
            "redis_timeout": 1000}}"#,
        redis.host()
    );
    let token = gw
        .prepare(&format!("route#r#{PRE}#1"), &[("limit-count", &conf)])
        .await
        .unwrap();
    let backend = format!("unix:{}/0", redis.socket().display());
    let e = scrape(&metrics).await;
    assert_eq!(
        e.value("redis_up", &[("backend", &backend)]),
        1.0,
        "up until it fails"
    );
    assert_eq!(redis_commands(&e, &backend, "ok"), 0.0, "connected lazily");

    // Two admitted and one rejected go to Redis; the fourth is answered from the local
    // "exhausted until" cache without a command.
    let req = request(Method::Get, "/").with_src_ip("10.0.0.1");
    let mut codes = Vec::new();
    for _ in 0..4 {
        codes.push(match gw.call(token, &req).await.unwrap().action {
            ReqAction::Stop(s) => s.status,
            _ => 200,
        });
    }
    assert_eq!(codes, [200, 200, 503, 503]);
    let e = scrape(&metrics).await;
    assert_eq!(redis_commands(&e, &backend, "ok"), 3.0);
    let latency = |e: &Exposition| {
        e.value(
            "redis_command_duration_seconds_count",
            &[("backend", &backend)],
        )
    };
    assert_eq!(latency(&e), 3.0);

    // Redis dies: the next command fails and opens the breaker; the one after is not sent.
    redis.stop();
    let other = request(Method::Get, "/").with_src_ip("10.0.0.2");
    for _ in 0..2 {
        let ReqAction::Stop(s) = gw.call(token, &other).await.unwrap().action else {
            panic!("no fallback: a 500")
        };
        assert_eq!(s.status, 500);
    }
    let e = scrape(&metrics).await;
    assert_eq!(
        redis_commands(&e, &backend, "error") + redis_commands(&e, &backend, "timeout"),
        1.0
    );
    assert_eq!(redis_commands(&e, &backend, "breaker_open"), 1.0);
    assert_eq!(latency(&e), 4.0, "commands not sent are not timed");
    assert_eq!(e.value("redis_up", &[("backend", &backend)]), 0.0);

    // Back: a probe (after the breaker's 1 s back-off) succeeds and the gauge follows.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let action = gw.call(token, &other).await.unwrap().action;
        if !matches!(&action, ReqAction::Stop(s) if s.status == 500) {
            break;
        }
        assert!(Instant::now() < deadline, "the backend never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let e = scrape(&metrics).await;
    assert_eq!(e.value("redis_up", &[("backend", &backend)]), 1.0);
    assert_eq!(redis_commands(&e, &backend, "ok"), 4.0);
    if have_promtool("redis_backends_count_commands_by_outcome_and_export_their_state") {
        promtool(&["check", "metrics"], &e.text);
    }
}

/// limit-count's leasing and limit-conn reach Redis through the same backends: their commands
/// (a lease's refill, a slot's acquire and its background release) are counted and timed, and
/// a failure takes the backend down, as for the other limiters. Each has a server of its own,
/// so that a lease's background refill cannot move limit-conn's exact figures.
#[tokio::test]
async fn leasing_and_limit_conn_commands_are_counted_too() {
    if !common::redis_server::available("leasing_and_limit_conn_commands_are_counted_too") {
        return;
    }
    let leasing_redis = common::redis_server::Server::unix();
    let mut conn_redis = common::redis_server::Server::unix();
    let socket = temp_socket_path();
    let metrics = Target::Unix(temp_socket_path());
    let _runner = spawn(&socket, &["--metrics-listen", &metrics.flag()]);
    let mut gw = connect(&socket).await;
    let backend = |r: &common::redis_server::Server| format!("unix:{}/0", r.socket().display());
    let (leasing, conn) = (backend(&leasing_redis), backend(&conn_redis));
    let req = request(Method::Get, "/").with_src_ip("10.0.0.1");

    // Leasing: the first request of a key waits for its grant, one command at least.
    let lease = format!(
        r#"{{"count": 100, "time_window": 60, "sync_interval": 0.5, "policy": "redis",
            "redis_host": "{}"}}"#,
        leasing_redis.host()
    );
    let token = gw
        .prepare(&format!("route#l#{PRE}#1"), &[("limit-count", &lease)])
        .await
        .unwrap();
    let action = gw.call(token, &req).await.unwrap().action;
    assert!(!matches!(action, ReqAction::Stop(_)), "{action:?}");
    let e = scrape(&metrics).await;
    assert!(redis_commands(&e, &leasing, "ok") >= 1.0, "the grant");
    let timed = e.value(
        "redis_command_duration_seconds_count",
        &[("backend", &leasing)],
    );
    assert!(timed >= 1.0, "the grant is timed");
    assert_eq!(e.value("redis_up", &[("backend", &leasing)]), 1.0);

    // limit-conn: one command per admitted request, one per release.
    let conf = format!(
        r#"{{"conn": 5, "burst": 0, "default_conn_delay": 0.1, "policy": "redis",
            "redis_host": "{}", "redis_timeout": 1000}}"#,
        conn_redis.host()
    );
    let token = gw
        .prepare(&format!("route#c#{PRE}#1"), &[("limit-conn", &conf)])
        .await
        .unwrap();
    let post = gw
        .prepare("route#c#ext-plugin-post-resp#1", &[("limit-conn", &conf)])
        .await
        .unwrap();
    let ReqAction::Rewrite(admitted) = gw.call(token, &req).await.unwrap().action else {
        panic!("admitted with a correlation header")
    };
    let id = admitted
        .headers
        .iter()
        .find(|h| h.name == "x-a6-runner-req")
        .and_then(|h| h.value.clone())
        .expect("the correlation header");
    assert_eq!(redis_commands(&scrape(&metrics).await, &conn, "ok"), 1.0);
    gw.set_var("http_x_a6_runner_req", &id);
    gw.resp_call(post, 200, &[]).await.unwrap();
    // The release runs in the background, after the answer.
    let deadline = Instant::now() + Duration::from_secs(20);
    while redis_commands(&scrape(&metrics).await, &conn, "ok") < 2.0 {
        assert!(Instant::now() < deadline, "the release was never counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // limit-conn's server dies: one failed command opens the breaker, the next is not sent.
    conn_redis.stop();
    for _ in 0..2 {
        let ReqAction::Stop(s) = gw.call(token, &req).await.unwrap().action else {
            panic!("no fallback: a 500")
        };
        assert_eq!(s.status, 500);
    }
    let e = scrape(&metrics).await;
    assert_eq!(redis_commands(&e, &conn, "ok"), 2.0);
    assert_eq!(
        redis_commands(&e, &conn, "error") + redis_commands(&e, &conn, "timeout"),
        1.0
    );
    assert_eq!(redis_commands(&e, &conn, "breaker_open"), 1.0);
    assert_eq!(
        e.value(
            "redis_command_duration_seconds_count",
            &[("backend", &conn)]
        ),
        3.0,
        "commands not sent are not timed"
    );
    assert_eq!(e.value("redis_up", &[("backend", &conn)]), 0.0);
    assert_eq!(
        e.value("redis_up", &[("backend", &leasing)]),
        1.0,
        "each backend its own state"
    );
}

/// The OpenSergo control-plane stream's state, its pushes by outcome and the rules loaded per
/// app, against the fake control plane of the opensergo tests.
#[tokio::test]
async fn opensergo_stream_pushes_and_rules_are_exported() {
    use ext_plugin_catalogue::opensergo::proto::transport::{
        DataWithVersion, Status, SubscribeResponse,
    };
    use opensergo_fake::{rate, rule, Fake, RATE, RULE};

    let fake = Fake::start().await;
    fake.set("default", "foo-app", RATE, vec![rate(5)]);
    fake.set(
        "default",
        "foo-app",
        RULE,
        vec![rule("GET:/rate", "rate", "RateLimitStrategy")],
    );
    let socket = temp_socket_path();
    let metrics = Target::Unix(temp_socket_path());
    let _runner = Spawned(
        runner_command(&socket)
            .args(["--log", "error", "--metrics-listen", &metrics.flag()])
            .env("OPENSERGO_BOOTSTRAP_CONFIG", fake.bootstrap())
            .spawn()
            .expect("spawning the runner"),
    );
    let mut gw = connect(&socket).await;
    gw.prepare(
        &format!("route#os#{PRE}#1"),
        &[("opensergo", r#"{"app": "foo-app"}"#)],
    )
    .await
    .unwrap();
    // The two kinds with rules are pushed on subscribe and ACKed.
    fake.wait_acks(2).await;
    let app = |source, kind| {
        [
            ("namespace", "default"),
            ("app", "foo-app"),
            ("source", source),
            ("kind", kind),
        ]
    };
    let e = scrape(&metrics).await;
    assert_eq!(e.value("opensergo_stream_up", &[]), 1.0);
    assert_eq!(e.value("opensergo_streams_opened_total", &[]), 1.0);
    assert_eq!(
        e.value("opensergo_pushes_total", &[("outcome", "applied")]),
        2.0
    );
    assert_eq!(
        e.value("opensergo_rules_loaded", &app("control_plane", "rules")),
        1.0
    );
    assert_eq!(
        e.value(
            "opensergo_rules_loaded",
            &app("control_plane", "strategies")
        ),
        1.0
    );
    assert_eq!(
        e.value("opensergo_rules_loaded", &app("file", "rules")),
        0.0
    );

    // An undecodable push is NACKed, an older version ignored; the rules stay.
    let push = |version, value: Vec<u8>, id: &str| SubscribeResponse {
        status: Some(Status {
            code: 200,
            message: String::new(),
            details: vec![],
        }),
        namespace: "default".into(),
        app: "foo-app".into(),
        kind: RATE.into(),
        data_with_version: Some(DataWithVersion {
            data: vec![prost_types::Any {
                type_url:
                    "type.googleapis.com/io.opensergo.proto.fault_tolerance.v1.RateLimitStrategy"
                        .into(),
                value,
            }],
            version,
        }),
        response_id: id.into(),
        ..Default::default()
    };
    fake.send(push(9, vec![0xff, 0xff], "bad"));
    fake.send(push(0, Vec::new(), "old"));
    fake.wait_for("a NACK and an outdated ACK", |r| {
        r.iter().any(|m| m.request_id == "bad") && r.iter().any(|m| m.request_id == "old")
    })
    .await;
    let e = scrape(&metrics).await;
    assert_eq!(
        e.value("opensergo_pushes_total", &[("outcome", "nacked")]),
        1.0
    );
    assert_eq!(
        e.value("opensergo_pushes_total", &[("outcome", "outdated")]),
        1.0
    );
    assert_eq!(
        e.value("opensergo_pushes_total", &[("outcome", "applied")]),
        2.0
    );
    assert_eq!(
        e.value(
            "opensergo_rules_loaded",
            &app("control_plane", "strategies")
        ),
        1.0
    );

    // A restarted control plane: the runner opens a second stream and takes its pushes again.
    let fake = fake.restart().await;
    fake.wait_acks(2).await;
    let e = scrape(&metrics).await;
    assert_eq!(e.value("opensergo_streams_opened_total", &[]), 2.0);
    assert_eq!(e.value("opensergo_stream_up", &[]), 1.0);
    assert_eq!(
        e.value("opensergo_pushes_total", &[("outcome", "applied")]),
        4.0
    );
    if have_promtool("opensergo_stream_pushes_and_rules_are_exported") {
        promtool(&["check", "metrics"], &e.text);
    }
}
