//! A FlatBuffers gateway client written from the published ext-plugin-proto v0.6.1 schema
//! (docs/protocol.md §7), independently of this crate's codec: requests are built with raw
//! `FlatBufferBuilder` calls, frames are cut by hand, and replies are verified with the
//! `flatbuffers` crate's verifier and read with its table accessors. It drives a real runner over
//! a real Unix socket, as stock Apache APISIX does.

use ext_plugin_runner::codec::{Protocol, ProtocolSetting};
use ext_plugin_runner::model::{ErrorCode as ModelErrorCode, Method, ReqAction};
use ext_plugin_runner::testing::{request, GatewayError, TestRunner};
use ext_plugin_runner::{Config, Registry};
use ext_plugin_sdk::{
    ConfError, Flow, Plugin, PluginError, PrepareEnv, RequestCall, ResponseCall, Stop,
};
use flatbuffers::{
    FlatBufferBuilder, ForwardsUOffset, InvalidFlatbuffer, Table, TableFinishedWIPOffset, Vector,
    Verifiable, Verifier, VerifierOptions, WIPOffset,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

// ---------------------------------------------------------------------------------------------
// The schema, from docs/protocol.md §7: field ids and enum values.

/// The vtable offset of field `id`.
const fn f(id: u16) -> u16 {
    4 + 2 * id
}

const GET: u8 = 0;
const POST: u8 = 2;
const BAD_REQUEST: u8 = 0;
const CONF_TOKEN_NOT_FOUND: u8 = 2;
const ACTION_STOP: u8 = 1;
const ACTION_REWRITE: u8 = 2;
const INFO_VAR: u8 = 1;
const INFO_REQ_BODY: u8 = 2;
const INFO_RESP_BODY: u8 = 3;

// ---------------------------------------------------------------------------------------------
// Building requests.

/// A TextEntry: name and optional value.
type Entry<'a> = (&'a str, Option<&'a str>);
type Finished = WIPOffset<TableFinishedWIPOffset>;

fn text_entries<'b>(
    b: &mut FlatBufferBuilder<'b>,
    entries: &[Entry<'_>],
) -> WIPOffset<Vector<'b, ForwardsUOffset<TableFinishedWIPOffset>>> {
    let mut tables = Vec::new();
    for (name, value) in entries {
        let name = b.create_string(name);
        let value = value.map(|v| b.create_string(v));
        let start = b.start_table();
        b.push_slot_always(f(0), name);
        if let Some(value) = value {
            b.push_slot_always(f(1), value);
        }
        tables.push(b.end_table(start));
    }
    b.create_vector(&tables)
}

fn finish(mut b: FlatBufferBuilder<'_>, root: Finished) -> Vec<u8> {
    b.finish_minimal(root);
    b.finished_data().to_vec()
}

fn prepare_conf_req(key: &str, conf: &[Entry<'_>]) -> Vec<u8> {
    let mut b = FlatBufferBuilder::new();
    let conf = text_entries(&mut b, conf);
    let key = b.create_string(key);
    let start = b.start_table();
    b.push_slot_always(f(0), conf);
    b.push_slot_always(f(1), key);
    let root = b.end_table(start);
    finish(b, root)
}

struct Req<'a> {
    id: u32,
    token: u32,
    method: u8,
    path: &'a str,
    src_ip: &'a [u8],
    args: &'a [Entry<'a>],
    headers: &'a [Entry<'a>],
}

fn req(id: u32, token: u32, path: &str) -> Req<'_> {
    Req {
        id,
        token,
        method: GET,
        path,
        src_ip: &[127, 0, 0, 1],
        args: &[],
        headers: &[],
    }
}

