//! The wire hot path without the socket: split a frame, decode a realistic request, encode
//! replies. Run with `cargo bench --bench codec`.

mod common;

use bytes::{Bytes, BytesMut};
use common::fixtures::{realistic, replies};
use divan::{black_box, Bencher};
use ext_plugin_runner::codec::Protocol;
use ext_plugin_runner::frame::{split_frame, write_frame, FrameType};
use ext_plugin_runner::model::HttpReqCallReq;

fn main() {
    divan::main();
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

/// Only the framing: find where a frame ends and take it off the read buffer.
#[divan::bench(args = Protocol::ALL)]
fn split_frame_only(bencher: Bencher<'_, '_>, protocol: Protocol) {
    let wire = framed(protocol, &realistic());
    let mut buf = BytesMut::with_capacity(wire.len() * 2);
    bencher.bench_local(|| {
        buf.extend_from_slice(&wire);
        black_box(split_frame(&mut buf).unwrap());
    });
}

/// Decode, then read every string the way plugins do (as `&str`), so lazy work would show.
#[divan::bench(args = Protocol::ALL)]
fn decode_and_walk_request(bencher: Bencher<'_, '_>, protocol: Protocol) {
    let wire = framed(protocol, &realistic());
    let payload = Bytes::copy_from_slice(&wire[4..]);
    let codec = protocol.runner_codec();
    let mut out = HttpReqCallReq::default();
    bencher.bench_local(|| {
        codec
            .decode_http_req_call_req(black_box(&payload), &mut out)
            .unwrap();
        let mut n = out.path.len();
        for p in out.headers.iter().chain(&out.args) {
            n += p.name().len() + p.value().map_or(0, str::len);
        }
        black_box(n);
    });
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
    let replies = replies();
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
