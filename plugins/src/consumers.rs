//! What the auth plugins (`key-auth`, `basic-auth`, `jwt-auth`) share: loading consumers,
//! resolving `$ENV://NAME` secrets, constant-time secret lookup, and telling the upstream and
//! later plugins who the consumer is.
//!
//! The runner never sees the gateway's Consumer objects, so each auth conf carries its own
//! (docs/plugins/security.md): inline `consumers`, or `consumers_file` naming a JSON file holding the same
//! array. Both are read once per `prepare_conf`; a request only does map lookups.

use std::collections::HashMap;
use std::io::Read;

use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use ext_plugin_sdk::*;

/// The largest `consumers_file` read: about ten thousand consumers. Bigger files are refused
/// before a byte is read.
pub const MAX_CONSUMERS_FILE: u64 = 4 << 20;

/// The consumers of an auth conf: exactly one of the inline array and the file.
pub fn load<T: DeserializeOwned>(
    inline: Option<Vec<T>>,
    file: Option<&str>,
) -> Result<Vec<T>, ConfError> {
    let consumers = match (inline, file) {
        (Some(c), None) => c,
        (None, Some(path)) => {
            let text = read_consumers_file(path)?;
            // serde_json's messages quote the values they choke on, and the file holds
            // secrets: only the kind of error and where it is are reported.
            serde_json::from_slice(&text).map_err(|e| {
                ConfError::new(format!(
                    "`consumers_file` {path:?} is not a consumer array ({:?} error at line {}, \
                     column {})",
                    e.classify(),
                    e.line(),
                    e.column()
                ))
            })?
        }
        (Some(_), Some(_)) => {
            return Err(ConfError::new(
                "set either `consumers` or `consumers_file`, not both",
            ))
        }
        (None, None) => return Err(ConfError::new("set `consumers` or `consumers_file`")),
    };
    if consumers.is_empty() {
        return Err(ConfError::new("`consumers` must not be empty"));
    }
    Ok(consumers)
}

/// Reads a `consumers_file`: a regular file of at most [`MAX_CONSUMERS_FILE`] bytes. Anything
/// else could stall prepare for ever (a FIFO blocks in `open`, a character device such as
/// `/dev/zero` never ends), so the type is checked before opening, and again on the opened file
/// in case the path was swapped in between; the read stops at the cap whatever the file does.
fn read_consumers_file(path: &str) -> Result<Vec<u8>, ConfError> {
    let refuse = |why: String| ConfError::new(format!("`consumers_file` {path:?} {why}"));
    let check = |meta: std::fs::Metadata| {
        if !meta.is_file() {
            return Err(refuse("is not a regular file".into()));
        }
        if meta.len() > MAX_CONSUMERS_FILE {
            return Err(refuse(format!(
                "is {} bytes; at most {MAX_CONSUMERS_FILE}",
                meta.len()
            )));
        }
        Ok(())
    };
    check(std::fs::metadata(path).map_err(|e| refuse(format!("cannot be read: {e}")))?)?;
    let file = std::fs::File::open(path).map_err(|e| refuse(format!("cannot be read: {e}")))?;
    check(
        file.metadata()
            .map_err(|e| refuse(format!("cannot be read: {e}")))?,
    )?;
    let mut text = Vec::new();
    file.take(MAX_CONSUMERS_FILE + 1)
        .read_to_end(&mut text)
        .map_err(|e| refuse(format!("cannot be read: {e}")))?;
    if text.len() as u64 > MAX_CONSUMERS_FILE {
        return Err(refuse(format!(
            "grew past {MAX_CONSUMERS_FILE} bytes while read"
        )));
    }
    Ok(text)
}

/// A secret as configured: literal, `$ENV://NAME` or `$ENV://NAME/field` (see
/// [`ext_plugin_sdk::secret`]). `what` names the field for the error (e.g. "consumer `jack`:
/// `key`").
pub fn resolve_secret(value: &str, what: &str) -> Result<String, ConfError> {
    ext_plugin_sdk::resolve_secret(what, value)
}

/// A secret's fingerprint. Lookups go through fingerprints so neither a map probe nor a
/// comparison runs over the secret's own bytes: what timing can reveal is about SHA-256 outputs,
/// which says nothing usable about the secret, and lengths are hidden too.
pub type Fingerprint = [u8; 32];

pub fn fingerprint(secret: &[u8]) -> Fingerprint {
    Sha256::digest(secret).into()
}

/// Constant-time equality of two fingerprints.
pub fn same(a: &Fingerprint, b: &Fingerprint) -> bool {
    a.ct_eq(b).into()
}

/// Secrets → the index of their consumer, for credentials that identify the consumer by
/// themselves (API keys).
pub struct SecretIndex {
    map: HashMap<Fingerprint, usize>,
}

