//! The key a limiter counts by, from the APISIX `key_type` / `key` fields:
//!
//! * `"var"`: one variable, e.g. `remote_addr`, `http_x_user`, `consumer_name`;
//! * `"var_combination"`: a template such as `"$remote_addr $http_x_user"`;
//! * `"constant"`: the same key for every request (one limit for the whole route or group).
//!
//! Variables resolve through [`RequestCall::var`]: request data and a consumer set by a runner
//! auth plugin are free, anything else is one cached `extra_info` round trip.

use serde::Deserialize;

use super::vars::Vars;
use ext_plugin_sdk::{ConfError, PluginError, RequestCall, Text};

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
    Combination(Vec<Part>),
}

#[derive(Debug)]
pub enum Part {
    Literal(Box<str>),
    Var(Box<str>),
}

impl KeySource {
    pub fn parse(key_type: KeyType, key: &str) -> Result<KeySource, ConfError> {
        if key.is_empty() {
            return Err(ConfError::new("`key` must not be empty"));
        }
        Ok(match key_type {
            KeyType::Constant => KeySource::Constant(Text::from(key.to_owned())),
            // A `$` before a single variable name is accepted: APISIX users write both.
            KeyType::Var => {
                let name = key.strip_prefix('$').unwrap_or(key);
                if !name.bytes().all(is_var_byte) || name.is_empty() {
                    return Err(ConfError::new(format!(
                        "`key` {key:?} is not a variable name (use key_type \"var_combination\" for templates)"
                    )));
                }
                KeySource::Var(name.into())
            }
            KeyType::VarCombination => {
                let parts =
                    parse_template(key).map_err(|e| ConfError::new(format!("`key` {e}")))?;
                if !parts.iter().any(|p| matches!(p, Part::Var(_))) {
                    return Err(ConfError::new(format!(
                        "`key` {key:?} names no `$variable`"
                    )));
                }
                KeySource::Combination(parts)
            }
        })
    }

    /// The key for this request; `None` when it resolves to nothing (nil variables).
    pub async fn resolve(&self, call: &mut RequestCall<'_>) -> Result<Option<Text>, PluginError> {
        match self {
            KeySource::Constant(k) => Ok(Some(k.clone())),
            KeySource::Var(name) => Ok(call.var(name).await?.filter(|v| !v.is_empty())),
            KeySource::Combination(parts) => {
                let (key, any_var) = render(parts, call).await?;
                // As APISIX: a template whose variables are all nil gives no key.
                Ok(any_var.then(|| key.into()))
            }
        }
    }

    /// The key, or the client address when it resolves to nothing (APISIX's fallback for the
    /// main key of the limit plugins); `None` only when the gateway sent no address either.
    pub async fn resolve_or_client(
        &self,
        call: &mut RequestCall<'_>,
    ) -> Result<Option<Text>, PluginError> {
        match self.resolve(call).await? {
            Some(k) => Ok(Some(k)),
            None => call.var("remote_addr").await,
        }
    }
}

/// Fills a template's variables in; also says whether any variable was non-empty.
pub async fn render(parts: &[Part], call: &mut impl Vars) -> Result<(String, bool), PluginError> {
    let mut out = String::new();
    let mut any_var = false;
    for part in parts {
        match part {
            Part::Literal(s) => out.push_str(s),
            Part::Var(name) => {
                if let Some(v) = call.var(name).await? {
                    any_var |= !v.is_empty();
                    out.push_str(&v);
                }
            }
        }
    }
    Ok((out, any_var))
}

fn is_var_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Splits `"$a-$b x"` into literals and variables (`${name}` is accepted too).
pub fn parse_template(key: &str) -> Result<Vec<Part>, ConfError> {
    let mut parts = Vec::new();
    let mut rest = key;
    while let Some(at) = rest.find('$') {
        if at > 0 {
            parts.push(Part::Literal(rest[..at].into()));
        }
        let after = &rest[at + 1..];
        let (name, next) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced
                .find('}')
                .ok_or_else(|| ConfError::new(format!("{key:?}: unclosed `${{`")))?;
            (&braced[..end], &braced[end + 1..])
        } else {
            let end = after
                .bytes()
                .position(|b| !is_var_byte(b))
                .unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        if name.is_empty() {
            return Err(ConfError::new(format!(
                "`key` {key:?}: `$` without a variable name"
            )));
        }
        parts.push(Part::Var(name.into()));
        rest = next;
    }
    if !rest.is_empty() {
        parts.push(Part::Literal(rest.into()));
    }
    Ok(parts)
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

    #[test]
    fn bad_keys_are_rejected() {
        assert!(KeySource::parse(KeyType::Var, "").is_err());
        assert!(KeySource::parse(KeyType::Var, "$a $b").is_err());
        assert!(KeySource::parse(KeyType::VarCombination, "plain").is_err());
        assert!(KeySource::parse(KeyType::VarCombination, "${open").is_err());
    }
}
