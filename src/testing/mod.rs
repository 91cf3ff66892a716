//! A fake gateway, for tests of the runner and of plugins.
//!
//! [`TestRunner`] starts a runner in-process on a fresh socket; [`FakeGateway`] connects to any
//! runner socket and speaks the protocol the way a gateway does: it prepares chains, makes calls,
//! answers the runner's `extra_info` requests from its tables (promptly, or late as a slow
//! gateway would), and can send raw bytes.
//! To run chains in memory instead, without a runner, use the SDK's
//! [`ext_plugin_sdk::harness`] (its request builders are re-exported here).
//!
//! Plugins that measure time read the runner's [`Config::clock`]. To drive it, start the runner
//! with a manual clock and advance it between calls:
//!
//! ```no_run
//! # async fn demo() {
//! use std::time::Duration;
//! use ext_plugin_runner::testing::TestRunner;
//! use ext_plugin_runner::{Clock, Config};
//!
//! let clock = Clock::manual();
//! let config = Config { clock: clock.clone(), ..Config::default() };
//! let runner = TestRunner::start_with(config, ext_plugin_catalogue::builtin()).await;
//! // ... a limit is hit ...
//! clock.advance(Duration::from_secs(60));
//! // ... and the window has passed for every chain of this runner.
//! # }
//! ```
//!
//! ```no_run
//! # async fn demo() -> Result<(), ext_plugin_runner::testing::GatewayError> {
//! use ext_plugin_runner::model::{Method, ReqAction};
//! use ext_plugin_runner::testing::{request, FakeGateway, TestRunner};
//!
//! let runner = TestRunner::start(ext_plugin_catalogue::builtin()).await;
//! let mut gw = runner.connect().await;
//! let token = gw.prepare("route#1#ext-plugin-pre-req#1", &[("debug-echo", "{}")]).await?;
//! let reply = gw.call(token, &request(Method::Get, "/hi")).await?;
//! assert!(matches!(reply.action, ReqAction::Stop(_)));
//! runner.stop().await;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use std::time::Duration;

use bytes::Bytes;
use tokio::net::UnixStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::codec::{DecodeError, GatewayCodec, Protocol};
use crate::config::Config;
use crate::frame::{Frame, FrameType};
use crate::framed::{Answer, AnswerTable, Framed, FramedError};
use crate::model::{
    ErrorCode, ExtraInfoReq, HttpReqCallReq, HttpReqCallResp, HttpRespCallReq, HttpRespCallResp,
    Pair, PrepareConfReq,
};
use crate::server::{serve, Listener, Runner};
use ext_plugin_sdk::Registry;

pub use ext_plugin_sdk::harness::{prepare_request, request};

