//! `key-auth` (PLUGINS.md §2.5): authenticate by an API key in a header or query argument.
//!
//! Conf: `{"header": "apikey", "query": "apikey", "hide_credentials": false, "realm": "key",
//! "anonymous_consumer": null, "consumers": [{"username": "jack", "key": "$ENV://JACK_KEY",
//! "custom_id": "t-1"}]}` (or `consumers_file`). The header wins over the query argument.
//!
//! * Pass: the consumer is recorded for later plugins and sent upstream as
//!   `X-Consumer-Username`, `X-Credential-Identifier`, `X-Consumer-Custom-ID`; with
//!   `hide_credentials` the header or argument that carried the key is deleted.
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

    async fn request_filter(&self, call: &mut RequestCall<'_>) -> Result<Flow, PluginError> {
        let (found, source) = match call.header(&self.header) {
            Some(key) => (self.index.find(key.as_bytes()), Source::Header),
            None => match call.arg(&self.query) {
                Some(key) => (self.index.find(key.as_bytes()), Source::Query),
                None => {
                    let v = Verdict::Reject(&self.missing);
                    return Ok(consumers::finish(v, self.anonymous.as_ref(), call));
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
            None => Verdict::Reject(&self.invalid),
        };
        Ok(consumers::finish(verdict, self.anonymous.as_ref(), call))
    }
}
