//! Test plugins, written against the public plugin API only. [`registry`] serves them with the
//! built-in catalogue; their names start with `test-`.

use std::time::Duration;

use bytes::Bytes;
use ext_plugin_runner::model::{Pair, Stop};
use ext_plugin_runner::Registry;
use ext_plugin_sdk::*;
use serde::Deserialize;
use serde_json::Value;

/// The built-in plugins and every test plugin here.
pub fn registry() -> Registry {
    ext_plugin_catalogue::builtin()
        .with::<Stopper>()
        .with::<Rewriter>()
        .with::<RespHeader>()
        .with::<Panicker>()
        .with::<SyncPanicker>()
        .with::<Hang>()
        .with::<Spinner>()
        .with::<AskVar>()
        .with::<BodyRewriter>()
}

/// Stops with the configured status, headers (a null value = absent) and body.
pub struct Stopper(Stop);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopperConf {
    status: u16,
    #[serde(default)]
    headers: Vec<(String, Option<String>)>,
    #[serde(default)]
    body: String,
}

impl Plugin for Stopper {
    const NAME: &'static str = "test-stop";
    type Conf = StopperConf;

    fn prepare(c: StopperConf, _: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        let headers = c
            .headers
            .into_iter()
            .map(|(n, v)| Pair {
                name: n.into(),
                value: v.map(Text::from),
            })
            .collect();
        Ok(Stopper(Stop {
            status: c.status,
            headers,
            body: Bytes::from(c.body),
        }))
    }

    async fn request_filter(&self, _: &mut RequestCall<'_>) -> Result<Flow, PluginError> {
        Ok(Flow::Stop(self.0.clone()))
    }
}

/// Records every kind of rewrite the API offers.
pub struct Rewriter;

impl Plugin for Rewriter {
    const NAME: &'static str = "test-rewrite";
    type Conf = Value;

    fn prepare(_: Value, _: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        Ok(Rewriter)
    }

    async fn request_filter(&self, call: &mut RequestCall<'_>) -> Result<Flow, PluginError> {
        call.set_path("/rewritten path");
        call.set_header("x-set", "1");
        call.remove_header("x-drop");
        call.set_arg("replace", "new");
        call.append_arg("multi", "3");
        call.remove_arg("gone");
        call.set_response_header("x-resp", "r");
        call.set_body("new body");
        Ok(Flow::Continue)
    }
}

/// Sets a response header, then continues (its header must survive a later stop).
pub struct RespHeader;

impl Plugin for RespHeader {
    const NAME: &'static str = "test-resp-header";
    type Conf = Value;

    fn prepare(_: Value, _: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        Ok(RespHeader)
    }

    async fn request_filter(&self, call: &mut RequestCall<'_>) -> Result<Flow, PluginError> {
        call.set_response_header("x-ratelimit-remaining", "9");
        call.set_response_header("x-overridden", "early");
        Ok(Flow::Continue)
    }
}

/// Panics in both phases.
pub struct Panicker;

impl Plugin for Panicker {
    const NAME: &'static str = "test-panic";
    type Conf = Value;

    fn prepare(_: Value, _: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        Ok(Panicker)
    }

    async fn request_filter(&self, _: &mut RequestCall<'_>) -> Result<Flow, PluginError> {
        panic!("test plugin panics on purpose")
    }

    async fn response_filter(&self, _: &mut ResponseCall<'_>) -> Result<(), PluginError> {
        panic!("test plugin panics on purpose")
    }
}

/// Panics in both phases' synchronous hooks (the chain's future-free path).
pub struct SyncPanicker;

impl Plugin for SyncPanicker {
    const NAME: &'static str = "test-panic-sync";
    type Conf = Value;

    fn prepare(_: Value, _: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        Ok(SyncPanicker)
    }

    fn request_filter_sync(&self, _: &mut RequestCall<'_>) -> Option<Result<Flow, PluginError>> {
        panic!("test plugin panics on purpose, without a future")
    }

    fn response_filter_sync(&self, _: &mut ResponseCall<'_>) -> Option<Result<(), PluginError>> {
        panic!("test plugin panics on purpose, without a future")
    }
}

/// Never finishes: awaits a future that never completes.
pub struct Hang;

impl Plugin for Hang {
    const NAME: &'static str = "test-hang";
    type Conf = Value;

    fn prepare(_: Value, _: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        Ok(Hang)
    }

    async fn request_filter(&self, _: &mut RequestCall<'_>) -> Result<Flow, PluginError> {
        std::future::pending::<()>().await;
        unreachable!()
    }
}

/// Loops forever on an await that keeps completing (a timer), never returning.
pub struct Spinner;

impl Plugin for Spinner {
    const NAME: &'static str = "test-spin";
    type Conf = Value;

    fn prepare(_: Value, _: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        Ok(Spinner)
    }

    async fn request_filter(&self, _: &mut RequestCall<'_>) -> Result<Flow, PluginError> {
        loop {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// Asks the gateway for `remote_user`, so a test can misbehave inside the exchange.
pub struct AskVar;

impl Plugin for AskVar {
    const NAME: &'static str = "test-ask-var";
    type Conf = Value;

    fn prepare(_: Value, _: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        Ok(AskVar)
    }

    async fn request_filter(&self, call: &mut RequestCall<'_>) -> Result<Flow, PluginError> {
        call.var("remote_user").await?;
        Ok(Flow::Continue)
    }
}

/// Response phase: reads the upstream body, replaces it, changes the status.
pub struct BodyRewriter;

impl Plugin for BodyRewriter {
    const NAME: &'static str = "test-resp-body";
    type Conf = Value;

    fn prepare(_: Value, _: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        Ok(BodyRewriter)
    }

    async fn response_filter(&self, call: &mut ResponseCall<'_>) -> Result<(), PluginError> {
        let body = call.body().await?.unwrap_or_default();
        // A second read is served from the cache: the gateway may be asked only once.
        let again = call.body().await?.unwrap_or_default();
        assert_eq!(body, again);
        let mut new = b"wrapped:".to_vec();
        new.extend_from_slice(&body);
        call.set_body(new);
        call.set_status(201);
        Ok(())
    }
}
