//! Deciding without a future: what a plugin's `request_filter_sync` uses to run the same
//! variable-reading code its awaited filter runs, when no variable needs the gateway.
//!
//! [`LocalVars`] answers variables with [`RequestCall::var_now`] and fails, remembering that it
//! declined, the first time only a round trip could answer; its futures are always ready, so
//! [`now`] runs code that reads variables through it to the end in one poll. A plugin plans
//! with them (resolves its keys and numbers, which changes nothing), and when the plan declined
//! it returns `None` from its synchronous hook: the awaited filter then plans again with the
//! real [`RequestCall`], round trips included.

use std::future::{ready, Future};
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use super::vars::Vars;
use ext_plugin_sdk::{PluginError, RequestCall, Text};

/// The request's variables that need no round trip (see the [module docs](self)).
pub struct LocalVars<'a, 'c> {
    call: &'a mut RequestCall<'c>,
    declined: bool,
}

impl<'a, 'c> LocalVars<'a, 'c> {
    pub fn new(call: &'a mut RequestCall<'c>) -> Self {
        LocalVars {
            call,
            declined: false,
        }
    }

    /// True once a variable needed the gateway: whatever was computed from these variables
    /// since is an error to discard, not a result.
    pub fn declined(&self) -> bool {
        self.declined
    }
}

impl Vars for LocalVars<'_, '_> {
    fn var(
        &mut self,
        name: &str,
    ) -> impl Future<Output = Result<Option<Text>, PluginError>> + Send {
        ready(match self.call.var_now(name) {
            Some(value) => Ok(value),
            None => {
                self.declined = true;
                Err(PluginError::new("the variable needs a gateway round trip"))
            }
        })
    }
}

/// The output of `future` when it completes without waiting; `None` when it would wait (it is
/// then dropped, so use it only for futures whose work so far changed nothing).
pub fn now<F: Future>(future: F) -> Option<F::Output> {
    let future = pin!(future);
    match future.poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ext_plugin_sdk::harness::{request, TestCall};
    use ext_plugin_sdk::Method;

    #[test]
    fn request_variables_resolve_now_and_gateway_ones_decline() {
        let req = request(Method::Get, "/p")
            .with_header("x-user", "ann")
            .with_src_ip("10.1.2.3")
            .with_pushed_var("route_id", Some("7"));
        let mut t = TestCall::new(req).with_gateway_var("request_time", "0.1");
        let mut call = t.call();
        let mut vars = LocalVars::new(&mut call);
        for (name, value) in [
            ("remote_addr", Some("10.1.2.3")),
            ("http_x_user", Some("ann")),
            ("arg_none", None),
            ("route_id", Some("7")),
        ] {
            let got = now(vars.var(name)).expect("ready").unwrap();
            assert_eq!(got.as_deref(), value, "{name}");
        }
        assert!(!vars.declined());
        assert!(now(vars.var("request_time")).expect("ready").is_err());
        assert!(vars.declined(), "a gateway variable declines");
        assert!(t.asked().is_empty(), "declining asks the gateway nothing");
    }

    #[test]
    fn a_future_that_would_wait_gives_none() {
        assert_eq!(now(async { 3 }), Some(3));
        assert_eq!(now(std::future::pending::<u8>()), None);
    }
}
