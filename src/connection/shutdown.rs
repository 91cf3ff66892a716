//! A one-way runner signal as one connection waits for it: the stop (between calls), and past
//! the drain timeout the abandon (during a call).
//!
//! A connection waits for the next call, or for a call to finish, with the signal as one of the
//! things that can end the wait. Asking `watch::Receiver::changed()` afresh at every wait links
//! a waiter into the channel's list and unlinks it again, each under a lock every connection
//! shares, once per call. Instead one waiter is linked for the connection's life, and whether the
//! signal has come is read from the channel's version, an atomic load.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::sync::watch;

pub(crate) struct Shutdown {
    /// Read for its version only (`has_changed`): the channel carries one value, `true`.
    probe: watch::Receiver<bool>,
    /// Resolves when the signal comes (or its sender is gone); `None` once it has (an async
    /// block must not be polled again after it completed).
    signal: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl Shutdown {
    /// Waits on `rx` for a change to `true`. A receiver that already holds `true` (subscribed
    /// after the signal was sent: it sees no change to come) is signalled from the start.
    pub(crate) fn new(rx: watch::Receiver<bool>) -> Shutdown {
        if *rx.borrow() {
            return Shutdown {
                probe: rx,
                signal: None,
            };
        }
        let probe = rx.clone();
        let mut rx = rx;
        Shutdown {
            probe,
            signal: Some(Box::pin(async move {
                let _ = rx.changed().await;
            })),
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
            ready!(signal.as_mut().poll(cx));
            self.signal = None;
            Poll::Ready(())
        })
    }
}
