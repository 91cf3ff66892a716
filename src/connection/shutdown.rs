//! A one-way runner signal as one connection waits for it: the stop (between calls), and past
//! the drain timeout the abandon (during a call).
//!
//! A connection waits for the next call, or for a call to finish, with the signal as one of the
//! things that can end the wait. Asking `watch::Receiver::changed()` afresh at every wait links
//! a waiter into the channel's list and unlinks it again, each under a lock every connection
//! shares, once per call. Instead one waiter is linked for the connection's life, and whether the
//! signal has come is read from the channel's version, an atomic load. Polling that waiter again
//! would still take the channel's lock to compare wakers, so it is polled again only when the
//! waiting task's waker is not the one it holds (a task's waker stays the same from poll to poll).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::sync::watch;

pub(crate) struct Shutdown {
    /// Read for its version only (`has_changed`): the channel carries one value, `true`.
    probe: watch::Receiver<bool>,
    /// Resolves when the signal comes (or its sender is gone); `None` once it has (an async
    /// block must not be polled again after it completed).
    signal: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// The waker `signal` was last polled with, and is still linked with: while a wait's
    /// waker is this one, the signal will wake it and needs no poll of its own.
    linked: Option<Waker>,
}

impl Shutdown {
    /// Waits on `rx` for a change to `true`. A receiver that already holds `true` (subscribed
    /// after the signal was sent: it sees no change to come) is signalled from the start.
    pub(crate) fn new(rx: watch::Receiver<bool>) -> Shutdown {
        if *rx.borrow() {
            return Shutdown {
                probe: rx,
                signal: None,
                linked: None,
            };
        }
        let probe = rx.clone();
        let mut rx = rx;
        Shutdown {
            probe,
            signal: Some(Box::pin(async move {
                let _ = rx.changed().await;
            })),
            linked: None,
        }
    }

    /// True once the signal has come.
    pub(crate) fn requested(&self) -> bool {
        // The runner sends `true` once and never marks the value seen here.
        self.signal.is_none() || !matches!(self.probe.has_changed(), Ok(false))
    }

    /// Resolves once the signal has come; cancel safe, and cheap to poll again.
    pub(crate) fn wait(&mut self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx: &mut Context<'_>| -> Poll<()> {
            let Some(signal) = &mut self.signal else {
                return Poll::Ready(());
            };
            let linked = (self.linked.as_ref()).is_some_and(|w| w.will_wake(cx.waker()));
            if linked && matches!(self.probe.has_changed(), Ok(false)) {
                return Poll::Pending;
            }
            if signal.as_mut().poll(cx).is_pending() {
                if !linked {
                    self.linked = Some(cx.waker().clone());
                }
                return Poll::Pending;
            }
            self.signal = None;
            self.linked = None;
            Poll::Ready(())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use futures_util::task::{waker, ArcWake};

    use super::*;

    #[derive(Default)]
    struct Count(AtomicUsize);

    impl ArcWake for Count {
        fn wake_by_ref(me: &Arc<Self>) {
            me.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll_wait(shutdown: &mut Shutdown, w: &Waker) -> Poll<()> {
        let wait = std::pin::pin!(shutdown.wait());
        wait.poll(&mut Context::from_waker(w))
    }

    /// A wait polled again by the same task skips the channel; a wait in another task (another
    /// waker) must link that one, or the signal would wake only the first.
    #[test]
    fn the_signal_wakes_the_task_that_waits_now() {
        let (tx, rx) = watch::channel(false);
        let mut shutdown = Shutdown::new(rx);
        let (first, second) = (Arc::new(Count::default()), Arc::new(Count::default()));
        let (w1, w2) = (waker(first.clone()), waker(second.clone()));
        assert!(poll_wait(&mut shutdown, &w1).is_pending());
        assert!(
            poll_wait(&mut shutdown, &w1).is_pending(),
            "polled again, same task"
        );
        assert!(
            poll_wait(&mut shutdown, &w2).is_pending(),
            "now another task waits"
        );
        tx.send(true).unwrap();
        assert_eq!(
            second.0.load(Ordering::SeqCst),
            1,
            "the waiting task is woken"
        );
        assert!(shutdown.requested());
        assert!(poll_wait(&mut shutdown, &w2).is_ready());
        assert!(poll_wait(&mut shutdown, &w1).is_ready(), "and stays so");
    }

    #[test]
    fn a_signal_sent_while_linked_is_seen_without_a_wake() {
        let (tx, rx) = watch::channel(false);
        let mut shutdown = Shutdown::new(rx);
        let w = waker(Arc::new(Count::default()));
        assert!(poll_wait(&mut shutdown, &w).is_pending());
        tx.send(true).unwrap();
        assert!(poll_wait(&mut shutdown, &w).is_ready());
    }
}
