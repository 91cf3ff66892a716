//! SIGTERM and SIGINT, watched on a thread of their own, and the deadline that ends the process.
//!
//! The gateway SIGKILLs a runner still alive 1 s after SIGTERM, so the stop must not depend on
//! the serving runtime being healthy. A plugin that blocks a worker thread (a synchronous loop
//! or a blocking call in async code) can leave the runtime's I/O driver unpolled: a signal
//! watched there is never seen, and the drain's timers never fire. So the signals are watched
//! by a small runtime on a thread of its own, which hands the stop to the server and then, after
//! the drain timeout and a margin, ends the process whatever the server is doing. The orderly
//! stop normally finishes first (docs/HARDENING.md has the figures).

use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;
use tracing::error;

/// After the drain timeout, how long the orderly stop may take before the process ends anyway.
pub(crate) const HARD_EXIT_MARGIN: Duration = Duration::from_millis(150);

/// Starts watching; the receiver gets the signal's name. `exit_after` the signal the process
/// ends with status 0 (the stop was asked for), whether or not the server is done.
pub(crate) fn watch(exit_after: Duration) -> Result<oneshot::Receiver<&'static str>, String> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let (stop_tx, stop_rx) = oneshot::channel();
    let watcher = move || {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                let _ = ready_tx.send(Err(format!("cannot start the signal runtime: {e}")));
                return;
            }
        };
        let received = runtime.block_on(async move {
            let (mut term, mut int) = match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(t), Ok(i)) => (t, i),
                (Err(e), _) | (_, Err(e)) => {
                    let _ = ready_tx.send(Err(format!("cannot install signal handlers: {e}")));
                    return false;
                }
            };
            let _ = ready_tx.send(Ok(()));
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            let _ = stop_tx.send(name);
            true
        });
        if received {
            std::thread::sleep(exit_after);
            error!("the runner did not stop within {exit_after:?} of the signal; exiting now");
            std::process::exit(0);
        }
    };
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(watcher)
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(stop_rx),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("the signal thread ended before it was ready".into()),
    }
}
