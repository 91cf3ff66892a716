//! Unit tests of the FlatBuffers codec: round trips in both directions, absent vs empty values,
//! hostile buffers, protocol detection and the schema file's field ids.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::*;
use crate::codec::capnp::{segment_table_fits, CapnpCodec};
use crate::codec::{detect, GatewayCodec};
use crate::model::DataPair;

fn codec() -> FlatBuffersCodec {
    FlatBuffersCodec::new()
}

/// Runs an encoder and checks the payload is never empty (the gateway cannot decode nil).
fn payload(encode: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    let mut out = Vec::new();
    encode(&mut out);
    assert!(!out.is_empty(), "an encoder produced an empty payload");
    Bytes::from(out)
}

fn full_request() -> HttpReqCallReq {
    HttpReqCallReq {
        id: 7,
        src_ip: Some("2001:db8::1".parse().unwrap()),
        method: Method::Propfind,
        path: "/a b/ü".into(),
        args: vec![
            Pair::absent("flag"),
            Pair::new("e", ""),
            Pair::new("k", "v"),
            Pair::new("k", "w"),
        ]
        .into(),
        headers: vec![Pair::new("x", "1"), Pair::new("x", "2"), Pair::new("", "")].into(),
        conf_token: 99,
        extra_info: Vec::new(),
    }
}

fn gateway_requests() -> Vec<(u8, Bytes)> {
    let mut c = codec();
    let mut out = vec![
        (
            1,
            payload(|o| {
                c.encode_prepare_conf_req(
                    &PrepareConfReq {
                        key: "route#1#ext-plugin-pre-req#12".into(),
                        conf: vec![Pair::new("debug-echo", "{}"), Pair::absent("request-id")],
                    },
                    o,
                )
            }),
        ),
        (
            2,
            payload(|o| c.encode_http_req_call_req(&full_request(), o)),
        ),
        (
            4,
            payload(|o| {
                c.encode_http_resp_call_req(
                    &HttpRespCallReq {
                        id: 3,
                        status: 502,
                        headers: vec![Pair::new("Content-Type", "text/plain")],
                        conf_token: 12,
                    },
                    o,
                )
            }),
        ),
    ];
    // Requests of many sizes and shapes, as a gateway would send them.
    for n in 0..40u32 {
        let mut req = HttpReqCallReq {
            id: n,
            conf_token: n * 7919,
            src_ip: (n % 3 != 0).then(|| IpAddr::from([10, 0, (n % 256) as u8, 1])),
            method: Method::from_u8((n % 15) as u8).unwrap(),
            path: "/".repeat(n as usize + 1).into(),
            ..Default::default()
        };
        for i in 0..n {
            req = req.with_header(&format!("h{i}"), &"v".repeat(i as usize));
        }
        out.push((2, payload(|o| c.encode_http_req_call_req(&req, o))));
    }
    out
}

