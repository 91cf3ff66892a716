//! Per-key overrides and key patterns for the limiters (`limit-count`, `limit-req`), after
//! Sentinel's hot-parameter rules:
//!
//! * `specific_items` *(ext)*: `{"vip": 10000, "trial": 10}`: a key equal to an item gets that
//!   threshold instead of the conf's (a count for limit-count, a rate for limit-req);
//! * `match_strategy` *(ext)* (`exact`, `prefix`, `regex`, `contains`) with `pattern`: only keys
//!   that match are limited; the others pass unlimited, or with `unmatched: "shared"` are all
//!   counted under one key, `$NM` (Sentinel gateway's "not matched" value).
//!
//! Parsed once at prepare time; a request costs a hash lookup, plus the pattern test.

use std::collections::HashMap;

use regex::Regex;
use serde::Deserialize;

use super::patterns::Budget;
use ext_plugin_sdk::{ConfError, Text};

#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MatchStrategy {
    Exact,
    Prefix,
    Regex,
    Contains,
}

#[derive(Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Unmatched {
    /// Keys that do not match pass unlimited.
    #[default]
    Pass,
    /// Keys that do not match share one counter.
    Shared,
}

/// The key all unmatched keys share with `unmatched: "shared"`.
pub const NOT_MATCHED: &str = "$NM";

enum Pattern {
    Exact(String),
    Prefix(String),
    Contains(String),
    Regex(Regex),
}

/// The per-key part of a limiter's conf, built at prepare time.
pub struct PerKey<T> {
    pattern: Option<(Pattern, Unmatched)>,
    items: HashMap<String, T>,
}

/// What a request's key comes to.
#[derive(Debug, PartialEq)]
pub enum Selected<'a, T> {
    /// Not limited.
    Pass,
    /// Counted under this key, with this threshold when it is a specific item.
    Limit(Text, Option<&'a T>),
}

impl<T> PerKey<T> {
    /// `None` when the conf uses none of the fields; `check` validates one item's threshold.
    pub fn parse(
        items: Option<HashMap<String, T>>,
        strategy: Option<MatchStrategy>,
        pattern: Option<String>,
        unmatched: Option<Unmatched>,
        check: impl Fn(&str, &T) -> Result<(), ConfError>,
    ) -> Result<Option<PerKey<T>>, ConfError> {
        let items = items.unwrap_or_default();
        for (k, v) in &items {
            check(k, v)?;
        }
        let pattern = match (strategy, pattern) {
            (None, None) => {
                if unmatched.is_some() {
                    return Err(ConfError::field(
                        "unmatched",
                        "needs `match_strategy` and `pattern`",
                    ));
                }
                None
            }
            (Some(s), Some(p)) => {
                if p.is_empty() {
                    return Err(ConfError::field("pattern", "must not be empty"));
                }
                let pattern = match s {
                    MatchStrategy::Exact => Pattern::Exact(p),
                    MatchStrategy::Prefix => Pattern::Prefix(p),
                    MatchStrategy::Contains => Pattern::Contains(p),
                    MatchStrategy::Regex => {
                        Pattern::Regex(Budget::default().regex("pattern", &p, false)?)
                    }
                };
                Some((pattern, unmatched.unwrap_or_default()))
            }
            (Some(_), None) => return Err(ConfError::field("match_strategy", "needs `pattern`")),
            (None, Some(_)) => return Err(ConfError::field("pattern", "needs `match_strategy`")),
        };
        if items.is_empty() && pattern.is_none() {
            return Ok(None);
        }
        Ok(Some(PerKey { pattern, items }))
    }

