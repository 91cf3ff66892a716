//! Conformance with APISIX's own test suite, for limit-count, limit-req, limit-conn,
//! api-breaker, fault-injection, proxy-rewrite, request-id and echo.
//!
//! Each plugin has a table (`tests/conformance_traffic/<plugin>.rs`): every `=== TEST` block of
//! APISIX's `t/plugin/<plugin>*.t` files that the ext-plugin protocol can express is a case here,
//! restated in this project's terms (the conf, the request, what the client and the upstream must
//! see); the blocks that cannot apply are skipped with the reason. The bulk runs through the SDK
//! harness, a sample over a real socket. The published table, `docs/conformance/traffic.md`, is
//! checked against these tables.

/// The two runs of a table: all of it in memory, its sample over a socket.
macro_rules! run_the_table {
    () => {
        #[tokio::test(start_paused = true)]
        async fn apisix_cases_in_memory() {
            suite().run().await;
        }

        #[tokio::test]
        async fn a_sample_over_the_wire() {
            suite().run_wire().await;
        }
    };
}

#[path = "conformance_traffic/kit.rs"]
mod kit;

#[path = "conformance_traffic/api_breaker.rs"]
mod api_breaker;
#[path = "conformance_traffic/echo.rs"]
mod echo;
#[path = "conformance_traffic/fault_injection.rs"]
mod fault_injection;
#[path = "conformance_traffic/limit_conn.rs"]
mod limit_conn;
#[path = "conformance_traffic/limit_count.rs"]
mod limit_count;
#[path = "conformance_traffic/limit_req.rs"]
mod limit_req;
#[path = "conformance_traffic/proxy_rewrite.rs"]
mod proxy_rewrite;
#[path = "conformance_traffic/request_id.rs"]
mod request_id;

use kit::Suite;

fn suites() -> Vec<Suite> {
    vec![
        limit_count::suite(),
        limit_req::suite(),
        limit_conn::suite(),
        api_breaker::suite(),
        fault_injection::suite(),
        proxy_rewrite::suite(),
        request_id::suite(),
        echo::suite(),
    ]
}

#[test]
fn every_apisix_case_is_covered_or_skipped_with_a_reason() {
    let mut errors = Vec::new();
    for s in suites() {
        if let Err(e) = s.check_accounting() {
            errors.push(format!("{}:\n{e}", s.plugin));
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// `docs/conformance/traffic.md` publishes these numbers; they must be the tables'. Every case
/// that applies is covered and passes (the runs above fail otherwise), so the pass rate is the
/// share of applicable blocks covered. A failure prints every row as it should read.
#[test]
fn the_published_table_is_the_tables() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/conformance/traffic.md"
    ))
    .unwrap();
    let mut rows = Vec::new();
    let mut all = (0, 0, 0);
    for s in suites() {
        let t = s.check_accounting().unwrap();
        rows.push(format!(
            "| {} | {} | {} | {} | {} |",
            s.plugin,
            t.total,
            t.apply,
            t.covered,
            pass_rate(t.covered, t.apply)
        ));
        all = (all.0 + t.total, all.1 + t.apply, all.2 + t.covered);
    }
    rows.push(format!(
        "| **all** | {} | {} | {} | {} |",
        all.0,
        all.1,
        all.2,
        pass_rate(all.2, all.1)
    ));
    let missing: Vec<&String> = rows.iter().filter(|r| !doc.contains(r.as_str())).collect();
    assert!(
        missing.is_empty(),
        "docs/conformance/traffic.md lacks {} rows; the table should read:\n{}",
        missing.len(),
        rows.join("\n")
    );
}

/// A pass rate to one decimal, rounded down (99.96 % is not 100 %).
fn pass_rate(pass: u32, apply: u32) -> String {
    let tenths = u64::from(pass) * 1000 / u64::from(apply.max(1));
    format!("{}.{} %", tenths / 10, tenths % 10)
}
