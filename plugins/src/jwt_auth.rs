//! `jwt-auth` (docs/plugins/security.md): authenticate by a signed JSON Web Token.
//!
//! Conf: `{"header": "authorization", "query": "jwt", "cookie": "jwt", "hide_credentials":
//! false, "key_claim_name": "key", "claims_to_verify": null, "realm": "jwt",
//! "anonymous_consumer": null, "consumers": [{"username": "jack", "key": "user-key",
//! "algorithm": "HS256", "secret": "$ENV://S", "base64_secret": false,
//! "lifetime_grace_period": 0}, {"username": "svc", "key": "svc-key", "algorithm": "RS256",
//! "public_key": "-----BEGIN PUBLIC KEY-----..."}]}` (or `consumers_file`).
//!
//! Flow, in APISIX's order: the token from the header (a `Bearer ` or `bearer ` prefix is
//! stripped), else the query argument, else the cookie; the consumer by
//! `payload[key_claim_name]`; the token's `alg` must equal the consumer's `algorithm` (so `none`
//! and HMAC-with-a-public-key confusion cannot pass); the signature; then the time claims with the consumer's `lifetime_grace_period` in
//! seconds: without `claims_to_verify` (or with `[]`) `exp` and `nbf` when the token has them, or
//! else every listed claim, which must be present. A present claim must be a number.
//!
//! * Pass: like `key-auth` (consumer headers and context; `hide_credentials` deletes the header,
//!   argument or cookie that carried the token, also when a bad token passes as
//!   `anonymous_consumer`).
//! * Fail: `Stop(401, WWW-Authenticate: Bearer realm="jwt", {"message": ...})` with "Missing JWT
//!   token in request", "JWT token invalid", "missing user key in JWT token", "Invalid user key
//!   in JWT token" or "failed to verify jwt".
//!
//! Algorithms: HS256/384/512 (`secret`), RS256/384/512 and PS256/384/512, ES256/384, EdDSA
//! (`public_key`, PEM), through `jsonwebtoken` with its pure-Rust backend; ES512 (`public_key`,
//! P-521 PEM) through the RustCrypto `p521` crate (`jwt_auth/es512.rs`); the time claims are
//! checked the same way for every algorithm.

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
    /// The time claims checked, and whether they must be present.
    claims: Claims,
    /// `key` claim → consumer.
    consumers: HashMap<String, Verifier>,
    anonymous: Option<Identity>,
    missing: Stop,
    invalid: Stop,
    no_key: Stop,
    unknown_key: Stop,
    unverified: Stop,
}

/// The largest `lifetime_grace_period` (APISIX sets none). Clock skew is seconds; a grace
/// period of days would keep expired tokens valid, and a huge one made every time check
/// meaningless.
pub const MAX_GRACE_PERIOD: u64 = 86_400;

struct Verifier {
    identity: Identity,
    key: DecodingKey,
    /// Allows exactly the consumer's algorithm; the time claims are checked by [`Claims`].
    validation: Validation,
    /// ES512 consumers are verified by [`es512`] (`key` is then unused).
    es512: Option<p521::ecdsa::VerifyingKey>,
    /// `lifetime_grace_period`, in seconds, at most [`MAX_GRACE_PERIOD`].
    leeway: f64,
}

/// The time claims a token is checked against, as APISIX checks them.
///
/// Without `claims_to_verify` (or with an empty list) `exp` and `nbf` are checked when the token
/// has them; a listed claim must be present. Either way a present claim must be a number.
struct Claims {
    exp: bool,
    nbf: bool,
    required: bool,
}

impl Claims {
    fn new(listed: Option<&[String]>) -> Result<Claims, ConfError> {
        let listed = listed.unwrap_or_default();
        let mut seen = Vec::with_capacity(2);
        for c in listed {
            if c != "exp" && c != "nbf" {
                return Err(ConfError::new(format!(
                    "`claims_to_verify` may hold \"exp\" and \"nbf\", not {c:?}"
                )));
            }
            if seen.contains(&c) {
                return Err(ConfError::new(format!(
                    "`claims_to_verify` lists {c:?} twice"
                )));
            }
            seen.push(c);
        }
        if listed.is_empty() {
            return Ok(Claims {
                exp: true,
                nbf: true,
                required: false,
            });
        }
        Ok(Claims {
            exp: seen.iter().any(|c| *c == "exp"),
            nbf: seen.iter().any(|c| *c == "nbf"),
            required: true,
        })
    }

    /// Whether `payload` (already verified) is within its lifetime at `now`, seconds.
    fn hold(&self, payload: &Map<String, Value>, now: f64, leeway: f64) -> bool {
        let check = |name: &str, within: &dyn Fn(f64) -> bool| match payload.get(name) {
            None => !self.required,
            Some(v) => v.as_f64().is_some_and(within),
        };
        (!self.exp || check("exp", &|exp| exp > now - leeway))
            && (!self.nbf || check("nbf", &|nbf| nbf < now + leeway))
    }
}

