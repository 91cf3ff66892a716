//! `ua-restriction` and `referer-restriction` (docs/plugins/security.md): one allow/deny matcher, two
//! plugins. Also the list and rejection helpers the other edge plugins share.
//!
//! * `ua-restriction`: `{"allowlist" | "denylist": [regex], "bypass_missing": false, "message":
//!   "Not allowed"}` (`whitelist`/`blacklist` accepted as aliases). Regexes (not empty) are
//!   searched (unanchored) in every `User-Agent` value, surrounding whitespace trimmed.
//! * `referer-restriction`: `{"whitelist" | "blacklist": ["example.com", "*.example.com"],
//!   "bypass_missing": false, "message": "Your referer host is not allowed"}`
//!   (`allowlist`/`denylist` accepted as aliases). The host is parsed out of `Referer`;
//!   `*.example.com` matches any subdomain (not `example.com` itself), `*` any host, and
//!   `*suffix` any host ending with `suffix`, as in APISIX; case-insensitive.
//!
//! Exactly one list. A missing header (or a referer without a host) passes only with
//! `bypass_missing`. Reject: `Stop(403, {"message": message}\n)`.
//!
//! Regexes use Rust's `regex` crate: RE2-like and linear-time, so no look-around and no
//! back-references (PCRE's `(?=`, `(?<=`, `\1` fail at prepare time, naming the pattern). A
//! list holds at most 1024 patterns of at most 4096 bytes, compiled once as one set of at most
//! 1 MiB ([`crate::support::patterns`]).

use std::collections::HashSet;

use regex::RegexSet;
use serde::Deserialize;

use crate::support::patterns::{self, Budget};
use ext_plugin_sdk::*;

/// APISIX's bounds on a list of patterns: each 1 to `max_len` bytes and, with `unique`, none
/// listed twice.
pub fn check_list(field: &str, items: &[String], max_len: usize, unique: bool) -> Result<(), ConfError> {
    let mut seen = HashSet::new();
    for (i, p) in items.iter().enumerate() {
        if p.is_empty() || p.len() > max_len {
            return Err(ConfError::new(format!(
                "`{field}[{i}]` must be 1 to {max_len} bytes"
            )));
        }
        if unique && !seen.insert(p) {
            return Err(ConfError::new(format!("`{field}[{i}]` {p:?} is listed twice")));
        }
    }
    Ok(())
}

/// *(ext)* `rejected_headers: [{key, value}]`, added to a plugin's rejection.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RejectedHeader {
    key: String,
    value: String,
}

/// A rejection with `rejected_headers` added.
pub fn with_headers(mut stop: Stop, headers: Vec<RejectedHeader>) -> Result<Stop, ConfError> {
    for h in headers {
        if h.key.is_empty() || h.key.bytes().any(|b| b.is_ascii_whitespace() || b == b':') {
            return Err(ConfError::new(format!(
                "`rejected_headers`: {:?} is not a header name",
                h.key
            )));
        }
        stop = stop.with_header(h.key.to_ascii_lowercase(), h.value);
    }
    Ok(stop)
}

/// An HTTP status a rejection may use.
pub fn check_status(field: &str, code: u16) -> Result<(), ConfError> {
    if !(200..=599).contains(&code) {
        return Err(ConfError::new(format!(
            "`{field}` must be an HTTP status (200-599), got {code}"
        )));
    }
    Ok(())
}

/// The allow/deny decision both plugins make.
struct Lists<M> {
    matcher: M,
    allow: bool,
    bypass_missing: bool,
    reject: Stop,
}

