//! A plugin written against the SDK alone: it rejects requests that lack a header.

use ext_plugin_sdk::*;

pub struct RequireHeader {
    name: Text,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequireHeaderConf {
    name: String,
}

impl Plugin for RequireHeader {
    const NAME: &'static str = "require-header";
    type Conf = RequireHeaderConf;

    // Runs once per prepare_conf: validate here, never per request.
    fn prepare(conf: RequireHeaderConf, _env: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        if conf.name.is_empty() {
            return Err(ConfError::field("name", "must not be empty"));
        }
        Ok(RequireHeader {
            name: conf.name.to_ascii_lowercase().into(),
        })
    }

    // Nothing here waits, so the plugin decides without a future (no allocation per call).
    fn request_filter_sync(&self, call: &mut RequestCall<'_>) -> Option<Result<Flow, PluginError>> {
        if call.header(&self.name).is_some() {
            return Some(Ok(Flow::Continue));
        }
        Some(Ok(Flow::Stop(Stop::json_message(
            400,
            "message",
            "missing header",
        ))))
    }
}

#[cfg(test)]
mod tests {
    use ext_plugin_sdk::harness::{block_on, request, Harness, LocalGateway};
    use ext_plugin_sdk::model::ReqAction;
    use ext_plugin_sdk::{Method, Registry};

    use super::RequireHeader;

    const KEY: &str = "route#1#ext-plugin-pre-req#1";

    #[test]
    fn rejects_without_the_header_and_passes_with_it() {
        let harness = Harness::new(Registry::new().with::<RequireHeader>());
        let chain = harness
            .prepare(KEY, &[("require-header", r#"{"name": "X-Key"}"#)])
            .unwrap();
        let mut gateway = LocalGateway::new();

        let bare = request(Method::Get, "/");
        let action = block_on(gateway.call(&chain, &bare)).unwrap();
        assert!(matches!(action, ReqAction::Stop(s) if s.status == 400));

        let keyed = request(Method::Get, "/").with_header("x-key", "k");
        let action = block_on(gateway.call(&chain, &keyed)).unwrap();
        assert_eq!(action, ReqAction::Continue);
    }

    #[test]
    fn an_empty_name_fails_prepare_naming_the_field() {
        let harness = Harness::new(Registry::new().with::<RequireHeader>());
        let err = harness
            .prepare(KEY, &[("require-header", r#"{"name": ""}"#)])
            .err()
            .unwrap();
        assert!(err.to_string().contains("`name`"), "{err}");
    }
}
