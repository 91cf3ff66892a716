//! A minimal executor for tests of plugins that never wait on a timer or socket.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};

/// Wakes the test's thread.
struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs `future` to completion on the current thread.
///
/// Enough for every harness call of a plugin that does not use a runtime's timers or I/O (a
/// future that waits on a tokio timer outside a tokio runtime panics in tokio, not here).
pub fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::block_on;

    #[test]
    fn runs_a_ready_future_and_one_woken_from_another_thread() {
        assert_eq!(block_on(async { 7 }), 7);
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let handle = std::thread::spawn(move || tx.send(()).unwrap());
        let polled = block_on(std::future::poll_fn(|cx| {
            // Re-polled after the other thread is done; the waker is exercised by unpark.
            match rx.try_recv() {
                Ok(()) => std::task::Poll::Ready(true),
                Err(_) => {
                    cx.waker().wake_by_ref();
                    std::task::Poll::Pending
                }
            }
        }));
        handle.join().unwrap();
        assert!(polled);
    }
}