impl<M> Lists<M> {
    fn new<T>(
        allow: Option<Vec<T>>,
        deny: Option<Vec<T>>,
        names: (&str, &str),
        bypass_missing: bool,
        message: &str,
        build: impl FnOnce(&str, Vec<T>) -> Result<M, ConfError>,
    ) -> Result<Lists<M>, ConfError> {
        let (list, allow, field) = match (allow, deny) {
            (Some(a), None) => (a, true, names.0),
            (None, Some(d)) => (d, false, names.1),
            (Some(_), Some(_)) => {
                return Err(ConfError::new(format!(
                    "set either `{}` or `{}`, not both",
                    names.0, names.1
                )))
            }
            (None, None) => {
                return Err(ConfError::new(format!("set `{}` or `{}`", names.0, names.1)))
            }
        };
        if list.is_empty() {
            return Err(ConfError::new(format!("`{field}` must not be empty")));
        }
        if message.is_empty() || message.len() > 1024 {
            return Err(ConfError::new("`message` must be 1 to 1024 bytes"));
        }
        Ok(Lists {
            matcher: build(field, list)?,
            allow,
            bypass_missing,
            reject: Stop::json_message(403, "message", message),
        })
    }

    /// `matched`: `None` when the request lacks the value, else whether any value is listed.
    fn decide(&self, matched: Option<bool>) -> Flow {
        let pass = match matched {
            None => self.bypass_missing,
            Some(listed) => listed == self.allow,
        };
        if pass {
            Flow::Continue
        } else {
            Flow::Stop(self.reject.clone())
        }
    }
}

// ---- ua-restriction ----

pub struct UaRestriction(Lists<RegexSet>);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UaRestrictionConf {
    #[serde(default, alias = "whitelist")]
    allowlist: Option<Vec<String>>,
    #[serde(default, alias = "blacklist")]
    denylist: Option<Vec<String>>,
    #[serde(default)]
    bypass_missing: bool,
    #[serde(default = "default_ua_message")]
    message: String,
}

fn default_ua_message() -> String {
    "Not allowed".into()
}

impl Plugin for UaRestriction {
    const NAME: &'static str = "ua-restriction";
    type Conf = UaRestrictionConf;

    fn prepare(c: UaRestrictionConf, _env: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        let names = ("allowlist", "denylist");
        let build = |field: &str, list: Vec<String>| {
            check_list(field, &list, patterns::MAX_PATTERN_LEN, false)?;
            Budget::default().set(field, &list, false)
        };
        Lists::new(c.allowlist, c.denylist, names, c.bypass_missing, &c.message, build)
            .map(UaRestriction)
    }

    fn request_filter_sync(&self, call: &mut RequestCall<'_>) -> Option<Result<Flow, PluginError>> {
        let mut values = call.header_values("user-agent").peekable();
        let matched = values
            .peek()
            .is_some()
            // As APISIX, surrounding whitespace is not part of the agent.
            .then(|| values.any(|ua| self.0.matcher.is_match(ua.trim_ascii())));
        Some(Ok(self.0.decide(matched)))
    }
}

// ---- referer-restriction ----

pub struct RefererRestriction(Lists<HostList>);

/// Exact hosts and `*suffix` wildcards, lower-cased.
pub struct HostList {
    exact: Vec<String>,
    /// What follows the `*`: `*.example.com` is stored as `.example.com`, `*` as `""`.
    suffixes: Vec<String>,
}

impl HostList {
    fn new(field: &str, entries: Vec<String>) -> Result<HostList, ConfError> {
        let mut list = HostList {
            exact: Vec::new(),
            suffixes: Vec::new(),
        };
        for e in entries {
            let e = e.to_ascii_lowercase();
            // APISIX's host pattern: `*` alone, or an optional `*` and host characters.
            let (host, wildcard) = match e.strip_prefix('*') {
                Some(rest) => (rest, true),
                None => (e.as_str(), false),
            };
            let ok = (wildcard || !host.is_empty())
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._[]:".contains(&b));
            if !ok {
                return Err(ConfError::new(format!(
                    "`{field}`: {e:?} is not a host or a `*` wildcard"
                )));
            }
            if wildcard {
                list.suffixes.push(host.to_owned());
            } else {
                list.exact.push(host.to_owned());
            }
        }
        Ok(list)
    }

    fn contains(&self, host: &str) -> bool {
        self.exact.iter().any(|h| h.eq_ignore_ascii_case(host))
            || self.suffixes.iter().any(|s| {
                host.len() >= s.len()
                    && host.is_char_boundary(host.len() - s.len())
                    && host[host.len() - s.len()..].eq_ignore_ascii_case(s)
            })
    }
}

