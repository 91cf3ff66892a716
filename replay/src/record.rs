//! The recording proxy: sits between a gateway and a runner, forwards every frame both ways,
//! and appends each completed exchange to a corpus.
//!
//! One upstream connection per gateway connection, so the gateway's pooling and its nested
//! prepare connections (docs/protocol.md §1) behave as without the proxy. An exchange is written
//! whole, under a lock, once its final reply has passed: exchanges of different connections
//! never interleave in the file. The corpus' protocol is detected from the first request.

use std::fs::File;
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;
use tracing::warn;

use ext_plugin_runner::codec::detect;
use ext_plugin_runner::frame::{Frame, FrameType};
use ext_plugin_runner::framed::Framed;

use super::corpus::{CallExchange, CorpusWriter, PrepareExchange};

/// Where recorded exchanges go; shared by every proxied connection.
pub struct Recording {
    path: PathBuf,
    state: Mutex<State>,
}

struct State {
    writer: Option<CorpusWriter<BufWriter<File>>>,
    exchanges: u64,
}

impl Recording {
    /// Records into `path` (created, or truncated, at the first exchange).
    pub fn new(path: &Path) -> Arc<Recording> {
        Arc::new(Recording {
            path: path.to_owned(),
            state: Mutex::new(State {
                writer: None,
                exchanges: 0,
            }),
        })
    }

    /// Exchanges written so far.
    pub fn exchanges(&self) -> u64 {
        self.state.lock().expect("not poisoned").exchanges
    }

    fn write(
        &self,
        request: &Frame,
        f: impl FnOnce(&mut CorpusWriter<BufWriter<File>>) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut state = self.state.lock().expect("not poisoned");
        if state.writer.is_none() {
            let protocol = detect(&request.payload).ok_or_else(|| {
                io::Error::other("the first request's payload is neither capnp nor flatbuffers")
            })?;
            let file = BufWriter::new(File::create(&self.path)?);
            state.writer = Some(CorpusWriter::new(file, protocol)?);
        }
        let w = state.writer.as_mut().expect("just set");
        f(w)?;
        // Flushed per exchange, so a recording stopped with ^C keeps what it saw.
        w.flush()?;
        state.exchanges += 1;
        Ok(())
    }
}

/// Proxies connections from `listener` to the runner at `upstream` until `shutdown` resolves.
pub async fn record(
    listener: UnixListener,
    upstream: PathBuf,
    recording: Arc<Recording>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        while tasks.try_join_next().is_some() {}
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => a,
        };
        let (gateway, _) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let upstream = upstream.clone();
        let recording = recording.clone();
        tasks.spawn(async move {
            if let Err(e) = proxy(gateway, &upstream, &recording).await {
                warn!(error = %e, "proxied connection ended");
            }
        });
    }
    tasks.shutdown().await;
}

/// Reads a frame the proxy cannot go on without.
async fn expect(side: &mut Framed<UnixStream>, what: &str) -> io::Result<Frame> {
    side.read_frame().await?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("closed while {what} was awaited"),
        )
    })
}

async fn proxy(gateway: UnixStream, upstream: &Path, recording: &Recording) -> io::Result<()> {
    let mut gw = Framed::new(gateway);
    let mut rn = Framed::new(UnixStream::connect(upstream).await?);
    while let Some(request) = gw.read_frame().await? {
        rn.send_frame(&request).await?;
        let ty = FrameType::from_u8(request.ty);
        let mut extra = Vec::new();
        let reply = loop {
            let f = expect(&mut rn, "the runner's reply").await?;
            gw.send_frame(&f).await?;
            if f.ty != FrameType::ExtraInfo as u8 {
                break f;
            }
            let answer = expect(&mut gw, "the gateway's extra_info answer").await?;
            rn.send_frame(&answer).await?;
            extra.push((f, answer));
        };
        // Only well-formed exchanges are kept; anything else was forwarded but is no corpus.
        let result = match ty {
            Some(FrameType::PrepareConf) if extra.is_empty() => recording.write(&request, |w| {
                w.write_prepare(&PrepareExchange {
                    request: request.clone(),
                    reply,
                })
            }),
            Some(FrameType::HttpReqCall | FrameType::HttpRespCall) => {
                recording.write(&request, |w| {
                    w.write_call(&CallExchange {
                        request: request.clone(),
                        extra,
                        reply,
                    })
                })
            }
            _ => Ok(()),
        };
        if let Err(e) = result {
            warn!(error = %e, "could not record an exchange");
        }
    }
    Ok(())
}
