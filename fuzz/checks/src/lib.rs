//! What each fuzz target checks, and the seed messages its corpus starts from.
//!
//! The targets in `fuzz_targets/` are one line each; the checks live here so that
//! `tests/fuzz_regressions.rs` (a user of this crate) replays a found input
//! through exactly the code the fuzzer ran. Every check must hold for *any* input: a panic,
//! hang or abort is a finding.

use std::sync::OnceLock;

use bytes::{Bytes, BytesMut};
use ext_plugin_runner::codec::{detect, Protocol};
use ext_plugin_runner::frame::{split_frame, write_frame, FrameHeader, HEADER_LEN, MAX_PAYLOAD};
use ext_plugin_runner::model::{
    DataPair, ErrorCode, ExtraInfoReq, ExtraInfoResp, HttpReqCallReq, HttpReqCallResp,
    HttpRespCallReq, HttpRespCallResp, Method, Pair, PrepareConfReq, PrepareConfResp, ReqAction,
    Rewrite, Stop,
};
use ext_plugin_runner::Registry;

mod conf_calls;
pub use conf_calls::{conf_call_seeds, conf_calls};

/// Frame target: splits arbitrary bytes into frames as a connection's read buffer would, and
/// checks that every byte is accounted for and that a re-framed payload splits back the same.
pub fn frames(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    let mut consumed = 0;
    while let Some(frame) = split_frame(&mut buf) {
        consumed += HEADER_LEN + frame.payload.len();
        assert!(frame.payload.len() <= MAX_PAYLOAD);
        // detect() sees every first payload of an `auto` connection.
        let _ = detect(&frame.payload);
        if !frame.payload.is_empty() {
            let mut out = Vec::new();
            write_frame(&mut out, frame.ty, |o| o.extend_from_slice(&frame.payload))
                .expect("a split payload fits a frame");
            let again = split_frame(&mut BytesMut::from(&out[..])).expect("a whole frame");
            assert_eq!(again, frame);
        }
    }
    assert_eq!(consumed + buf.len(), data.len(), "bytes lost or invented");
    // What is left is an incomplete frame: a short header, or a short payload.
    if let Some(h) = FrameHeader::parse(&buf) {
        assert!(buf.len() < HEADER_LEN + h.len);
    } else {
        assert!(buf.len() < HEADER_LEN);
    }
    let _ = detect(data);
}

/// Codec targets: runs a payload through every decoder of `protocol`, both the runner's (which
/// face a hostile gateway) and the gateway's (which the fake gateway and replayer use).
///
/// A message the runner decodes must survive a round trip: encoded again by the gateway side,
/// it decodes to the same message, so nothing a decoder accepts is something the encoders
/// cannot express.
pub fn codec(protocol: Protocol, data: &[u8]) {
    let payload = Bytes::copy_from_slice(data);
    let runner = protocol.runner_codec();
    let mut gateway = protocol.gateway_codec();
    let mut out = Vec::new();

    let mut prepare = PrepareConfReq::default();
    if runner
        .decode_prepare_conf_req(&payload, &mut prepare)
        .is_ok()
    {
        gateway.encode_prepare_conf_req(&prepare, &mut out);
        let mut again = PrepareConfReq::default();
        runner
            .decode_prepare_conf_req(&Bytes::from(std::mem::take(&mut out)), &mut again)
            .expect("a re-encoded prepare_conf decodes");
        assert_eq!(again, prepare);
    }
    let mut req = HttpReqCallReq::default();
    if runner.decode_http_req_call_req(&payload, &mut req).is_ok() {
        gateway.encode_http_req_call_req(&req, &mut out);
        let mut again = HttpReqCallReq::default();
        runner
            .decode_http_req_call_req(&Bytes::from(std::mem::take(&mut out)), &mut again)
            .expect("a re-encoded http_req_call decodes");
        assert_eq!(again, req);
    }
    let mut resp_req = HttpRespCallReq::default();
    if runner
        .decode_http_resp_call_req(&payload, &mut resp_req)
        .is_ok()
    {
        gateway.encode_http_resp_call_req(&resp_req, &mut out);
        let mut again = HttpRespCallReq::default();
        runner
            .decode_http_resp_call_req(&Bytes::from(std::mem::take(&mut out)), &mut again)
            .expect("a re-encoded http_resp_call decodes");
        assert_eq!(again, resp_req);
    }
    if let Ok(info) = runner.decode_extra_info_resp(&payload) {
        gateway.encode_extra_info_resp(&info, &mut out);
        let again = runner
            .decode_extra_info_resp(&Bytes::from(std::mem::take(&mut out)))
            .expect("a re-encoded extra_info answer decodes");
        assert_eq!(again, info);
    }

    lazy_call(protocol, data);
    if protocol == Protocol::Capnp {
        own_reader_agrees_with_the_library(&payload);
    }

    // The gateway side: decoding must not panic; Debug reads every field it produced.
    let _ = format!("{:?}", gateway.decode_prepare_conf_resp(&payload));
    let _ = format!("{:?}", gateway.decode_http_req_call_resp(&payload));
    // What the runner writes (stops, rewrites and, in FlatBuffers, http_resp_call replies are
    // written by hand) reads back as written.
    if let Ok(reply) = gateway.decode_http_req_call_resp(&payload) {
        protocol
            .runner_codec()
            .encode_http_req_call_resp(&reply, &mut out);
        let again = gateway
            .decode_http_req_call_resp(&Bytes::from(std::mem::take(&mut out)))
            .expect("a re-encoded http_req_call reply decodes");
        assert_eq!(again, reply);
    }
    let _ = format!("{:?}", gateway.decode_http_resp_call_resp(&payload));
    if let Ok(reply) = gateway.decode_http_resp_call_resp(&payload) {
        protocol
            .runner_codec()
            .encode_http_resp_call_resp(&reply, &mut out);
        let again = gateway
            .decode_http_resp_call_resp(&Bytes::from(std::mem::take(&mut out)))
            .expect("a re-encoded http_resp_call reply decodes");
        assert_eq!(again, reply);
    }
    let _ = format!("{:?}", gateway.decode_extra_info_req(&payload));
    let _ = format!("{:?}", gateway.decode_error_resp(&payload));
}