fn http_req_call_req(r: &Req<'_>) -> Vec<u8> {
    let mut b = FlatBufferBuilder::new();
    let src_ip = b.create_vector(r.src_ip);
    let path = b.create_string(r.path);
    let args = text_entries(&mut b, r.args);
    let headers = text_entries(&mut b, r.headers);
    let start = b.start_table();
    b.push_slot(f(0), r.id, 0);
    b.push_slot_always(f(1), src_ip);
    b.push_slot(f(2), r.method, 0);
    b.push_slot_always(f(3), path);
    b.push_slot_always(f(4), args);
    b.push_slot_always(f(5), headers);
    b.push_slot(f(6), r.token, 0);
    let root = b.end_table(start);
    finish(b, root)
}

fn http_resp_call_req(id: u32, token: u32, status: u16, headers: &[Entry<'_>]) -> Vec<u8> {
    let mut b = FlatBufferBuilder::new();
    let headers = text_entries(&mut b, headers);
    let start = b.start_table();
    b.push_slot(f(0), id, 0);
    b.push_slot(f(1), status, 0);
    b.push_slot_always(f(2), headers);
    b.push_slot(f(3), token, 0);
    let root = b.end_table(start);
    finish(b, root)
}

fn extra_info_resp(result: Option<&[u8]>) -> Vec<u8> {
    let mut b = FlatBufferBuilder::new();
    let result = result.map(|r| b.create_vector(r));
    let start = b.start_table();
    if let Some(result) = result {
        b.push_slot_always(f(0), result);
    }
    let root = b.end_table(start);
    finish(b, root)
}

// ---------------------------------------------------------------------------------------------
// Verifying and reading replies.

type Str = ForwardsUOffset<&'static str>;
type Ubytes = ForwardsUOffset<Vector<'static, u8>>;
type Entries = ForwardsUOffset<Vector<'static, ForwardsUOffset<TextEntryV>>>;
type VResult = Result<(), InvalidFlatbuffer>;

struct TextEntryV;
impl Verifiable for TextEntryV {
    fn run_verifier(v: &mut Verifier<'_, '_>, pos: usize) -> VResult {
        v.visit_table(pos)?
            .visit_field::<Str>("name", f(0), false)?
            .visit_field::<Str>("value", f(1), false)?
            .finish();
        Ok(())
    }
}

/// Tables of scalars only (Err.Resp, PrepareConf.Resp) and the empty body tables.
struct ScalarsV;
impl Verifiable for ScalarsV {
    fn run_verifier(v: &mut Verifier<'_, '_>, pos: usize) -> VResult {
        v.visit_table(pos)?
            .visit_field::<u32>("scalar", f(0), false)?
            .finish();
        Ok(())
    }
}

struct ErrV;
impl Verifiable for ErrV {
    fn run_verifier(v: &mut Verifier<'_, '_>, pos: usize) -> VResult {
        v.visit_table(pos)?
            .visit_field::<u8>("code", f(0), false)?
            .finish();
        Ok(())
    }
}

struct StopV;
impl Verifiable for StopV {
    fn run_verifier(v: &mut Verifier<'_, '_>, pos: usize) -> VResult {
        v.visit_table(pos)?
            .visit_field::<u16>("status", f(0), false)?
            .visit_field::<Entries>("headers", f(1), false)?
            .visit_field::<Ubytes>("body", f(2), false)?
            .finish();
        Ok(())
    }
}

struct RewriteV;
impl Verifiable for RewriteV {
    fn run_verifier(v: &mut Verifier<'_, '_>, pos: usize) -> VResult {
        v.visit_table(pos)?
            .visit_field::<Str>("path", f(0), false)?
            .visit_field::<Entries>("headers", f(1), false)?
            .visit_field::<Entries>("args", f(2), false)?
            .visit_field::<Entries>("resp_headers", f(3), false)?
            .visit_field::<Ubytes>("body", f(4), false)?
            .finish();
        Ok(())
    }
}

struct ReqCallRespV;
impl Verifiable for ReqCallRespV {
    fn run_verifier(v: &mut Verifier<'_, '_>, pos: usize) -> VResult {
        v.visit_table(pos)?
            .visit_field::<u32>("id", f(0), false)?
            .visit_union::<u8, _>(
                "action_type",
                f(1),
                "action",
                f(2),
                false,
                |t, v, p| match t {
                    ACTION_STOP => v.verify_union_variant::<ForwardsUOffset<StopV>>("Stop", p),
                    ACTION_REWRITE => {
                        v.verify_union_variant::<ForwardsUOffset<RewriteV>>("Rewrite", p)
                    }
                    other => panic!("action type {other} is not in the schema"),
                },
            )?
            .finish();
        Ok(())
    }
}

struct VarV;
impl Verifiable for VarV {
    fn run_verifier(v: &mut Verifier<'_, '_>, pos: usize) -> VResult {
        v.visit_table(pos)?
            .visit_field::<Str>("name", f(0), false)?
            .finish();
        Ok(())
    }
}

struct ExtraInfoReqV;
impl Verifiable for ExtraInfoReqV {
    fn run_verifier(v: &mut Verifier<'_, '_>, pos: usize) -> VResult {
        v.visit_table(pos)?
            .visit_union::<u8, _>("info_type", f(0), "info", f(1), true, |t, v, p| match t {
                INFO_VAR => v.verify_union_variant::<ForwardsUOffset<VarV>>("Var", p),
                INFO_REQ_BODY | INFO_RESP_BODY => {
                    v.verify_union_variant::<ForwardsUOffset<ScalarsV>>("Body", p)
                }
                other => panic!("info type {other} is not in the schema"),
            })?
            .finish();
        Ok(())
    }
}

struct RespCallRespV;
impl Verifiable for RespCallRespV {
    fn run_verifier(v: &mut Verifier<'_, '_>, pos: usize) -> VResult {
        v.visit_table(pos)?
            .visit_field::<u32>("id", f(0), false)?
            .visit_field::<u16>("status", f(1), false)?
            .visit_field::<Entries>("headers", f(2), false)?
            .visit_field::<Ubytes>("body", f(3), false)?
            .finish();
        Ok(())
    }
}

/// A table of a verified buffer.
#[derive(Clone, Copy)]
struct T<'a>(Table<'a>);

