//! An external plugin runner for API gateways that speak Apache APISIX's ext-plugin protocol.
//!
//! The gateway spawns the runner, connects over a Unix socket, hands it plugin chains
//! (`prepare_conf`) and runs requests and responses through them (`http_req_call`,
//! `http_resp_call`); plugins may ask the gateway for variables and bodies mid-call
//! (`extra_info`). `../shared/docs/PROTOCOL.md` is the wire contract; `schema/ext_plugin.capnp`
//! is the Cap'n Proto schema and `schema/ext-plugin.fbs` the FlatBuffers one stock APISIX speaks.
//!
//! # Layout
//!
//! * Wire: [`frame`] (type + 24-bit length framing), [`codec`] (payload ⇄ [`model`], one codec
//!   per protocol; `proto` holds the code generated from `schema/`), [`text`] (zero-copy strings).
//! * Serving: [`server`] (socket file, accept loop, drain), `connection` (one connection's
//!   read → serve → write loop and its `extra_info` exchanges), `conf_cache` (tokens → chains),
//!   `chain` (running a chain), [`registry`] (plugin names → plugins), `state` (state shared by
//!   the chains of a route), [`config`] and `cli` (settings), `limits` (one log line per limit
//!   hit, not one per event).
//! * Plugins: [`plugin`] is the whole public plugin API; [`plugins`] (the top-level `plugins/`
//!   directory) is the built-in catalogue.
//! * [`testing`]: a fake gateway that drives a runner over a real socket, and an in-memory
//!   harness that runs prepared chains without one, for tests and benchmarks of the runner and of
//!   plugins.
//! * [`replay`]: the frame replayer behind the `ext-plugin-replay` binary (corpora, load modes,
//!   the echo floor, the recording proxy); `BENCHMARKS.md` has its figures.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

mod chain;
pub mod cli;
pub mod codec;
mod conf_cache;
pub mod config;
mod connection;
pub mod frame;
mod limits;
pub mod model;
pub mod plugin;
#[path = "../plugins/mod.rs"]
pub mod plugins;
mod proto;
pub mod registry;
pub mod replay;
pub mod server;
mod state;
pub mod testing;
pub mod text;

pub use chain::Chain;
pub use config::Config;
pub use registry::Registry;
pub use server::{serve, Listener, Runner};