/// The host of a referer URL (`https://user@Host:8080/path` → `Host`); `None` without one.
fn referer_host(referer: &str) -> Option<&str> {
    let (_, rest) = referer.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = hostport.strip_prefix('[') {
        &hostport[..v6.find(']')? + 2]
    } else {
        hostport.split(':').next()?
    };
    (!host.is_empty()).then_some(host)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefererRestrictionConf {
    #[serde(default, alias = "allowlist")]
    whitelist: Option<Vec<String>>,
    #[serde(default, alias = "denylist")]
    blacklist: Option<Vec<String>>,
    #[serde(default)]
    bypass_missing: bool,
    #[serde(default = "default_referer_message")]
    message: String,
}

fn default_referer_message() -> String {
    "Your referer host is not allowed".into()
}

impl Plugin for RefererRestriction {
    const NAME: &'static str = "referer-restriction";
    type Conf = RefererRestrictionConf;

    fn prepare(c: RefererRestrictionConf, _env: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        let names = ("whitelist", "blacklist");
        Lists::new(c.whitelist, c.blacklist, names, c.bypass_missing, &c.message, HostList::new)
            .map(RefererRestriction)
    }

    fn request_filter_sync(&self, call: &mut RequestCall<'_>) -> Option<Result<Flow, PluginError>> {
        let host = call.header("referer").and_then(referer_host);
        Some(Ok(self.0.decide(host.map(|h| self.0.matcher.contains(h)))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn referer_hosts_are_parsed_out_of_urls() {
        assert_eq!(referer_host("https://a.example.com/x?y"), Some("a.example.com"));
        assert_eq!(referer_host("http://u:p@Host.com:8080/"), Some("Host.com"));
        assert_eq!(referer_host("http://[::1]:80/p"), Some("[::1]"));
        assert_eq!(referer_host("example.com/path"), None);
        assert_eq!(referer_host("http:///path"), None);
    }

    #[test]
    fn wildcards_match_subdomains_only() {
        let l = HostList::new("w", vec!["*.Example.com".into(), "exact.org".into()]).unwrap();
        assert!(l.contains("a.example.com"));
        assert!(l.contains("a.b.EXAMPLE.com"));
        assert!(!l.contains("example.com"));
        assert!(!l.contains("badexample.com"));
        assert!(l.contains("EXACT.org"));
        assert!(!l.contains("sub.exact.org"));
        assert!(HostList::new("w", vec!["a b".into()]).is_err());
        assert!(HostList::new("w", vec!["x.*".into()]).is_err());
        // As APISIX: `*` is every host, `*suffix` a plain suffix.
        let any = HostList::new("w", vec!["*".into()]).unwrap();
        assert!(any.contains("anything.org"));
        let bare = HostList::new("w", vec!["*xx.com".into()]).unwrap();
        assert!(bare.contains("xx.com") && bare.contains("abxx.com") && !bare.contains("xx.org"));
    }

    /// Issue 11 #1: twenty `\w{200}` took 5.2 s to prepare (each compiled twice); the list
    /// is compiled once and refused at the size bound, naming the pattern.
    #[test]
    fn oversized_regex_lists_are_refused() {
        let list = serde_json::to_string(&vec![r"\w{200}"; 20]).unwrap();
        let conf = format!(r#"{{"denylist": {list}}}"#);
        let parsed: UaRestrictionConf = serde_json::from_str(&conf).unwrap();
        let e = ext_plugin_sdk::harness::TestEnv::default()
            .with("route#1#ext-plugin-pre-req#1", UaRestriction::NAME, &conf, &[], |e| {
                UaRestriction::prepare(parsed, e)
            })
            .err()
            .unwrap();
        assert!(e.message().contains("`denylist[0]`") && e.message().contains("more than"), "{e}");
    }

    #[test]
    fn lists_have_apisix_bounds() {
        assert!(check_list("l", &["a".into(), "".into()], 10, false).is_err());
        assert!(check_list("l", &["a".repeat(11)], 10, false).is_err());
        assert!(check_list("l", &["a".into(), "a".into()], 10, true).is_err());
        assert!(check_list("l", &["a".into(), "a".into()], 10, false).is_ok());
    }
}
