//! The runner binary spawned as a gateway spawns it, with OpenSergo settings, for the OpenSergo
//! scenarios.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ext_plugin_runner::codec::Protocol;
use ext_plugin_runner::model::{HttpReqCallResp, ReqAction, Stop};
use ext_plugin_runner::testing::{temp_socket_path, FakeGateway};

const BIN: &str = env!("CARGO_BIN_EXE_ext-plugin-runner");

/// Variables a test's own environment must not leak into the runner.
const OURS: [&str; 5] = [
    "OPENSERGO_BOOTSTRAP_CONFIG",
    "OPENSERGO_BOOTSTRAP",
    "EXT_PLUGIN_RUNNER_OPENSERGO_RULES",
    "EXT_PLUGIN_RUNNER_OPENSERGO_NAMESPACE",
    "EXT_PLUGIN_RUNNER_OPENSERGO_APP",
];

/// A runner process, killed when dropped; its log goes to a file.
pub struct Spawned {
    pub child: Child,
    pub socket: PathBuf,
    log: tempfile::NamedTempFile,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn spawn(env: &[(&str, &str)]) -> Spawned {
    let socket = temp_socket_path();
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = Command::new(BIN);
    for v in OURS {
        cmd.env_remove(v);
    }
    let child = cmd
        .env(
            "APISIX_LISTEN_ADDRESS",
            format!("unix:{}", socket.display()),
        )
        .env("APISIX_CONF_EXPIRE_TIME", "3600")
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .expect("spawning the runner");
    Spawned { child, socket, log }
}

impl Spawned {
    pub async fn gateway(&self) -> FakeGateway {
        connect(&self.socket).await
    }

    /// What the runner logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Waits (up to 20 s) until the log holds `needle`.
    pub async fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "the log never said {needle:?}:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn connect(path: &Path) -> FakeGateway {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match FakeGateway::connect(path, Protocol::Capnp).await {
            Ok(gw) => return gw,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("runner never listened on {}: {e}", path.display()),
        }
    }
}

/// The status of a GET of `path` through chain `token`: the stop's, or 0 when it went on.
pub async fn status(gw: &mut FakeGateway, token: u32, path: &str) -> u16 {
    let resp = gw
        .call(
            token,
            &ext_plugin_runner::testing::request(ext_plugin_runner::model::Method::Get, path),
        )
        .await
        .unwrap();
    stopped(&resp).map_or(0, |s| s.status)
}

/// The stop of a call, or `None` when it went on.
pub fn stopped(resp: &HttpReqCallResp) -> Option<&Stop> {
    match &resp.action {
        ReqAction::Stop(s) => Some(s),
        _ => None,
    }
}

/// A request header the runner set (a rewrite), if any.
pub fn set_header<'r>(resp: &'r HttpReqCallResp, name: &str) -> Option<&'r str> {
    match &resp.action {
        ReqAction::Rewrite(r) => r
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| h.value.as_deref()),
        _ => None,
    }
}
