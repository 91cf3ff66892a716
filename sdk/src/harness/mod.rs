//! Run plugins in memory, without a runner or a socket: for plugin unit tests and benchmarks.
//!
//! * [`Harness`] prepares chains from `(plugin name, JSON conf)` entries exactly as a runner's
//!   `prepare_conf` does, and [`LocalGateway`] runs calls through them, answering the plugins'
//!   `extra_info` requests from its tables.
//! * [`TestCall`], [`TestResp`] and [`TestEnv`] drive one plugin value directly: build it with a
//!   [`crate::PrepareEnv`] from [`TestEnv`], then call its filters on a [`TestCall`] or
//!   [`TestResp`] and look at what it recorded.
//! * [`Scripted`] passes, delays, rejects, fails or panics as its conf says, for tests of what a
//!   host does with each outcome.
//! * [`request`] and the `with_*` builders on [`HttpReqCallReq`] make requests as a gateway
//!   sends them.
//! * Time: plugins read the system clock, unless [`Harness::with_clock`] or
//!   [`TestEnv::with_clock`] gives them a [`crate::Clock::manual`] the test advances.
//!
//! The harness is executor-agnostic: its calls are futures. [`block_on`] runs one on the current
//! thread for plugins that never sleep; plugins that use timers need the runtime they use
//! (`#[tokio::test]` for tokio's).

mod block_on;
mod chain;
mod plugin;
mod request;
mod scripted;

pub use block_on::block_on;
pub use chain::{Harness, LocalGateway};
pub use plugin::{TestCall, TestEnv, TestResp};
pub use request::{prepare_request, request};
pub use scripted::Scripted;

#[doc(no_inline)]
pub use crate::model::HttpReqCallReq;
