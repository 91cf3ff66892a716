//! A hostile or broken gateway, over a real socket (issue 7, docs/HARDENING.md): frames that
//! arrive a byte at a time, stall half way, never get read back, promise too much or carry
//! garbage. Each test checks what the runner answers, then that a normal call on a fresh
//! connection still succeeds.
//!
//! Runners here use small limits (deadlines of a few hundred milliseconds) so the suite is
//! fast; timeouts in the tests themselves are hang guards only.

mod common;

use std::time::{Duration, Instant};

use common::{
    call_frame, closed, error_code, frame, fresh_call_works, guarded, plugins, prepare_frame,
    rss_kib, small_limits, start_small as start,
};
use ext_plugin_runner::codec::Protocol;
use ext_plugin_runner::frame::{FrameHeader, FrameType, HEADER_LEN, MAX_PAYLOAD};
use ext_plugin_runner::model::{ErrorCode, Method, Pair};
use ext_plugin_runner::testing::{request, TestRunner};
use ext_plugin_runner::Config;

#[tokio::test]
async fn frames_written_one_byte_at_a_time() {
    let runner = start().await;
    for p in Protocol::ALL {
        let mut gw = runner.connect_with(p).await;
        let mut codec = p.gateway_codec();
        let bytes = prepare_frame(
            codec.as_mut(),
            "route#bytes#ext-plugin-pre-req#1",
            "debug-echo",
        );
        for b in &bytes {
            gw.send_raw(std::slice::from_ref(b)).await.unwrap();
            tokio::task::yield_now().await;
        }
        let reply = guarded("prepare reply", gw.read_frame())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reply.ty, FrameType::PrepareConf as u8, "{p}");
        let token = codec.decode_prepare_conf_resp(&reply.payload).unwrap();
        // The same connection goes on normally.
        let resp = gw.call(token.conf_token, &request(Method::Get, "/")).await;
        assert!(resp.is_ok(), "{p}: {resp:?}");
        fresh_call_works(&runner, p).await;
    }
}

#[tokio::test]
async fn a_promised_16_mib_then_silence_is_closed_after_the_stall_timeout() {
    let config = Config {
        max_frame: MAX_PAYLOAD,
        ..small_limits()
    };
    let runner = TestRunner::start_with(config, plugins::registry()).await;
    let mut bystander = runner.connect().await;
    let token = bystander
        .prepare("route#by#ext-plugin-pre-req#1", &[("debug-echo", "{}")])
        .await
        .unwrap();

    let mut slow = runner.connect().await;
    let started = Instant::now();
    slow.send_raw(&[2, 0xFF, 0xFF, 0xFF, 1, 2, 3])
        .await
        .unwrap();
    // While the slow connection stalls, others are served as usual.
    for _ in 0..3 {
        assert!(bystander
            .call(token, &request(Method::Get, "/"))
            .await
            .is_ok());
    }
    assert!(closed(&mut slow).await, "the stalled connection is closed");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "closed before the stall timeout"
    );
    assert!(bystander
        .call(token, &request(Method::Get, "/"))
        .await
        .is_ok());
    fresh_call_works(&runner, Protocol::Capnp).await;
}

#[tokio::test]
async fn a_gateway_that_stops_reading_replies_is_closed_after_the_stall_timeout() {
    let runner = start().await;
    let mut gw = runner.connect().await;
    let token = gw
        .prepare("route#deaf#ext-plugin-pre-req#1", &[("debug-echo", "{}")])
        .await
        .unwrap();
    // 64 pipelined calls whose echoed replies (~30 KB each) far exceed the sockets' buffers.
    const CALLS: usize = 64;
    let big = "x".repeat(30_000);
    let mut codec = Protocol::Capnp.gateway_codec();
    let mut calls = Vec::new();
    for id in 0..CALLS as u32 {
        let mut call = request(Method::Get, "/").with_header("x-big", &big);
        call.conf_token = token;
        call.id = id;
        calls.extend(frame(FrameType::HttpReqCall, |o| {
            codec.encode_http_req_call_req(&call, o)
        }));
    }
    // Never reading, the gateway's own write blocks once the runner stops reading; it fails
    // when the runner, its reply write stalled, gives the connection up.
    let sent = guarded("the runner to give up", gw.send_raw(&calls)).await;
    assert!(
        sent.is_err(),
        "every call was taken: the runner never stalled"
    );
    let mut replies = 0;
    while let Ok(Some(_)) = guarded("the buffered replies", gw.read_frame()).await {
        replies += 1;
    }
    assert!(
        replies < CALLS,
        "{replies} replies: the connection was not closed"
    );
    fresh_call_works(&runner, Protocol::Capnp).await;
}

#[tokio::test]
async fn lengths_up_to_the_cap_are_read_and_one_over_closes() {
    let runner = start().await;
    let max = small_limits().max_frame;
    for p in Protocol::ALL {
        // Exactly the cap: read whole (garbage, so BAD_REQUEST), the connection stays. (A
        // valid call first, so an `auto` runner knows the connection's protocol.)
        let mut gw = runner.connect_with(p).await;
        let token = gw
            .prepare("route#cap#ext-plugin-pre-req#1", &[("debug-echo", "{}")])
            .await
            .unwrap();
        let mut at_cap = FrameHeader::encode(2, max).to_vec();
        at_cap.resize(4 + max, 0xAB);
        gw.send_raw(&at_cap).await.unwrap();
        assert_eq!(error_code(&mut gw).await, ErrorCode::BadRequest);
        assert!(gw.call(token, &request(Method::Get, "/")).await.is_ok());
        // One over: refused from the header alone, then closed.
        let over = FrameHeader::encode(2, max + 1);
        gw.send_raw(&over).await.unwrap();
        assert_eq!(error_code(&mut gw).await, ErrorCode::BadRequest);
        assert!(closed(&mut gw).await);
        fresh_call_works(&runner, p).await;
    }
}

