//! The physical floor: a Unix-socket server that writes every frame back unchanged.
//!
//! It parses frame headers only to know where frames end (so a reply leaves as soon as its
//! frame is whole, and pipelined frames go back in one write) and never decodes a payload. A
//! replay against it costs the same syscalls, copies and wake-ups as one against a runner,
//! minus everything the runner does with the bytes: the runner/echo ratio is the runner's cost.
//! One blocking thread per connection, like the replayer, which is the cheapest server there is.

use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use ext_plugin_runner::frame::{FrameHeader, HEADER_LEN};

/// A running echo server; dropping it stops accepting and removes the socket file.
pub struct EchoServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl EchoServer {
    /// Listens on `path` (replacing a stale socket file) and serves until dropped.
    pub fn start(path: &Path) -> io::Result<EchoServer> {
        if path.exists() {
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)?;
        let stop = Arc::new(AtomicBool::new(false));
        let accept = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("echo-accept".into())
                .spawn(move || {
                    for conn in listener.incoming() {
                        if stop.load(Ordering::Acquire) {
                            break;
                        }
                        if let Ok(stream) = conn {
                            // Connection threads end when their client hangs up.
                            let _ = std::thread::Builder::new().name("echo-conn".into()).spawn(
                                move || {
                                    let _ = serve(stream);
                                },
                            );
                        }
                    }
                })?
        };
        Ok(EchoServer {
            path: path.to_owned(),
            stop,
            accept: Some(accept),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept loop so it sees the flag.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Echoes whole frames until the client hangs up.
fn serve(mut stream: UnixStream) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let n = stream.read(&mut buf[filled..])?;
        if n == 0 {
            return Ok(());
        }
        filled += n;
        // Every whole frame at the front goes back in one write.
        let mut whole = 0;
        while let Some(h) = FrameHeader::parse(&buf[whole..filled]) {
            if filled - whole < HEADER_LEN + h.len {
                break;
            }
            whole += HEADER_LEN + h.len;
        }
        if whole > 0 {
            stream.write_all(&buf[..whole])?;
            buf.copy_within(whole..filled, 0);
            filled -= whole;
        }
    }
}