impl SecretIndex {
    /// Fails when two consumers share a secret: a request could not tell them apart.
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Result<Self, ConfError> {
        let mut map = HashMap::new();
        for (i, s) in secrets.into_iter().enumerate() {
            if map.insert(fingerprint(s.as_bytes()), i).is_some() {
                return Err(ConfError::new(format!(
                    "consumer #{} has the same credential as an earlier consumer",
                    i + 1
                )));
            }
        }
        Ok(SecretIndex { map })
    }

    pub fn find(&self, presented: &[u8]) -> Option<usize> {
        let fp = fingerprint(presented);
        // The probe compares fingerprints, not secrets (see `Fingerprint`).
        self.map.get(&fp).copied()
    }
}

/// Who a request authenticated as, forwarded to the upstream as headers and recorded on the
/// call for later plugins (`consumer()`, the `consumer_name` variable).
#[derive(Clone, Debug)]
pub struct Identity {
    pub username: Text,
    pub custom_id: Option<Text>,
    pub credential_id: Option<Text>,
    /// *(ext)* The consumer's group (APISIX's consumer `group_id`), for `consumer-restriction`
    /// with `type: "consumer_group_id"`.
    pub group_id: Option<Text>,
}

/// The group of the consumer a runner auth plugin attached, left on the call for later plugins
/// (only when the consumer has one). It names its consumer, so a value left by an earlier auth
/// plugin of the chain is not mistaken for a later consumer's.
#[derive(Clone, Debug)]
pub struct ConsumerGroup {
    pub consumer: Text,
    pub group: Text,
}

pub const USERNAME_HEADER: &str = "x-consumer-username";
pub const CREDENTIAL_HEADER: &str = "x-credential-identifier";
pub const CUSTOM_ID_HEADER: &str = "x-consumer-custom-id";

impl Identity {
    pub fn new(
        username: String,
        custom_id: Option<String>,
        credential_id: Option<String>,
    ) -> Result<Identity, ConfError> {
        if username.is_empty() {
            return Err(ConfError::new("a consumer's `username` must not be empty"));
        }
        Ok(Identity {
            username: username.into(),
            custom_id: custom_id.map(Text::from),
            credential_id: credential_id.map(Text::from),
            group_id: None,
        })
    }

    /// Sets the consumer's group (`group_id` of an inline consumer).
    pub fn with_group(mut self, group_id: Option<String>) -> Result<Identity, ConfError> {
        if group_id.as_deref() == Some("") {
            return Err(ConfError::new(format!(
                "consumer `{}`: `group_id` must not be empty",
                self.username
            )));
        }
        self.group_id = group_id.map(Text::from);
        Ok(self)
    }

    /// The identity of `anonymous_consumer`: requests without valid credentials pass as it.
    pub fn anonymous(name: Option<String>) -> Result<Option<Identity>, ConfError> {
        name.map(|n| {
            if n.is_empty() {
                return Err(ConfError::new("`anonymous_consumer` must not be empty"));
            }
            Identity::new(n, None, None)
        })
        .transpose()
    }

    /// Records the consumer and sets the consumer headers. Headers this identity lacks are
    /// deleted, so a client cannot smuggle its own `X-Consumer-*` values to the upstream.
    pub fn attach(&self, call: &mut RequestCall<'_>) {
        call.set_consumer(self.username.clone());
        if let Some(group) = &self.group_id {
            call.insert(ConsumerGroup {
                consumer: self.username.clone(),
                group: group.clone(),
            });
        }
        call.set_header(USERNAME_HEADER, self.username.clone());
        for (name, value) in [
            (CREDENTIAL_HEADER, &self.credential_id),
            (CUSTOM_ID_HEADER, &self.custom_id),
        ] {
            match value {
                Some(v) => call.set_header(name, v.clone()),
                None => call.remove_header(name),
            }
        }
    }
}

/// Fails when two consumers have the same username.
pub fn check_unique_usernames(ids: &[Identity]) -> Result<(), ConfError> {
    let mut seen = std::collections::HashSet::new();
    for id in ids {
        if !seen.insert(id.username.as_str()) {
            return Err(ConfError::new(format!(
                "consumer `{}` is listed twice",
                id.username
            )));
        }
    }
    Ok(())
}

/// The 401 every auth plugin answers with: a challenge header and `{"message": ...}`.
pub fn challenge(scheme: &str, realm: &str, message: &str) -> Stop {
    Stop::json_message(401, "message", message)
        .with_header("www-authenticate", format!("{scheme} realm=\"{realm}\""))
}

