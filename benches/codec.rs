//! The wire hot path without the socket: split a frame, decode a realistic request, encode
//! replies. Run with `cargo bench --bench codec`.

use bytes::{Bytes, BytesMut};
use divan::{black_box, Bencher};
use ext_plugin_runner::codec::Protocol;
use ext_plugin_runner::frame::{split_frame, write_frame, FrameType};
use ext_plugin_runner::model::{
    HttpReqCallReq, HttpReqCallResp, Method, Pair, ReqAction, Rewrite, Stop,
};

fn main() {
    divan::main();
}

/// A browser-like request: 12 headers, 3 args.
fn realistic() -> HttpReqCallReq {
    let mut req = HttpReqCallReq {
        id: 1,
        src_ip: Some("192.0.2.10".parse().unwrap()),
        method: Method::Get,
        path: "/api/v1/orders/12345".into(),
        conf_token: 7,
        ..Default::default()
    };
    for (n, v) in [
        ("host", "api.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36",
        ),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, deflate, br"),
        ("accept-language", "en-US,en;q=0.9"),
        ("authorization", "Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig"),
        ("cookie", "sid=abc123; theme=dark"),
        ("x-request-id", "3f2b9c1e-1111-2222-3333-444455556666"),
        ("x-forwarded-for", "198.51.100.7"),
        ("x-real-ip", "198.51.100.7"),
        ("referer", "https://shop.example.com/cart"),
        ("connection", "keep-alive"),
    ] {
        req.headers.push(Pair::new(n, v));
    }
    for (n, v) in [("page", "2"), ("sort", "desc"), ("fields", "id,total")] {
        req.args.push(Pair::new(n, v));
    }
    req
}

fn framed(protocol: Protocol, req: &HttpReqCallReq) -> Vec<u8> {
    let mut codec = protocol.gateway_codec();
    let mut out = Vec::new();
    write_frame(&mut out, FrameType::HttpReqCall as u8, |o| {
        codec.encode_http_req_call_req(req, o)
    })
    .unwrap();
    out
}

#[divan::bench(args = Protocol::ALL)]
fn split_and_decode_request(bencher: Bencher<'_, '_>, protocol: Protocol) {
    let wire = framed(protocol, &realistic());
    let codec = protocol.runner_codec();
    let mut buf = BytesMut::with_capacity(wire.len() * 2);
    let mut out = HttpReqCallReq::default();
    bencher.bench_local(|| {
        // The server drops the last call's decoded strings before reading the next frame, so
        // the read buffer's storage is reused; do the same here.
        out.headers.clear();
        out.args.clear();
        out.path = Default::default();
        buf.extend_from_slice(&wire);
        let frame = split_frame(&mut buf).unwrap();
        codec
            .decode_http_req_call_req(black_box(&frame.payload), &mut out)
            .unwrap();
        black_box(out.headers.len());
    });
}

#[divan::bench(args = Protocol::ALL)]
fn encode_replies(bencher: Bencher<'_, '_>, protocol: Protocol) {
    let mut codec = protocol.runner_codec();
    let replies = [
        HttpReqCallResp {
            id: 1,
            action: ReqAction::Continue,
        },
        HttpReqCallResp {
            id: 2,
            action: ReqAction::Stop(Stop {
                status: 403,
                headers: vec![Pair::new("content-type", "application/json")],
                body: Bytes::from_static(b"{\"message\":\"Your IP address is not allowed\"}\n"),
            }),
        },
        HttpReqCallResp {
            id: 3,
            action: ReqAction::Rewrite(Rewrite {
                headers: vec![Pair::new(
                    "X-Request-Id",
                    "3f2b9c1e-1111-2222-3333-444455556666",
                )],
                resp_headers: vec![Pair::new(
                    "X-Request-Id",
                    "3f2b9c1e-1111-2222-3333-444455556666",
                )],
                ..Default::default()
            }),
        },
    ];
    let mut out = Vec::with_capacity(4096);
    bencher.bench_local(|| {
        out.clear();
        for r in &replies {
            write_frame(&mut out, FrameType::HttpReqCall as u8, |o| {
                codec.encode_http_req_call_resp(black_box(r), o)
            })
            .unwrap();
        }
        black_box(out.len());
    });
}
