use super::*;
use crate::opensergo::proto::transport::{
    ControlPlaneDesc, DataWithVersion, Status, SubscribeRequest, SubscribeResponse,
};

/// Hand-computed encodings: a field-number mistake in the protos (shared by the client and the
/// test fake) cannot hide from these.
#[test]
fn golden_bytes_of_the_protos() {
    let rate = ft::RateLimitStrategy {
        name: "a".into(),
        threshold: 3,
        stat_duration: 5,
        ..Default::default()
    };
    // name (1, len) "a"; threshold (4, varint) 3; stat_duration (5, varint) 5.
    assert_eq!(rate.encode_to_vec(), [0x0a, 0x01, b'a', 0x20, 0x03, 0x28, 0x05]);

    let ack = SubscribeRequest {
        response_ack: "ACK".into(),
        status: Some(Status { code: 1, ..Default::default() }),
        request_id: "7".into(),
        ..Default::default()
    };
    // response_ack (3) "ACK"; status (5) {code (1) 1}; request_id (7) "7".
    assert_eq!(ack.encode_to_vec(), [0x1a, 0x03, b'A', b'C', b'K', 0x2a, 0x02, 0x08, 0x01, 0x3a, 0x01, b'7']);

    let push = SubscribeResponse {
        status: Some(Status { code: 200, ..Default::default() }),
        namespace: "n".into(),
        app: "a".into(),
        kind: "k".into(),
        data_with_version: Some(DataWithVersion {
            data: vec![Any { type_url: "t".into(), value: vec![0x08, 0x01] }],
            version: 2,
        }),
        control_plane: Some(ControlPlaneDesc { identifier: "c".into() }),
        response_id: "r".into(),
        ..Default::default()
    };
    #[rustfmt::skip]
    let want = [
        0x0a, 0x03, 0x08, 0xc8, 0x01,       // status (1) {code (1) 200}
        0x1a, 0x01, b'n',                   // namespace (3)
        0x22, 0x01, b'a',                   // app (4)
        0x2a, 0x01, b'k',                   // kind (5)
        0x32, 0x0b,                         // dataWithVersion (6), 11 bytes
        0x0a, 0x07,                         //   data (1): Any, 7 bytes
        0x0a, 0x01, b't', 0x12, 0x02, 0x08, 0x01, // type_url (1), value (2)
        0x10, 0x02,                         //   version (2) 2
        0x3a, 0x03, 0x0a, 0x01, b'c',       // control_plane (7) {identifier (1)}
        0x42, 0x01, b'r',                   // response_id (8)
    ];
    assert_eq!(push.encode_to_vec(), want);

    let rule = ft::FaultToleranceRule {
        targets: vec![ft::fault_tolerance_rule::FaultToleranceRuleTargetRef { target_resource_name: "x".into() }],
        strategies: vec![ft::fault_tolerance_rule::FaultToleranceStrategyRef { name: "s".into(), kind: "K".into() }],
        action: None,
    };
    assert_eq!(rule.encode_to_vec(), [0x0a, 0x03, 0x0a, 0x01, b'x', 0x12, 0x06, 0x0a, 0x01, b's', 0x12, 0x01, b'K']);

    let cb = ft::CircuitBreakerStrategy {
        strategy: 1,
        trigger_ratio: 0.5,
        recovery_timeout_time_unit: 1,
        min_request_amount: 2,
        slow_condition: Some(ft::circuit_breaker_strategy::CircuitBreakerSlowCondition { max_allowed_rt_millis: 9 }),
        ..Default::default()
    };
    #[rustfmt::skip]
    let want = [
        0x10, 0x01,                                           // strategy (2)
        0x19, 0, 0, 0, 0, 0, 0, 0xe0, 0x3f,                   // trigger_ratio (3, fixed64) 0.5
        0x38, 0x01,                                           // recovery_timeout_time_unit (7)
        0x40, 0x02,                                           // min_request_amount (8)
        0x4a, 0x02, 0x08, 0x09,                               // slow_condition (9) {max_allowed_rt_millis (1)}
    ];
    assert_eq!(cb.encode_to_vec(), want);

    let throttle = ft::ThrottlingStrategy { name: String::new(), min_interval_millis_of_requests: 20, queue_timeout_millis: 60 };
    assert_eq!(throttle.encode_to_vec(), [0x10, 20, 0x18, 60]);
    let conc = ft::ConcurrencyLimitStrategy { name: String::new(), limit_mode: 2, max_concurrency: 8 };
    assert_eq!(conc.encode_to_vec(), [0x10, 2, 0x18, 8]);

    // Envoy: route (2) action inside Route, cluster (1) inside RouteAction, header exact_match (4).
    let r = route::Route {
        r#match: Some(route::RouteMatch {
            headers: vec![route::HeaderMatcher {
                name: "h".into(),
                header_match_specifier: Some(route::header_matcher::HeaderMatchSpecifier::ExactMatch("v".into())),
                invert_match: false,
            }],
            ..Default::default()
        }),
        action: Some(route::route::Action::Route(route::RouteAction {
            cluster_specifier: Some(route::route_action::ClusterSpecifier::Cluster("c".into())),
        })),
        name: String::new(),
    };
    #[rustfmt::skip]
    let want = [
        0x0a, 0x08, 0x32, 0x06, 0x0a, 0x01, b'h', 0x22, 0x01, b'v', // match (1) {headers (6) {name (1), exact (4)}}
        0x12, 0x03, 0x0a, 0x01, b'c',                               // route (2) {cluster (1)}
    ];
    assert_eq!(r.encode_to_vec(), want);
}

