//! A Cap'n Proto gateway written from `schema/ext_plugin.capnp` alone: it uses the code capnpc
//! generates from the schema, hand-written framing and blocking std sockets, and none of this
//! crate's codec, model or test kit. It drives the real binary, as another gateway would.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use capnp::message::{Builder, HeapAllocator, ReaderOptions};
use capnp::serialize;

mod proto {
    #[allow(dead_code, clippy::all)]
    pub mod ext_plugin_capnp {
        include!("../src/proto/ext_plugin_capnp.rs");
    }
}
use proto::ext_plugin_capnp as s;

struct Runner(Child);

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start() -> (Runner, UnixStream) {
    let path = std::env::temp_dir().join(format!("epr-capnp-client-{}.sock", std::process::id()));
    let child = Command::new(env!("CARGO_BIN_EXE_ext-plugin-runner"))
        .env("APISIX_LISTEN_ADDRESS", format!("unix:{}", path.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let runner = Runner(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(c) = UnixStream::connect(&path) {
            c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            return (runner, c);
        }
        assert!(Instant::now() < deadline, "runner did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn send(c: &mut UnixStream, ty: u8, msg: &Builder<HeapAllocator>) {
    let payload = serialize::write_message_to_words(msg);
    let len = payload.len();
    let mut frame = vec![ty, (len >> 16) as u8, (len >> 8) as u8, len as u8];
    frame.extend_from_slice(&payload);
    c.write_all(&frame).unwrap();
}

fn recv(c: &mut UnixStream) -> (u8, Vec<u8>) {
    let mut header = [0u8; 4];
    c.read_exact(&mut header).unwrap();
    let len = (header[1] as usize) << 16 | (header[2] as usize) << 8 | header[3] as usize;
    let mut payload = vec![0u8; len];
    c.read_exact(&mut payload).unwrap();
    (header[0], payload)
}

fn read(payload: &[u8]) -> capnp::message::Reader<serialize::OwnedSegments> {
    serialize::read_message(payload, ReaderOptions::new()).unwrap()
}

fn prepare(c: &mut UnixStream, key: &str, chain: &[(&str, &str)]) -> u32 {
    let mut m = Builder::new_default();
    let mut req = m.init_root::<s::prepare_conf_req::Builder<'_>>();
    req.set_key(key);
    let mut conf = req.init_conf(chain.len() as u32);
    for (i, (name, value)) in chain.iter().enumerate() {
        let mut p = conf.reborrow().get(i as u32);
        p.set_name(*name);
        p.set_value(*value);
    }
    send(c, 1, &m);
    let (ty, payload) = recv(c);
    assert_eq!(ty, 1, "prepare_conf reply");
    let msg = read(&payload);
    let token = msg
        .get_root::<s::prepare_conf_resp::Reader<'_>>()
        .unwrap()
        .get_conf_token();
    assert_ne!(token, 0);
    token
}

fn http_call(c: &mut UnixStream, token: u32, id: u32, src: &[u8], headers: &[(&str, &str)]) {
    let mut m = Builder::new_default();
    let mut req = m.init_root::<s::h_t_t_p_req_call_req::Builder<'_>>();
    req.set_id(id);
    req.set_conf_token(token);
    req.set_src_ip(src);
    req.set_method(s::Method::Get);
    req.set_path("/client");
    let mut args = req.reborrow().init_args(1);
    args.reborrow().get(0).set_name("bare");
    let mut list = req.init_headers(headers.len() as u32);
    for (i, (n, v)) in headers.iter().enumerate() {
        let mut p = list.reborrow().get(i as u32);
        p.set_name(*n);
        p.set_value(*v);
    }
    send(c, 2, &m);
}

fn error_code(payload: &[u8]) -> s::ErrorCode {
    read(payload)
        .get_root::<s::error_resp::Reader<'_>>()
        .unwrap()
        .get_code()
        .unwrap()
}

#[test]
fn an_independent_capnp_gateway_gets_every_answer() {
    let (_runner, mut c) = start();

    // Stop, with a variable asked mid-call.
    let echo = prepare(
        &mut c,
        "route#1#ext-plugin-pre-req#1",
        &[("debug-echo", r#"{"vars": ["route_id"]}"#)],
    );
    http_call(&mut c, echo, 41, &[127, 0, 0, 1], &[]);
    let (ty, payload) = recv(&mut c);
    assert_eq!(ty, 3, "the runner asks for route_id");
    let msg = read(&payload);
    let info = msg.get_root::<s::extra_info_req::Reader<'_>>().unwrap();
    match info.get_info().which().unwrap() {
        s::extra_info_req::info::Var(name) => {
            assert_eq!(name.unwrap().to_str().unwrap(), "route_id")
        }
        _ => panic!("expected a var request"),
    }
    let mut answer = Builder::new_default();
    answer
        .init_root::<s::extra_info_resp::Builder<'_>>()
        .set_result(&b"7"[..]);
    send(&mut c, 3, &answer);
    let (ty, payload) = recv(&mut c);
    assert_eq!(ty, 2);
    let msg = read(&payload);
    let resp = msg
        .get_root::<s::h_t_t_p_req_call_resp::Reader<'_>>()
        .unwrap();
    assert_eq!(resp.get_id(), 41);
    let s::h_t_t_p_req_call_resp::action::Stop(stop) = resp.get_action().which().unwrap() else {
        panic!("echo stops")
    };
    let stop = stop.unwrap();
    assert_eq!(stop.get_status(), 200);
    let h = stop.get_headers().unwrap().get(0);
    assert_eq!(h.get_name().unwrap().to_str().unwrap(), "content-type");
    assert_eq!(h.get_value().unwrap().to_str().unwrap(), "application/json");
    let body: serde_json::Value = serde_json::from_slice(stop.get_body().unwrap()).unwrap();
    assert_eq!(body["vars"]["route_id"], "7");
    assert_eq!(
        body["args"],
        serde_json::json!([["bare", null]]),
        "a null value stays absent"
    );

    // Stop with an exact body: ip-restriction rejecting 127.0.0.1.
    let deny = prepare(
        &mut c,
        "route#2#ext-plugin-pre-req#1",
        &[("ip-restriction", r#"{"whitelist": ["10.0.0.0/8"]}"#)],
    );
    http_call(&mut c, deny, 42, &[127, 0, 0, 1], &[]);
    let (ty, payload) = recv(&mut c);
    assert_eq!(ty, 2);
    let msg = read(&payload);
    let resp = msg
        .get_root::<s::h_t_t_p_req_call_resp::Reader<'_>>()
        .unwrap();
    let s::h_t_t_p_req_call_resp::action::Stop(stop) = resp.get_action().which().unwrap() else {
        panic!("ip-restriction stops")
    };
    let stop = stop.unwrap();
    assert_eq!(stop.get_status(), 403);
    assert_eq!(
        stop.get_body().unwrap(),
        b"{\"message\":\"Your IP address is not allowed\"}\n"
    );

    // Continue: the same chain passes an address it lists.
    http_call(&mut c, deny, 43, &[10, 9, 8, 7], &[]);
    let (_, payload) = recv(&mut c);
    let msg = read(&payload);
    let resp = msg
        .get_root::<s::h_t_t_p_req_call_resp::Reader<'_>>()
        .unwrap();
    assert!(matches!(
        resp.get_action().which().unwrap(),
        s::h_t_t_p_req_call_resp::action::Continue(())
    ));

    // Rewrite: request-id keeps the client's id and echoes it on the response.
    let rid = prepare(
        &mut c,
        "route#3#ext-plugin-pre-req#1",
        &[("request-id", "{}")],
    );
    http_call(&mut c, rid, 44, &[127, 0, 0, 1], &[("x-request-id", "abc")]);
    let (_, payload) = recv(&mut c);
    let msg = read(&payload);
    let resp = msg
        .get_root::<s::h_t_t_p_req_call_resp::Reader<'_>>()
        .unwrap();
    let s::h_t_t_p_req_call_resp::action::Rewrite(rw) = resp.get_action().which().unwrap() else {
        panic!("request-id rewrites")
    };
    let rw = rw.unwrap();
    assert!(!rw.has_path(), "path untouched");
    assert_eq!(
        rw.get_headers().unwrap().len(),
        0,
        "the client's id is kept"
    );
    let rh = rw.get_resp_headers().unwrap().get(0);
    assert_eq!(rh.get_name().unwrap().to_str().unwrap(), "X-Request-Id");
    assert_eq!(rh.get_value().unwrap().to_str().unwrap(), "abc");

    // Response phase.
    let resp_token = prepare(
        &mut c,
        "route#1#ext-plugin-post-resp#1",
        &[("debug-echo", "{}")],
    );
    let mut m = Builder::new_default();
    let mut req = m.init_root::<s::h_t_t_p_resp_call_req::Builder<'_>>();
    req.set_id(9);
    req.set_status(502);
    req.set_conf_token(resp_token);
    let mut h = req.init_headers(1);
    h.reborrow().get(0).set_name("Server");
    h.reborrow().get(0).set_value("up");
    send(&mut c, 4, &m);
    let (ty, payload) = recv(&mut c);
    assert_eq!(ty, 4);
    let msg = read(&payload);
    let resp = msg
        .get_root::<s::h_t_t_p_resp_call_resp::Reader<'_>>()
        .unwrap();
    assert_eq!(resp.get_id(), 9);
    assert_eq!(resp.get_status(), 0);
    let headers: Vec<(String, String)> = resp
        .get_headers()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p.get_name().unwrap().to_string().unwrap(),
                p.get_value().unwrap().to_string().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        headers,
        [
            ("Server".to_string(), "up".to_string()),
            ("x-echo-upstream-status".to_string(), "502".to_string())
        ]
    );
    assert!(!resp.has_body(), "body kept");

    // Error frames, each leaving the connection usable.
    http_call(&mut c, 0xdead_beef, 45, &[127, 0, 0, 1], &[]);
    let (ty, payload) = recv(&mut c);
    assert_eq!(
        (ty, error_code(&payload)),
        (0, s::ErrorCode::ConfTokenNotFound)
    );
    c.write_all(&[2, 0, 0, 4, 1, 2, 3, 4]).unwrap();
    let (ty, payload) = recv(&mut c);
    assert_eq!((ty, error_code(&payload)), (0, s::ErrorCode::BadRequest));
    c.write_all(&[42, 0, 0, 2, 0, 0]).unwrap();
    let (ty, payload) = recv(&mut c);
    assert_eq!((ty, error_code(&payload)), (0, s::ErrorCode::BadRequest));
    assert_ne!(prepare(&mut c, "route#4#ext-plugin-pre-req#1", &[]), 0);
}
