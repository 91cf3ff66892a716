//! `jwt-auth` (PLUGINS.md §2.7): authenticate by a signed JSON Web Token.
//!
//! Conf: `{"header": "authorization", "query": "jwt", "cookie": "jwt", "hide_credentials":
//! false, "key_claim_name": "key", "claims_to_verify": ["exp", "nbf"], "realm": "jwt",
//! "anonymous_consumer": null, "consumers": [{"username": "jack", "key": "user-key",
//! "algorithm": "HS256", "secret": "$ENV://S", "base64_secret": false,
//! "lifetime_grace_period": 0}, {"username": "svc", "key": "svc-key", "algorithm": "RS256",
//! "public_key": "-----BEGIN PUBLIC KEY-----..."}]}` (or `consumers_file`).
//!
//! Flow, in APISIX's order: the token from the header (a `Bearer ` or `bearer ` prefix is
//! stripped), else the query argument, else the cookie; the consumer by `payload[key_claim_name]`; the token's `alg`
//! must equal the consumer's `algorithm` (so `none` and HMAC-with-a-public-key confusion cannot
//! pass); the signature; then `exp`/`nbf` (when listed in `claims_to_verify` and present) with
//! the consumer's `lifetime_grace_period` in seconds.
//!
//! * Pass: like `key-auth` (consumer headers and context; `hide_credentials` deletes the header,
//!   argument or cookie that carried the token).
//! * Fail: `Stop(401, WWW-Authenticate: Bearer realm="jwt", {"message": ...})` with "Missing JWT
//!   token in request", "JWT token invalid", "missing user key in JWT token", "Invalid user key
//!   in JWT token" or "failed to verify jwt".
//!
//! Algorithms: HS256/384/512 (`secret`), RS256/384/512 and PS256/384/512, ES256/384, EdDSA
//! (`public_key`, PEM), through `jsonwebtoken` with its pure-Rust backend; ES512 (`public_key`,
//! P-521 PEM) through the RustCrypto `p521` crate (`jwt_auth/es512.rs`), with the same claims
//! policy.

use std::collections::HashMap;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::consumers::{self, Identity, Verdict};
use ext_plugin_sdk::*;

mod es512;

pub struct JwtAuth {
    header: Text,
    query: Text,
    cookie: Text,
    cookie_var: Text,
    hide_credentials: bool,
    key_claim: String,
    /// `key` claim → consumer.
    consumers: HashMap<String, Verifier>,
    anonymous: Option<Identity>,
    missing: Stop,
    invalid: Stop,
    no_key: Stop,
    unknown_key: Stop,
    unverified: Stop,
}

