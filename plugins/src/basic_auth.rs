//! `basic-auth` (docs/plugins/security.md): HTTP Basic authentication (RFC 7617).
//!
//! Conf: `{"hide_credentials": false, "realm": "basic", "anonymous_consumer": null,
//! "consumers": [{"username": "u", "password": "$ENV://P", "custom_id": "t-1"}]}` (or
//! `consumers_file`).
//!
//! * Pass: the same consumer headers and context as `key-auth`; with `hide_credentials` the
//!   `authorization` header is deleted, also when wrong credentials pass as
//!   `anonymous_consumer`.
//! * Fail: `Stop(401, WWW-Authenticate: Basic realm="basic", {"message": ...})` with "Missing
//!   authorization in request", "Invalid authorization in request" (not `Basic <base64 of
//!   user:password>`) or "Invalid user authorization" (unknown user or wrong password; the two
//!   are not told apart, in answer or in timing).
//!
//! The credentials split on the **first** colon, so passwords may contain colons; nothing is
//! trimmed (APISIX's whitespace quirks are not copied).

use std::collections::HashMap;

use base64::Engine as _;
use serde::Deserialize;

use super::consumers::{self, Fingerprint, Identity, Verdict};
use ext_plugin_sdk::*;

pub struct BasicAuth {
    hide_credentials: bool,
    /// username → (password fingerprint, identity index).
    users: HashMap<String, (Fingerprint, usize)>,
    identities: Vec<Identity>,
    anonymous: Option<Identity>,
    missing: Stop,
    malformed: Stop,
    denied: Stop,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthConf {
    #[serde(default)]
    hide_credentials: bool,
    #[serde(default = "default_realm")]
    realm: String,
    #[serde(default)]
    anonymous_consumer: Option<String>,
    #[serde(default)]
    consumers: Option<Vec<BasicConsumer>>,
    #[serde(default)]
    consumers_file: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicConsumer {
    username: String,
    password: String,
    #[serde(default)]
    custom_id: Option<String>,
    #[serde(default)]
    credential_id: Option<String>,
    #[serde(default)]
    group_id: Option<String>,
}

fn default_realm() -> String {
    "basic".into()
}

/// Decodes `Basic <base64(user:password)>`; `None` when the header is not of that shape.
fn parse_basic(header: &str) -> Option<(String, Vec<u8>)> {
    let (scheme, b64) = header.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64.trim_start_matches(' '))
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let user = std::str::from_utf8(&decoded[..colon]).ok()?.to_owned();
    Some((user, decoded[colon + 1..].to_vec()))
}

impl Plugin for BasicAuth {
    const NAME: &'static str = "basic-auth";
    type Conf = BasicAuthConf;

    fn prepare(conf: BasicAuthConf, _env: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        consumers::check_realm(&conf.realm)?;
        let list = consumers::load(conf.consumers, conf.consumers_file.as_deref())?;
        let mut users = HashMap::with_capacity(list.len());
        let mut identities = Vec::with_capacity(list.len());
        for c in list {
            if c.username.contains(':') {
                return Err(ConfError::new(format!(
                    "consumer `{}`: a Basic username cannot contain `:`",
                    c.username
                )));
            }
            let what = format!("consumer `{}`: `password`", c.username);
            let password = consumers::resolve_secret(&c.password, &what)?;
            let fp = consumers::fingerprint(password.as_bytes());
            users.insert(c.username.clone(), (fp, identities.len()));
            identities.push(Identity::new(c.username, c.custom_id, c.credential_id)?.with_group(c.group_id)?);
        }
        consumers::check_unique_usernames(&identities)?;
        let challenge = |m| consumers::challenge("Basic", &conf.realm, m);
        Ok(BasicAuth {
            hide_credentials: conf.hide_credentials,
            users,
            identities,
            anonymous: Identity::anonymous(conf.anonymous_consumer)?,
            missing: challenge("Missing authorization in request"),
            malformed: challenge("Invalid authorization in request"),
            denied: challenge("Invalid user authorization"),
        })
    }

    fn request_filter_sync(&self, call: &mut RequestCall<'_>) -> Option<Result<Flow, PluginError>> {
        let verdict = match call.header("authorization") {
            None => Verdict::Reject(&self.missing),
            Some(h) => match parse_basic(h) {
                None => Verdict::Reject(&self.malformed),
                Some((user, password)) => {
                    let presented = consumers::fingerprint(&password);
                    // An unknown user still costs one comparison, so timing does not tell
                    // unknown users from wrong passwords.
                    let (expected, index) = self
                        .users
                        .get(&user)
                        .map_or((&[0u8; 32], None), |(fp, i)| (fp, Some(*i)));
                    match (consumers::same(expected, &presented), index) {
                        (true, Some(i)) => Verdict::Pass(&self.identities[i]),
                        _ => Verdict::Reject(&self.denied),
                    }
                }
            },
        };
        // A request that goes on (authenticated, or as the anonymous consumer with wrong
        // credentials) never forwards the header.
        let proceeds = matches!(verdict, Verdict::Pass(_)) || self.anonymous.is_some();
        if self.hide_credentials && proceeds && call.header("authorization").is_some() {
            call.remove_header("authorization");
        }
        Some(Ok(consumers::finish(verdict, self.anonymous.as_ref(), call)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(s)
        )
    }

    #[test]
    fn splits_on_the_first_colon() {
        let (u, p) = parse_basic(&b64("jack:pa:ss:")).unwrap();
        assert_eq!(u, "jack");
        assert_eq!(p, b"pa:ss:");
        let (u, p) = parse_basic(&b64(":x")).unwrap();
        assert_eq!((u.as_str(), p.as_slice()), ("", &b"x"[..]));
    }

    /// APISIX deletes the header on the anonymous path too: wrong credentials must not reach
    /// the upstream.
    #[test]
    fn hide_credentials_strips_wrong_credentials_on_the_anonymous_path() {
        use ext_plugin_sdk::harness::{block_on, request, Harness, LocalGateway};
        use ext_plugin_sdk::model::ReqAction;
        let conf = r#"{"hide_credentials": true, "anonymous_consumer": "anon",
                       "consumers": [{"username": "foo", "password": "bar"}]}"#;
        let harness = Harness::new(Registry::new().with::<BasicAuth>());
        let chain = harness
            .prepare("route#1#ext-plugin-pre-req#1", &[("basic-auth", conf)])
            .unwrap();
        for header in [b64("foo:wrong"), "Bearer x".to_owned()] {
            let req = request(Method::Get, "/").with_header("authorization", &header);
            let ReqAction::Rewrite(r) = block_on(LocalGateway::new().call(&chain, &req)).unwrap()
            else {
                panic!("the anonymous consumer passes");
            };
            assert!(
                r.headers.iter().any(|p| p.name == "authorization" && p.value.is_none()),
                "{header}: {:?}",
                r.headers
            );
        }
    }

    #[test]
    fn rejects_other_shapes() {
        assert!(parse_basic("Bearer abc").is_none());
        assert!(parse_basic(&b64("nocolon")).is_none());
        assert!(parse_basic("Basic !!!").is_none());
        assert!(parse_basic("Basic").is_none());
        assert!(parse_basic(&b64("a:b").replace("Basic", "bAsIc")).is_some());
    }
}
