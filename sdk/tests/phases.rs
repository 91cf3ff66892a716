//! Both phases read the same way: `headers()` / `header()` / `body()` are the message as changed so
//! far, `original_*` as the gateway sent it.

use ext_plugin_sdk::harness::{block_on, request, Harness, LocalGateway, TestCall, TestResp};
use ext_plugin_sdk::model::ReqAction;
use ext_plugin_sdk::{
    ConfError, Flow, Method, Plugin, PluginError, PrepareEnv, Registry, RequestCall, Stop,
};

#[test]
fn request_views_reflect_rewrites_and_originals_do_not() {
    let req = request(Method::Get, "/")
        .with_header("x-a", "1")
        .with_header("x-b", "2")
        .with_header("x-b", "3")
        .with_arg("q", "1")
        .with_flag("debug");
    let mut t = TestCall::new(req);
    let mut call = t.call();
    call.set_header("x-a", "one");
    call.remove_header("x-b");
    call.set_header("x-new", "n");
    call.set_arg("q", "2");
    call.remove_arg("debug");

    let headers: Vec<_> = call.headers().collect();
    assert_eq!(headers, [("x-a", "one"), ("x-new", "n")]);
    assert_eq!(call.header("x-b"), None);
    assert_eq!(call.original_headers().len(), 3);

    let args: Vec<_> = call.args().collect();
    assert_eq!(args, [("q", Some("2"))]);
    assert_eq!(call.original_args().len(), 2);
}

#[test]
fn request_body_reads_a_rewrite_first() {
    let mut t = TestCall::new(request(Method::Post, "/"));
    let mut call = t.call();
    assert_eq!(block_on(call.body()).unwrap(), None);
    call.set_body("new");
    assert_eq!(block_on(call.body()).unwrap().as_deref(), Some(&b"new"[..]));
}

#[test]
fn response_views_reflect_changes_and_originals_do_not() {
    let mut t = TestResp::new(502);
    let mut call = t.call();
    call.set_status(200);
    call.set_header("x-a", "1");
    call.append_header("x-a", "2");
    assert_eq!(call.status(), 200);
    assert_eq!(call.original_status(), 502);
    assert_eq!(call.header_values("X-A").collect::<Vec<_>>(), ["1", "2"]);
    call.remove_header("x-a");
    assert_eq!(call.headers().count(), 0);
    assert!(call.original_headers().is_empty());
}

/// A plugin that sets framing and hop-by-hop headers on the client's response, by a stop or
/// by a response header, as a conf's `rejected_headers` could.
struct Framing;

impl Plugin for Framing {
    const NAME: &'static str = "framing";
    type Conf = bool;

    fn prepare(_stop: bool, _env: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        Ok(Framing)
    }

    async fn request_filter(&self, call: &mut RequestCall<'_>) -> Result<Flow, PluginError> {
        call.set_response_header("Transfer-Encoding", "chunked");
        call.set_response_header("X-Kept", "1");
        if call.header("x-stop").is_none() {
            return Ok(Flow::Continue);
        }
        Ok(Flow::Stop(
            Stop::new(429)
                .with_header("Content-Length", "5")
                .with_header("Connection", "close")
                .with_header("X-Why", "limit"),
        ))
    }
}

#[test]
fn replies_never_set_hop_by_hop_or_framing_headers_on_the_client_response() {
    let harness = Harness::new(Registry::new().with::<Framing>());
    let chain = harness
        .prepare("route#1#ext-plugin-pre-req#1", &[("framing", "true")])
        .unwrap();
    let mut gateway = LocalGateway::new();

    let stopped = request(Method::Get, "/").with_header("x-stop", "1");
    let ReqAction::Stop(stop) = block_on(gateway.call(&chain, &stopped)).unwrap() else {
        panic!("expected a stop");
    };
    let names: Vec<&str> = stop.headers.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["X-Kept", "X-Why"]);

    let passed = request(Method::Get, "/");
    let ReqAction::Rewrite(rewrite) = block_on(gateway.call(&chain, &passed)).unwrap() else {
        panic!("expected a rewrite");
    };
    let names: Vec<&str> = rewrite
        .resp_headers
        .iter()
        .map(|h| h.name.as_str())
        .collect();
    assert_eq!(names, ["X-Kept"]);
}
