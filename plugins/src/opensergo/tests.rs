//! The plugin through the SDK harness, on rules from the fixture file.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use ext_plugin_sdk::harness::{request, TestCall, TestEnv, TestResp};

const EVERY_KIND: &str = include_str!("../../tests/fixtures/opensergo-rules.yaml");
const PRE: &str = "route#1#ext-plugin-pre-req#1";
const POST: &str = "route#1#ext-plugin-post-resp#1";

struct Fixture {
    env: TestEnv,
    store: Arc<RuleStore>,
    clock: Clock,
}

fn fixture(rules: &str) -> Fixture {
    let clock = Clock::manual();
    let store = RuleStore::new(Defaults::default());
    store.set(Source::File, parse_rules(rules).unwrap());
    Fixture {
        env: TestEnv::default()
            .with_service(store.clone())
            .with_clock(clock.clone()),
        store,
        clock,
    }
}

impl Fixture {
    fn plugin(&self, key: &str, conf: &str) -> Result<OpenSergo, ConfError> {
        let parsed: OpenSergoConf = serde_json::from_str(conf).map_err(ConfError::from)?;
        self.env
            .with(key, OpenSergo::NAME, conf, &[OpenSergo::NAME], |e| OpenSergo::prepare(parsed, e))
    }
}

const CONF: &str = r#"{"app": "foo-app"}"#;

async fn run(p: &OpenSergo, req: ext_plugin_sdk::model::HttpReqCallReq) -> (Flow, TestCall) {
    let mut c = TestCall::new(req);
    let flow = p.request_filter(&mut c.call()).await.unwrap();
    (flow, c)
}

/// The correlation id the request phase set (the response phase reads it back).
fn corr_id(c: &TestCall) -> String {
    let h = c.set_headers().iter().find(|h| h.name.as_str() == "x-a6-runner-req").expect("a correlation header");
    h.value.as_deref().unwrap().to_owned()
}

fn status(flow: &Flow) -> u16 {
    match flow {
        Flow::Continue => 0,
        Flow::Stop(s) => s.status,
    }
}

#[tokio::test]
async fn rate_limit_rejects_with_the_rules_fallback_action() {
    let f = fixture(EVERY_KIND);
    let p = f.plugin(PRE, CONF).unwrap();
    for _ in 0..2 {
        assert_eq!(run(&p, request(Method::Get, "/rate")).await.0, Flow::Continue);
    }
    let Flow::Stop(s) = run(&p, request(Method::Get, "/rate")).await.0 else { panic!("third must stop") };
    assert_eq!(s.status, 429);
    assert_eq!(&s.body[..], b"Blocked by Sentinel");
    assert_eq!(s.headers, vec![Pair::new("X-Sentinel-Limit", "foo")]);
    assert_eq!(run(&p, request(Method::Post, "/rate")).await.0, Flow::Continue, "POST:/rate is another resource");
    assert_eq!(run(&p, request(Method::Get, "/other")).await.0, Flow::Continue);
    f.clock.advance(Duration::from_secs(60));
    assert_eq!(run(&p, request(Method::Get, "/rate")).await.0, Flow::Continue, "the window slid");
}