/// Part of the codec targets, for the lazy decoders: a call's headers and arguments are located
/// at decode and read as text only when a plugin asks (`Entries`), so a non-UTF-8 string is
/// first met by a reader. Decodes `data` as an `http_req_call` payload, then runs a plugin that
/// reads the request through every accessor of the SDK, in an order (and with writes between
/// reads) that the input's byte sum picks, and reads the entries directly too. Nothing may
/// panic, and a rewrite is seen by the reads after it.
pub fn lazy_call(protocol: Protocol, data: &[u8]) {
    let script = data.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    let payload = Bytes::copy_from_slice(data);
    let mut req = HttpReqCallReq::default();
    if protocol
        .runner_codec()
        .decode_http_req_call_req(&payload, &mut req)
        .is_err()
    {
        return;
    }
    // The entries as a plugin-less reader would see them, from the back.
    for e in req.headers.iter().rev().chain(req.args.iter()) {
        let _ = (
            e.name(),
            e.value(),
            e.value_text(),
            e.name_eq_ignore_case("Host"),
        );
    }
    SCRIPT.with(|s| s.set(script));
    let chain = lazy_reader_chain();
    let mut gw = ext_plugin_sdk::harness::LocalGateway::new();
    let _ = ext_plugin_sdk::harness::block_on(gw.call(chain, &req));
    assert_eq!(req.headers.as_pairs().len(), req.headers.len());
    // A list found malformed reads as empty, however it is read, and says so (the runner then
    // answers BAD_REQUEST).
    for list in [&req.headers, &req.args] {
        if list.malformed().is_some() {
            assert_eq!(list.len(), 0);
            assert!(list.iter().next().is_none() && list.as_pairs().is_empty());
            assert!(req.malformed().is_some());
        }
    }
}

/// Part of the capnp target: the runner reads `http_req_call` with a small reader of its own
/// when the message is in the simple encoding, and with the capnp library otherwise. Whatever
/// the library reads, the runner must read the same, every header and argument included.
fn own_reader_agrees_with_the_library(payload: &Bytes) {
    let mut by_the_library = HttpReqCallReq::default();
    if ext_plugin_runner::codec::capnp::decode_req_with_the_crate(payload, &mut by_the_library)
        .is_err()
    {
        return;
    }
    let mut req = HttpReqCallReq::default();
    Protocol::Capnp
        .runner_codec()
        .decode_http_req_call_req(payload, &mut req)
        .expect("what the library reads, the runner reads");
    assert_eq!(req, by_the_library);
    assert_eq!(req.malformed(), None, "the library located every pair");
}

