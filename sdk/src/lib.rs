//! The plugin API: everything a plugin author needs, and nothing of the wire.
//!
//! A plugin is a Rust type implementing [`Plugin`]. The gateway hands the runner a chain of
//! `(plugin name, JSON conf)` entries in `prepare_conf`; the runner parses each conf into the
//! plugin's typed [`Plugin::Conf`] (serde) and builds the plugin with [`Plugin::prepare`] once,
//! then runs the prepared chain for every request that names the chain's token.
//!
//! ```
//! use ext_plugin_sdk::*;
//!
//! /// Rejects requests that lack a header.
//! pub struct RequireHeader { name: Text }
//!
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! pub struct RequireHeaderConf { name: String }
//!
//! impl Plugin for RequireHeader {
//!     const NAME: &'static str = "require-header";
//!     type Conf = RequireHeaderConf;
//!
//!     fn prepare(conf: RequireHeaderConf, _env: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
//!         if conf.name.is_empty() {
//!             return Err(ConfError::new("`name` must not be empty"));
//!         }
//!         Ok(RequireHeader { name: conf.name.to_ascii_lowercase().into() })
//!     }
//!
//!     // Nothing here waits: decided without a future (see "Synchronous and async hooks").
//!     fn request_filter_sync(&self, call: &mut RequestCall<'_>) -> Option<Result<Flow, PluginError>> {
//!         if call.header(&self.name).is_some() {
//!             return Some(Ok(Flow::Continue));
//!         }
//!         Some(Ok(Flow::Stop(Stop::new(400).with_body("missing header\n"))))
//!     }
//! }
//! ```
//!
//! Register it with [`Registry::with`], and serve the registry with the `ext-plugin-runner` crate
//! (`ext_plugin_runner::cli::run(registry)`). Unit-test it with [`harness`], without a runner.
//!
//! # How a chain runs
//!
//! * **Request phase** (`http_req_call`): plugins run in conf order. Each sees the request as
//!   rewritten by the plugins before it (path, headers, args, body). The first [`Flow::Stop`]
//!   ends the chain and answers the client; response headers that earlier plugins set are carried
//!   into that stop unless it sets the same names itself. When every plugin continues, the
//!   rewrites they recorded are sent as one rewrite (or "continue" when there are none).
//! * **Response phase** (`http_resp_call`): every plugin runs in conf order and may change the
//!   status, headers and body; later plugins see earlier changes.
//! * **Failures**: a plugin that returns [`PluginError`] or panics fails the call with
//!   SERVICE_UNAVAILABLE (the gateway answers 503, or skips the chain when the route sets
//!   `allow_degradation`). The connection and the runner live on.
//!
//! # Synchronous and async hooks
//!
//! Each phase has two hooks. [`Plugin::request_filter_sync`] (and
//! [`Plugin::response_filter_sync`]) decides without a future; [`Plugin::request_filter`] (and
//! [`Plugin::response_filter`]) is async, for work that waits: a gateway round trip, the body,
//! Redis, a timer. The chain calls the synchronous hook first and awaits the async one only when
//! it returns `None`. A chain runs its plugins behind a vtable, so an awaited filter costs one
//! heap allocation per call (its boxed future) and a synchronous decision none: implement the
//! synchronous hook whenever the work never waits, and the async one alone otherwise.
//!
//! A plugin may do both: decide synchronously when it can (a local counter, a variable at hand
//! through [`RequestCall::var_now`]) and decline otherwise, **before** changing anything on the
//! call, so the async hook runs as if the synchronous one had not. The default async hooks run
//! the synchronous ones, so a plugin that implements only those behaves the same when a test
//! calls `request_filter` directly. Errors and panics fail the call the same way from either
//! hook; the call's deadline can interrupt only an await.
//!
//! # Gateway round trips
//!
//! [`RequestCall::var`], [`RequestCall::gateway_var`], [`RequestCall::body`],
//! [`ResponseCall::var`] and [`ResponseCall::body`] may ask the gateway (one `extra_info` round
//! trip on the call's connection; the answer is cached for the rest of the call).
//!
//! * **`Err`** from them means the round trip failed, in practice because the gateway
//!   connection failed or broke the protocol ([`PluginError::is_gateway_failure`] is true). Pass
//!   it on with `?`: the runner then answers the call with an error and closes that connection
//!   whatever the plugin returns, so ignoring the error (to continue without the value) does not
//!   save the call.
//! * **Dropping the future** before it completes is safe: wrap a fetch in
//!   `tokio::time::timeout`, race it in `select!`, or abandon it. The runner still reads the
//!   gateway's answer, and drops it, before it sends the call's reply or another request, so
//!   the connection stays in step. Nothing is cached for an abandoned fetch; asking again is a
//!   new round trip, made after the abandoned one's answer has arrived. The call's deadline
//!   covers the wait for abandoned answers too: if it passes first, the call is answered
//!   SERVICE_UNAVAILABLE and the connection closed.
//!
//! # State
//!
//! A plugin value lives as long as its prepared chain (the conf cache may drop it after the conf
//! expiry). State that must outlive one chain, such as a rate limiter's counters, comes from
//! [`PrepareEnv::state`]: it is shared by every chain of the same route, plugin and conf (the
//! request and response attachments of one route, and re-prepares after token refresh), and
//! lives as long as any of those chains does. The chain keeps it alive, not the plugin: a
//! plugin may hold the returned `Arc` or only what it needs of it (a field's own `Arc`, say).
//! Several connections call a plugin at once: keep shared state in atomics or short locks, and
//! never hold a lock across an `.await`.
//!
//! # Time
//!
//! Plugins that measure time read it from [`PrepareEnv::clock`] (keep a clone of the
//! [`Clock`]), not from `Instant::now()`. The runner hands out the system's monotonic clock;
//! tests hand out [`Clock::manual`] and [`Clock::advance`] it by hand, through
//! [`harness::Harness::with_clock`], [`harness::TestEnv::with_clock`] or the runner's test
//! configuration, so windows, timeouts and recovery times are tested exactly and without
//! sleeping.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

