//! The ext-plugin runner: serves plugin chains to API gateways that speak Apache APISIX's
//! ext-plugin protocol.
//!
//! The gateway spawns the runner, connects over a Unix socket, hands it plugin chains
//! (`prepare_conf`) and runs requests and responses through them (`http_req_call`,
//! `http_resp_call`); plugins may ask the gateway for variables and bodies mid-call
//! (`extra_info`). `docs/protocol.md` is the wire contract; `schema/ext_plugin.capnp` is the
//! Cap'n Proto schema and `schema/ext-plugin.fbs` the FlatBuffers one stock APISIX speaks.
//!
//! Plugins are written against the SDK crate, [`ext_plugin_sdk`]; the built-ins are the
//! `ext_plugin_catalogue` crate. A custom runner is a `main` that serves its own registry:
//!
//! ```no_run
//! use ext_plugin_runner::{about, cli, Registry};
//!
//! fn main() -> std::process::ExitCode {
//!     let registry: Registry = ext_plugin_catalogue::builtin(); // .with::<MyPlugin>()
//!     cli::run(registry, about!()) // --help and --version describe your crate
//! }
//! ```
//!
//! # Layout
//!
//! * Wire: [`frame`] (type + 24-bit length framing), [`framed`] (a stream read and written in
//!   whole frames, async or blocking, and a gateway's `extra_info` answer loop, shared by the
//!   server, the fake gateway and the replayer), [`codec`] (payload ⇄ [`model`], one codec per
//!   protocol; `proto` holds the code generated from `schema/`).
//! * Serving: [`server`] (socket file, accept loop, drain), [`peers`] (who may connect),
//!   `signals` (SIGTERM watched off the serving runtime, and the exit deadline),
//!   `connection` (one connection's
//!   read → serve → write loop and its `extra_info` exchanges), `conf_cache` (tokens → chains),
//!   [`config`] and [`cli`] (settings), `limits` (one log line per limit hit, not one per event).
//! * Operating: [`metrics`] (the Prometheus endpoint and what it counts), [`check`] (the
//!   offline conf checker), [`log_format`] (JSON log lines), `log_fields` (peer strings in log
//!   lines escaped and cut).
//! * [`testing`]: a fake gateway that drives a runner over a real socket, for integration tests
//!   of a whole runner and its plugins.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod check;
pub mod cli;
pub mod codec;
mod conf_cache;
pub mod config;
mod connection;
pub mod frame;
pub mod framed;
mod limits;
mod log_fields;
pub mod log_format;
pub mod metrics;
pub mod peers;
mod pool;
mod proto;
pub mod server;
mod signals;
pub mod testing;

pub use config::Config;
pub use ext_plugin_sdk::{model, Chain, Clock, Registry};
pub use server::{serve, serve_per_core, Listener, Runner};