thread_local! {
    static SCRIPT: std::cell::Cell<u8> = const { std::cell::Cell::new(0) };
}

fn lazy_reader_chain() -> &'static ext_plugin_sdk::Chain {
    static CHAIN: OnceLock<std::sync::Arc<ext_plugin_sdk::Chain>> = OnceLock::new();
    CHAIN.get_or_init(|| {
        ext_plugin_sdk::harness::Harness::new(Registry::new().with::<LazyReader>())
            .prepare(
                "route#fuzz#ext-plugin-pre-req#1",
                &[(<LazyReader as ext_plugin_sdk::Plugin>::NAME, "null")],
            )
            .expect("the reader prepares")
    })
}

/// Reads the request through every accessor, in an order the script byte rotates.
struct LazyReader;

impl ext_plugin_sdk::Plugin for LazyReader {
    const NAME: &'static str = "fuzz-lazy-reader";
    type Conf = ();

    fn prepare(
        _: (),
        _: &mut ext_plugin_sdk::PrepareEnv<'_>,
    ) -> Result<Self, ext_plugin_sdk::ConfError> {
        Ok(LazyReader)
    }

    async fn request_filter(
        &self,
        call: &mut ext_plugin_sdk::RequestCall<'_>,
    ) -> Result<ext_plugin_sdk::Flow, ext_plugin_sdk::PluginError> {
        let script = SCRIPT.with(std::cell::Cell::get);
        let mut host_set = false;
        const STEPS: u8 = 12;
        for i in 0..STEPS {
            match (i + script) % STEPS {
                0 => drop(call.path().len()),
                1 => drop(call.header("host").map(str::len)),
                2 => drop(call.header_values("cookie").count()),
                3 => drop(
                    call.headers()
                        .map(|(n, v)| n.len() + v.len())
                        .sum::<usize>(),
                ),
                4 => drop(call.original_headers().len()),
                5 => drop((
                    call.arg("a"),
                    call.args().count(),
                    call.original_args().len(),
                )),
                6 => {
                    for var in [
                        "http_host",
                        "cookie_sid",
                        "arg_a",
                        "request_uri",
                        "args",
                        "host",
                        "uri",
                    ] {
                        let _ = call.var(var).await;
                    }
                }
                7 if script & 0x80 != 0 => {
                    call.set_header("host", "rewritten");
                    host_set = true;
                }
                8 if script & 0x40 != 0 => call.append_arg("a", "1"),
                9 if script & 0x20 != 0 => call.remove_header("cookie"),
                10 if script & 0x10 != 0 => call.set_path("/p"),
                // Rewrites are seen by later reads.
                _ if host_set => assert_eq!(call.header("HOST"), Some("rewritten")),
                _ => {}
            }
        }
        Ok(ext_plugin_sdk::Flow::Continue)
    }
}

/// Breaks the string `value` of an encoded `protocol` message where it lies, leaving every other
/// byte as it was: in FlatBuffers its length then points far past the payload; in Cap'n Proto
/// its text loses the NUL that ends it (so `value` must be 8n - 1 bytes long: with its NUL it
/// fills whole words, and the NUL is the byte after it). A header broken this way is only found
/// when something reads the headers (lazy decoding).
pub fn break_string(protocol: Protocol, bytes: &mut [u8], value: &str) {
    let at = bytes
        .windows(value.len())
        .position(|w| w == value.as_bytes())
        .expect("the value is in the message as it was written");
    match protocol {
        Protocol::FlatBuffers => bytes[at - 4..at].copy_from_slice(&0x7FFF_FFF0u32.to_le_bytes()),
        Protocol::Capnp => {
            assert_eq!(value.len() % 8, 7, "the NUL must end a word");
            let nul = at + value.len();
            assert_eq!(bytes[nul], 0, "the text's NUL");
            bytes[nul] = b'X';
        }
    }
}

/// A header value [`break_string`] can break in both codecs.
pub const BROKEN_VALUE: &str = "broken!";

/// Separates chain entries in a conf-target input (never valid inside UTF-8).
pub const ENTRY_SEP: u8 = 0xFF;
/// Separates a plugin name from its JSON conf inside an entry.
pub const NAME_SEP: u8 = 0x00;