    /// Where `key` is counted, and with which threshold.
    pub fn select(&self, key: Text) -> Selected<'_, T> {
        if let Some((pattern, unmatched)) = &self.pattern {
            let matched = match pattern {
                Pattern::Exact(p) => *key == **p,
                Pattern::Prefix(p) => key.starts_with(p.as_str()),
                Pattern::Contains(p) => key.contains(p.as_str()),
                Pattern::Regex(re) => re.is_match(&key),
            };
            if !matched {
                return match unmatched {
                    Unmatched::Pass => Selected::Pass,
                    Unmatched::Shared => Selected::Limit(Text::from_static(NOT_MATCHED), None),
                };
            }
        }
        let item = self.items.get(key.as_str());
        Selected::Limit(key, item)
    }

    /// A stable description, for limiters whose state is shared by a `group`.
    pub fn signature(&self) -> String
    where
        T: std::fmt::Debug,
    {
        let mut items: Vec<_> = self
            .items
            .iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect();
        items.sort();
        let pattern = match &self.pattern {
            None => String::new(),
            Some((p, u)) => {
                let p = match p {
                    Pattern::Exact(s) => format!("exact:{s}"),
                    Pattern::Prefix(s) => format!("prefix:{s}"),
                    Pattern::Contains(s) => format!("contains:{s}"),
                    Pattern::Regex(r) => format!("regex:{}", r.as_str()),
                };
                format!("{p} {u:?}")
            }
        };
        format!("items[{}] {pattern}", items.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn per_key(
        strategy: Option<MatchStrategy>,
        pattern: Option<&str>,
        unmatched: Option<Unmatched>,
    ) -> PerKey<u64> {
        let items = HashMap::from([("vip".to_owned(), 100), ("user-9".to_owned(), 9)]);
        PerKey::parse(
            Some(items),
            strategy,
            pattern.map(String::from),
            unmatched,
            |_, _| Ok(()),
        )
        .unwrap()
        .unwrap()
    }

    #[test]
    fn items_override_and_patterns_select() {
        let p = per_key(None, None, None);
        assert_eq!(
            p.select("vip".into()),
            Selected::Limit("vip".into(), Some(&100))
        );
        assert_eq!(
            p.select("other".into()),
            Selected::Limit("other".into(), None)
        );
        let p = per_key(Some(MatchStrategy::Prefix), Some("user-"), None);
        assert_eq!(
            p.select("user-9".into()),
            Selected::Limit("user-9".into(), Some(&9))
        );
        assert_eq!(p.select("vip".into()), Selected::Pass);
        let p = per_key(
            Some(MatchStrategy::Regex),
            Some("^user-[0-9]+$"),
            Some(Unmatched::Shared),
        );
        assert_eq!(
            p.select("user-1".into()),
            Selected::Limit("user-1".into(), None)
        );
        assert_eq!(
            p.select("bot".into()),
            Selected::Limit(NOT_MATCHED.into(), None)
        );
        let p = per_key(Some(MatchStrategy::Contains), Some("ser"), None);
        assert_eq!(
            p.select("a-user".into()),
            Selected::Limit("a-user".into(), None)
        );
        let p = per_key(Some(MatchStrategy::Exact), Some("vip"), None);
        assert_eq!(p.select("vip2".into()), Selected::Pass);
    }

    #[test]
    fn incomplete_patterns_are_refused() {
        let none = || -> Option<HashMap<String, u64>> { None };
        let ok = |_: &str, _: &u64| Ok(());
        assert!(PerKey::parse(none(), None, None, None, ok)
            .unwrap()
            .is_none());
        for (s, p, u, says) in [
            (Some(MatchStrategy::Prefix), None, None, "match_strategy"),
            (None, Some("x".to_owned()), None, "pattern"),
            (None, None, Some(Unmatched::Shared), "unmatched"),
            (
                Some(MatchStrategy::Regex),
                Some("(".to_owned()),
                None,
                "pattern",
            ),
        ] {
            let e = PerKey::parse(none(), s, p, u, ok).err().unwrap();
            assert!(e.message().contains(says), "{e}");
        }
        let bad = PerKey::parse(
            Some(HashMap::from([("a".to_owned(), 0u64)])),
            None,
            None,
            None,
            |k, v| {
                if *v == 0 {
                    Err(ConfError::field(
                        &format!("specific_items.{k}"),
                        "must be at least 1",
                    ))
                } else {
                    Ok(())
                }
            },
        );
        assert!(bad.err().unwrap().message().contains("specific_items.a"));
    }
}
