//! A FlatBuffers gateway client written from the published ext-plugin-proto v0.6.1 schema
//! (docs/protocol.md §7), independently of this crate's codec: requests are built with raw
//! `FlatBufferBuilder` calls ([`schema`]), frames are cut by hand, and replies are verified with
//! the `flatbuffers` crate's verifier and read with its table accessors ([`verify`]). Its framing
//! and extra_info loop are its own on purpose, not the crate's `framed`: it checks the runner
//! against the spec, not against itself.

#![allow(dead_code)] // each test crate uses a part

pub mod schema;
pub mod verify;

use ext_plugin_runner::testing::TestRunner;
use ext_plugin_runner::Registry;
use ext_plugin_sdk::{
    ConfError, Flow, Plugin, PluginError, PrepareEnv, RequestCall, ResponseCall, Stop,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use schema::*;
use verify::*;

// ---------------------------------------------------------------------------------------------
// The connection.

pub struct Client {
    pub stream: UnixStream,
    /// Variables answered to Var requests; a missing name is nil (an absent result).
    pub vars: Vec<(&'static str, &'static [u8])>,
    pub req_body: Option<&'static [u8]>,
    pub resp_body: Option<&'static [u8]>,
    /// (info type, var name) of every extra_info request, in order.
    pub asked: Vec<(u8, String)>,
}

impl Client {
    pub async fn connect(runner: &TestRunner) -> Client {
        Client {
            stream: UnixStream::connect(runner.path()).await.unwrap(),
            vars: Vec::new(),
            req_body: None,
            resp_body: None,
            asked: Vec::new(),
        }
    }

    pub async fn send(&mut self, ty: u8, payload: &[u8]) {
        let len = payload.len();
        assert!(len > 0 && len < 1 << 24);
        let header = [ty, (len >> 16) as u8, (len >> 8) as u8, len as u8];
        self.stream.write_all(&header).await.unwrap();
        self.stream.write_all(payload).await.unwrap();
    }

    pub async fn recv(&mut self) -> (u8, Vec<u8>) {
        let mut header = [0u8; 4];
        self.stream.read_exact(&mut header).await.unwrap();
        let len = (header[1] as usize) << 16 | (header[2] as usize) << 8 | header[3] as usize;
        assert!(len > 0, "the runner sent an empty payload");
        let mut payload = vec![0; len];
        self.stream.read_exact(&mut payload).await.unwrap();
        (header[0], payload)
    }

    /// Sends a request and returns the final frame, answering extra_info requests on the way.
    pub async fn exchange(&mut self, ty: u8, payload: &[u8]) -> (u8, Vec<u8>) {
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

    pub async fn prepare(&mut self, key: &str, conf: &[Entry<'_>]) -> u32 {
        let (ty, reply) = self.exchange(1, &prepare_conf_req(key, conf)).await;
        assert_eq!(ty, 1, "prepare_conf answered with type {ty}");
        let token = root::<ScalarsV>(&reply).u32(0);
        assert_ne!(token, 0);
        token
    }

    /// Sends a request that must fail and returns the error frame's code.
    pub async fn error(&mut self, ty: u8, payload: &[u8]) -> u8 {
        let (rty, reply) = self.exchange(ty, payload).await;
        assert_eq!(rty, 0, "expected an error frame");
        root::<ErrV>(&reply).u8(0)
    }
}

// ---------------------------------------------------------------------------------------------
// Test plugins, through the public plugin API.

/// Rewrites everything a rewrite carries; in the response phase sets the status, a header and a
/// body derived from the upstream's (fetched with RespBody).
pub struct RewriteAll;

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
pub struct StopZero;

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

pub fn registry() -> Registry {
    ext_plugin_catalogue::builtin()
        .with::<RewriteAll>()
        .with::<StopZero>()
}

pub async fn start() -> TestRunner {
    TestRunner::start(registry()).await
}

pub fn ipv6(s: &str) -> [u8; 16] {
    s.parse::<std::net::Ipv6Addr>().unwrap().octets()
}
