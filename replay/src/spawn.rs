//! A runner under test started as a child process, the way a gateway starts one.

use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long a spawned runner may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A child runner process listening on a temporary socket; dropping it sends SIGTERM (then
/// SIGKILL after 2 s) and reaps it.
pub struct SpawnedRunner {
    child: Child,
    socket: PathBuf,
}

/// A socket path in the temporary directory, unique to this process and `tag`.
pub fn temp_socket(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "ext-plugin-replay-{}-{tag}.sock",
        std::process::id()
    ))
}

impl SpawnedRunner {
    /// Starts `binary` listening on a fresh socket with `args` added, and waits until it accepts
    /// connections. Its stderr goes to ours (a runner logs nothing per request by default).
    pub fn start(binary: &Path, args: &[String]) -> io::Result<SpawnedRunner> {
        let socket = temp_socket("runner");
        let _ = std::fs::remove_file(&socket);
        let child = Command::new(binary)
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .arg("--log")
            .arg("warn")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("starting {}: {e}", binary.display())))?;
        let mut runner = SpawnedRunner { child, socket };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if UnixStream::connect(&runner.socket).is_ok() {
                return Ok(runner);
            }
            if let Some(status) = runner.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "{} exited ({status}) before listening",
                    binary.display()
                )));
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{} did not listen within {START_TIMEOUT:?}",
                        binary.display()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process' resident set size in KiB.
    pub fn rss_kib(&self) -> io::Result<u64> {
        rss_kib(self.pid())
    }
}

impl Drop for SpawnedRunner {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// `VmRSS` of process `pid`, in KiB, from `/proc/<pid>/status`.
pub fn rss_kib(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| io::Error::other(format!("no VmRSS line in /proc/{pid}/status")))
}