struct Verifier {
    identity: Identity,
    key: DecodingKey,
    /// Allows exactly the consumer's algorithm, with its grace period.
    validation: Validation,
    /// ES512 consumers are verified by [`es512`] (`key` is then unused).
    es512: Option<p521::ecdsa::VerifyingKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtAuthConf {
    #[serde(default = "default_header")]
    header: String,
    #[serde(default = "default_jwt")]
    query: String,
    #[serde(default = "default_jwt")]
    cookie: String,
    #[serde(default)]
    hide_credentials: bool,
    #[serde(default = "default_key_claim")]
    key_claim_name: String,
    #[serde(default = "default_claims")]
    claims_to_verify: Vec<String>,
    #[serde(default = "default_realm")]
    realm: String,
    #[serde(default)]
    anonymous_consumer: Option<String>,
    #[serde(default)]
    consumers: Option<Vec<JwtConsumer>>,
    #[serde(default)]
    consumers_file: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConsumer {
    username: String,
    key: String,
    #[serde(default = "default_alg")]
    algorithm: String,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    public_key: Option<String>,
    #[serde(default)]
    base64_secret: bool,
    #[serde(default)]
    lifetime_grace_period: u64,
    #[serde(default)]
    custom_id: Option<String>,
    #[serde(default)]
    credential_id: Option<String>,
}

fn default_header() -> String {
    "authorization".into()
}
fn default_jwt() -> String {
    "jwt".into()
}
fn default_key_claim() -> String {
    "key".into()
}
fn default_claims() -> Vec<String> {
    vec!["exp".into(), "nbf".into()]
}
fn default_realm() -> String {
    "jwt".into()
}
fn default_alg() -> String {
    "HS256".into()
}

fn parse_alg(name: &str) -> Option<Algorithm> {
    use Algorithm::*;
    Some(match name {
        "HS256" => HS256,
        "HS384" => HS384,
        "HS512" => HS512,
        "RS256" => RS256,
        "RS384" => RS384,
        "RS512" => RS512,
        "PS256" => PS256,
        "PS384" => PS384,
        "PS512" => PS512,
        "ES256" => ES256,
        "ES384" => ES384,
        "EdDSA" => EdDSA,
        _ => return None,
    })
}

fn verifier(c: JwtConsumer, claims: &[String]) -> Result<Verifier, ConfError> {
    let who = format!("consumer `{}`", c.username);
    // ES512 is verified by `es512`; ES384 stands in where `jsonwebtoken` needs an algorithm.
    let is_es512 = c.algorithm == es512::NAME;
    let mut es512_key = None;
    let alg = if is_es512 { Some(Algorithm::ES384) } else { parse_alg(&c.algorithm) };
    let alg = alg.ok_or_else(|| {
        ConfError::new(format!(
            "{who}: `algorithm` {:?} is not one of HS256, HS384, HS512, RS256, RS384, RS512, \
             PS256, PS384, PS512, ES256, ES384, ES512, EdDSA",
            c.algorithm
        ))
    })?;
    let bad_key = |e: jsonwebtoken::errors::Error| {
        ConfError::new(format!("{who}: `public_key` is not a {alg:?} PEM public key: {e}"))
    };
    let key = match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            if c.public_key.is_some() {
                return Err(ConfError::new(format!(
                    "{who}: `public_key` is for asymmetric algorithms; {alg:?} uses `secret`"
                )));
            }
            let secret = c
                .secret
                .ok_or_else(|| ConfError::new(format!("{who}: {alg:?} needs `secret`")))?;
            let secret = consumers::resolve_secret(&secret, &format!("{who}: `secret`"))?;
            if c.base64_secret {
                DecodingKey::from_base64_secret(&secret).map_err(|e| {
                    ConfError::new(format!("{who}: `secret` is not base64 ({e})"))
                })?
            } else {
                DecodingKey::from_secret(secret.as_bytes())
            }
        }
        _ => {
            if c.secret.is_some() {
                return Err(ConfError::new(format!(
                    "{who}: {alg:?} verifies with `public_key`; remove `secret`"
                )));
            }
            let pem = c
                .public_key
                .ok_or_else(|| ConfError::new(format!("{who}: {alg:?} needs `public_key`")))?;
            let pem = consumers::resolve_secret(&pem, &format!("{who}: `public_key`"))?;
            if is_es512 {
                es512_key = Some(es512::key(&pem, &who)?);
            }
            match alg {
                _ if is_es512 => Ok(DecodingKey::from_secret(&[])),
                Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(pem.as_bytes()),
                Algorithm::EdDSA => DecodingKey::from_ed_pem(pem.as_bytes()),
                _ => DecodingKey::from_rsa_pem(pem.as_bytes()),
            }
            .map_err(bad_key)?
        }
    };
    let mut validation = Validation::new(alg);
    validation.leeway = c.lifetime_grace_period;
    validation.required_spec_claims.clear();
    validation.validate_exp = claims.iter().any(|c| c == "exp");
    validation.validate_nbf = claims.iter().any(|c| c == "nbf");
    // APISIX checks no audience; a token carrying one must not fail for it.
    validation.validate_aud = false;
    Ok(Verifier {
        identity: Identity::new(c.username, c.custom_id, c.credential_id)?,
        key,
        validation,
        es512: es512_key,
    })
}

/// Where the token came from, so `hide_credentials` deletes the right thing.
enum Source {
    Header,
    Query,
    Cookie,
}

impl JwtAuth {
    fn token(&self, call: &RequestCall<'_>) -> Option<(String, Source)> {
        if let Some(h) = call.header(&self.header) {
            // As APISIX: only `Bearer ` and `bearer ` are prefixes.
            let token = match h.get(..7) {
                Some("Bearer " | "bearer ") => &h[7..],
                _ => h,
            };
            return Some((token.to_owned(), Source::Header));
        }
        if let Some(q) = call.arg(&self.query) {
            return Some((q.to_owned(), Source::Query));
        }
        None
    }

