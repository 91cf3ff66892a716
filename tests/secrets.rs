//! Secret references in confs, over the socket: `$ENV://NAME` and `$ENV://NAME/field` resolve
//! when the chain is prepared, wherever a conf carries a credential; a missing variable refuses
//! the chain. One test, so setting the variables races with nothing.

use ext_plugin_runner::model::{ErrorCode, Method, Pair, ReqAction};
use ext_plugin_runner::testing::{request, GatewayError, TestRunner};

const KEY: &str = "route#1#ext-plugin-pre-req#1";

#[tokio::test]
async fn references_resolve_at_prepare_time_everywhere() {
    std::env::set_var(
        "EPR_SECRETS_JSON",
        r#"{"jack": "k-jack", "upstream": "Bearer up-token"}"#,
    );
    std::env::set_var("EPR_SECRETS_PLAIN", "hello");
    let runner = TestRunner::start(ext_plugin_catalogue::builtin()).await;
    let mut gw = runner.connect().await;

    let auth = r#"{"consumers": [{"username": "jack", "key": "$ENV://EPR_SECRETS_JSON/jack"}]}"#;
    let proxy = r#"{"headers": {"set": {"authorization": "$ENV://EPR_SECRETS_JSON/upstream"}}}"#;
    let resp = r#"{"headers": {"set": {"X-Greeting": "$env://EPR_SECRETS_PLAIN"}}}"#;
    let t = gw
        .prepare(
            KEY,
            &[
                ("key-auth", auth),
                ("proxy-rewrite", proxy),
                ("response-rewrite", resp),
            ],
        )
        .await
        .expect("prepares");
    let req = request(Method::Get, "/").with_header("apikey", "k-jack");
    match gw.call(t, &req).await.unwrap().action {
        ReqAction::Rewrite(r) => {
            assert!(
                r.headers
                    .contains(&Pair::new("authorization", "Bearer up-token")),
                "{:?}",
                r.headers
            );
            assert_eq!(r.resp_headers, [Pair::new("X-Greeting", "hello")]);
        }
        other => panic!("{other:?}"),
    }

    // Each refused conf under its own route: a key the runner has prepared is answered from its
    // cache.
    for (i, conf) in [
        r#"{"consumers": [{"username": "jack", "key": "$ENV://EPR_SECRETS_UNSET"}]}"#,
        r#"{"consumers": [{"username": "jack", "key": "$ENV://EPR_SECRETS_JSON/nobody"}]}"#,
        r#"{"consumers": [{"username": "jack", "key": "$ENV://EPR_SECRETS_PLAIN/field"}]}"#,
        r#"{"consumers": [{"username": "jack", "key": "$secret://vault/1/jack/key"}]}"#,
    ]
    .into_iter()
    .enumerate()
    {
        let key = format!("route#refused-{i}#ext-plugin-pre-req#1");
        match gw.prepare(&key, &[("key-auth", conf)]).await {
            Err(GatewayError::Runner(ErrorCode::BadRequest)) => {}
            other => panic!("{conf}: {other:?}"),
        }
    }
    let proxy = r#"{"headers": {"set": {"authorization": "$ENV://EPR_SECRETS_UNSET"}}}"#;
    assert!(gw
        .prepare(
            "route#proxy#ext-plugin-pre-req#1",
            &[("proxy-rewrite", proxy)]
        )
        .await
        .is_err());
}