/// Verifies `buf` with root type `V` and opens its root table.
fn root<V: Verifiable>(buf: &[u8]) -> T<'_> {
    let opts = VerifierOptions::default();
    <ForwardsUOffset<V>>::run_verifier(&mut Verifier::new(&opts, buf), 0)
        .unwrap_or_else(|e| panic!("the runner sent an invalid buffer: {e}"));
    let loc = u32::from_le_bytes(buf[..4].try_into().unwrap()) as usize;
    // SAFETY: the verifier accepted the buffer with this root type.
    T(unsafe { Table::new(buf, loc) })
}

// SAFETY (every accessor): the field was visited with this type by the root's verifier.
impl<'a> T<'a> {
    fn u8(self, id: u16) -> u8 {
        unsafe { self.0.get::<u8>(f(id), Some(0)) }.unwrap()
    }

    fn u16(self, id: u16) -> u16 {
        unsafe { self.0.get::<u16>(f(id), Some(0)) }.unwrap()
    }

    fn u32(self, id: u16) -> u32 {
        unsafe { self.0.get::<u32>(f(id), Some(0)) }.unwrap()
    }

    fn str(self, id: u16) -> Option<&'a str> {
        unsafe { self.0.get::<ForwardsUOffset<&str>>(f(id), None) }
    }

    fn bytes(self, id: u16) -> Option<&'a [u8]> {
        unsafe { self.0.get::<ForwardsUOffset<Vector<'a, u8>>>(f(id), None) }.map(|v| v.bytes())
    }

    fn table(self, id: u16) -> Option<T<'a>> {
        unsafe { self.0.get::<ForwardsUOffset<Table<'a>>>(f(id), None) }.map(T)
    }

    fn entries(self, id: u16) -> Vec<(String, Option<String>)> {
        type V<'a> = Vector<'a, ForwardsUOffset<Table<'a>>>;
        let v = unsafe { self.0.get::<ForwardsUOffset<V<'a>>>(f(id), None) };
        v.into_iter()
            .flatten()
            .map(|e| {
                let e = T(e);
                (
                    e.str(0).unwrap_or("").to_owned(),
                    e.str(1).map(str::to_owned),
                )
            })
            .collect()
    }
}