/// The current time in whole seconds, as the gateway's clock reads it.
fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs() as f64)
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
    /// Only `false`: the runner cannot store the payload in the gateway's request context.
    #[serde(default)]
    store_in_ctx: bool,
    #[serde(default = "default_key_claim")]
    key_claim_name: String,
    #[serde(default)]
    claims_to_verify: Option<Vec<String>>,
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
    /// APISIX's token lifetime for signing, which the runner never does: checked, then unused.
    #[serde(default)]
    exp: Option<i64>,
    /// APISIX accepts a private key beside the public one (older versions signed with it); the
    /// runner only verifies, so it is accepted and unused.
    #[serde(default, rename = "private_key")]
    _private_key: Option<String>,
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

fn verifier(c: JwtConsumer) -> Result<Verifier, ConfError> {
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
        // A `secret` beside an asymmetric algorithm is accepted and unused, as in APISIX.
        _ => {
            let pem = c
                .public_key
                .ok_or_else(|| ConfError::new(format!("{who}: {alg:?} needs `public_key`")))?;
            let pem = consumers::resolve_secret(&pem, &format!("{who}: `public_key`"))?;
            if is_es512 {
                es512_key = Some(es512::key(&pem, &who)?);
            }
            match alg {
                _ if is_es512 => DecodingKey::from_secret(&[]),
                Algorithm::ES256 | Algorithm::ES384 => {
                    DecodingKey::from_ec_pem(pem.as_bytes()).map_err(bad_key)?
                }
                Algorithm::EdDSA => DecodingKey::from_ed_pem(pem.as_bytes()).map_err(bad_key)?,
                _ if pem.contains("PRIVATE KEY-----") => rsa_public_of_private(&pem, &who)?,
                _ => DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(bad_key)?,
            }
        }
    };
    if c.exp.is_some_and(|e| e < 1) {
        return Err(ConfError::new(format!("{who}: `exp` must be at least 1")));
    }
    if c.lifetime_grace_period > MAX_GRACE_PERIOD {
        return Err(ConfError::new(format!(
            "{who}: `lifetime_grace_period` must be at most {MAX_GRACE_PERIOD} s (a day), got {}",
            c.lifetime_grace_period
        )));
    }
    let mut validation = Validation::new(alg);
    validation.required_spec_claims.clear();
    // `exp` and `nbf` are checked by `Claims`, with APISIX's rules.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    // APISIX checks no audience; a token carrying one must not fail for it.
    validation.validate_aud = false;
    Ok(Verifier {
        identity: Identity::new(c.username, c.custom_id, c.credential_id)?,
        key,
        validation,
        es512: es512_key,
        leeway: c.lifetime_grace_period as f64,
    })
}

