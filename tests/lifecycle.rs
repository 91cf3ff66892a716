//! The runner binary as a gateway spawns it: environment, socket file, signals (docs/protocol.md §1,
//! and its acceptance scenario 10).

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{call_frame, connect_spawned, frame, runner_command, wait_exit, Spawned};
use ext_plugin_runner::codec::Protocol;
use ext_plugin_runner::frame::FrameType;
use ext_plugin_runner::model::{ExtraInfoResp, Method};
use ext_plugin_runner::testing::{request, temp_socket_path, FakeGateway};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const BIN: &str = env!("CARGO_BIN_EXE_ext-plugin-runner");

fn spawn(path: &Path) -> Spawned {
    Spawned(runner_command(path).spawn().expect("spawning the runner"))
}

async fn connect(path: &Path) -> FakeGateway {
    connect_spawned(path).await
}

#[tokio::test]
async fn sigterm_finishes_calls_in_flight_removes_the_socket_and_exits_promptly() {
    let path = temp_socket_path();
    let mut runner = spawn(&path);
    let mut gw = connect(&path).await;
    let token = gw
        .prepare(
            "route#1#ext-plugin-pre-req#1",
            &[("debug-echo", r#"{"vars": ["route_id"]}"#)],
        )
        .await
        .unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o766, "workers of another user can connect");

    // Start a call and hold it in flight: the runner waits for our extra_info answer.
    let mut raw = FakeGateway::connect(&path, Protocol::Capnp).await.unwrap();
    let mut codec = Protocol::Capnp.gateway_codec();
    let mut req = request(Method::Get, "/in-flight");
    req.id = 77;
    raw.send_raw(&call_frame(codec.as_mut(), token, &req))
        .await
        .unwrap();
    let asked = raw.read_frame().await.unwrap().unwrap();
    assert_eq!(
        asked.ty,
        FrameType::ExtraInfo as u8,
        "the call is in flight"
    );

    kill(Pid::from_raw(runner.0.id() as i32), Signal::SIGTERM).unwrap();
    let signalled = Instant::now();
    tokio::time::sleep(Duration::from_millis(50)).await;

    // The call in flight completes.
    let answer = frame(FrameType::ExtraInfo, |o| {
        let result = Some("r1".into());
        codec.encode_extra_info_resp(&ExtraInfoResp { result }, o)
    });
    raw.send_raw(&answer).await.unwrap();
    let reply = raw
        .read_frame()
        .await
        .unwrap()
        .expect("the reply to the call in flight");
    assert_eq!(reply.ty, FrameType::HttpReqCall as u8);
    let reply = codec.decode_http_req_call_resp(&reply.payload).unwrap();
    assert_eq!(reply.id, 77);

    let status = wait_exit(&mut runner.0, Duration::from_secs(1))
        .expect("the gateway kills a runner that takes over 1 s");
    assert!(status.success(), "{status:?}");
    assert!(signalled.elapsed() < Duration::from_secs(1));
    assert!(!path.exists(), "the socket file is removed");
}

#[tokio::test]
async fn a_stale_socket_is_replaced_and_a_newer_runners_socket_survives_the_old_one() {
    let path = temp_socket_path();
    // A stale socket left by a runner that was killed.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(std::fs::symlink_metadata(&path)
        .unwrap()
        .file_type()
        .is_socket());

    let mut old = spawn(&path);
    let mut gw = connect(&path).await;
    assert!(gw.prepare("k", &[]).await.is_ok(), "the old runner serves");

    // Gateway reload: a new runner binds the same path before the old one exits.
    let ino = |p: &Path| std::fs::symlink_metadata(p).map(|m| m.ino()).ok();
    let old_ino = ino(&path);
    let mut new = spawn(&path);
    let deadline = Instant::now() + Duration::from_secs(20);
    while ino(&path) == old_ino || ino(&path).is_none() {
        assert!(
            Instant::now() < deadline,
            "the new runner never bound the path"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let new_ino = ino(&path);
    kill(Pid::from_raw(old.0.id() as i32), Signal::SIGTERM).unwrap();
    wait_exit(&mut old.0, Duration::from_secs(1)).expect("the old runner exits");
    assert_eq!(
        ino(&path),
        new_ino,
        "the old runner left the new runner's socket alone"
    );
    let mut gw = connect(&path).await;
    assert!(
        gw.prepare("k", &[]).await.is_ok(),
        "the new runner still serves"
    );
    kill(Pid::from_raw(new.0.id() as i32), Signal::SIGTERM).unwrap();
    wait_exit(&mut new.0, Duration::from_secs(5)).expect("new runner exits");
    assert!(!path.exists());
}

fn run_to_end(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("APISIX_LISTEN_ADDRESS");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn refuses_to_start_without_the_unix_prefix() {
    let (ok, _, err) = run_to_end(&[], &[("APISIX_LISTEN_ADDRESS", "/tmp/x.sock")]);
    assert!(!ok);
    assert!(err.contains("must start with `unix:`"), "{err}");
}

#[test]
fn refuses_to_replace_a_file_that_is_not_a_socket() {
    let path: PathBuf = temp_socket_path();
    std::fs::write(&path, b"precious").unwrap();
    let addr = format!("unix:{}", path.display());
    let (ok, _, err) = run_to_end(&[], &[("APISIX_LISTEN_ADDRESS", &addr)]);
    assert!(!ok);
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn help_version_and_plugin_list() {
    let (ok, out, _) = run_to_end(&["--help"], &[]);
    assert!(ok);
    for flag in [
        "--listen",
        "--conf-expire",
        "--protocol",
        "--log",
        "--workers",
    ] {
        assert!(out.contains(flag), "--help lacks {flag}");
    }
    let (ok, out, _) = run_to_end(&["--version"], &[]);
    assert!(ok && out.contains(env!("CARGO_PKG_VERSION")), "{out}");
    let (ok, out, _) = run_to_end(&["--list-plugins"], &[]);
    assert!(ok);
    for name in ["debug-echo", "ip-restriction", "request-id"] {
        assert!(out.lines().any(|l| l == name), "{name} missing from {out}");
    }
}

#[test]
fn bad_flags_are_refused_clearly() {
    let (ok, _, err) = run_to_end(&["--protocol", "morse"], &[]);
    assert!(!ok && err.contains("unknown protocol"), "{err}");
    let (ok, _, err) = run_to_end(
        &["--log", "[[["],
        &[("APISIX_LISTEN_ADDRESS", "unix:/tmp/never.sock")],
    );
    assert!(!ok && err.contains("log filter"), "{err}");
}