mod chain;
mod clock;
mod entries;
mod env;
mod error;
mod extensions;
pub mod harness;
pub mod host;
pub mod metrics;
pub mod model;
mod registry;
mod request;
mod response;
pub mod secret;
mod services;
mod state;
mod text;
mod vars;

use std::future::Future;

use serde::de::DeserializeOwned;

pub use bytes::Bytes;
pub use chain::Chain;
pub use clock::Clock;
pub use env::{Attachment, PrepareEnv};
pub use error::{ConfError, Context, PluginError};
pub use model::{Method, Pair, Stop};
pub use registry::{ChainError, Registry};
pub use request::RequestCall;
pub use response::ResponseCall;
pub use secret::resolve_secret;
pub use text::Text;

/// What a request filter decides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Go on with the next plugin (or proxy the request, rewritten as recorded).
    Continue,
    /// Answer the client now with this response; later plugins do not run.
    Stop(Stop),
}

/// A runner plugin. See the [module documentation](self) for how chains run.
pub trait Plugin: Sized + Send + Sync + 'static {
    /// The name gateways use in the chain (`conf[].name`), e.g. `"ip-restriction"`.
    const NAME: &'static str;

    /// The configuration, parsed from the chain entry's JSON value. An absent or empty value is
    /// parsed as `{}`. Use `#[serde(deny_unknown_fields)]`: a field the plugin would ignore must
    /// fail `prepare_conf`, not be skipped silently.
    type Conf: DeserializeOwned;

    /// Validates the conf and builds the plugin. Runs once per `prepare_conf`, never per request:
    /// compile regexes, build lookup tables and resolve secrets here. An error fails the whole
    /// `prepare_conf` (the gateway answers 503 for the route until the conf is fixed) and is
    /// logged with the plugin's name and the message.
    fn prepare(conf: Self::Conf, env: &mut PrepareEnv<'_>) -> Result<Self, ConfError>;

    /// The request phase (`http_req_call`). Read the request from `call`, record rewrites on it,
    /// and return [`Flow::Continue`] or [`Flow::Stop`]. The default runs
    /// [`request_filter_sync`](Plugin::request_filter_sync) and continues when that declines.
    fn request_filter(
        &self,
        call: &mut RequestCall<'_>,
    ) -> impl Future<Output = Result<Flow, PluginError>> + Send {
        async move { self.request_filter_sync(call).unwrap_or(Ok(Flow::Continue)) }
    }

    /// The request phase without a future: the fast path for work that never waits.
    ///
    /// The chain calls this first. `Some(result)` is the plugin's decision, and
    /// [`request_filter`](Plugin::request_filter) is not called; `None` declines, and the chain
    /// then awaits `request_filter` for this call. A chain runs its plugins' futures behind a
    /// vtable, so every awaited `request_filter` costs one heap allocation per call; a plugin
    /// that decides here costs none.
    ///
    /// Implement it when a decision needs nothing but the request, the plugin's own state and
    /// [`RequestCall::var_now`] (no gateway round trip, no body, no sleep, no I/O). A plugin that
    /// only sometimes waits (a Redis-backed limiter, a variable the gateway must be asked for)
    /// decides here when it can and returns `None` otherwise, **before** changing anything on
    /// `call`: `request_filter` then runs on the same call as if this had not been called.
    /// Only this method may be implemented: the default `request_filter` runs it too.
    ///
    /// Panics, errors and the call's deadline behave as in `request_filter`: a panic or an
    /// `Err` fails the call; the deadline cannot interrupt synchronous code in either.
    fn request_filter_sync(&self, call: &mut RequestCall<'_>) -> Option<Result<Flow, PluginError>> {
        let _ = call;
        None
    }

    /// The response phase (`http_resp_call`, when the route also attaches the chain as
    /// `ext-plugin-post-resp`). Read the upstream's status, headers and body from `call` and
    /// change them there. The default runs [`response_filter_sync`](Plugin::response_filter_sync)
    /// and changes nothing when that declines.
    fn response_filter(
        &self,
        call: &mut ResponseCall<'_>,
    ) -> impl Future<Output = Result<(), PluginError>> + Send {
        async move { self.response_filter_sync(call).unwrap_or(Ok(())) }
    }

    /// The response phase without a future, as
    /// [`request_filter_sync`](Plugin::request_filter_sync) is for the request phase: `Some`
    /// decides (and [`response_filter`](Plugin::response_filter) is not called), `None`
    /// declines before changing anything, and the chain awaits `response_filter`.
    fn response_filter_sync(&self, call: &mut ResponseCall<'_>) -> Option<Result<(), PluginError>> {
        let _ = call;
        None
    }
}

impl Stop {
    /// A stop with this status (0 means 200 at the gateway), no headers and no body.
    pub fn new(status: u16) -> Stop {
        Stop {
            status,
            ..Stop::default()
        }
    }

    /// Adds a header; a repeated name is sent several times.
    pub fn with_header(mut self, name: impl Into<Text>, value: impl Into<Text>) -> Stop {
        self.headers.push(Pair::new(name, value));
        self
    }

    pub fn with_body(mut self, body: impl Into<Bytes>) -> Stop {
        self.body = body.into();
        self
    }

    /// A stop whose body is `{"<field>": message}` plus a newline, as the Lua plugins answer
    /// (`{"message": ...}` for auth and restrictions, `{"error_msg": ...}` for limits).
    pub fn json_message(status: u16, field: &str, message: &str) -> Stop {
        let mut body = serde_json::to_vec(&serde_json::json!({ field: message }))
            .expect("a string map always serializes");
        body.push(b'\n');
        Stop::new(status).with_body(body)
    }
}