fn owned(entries: &[Entry<'_>]) -> Vec<(String, Option<String>)> {
    entries
        .iter()
        .map(|(n, v)| (n.to_string(), v.map(str::to_owned)))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The connection.

struct Client {
    stream: UnixStream,
    /// Variables answered to Var requests; a missing name is nil (an absent result).
    vars: Vec<(&'static str, &'static [u8])>,
    req_body: Option<&'static [u8]>,
    resp_body: Option<&'static [u8]>,
    /// (info type, var name) of every extra_info request, in order.
    asked: Vec<(u8, String)>,
}

impl Client {
    async fn connect(runner: &TestRunner) -> Client {
        Client {
            stream: UnixStream::connect(runner.path()).await.unwrap(),
            vars: Vec::new(),
            req_body: None,
            resp_body: None,
            asked: Vec::new(),
        }
    }

    async fn send(&mut self, ty: u8, payload: &[u8]) {
        let len = payload.len();
        assert!(len > 0 && len < 1 << 24);
        let header = [ty, (len >> 16) as u8, (len >> 8) as u8, len as u8];
        self.stream.write_all(&header).await.unwrap();
        self.stream.write_all(payload).await.unwrap();
    }

    async fn recv(&mut self) -> (u8, Vec<u8>) {
        let mut header = [0u8; 4];
        self.stream.read_exact(&mut header).await.unwrap();
        let len = (header[1] as usize) << 16 | (header[2] as usize) << 8 | header[3] as usize;
        assert!(len > 0, "the runner sent an empty payload");
        let mut payload = vec![0; len];
        self.stream.read_exact(&mut payload).await.unwrap();
        (header[0], payload)
    }

    /// Sends a request and returns the final frame, answering extra_info requests on the way.
    async fn exchange(&mut self, ty: u8, payload: &[u8]) -> (u8, Vec<u8>) {
        self.send(ty, payload).await;
        loop {
            let (rty, reply) = self.recv().await;
            if rty != 3 {
                return (rty, reply);
            }
            let info = root::<ExtraInfoReqV>(&reply);
            let answer = match info.u8(0) {
                INFO_VAR => {
                    let name = info.table(1).unwrap().str(0).unwrap().to_owned();
                    let value = self.vars.iter().find(|(n, _)| *n == name).map(|v| v.1);
                    self.asked.push((INFO_VAR, name));
                    value
                }
                INFO_REQ_BODY => {
                    self.asked.push((INFO_REQ_BODY, String::new()));
                    self.req_body
                }
                _ => {
                    assert_eq!(ty, 4, "RespBody asked outside http_resp_call");
                    self.asked.push((INFO_RESP_BODY, String::new()));
                    self.resp_body
                }
            };
            self.send(3, &extra_info_resp(answer)).await;
        }
    }

    async fn prepare(&mut self, key: &str, conf: &[Entry<'_>]) -> u32 {
        let (ty, reply) = self.exchange(1, &prepare_conf_req(key, conf)).await;
        assert_eq!(ty, 1, "prepare_conf answered with type {ty}");
        let token = root::<ScalarsV>(&reply).u32(0);
        assert_ne!(token, 0);
        token
    }

    /// Sends a request that must fail and returns the error frame's code.
    async fn error(&mut self, ty: u8, payload: &[u8]) -> u8 {
        let (rty, reply) = self.exchange(ty, payload).await;
        assert_eq!(rty, 0, "expected an error frame");
        root::<ErrV>(&reply).u8(0)
    }
}

// ---------------------------------------------------------------------------------------------
// Test plugins, through the public plugin API.

/// Rewrites everything a rewrite carries; in the response phase sets the status, a header and a
/// body derived from the upstream's (fetched with RespBody).
struct RewriteAll;

impl Plugin for RewriteAll {
    const NAME: &'static str = "test-rewrite-all";
    type Conf = serde_json::Value;

    fn prepare(_: serde_json::Value, _: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        Ok(RewriteAll)
    }

    async fn request_filter(&self, call: &mut RequestCall<'_>) -> Result<Flow, PluginError> {
        call.set_path("/new path");
        call.set_header("x-set", "1");
        call.remove_header("x-del");
        call.set_arg("a", "A");
        call.append_arg("b", "2");
        call.remove_arg("c");
        call.set_response_header("x-resp", "r");
        call.set_body("new body");
        Ok(Flow::Continue)
    }

    async fn response_filter(&self, call: &mut ResponseCall<'_>) -> Result<(), PluginError> {
        let body = call.body().await?.unwrap_or_default();
        call.set_status(201);
        call.set_header("x-len", body.len().to_string());
        call.set_body(body.to_ascii_uppercase());
        Ok(())
    }
}

/// Stops with status 0, a repeated header and no body.
struct StopZero;

impl Plugin for StopZero {
    const NAME: &'static str = "test-stop-zero";
    type Conf = serde_json::Value;

    fn prepare(_: serde_json::Value, _: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        Ok(StopZero)
    }

    async fn request_filter(&self, _: &mut RequestCall<'_>) -> Result<Flow, PluginError> {
        Ok(Flow::Stop(
            Stop::new(0)
                .with_header("x-dup", "1")
                .with_header("x-dup", "2"),
        ))
    }
}

fn registry() -> Registry {
    ext_plugin_catalogue::builtin()
        .with::<RewriteAll>()
        .with::<StopZero>()
}

async fn start() -> TestRunner {
    TestRunner::start(registry()).await
}

fn ipv6(s: &str) -> [u8; 16] {
    s.parse::<std::net::Ipv6Addr>().unwrap().octets()
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[tokio::test]
async fn prepare_returns_one_token_per_key() {
    let runner = start().await;
    let mut gw = Client::connect(&runner).await;
    let echo = [("debug-echo", Some("{}"))];
    let a = gw.prepare("route#1#ext-plugin-pre-req#1", &echo).await;
    let again = gw.prepare("route#1#ext-plugin-pre-req#1", &echo).await;
    let b = gw.prepare("route#2#ext-plugin-pre-req#1", &echo).await;
    assert_eq!(a, again);
    assert_ne!(a, b);
    // A conf the plugin refuses is BAD_REQUEST, and the connection goes on.
    let bad = prepare_conf_req(
        "route#3#ext-plugin-pre-req#1",
        &[("debug-echo", Some(r#"{"status": 7}"#))],
    );
    assert_eq!(gw.error(1, &bad).await, BAD_REQUEST);
    gw.prepare("route#4#ext-plugin-pre-req#1", &[]).await;
    runner.stop().await;
}

#[tokio::test]
async fn continue_is_action_none() {
    let runner = start().await;
    let mut gw = Client::connect(&runner).await;
    let conf = r#"{"whitelist": ["127.0.0.1", "2001:db8::/32"]}"#;
    let token = gw
        .prepare(
            "route#1#ext-plugin-pre-req#1",
            &[("ip-restriction", Some(conf))],
        )
        .await;
    let v6 = ipv6("2001:db8::7");
    for src_ip in [&[127, 0, 0, 1][..], &v6] {
        let r = Req {
            src_ip,
            ..req(41, token, "/")
        };
        let (ty, reply) = gw.exchange(2, &http_req_call_req(&r)).await;
        assert_eq!(ty, 2);
        let resp = root::<ReqCallRespV>(&reply);
        assert_eq!(resp.u32(0), 41);
        assert_eq!(resp.u8(1), 0, "action NONE");
        assert!(resp.table(2).is_none());
    }
    // Another address is stopped by the same chain.
    let r = Req {
        src_ip: &[10, 9, 8, 7],
        ..req(42, token, "/")
    };
    let (_, reply) = gw.exchange(2, &http_req_call_req(&r)).await;
    let resp = root::<ReqCallRespV>(&reply);
    assert_eq!(resp.u8(1), ACTION_STOP);
    assert_eq!(resp.table(2).unwrap().u16(0), 403);
    runner.stop().await;
}

#[tokio::test]
async fn stop_carries_status_zero_repeated_headers_and_no_body() {
    let runner = start().await;
    let mut gw = Client::connect(&runner).await;
    let token = gw
        .prepare("route#1#ext-plugin-pre-req#1", &[("test-stop-zero", None)])
        .await;
    let (ty, reply) = gw
        .exchange(2, &http_req_call_req(&req(5, token, "/")))
        .await;
    assert_eq!(ty, 2);
    let resp = root::<ReqCallRespV>(&reply);
    assert_eq!(resp.u32(0), 5);
    assert_eq!(resp.u8(1), ACTION_STOP);
    let stop = resp.table(2).unwrap();
    assert_eq!(stop.u16(0), 0);
    assert_eq!(
        stop.entries(1),
        owned(&[("x-dup", Some("1")), ("x-dup", Some("2"))])
    );
    assert_eq!(stop.bytes(2).unwrap_or_default(), b"");
    runner.stop().await;
}

#[tokio::test]
async fn rewrite_carries_every_field_exactly() {
    let runner = start().await;
    let mut gw = Client::connect(&runner).await;
    let token = gw
        .prepare(
            "route#1#ext-plugin-pre-req#1",
            &[("test-rewrite-all", Some("{}"))],
        )
        .await;
    let r = Req {
        method: POST,
        args: &[("b", Some("1")), ("c", Some("x")), ("flag", None)],
        headers: &[("x-del", Some("gone")), ("host", Some("example.com"))],
        ..req(9, token, "/old")
    };
    let (ty, reply) = gw.exchange(2, &http_req_call_req(&r)).await;
    assert_eq!(ty, 2);
    let resp = root::<ReqCallRespV>(&reply);
    assert_eq!(resp.u32(0), 9);
    assert_eq!(resp.u8(1), ACTION_REWRITE);
    let rw = resp.table(2).unwrap();
    assert_eq!(rw.str(0), Some("/new path"));
    assert_eq!(
        rw.entries(1),
        owned(&[("x-set", Some("1")), ("x-del", None)])
    );
    assert_eq!(
        rw.entries(2),
        owned(&[
            ("a", Some("A")),
            ("b", Some("1")),
            ("b", Some("2")),
            ("c", None)
        ])
    );
    assert_eq!(rw.entries(3), owned(&[("x-resp", Some("r"))]));
    assert_eq!(rw.bytes(4), Some(&b"new body"[..]));
    runner.stop().await;
}

#[tokio::test]
async fn extra_info_round_trips_absent_empty_and_bodies() {
    let runner = start().await;
    let mut gw = Client::connect(&runner).await;
    gw.vars = vec![("route_id", b"r1"), ("empty", b"")];
    gw.req_body = Some(b"hello");
    let conf = r#"{"vars": ["route_id", "missing", "empty"], "request_body": true}"#;
    let token = gw
        .prepare(
            "route#1#ext-plugin-pre-req#1",
            &[("debug-echo", Some(conf))],
        )
        .await;
    let v6 = ipv6("2001:db8::1");
    let r = Req {
        src_ip: &v6,
        args: &[
            ("k", Some("1")),
            ("k", Some("2")),
            ("flag", None),
            ("e", Some("")),
        ],
        headers: &[("accept", Some("a")), ("accept", Some("b"))],
        ..req(12, token, "/a b")
    };
    let (ty, reply) = gw.exchange(2, &http_req_call_req(&r)).await;
    assert_eq!(ty, 2);
    assert_eq!(
        gw.asked,
        vec![
            (INFO_VAR, "route_id".to_owned()),
            (INFO_VAR, "missing".to_owned()),
            (INFO_VAR, "empty".to_owned()),
            (INFO_REQ_BODY, String::new()),
        ]
    );
    let resp = root::<ReqCallRespV>(&reply);
    assert_eq!(resp.u8(1), ACTION_STOP);
    let stop = resp.table(2).unwrap();
    assert_eq!(stop.u16(0), 200);
    let echoed: serde_json::Value = serde_json::from_slice(stop.bytes(2).unwrap()).unwrap();
    assert_eq!(
        echoed,
        serde_json::json!({
            "method": "GET",
            "path": "/a b",
            "args": [["k", "1"], ["k", "2"], ["flag", null], ["e", ""]],
            "headers": [["accept", "a"], ["accept", "b"]],
            "src_ip": "2001:db8::1",
            "vars": {"route_id": "r1", "missing": null, "empty": ""},
            "body": "hello",
        })
    );

    // An absent request body is null, not "".
    gw.req_body = None;
    let (_, reply) = gw
        .exchange(2, &http_req_call_req(&req(13, token, "/")))
        .await;
    let stop = root::<ReqCallRespV>(&reply).table(2).unwrap();
    let echoed: serde_json::Value = serde_json::from_slice(stop.bytes(2).unwrap()).unwrap();
    assert_eq!(echoed["body"], serde_json::Value::Null);
    assert_eq!(echoed["src_ip"], "127.0.0.1");
    runner.stop().await;
}

#[tokio::test]
async fn response_phase_with_resp_body() {
    let runner = start().await;
    let mut gw = Client::connect(&runner).await;
    gw.resp_body = Some(b"upstream says hi");
    let token = gw
        .prepare(
            "route#1#ext-plugin-post-resp#1",
            &[("debug-echo", Some("{}")), ("test-rewrite-all", Some("{}"))],
        )
        .await;
    let upstream = [("Content-Type", Some("text/plain")), ("X-Up", Some("1"))];
    let (ty, reply) = gw
        .exchange(4, &http_resp_call_req(77, token, 502, &upstream))
        .await;
    assert_eq!(ty, 4);
    assert_eq!(gw.asked, vec![(INFO_RESP_BODY, String::new())]);
    let resp = root::<RespCallRespV>(&reply);
    assert_eq!(resp.u32(0), 77);
    assert_eq!(resp.u16(1), 201);
    assert_eq!(
        resp.entries(2),
        owned(&[
            ("Content-Type", Some("text/plain")),
            ("X-Up", Some("1")),
            ("x-echo-upstream-status", Some("502")),
            ("x-len", Some("16")),
        ])
    );
    assert_eq!(resp.bytes(3), Some(&b"UPSTREAM SAYS HI"[..]));

    // A chain that changes nothing answers status 0, no headers and no body.
    let token = gw.prepare("route#2#ext-plugin-post-resp#1", &[]).await;
    let (ty, reply) = gw
        .exchange(4, &http_resp_call_req(78, token, 200, &upstream))
        .await;
    assert_eq!(ty, 4);
    let resp = root::<RespCallRespV>(&reply);
    assert_eq!(resp.u32(0), 78);
    assert_eq!(resp.u16(1), 0);
    assert!(resp.entries(2).is_empty());
    assert_eq!(resp.bytes(3), None);
    runner.stop().await;
}

#[tokio::test]
async fn error_frames_leave_the_connection_usable() {
    let runner = start().await;
    let mut gw = Client::connect(&runner).await;
    let token = gw
        .prepare("route#1#ext-plugin-pre-req#1", &[("test-stop-zero", None)])
        .await;
    let other = token.wrapping_add(1);

    let unknown = http_req_call_req(&req(1, other, "/"));
    assert_eq!(gw.error(2, &unknown).await, CONF_TOKEN_NOT_FOUND);
    let unknown = http_resp_call_req(2, other, 200, &[]);
    assert_eq!(gw.error(4, &unknown).await, CONF_TOKEN_NOT_FOUND);
    assert_eq!(
        gw.error(2, b"certainly not a flatbuffer").await,
        BAD_REQUEST
    );
    assert_eq!(gw.error(1, &[0xff; 12]).await, BAD_REQUEST);
    // A frame type the gateway never sends, with a valid payload.
    let valid = http_req_call_req(&req(3, token, "/"));
    assert_eq!(gw.error(9, &valid).await, BAD_REQUEST);
    // A method outside the enum.
    let bad_method = http_req_call_req(&Req {
        method: 15,
        ..req(4, token, "/")
    });
    assert_eq!(gw.error(2, &bad_method).await, BAD_REQUEST);

    let (ty, reply) = gw
        .exchange(2, &http_req_call_req(&req(5, token, "/")))
        .await;
    assert_eq!(ty, 2);
    assert_eq!(root::<ReqCallRespV>(&reply).u32(0), 5);
    runner.stop().await;
}

#[tokio::test]
async fn a_garbage_first_frame_does_not_pin_the_connection() {
    let runner = start().await;
    let mut gw = Client::connect(&runner).await;
    let (ty, _) = gw.exchange(2, b"garbage").await;
    assert_eq!(ty, 0);
    gw.prepare(
        "route#1#ext-plugin-pre-req#1",
        &[("debug-echo", Some("{}"))],
    )
    .await;
    runner.stop().await;
}

#[tokio::test]
async fn a_runner_fixed_to_flatbuffers_serves_it() {
    let config = Config {
        protocol: ProtocolSetting::Fixed(Protocol::FlatBuffers),
        ..Config::default()
    };
    let runner = TestRunner::start_with(config, registry()).await;
    let mut gw = Client::connect(&runner).await;
    let token = gw
        .prepare("route#1#ext-plugin-pre-req#1", &[("test-stop-zero", None)])
        .await;
    let (ty, _) = gw
        .exchange(2, &http_req_call_req(&req(1, token, "/")))
        .await;
    assert_eq!(ty, 2);
    runner.stop().await;
}

/// One runner, no protocol setting: a Cap'n Proto gateway and a FlatBuffers gateway on two
/// connections open at the same time, their calls run concurrently.
#[tokio::test]
async fn one_auto_runner_serves_both_protocols_at_once() {
    let runner = TestRunner::start(registry()).await;
    assert_eq!(runner.runner().config().protocol, ProtocolSetting::Auto);
    let mut capnp = runner.connect_with(Protocol::Capnp).await;
    let mut fb = Client::connect(&runner).await;

    let key = "route#1#ext-plugin-pre-req#1";
    let fb_token = fb.prepare(key, &[("test-stop-zero", None)]).await;
    let capnp_token = capnp.prepare(key, &[("test-stop-zero", "")]).await.unwrap();
    assert_eq!(capnp_token, fb_token, "both protocols share one conf cache");

    for round in 0..20u32 {
        let capnp_call = async {
            let reply = capnp
                .call(capnp_token, &request(Method::Get, "/"))
                .await
                .unwrap();
            assert!(matches!(reply.action, ReqAction::Stop(ref s) if s.headers.len() == 2));
        };
        let fb_call = async {
            let r = req(round, fb_token, "/");
            let (ty, reply) = fb.exchange(2, &http_req_call_req(&r)).await;
            assert_eq!(ty, 2);
            assert_eq!(root::<ReqCallRespV>(&reply).u32(0), round);
        };
        tokio::join!(capnp_call, fb_call);
    }
    let err = capnp
        .call(capnp_token.wrapping_add(1), &request(Method::Get, "/"))
        .await;
    assert!(matches!(
        err,
        Err(GatewayError::Runner(ModelErrorCode::ConfTokenNotFound))
    ));
    runner.stop().await;
}
