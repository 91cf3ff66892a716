//! APISIX's own test cases for the authentication and edge plugins, as far as the ext-plugin
//! protocol can express them, run against this runner over the socket (FlatBuffers, as stock
//! APISIX speaks). docs/conformance/auth-and-edge.md publishes the counts; a test below keeps it
//! true.
//!
//! Adaptations, everywhere: APISIX Consumer objects become the plugin's inline `consumers`; a
//! client address set through `X-Forwarded-For` and nginx's real-IP module is the `src_ip` the
//! gateway sends; what an upstream echoes back is read from the rewrite the runner answers.

mod driver;

mod basic_auth;
mod cors;
mod ip_restriction;
mod jwt_auth;
mod key_auth;
mod referer_restriction;
mod request_validation;
mod ua_restriction;
mod uri_blocker;

use driver::Suite;

fn suites() -> Vec<Suite> {
    vec![
        key_auth::suite(),
        basic_auth::suite(),
        jwt_auth::suite(),
        cors::suite(),
        ip_restriction::suite(),
        ua_restriction::suite(),
        referer_restriction::suite(),
        uri_blocker::suite(),
        request_validation::suite(),
    ]
}

/// One test per plugin, so a failing plugin names itself.
macro_rules! suite_tests {
    ($($plugin:ident),*) => {
        $(
            #[tokio::test]
            async fn $plugin() {
                $plugin::suite().run().await;
            }
        )*
    };
}

suite_tests!(
    key_auth,
    basic_auth,
    jwt_auth,
    cors,
    ip_restriction,
    ua_restriction,
    referer_restriction,
    uri_blocker,
    request_validation
);

/// The published table holds each plugin's row as the suites count it, and at least 98 % of
/// the applicable cases conform.
#[test]
fn the_published_table_is_the_counted_one() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/conformance/auth-and-edge.md"
    ))
    .unwrap();
    let (mut total, mut applicable, mut conforming) = (0, 0, 0);
    for s in suites() {
        let row = s.row();
        assert!(doc.contains(&row), "the table lacks the row\n{row}");
        let c = s.counts();
        total += c.total;
        applicable += c.applicable;
        conforming += c.conforming;
    }
    let total = format!(
        "| **all** | {total} | {applicable} | {conforming} | {} |",
        applicable - conforming
    );
    assert!(
        doc.contains(&total),
        "the table lacks the total row\n{total}"
    );
    assert!(
        conforming * 100 >= applicable * 98,
        "{conforming} of {applicable} conform"
    );
}