#[tokio::test]
async fn the_route_fallback_and_the_default_answer() {
    let f = fixture(EVERY_KIND);
    let p = f
        .plugin(PRE, r#"{"app": "foo-app", "fallback": {"status": 503, "headers": {"X-Why": "busy"}, "body": "later"}}"#)
        .unwrap();
    let hold = run(&p, request(Method::Get, "/concurrency")).await;
    assert_eq!(hold.0, Flow::Continue);
    let Flow::Stop(s) = run(&p, request(Method::Get, "/concurrency")).await.0 else { panic!("one at a time") };
    assert_eq!((s.status, &s.body[..]), (503, &b"later"[..]));
    assert_eq!(s.headers, vec![Pair::new("X-Why", "busy")]);

    let plain = f.plugin("route#2#ext-plugin-pre-req#1", CONF).unwrap();
    let Flow::Stop(s) = run(&plain, request(Method::Get, "/concurrency")).await.0 else { panic!("still held") };
    assert_eq!(s.status, 429);
    assert_eq!(&s.body[..], b"{\"error_msg\":\"blocked by OpenSergo ConcurrencyLimitStrategy\"}\n");
}

#[tokio::test]
async fn concurrency_is_released_by_the_response_phase_or_the_lease() {
    let f = fixture(EVERY_KIND);
    let pre = f.plugin(PRE, CONF).unwrap();
    let post = f.plugin(POST, CONF).unwrap();
    let (flow, held) = run(&pre, request(Method::Get, "/concurrency")).await;
    assert_eq!(flow, Flow::Continue);
    let id = corr_id(&held);
    assert_eq!(status(&run(&pre, request(Method::Get, "/concurrency")).await.0), 429);
    let mut resp = TestResp::new(200).with_gateway_var("http_x_a6_runner_req", &id);
    post.response_filter(&mut resp.call()).await.unwrap();
    assert_eq!(run(&pre, request(Method::Get, "/concurrency")).await.0, Flow::Continue, "released");
    assert_eq!(status(&run(&pre, request(Method::Get, "/concurrency")).await.0), 429);
    f.clock.advance(Duration::from_secs(31));
    assert_eq!(run(&pre, request(Method::Get, "/concurrency")).await.0, Flow::Continue, "the lease expired");
}

#[tokio::test]
async fn the_breaker_opens_on_upstream_errors() {
    let f = fixture(EVERY_KIND);
    let pre = f.plugin(PRE, CONF).unwrap();
    let post = f.plugin(POST, CONF).unwrap();
    for _ in 0..2 {
        let (flow, c) = run(&pre, request(Method::Get, "/breaker")).await;
        assert_eq!(flow, Flow::Continue);
        let id = corr_id(&c);
        let mut resp = TestResp::new(502).with_gateway_var("http_x_a6_runner_req", &id);
        post.response_filter(&mut resp.call()).await.unwrap();
    }
    let Flow::Stop(s) = run(&pre, request(Method::Get, "/breaker")).await.0 else { panic!("open") };
    assert!(String::from_utf8_lossy(&s.body).contains("CircuitBreakerStrategy"));
    f.clock.advance(Duration::from_secs(5));
    assert_eq!(run(&pre, request(Method::Get, "/breaker")).await.0, Flow::Continue, "half-open probe");
}

#[tokio::test(start_paused = true)]
async fn throttling_queues_then_rejects() {
    let f = fixture(EVERY_KIND);
    let p = f.plugin(PRE, CONF).unwrap();
    let mut waited = Vec::new();
    for _ in 0..4 {
        let start = tokio::time::Instant::now();
        let flow = run(&p, request(Method::Get, "/throttle")).await.0;
        waited.push((status(&flow), start.elapsed().as_millis()));
    }
    assert_eq!(waited, [(0, 0), (0, 100), (0, 200), (429, 0)]);
}

#[tokio::test]
async fn routers_and_lanes_tag_the_request() {
    let f = fixture(EVERY_KIND);
    let p = f.plugin(PRE, CONF).unwrap();
    let headers = |c: &TestCall| {
        c.set_headers().iter().map(|h| format!("{}={}", h.name, h.value.as_deref().unwrap_or("<removed>"))).collect::<Vec<_>>()
    };
    let (_, c) = run(&p, request(Method::Get, "/x").with_header("x-mse-tag", "v2")).await;
    assert_eq!(headers(&c), ["x-opensergo-tag-fallback=v1", "x-opensergo-tag=v2"]);
    let (_, c) = run(&p, request(Method::Get, "/x").with_header("x-opensergo-tag", "v9")).await;
    assert_eq!(headers(&c), ["x-opensergo-tag=v1"], "the default route; the client's tag is replaced");
    let mut canary = Vec::new();
    for _ in 0..4 {
        let (_, c) = run(&p, request(Method::Get, "/x").with_arg("canary", "1")).await;
        canary.push(headers(&c)[0].clone());
    }
    assert_eq!(canary, ["x-opensergo-tag=v3", "x-opensergo-tag=v1", "x-opensergo-tag=v3", "x-opensergo-tag=v1"], "weights 1:1");
    let (_, c) = run(&p, request(Method::Get, "/lane").with_header("x-user-id", "12345")).await;
    assert_eq!(headers(&c), ["x-opensergo-traffic=gray", "x-opensergo-tag=v1"]);
}

#[tokio::test]
async fn a_reload_keeps_unchanged_state_and_applies_changes() {
    let f = fixture(EVERY_KIND);
    let p = f.plugin(PRE, CONF).unwrap();
    for _ in 0..2 {
        run(&p, request(Method::Get, "/rate")).await;
    }
    // Same strategy, a new rule name: the counts stay.
    f.store.set(Source::File, parse_rules(&EVERY_KIND.replace("name: rate-rule", "name: renamed-rule")).unwrap());
    assert_eq!(status(&run(&p, request(Method::Get, "/rate")).await.0), 429, "state kept");
    // A new threshold: a fresh window with the new count.
    f.store.set(Source::File, parse_rules(&EVERY_KIND.replace("threshold: 2", "threshold: 3")).unwrap());
    for _ in 0..3 {
        assert_eq!(run(&p, request(Method::Get, "/rate")).await.0, Flow::Continue);
    }
    assert_eq!(status(&run(&p, request(Method::Get, "/rate")).await.0), 429);
    // Rules gone: nothing applies.
    f.store.set(Source::File, parse_rules("").unwrap());
    assert_eq!(run(&p, request(Method::Get, "/rate")).await.0, Flow::Continue);
}

#[tokio::test]
async fn a_dangling_reference_skips_the_rule_only() {
    let text = EVERY_KIND.replace("    - name: rate-limit-foo\n      kind: RateLimitStrategy", "    - name: missing\n      kind: RateLimitStrategy");
    let f = fixture(&text);
    let p = f.plugin(PRE, CONF).unwrap();
    for _ in 0..5 {
        assert_eq!(run(&p, request(Method::Get, "/rate")).await.0, Flow::Continue);
    }
    assert_eq!(status(&run(&p, request(Method::Get, "/concurrency")).await.0), 0);
    assert_eq!(status(&run(&p, request(Method::Get, "/concurrency")).await.0), 429, "the other rules apply");
    assert!(f.store.describe().contains("GET:/concurrency"));
}

#[tokio::test]
async fn templates_resolve_locally_and_through_the_gateway() {
    let f = fixture(&EVERY_KIND.replace("'GET:/rate'", "'rate-route'"));
    let constant = f.plugin(PRE, r#"{"app": "foo-app", "resource": "rate-route"}"#).unwrap();
    for _ in 0..2 {
        run(&constant, request(Method::Post, "/any")).await;
    }
    assert_eq!(status(&run(&constant, request(Method::Get, "/else")).await.0), 429);

    let f = fixture(&EVERY_KIND.replace("'GET:/rate'", "'r1:u'"));
    let remote = f.plugin(PRE, r#"{"app": "foo-app", "resource": "$route_id:$http_x_user"}"#).unwrap();
    let call = || TestCall::new(request(Method::Get, "/").with_header("x-user", "u")).with_gateway_var("route_id", "r1");
    for _ in 0..2 {
        let mut c = call();
        assert_eq!(remote.request_filter(&mut c.call()).await.unwrap(), Flow::Continue);
    }
    let mut c = call();
    assert_eq!(status(&remote.request_filter(&mut c.call()).await.unwrap()), 429);
    assert_eq!(c.asked(), ["route_id"]);
}

#[test]
fn bad_confs_and_a_missing_store_are_refused_clearly() {
    let f = fixture("");
    for (conf, why) in [
        (r#"{}"#, "`app` is required"),
        (r#"{"app": "a", "bogus": 1}"#, "bogus"),
        (r#"{"app": "a", "tag_header": "bad header"}"#, "tag_header"),
        (r#"{"app": "a", "fallback": {"status": 99}}"#, "fallback.status"),
        (r#"{"app": "a", "resource": ""}"#, "resource"),
        (r#"{"app": "a", "lease_timeout": 0}"#, "lease_timeout"),
    ] {
        let e = f.plugin(PRE, conf).err().expect(conf);
        assert!(e.message().contains(why), "{conf}: {e}");
    }
    let bare = TestEnv::default();
    let e = bare
        .with(PRE, OpenSergo::NAME, CONF, &[], |e| OpenSergo::prepare(serde_json::from_str(CONF).unwrap(), e))
        .err()
        .unwrap();
    assert!(e.message().contains("--opensergo-rules"), "{e}");
}