    fn check(&self, token: &str) -> Verdict<'_> {
        // The payload is read before the signature is checked only to find whose key verifies
        // it; nothing in it is trusted until `decode` below has succeeded.
        let Some(claims) = jsonwebtoken::dangerous::insecure_decode::<Map<String, Value>>(token)
            .map(|t| t.claims)
            .ok()
            .or_else(|| es512::unverified_claims(token))
        else {
            return Verdict::Reject(&self.invalid);
        };
        let Some(Value::String(key)) = claims.get(&self.key_claim) else {
            return Verdict::Reject(&self.no_key);
        };
        let Some(v) = self.consumers.get(key) else {
            return Verdict::Reject(&self.unknown_key);
        };
        // `validation.algorithms` holds only the consumer's algorithm.
        let verified = match &v.es512 {
            Some(key) => es512::verify(token, key, &v.validation),
            None => jsonwebtoken::decode::<serde::de::IgnoredAny>(token, &v.key, &v.validation)
                .is_ok(),
        };
        if verified {
            Verdict::Pass(&v.identity)
        } else {
            Verdict::Reject(&self.unverified)
        }
    }

    /// Deletes the token cookie from the `Cookie` header, keeping the others.
    fn strip_cookie(&self, call: &mut RequestCall<'_>) {
        let rest: Vec<&str> = call
            .header_values("cookie")
            .flat_map(|h| h.split(';'))
            .map(str::trim)
            .filter(|c| {
                !c.is_empty() && c.split_once('=').is_none_or(|(k, _)| k != &*self.cookie)
            })
            .collect();
        let rest = rest.join("; ");
        if rest.is_empty() {
            call.remove_header("cookie");
        } else {
            call.set_header("cookie", rest);
        }
    }
}

impl Plugin for JwtAuth {
    const NAME: &'static str = "jwt-auth";
    type Conf = JwtAuthConf;

    fn prepare(conf: JwtAuthConf, _env: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        for (field, v) in [
            ("header", &conf.header),
            ("query", &conf.query),
            ("cookie", &conf.cookie),
            ("key_claim_name", &conf.key_claim_name),
        ] {
            if v.is_empty() {
                return Err(ConfError::new(format!("`{field}` must not be empty")));
            }
        }
        if let Some(c) = conf.claims_to_verify.iter().find(|c| *c != "exp" && *c != "nbf") {
            return Err(ConfError::new(format!(
                "`claims_to_verify` may hold \"exp\" and \"nbf\", not {c:?}"
            )));
        }
        consumers::check_realm(&conf.realm)?;
        let list = consumers::load(conf.consumers, conf.consumers_file.as_deref())?;
        let mut by_key = HashMap::with_capacity(list.len());
        let mut identities = Vec::with_capacity(list.len());
        for c in list {
            let key = c.key.clone();
            if key.is_empty() {
                return Err(ConfError::new(format!(
                    "consumer `{}`: `key` must not be empty",
                    c.username
                )));
            }
            let v = verifier(c, &conf.claims_to_verify)?;
            identities.push(v.identity.clone());
            if let Some(old) = by_key.insert(key.clone(), v) {
                return Err(ConfError::new(format!(
                    "consumers `{}` and another share the key {key:?}",
                    old.identity.username
                )));
            }
        }
        consumers::check_unique_usernames(&identities)?;
        let challenge = |m| consumers::challenge("Bearer", &conf.realm, m);
        Ok(JwtAuth {
            cookie_var: format!("cookie_{}", conf.cookie).into(),
            header: conf.header.to_ascii_lowercase().into(),
            query: conf.query.into(),
            cookie: conf.cookie.into(),
            hide_credentials: conf.hide_credentials,
            key_claim: conf.key_claim_name,
            consumers: by_key,
            anonymous: Identity::anonymous(conf.anonymous_consumer)?,
            missing: challenge("Missing JWT token in request"),
            invalid: challenge("JWT token invalid"),
            no_key: challenge("missing user key in JWT token"),
            unknown_key: challenge("Invalid user key in JWT token"),
            unverified: challenge("failed to verify jwt"),
        })
    }

    async fn request_filter(&self, call: &mut RequestCall<'_>) -> Result<Flow, PluginError> {
        let found = match self.token(call) {
            Some(t) => Some(t),
            // A cookie variable is answered locally, never by a round trip.
            None => call
                .var(&self.cookie_var)
                .await?
                .map(|c| (c.to_string(), Source::Cookie)),
        };
        let Some((token, source)) = found else {
            let v = Verdict::Reject(&self.missing);
            return Ok(consumers::finish(v, self.anonymous.as_ref(), call));
        };
        let verdict = self.check(&token);
        if self.hide_credentials && matches!(verdict, Verdict::Pass(_)) {
            match source {
                Source::Header => call.remove_header(self.header.clone()),
                Source::Query => call.remove_arg(self.query.clone()),
                Source::Cookie => self.strip_cookie(call),
            }
        }
        Ok(consumers::finish(verdict, self.anonymous.as_ref(), call))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_algorithm_parses() {
        for a in [
            "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
            "ES256", "ES384", "EdDSA",
        ] {
            assert!(parse_alg(a).is_some(), "{a}");
        }
        assert!(parse_alg("none").is_none());
        assert!(parse_alg("ES512").is_none());
    }
}