/// Conf target: a chain `name\0json\xFFname\0json…` prepared with the built-in plugins through
/// [`Registry::check`], as `prepare_conf` would. Accepted or refused, it must not panic.
pub fn confs(data: &[u8]) {
    static BUILTIN: OnceLock<Registry> = OnceLock::new();
    let registry = BUILTIN.get_or_init(registry);
    let Some(chain) = parse_chain(data) else {
        return;
    };
    let req = PrepareConfReq {
        key: "route#fuzz#ext-plugin-pre-req#1".into(),
        conf: chain
            .into_iter()
            .map(|(name, conf)| Pair::new(name.to_owned(), conf.to_owned()))
            .collect(),
    };
    let _ = registry.check(&req);
}

/// A conf-target input as `(plugin, conf)` pairs; `None` when a part is not UTF-8.
pub fn parse_chain(data: &[u8]) -> Option<Vec<(&str, &str)>> {
    data.split(|&b| b == ENTRY_SEP)
        .map(|entry| {
            let (name, conf) = match entry.iter().position(|&b| b == NAME_SEP) {
                Some(i) => (&entry[..i], &entry[i + 1..]),
                None => (entry, &[][..]),
            };
            Some((
                std::str::from_utf8(name).ok()?,
                std::str::from_utf8(conf).ok()?,
            ))
        })
        .collect()
}

/// Every built-in plugin, with an (empty) OpenSergo rule store so that `opensergo` confs are
/// parsed too.
pub fn registry() -> Registry {
    let store = ext_plugin_catalogue::opensergo::RuleStore::new(Default::default());
    ext_plugin_catalogue::builtin().provide(store)
}

/// A conf-target input for one chain.
pub fn conf_input(chain: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, (name, conf)) in chain.iter().enumerate() {
        if i > 0 {
            out.push(ENTRY_SEP);
        }
        out.extend_from_slice(name.as_bytes());
        out.push(NAME_SEP);
        out.extend_from_slice(conf.as_bytes());
    }
    out
}

fn pairs(list: &[(&str, Option<&str>)]) -> Vec<Pair> {
    list.iter()
        .map(|(n, v)| match v {
            Some(v) => Pair::new(n.to_string(), v.to_string()),
            None => Pair::absent(n.to_string()),
        })
        .collect()
}

