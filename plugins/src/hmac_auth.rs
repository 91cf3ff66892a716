//! `hmac-auth`: authenticate by an HMAC signature over the request (APISIX 3.x semantics).
//!
//! The client sends `Authorization: Signature keyId="<key_id>",algorithm="hmac-sha256",
//! headers="@request-target date x-custom",signature="<base64>"` and a `Date` header. The
//! signing string is the key id, then for each name in `headers` either `<name>: <value>` (the
//! request's header of that name) or, for `@request-target`, `<METHOD> <request_uri>`; lines are
//! joined with `\n` and end with `\n`. Names whose header is absent are left out, as in APISIX.
//!
//! Conf: `{"allowed_algorithms": ["hmac-sha1", "hmac-sha256", "hmac-sha512"], "clock_skew": 300,
//! "signed_headers": ["date"], "validate_request_body": false, "max_req_body_size": 67108864,
//! "hide_credentials": false, "realm": "hmac", "anonymous_consumer": null, "consumers":
//! [{"username": "jack", "key_id": "jack-key", "secret_key": "$ENV://JACK_HMAC"}]}` (or
//! `consumers_file`).
//!
//! Checks, in APISIX's order: `keyId` and `signature` present, `algorithm` present, a consumer
//! with that key id, the algorithm allowed, the `Date` within `clock_skew` seconds of the
//! runner's clock, every `signed_headers` name among the signed ones, the signature (compared in
//! constant time), and with `validate_request_body` the `Digest` header equal to
//! `SHA-256=<base64 of the body's SHA-256>` (the body comes through `extra_info`).
//!
//! * Pass: the consumer headers and context of the other auth plugins; with `hide_credentials`
//!   the `Authorization` header is deleted (for the anonymous consumer too, as APISIX).
//! * Fail: `Stop(401, WWW-Authenticate: hmac realm="hmac", {"message": ...})`: "client request
//!   can't be validated: missing Authorization header", "client request can't be validated:
//!   Authorization header does not start with 'Signature'", or "client request can't be
//!   validated" for every other failure (the reason is logged at debug), unless
//!   `anonymous_consumer` is set. A body over `max_req_body_size` is `413 {"message": "request
//!   size N is greater than the maximum size M allowed"}`, with no anonymous fallback.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use regex::Regex;
use serde::Deserialize;
use sha2::Digest as _;

use super::consumers::{self, Identity, Verdict};
use ext_plugin_sdk::*;

#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    #[serde(rename = "hmac-sha1")]
    Sha1,
    #[serde(rename = "hmac-sha256")]
    Sha256,
    #[serde(rename = "hmac-sha512")]
    Sha512,
}

impl Algorithm {
    fn parse(name: &str) -> Option<Algorithm> {
        Some(match name {
            "hmac-sha1" => Algorithm::Sha1,
            "hmac-sha256" => Algorithm::Sha256,
            "hmac-sha512" => Algorithm::Sha512,
            _ => return None,
        })
    }