/// A socket path no other test uses. The process start time is part of the name: a pid is
/// reused, and a socket file a killed process could not remove would otherwise be in the way
/// of a later process with the same pid (seen: `AddrInUse` after a day of test runs).
pub fn temp_socket_path() -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    static STARTED: std::sync::LazyLock<u128> = std::sync::LazyLock::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros())
    });
    std::env::temp_dir().join(format!(
        "epr-{}-{:x}-{}.sock",
        std::process::id(),
        *STARTED & 0xffff_ffff_ffff,
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// A runner serving in this process on a temporary socket.
pub struct TestRunner {
    path: PathBuf,
    runner: Runner,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestRunner {
    /// Starts a runner with default settings. Must run inside a tokio runtime.
    pub async fn start(registry: Registry) -> TestRunner {
        TestRunner::start_with(Config::default(), registry).await
    }

    /// Starts a runner with `config` (its listen path is replaced by a temporary one; its
    /// `clock` is the one plugins read, see [the module docs](self)).
    pub async fn start_with(mut config: Config, registry: Registry) -> TestRunner {
        let path = temp_socket_path();
        config.listen = path.clone();
        let listener = Listener::bind(&path).expect("binding a temporary socket");
        let runner = Runner::new(config, registry);
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(serve(listener, runner.clone(), async move {
            let _ = stopped.await;
        }));
        TestRunner {
            path,
            runner,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn runner(&self) -> &Runner {
        &self.runner
    }

    /// A gateway connection speaking Cap'n Proto.
    pub async fn connect(&self) -> FakeGateway {
        self.connect_with(Protocol::Capnp).await
    }

    pub async fn connect_with(&self, protocol: Protocol) -> FakeGateway {
        FakeGateway::connect(&self.path, protocol)
            .await
            .expect("connecting to the test runner")
    }

    /// Shuts the runner down (draining calls in flight) and waits for it.
    pub async fn stop(mut self) {
        self.shutdown().await;
    }

    async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for TestRunner {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Why a gateway-side exchange did not produce the expected reply.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The runner answered with an error frame.
    #[error("runner answered with error {0:?}")]
    Runner(ErrorCode),
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("runner closed the connection")]
    Closed,
    #[error("protocol violation by the runner: {0}")]
    Protocol(String),
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

impl From<FramedError> for GatewayError {
    fn from(e: FramedError) -> GatewayError {
        match e {
            FramedError::Io(e) => GatewayError::Io(e),
            FramedError::Closed => GatewayError::Closed,
            FramedError::Truncated => GatewayError::Protocol("runner closed inside a frame".into()),
            other => GatewayError::Protocol(other.to_string()),
        }
    }
}

/// A gateway connection.
pub struct FakeGateway {
    framed: Framed<UnixStream>,
    codec: Box<dyn GatewayCodec>,
    next_id: u32,
    /// Variables the gateway answers `extra_info` Var requests from; a missing name or a `None`
    /// value answers nil.
    pub vars: HashMap<String, Option<Bytes>>,
    /// The answer to ReqBody requests (`None` = no body).
    pub req_body: Option<Bytes>,
    /// The answer to RespBody requests (`None` = no body).
    pub resp_body: Option<Bytes>,
    /// Requests whose answers the gateway holds back for a while, as a slow gateway would.
    pub delays: Vec<(ExtraInfoReq, Duration)>,
    /// Every `extra_info` request the runner made, in order.
    pub asked: Vec<ExtraInfoReq>,
}

impl FakeGateway {
    pub async fn connect(path: &Path, protocol: Protocol) -> io::Result<FakeGateway> {
        Ok(FakeGateway {
            framed: Framed::new(UnixStream::connect(path).await?),
            codec: protocol.gateway_codec(),
            next_id: 1,
            vars: HashMap::new(),
            req_body: None,
            resp_body: None,
            delays: Vec::new(),
            asked: Vec::new(),
        })
    }

    /// Connects once `path` accepts connections (a runner just spawned may not listen yet),
    /// trying every 20 ms for at most `within`.
    pub async fn connect_when_listening(
        path: &Path,
        protocol: Protocol,
        within: std::time::Duration,
    ) -> io::Result<FakeGateway> {
        let deadline = std::time::Instant::now() + within;
        loop {
            match FakeGateway::connect(path, protocol).await {
                Err(_) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await
                }
                connected => return connected,
            }
        }
    }

    pub fn protocol(&self) -> Protocol {
        self.codec.protocol()
    }

    /// Sets a variable the gateway will answer with.
    pub fn set_var(&mut self, name: &str, value: &str) {
        self.vars.insert(
            name.to_owned(),
            Some(Bytes::copy_from_slice(value.as_bytes())),
        );
    }

    /// Holds the answer to `req` back for `delay` each time the runner asks.
    pub fn delay_answer(&mut self, req: ExtraInfoReq, delay: Duration) {
        self.delays.push((req, delay));
    }

    /// Prepares a chain of `(plugin name, JSON conf)` entries under `key`.
    pub async fn prepare(
        &mut self,
        key: &str,
        chain: &[(&str, &str)],
    ) -> Result<u32, GatewayError> {
        self.prepare_req(&prepare_request(key, chain)).await
    }

    pub async fn prepare_req(&mut self, req: &PrepareConfReq) -> Result<u32, GatewayError> {
        self.send(FrameType::PrepareConf, |c, o| {
            c.encode_prepare_conf_req(req, o)
        })
        .await?;
        let f = self.reply(FrameType::PrepareConf).await?;
        Ok(self.codec.decode_prepare_conf_resp(&f.payload)?.conf_token)
    }

    /// Runs one request through chain `token`; the gateway sets the id and token.
    pub async fn call(
        &mut self,
        token: u32,
        req: &HttpReqCallReq,
    ) -> Result<HttpReqCallResp, GatewayError> {
        let mut req = req.clone();
        req.id = self.take_id();
        req.conf_token = token;
        self.send(FrameType::HttpReqCall, |c, o| {
            c.encode_http_req_call_req(&req, o)
        })
        .await?;
        let f = self.reply(FrameType::HttpReqCall).await?;
        let resp = self.codec.decode_http_req_call_resp(&f.payload)?;
        if resp.id != req.id {
            return Err(GatewayError::Protocol(format!(
                "reply id {} for request id {}",
                resp.id, req.id
            )));
        }
        Ok(resp)
    }

    /// Runs the response phase of chain `token` for an upstream answer.
    pub async fn resp_call(
        &mut self,
        token: u32,
        status: u16,
        headers: &[(&str, &str)],
    ) -> Result<HttpRespCallResp, GatewayError> {
        let req = HttpRespCallReq {
            id: self.take_id(),
            status,
            headers: headers
                .iter()
                .map(|(n, v)| Pair::new(n.to_string(), v.to_string()))
                .collect(),
            conf_token: token,
        };
        self.send(FrameType::HttpRespCall, |c, o| {
            c.encode_http_resp_call_req(&req, o)
        })
        .await?;
        let f = self.reply(FrameType::HttpRespCall).await?;
        let resp = self.codec.decode_http_resp_call_resp(&f.payload)?;
        if resp.id != req.id {
            return Err(GatewayError::Protocol(format!(
                "reply id {} for request id {}",
                resp.id, req.id
            )));
        }
        Ok(resp)
    }

    fn take_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        id
    }

    /// Sends a frame whose payload the codec encodes.
    async fn send(
        &mut self,
        ty: FrameType,
        encode: impl FnOnce(&mut dyn GatewayCodec, &mut Vec<u8>),
    ) -> Result<(), GatewayError> {
        let FakeGateway { framed, codec, .. } = self;
        framed
            .queue()
            .push_with(ty as u8, |o| encode(codec.as_mut(), o))
            .map_err(FramedError::from)?;
        Ok(framed.flush().await?)
    }

    /// Reads frames until the call's reply, answering `extra_info` requests on the way. An error
    /// frame becomes [`GatewayError::Runner`].
    async fn reply(&mut self, expected: FrameType) -> Result<Frame, GatewayError> {
        let FakeGateway {
            framed,
            codec,
            vars,
            req_body,
            resp_body,
            delays,
            asked,
            ..
        } = self;
        let mut tables = Tables {
            vars,
            req_body,
            resp_body,
            delays,
            asked,
            phase: expected,
            resp_body_asked: false,
        };
        let f = framed.await_reply(codec.as_mut(), &mut tables).await?;
        match FrameType::from_u8(f.ty) {
            Some(t) if t == expected => Ok(f),
            Some(FrameType::Error) => Err(GatewayError::Runner(
                self.codec.decode_error_resp(&f.payload)?,
            )),
            _ => Err(GatewayError::Protocol(format!(
                "frame of type {} while waiting for {expected:?}",
                f.ty
            ))),
        }
    }

    /// Sends bytes as they are.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        Ok(self.framed.send_raw(bytes).await?)
    }

    /// Reads the next whole frame; `None` when the runner closed the connection between frames.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, GatewayError> {
        Ok(self.framed.read_frame().await?)
    }

    /// Reads an error frame's code.
    pub fn decode_error(&self, f: &Frame) -> Result<ErrorCode, GatewayError> {
        if f.ty != FrameType::Error as u8 {
            return Err(GatewayError::Protocol(format!(
                "expected an error frame, got type {}",
                f.ty
            )));
        }
        Ok(self.codec.decode_error_resp(&f.payload)?)
    }
}

/// The gateway's tables, answering one call's `extra_info` requests.
struct Tables<'g> {
    vars: &'g HashMap<String, Option<Bytes>>,
    req_body: &'g Option<Bytes>,
    resp_body: &'g Option<Bytes>,
    delays: &'g [(ExtraInfoReq, Duration)],
    asked: &'g mut Vec<ExtraInfoReq>,
    /// The call's frame type: RespBody may only be asked in a response call, once.
    phase: FrameType,
    resp_body_asked: bool,
}

impl AnswerTable for Tables<'_> {
    type Error = GatewayError;

    fn answer(
        &mut self,
        asked: Result<ExtraInfoReq, DecodeError>,
    ) -> Result<Answer<'_>, GatewayError> {
        let req = asked?;
        let result = match &req {
            ExtraInfoReq::Var(name) => self.vars.get(name.as_str()).cloned().flatten(),
            ExtraInfoReq::ReqBody => self.req_body.clone(),
            ExtraInfoReq::RespBody => {
                if self.phase != FrameType::HttpRespCall || self.resp_body_asked {
                    return Err(GatewayError::Protocol(
                        "RespBody asked outside a response call or twice".into(),
                    ));
                }
                self.resp_body_asked = true;
                self.resp_body.clone()
            }
        };
        let delay = self.delays.iter().find(|(r, _)| *r == req).map(|(_, d)| *d);
        self.asked.push(req);
        Ok(match delay {
            Some(delay) => Answer::Late(delay, result),
            None => Answer::Value(result),
        })
    }
}