/// Every message either side sends, encoded by `protocol`: the codec targets' seed corpus.
pub fn codec_seeds(protocol: Protocol) -> Vec<(String, Vec<u8>)> {
    let mut gateway = protocol.gateway_codec();
    let mut runner = protocol.runner_codec();
    let mut seeds = Vec::new();
    let mut add = |name: &str, encode: &mut dyn FnMut(&mut Vec<u8>)| {
        let mut out = Vec::new();
        encode(&mut out);
        seeds.push((name.to_owned(), out));
    };

    let prepare = PrepareConfReq {
        key: "route#1#ext-plugin-pre-req#1".into(),
        conf: pairs(&[
            ("debug-echo", Some("{}")),
            ("key-auth", Some(r#"{"header":"apikey"}"#)),
            ("request-id", None),
        ]),
    };
    add("prepare_conf_req", &mut |o| {
        gateway.encode_prepare_conf_req(&prepare, o)
    });
    let req = HttpReqCallReq {
        id: 7,
        src_ip: Some([10, 1, 2, 3].into()),
        method: Method::Post,
        path: "/a/b%20c".into(),
        args: pairs(&[("q", Some("1")), ("flag", None)]).into(),
        headers: pairs(&[("host", Some("example.com")), ("x-empty", Some(""))]).into(),
        conf_token: 42,
        extra_info: vec![DataPair {
            name: "remote_user".into(),
            value: Some(Bytes::from_static(b"bob")),
        }],
    };
    add("http_req_call_req", &mut |o| {
        gateway.encode_http_req_call_req(&req, o)
    });
    let v6 = HttpReqCallReq {
        src_ip: Some("::1".parse().unwrap()),
        extra_info: Vec::new(),
        ..req.clone()
    };
    add("http_req_call_req_v6", &mut |o| {
        gateway.encode_http_req_call_req(&v6, o)
    });
    // Malformed in a header that decoding does not read: only a reader finds it.
    let broken = HttpReqCallReq {
        headers: pairs(&[
            ("host", Some("example.com")),
            ("x-broken", Some(BROKEN_VALUE)),
        ])
        .into(),
        ..req.clone()
    };
    add("http_req_call_req_broken_header", &mut |o| {
        gateway.encode_http_req_call_req(&broken, o);
        break_string(protocol, o, BROKEN_VALUE);
    });
    let resp_req = HttpRespCallReq {
        id: 8,
        status: 502,
        headers: pairs(&[("content-type", Some("text/plain"))]),
        conf_token: 42,
    };
    add("http_resp_call_req", &mut |o| {
        gateway.encode_http_resp_call_req(&resp_req, o)
    });
    for (name, result) in [
        ("extra_info_resp", Some(Bytes::from_static(b"value"))),
        ("extra_info_resp_nil", None),
    ] {
        add(name, &mut |o| {
            gateway.encode_extra_info_resp(
                &ExtraInfoResp {
                    result: result.clone(),
                },
                o,
            )
        });
    }

    add("prepare_conf_resp", &mut |o| {
        runner.encode_prepare_conf_resp(&PrepareConfResp { conf_token: 9 }, o)
    });
    let actions = [
        ("continue", ReqAction::Continue),
        (
            "stop",
            ReqAction::Stop(Stop {
                status: 403,
                headers: pairs(&[("x-reason", Some("no")), ("server", None)]),
                body: Bytes::from_static(b"denied"),
            }),
        ),
        (
            "rewrite",
            ReqAction::Rewrite(Rewrite {
                path: Some("/new".into()),
                headers: pairs(&[("x-a", Some("1")), ("x-gone", None)]),
                args: pairs(&[("k", Some("v"))]),
                resp_headers: pairs(&[("x-resp", Some("r"))]),
                body: Some(Bytes::from_static(b"{}")),
            }),
        ),
    ];
    for (name, action) in actions {
        let msg = HttpReqCallResp { id: 7, action };
        add(&format!("http_req_call_resp_{name}"), &mut |o| {
            runner.encode_http_req_call_resp(&msg, o)
        });
    }
    let resp = HttpRespCallResp {
        id: 8,
        status: 201,
        headers: pairs(&[("x-b", Some("2"))]),
        body: Some(Bytes::from_static(b"body")),
    };
    add("http_resp_call_resp", &mut |o| {
        runner.encode_http_resp_call_resp(&resp, o)
    });
    for (name, msg) in [
        (
            "extra_info_req_var",
            ExtraInfoReq::Var("request_time".into()),
        ),
        ("extra_info_req_body", ExtraInfoReq::ReqBody),
        ("extra_info_resp_body", ExtraInfoReq::RespBody),
    ] {
        add(name, &mut |o| runner.encode_extra_info_req(&msg, o));
    }
    add("error_resp", &mut |o| {
        runner.encode_error_resp(ErrorCode::ConfTokenNotFound, o)
    });
    seeds
}

/// The frame target's seeds: each codec seed framed as its message type, plus a stream of
/// several frames.
pub fn frame_seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    let mut stream = Vec::new();
    for p in Protocol::ALL {
        for (name, payload) in codec_seeds(p) {
            let ty = frame_type_of(&name);
            let mut out = Vec::new();
            write_frame(&mut out, ty, |o| o.extend_from_slice(&payload)).expect("fits");
            stream.extend_from_slice(&out);
            seeds.push((format!("{p}_{name}"), out));
        }
    }
    seeds.push(("stream".into(), stream));
    seeds
}

fn frame_type_of(seed_name: &str) -> u8 {
    [
        ("prepare", 1),
        ("http_req", 2),
        ("extra", 3),
        ("http_resp", 4),
    ]
    .iter()
    .find(|(prefix, _)| seed_name.starts_with(prefix))
    .map_or(0, |&(_, ty)| ty)
}

/// The conf target's seeds: each built-in plugin with a typical conf, and a few chains.
pub fn conf_seeds() -> Vec<(String, Vec<u8>)> {
    CONF_SEEDS
        .iter()
        .enumerate()
        .map(|(i, chain)| (format!("chain{i}"), conf_input(chain)))
        .collect()
}

const CONF_SEEDS: &[&[(&str, &str)]] = &[
    &[("debug-echo", "{}")],
    &[(
        "echo",
        r#"{"before_body":"<","body":"hello","after_body":">","headers":{"X-A":"1"}}"#,
    )],
    &[(
        "request-id",
        r#"{"header_name":"X-Request-Id","algorithm":"uuid"}"#,
    )],
    &[(
        "key-auth",
        r#"{"hide_credentials":true,"consumers":[{"username":"jack","key":"jack-key","custom_id":"t-1"}]}"#,
    )],
    &[(
        "basic-auth",
        r#"{"hide_credentials":true,"consumers":[{"username":"jack","password":"pw"}]}"#,
    )],
    &[(
        "jwt-auth",
        r#"{"consumers":[{"username":"jack","key":"user-key","secret":"my-secret","lifetime_grace_period":5}]}"#,
    )],
    &[("ip-restriction", r#"{"whitelist":["10.0.0.0/8","::1"]}"#)],
    &[("uri-blocker", r#"{"block_rules":["^/admin",".*\\.php$"]}"#)],
    &[(
        "ua-restriction",
        r#"{"denylist":["(?i)curl","^bot/\\d+"],"message":"Go away"}"#,
    )],
    &[(
        "referer-restriction",
        r#"{"whitelist":["example.com","*.trusted.org"]}"#,
    )],
    &[(
        "cors",
        r#"{"allow_origins":"*","allow_methods":"GET,POST"}"#,
    )],
    &[(
        "limit-count",
        r#"{"count":2,"time_window":60,"rejected_code":429,"rejected_msg":"Too many requests"}"#,
    )],
    &[(
        "limit-req",
        r#"{"rate":1,"burst":0,"rejected_code":503,"rejected_msg":"slow down","retry_after":true}"#,
    )],
    &[(
        "limit-conn",
        r#"{"conn":3,"burst":0,"default_conn_delay":0.1,"key_type":"constant","key":"all"}"#,
    )],
    &[(
        "api-breaker",
        r#"{"break_response_code":503,"break_response_body":"upstream unhealthy","policy":"error_ratio","threshold":0.5,"min_request_amount":5,"stat_interval_ms":10000,"buckets":10,"unhealthy":{"http_statuses":[500,502]}}"#,
    )],
    &[(
        "fault-injection",
        r#"{"abort":{"http_status":503,"body":"injected for $remote_addr","headers":{"X-Fault":"1"}}}"#,
    )],
    &[(
        "proxy-rewrite",
        r#"{"regex_uri":["^/api/(\\w+)/(.*)","/svc/$1-${2}"],"headers":{"set":{"x-a":"1"}}}"#,
    )],
    &[(
        "request-validation",
        r#"{"body_schema":{"type":"object","required":["name"],"properties":{"name":{"type":"string"},"age":{"type":"integer","minimum":0}}}}"#,
    )],
    &[(
        "traffic-tag",
        r#"{"rules":[{"match":[{"vars":[["http_x_user_id","==","12345"],["uri","~~","^/index"]]}],"weighted_tags":[{"tag":"gray","weight":1}]}]}"#,
    )],
    &[(
        "opensergo",
        r#"{"app":"foo-app","namespace":"default","resource":"$request_method:$uri","fallback":{"status":429,"headers":{"X-Limited":"1"},"body":"busy"},"tag_header":"x-opensergo-tag"}"#,
    )],
    &[
        ("debug-echo", "{}"),
        ("request-id", "{}"),
        ("limit-count", r#"{"count":1,"time_window":1}"#),
    ],
    &[
        (
            "hmac-auth",
            r#"{"signed_headers":["date"],"validate_request_body":true,"consumers":[{"username":"jack","key_id":"jack-key","secret_key":"s3cret","group_id":"g1"}]}"#,
        ),
        (
            "consumer-restriction",
            r#"{"type":"consumer_group_id","whitelist":["g1"],"allowed_by_methods":[{"user":"jack","methods":["GET"]}]}"#,
        ),
    ],
    &[(
        "response-rewrite",
        r#"{"headers":{"set":{"X-Served-By":"$remote_addr"},"remove":["X-Debug"]}}"#,
    )],
    &[(
        "adaptive-limit",
        r#"{"trigger_rt_ms":200,"min_limit":4,"headroom":0.1,"window_ms":10000,"buckets":100}"#,
    )],
    &[(
        "limit-req",
        r#"{"rate":10,"burst":5,"key":"http_x_user","specific_items":{"vip":100},"match_strategy":"prefix","pattern":"u-","warm_up_period_sec":10,"dry_run":true}"#,
    )],
];
