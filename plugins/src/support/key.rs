//! The key a limiter counts by, from the APISIX `key_type` / `key` fields:
//!
//! * `"var"`: one variable, e.g. `remote_addr`, `http_x_user`, `consumer_name`;
//! * `"var_combination"`: a template such as `"$remote_addr $http_x_user"`;
//! * `"constant"`: the same key for every request (one limit for the whole route or group).
//!
//! Variables resolve through [`Vars`]: in the request phase [`RequestCall::var`], where request
//! data and a consumer set by a runner auth plugin are free and anything else is one cached
//! `extra_info` round trip.
//!
//! [`RequestCall::var`]: ext_plugin_sdk::RequestCall::var

use serde::Deserialize;

use super::template::Template;
use super::vars::Vars;
use crate::consumers::resolve_secret;
use ext_plugin_sdk::{ConfError, PluginError, Text};

#[derive(Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum KeyType {
    #[default]
    Var,
    VarCombination,
    Constant,
}

#[derive(Debug)]
pub enum KeySource {
    Constant(Text),
    Var(Box<str>),
    Combination(Template),
}

impl KeySource {
    /// `key` may be `$ENV://NAME`, read from the runner's environment now (APISIX resolves such
    /// references in every conf string).
    pub fn parse(key_type: KeyType, key: &str) -> Result<KeySource, ConfError> {
        if key.is_empty() {
            return Err(ConfError::new("`key` must not be empty"));
        }
        let key = resolve_secret(key, "`key`")?;
        Ok(match key_type {
            KeyType::Constant => KeySource::Constant(Text::from(key)),
            // A `$` before a single variable name is accepted: APISIX users write both.
            KeyType::Var => {
                let name = key.strip_prefix('$').unwrap_or(&key);
                if !name.bytes().all(is_var_byte) || name.is_empty() {
                    return Err(ConfError::new(format!(
                        "`key` {key:?} is not a variable name (use key_type \"var_combination\" for templates)"
                    )));
                }
                KeySource::Var(name.into())
            }
            // As APISIX: any string is a template; one naming no variable never resolves, so
            // the client address counts.
            KeyType::VarCombination => KeySource::Combination(Template::parse(&key)),
        })
    }

    /// The key for this request; `None` when it resolves to nothing (nil variables).
    pub async fn resolve(&self, call: &mut impl Vars) -> Result<Option<Text>, PluginError> {
        match self {
            KeySource::Constant(k) => Ok(Some(k.clone())),
            KeySource::Var(name) => Ok(call.var(name).await?.filter(|v| !v.is_empty())),
            KeySource::Combination(template) => {
                let rendered = template.render(call).await?;
                // As APISIX: a template none of whose variables has a value gives no key.
                Ok((rendered.resolved > 0).then(|| rendered.text.into()))
            }
        }
    }

    /// The key, or the client address when it resolves to nothing (APISIX's fallback for the
    /// main key of the limit plugins); `None` only when the gateway sent no address either.
    pub async fn resolve_or_client(
        &self,
        call: &mut impl Vars,
    ) -> Result<Option<Text>, PluginError> {
        match self.resolve(call).await? {
            Some(k) => Ok(Some(k)),
            None => call.var("remote_addr").await,
        }
    }
}

fn is_var_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

#[cfg(test)]
mod tests {
    use super::*;
    use ext_plugin_sdk::harness::request;
    use ext_plugin_sdk::harness::TestCall;
    use ext_plugin_sdk::Method;

    async fn key(key_type: KeyType, key: &str, call: &mut TestCall) -> Option<String> {
        let k = KeySource::parse(key_type, key).unwrap();
        k.resolve(&mut call.call())
            .await
            .unwrap()
            .map(|t| t.to_string())
    }

    #[tokio::test]
    async fn every_key_type_resolves() {
        let mut c = TestCall::new(
            request(Method::Get, "/")
                .with_src_ip("10.0.0.9")
                .with_header("x-user", "ann"),
        )
        .with_gateway_var("route_id", "r1");
        assert_eq!(
            key(KeyType::Var, "remote_addr", &mut c).await.as_deref(),
            Some("10.0.0.9")
        );
        assert_eq!(
            key(KeyType::Var, "$http_x_user", &mut c).await.as_deref(),
            Some("ann")
        );
        assert_eq!(key(KeyType::Var, "http_x_none", &mut c).await, None);
        assert_eq!(
            key(KeyType::Constant, "all", &mut c).await.as_deref(),
            Some("all")
        );
        assert_eq!(
            key(
                KeyType::VarCombination,
                "$remote_addr:${http_x_user}/$route_id",
                &mut c
            )
            .await
            .as_deref(),
            Some("10.0.0.9:ann/r1")
        );
        assert_eq!(
            key(KeyType::VarCombination, "$http_x_a $http_x_b", &mut c).await,
            None
        );
        assert_eq!(c.asked(), ["route_id"]);
    }

    #[tokio::test]
    async fn apisix_key_forms() {
        let mut c = TestCall::new(request(Method::Get, "/").with_header("x-p", "k8s"));
        // Without a `$` nothing resolves (the limiters then count by client address).
        assert_eq!(key(KeyType::VarCombination, "plain", &mut c).await, None);
        assert_eq!(key(KeyType::VarCombination, "${open", &mut c).await, None);
        assert_eq!(
            key(KeyType::VarCombination, "${http_x_q ?? apisix}", &mut c)
                .await
                .as_deref(),
            Some("apisix")
        );
        assert_eq!(
            key(KeyType::VarCombination, "${http_x_p ?? apisix}", &mut c)
                .await
                .as_deref(),
            Some("k8s")
        );
        let path = std::env::var("PATH").unwrap();
        assert_eq!(
            key(KeyType::Constant, "$ENV://PATH", &mut c).await,
            Some(path)
        );
    }

    #[test]
    fn bad_keys_are_rejected() {
        assert!(KeySource::parse(KeyType::Var, "").is_err());
        assert!(KeySource::parse(KeyType::Var, "$a $b").is_err());
        let e = KeySource::parse(KeyType::Var, "$ENV://EPR_SURELY_UNSET_VAR").unwrap_err();
        assert!(e.message().contains("EPR_SURELY_UNSET_VAR"), "{e}");
    }
}