#[test]
fn gateway_requests_round_trip() {
    let mut c = codec();
    let prepare = PrepareConfReq {
        key: "route#1#ext-plugin-pre-req#12".into(),
        conf: vec![
            Pair::new("debug-echo", r#"{"vars":["route_id"]}"#),
            Pair::absent("x"),
        ],
    };
    let p = payload(|o| c.encode_prepare_conf_req(&prepare, o));
    let mut decoded = PrepareConfReq::default();
    c.decode_prepare_conf_req(&p, &mut decoded).unwrap();
    assert_eq!(decoded, prepare);

    for src_ip in [
        None,
        Some("10.1.2.3".parse().unwrap()),
        Some("::1".parse().unwrap()),
    ] {
        for method in Method::ALL {
            let req = HttpReqCallReq {
                src_ip,
                method,
                ..full_request()
            };
            let p = payload(|o| c.encode_http_req_call_req(&req, o));
            let mut decoded = HttpReqCallReq::default();
            c.decode_http_req_call_req(&p, &mut decoded).unwrap();
            assert_eq!(decoded, req);
        }
    }

    let resp = HttpRespCallReq {
        id: 4,
        status: 418,
        headers: vec![Pair::new("Set-Cookie", "a"), Pair::new("Set-Cookie", "b")],
        conf_token: 5,
    };
    let p = payload(|o| c.encode_http_resp_call_req(&resp, o));
    let mut decoded = HttpRespCallReq::default();
    c.decode_http_resp_call_req(&p, &mut decoded).unwrap();
    assert_eq!(decoded, resp);

    for result in [None, Some(Bytes::new()), Some(Bytes::from_static(b"x\0y"))] {
        let msg = ExtraInfoResp { result };
        let p = payload(|o| c.encode_extra_info_resp(&msg, o));
        assert_eq!(c.decode_extra_info_resp(&p).unwrap(), msg);
    }
}

#[test]
fn pushed_vars_have_no_field_and_are_not_invented() {
    let mut c = codec();
    let mut req = full_request();
    req.extra_info.push(DataPair {
        name: "route_id".into(),
        value: None,
    });
    let p = payload(|o| c.encode_http_req_call_req(&req, o));
    let mut decoded = HttpReqCallReq {
        extra_info: req.extra_info.clone(),
        ..Default::default()
    };
    c.decode_http_req_call_req(&p, &mut decoded).unwrap();
    assert!(decoded.extra_info.is_empty());
}

#[test]
fn decoding_reuses_vectors_and_shares_the_payload() {
    let mut c = codec();
    let p = payload(|o| c.encode_http_req_call_req(&full_request(), o));
    let mut out = HttpReqCallReq {
        headers: vec![Pair::new("stale", "x"); 9].into(),
        ..Default::default()
    };
    c.decode_http_req_call_req(&p, &mut out).unwrap();
    assert_eq!(out.headers, full_request().headers);
    let range = p.as_ptr() as usize..p.as_ptr() as usize + p.len();
    assert!(range.contains(&(out.path.as_bytes().as_ptr() as usize)));
    let value = out.args.get(2).unwrap().value().unwrap();
    assert!(range.contains(&(value.as_ptr() as usize)));
}

#[test]
fn runner_replies_round_trip() {
    let mut c = codec();
    for conf_token in [0, 1, u32::MAX] {
        let msg = PrepareConfResp { conf_token };
        let p = payload(|o| c.encode_prepare_conf_resp(&msg, o));
        assert_eq!(c.decode_prepare_conf_resp(&p).unwrap(), msg);
    }
    let actions = [
        ReqAction::Continue,
        ReqAction::Stop(Stop::default()),
        ReqAction::Stop(Stop {
            status: 403,
            headers: vec![Pair::new("a", "1"), Pair::new("a", "2"), Pair::absent("d")],
            body: Bytes::from_static(b"denied"),
        }),
        ReqAction::Rewrite(Rewrite {
            path: Some("/new path".into()),
            headers: vec![Pair::new("host", "h"), Pair::absent("x")],
            args: vec![Pair::new("a", "1"), Pair::new("a", "2"), Pair::absent("b")],
            resp_headers: vec![Pair::new("r", "")],
            body: Some(Bytes::from_static(b"body")),
        }),
        ReqAction::Rewrite(Rewrite {
            path: Some("".into()),
            body: Some(Bytes::new()),
            ..Rewrite::default()
        }),
        ReqAction::Rewrite(Rewrite::default()),
    ];
    for action in actions {
        let msg = HttpReqCallResp { id: 3, action };
        let p = payload(|o| c.encode_http_req_call_resp(&msg, o));
        assert_eq!(c.decode_http_req_call_resp(&p).unwrap(), msg);
    }
    for (status, body) in [(0, None), (201, Some(Bytes::from_static(b"new")))] {
        let msg = HttpRespCallResp {
            id: 8,
            status,
            headers: vec![Pair::new("X-A", "1")],
            body,
        };
        let p = payload(|o| c.encode_http_resp_call_resp(&msg, o));
        assert_eq!(c.decode_http_resp_call_resp(&p).unwrap(), msg);
    }
    for msg in [
        ExtraInfoReq::Var("remote_addr".into()),
        ExtraInfoReq::Var("".into()),
        ExtraInfoReq::ReqBody,
        ExtraInfoReq::RespBody,
    ] {
        let p = payload(|o| c.encode_extra_info_req(&msg, o));
        assert_eq!(c.decode_extra_info_req(&p).unwrap(), msg);
    }
    for code in [
        ErrorCode::BadRequest,
        ErrorCode::ServiceUnavailable,
        ErrorCode::ConfTokenNotFound,
    ] {
        let p = payload(|o| c.encode_error_resp(code, o));
        assert_eq!(c.decode_error_resp(&p).unwrap(), code);
    }
}

/// The continue reply is copied from a template with its id patched in: the gateway reads
/// exactly what the builder would have written, for every id (0 is left to the builder).
#[test]
fn the_continue_template_reads_as_the_built_reply() {
    let mut c = codec();
    for id in [0, 1, 2, 255, 256, 0x0102_0304, u32::MAX] {
        let msg = HttpReqCallResp {
            id,
            action: ReqAction::Continue,
        };
        let templated = payload(|o| c.encode_http_req_call_resp(&msg, o));
        let built = payload(|o| c.encode_http_req_call_resp_built(&msg, o));
        assert_eq!(c.decode_http_req_call_resp(&templated).unwrap(), msg);
        if id != 0 {
            assert_eq!(templated, built, "id {id}");
        }
    }
}

#[test]
fn no_change_is_written_as_absent_fields() {
    let mut c = codec();
    // Rewrite with nothing set, and a response reply that keeps everything: their tables carry
    // no path, no body, no vectors, so stock APISIX sees "no change".
    let p = payload(|o| {
        c.encode_http_req_call_resp(
            &HttpReqCallResp {
                id: 1,
                action: ReqAction::Rewrite(Rewrite::default()),
            },
            o,
        )
    });
    let root = Table::root(&p).unwrap();
    let rw = root
        .table(schema::HttpReqCallResp::ACTION)
        .unwrap()
        .unwrap();
    assert_eq!(rw.str(schema::Rewrite::PATH).unwrap(), None);
    assert_eq!(rw.bytes(schema::Rewrite::BODY).unwrap(), None);
    assert_eq!(rw.tables(schema::Rewrite::HEADERS).unwrap().count(), 0);

    let p = payload(|o| c.encode_http_resp_call_resp(&HttpRespCallResp::default(), o));
    let root = Table::root(&p).unwrap();
    assert_eq!(root.bytes(schema::HttpRespCallResp::BODY).unwrap(), None);
    assert_eq!(root.u16(schema::HttpRespCallResp::STATUS).unwrap(), 0);
}

#[test]
fn a_large_reply_then_small_ones_still_encode() {
    let mut c = codec();
    let big = HttpRespCallResp {
        body: Some(Bytes::from(vec![b'x'; 3 * BUILDER_KEEP_BYTES])),
        ..Default::default()
    };
    let p = payload(|o| c.encode_http_resp_call_resp(&big, o));
    assert_eq!(c.decode_http_resp_call_resp(&p).unwrap(), big);
    let small = PrepareConfResp { conf_token: 5 };
    let p = payload(|o| c.encode_prepare_conf_resp(&small, o));
    assert_eq!(c.decode_prepare_conf_resp(&p).unwrap(), small);
}

/// Issue 15: replies are built in the thread's builder; a connection's codec keeps no builder
/// storage between them (an idle pooled connection holds none).
#[test]
fn a_codec_holds_no_builder_storage_between_replies() {
    let mut c = codec();
    let rewrite = HttpReqCallResp {
        id: 1,
        action: ReqAction::Rewrite(Rewrite {
            headers: vec![Pair::new("x-request-id", "0123456789abcdef")],
            ..Rewrite::default()
        }),
    };
    let p = payload(|o| c.encode_http_req_call_resp(&rewrite, o));
    assert_eq!(c.decode_http_req_call_resp(&p).unwrap(), rewrite);
    assert_eq!(c.entries.capacity(), 0, "entry tables");
    let (storage, _) = (*c.fbb).collapse();
    assert_eq!(storage.capacity(), 0, "builder storage");
}

#[test]
fn garbage_is_rejected() {
    let c = codec();
    let mut out = HttpReqCallReq::default();
    let bad: [&[u8]; 7] = [
        b"",
        b"\x04\x00",
        b"garbage!",
        &[0; 16],
        // Root offset past the end.
        &[0xff, 0, 0, 0, 0, 0, 0, 0],
        // Root table whose vtable offset points before the buffer.
        &[4, 0, 0, 0, 0x10, 0, 0, 0],
        // Root offset not aligned.
        &[5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    ];
    for b in bad {
        let p = Bytes::copy_from_slice(b);
        assert!(c.decode_http_req_call_req(&p, &mut out).is_err(), "{b:?}");
        assert!(c.decode_extra_info_resp(&p).is_err(), "{b:?}");
        assert!(!root_table_fits(b), "{b:?}");
    }
}

#[test]
fn every_truncation_is_rejected() {
    let mut c = codec();
    let p = payload(|o| c.encode_http_req_call_req(&full_request(), o));
    let mut out = HttpReqCallReq::default();
    for len in 0..p.len() {
        let cut = p.slice(..len);
        assert!(
            c.decode_http_req_call_req(&cut, &mut out).is_err(),
            "a payload cut to {len} of {} bytes decoded",
            p.len()
        );
    }
}

#[test]
fn corrupted_buffers_never_panic() {
    let mut c = codec();
    let p = payload(|o| c.encode_http_req_call_req(&full_request(), o));
    let mut out = HttpReqCallReq::default();
    // A fixed xorshift sequence: the same corruptions on every run.
    let mut x: u32 = 0x9e37_79b9;
    for _ in 0..5000 {
        let mut bytes = p.to_vec();
        for _ in 0..3 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let at = x as usize % bytes.len();
            bytes[at] = (x >> 24) as u8;
        }
        let _ = c.decode_http_req_call_req(&Bytes::from(bytes), &mut out);
    }
}

/// A raw buffer with one root table holding the given scalar fields.
fn raw_root(fields: &[(VOffsetT, u8)]) -> Bytes {
    let mut fbb = FlatBufferBuilder::new();
    let t = fbb.start_table();
    for &(slot, v) in fields {
        fbb.push_slot_always(slot, v);
    }
    let root = fbb.end_table(t);
    fbb.finish_minimal(root);
    Bytes::copy_from_slice(fbb.finished_data())
}

#[test]
fn values_outside_the_schema_are_rejected() {
    let c = codec();
    let mut out = HttpReqCallReq::default();
    let e = c
        .decode_http_req_call_req(&raw_root(&[(schema::HttpReqCallReq::METHOD, 15)]), &mut out)
        .unwrap_err();
    assert!(e.reason.contains("method 15"), "{e}");
    let e = c
        .decode_error_resp(&raw_root(&[(schema::ErrResp::CODE, 3)]))
        .unwrap_err();
    assert!(e.reason.contains("code 3"), "{e}");
    // An ExtraInfo.Req without any info is not a request.
    let e = c.decode_extra_info_req(&raw_root(&[])).unwrap_err();
    assert!(e.reason.contains("info type 0"), "{e}");
    let e = c
        .decode_extra_info_req(&raw_union(
            schema::ExtraInfoReq::INFO_TYPE,
            7,
            schema::ExtraInfoReq::INFO,
        ))
        .unwrap_err();
    assert!(e.reason.contains("info type 7"), "{e}");
    let e = c
        .decode_http_req_call_resp(&raw_union(
            schema::HttpReqCallResp::ACTION_TYPE,
            9,
            schema::HttpReqCallResp::ACTION,
        ))
        .unwrap_err();
    assert!(e.reason.contains("action type 9"), "{e}");
    // A union tag without its value is inconsistent.
    assert!(c
        .decode_http_req_call_resp(&raw_root(&[(schema::HttpReqCallResp::ACTION_TYPE, 1)]))
        .is_err());
}

/// A raw buffer whose root holds a union tag and an empty table as its value.
fn raw_union(tag_slot: VOffsetT, tag: u8, value_slot: VOffsetT) -> Bytes {
    let mut fbb = FlatBufferBuilder::new();
    let t = fbb.start_table();
    let value = fbb.end_table(t);
    let t = fbb.start_table();
    fbb.push_slot_always(value_slot, value);
    fbb.push_slot_always(tag_slot, tag);
    let root = fbb.end_table(t);
    fbb.finish_minimal(root);
    Bytes::copy_from_slice(fbb.finished_data())
}

#[test]
fn bad_src_ip_length_is_rejected() {
    let mut fbb = FlatBufferBuilder::new();
    let ip = fbb.create_vector(&[1u8, 2, 3]);
    let t = fbb.start_table();
    fbb.push_slot_always(schema::HttpReqCallReq::SRC_IP, ip);
    let root = fbb.end_table(t);
    fbb.finish_minimal(root);
    let p = Bytes::copy_from_slice(fbb.finished_data());
    let e = codec()
        .decode_http_req_call_req(&p, &mut HttpReqCallReq::default())
        .unwrap_err();
    assert!(e.reason.contains("3 bytes"), "{e}");

    // An empty src_ip is "no address", like an absent one.
    let mut fbb = FlatBufferBuilder::new();
    let ip = fbb.create_vector::<u8>(&[]);
    let t = fbb.start_table();
    fbb.push_slot_always(schema::HttpReqCallReq::SRC_IP, ip);
    let root = fbb.end_table(t);
    fbb.finish_minimal(root);
    let mut out = HttpReqCallReq {
        src_ip: Some("1.2.3.4".parse().unwrap()),
        ..Default::default()
    };
    codec()
        .decode_http_req_call_req(&Bytes::copy_from_slice(fbb.finished_data()), &mut out)
        .unwrap();
    assert_eq!(out.src_ip, None);
}

fn capnp_gateway_requests() -> Vec<Bytes> {
    let mut c = CapnpCodec::new();
    let mut out = vec![
        payload(|o| {
            c.encode_prepare_conf_req(
                &PrepareConfReq {
                    key: "route#1#ext-plugin-pre-req#12".into(),
                    conf: vec![Pair::new("debug-echo", "{}")],
                },
                o,
            )
        }),
        payload(|o| c.encode_http_resp_call_req(&HttpRespCallReq::default(), o)),
        payload(|o| c.encode_extra_info_resp(&ExtraInfoResp::default(), o)),
    ];
    for n in 0..40u32 {
        let mut req = full_request();
        for i in 0..n {
            req = req.with_arg(&format!("a{i}"), &"v".repeat(i as usize));
        }
        out.push(payload(|o| c.encode_http_req_call_req(&req, o)));
    }
    out
}

#[test]
fn detection_tells_the_codecs_apart() {
    for (ty, p) in gateway_requests() {
        assert!(
            !segment_table_fits(&p),
            "FlatBuffers type {ty} fits Cap'n Proto"
        );
        assert_eq!(detect(&p), Some(Protocol::FlatBuffers), "type {ty}");
    }
    for p in capnp_gateway_requests() {
        assert!(
            !root_table_fits(&p),
            "a Cap'n Proto payload fits FlatBuffers"
        );
        assert_eq!(detect(&p), Some(Protocol::Capnp));
    }
    for garbage in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        b"",
        b"\x01\x02\x03",
        &[0xff; 64],
    ] {
        assert_eq!(detect(garbage), None, "{garbage:?}");
    }
}