/// The public half of an RSA private key given as `public_key` (PKCS#1 or PKCS#8 PEM), which
/// APISIX accepts there: OpenSSL verifies with a private key too.
fn rsa_public_of_private(pem: &str, who: &str) -> Result<DecodingKey, ConfError> {
    use rsa::pkcs1::DecodeRsaPrivateKey;
    use rsa::pkcs8::DecodePrivateKey;
    use rsa::traits::PublicKeyParts;
    let key = rsa::RsaPrivateKey::from_pkcs1_pem(pem)
        .or_else(|_| rsa::RsaPrivateKey::from_pkcs8_pem(pem))
        .map_err(|e| {
            ConfError::new(format!("{who}: `public_key` holds a private key that is not RSA: {e}"))
        })?;
    Ok(DecodingKey::from_rsa_raw_components(
        &key.n().to_bytes_be(),
        &key.e().to_bytes_be(),
    ))
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
        let key = match claims.get(&self.key_claim) {
            None | Some(Value::Bool(false)) => return Verdict::Reject(&self.no_key),
            Some(Value::String(key)) => key,
            // Any other value names no consumer.
            Some(_) => return Verdict::Reject(&self.unknown_key),
        };
        let Some(v) = self.consumers.get(key) else {
            return Verdict::Reject(&self.unknown_key);
        };
        // `validation.algorithms` holds only the consumer's algorithm.
        let verified = match &v.es512 {
            Some(key) => es512::verify(token, key),
            None => jsonwebtoken::decode::<serde::de::IgnoredAny>(token, &v.key, &v.validation)
                .is_ok(),
        };
        if !verified {
            return Verdict::Reject(&self.unverified);
        }
        // The signature covers the payload read above: it can be trusted now.
        if !self.claims.hold(&claims, now_secs(), v.leeway) {
            return Verdict::Reject(&self.unverified);
        }
        Verdict::Pass(&v.identity)
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
        if conf.store_in_ctx {
            return Err(ConfError::new(
                "`store_in_ctx` cannot be true: the runner cannot store the payload in the \
                 gateway's request context",
            ));
        }
        let claims = Claims::new(conf.claims_to_verify.as_deref())?;
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
            let v = verifier(c)?;
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
            claims,
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
        // A request that goes on (authenticated, or as the anonymous consumer with a bad token)
        // never forwards the token.
        let proceeds = matches!(verdict, Verdict::Pass(_)) || self.anonymous.is_some();
        if self.hide_credentials && proceeds {
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

#[cfg(test)]
mod claim_tests {
    use super::*;
    use ext_plugin_sdk::harness::{block_on, request, Harness, LocalGateway};
    use ext_plugin_sdk::model::{HttpReqCallReq, ReqAction};
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const CONSUMERS: &str = r#""consumers": [{"username": "jack", "key": "user-key", "secret": "my-secret-key"}]"#;

    fn token(claims: Value) -> String {
        let key = EncodingKey::from_secret(b"my-secret-key");
        encode(&Header::default(), &claims, &key).unwrap()
    }

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    fn run(conf: &str, req: HttpReqCallReq) -> ReqAction {
        let harness = Harness::new(Registry::new().with::<JwtAuth>());
        let chain = harness
            .prepare("route#1#ext-plugin-pre-req#1", &[("jwt-auth", conf)])
            .unwrap();
        block_on(LocalGateway::new().call(&chain, &req)).unwrap()
    }

    fn passes(conf: &str, claims: Value) -> bool {
        let req = request(Method::Get, "/").with_arg("jwt", &token(claims));
        match run(conf, req) {
            ReqAction::Stop(s) => {
                assert_eq!(&s.body[..], b"{\"message\":\"failed to verify jwt\"}\n");
                false
            }
            _ => true,
        }
    }

    #[test]
    fn an_empty_claims_list_still_checks_exp_and_nbf_when_present() {
        for conf in [
            format!("{{{CONSUMERS}}}"),
            format!(r#"{{"claims_to_verify": [], {CONSUMERS}}}"#),
        ] {
            assert!(!passes(&conf, json!({"key": "user-key", "exp": 1563870501})), "{conf}");
            assert!(!passes(&conf, json!({"key": "user-key", "nbf": now() + 3600})), "{conf}");
            assert!(!passes(&conf, json!({"key": "user-key", "exp": "soon"})), "{conf}");
            assert!(passes(&conf, json!({"key": "user-key"})), "absent claims are fine: {conf}");
            assert!(passes(&conf, json!({"key": "user-key", "exp": now() + 60})), "{conf}");
        }
    }

    /// Issue 11 #15: `lifetime_grace_period` is bounded at prepare.
    #[test]
    fn the_grace_period_is_capped() {
        let harness = Harness::new(Registry::new().with::<JwtAuth>());
        let conf = |grace: u64| {
            format!(r#"{{"consumers": [{{"username": "jack", "key": "k", "secret": "s", "lifetime_grace_period": {grace}}}]}}"#)
        };
        let e = harness.prepare("route#1#ext-plugin-pre-req#1", &[("jwt-auth", &conf(MAX_GRACE_PERIOD + 1))]).err().unwrap();
        assert!(e.to_string().contains("lifetime_grace_period") && e.to_string().contains("jwt-auth"), "{e}");
        let e = harness.prepare("route#1#ext-plugin-pre-req#1", &[("jwt-auth", &conf(u64::MAX))]).err().unwrap();
        assert!(e.to_string().contains("at most 86400"), "{e}");
        assert!(harness.prepare("route#1#ext-plugin-pre-req#1", &[("jwt-auth", &conf(MAX_GRACE_PERIOD))]).is_ok());
    }

    #[test]
    fn listed_claims_are_required() {
        let nbf = format!(r#"{{"claims_to_verify": ["nbf"], {CONSUMERS}}}"#);
        assert!(!passes(&nbf, json!({"key": "user-key"})));
        assert!(passes(&nbf, json!({"key": "user-key", "nbf": now() - 10})));
        // Only the listed claims are checked.
        assert!(passes(&nbf, json!({"key": "user-key", "nbf": now() - 10, "exp": 1})));
        let exp = format!(r#"{{"claims_to_verify": ["exp"], {CONSUMERS}}}"#);
        assert!(!passes(&exp, json!({"key": "user-key"})));
        assert!(!passes(&exp, json!({"key": "user-key", "exp": now() - 10})));
        assert!(passes(&exp, json!({"key": "user-key", "exp": now() + 60})));
    }

    #[test]
    fn hide_credentials_strips_an_invalid_token_on_the_anonymous_path() {
        let conf = format!(
            r#"{{"hide_credentials": true, "anonymous_consumer": "anon", {CONSUMERS}}}"#
        );
        let bad = "not-a-jwt";
        let cases = [
            (request(Method::Get, "/").with_header("authorization", bad), "authorization"),
            (request(Method::Get, "/").with_arg("jwt", bad), "jwt"),
        ];
        for (req, name) in cases {
            let ReqAction::Rewrite(r) = run(&conf, req) else {
                panic!("the anonymous consumer passes");
            };
            let all: Vec<_> = r.headers.iter().chain(&r.args).collect();
            assert!(all.iter().any(|p| p.name == name && p.value.is_none()), "{name}: {all:?}");
        }
    }
}
