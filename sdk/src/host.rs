//! The runner's side of the SDK: what a runner (or a test harness) needs to run prepared chains
//! against its own transport. Plugins never need anything here.
//!
//! A runner decodes each call into the [`crate::model`] types, keeps one [`CallState`] and one
//! [`RespState`] per connection (reset before each call, so their vectors are reused), answers
//! the plugins' `extra_info` requests through its [`GatewayVars`], and builds chains with
//! [`crate::Registry::build_chain`] against one [`StateRegistry`] shared by every chain it serves
//! and the [`crate::Clock`] its plugins read time from.
//!
//! To watch what each plugin decides (for metrics), a runner gives a chain a [`ChainObserver`]
//! with [`crate::Chain::set_observer`] once it is built; plugins' own metrics go to the
//! [`crate::metrics::Metrics`] it creates the [`StateRegistry`] with.

pub use crate::chain::{ChainFailure, ChainObserver, Decision, Phase};
pub use crate::request::CallState;
pub use crate::response::{is_hop_by_hop, RespState};
pub use crate::state::{Retention, StateRegistry};
pub use crate::vars::GatewayVars;