/// The `table`, `field` and `id` triples declared in `schema/ext-plugin.fbs`. Union fields
/// occupy two ids: `x_type` at id - 1 and `x` at id; only `x` is declared.
fn fbs_fields() -> BTreeSet<(String, String, u16)> {
    let fbs = include_str!("../../../schema/ext-plugin.fbs");
    let mut namespace = "";
    let mut table = None;
    let mut out = BTreeSet::new();
    for line in fbs.lines().map(|l| l.split("//").next().unwrap().trim()) {
        if let Some(ns) = line.strip_prefix("namespace ") {
            namespace = ns.trim_end_matches(';');
        } else if let Some(t) = line.strip_prefix("table ") {
            let name = t.trim_end_matches('{').trim();
            table = Some(format!("{namespace}.{name}"));
            out.insert((table.clone().unwrap(), String::new(), 0));
        } else if line.starts_with('}') {
            table = None;
        } else if let (Some(t), Some((field, rest))) = (&table, line.split_once(':')) {
            let id = rest
                .split("(id:")
                .nth(1)
                .and_then(|s| s.trim().trim_end_matches(");").trim().parse().ok())
                .unwrap_or_else(|| panic!("field without an id in the schema: {line}"));
            out.insert((t.clone(), field.trim().to_owned(), id));
        }
    }
    out
}

