//! `traffic-tag` (docs/plugins/security.md): canary split and tag routing. The protocol cannot choose an
//! upstream, so this plugin decides and labels; a `traffic-split` on the route, a mesh router, a
//! path prefix or the upstream Host carries the routing out.
//!
//! Conf: `{"tag_header": "x-opensergo-traffic", "keep_incoming": false, "rules": [{"match":
//! [{"vars": [["http_x_user_id", "==", "12345"]]}], "weighted_tags": [{"tag": "gray", "weight":
//! 1}]}, {"http_match": [{"headers": {"tag": {"exact": "v2"}}, "queryParams": {"beta":
//! {"prefix": "1"}}, "uri": {"prefix": "/api"}}], "weighted_tags": [{"tag": "v2", "weight": 20},
//! {"tag": "v1", "weight": 80}], "hash_on": "http_x_user_id"}, {"weighted_tags": [{"tag": "v1",
//! "weight": 1}]}], "set_host": {"v2": "svc-v2.internal"}, "path_prefix": {"v2": "/v2"}}`.
//!
//! * Matching: the first rule that matches wins. `match` is APISIX traffic-split's list of
//!   `{"vars": [...]}` (lua-resty-expr; OR across the list, AND inside one `vars`); `http_match`
//!   *(ext)* is OpenSergo/Istio's form (OR across the list; inside one entry every header, query
//!   parameter, `uri` and `method` StringMatch `{exact|prefix|regex}` must match; regexes are
//!   whole-value matches, as in Istio). A rule with neither always matches.
//! * Choosing: smooth weighted round-robin (nginx's interleaving, precomputed, one atomic counter
//!   per rule shared by the route's chains), or with `hash_on` a hash of that variable, so one
//!   user keeps one tag (round-robin when the variable is nil).
//! * Action: `Rewrite{headers: {tag_header: tag, host: set_host[tag]}, path: path_prefix[tag] +
//!   path}`. A client-sent tag header is replaced, or deleted when no rule matches; with
//!   `keep_incoming` a non-empty incoming tag is kept and the rules are skipped.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use regex::Regex;
use serde::Deserialize;
use serde_json::Value;

use super::support::expr::Expr;
use super::support::patterns::{self, Budget};
use ext_plugin_sdk::*;

/// Longest precomputed round-robin sequence (sum of weights over their gcd).
const MAX_SEQUENCE: u64 = 10_000;

/// Bounds on what a conf may ask for (APISIX's traffic-split sets none). Building a rule's
/// sequence costs tags × sequence length, so an audit's 4 rules × 65 000 tags took 76 s; with
/// these bounds the worst conf builds 64 × 64 × 10 000 steps.
pub(crate) const MAX_RULES: usize = 64;
/// Most `weighted_tags` in one rule.
pub(crate) const MAX_TAGS: usize = 64;
/// Most entries of one rule's `match` or `http_match`, and of one `http_match` entry's
/// `headers` or `queryParams`.
pub(crate) const MAX_MATCHES: usize = 32;

/// `Err` naming `field` when `len` is past `max`.
fn check_len(field: &str, len: usize, max: usize) -> Result<(), ConfError> {
    if len > max {
        return Err(ConfError::new(format!("`{field}` holds {len} entries; at most {max}")));
    }
    Ok(())
}

pub struct TrafficTag {
    tag_header: Text,
    keep_incoming: bool,
    rules: Vec<Rule>,
    counters: Arc<Vec<AtomicU64>>,
    host: BTreeMap<Text, Text>,
    prefix: BTreeMap<Text, Text>,
}

pub(crate) struct Rule {
    matcher: Matcher,
    tags: Vec<Text>,
    /// Indices into `tags`, in smooth weighted round-robin order.
    sequence: Vec<u16>,
    hash_on: Option<Text>,
}

enum Matcher {
    Always,
    Vars(Vec<Expr>),
    Http(Vec<HttpMatch>),
}