    /// Whether `signature` is this algorithm's MAC of `message` under `key`, in constant time.
    fn verify(self, key: &[u8], message: &[u8], signature: &[u8]) -> bool {
        fn check<M: Mac + hmac::digest::KeyInit>(key: &[u8], msg: &[u8], sig: &[u8]) -> bool {
            let mut mac = <M as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
            mac.update(msg);
            mac.verify_slice(sig).is_ok()
        }
        match self {
            Algorithm::Sha1 => check::<Hmac<sha1::Sha1>>(key, message, signature),
            Algorithm::Sha256 => check::<Hmac<sha2::Sha256>>(key, message, signature),
            Algorithm::Sha512 => check::<Hmac<sha2::Sha512>>(key, message, signature),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HmacAuthConf {
    #[serde(default = "default_algorithms")]
    allowed_algorithms: Vec<Algorithm>,
    #[serde(default = "default_clock_skew")]
    clock_skew: u64,
    #[serde(default = "default_signed_headers")]
    signed_headers: Vec<String>,
    #[serde(default)]
    validate_request_body: bool,
    #[serde(default = "default_max_body")]
    max_req_body_size: u64,
    #[serde(default)]
    hide_credentials: bool,
    #[serde(default = "default_realm")]
    realm: String,
    #[serde(default)]
    anonymous_consumer: Option<String>,
    #[serde(default)]
    consumers: Option<Vec<HmacConsumer>>,
    #[serde(default)]
    consumers_file: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HmacConsumer {
    username: String,
    key_id: String,
    secret_key: String,
    #[serde(default)]
    custom_id: Option<String>,
    #[serde(default)]
    credential_id: Option<String>,
    #[serde(default)]
    group_id: Option<String>,
}

fn default_algorithms() -> Vec<Algorithm> {
    vec![Algorithm::Sha1, Algorithm::Sha256, Algorithm::Sha512]
}
fn default_clock_skew() -> u64 {
    300
}
fn default_signed_headers() -> Vec<String> {
    vec!["date".into()]
}
fn default_max_body() -> u64 {
    64 * 1024 * 1024
}
fn default_realm() -> String {
    "hmac".into()
}

/// APISIX's limit on `key_id` and `secret_key`.
const MAX_CREDENTIAL_LEN: usize = 256;

pub struct HmacAuth {
    allowed: Vec<Algorithm>,
    clock_skew: u64,
    signed_headers: Vec<String>,
    validate_body: bool,
    max_body: u64,
    hide_credentials: bool,
    /// key id → consumer.
    consumers: HashMap<String, (Vec<u8>, Identity)>,
    anonymous: Option<Identity>,
    missing: Stop,
    not_signature: Stop,
    invalid: Stop,
}

/// The `Authorization: Signature ...` fields APISIX reads.
#[derive(Default, Debug, PartialEq, Eq)]
struct Params<'a> {
    key_id: Option<&'a str>,
    algorithm: Option<&'a str>,
    signature: Option<&'a str>,
    headers: Option<Vec<&'a str>>,
}

/// Reads the fields as APISIX does: after `Signature` and one more character, comma-separated
/// fields, each the first `name="value"` (`name` alphanumeric) found in it; a later field of
/// the same name wins; `headers` splits on single spaces.
fn parse_params(auth: &str) -> Option<Params<'_>> {
    static FIELD: OnceLock<Regex> = OnceLock::new();
    let field = FIELD.get_or_init(|| Regex::new(r#"([A-Za-z0-9]+)="([^"]*)""#).expect("valid"));
    let rest = auth.strip_prefix("Signature")?;
    let rest = rest.get(rest.chars().next().map_or(0, char::len_utf8)..)?;
    let mut params = Params::default();
    for part in rest.split(',').filter(|p| !p.is_empty()) {
        let Some(m) = field.captures(part) else {
            continue;
        };
        let (name, value) = (m.get(1)?.as_str(), m.get(2)?.as_str());
        match name {
            "keyId" => params.key_id = Some(value),
            "algorithm" => params.algorithm = Some(value),
            "signature" => params.signature = Some(value),
            "headers" => params.headers = Some(value.split(' ').collect()),
            _ => {}
        }
    }
    Some(params)
}

/// Why a request failed validation; logged at debug, answered generically.
enum Failure {
    Invalid(&'static str),
    /// A definite answer (413), returned as it is.
    Status(Stop),
}

impl Plugin for HmacAuth {
    const NAME: &'static str = "hmac-auth";
    type Conf = HmacAuthConf;

    fn prepare(conf: HmacAuthConf, _env: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        if conf.allowed_algorithms.is_empty() {
            return Err(ConfError::field("allowed_algorithms", "must have at least 1 item"));
        }
        if conf.clock_skew == 0 {
            return Err(ConfError::field("clock_skew", "must be at least 1"));
        }
        if let Some(h) = conf.signed_headers.iter().find(|h| h.is_empty() || h.len() > 50) {
            return Err(ConfError::field(
                "signed_headers",
                format!("{h:?} must be 1 to 50 characters"),
            ));
        }
        if conf.max_req_body_size == 0 {
            return Err(ConfError::field("max_req_body_size", "must be at least 1"));
        }
        consumers::check_realm(&conf.realm)?;
        let list = consumers::load(conf.consumers, conf.consumers_file.as_deref())?;
        let mut by_key = HashMap::with_capacity(list.len());
        let mut identities = Vec::with_capacity(list.len());
        for c in list {
            let who = format!("consumer `{}`", c.username);
            for (field, v) in [("key_id", &c.key_id), ("secret_key", &c.secret_key)] {
                if v.is_empty() || v.len() > MAX_CREDENTIAL_LEN {
                    return Err(ConfError::new(format!(
                        "{who}: `{field}` must be 1 to {MAX_CREDENTIAL_LEN} characters"
                    )));
                }
            }
            let secret = consumers::resolve_secret(&c.secret_key, &format!("{who}: `secret_key`"))?;
            let id = Identity::new(c.username, c.custom_id, c.credential_id)?
                .with_group(c.group_id)?;
            identities.push(id.clone());
            if by_key.insert(c.key_id.clone(), (secret.into_bytes(), id)).is_some() {
                return Err(ConfError::new(format!(
                    "{who}: `key_id` {:?} is used by another consumer",
                    c.key_id
                )));
            }
        }
        consumers::check_unique_usernames(&identities)?;
        let challenge = |m| consumers::challenge("hmac", &conf.realm, m);
        Ok(HmacAuth {
            allowed: conf.allowed_algorithms,
            clock_skew: conf.clock_skew,
            signed_headers: conf.signed_headers,
            validate_body: conf.validate_request_body,
            max_body: conf.max_req_body_size,
            hide_credentials: conf.hide_credentials,
            consumers: by_key,
            anonymous: Identity::anonymous(conf.anonymous_consumer)?,
            missing: challenge("client request can't be validated: missing Authorization header"),
            not_signature: challenge(
                "client request can't be validated: Authorization header does not start with \
                 'Signature'",
            ),
            invalid: challenge("client request can't be validated"),
        })
    }

    async fn request_filter(&self, call: &mut RequestCall<'_>) -> Result<Flow, PluginError> {
        let verdict = match call.header("authorization").map(str::to_owned) {
            None => Verdict::Reject(&self.missing),
            Some(auth) => match parse_params(&auth) {
                None => Verdict::Reject(&self.not_signature),
                Some(params) => match self.validate(call, &params).await? {
                    Ok(identity) => Verdict::Pass(identity),
                    Err(Failure::Status(stop)) => return Ok(Flow::Stop(stop)),
                    Err(Failure::Invalid(why)) => {
                        tracing::debug!("hmac-auth: client request can't be validated: {why}");
                        Verdict::Reject(&self.invalid)
                    }
                },
            },
        };
        let flow = consumers::finish(verdict, self.anonymous.as_ref(), call);
        if self.hide_credentials && flow == Flow::Continue {
            call.remove_header("authorization");
        }
        Ok(flow)
    }
}

impl HmacAuth {
    async fn validate(
        &self,
        call: &mut RequestCall<'_>,
        params: &Params<'_>,
    ) -> Result<Result<&Identity, Failure>, PluginError> {
        use Failure::Invalid;
        let (Some(key_id), Some(signature)) = (params.key_id, params.signature) else {
            return Ok(Err(Invalid("keyId or signature missing")));
        };
        let Some(algorithm) = params.algorithm else {
            return Ok(Err(Invalid("algorithm missing")));
        };
        let Some((secret, identity)) = self.consumers.get(key_id) else {
            return Ok(Err(Invalid("Invalid key_id")));
        };
        let Some(alg) = Algorithm::parse(algorithm).filter(|a| self.allowed.contains(a)) else {
            return Ok(Err(Invalid("Invalid algorithm")));
        };
        let Some(date) = call.header("date") else {
            return Ok(Err(Invalid("Date header missing. failed to validate clock skew")));
        };
        let Some(time) = parse_http_date(date) else {
            return Ok(Err(Invalid("Invalid GMT format time")));
        };
        if now_unix().abs_diff(time) > self.clock_skew {
            return Ok(Err(Invalid("Clock skew exceeded")));
        }
        let signed = params.headers.as_deref().unwrap_or_default();
        if self.signed_headers.iter().any(|h| !signed.contains(&h.as_str())) {
            return Ok(Err(Invalid("expected header missing in signing")));
        }
        let signing_string = self.signing_string(call, key_id, signed).await?;
        let presented = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(signature.trim_end_matches('='))
            .unwrap_or_default();
        if !alg.verify(secret, signing_string.as_bytes(), &presented) {
            return Ok(Err(Invalid("Invalid signature")));
        }
        if self.validate_body {
            if let Some(failure) = self.check_digest(call).await? {
                return Ok(Err(failure));
            }
        }
        Ok(Ok(identity))
    }

    /// The key id, then one line per signed name, each ending in `\n`.
    async fn signing_string(
        &self,
        call: &mut RequestCall<'_>,
        key_id: &str,
        signed: &[&str],
    ) -> Result<String, PluginError> {
        let mut s = String::with_capacity(128);
        s.push_str(key_id);
        s.push('\n');
        for name in signed {
            if let Some(value) = call.header(name) {
                s.push_str(name);
                s.push_str(": ");
                s.push_str(value);
                s.push('\n');
            } else if *name == "@request-target" {
                // The path and query exactly as the client sent them.
                let uri = match call.gateway_var("request_uri").await? {
                    Some(uri) => uri,
                    None => call.var("request_uri").await?.unwrap_or_default(),
                };
                s.push_str(call.method().as_str());
                s.push(' ');
                s.push_str(if uri.is_empty() { "/" } else { &uri });
                s.push('\n');
            }
        }
        Ok(s)
    }

    /// `None` when the `Digest` header matches the body.
    async fn check_digest(&self, call: &mut RequestCall<'_>) -> Result<Option<Failure>, PluginError> {
        let Some(digest) = call.header("digest").map(str::to_owned) else {
            return Ok(Some(Failure::Invalid("Invalid digest")));
        };
        // A declared length over the limit is refused before the body is fetched.
        let declared = call.header("content-length").and_then(|l| l.trim().parse::<u64>().ok());
        if let Some(len) = declared.filter(|l| *l > self.max_body) {
            return Ok(Some(self.too_large(len)));
        }
        let body = call.body().await?.unwrap_or_default();
        if body.len() as u64 > self.max_body {
            return Ok(Some(self.too_large(body.len() as u64)));
        }
        let expected = format!(
            "SHA-256={}",
            base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&body))
        );
        Ok((expected != digest).then_some(Failure::Invalid("Invalid digest")))
    }

    fn too_large(&self, size: u64) -> Failure {
        Failure::Status(Stop::json_message(
            413,
            "message",
            &format!(
                "request size {size} is greater than the maximum size {} allowed",
                self.max_body
            ),
        ))
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Seconds since the epoch of an HTTP date in any of the three forms nginx parses: RFC 1123
/// (`Sun, 06 Nov 1994 08:49:37 GMT`), RFC 850 (`Sunday, 06-Nov-94 08:49:37 GMT`) and asctime
/// (`Sun Nov  6 08:49:37 1994`).
pub fn parse_http_date(s: &str) -> Option<u64> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = |m: &str| MONTHS.iter().position(|x| *x == m).map(|i| i as u32 + 1);
    let (day, mon, year, time) = if let Some((_, rest)) = s.split_once(", ") {
        let parts: Vec<&str> = rest.split(' ').collect();
        match parts.as_slice() {
            [d, m, y, t, "GMT"] => (d.parse().ok()?, month(m)?, y.parse::<i64>().ok()?, *t),
            [dmy, t, "GMT"] => {
                let mut it = dmy.split('-');
                let (d, m, y) = (it.next()?, it.next()?, it.next()?);
                let y: i64 = y.parse().ok()?;
                // RFC 850's two-digit years: nginx reads them as 19xx/20xx around 70.
                let y = if y < 70 { 2000 + y } else if y < 100 { 1900 + y } else { y };
                (d.parse().ok()?, month(m)?, y, *t)
            }
            _ => return None,
        }
    } else {
        let parts: Vec<&str> = s.split_whitespace().collect();
        match parts.as_slice() {
            [_, m, d, t, y] => (d.parse().ok()?, month(m)?, y.parse().ok()?, *t),
            _ => return None,
        }
    };
    let mut hms = time.split(':').map(|p| p.parse::<u64>().ok());
    let (h, mi, sec) = (hms.next()??, hms.next()??, hms.next()??);
    if hms.next().is_some() || !(1..=31).contains(&day) || h > 23 || mi > 59 || sec > 60 || year < 1970 {
        return None;
    }
    let days = days_from_civil(year, mon, day);
    u64::try_from(days).ok().map(|d| d * 86_400 + h * 3600 + mi * 60 + sec)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_in_the_three_forms() {
        let t = 784_111_777;
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(t));
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), Some(t));
        assert_eq!(parse_http_date("Sun Nov  6 08:49:37 1994"), Some(t));
        assert_eq!(parse_http_date("Thu, 24 Sep 2020 06:39:52 GMT"), Some(1_600_929_592));
        for bad in ["adfsdf", "", "Sun, 06 Nov 1994 08:49 GMT", "Sun, 32 Nov 1994 08:49:37 GMT"] {
            assert_eq!(parse_http_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn authorization_fields_are_read_as_apisix_reads_them() {
        let p = parse_params(
            r#"Signature keyId="my-access-key",headers="@request-target date" ,signature="asdf""#,
        )
        .unwrap();
        assert_eq!(p.key_id, Some("my-access-key"));
        assert_eq!(p.algorithm, None);
        assert_eq!(p.signature, Some("asdf"));
        assert_eq!(p.headers, Some(vec!["@request-target", "date"]));
        assert!(parse_params("Bearer x").is_none());
        assert!(parse_params("signature x").is_none(), "the prefix is case-sensitive");
        let p = parse_params(r#"Signature algorithm="a", junk keyId="k" ,keyId="l""#).unwrap();
        assert_eq!((p.algorithm, p.key_id), (Some("a"), Some("l")));
    }

    #[test]
    fn macs_verify_in_every_algorithm() {
        let sig = {
            let mut m = <Hmac<sha2::Sha256> as Mac>::new_from_slice(b"k").unwrap();
            m.update(b"msg");
            m.finalize().into_bytes()
        };
        assert!(Algorithm::Sha256.verify(b"k", b"msg", &sig));
        assert!(!Algorithm::Sha256.verify(b"k", b"msh", &sig));
        assert!(!Algorithm::Sha512.verify(b"k", b"msg", &sig));
        assert!(!Algorithm::Sha1.verify(b"k", b"msg", &sig[..20]));
    }
}