#[tokio::test]
async fn every_frame_type_with_garbage_is_refused_and_the_connection_kept() {
    let runner = start().await;
    for p in Protocol::ALL {
        let mut gw = runner.connect_with(p).await;
        let token = gw
            .prepare("route#g#ext-plugin-pre-req#1", &[("debug-echo", "{}")])
            .await
            .unwrap();
        for ty in 0..=255u8 {
            for garbage in [&[0u8][..], &[0xFF; 9][..], &[0, 0, 0, 0, 1, 0, 0, 0][..]] {
                let mut f = FrameHeader::encode(ty, garbage.len()).to_vec();
                f.extend_from_slice(garbage);
                gw.send_raw(&f).await.unwrap();
                assert_eq!(
                    error_code(&mut gw).await,
                    ErrorCode::BadRequest,
                    "{p}: type {ty}, payload {garbage:?}"
                );
            }
        }
        assert!(gw.call(token, &request(Method::Get, "/")).await.is_ok());
        fresh_call_works(&runner, p).await;
    }
}

#[tokio::test]
async fn truncated_payloads_get_an_answer_and_the_connection_kept() {
    let runner = start().await;
    for p in Protocol::ALL {
        let mut gw = runner.connect_with(p).await;
        let token = gw
            .prepare("route#t#ext-plugin-pre-req#1", &[("debug-echo", "{}")])
            .await
            .unwrap();
        let mut codec = p.gateway_codec();
        let mut whole = Vec::new();
        let req = request(Method::Post, "/a/b")
            .with_header("host", "example.com")
            .with_arg("q", "1");
        codec.encode_http_req_call_req(&req, &mut whole);
        let mut refused = 0;
        for cut in 1..whole.len() {
            let f = frame(FrameType::HttpReqCall, |o| {
                o.extend_from_slice(&whole[..cut])
            });
            gw.send_raw(&f).await.unwrap();
            let reply = guarded("a reply", gw.read_frame()).await.unwrap().unwrap();
            // A cut that still decodes names token 0 at worst: never a crash or a hang.
            if reply.ty == FrameType::Error as u8 {
                refused += 1;
            }
        }
        assert!(
            refused > whole.len() / 2,
            "{p}: only {refused} cuts refused"
        );
        assert!(gw.call(token, &request(Method::Get, "/")).await.is_ok());
        fresh_call_works(&runner, p).await;
    }
}

/// Issue 11 #3: a frame of about as many empty headers as 16 MiB holds is refused before its
/// entries are read, and leaves nothing pinned on the connections that received it and then
/// idle (the runner used to decode every entry and keep 60–275 MiB per such connection).
#[tokio::test]
async fn a_frame_of_half_a_million_empty_headers_is_refused_and_pins_nothing() {
    const CONNECTIONS: usize = 6;
    // 32 bytes each in Cap'n Proto (a pair and its empty name), about 20 in FlatBuffers.
    const HEADERS: usize = 500_000;
    let config = Config {
        max_frame: MAX_PAYLOAD,
        ..small_limits()
    };
    let runner = TestRunner::start_with(config, plugins::registry()).await;
    for p in Protocol::ALL {
        let mut req = request(Method::Get, "/");
        req.headers = (0..HEADERS).map(|_| Pair::absent("")).collect();
        let bytes = call_frame(p.gateway_codec().as_mut(), 1, &req);
        drop(req);
        assert!(
            bytes.len() > 8 << 20,
            "{p}: a frame of {} bytes",
            bytes.len()
        );
        // The first round warms the allocator up (it keeps freed 16 MiB blocks for reuse);
        // the second must cost nothing more: nothing stays pinned per connection. Plain
        // sockets on the gateway's side, so that only the runner's memory counts.
        let mut idle = Vec::new();
        let mut rss = Vec::new();
        for _round in 0..2 {
            for _ in 0..CONNECTIONS {
                idle.push(refused_on_a_connection_of_its_own(&runner, p, &bytes).await);
            }
            rss.push(rss_kib() / 1024);
        }
        // The connections now idle. Each held the frame for a moment; none may keep it or
        // anything decoded from it (the old decoder pinned 32+ MiB of entries on each).
        let grown = rss[1].saturating_sub(rss[0]);
        eprintln!("{p}: RSS after each round of {CONNECTIONS} connections: {rss:?} MiB");
        assert!(
            grown < 32,
            "{p}: RSS grew {grown} MiB for {CONNECTIONS} more idle connections"
        );
        fresh_call_works(&runner, p).await;
    }
}

/// Sends `frame` on a plain socket of its own and expects BAD_REQUEST; the socket, to keep idle.
async fn refused_on_a_connection_of_its_own(
    runner: &TestRunner,
    p: Protocol,
    frame: &[u8],
) -> tokio::net::UnixStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(runner.path())
        .await
        .unwrap();
    s.write_all(frame).await.unwrap();
    let mut head = [0; HEADER_LEN];
    guarded("an error frame", s.read_exact(&mut head))
        .await
        .unwrap();
    let header = FrameHeader::parse(&head).unwrap();
    assert_eq!(header.ty, FrameType::Error as u8, "{p}");
    let mut payload = vec![0; header.len];
    s.read_exact(&mut payload).await.unwrap();
    let code = p.gateway_codec().decode_error_resp(&payload.into());
    assert_eq!(code.unwrap(), ErrorCode::BadRequest, "{p}");
    s
}
