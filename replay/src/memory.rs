//! Memory of a spawned runner: RSS with many prepared confs, then with many idle connections.
//!
//! The confs are the realistic chain (ip-restriction + limit-count + request-id), each under
//! its own key and with its own limit-count `count`, so no two share state or could be merged.
//! An idle connection is one a gateway pools: it made one call, then sits open.

use std::io;
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde::Serialize;

use ext_plugin_runner::codec::Protocol;
use ext_plugin_runner::frame::{write_frame, FrameType};
use ext_plugin_runner::framed::BlockingFramed;
use ext_plugin_runner::model::{HttpReqCallReq, Pair, PrepareConfReq};

use super::spawn::SpawnedRunner;

/// RSS readings in KiB.
#[derive(Clone, Debug, Serialize)]
pub struct MemoryReport {
    pub protocol: String,
    pub confs: usize,
    pub idle_connections: usize,
    pub baseline_kib: u64,
    pub with_confs_kib: u64,
    pub with_idle_connections_kib: u64,
}

fn frame(ty: FrameType, encode: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::new();
    write_frame(&mut out, ty as u8, encode).expect("small message");
    out
}

/// Raises this process' soft limit on open files to at least `want` (children inherit it), up
/// to the hard limit; an error names both when the hard limit is lower.
pub fn raise_fd_limit(want: usize) -> io::Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let want = want as u64;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    if soft >= want {
        return Ok(());
    }
    if hard < want {
        return Err(io::Error::other(format!(
            "{want} open files are needed and the hard limit is {hard} (raise it: ulimit -Hn)"
        )));
    }
    setrlimit(Resource::RLIMIT_NOFILE, want, hard).map_err(io::Error::from)
}

fn settle() {
    // Let the runner's allocator and tasks quiesce before reading VmRSS.
    std::thread::sleep(Duration::from_millis(300));
}

/// Prepares `confs` chains on `runner`, then opens `idle` connections that each make one call.
/// `chain` replaces the realistic chain (each conf still gets its own key).
pub fn measure(
    runner: &SpawnedRunner,
    protocol: Protocol,
    confs: usize,
    idle: usize,
    chain: Option<&[Pair]>,
) -> io::Result<MemoryReport> {
    settle();
    let baseline_kib = runner.rss_kib()?;
    let mut codec = protocol.gateway_codec();
    let mut stream = BlockingFramed::new(UnixStream::connect(runner.socket())?);
    let mut token = 0;
    for i in 0..confs {
        let req = PrepareConfReq {
            key: format!("route#{i}#ext-plugin-pre-req#1").into(),
            conf: match chain {
                Some(c) => c.to_vec(),
                None => vec![
                    Pair::new(
                        "ip-restriction",
                        r#"{"whitelist":["10.0.0.0/8","2001:db8::/32"]}"#,
                    ),
                    Pair::new(
                        "limit-count",
                        format!(
                            r#"{{"count":{},"time_window":60,"key":"remote_addr"}}"#,
                            1_000_000 + i
                        ),
                    ),
                    Pair::new("request-id", "{}"),
                ],
            },
        };
        stream.send_raw(&frame(FrameType::PrepareConf, |o| {
            codec.encode_prepare_conf_req(&req, o)
        }))?;
        let reply = stream.expect_frame()?;
        if reply.ty != FrameType::PrepareConf as u8 {
            return Err(io::Error::other(format!(
                "prepare #{i} answered with a frame of type {}",
                reply.ty
            )));
        }
        token = codec
            .decode_prepare_conf_resp(&reply.payload)
            .map_err(io::Error::other)?
            .conf_token;
    }
    settle();
    let with_confs_kib = runner.rss_kib()?;

    let call = HttpReqCallReq {
        id: 1,
        src_ip: Some(IpAddr::from([10, 0, 0, 1])),
        path: "/".into(),
        conf_token: token,
        ..HttpReqCallReq::default()
    };
    let call = frame(FrameType::HttpReqCall, |o| {
        codec.encode_http_req_call_req(&call, o)
    });
    let mut open = Vec::with_capacity(idle);
    for i in 0..idle {
        let mut s = BlockingFramed::new(UnixStream::connect(runner.socket())?);
        s.send_raw(&call)?;
        let reply = s.expect_frame()?;
        if reply.ty != FrameType::HttpReqCall as u8 {
            return Err(io::Error::other(format!(
                "the call on idle connection #{i} answered with a frame of type {}",
                reply.ty
            )));
        }
        // Only the socket stays open: the framing buffers (a 64 KiB read chunk) would cost the
        // replayer gigabytes over many thousands of idle connections.
        open.push(s.into_inner());
    }
    settle();
    let with_idle_connections_kib = runner.rss_kib()?;
    drop(open);
    Ok(MemoryReport {
        protocol: protocol.to_string(),
        confs,
        idle_connections: idle,
        baseline_kib,
        with_confs_kib,
        with_idle_connections_kib,
    })
}