/// A realm goes inside a quoted header parameter: as APISIX, printable ASCII without quotes or
/// backslashes.
pub fn check_realm(realm: &str) -> Result<(), ConfError> {
    if realm.is_empty()
        || realm
            .bytes()
            .any(|b| b == b'"' || b == b'\\' || !(0x20..=0x7e).contains(&b))
    {
        return Err(ConfError::new(format!(
            "`realm` {realm:?} must be non-empty printable ASCII, without quotes or backslashes"
        )));
    }
    Ok(())
}

/// Outcome of an auth plugin's credential check, before `anonymous_consumer` applies.
pub enum Verdict<'a> {
    Pass(&'a Identity),
    Reject(&'a Stop),
}

/// Applies a verdict: attach the consumer, or fall back to the anonymous consumer, or stop.
pub fn finish(
    verdict: Verdict<'_>,
    anonymous: Option<&Identity>,
    call: &mut RequestCall<'_>,
) -> Flow {
    match (verdict, anonymous) {
        (Verdict::Pass(id), _) | (Verdict::Reject(_), Some(id)) => {
            id.attach(call);
            Flow::Continue
        }
        (Verdict::Reject(stop), None) => Flow::Stop(stop.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_secrets_resolve_or_name_the_field() {
        // A variable every test process has.
        let path = std::env::var("PATH").unwrap();
        assert_eq!(resolve_secret("$ENV://PATH", "k").unwrap(), path);
        assert_eq!(resolve_secret("$env://PATH", "k").unwrap(), path);
        let e =
            resolve_secret("$ENV://EPR_SURELY_UNSET_VAR", "consumer `jack`: `key`").unwrap_err();
        assert!(e.message().contains("consumer `jack`: `key`"), "{e}");
        assert!(e.message().contains("EPR_SURELY_UNSET_VAR"), "{e}");
        assert_eq!(resolve_secret("plain", "k").unwrap(), "plain");
        assert!(resolve_secret("", "k").is_err());
    }

    #[test]
    fn secret_index_finds_exact_secrets_only() {
        let idx = SecretIndex::new(["alpha", "beta"]).unwrap();
        assert_eq!(idx.find(b"beta"), Some(1));
        assert_eq!(idx.find(b"bet"), None);
        assert_eq!(idx.find(b"betaa"), None);
        assert!(SecretIndex::new(["a", "a"]).is_err());
    }

    #[test]
    fn consumers_come_from_exactly_one_source() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.json");
        std::fs::write(&file, r#"[{"username":"a"}]"#).unwrap();
        let from_file: Vec<serde_json::Value> = load(None, Some(file.to_str().unwrap())).unwrap();
        assert_eq!(from_file.len(), 1);
        assert!(load::<serde_json::Value>(None, None).is_err());
        assert!(load(Some(vec![serde_json::json!({})]), Some("x")).is_err());
        let e = load::<serde_json::Value>(None, Some("/nonexistent/c.json")).unwrap_err();
        assert!(e.message().contains("consumers_file"), "{e}");
        assert!(load::<serde_json::Value>(Some(vec![]), None).is_err());
    }

    /// Issue 11 #2: a FIFO hung prepare for ever, `/dev/zero` grew until out of memory, and a
    /// parse error quoted the file (a secret).
    #[test]
    fn consumers_files_are_bounded_regular_files_never_echoed() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let big = dir.path().join("big.json");
        std::fs::write(&big, vec![b' '; MAX_CONSUMERS_FILE as usize + 1]).unwrap();
        for (path, why) in [
            (fifo.to_str().unwrap(), "not a regular file"),
            ("/dev/zero", "not a regular file"),
            (dir.path().to_str().unwrap(), "not a regular file"),
            (big.to_str().unwrap(), "at most 4194304"),
        ] {
            let e = load::<serde_json::Value>(None, Some(path)).unwrap_err();
            assert!(
                e.message().contains("consumers_file") && e.message().contains(why),
                "{path}: {e}"
            );
        }
        let secret = dir.path().join("secret.json");
        std::fs::write(
            &secret,
            r#"[{"username": "a", "key": "hunter2-SECRET"}, 7]"#,
        )
        .unwrap();
        let e = load::<HashMap<String, String>>(None, Some(secret.to_str().unwrap())).unwrap_err();
        assert!(
            !e.message().contains("hunter2") && e.message().contains("line 1"),
            "{e}"
        );
        std::fs::write(&secret, r#"[{"username": 5, "key": "hunter2-SECRET"}]"#).unwrap();
        let e = load::<HashMap<String, String>>(None, Some(secret.to_str().unwrap())).unwrap_err();
        assert!(
            !e.message().contains("hunter2") && !e.message().contains("integer"),
            "{e}"
        );
    }

    #[test]
    fn realms_cannot_break_the_header() {
        assert!(check_realm("key").is_ok());
        assert!(check_realm("a\"b").is_err());
        assert!(check_realm("").is_err());
        assert!(check_realm("réalm").is_err());
        assert!(check_realm("my realm!").is_ok());
    }
}