fn pushed(list: Vec<(&'static str, Vec<Any>)>) -> SourceRules {
    let app: AppKey = ("default".into(), "foo-app".into());
    let map = list
        .into_iter()
        .map(|(k, data)| ((app.clone(), k), Pushed { version: 1, data }))
        .collect();
    build(&map)
}

#[test]
fn the_control_planes_quirks_are_tolerated() {
    // What control plane ac5cff2 sends for the sample: UNKNOWN enums and units, "5s" as 50.
    let rate = ft::RateLimitStrategy { name: "r".into(), threshold: 3, stat_duration: 5, ..Default::default() };
    let cb = ft::CircuitBreakerStrategy {
        name: "cb".into(),
        strategy: 1,
        trigger_ratio: 0.6,
        stat_duration: 600,
        recovery_timeout: 50,
        min_request_amount: 5,
        slow_condition: Some(ft::circuit_breaker_strategy::CircuitBreakerSlowCondition { max_allowed_rt_millis: 500 }),
        ..Default::default()
    };
    let bad = ft::ThrottlingStrategy { name: "t".into(), min_interval_millis_of_requests: -1, queue_timeout_millis: 0 };
    let rules = pushed(vec![
        (RATE_LIMIT, vec![pack(RATE_LIMIT, &rate)]),
        (CIRCUIT_BREAKER, vec![pack(CIRCUIT_BREAKER, &cb)]),
        (THROTTLING, vec![pack(THROTTLING, &bad)]),
    ]);
    let a = rules.apps.values().next().unwrap();
    assert_eq!(a.strategies[&(StrategyKind::RateLimit, "r".into())], Strategy::RateLimit { threshold: 3, window_ms: 5000 }, "UNKNOWN unit = s");
    assert_eq!(
        a.strategies[&(StrategyKind::CircuitBreaker, "cb".into())],
        Strategy::CircuitBreaker { slow_rt_ms: Some(500), ratio: 0.6, window_ms: 600, recovery_ms: 50, min_requests: 5 },
        "UNKNOWN units = ms"
    );
    assert_eq!(a.strategies.len(), 2, "the bad throttle is skipped");
    let p = rules.problems.join("\n");
    for note in ["read as seconds", "read as milliseconds", "RequestAmount", "enforced locally", "min interval -1"] {
        assert!(p.contains(note), "{note}: {p}");
    }
    assert!(a.version.contains("RateLimitStrategy v1"), "{}", a.version);
}

#[test]
fn undecodable_data_is_refused_by_check() {
    let good = pack(RATE_LIMIT, &ft::RateLimitStrategy::default());
    assert!(check(RATE_LIMIT, std::slice::from_ref(&good)).is_ok());
    let wrong_type = Any { type_url: "type.googleapis.com/x.Y".into(), value: vec![] };
    assert!(check(RATE_LIMIT, &[good.clone(), wrong_type]).unwrap_err().contains("data[1]"));
    let garbage = Any { type_url: good.type_url.clone(), value: vec![0xff, 0xff, 0xff] };
    assert!(check(RATE_LIMIT, &[garbage]).unwrap_err().contains("does not decode"));
}

#[test]
fn a_route_configuration_becomes_a_router() {
    use route::route_action::ClusterSpecifier as C;
    let fb = ClusterFallbackConfigClusterConfig {
        routing_cluster: "outbound||v2|service-provider.default.svc.cluster.local".into(),
        fallback_cluster: "outbound||v1|service-provider.default.svc.cluster.local".into(),
    };
    let header = route::HeaderMatcher {
        name: "x-mse-tag".into(),
        header_match_specifier: Some(route::header_matcher::HeaderMatchSpecifier::ExactMatch("v2".into())),
        invert_match: false,
    };
    let rc = route::RouteConfiguration {
        name: "service-provider".into(),
        virtual_hosts: vec![route::VirtualHost {
            name: "service-provider".into(),
            domains: vec![],
            routes: vec![
                route::Route {
                    r#match: Some(route::RouteMatch { headers: vec![header], ..Default::default() }),
                    action: Some(route::route::Action::Route(route::RouteAction {
                        cluster_specifier: Some(C::InlineClusterSpecifierPlugin(route::ClusterSpecifierPlugin {
                            extension: Some(crate::opensergo::proto::envoy::config::core::v3::TypedExtensionConfig {
                                name: "envoy.router.cluster_specifier_plugin.cluster_fallback".into(),
                                typed_config: Some(Any { type_url: "t".into(), value: fb.encode_to_vec() }),
                            }),
                            is_optional: false,
                        })),
                    })),
                    name: String::new(),
                },
                route::Route {
                    r#match: Some(route::RouteMatch::default()),
                    action: Some(route::route::Action::Route(route::RouteAction {
                        cluster_specifier: Some(C::Cluster("outbound||v1|service-provider.default.svc.cluster.local".into())),
                    })),
                    name: String::new(),
                },
            ],
        }],
    };
    let rules = pushed(vec![(TRAFFIC_ROUTER, vec![pack(TRAFFIC_ROUTER, &rc)])]);
    let a = rules.apps.values().next().unwrap();
    assert!(rules.problems.is_empty(), "{:?}", rules.problems);
    let r = &a.routers[0];
    assert_eq!(r.name, "service-provider");
    assert_eq!(r.routes.len(), 2);
    assert_eq!(r.routes[0].fallbacks, [("v2".to_owned(), "v1".to_owned())]);

    // The control plane's nameless query matcher cannot be evaluated: the router is skipped.
    let mut broken = rc.clone();
    broken.virtual_hosts[0].routes[1].r#match = Some(route::RouteMatch {
        query_parameters: vec![route::QueryParameterMatcher { name: String::new(), query_parameter_match_specifier: None }],
        ..Default::default()
    });
    let rules = pushed(vec![(TRAFFIC_ROUTER, vec![pack(TRAFFIC_ROUTER, &broken)])]);
    assert!(rules.problems[0].contains("no name"), "{:?}", rules.problems);
}