struct HttpMatch {
    headers: Vec<(Text, StringMatch)>,
    query: Vec<(Text, StringMatch)>,
    uri: Option<StringMatch>,
    method: Option<StringMatch>,
}

enum StringMatch {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficTagConf {
    #[serde(default = "default_header")]
    tag_header: String,
    #[serde(default)]
    keep_incoming: bool,
    rules: Vec<RuleConf>,
    #[serde(default)]
    set_host: BTreeMap<String, String>,
    #[serde(default)]
    path_prefix: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConf {
    #[serde(default, rename = "match")]
    match_: Option<Vec<VarsConf>>,
    #[serde(default)]
    http_match: Option<Vec<HttpMatchConf>>,
    weighted_tags: Vec<WeightedTag>,
    #[serde(default)]
    hash_on: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VarsConf {
    vars: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpMatchConf {
    #[serde(default)]
    headers: BTreeMap<String, StringMatchConf>,
    #[serde(default, rename = "queryParams")]
    query_params: BTreeMap<String, StringMatchConf>,
    #[serde(default)]
    uri: Option<StringMatchConf>,
    #[serde(default)]
    method: Option<StringMatchConf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StringMatchConf {
    #[serde(default)]
    exact: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    regex: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedTag {
    tag: String,
    weight: u32,
}

fn default_header() -> String {
    "x-opensergo-traffic".into()
}

impl StringMatch {
    fn new(field: &str, c: StringMatchConf, budget: &mut Budget) -> Result<StringMatch, ConfError> {
        match (c.exact, c.prefix, c.regex) {
            (Some(e), None, None) => Ok(StringMatch::Exact(e)),
            (None, Some(p), None) => Ok(StringMatch::Prefix(p)),
            (None, None, Some(r)) => {
                patterns::check_len(field, &r)?;
                Ok(StringMatch::Regex(budget.regex(field, &format!("^(?:{r})$"), false)?))
            }
            _ => Err(ConfError::new(format!(
                "`{field}` needs exactly one of `exact`, `prefix`, `regex`"
            ))),
        }
    }

    fn matches(&self, value: Option<&str>) -> bool {
        let Some(v) = value else { return false };
        match self {
            StringMatch::Exact(e) => v == e,
            StringMatch::Prefix(p) => v.starts_with(p.as_str()),
            StringMatch::Regex(r) => r.is_match(v),
        }
    }
}

impl HttpMatch {
    fn new(field: &str, c: HttpMatchConf, budget: &mut Budget) -> Result<HttpMatch, ConfError> {
        let mut map = |kind: &str, m: BTreeMap<String, StringMatchConf>, lower: bool| {
            check_len(&format!("{field}.{kind}"), m.len(), MAX_MATCHES)?;
            m.into_iter()
                .map(|(k, v)| {
                    let m = StringMatch::new(&format!("{field}.{kind}.{k}"), v, budget)?;
                    let k = if lower { k.to_ascii_lowercase() } else { k };
                    Ok((Text::from(k), m))
                })
                .collect::<Result<Vec<_>, ConfError>>()
        };
        Ok(HttpMatch {
            headers: map("headers", c.headers, true)?,
            query: map("queryParams", c.query_params, false)?,
            uri: c.uri.map(|u| StringMatch::new(&format!("{field}.uri"), u, budget)).transpose()?,
            method: c.method.map(|m| StringMatch::new(&format!("{field}.method"), m, budget)).transpose()?,
        })
    }

    fn matches(&self, call: &RequestCall<'_>) -> bool {
        self.headers.iter().all(|(n, m)| m.matches(call.header(n)))
            && self.query.iter().all(|(n, m)| m.matches(call.arg(n)))
            && self.uri.as_ref().is_none_or(|m| m.matches(Some(call.path())))
            && self.method.as_ref().is_none_or(|m| m.matches(Some(call.method().as_str())))
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// nginx's smooth weighted round-robin, unrolled over one full period: each step adds every
/// weight to its current value, picks the largest, and takes the total off the winner.
fn smooth_sequence(field: &str, weights: &[u64]) -> Result<Vec<u16>, ConfError> {
    let g = weights.iter().copied().fold(0, gcd);
    if g == 0 {
        return Err(ConfError::new(format!("`{field}`: every weight is 0")));
    }
    let weights: Vec<i64> = weights.iter().map(|w| (w / g) as i64).collect();
    let total: i64 = weights.iter().sum();
    if total as u64 > MAX_SEQUENCE {
        return Err(ConfError::new(format!(
            "`{field}`: weights divided by their common divisor sum to {total}; keep it at most \
             {MAX_SEQUENCE} (e.g. percentages)"
        )));
    }
    let mut current = vec![0i64; weights.len()];
    let mut seq = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += w;
        }
        let best = (0..current.len())
            .max_by_key(|&i| (current[i], std::cmp::Reverse(i)))
            .expect("at least one tag");
        current[best] -= total;
        seq.push(best as u16);
    }
    Ok(seq)
}

/// A stable 64-bit hash (FNV-1a, then a splitmix64 finalizer so nearby ids spread), the same
/// across restarts and runner versions so stickiness survives them.
fn stable_hash(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// One rule; its regexes count against `budget`, the conf's.
pub(crate) fn rule(i: usize, c: RuleConf, budget: &mut Budget) -> Result<Rule, ConfError> {
    let field = format!("rules[{i}]");
    if let Some(m) = &c.match_ {
        check_len(&format!("{field}.match"), m.len(), MAX_MATCHES)?;
    }
    if let Some(m) = &c.http_match {
        check_len(&format!("{field}.http_match"), m.len(), MAX_MATCHES)?;
    }
    check_len(&format!("{field}.weighted_tags"), c.weighted_tags.len(), MAX_TAGS)?;
    let matcher = match (c.match_, c.http_match) {
        (Some(_), Some(_)) => {
            return Err(ConfError::new(format!(
                "`{field}`: set `match` or `http_match`, not both"
            )))
        }
        (Some(m), None) => Matcher::Vars(
            m.iter()
                .map(|v| Expr::parse(&v.vars, budget))
                .collect::<Result<_, _>>()
                .map_err(|e| ConfError::new(format!("`{field}.match`: {e}")))?,
        ),
        (None, Some(h)) => Matcher::Http(
            h.into_iter()
                .enumerate()
                .map(|(j, m)| HttpMatch::new(&format!("{field}.http_match[{j}]"), m, budget))
                .collect::<Result<_, _>>()?,
        ),
        (None, None) => Matcher::Always,
    };
    if c.weighted_tags.is_empty() {
        return Err(ConfError::new(format!("`{field}.weighted_tags` must not be empty")));
    }
    for t in &c.weighted_tags {
        if t.tag.is_empty() || t.tag.bytes().any(|b| b.is_ascii_control()) {
            return Err(ConfError::new(format!(
                "`{field}.weighted_tags`: {:?} is not a header value",
                t.tag
            )));
        }
    }
    let weights: Vec<u64> = c.weighted_tags.iter().map(|t| u64::from(t.weight)).collect();
    if c.hash_on.as_deref() == Some("") {
        return Err(ConfError::new(format!("`{field}.hash_on` must name a variable")));
    }
    Ok(Rule {
        matcher,
        sequence: smooth_sequence(&format!("{field}.weighted_tags"), &weights)?,
        tags: c.weighted_tags.into_iter().map(|t| Text::from(t.tag)).collect(),
        hash_on: c.hash_on.map(Text::from),
    })
}

impl Rule {
    pub(crate) async fn matches(&self, call: &mut RequestCall<'_>) -> Result<bool, PluginError> {
        match &self.matcher {
            Matcher::Always => Ok(true),
            Matcher::Http(list) => Ok(list.iter().any(|m| m.matches(call))),
            Matcher::Vars(list) => {
                for e in list {
                    if e.matches(call).await? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
        }
    }

    pub(crate) async fn choose(&self, call: &mut RequestCall<'_>, counter: &AtomicU64) -> Result<&Text, PluginError> {
        let len = self.sequence.len() as u64;
        let slot = match &self.hash_on {
            Some(var) => match call.var(var).await? {
                Some(v) => stable_hash(&v) % len,
                None => counter.fetch_add(1, Ordering::Relaxed) % len,
            },
            None => counter.fetch_add(1, Ordering::Relaxed) % len,
        };
        Ok(&self.tags[usize::from(self.sequence[slot as usize])])
    }
}

impl TrafficTag {
    fn apply(&self, call: &mut RequestCall<'_>, tag: Text) {
        if let Some(host) = self.host.get(&tag) {
            call.set_header("host", host.clone());
        }
        if let Some(prefix) = self.prefix.get(&tag) {
            let path = format!("{prefix}{}", call.path());
            call.set_path(path);
        }
        call.set_header(self.tag_header.clone(), tag);
    }
}

impl Plugin for TrafficTag {
    const NAME: &'static str = "traffic-tag";
    type Conf = TrafficTagConf;

    fn prepare(conf: TrafficTagConf, env: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        if conf.tag_header.is_empty() || conf.tag_header.bytes().any(|b| b <= b' ' || b == b':') {
            return Err(ConfError::new(format!(
                "`tag_header` {:?} is not a header name",
                conf.tag_header
            )));
        }
        if conf.rules.is_empty() {
            return Err(ConfError::new("`rules` must not be empty"));
        }
        check_len("rules", conf.rules.len(), MAX_RULES)?;
        let mut budget = Budget::default();
        let rules = conf
            .rules
            .into_iter()
            .enumerate()
            .map(|(i, r)| rule(i, r, &mut budget))
            .collect::<Result<Vec<_>, _>>()?;
        let assigned: HashSet<&str> = rules.iter().flat_map(|r| r.tags.iter().map(|t| &**t)).collect();
        let known = |field: &str, m: BTreeMap<String, String>| {
            m.into_iter()
                .map(|(tag, v)| {
                    if !assigned.contains(tag.as_str()) {
                        return Err(ConfError::new(format!(
                            "`{field}` names tag {tag:?}, which no rule assigns"
                        )));
                    }
                    Ok((Text::from(tag), v))
                })
                .collect::<Result<Vec<_>, ConfError>>()
        };
        let host = known("set_host", conf.set_host)?
            .into_iter()
            .map(|(t, h)| {
                if h.is_empty() || h.bytes().any(|b| b.is_ascii_whitespace() || b == b'/') {
                    return Err(ConfError::new(format!("`set_host`: {h:?} is not a host")));
                }
                Ok((t, Text::from(h)))
            })
            .collect::<Result<_, _>>()?;
        let prefix = known("path_prefix", conf.path_prefix)?
            .into_iter()
            .map(|(t, p)| {
                if !p.starts_with('/') || p.contains('?') {
                    return Err(ConfError::new(format!(
                        "`path_prefix`: {p:?} must start with `/` and hold no `?`"
                    )));
                }
                Ok((t, Text::from(p.trim_end_matches('/').to_owned())))
            })
            .collect::<Result<_, _>>()?;
        let n = rules.len();
        Ok(TrafficTag {
            tag_header: conf.tag_header.to_ascii_lowercase().into(),
            keep_incoming: conf.keep_incoming,
            rules,
            counters: env.state(|| (0..n).map(|_| AtomicU64::new(0)).collect()),
            host,
            prefix,
        })
    }

    async fn request_filter(&self, call: &mut RequestCall<'_>) -> Result<Flow, PluginError> {
        let incoming = call.header(&self.tag_header).filter(|t| !t.is_empty());
        if self.keep_incoming {
            if let Some(tag) = incoming {
                let tag = Text::from(tag.to_owned());
                self.apply(call, tag);
                return Ok(Flow::Continue);
            }
        }
        let had_incoming = incoming.is_some();
        for (rule, counter) in self.rules.iter().zip(self.counters.iter()) {
            if rule.matches(call).await? {
                let tag = rule.choose(call, counter).await?.clone();
                self.apply(call, tag);
                return Ok(Flow::Continue);
            }
        }
        if had_incoming {
            call.remove_header(self.tag_header.clone());
        }
        Ok(Flow::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepared(conf: &str) -> Result<TrafficTag, ConfError> {
        let parsed: TrafficTagConf = serde_json::from_str(conf).map_err(ConfError::from)?;
        ext_plugin_sdk::harness::TestEnv::default().with("route#1#ext-plugin-pre-req#1", TrafficTag::NAME, conf, &[], |e| {
            TrafficTag::prepare(parsed, e)
        })
    }

    /// Issue 11 #1: 4 rules × 65 000 tags took 76 s (tags × sequence steps per rule); rules,
    /// tags and matches are bounded now, and the refusal names the field.
    #[test]
    fn huge_confs_are_refused_naming_the_field() {
        let tags = |n: usize| {
            let list: Vec<_> = (0..n).map(|i| serde_json::json!({"tag": format!("t{i}"), "weight": u32::from(i == 0)})).collect();
            serde_json::to_string(&list).unwrap()
        };
        let rule = format!(r#"{{"weighted_tags": {}}}"#, tags(65_000));
        let e = prepared(&format!(r#"{{"rules": [{rule}, {rule}, {rule}, {rule}]}}"#)).err().unwrap();
        assert!(e.message().contains("`rules[0].weighted_tags`") && e.message().contains("at most 64"), "{e}");
        let rule = format!(r#"{{"weighted_tags": {}}}"#, tags(MAX_TAGS));
        let rules = vec![rule.as_str(); MAX_RULES + 1].join(",");
        let e = prepared(&format!(r#"{{"rules": [{rules}]}}"#)).err().unwrap();
        assert!(e.message().contains("`rules`") && e.message().contains("at most 64"), "{e}");
        let matches = vec![r#"{"vars": [["arg_a", "==", "1"]]}"#; MAX_MATCHES + 1].join(",");
        let e = prepared(&format!(r#"{{"rules": [{{"match": [{matches}], "weighted_tags": [{{"tag": "a", "weight": 1}}]}}]}}"#))
            .err()
            .unwrap();
        assert!(e.message().contains("`rules[0].match`"), "{e}");
        let regexes = vec![r#"{"uri": {"regex": "/a"}}"#; MAX_MATCHES].join(",");
        let rule = format!(r#"{{"http_match": [{regexes}], "weighted_tags": [{{"tag": "a", "weight": 1}}]}}"#);
        let e = prepared(&format!(r#"{{"rules": [{rule}, {rule}]}}"#)).err().unwrap();
        assert!(e.message().contains("more than 32 regexes"), "{e}");
        // At the bounds, a conf prepares.
        let rule = format!(r#"{{"weighted_tags": {}}}"#, tags(MAX_TAGS));
        let rules = vec![rule.as_str(); MAX_RULES].join(",");
        assert!(prepared(&format!(r#"{{"rules": [{rules}]}}"#)).is_ok());
    }

    #[test]
    fn smooth_round_robin_interleaves() {
        // nginx's example: weights 5, 1, 1 → a a b a c a a.
        assert_eq!(smooth_sequence("w", &[5, 1, 1]).unwrap(), [0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_sequence("w", &[20, 80]).unwrap().len(), 5, "reduced by the gcd");
        assert_eq!(smooth_sequence("w", &[0, 3]).unwrap(), [1]);
        assert!(smooth_sequence("w", &[0, 0]).is_err());
        assert!(smooth_sequence("w", &[10_000, 1]).is_err());
    }

    #[test]
    fn hashes_are_stable() {
        assert_eq!(stable_hash("12345"), stable_hash("12345"));
        assert_ne!(stable_hash("12345"), stable_hash("12346"));
    }
}
