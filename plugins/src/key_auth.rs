//! `key-auth` (docs/plugins/security.md): authenticate by an API key in a header or query argument.
//!
//! Conf: `{"header": "apikey", "query": "apikey", "hide_credentials": false, "realm": "key",
//! "anonymous_consumer": null, "consumers": [{"username": "jack", "key": "$ENV://JACK_KEY",
//! "custom_id": "t-1"}]}` (or `consumers_file`). The header wins over the query argument.
//!
//! * Pass: the consumer is recorded for later plugins and sent upstream as
//!   `X-Consumer-Username`, `X-Credential-Identifier`, `X-Consumer-Custom-ID`; with
//!   `hide_credentials` the header or argument that carried the key is deleted.
//! * A wrong key with `anonymous_consumer`: passes as that consumer; with `hide_credentials`
//!   the header and the argument are both deleted, so the wrong key never reaches the upstream.
//! * Fail: `Stop(401, WWW-Authenticate: apikey realm="key", {"message": "Missing API key in
//!   request" | "Invalid API key in request"})`, unless `anonymous_consumer` is set.

use serde::Deserialize;

use super::consumers::{self, Identity, SecretIndex, Verdict};
use ext_plugin_sdk::*;

pub struct KeyAuth {
    header: Text,
    query: Text,
    hide_credentials: bool,
    index: SecretIndex,
    identities: Vec<Identity>,
    anonymous: Option<Identity>,
    missing: Stop,
    invalid: Stop,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyAuthConf {
    #[serde(default = "default_key_name")]
    header: String,
    #[serde(default = "default_key_name")]
    query: String,
    #[serde(default)]
    hide_credentials: bool,
    #[serde(default = "default_realm")]
    realm: String,
    #[serde(default)]
    anonymous_consumer: Option<String>,
    #[serde(default)]
    consumers: Option<Vec<KeyConsumer>>,
    #[serde(default)]
    consumers_file: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConsumer {
    username: String,
    key: String,
    #[serde(default)]
    custom_id: Option<String>,
    #[serde(default)]
    credential_id: Option<String>,
    #[serde(default)]
    group_id: Option<String>,
}

fn default_key_name() -> String {
    "apikey".into()
}

fn default_realm() -> String {
    "key".into()
}

/// Where the presented key came from, so `hide_credentials` deletes the right thing.
enum Source {
    Header,
    Query,
}

impl Plugin for KeyAuth {
    const NAME: &'static str = "key-auth";
    type Conf = KeyAuthConf;

    fn prepare(conf: KeyAuthConf, _env: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        if conf.header.is_empty() || conf.query.is_empty() {
            return Err(ConfError::new("`header` and `query` must not be empty"));
        }
        consumers::check_realm(&conf.realm)?;
        let list = consumers::load(conf.consumers, conf.consumers_file.as_deref())?;
        let mut keys = Vec::with_capacity(list.len());
        let mut identities = Vec::with_capacity(list.len());
        for c in list {
            let what = format!("consumer `{}`: `key`", c.username);
            keys.push(consumers::resolve_secret(&c.key, &what)?);
            identities.push(Identity::new(c.username, c.custom_id, c.credential_id)?.with_group(c.group_id)?);
        }
        consumers::check_unique_usernames(&identities)?;
        let scheme = "apikey";
        Ok(KeyAuth {
            header: conf.header.to_ascii_lowercase().into(),
            query: conf.query.into(),
            hide_credentials: conf.hide_credentials,
            index: SecretIndex::new(keys.iter().map(String::as_str))?,
            identities,
            anonymous: Identity::anonymous(conf.anonymous_consumer)?,
            missing: consumers::challenge(scheme, &conf.realm, "Missing API key in request"),
            invalid: consumers::challenge(scheme, &conf.realm, "Invalid API key in request"),
        })
    }

    fn request_filter_sync(&self, call: &mut RequestCall<'_>) -> Option<Result<Flow, PluginError>> {
        let (found, source) = match call.header(&self.header) {
            Some(key) => (self.index.find(key.as_bytes()), Source::Header),
            None => match call.arg(&self.query) {
                Some(key) => (self.index.find(key.as_bytes()), Source::Query),
                None => {
                    let v = Verdict::Reject(&self.missing);
                    return Some(Ok(consumers::finish(v, self.anonymous.as_ref(), call)));
                }
            },
        };
        let verdict = match found {
            Some(i) => {
                if self.hide_credentials {
                    match source {
                        Source::Header => call.remove_header(self.header.clone()),
                        Source::Query => call.remove_arg(self.query.clone()),
                    }
                }
                Verdict::Pass(&self.identities[i])
            }
            None => {
                // A wrong key that lets the request through as the anonymous consumer is not
                // forwarded either; the request may carry it in both places.
                if self.hide_credentials && self.anonymous.is_some() {
                    if matches!(source, Source::Header) {
                        call.remove_header(self.header.clone());
                    }
                    if call.arg(&self.query).is_some() {
                        call.remove_arg(self.query.clone());
                    }
                }
                Verdict::Reject(&self.invalid)
            }
        };
        Some(Ok(consumers::finish(verdict, self.anonymous.as_ref(), call)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ext_plugin_sdk::harness::{block_on, request, Harness, LocalGateway};
    use ext_plugin_sdk::model::{Pair, ReqAction};

    fn rewrite_of(conf: &str, req: ext_plugin_sdk::model::HttpReqCallReq) -> Vec<Pair> {
        let harness = Harness::new(Registry::new().with::<KeyAuth>());
        let chain = harness
            .prepare("route#1#ext-plugin-pre-req#1", &[("key-auth", conf)])
            .unwrap();
        match block_on(LocalGateway::new().call(&chain, &req)).unwrap() {
            ReqAction::Rewrite(r) => r.headers.into_iter().chain(r.args).collect(),
            other => panic!("expected a rewrite, got {other:?}"),
        }
    }

    fn deleted(pairs: &[Pair], name: &str) -> bool {
        pairs.iter().any(|p| p.name == name && p.value.is_none())
    }

    /// APISIX strips the credential before falling back to the anonymous consumer: a wrong key
    /// must not reach the upstream either.
    #[test]
    fn hide_credentials_strips_an_invalid_key_on_the_anonymous_path() {
        let conf = r#"{"query": "auth", "hide_credentials": true, "anonymous_consumer": "anon",
                       "consumers": [{"username": "jack", "key": "auth-one"}]}"#;
        let header = request(Method::Get, "/").with_header("apikey", "wrong");
        assert!(deleted(&rewrite_of(conf, header), "apikey"));
        let query = request(Method::Get, "/").with_arg("auth", "wrong");
        assert!(deleted(&rewrite_of(conf, query), "auth"));
        let both = request(Method::Get, "/")
            .with_header("apikey", "wrong")
            .with_arg("auth", "wrong");
        let r = rewrite_of(conf, both);
        assert!(deleted(&r, "apikey") && deleted(&r, "auth"), "{r:?}");
        // Without hide_credentials nothing is stripped.
        let kept = conf.replace("true", "false");
        let r = rewrite_of(&kept, request(Method::Get, "/").with_header("apikey", "wrong"));
        assert!(!r.iter().any(|p| p.name == "apikey"), "{r:?}");
    }
}