#[test]
fn slots_match_the_schema_file() {
    let declared = fbs_fields();
    for (table, fields) in schema::ALL_FIELDS {
        assert!(
            declared.contains(&(table.to_string(), String::new(), 0)),
            "{table} is not in the schema file"
        );
        let in_file: BTreeSet<_> = declared
            .iter()
            .filter(|(t, f, _)| t == table && !f.is_empty())
            .map(|(_, f, id)| (f.clone(), *id))
            .collect();
        let in_code: BTreeSet<_> = fields
            .iter()
            .map(|(f, id)| (f.to_lowercase(), *id))
            .collect();
        assert_eq!(in_code, in_file, "{table}");
    }
}

#[test]
fn non_utf8_text_is_decoded_lossily_not_refused() {
    let req = HttpReqCallReq {
        path: "/cafX".into(),
        ..HttpReqCallReq::default()
    };
    let mut wire = Vec::new();
    FlatBuffersCodec::new().encode_http_req_call_req(&req, &mut wire);
    let at = wire.windows(5).position(|w| w == b"/cafX").unwrap();
    wire[at + 4] = 0xE9; // Latin-1 é: not UTF-8
    let mut out = HttpReqCallReq::default();
    FlatBuffersCodec::new()
        .decode_http_req_call_req(&Bytes::from(wire), &mut out)
        .unwrap();
    assert_eq!(out.path, "/caf\u{fffd}");
}
