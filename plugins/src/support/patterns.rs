//! Every regex a conf brings is compiled here, under bounds, so that no conf can make prepare
//! slow or a compiled plugin large (issue 11 #1: twenty `\w{200}` once took 5 s to prepare).
//!
//! * Each regex (or each set of patterns compiled together) may compile to at most
//!   [`SIZE_LIMIT`] bytes, and keeps a lazy-DFA cache of at most [`DFA_SIZE_LIMIT`] bytes per
//!   matching thread. Compile time grows with the compiled size, so this bounds it too
//!   (measured: about 0.15 s for a regex at the limit in a debug build, a tenth of that in
//!   release). Unicode classes are large: `\w{30}` is already past the limit, while the ASCII
//!   `(?-u:\w){200}` is far below it.
//! * A pattern is at most [`MAX_PATTERN_LEN`] bytes, and one plugin conf compiles at most
//!   [`MAX_REGEXES`] regexes ([`Budget`]); a set (`ua-restriction`'s lists, `uri-blocker`, cors'
//!   `allow_origins_by_regex`) counts once and holds at most [`MAX_SET_LEN`] patterns.
//!
//! Errors name the conf field; past a bound they say which bound and how to stay under it.

use regex::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};

use ext_plugin_sdk::ConfError;

/// Most bytes one compiled regex or set may take.
pub const SIZE_LIMIT: usize = 1 << 20;
/// Most bytes of lazy-DFA cache one regex keeps per thread that matches with it.
pub const DFA_SIZE_LIMIT: usize = 1 << 20;
/// Longest pattern, in bytes.
pub const MAX_PATTERN_LEN: usize = 4096;
/// Most regexes (a set counting once) one plugin conf compiles.
pub const MAX_REGEXES: usize = 32;
/// Most patterns in one set.
pub const MAX_SET_LEN: usize = 1024;

/// How many regexes a conf may still compile. One per plugin prepare.
#[derive(Debug)]
pub struct Budget {
    left: usize,
}

impl Default for Budget {
    fn default() -> Budget {
        Budget { left: MAX_REGEXES }
    }
}

impl Budget {
    fn take(&mut self, field: &str) -> Result<(), ConfError> {
        if self.left == 0 {
            return Err(ConfError::new(format!(
                "`{field}`: the conf compiles more than {MAX_REGEXES} regexes; combine them \
                 (`a|b`) or use exact/prefix matches"
            )));
        }
        self.left -= 1;
        Ok(())
    }

    /// Compiles one pattern (the conf field `field`).
    pub fn regex(
        &mut self,
        field: &str,
        pattern: &str,
        case_insensitive: bool,
    ) -> Result<Regex, ConfError> {
        self.take(field)?;
        check_len(field, pattern)?;
        RegexBuilder::new(pattern)
            .case_insensitive(case_insensitive)
            .size_limit(SIZE_LIMIT)
            .dfa_size_limit(DFA_SIZE_LIMIT)
            .build()
            .map_err(|e| error(field, pattern, e))
    }

    /// Compiles `patterns` (the conf field `field`) as one set, once; only when that fails are
    /// the patterns compiled alone, to name the bad one.
    pub fn set(
        &mut self,
        field: &str,
        patterns: &[String],
        case_insensitive: bool,
    ) -> Result<RegexSet, ConfError> {
        self.take(field)?;
        if patterns.len() > MAX_SET_LEN {
            return Err(ConfError::new(format!(
                "`{field}` holds {} patterns; at most {MAX_SET_LEN}",
                patterns.len()
            )));
        }
        for (i, p) in patterns.iter().enumerate() {
            check_len(&format!("{field}[{i}]"), p)?;
        }
        let built = RegexSetBuilder::new(patterns)
            .case_insensitive(case_insensitive)
            .size_limit(SIZE_LIMIT)
            .dfa_size_limit(DFA_SIZE_LIMIT)
            .build();
        built.map_err(|e| {
            let mut alone = Budget::default();
            patterns
                .iter()
                .enumerate()
                .find_map(|(i, p)| {
                    alone
                        .regex(&format!("{field}[{i}]"), p, case_insensitive)
                        .err()
                })
                .unwrap_or_else(|| ConfError::new(format!("`{field}`: {}", describe(e))))
        })
    }

    /// Applies the bounds to a `fancy_regex` builder (response-rewrite's PCRE-like filters),
    /// whose plain parts are compiled by the same engine.
    pub fn fancy(
        &mut self,
        field: &str,
        builder: &mut fancy_regex::RegexBuilder,
    ) -> Result<(), ConfError> {
        self.take(field)?;
        builder
            .delegate_size_limit(SIZE_LIMIT)
            .delegate_dfa_size_limit(DFA_SIZE_LIMIT);
        Ok(())
    }
}

/// The length bound alone, for a pattern compiled elsewhere.
pub fn check_len(field: &str, pattern: &str) -> Result<(), ConfError> {
    if pattern.len() > MAX_PATTERN_LEN {
        return Err(ConfError::new(format!(
            "`{field}`: the pattern is {} bytes; at most {MAX_PATTERN_LEN}",
            pattern.len()
        )));
    }
    Ok(())
}

fn error(field: &str, pattern: &str, e: regex::Error) -> ConfError {
    match e {
        regex::Error::CompiledTooBig(_) => ConfError::new(format!("`{field}`: {}", describe(e))),
        e => ConfError::new(format!(
            "`{field}` {pattern:?} is not a valid regex (RE2 syntax: no look-around or \
             back-references): {e}"
        )),
    }
}

fn describe(e: regex::Error) -> String {
    match e {
        regex::Error::CompiledTooBig(limit) => format!(
            "compiles to more than {limit} bytes; shorten repetitions of Unicode classes (`\\w{{30}}` \
             is already too big) or make them ASCII (`(?-u:\\w)`)"
        ),
        e => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_audits_patterns_are_refused_naming_the_field() {
        // Twenty `\w{200}` once compiled twice each (5 s); the first one is refused now.
        let list = vec![r"\w{200}".to_owned(); 20];
        let e = Budget::default().set("denylist", &list, false).unwrap_err();
        assert!(
            e.message().contains("`denylist[0]`") && e.message().contains("more than"),
            "{e}"
        );
        let e = Budget::default()
            .regex("regex_uri[0]", r"\w{200}", false)
            .unwrap_err();
        assert!(e.message().contains("regex_uri[0]"), "{e}");
        assert!(Budget::default()
            .regex("x", r"(?-u:\w){200}", false)
            .is_ok());
    }

    #[test]
    fn counts_and_lengths_are_bounded() {
        let mut b = Budget::default();
        for i in 0..MAX_REGEXES {
            b.regex(&format!("r{i}"), "a", false).unwrap();
        }
        let e = b.regex("last", "a", false).unwrap_err();
        assert!(
            e.message().contains("`last`") && e.message().contains("more than 32"),
            "{e}"
        );
        let e = Budget::default()
            .set("l", &vec!["a".to_owned(); MAX_SET_LEN + 1], false)
            .unwrap_err();
        assert!(e.message().contains("at most 1024"), "{e}");
        let e = Budget::default()
            .regex("p", &"a".repeat(MAX_PATTERN_LEN + 1), false)
            .unwrap_err();
        assert!(e.message().contains("at most 4096"), "{e}");
    }

    #[test]
    fn bad_patterns_name_themselves() {
        let e = Budget::default()
            .set("allowlist", &["ok".into(), "(?=x)".into()], false)
            .unwrap_err();
        assert!(
            e.message().contains("`allowlist[1]`") && e.message().contains("(?=x)"),
            "{e}"
        );
    }
}
