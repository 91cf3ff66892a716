//! Chains without the socket: dispatching a trivial and a realistic chain, and parsing confs at
//! prepare time. Run with `cargo bench --bench dispatch`.

mod common;

use divan::{black_box, Bencher};
use ext_plugin_sdk::harness::{Harness, LocalGateway};

fn main() {
    divan::main();
}

const TRIVIAL: &[(&str, &str)] = &[];
/// ip-restriction + limit-count + request-id, as in `benches/scenarios/realistic.json`.
const REALISTIC: &[(&str, &str)] = &[
    (
        "ip-restriction",
        r#"{"whitelist": ["10.0.0.0/8", "2001:db8::/32"]}"#,
    ),
    (
        "limit-count",
        r#"{"count": 1000000000, "time_window": 60, "key": "remote_addr"}"#,
    ),
    ("request-id", "{}"),
];
/// A heavier conf to parse: auth with consumers, a JSON schema, regexes.
const HEAVY: &[(&str, &str)] = &[
    (
        "key-auth",
        r#"{"consumers": [{"username": "a", "key": "k-a"}, {"username": "b", "key": "k-b"}, {"username": "c", "key": "k-c"}]}"#,
    ),
    (
        "uri-blocker",
        r#"{"block_rules": ["\\.\\./", "^/admin", "\\.php$", "^/wp-"]}"#,
    ),
    (
        "request-validation",
        r#"{"header_schema": {"type": "object", "required": ["host"], "properties": {"host": {"type": "string", "maxLength": 255}}}}"#,
    ),
    (
        "cors",
        r#"{"allow_origins": "https://a.example.com,https://b.example.com"}"#,
    ),
];

fn chain_of(name: &str) -> &'static [(&'static str, &'static str)] {
    match name {
        "trivial" => TRIVIAL,
        "realistic" => REALISTIC,
        _ => HEAVY,
    }
}

#[divan::bench(args = ["trivial", "realistic"])]
fn request_phase(bencher: Bencher<'_, '_>, chain: &str) {
    let rt = common::runtime();
    let _ctx = rt.enter();
    let harness = Harness::new(ext_plugin_catalogue::builtin());
    let chain = harness
        .prepare("route#bench#ext-plugin-pre-req#1", chain_of(chain))
        .unwrap();
    let req = common::fixtures::realistic();
    let mut gw = LocalGateway::new();
    bencher.bench_local(|| black_box(common::call(&mut gw, &chain, black_box(&req))));
}

#[divan::bench(args = ["trivial", "realistic", "heavy"])]
fn prepare_conf(bencher: Bencher<'_, '_>, chain: &str) {
    let harness = Harness::new(ext_plugin_catalogue::builtin());
    let chain = chain_of(chain);
    bencher.bench_local(|| {
        black_box(
            harness
                .prepare("route#bench#ext-plugin-pre-req#1", black_box(chain))
                .unwrap(),
        )
    });
}
