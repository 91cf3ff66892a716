//! Warnings about a conf, logged once per cause instead of once per prepare.
//!
//! A gateway prepares the same route again and again (on every conf cache expiry, on every
//! runner restart, and a hostile conf writer as often as it likes), so a warning logged at
//! prepare would flood the log: 5 000 prepares once wrote 329 MB. A [`WarnOnce`] remembers the
//! causes it reported (a route, as a hash) up to [`MAX_CAUSES`]; past that it says once that
//! further causes go unreported, and then stays quiet.

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;

use super::keyed::lock;

/// Causes one warning remembers; the memory is a few bytes each.
pub const MAX_CAUSES: usize = 1024;
/// Route names are cut to this many bytes in a warning (a key may be huge).
const MAX_SHOWN: usize = 128;

/// What to do about one occurrence of a warning's cause.
#[derive(Debug, PartialEq, Eq)]
pub enum Report {
    /// The first time for this cause: log it.
    First,
    /// Already logged, or past the bound: log nothing above debug.
    Again,
    /// The first cause past [`MAX_CAUSES`]: log, once, that further causes go unreported.
    Overflow,
}

/// One warning's reported causes; a `static` beside the warning.
pub struct WarnOnce {
    seen: Mutex<Option<Seen>>,
}

struct Seen {
    causes: HashSet<u64>,
    overflowed: bool,
}

impl WarnOnce {
    pub const fn new() -> WarnOnce {
        WarnOnce {
            seen: Mutex::new(None),
        }
    }

    /// Whether (and how) to report `cause` now.
    pub fn report(&self, cause: &str) -> Report {
        let mut h = DefaultHasher::new();
        cause.hash(&mut h);
        let hash = h.finish();
        let mut guard = lock(&self.seen);
        let seen = guard.get_or_insert_with(|| Seen {
            causes: HashSet::new(),
            overflowed: false,
        });
        if seen.causes.contains(&hash) {
            return Report::Again;
        }
        if seen.causes.len() >= MAX_CAUSES {
            if seen.overflowed {
                return Report::Again;
            }
            seen.overflowed = true;
            return Report::Overflow;
        }
        seen.causes.insert(hash);
        Report::First
    }
}

impl Default for WarnOnce {
    fn default() -> WarnOnce {
        WarnOnce::new()
    }
}

/// `s` cut to at most 128 bytes (at a character boundary), for a log line.
pub fn shown(s: &str) -> &str {
    if s.len() <= MAX_SHOWN {
        return s;
    }
    let mut end = MAX_SHOWN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_is_reported_once_and_the_causes_are_bounded() {
        let w = WarnOnce::new();
        assert_eq!(w.report("route#1"), Report::First);
        for _ in 0..5_000 {
            assert_eq!(w.report("route#1"), Report::Again);
        }
        for i in 2..=MAX_CAUSES {
            assert_eq!(w.report(&format!("route#{i}")), Report::First);
        }
        assert_eq!(w.report("route#new"), Report::Overflow);
        assert_eq!(w.report("route#newer"), Report::Again);
        assert_eq!(w.report("route#1"), Report::Again);
    }

    #[test]
    fn long_names_are_cut_at_a_character() {
        assert_eq!(shown("route#1"), "route#1");
        let long = "é".repeat(100);
        assert_eq!(shown(&long).len(), 128);
        assert_eq!(shown(&format!("a{long}")).len(), 127);
    }
}
