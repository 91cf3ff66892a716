use super::*;

const EVERY_KIND: &str = include_str!("../../../tests/fixtures/opensergo-rules.yaml");

fn app() -> AppKey {
    ("default".into(), "foo-app".into())
}

#[test]
fn every_kind_of_the_fixture_is_read() {
    let r = parse(EVERY_KIND, "v1").unwrap();
    let a = &r.apps[&app()];
    assert_eq!(a.rules.len(), 4);
    assert_eq!(a.strategies.len(), 4);
    assert_eq!(
        a.strategies[&(StrategyKind::RateLimit, "rate-limit-foo".into())],
        Strategy::RateLimit { threshold: 2, window_ms: 60_000 }
    );
    assert_eq!(
        a.strategies[&(StrategyKind::Throttling, "throttling-foo".into())],
        Strategy::Throttling { interval_ms: 100, queue_timeout_ms: 200 }
    );
    assert_eq!(
        a.strategies[&(StrategyKind::CircuitBreaker, "circuit-breaker-foo".into())],
        Strategy::CircuitBreaker {
            slow_rt_ms: None,
            ratio: 0.5,
            window_ms: 30_000,
            recovery_ms: 5_000,
            min_requests: 2
        }
    );
    assert_eq!(a.rules[0].fallback.as_deref(), Some("fallback-foo"));
    assert_eq!(a.rules[0].targets, ["GET:/rate"]);
    assert_eq!(a.routers.len(), 1);
    assert_eq!(a.routers[0].routes.len(), 3);
    assert_eq!(a.routers[0].routes[0].fallbacks, [("v2".to_owned(), "v1".to_owned())]);
    assert_eq!(a.lanes.len(), 1);
    assert_eq!(a.lanes[0].header.as_deref(), Some("x-opensergo-traffic"));
    assert_eq!(a.version, "v1");
    let fb = &r.fallbacks["fallback-foo"];
    assert_eq!((fb.status, fb.body.as_str()), (429, "Blocked by Sentinel"));
    assert_eq!(fb.headers, [("X-Sentinel-Limit".to_owned(), "foo".to_owned())]);
    // Only the lane's ignored workload selector is worth a note.
    assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
    assert!(r.problems[0].contains("workload"));
}

#[test]
fn a_file_that_is_not_yaml_fails_with_line_and_column() {
    let Err(e) = parse("kind: RateLimitStrategy\nmetadata: {name: a\nspec: [\n", "v") else { panic!("must not parse") };
    assert!(e.starts_with("line "), "{e}");
    assert!(e.contains("column"), "{e}");
}

#[test]
fn bad_objects_are_skipped_and_named_the_rest_applies() {
    let text = r#"
kind: RateLimitStrategy
metadata: {name: good, labels: {app: foo-app}}
spec: {threshold: 1, statDurationSeconds: 1}
---
kind: Bogus
metadata: {name: what, labels: {app: foo-app}}
---
kind: ThrottlingStrategy
metadata: {name: bad-duration, labels: {app: foo-app}}
spec: {minIntervalOfRequests: '10 parsecs'}
---
kind: RateLimitStrategy
metadata: {name: typo, labels: {app: foo-app}}
spec: {threshhold: 1, statDurationSeconds: 1}
---
kind: ConcurrencyLimitStrategy
metadata: {name: no-app}
spec: {maxConcurrency: 1}
"#;
    let r = parse(text, "v").unwrap();
    assert_eq!(r.apps[&app()].strategies.len(), 1);
    let p = r.problems.join("\n");
    for (name, why) in [
        ("Bogus what", "unknown kind"),
        ("ThrottlingStrategy bad-duration", "minIntervalOfRequests"),
        ("RateLimitStrategy typo", "threshhold"),
        ("ConcurrencyLimitStrategy no-app", "metadata.labels.app"),
    ] {
        let line = r.problems.iter().find(|l| l.contains(name)).unwrap_or_else(|| panic!("{name}: {p}"));
        assert!(line.contains(why) && line.contains("skipped"), "{line}");
    }
}

#[test]
fn lenient_forms_are_read_with_a_note() {
    let text = r#"
kind: RateLimitStrategy
metadata: {name: r, namespace: prod}
spec: {selector: {app: a}, threshold: 5, statDuration: '2s', limitMode: Global}
---
kind: FaultToleranceRule
metadata: {name: rule, namespace: prod, labels: {app: a}}
spec:
  targets: [{targetResourceName: 'GET:/x'}]
  strategies: [{name: r}]
  action: {name: fb, kind: HttpRequestFallbackAction}
"#;
    let r = parse(text, "v").unwrap();
    let a = &r.apps[&("prod".to_owned(), "a".to_owned())];
    assert_eq!(a.strategies.values().next(), Some(&Strategy::RateLimit { threshold: 5, window_ms: 2000 }));
    assert_eq!(a.rules[0].strategies[0].kind, None);
    assert_eq!(a.rules[0].fallback.as_deref(), Some("fb"));
    let p = r.problems.join("\n");
    for note in ["spec.selector.app", "statDuration read as", "enforced locally", "without kind"] {
        assert!(p.contains(note), "{note}: {p}");
    }
}

#[test]
fn the_guides_example_has_every_kind_and_reads_cleanly() {
    let guide = include_str!("../../../../docs/opensergo.md");
    let start = guide.find("```yaml\napiVersion").expect("the example") + "```yaml\n".len();
    let end = start + guide[start..].find("```").unwrap();
    let r = parse(&guide[start..end], "v").unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    let a = &r.apps[&app()];
    assert_eq!((a.rules.len(), a.strategies.len(), a.routers.len(), a.lanes.len()), (1, 4, 1, 1));
    assert_eq!(a.rules[0].targets.len(), 2);
    assert!(r.fallbacks.contains_key("fallback-foo"));
}
