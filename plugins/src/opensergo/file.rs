//! The rules file source: read at start, then watched by polling.
//!
//! Every second the file's metadata (following symlinks: a ConfigMap's `..data` swap counts) is
//! compared with the last seen; every fifth second the content is hashed as well, in case an
//! edit kept size and time. A changed content is parsed and, when it parses, handed to the
//! store whole (an atomic swap); when it does not, the error is logged with its line and column
//! and the previous rules stay. A removed or unreadable file keeps the last rules too. Polling
//! needs no platform watcher and sees in-place writes and atomic renames alike, within 1 s.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::store::{RuleStore, Source};
use super::yaml;

/// How often the file is looked at.
pub const POLL: Duration = Duration::from_secs(1);
/// Every this many polls the content is hashed even when the metadata did not change.
const HASH_EVERY: u32 = 5;

/// The file source of one store.
pub struct RulesFile {
    store: Arc<RuleStore>,
    path: PathBuf,
    seen: Option<Stamp>,
    hash: Option<u64>,
    missing: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
    changed: i64,
}

fn stamp(path: &std::path::Path) -> std::io::Result<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode: m.ino(),
        changed: m.ctime_nsec() + m.ctime() * 1_000_000_000,
    })
}

impl RulesFile {
    pub fn new(store: Arc<RuleStore>, path: PathBuf) -> RulesFile {
        RulesFile {
            store,
            path,
            seen: None,
            hash: None,
            missing: false,
        }
    }

    /// Reads the file now (the first load happens before the runner serves), then keeps
    /// watching it on the current runtime.
    pub fn spawn(mut self) -> tokio::task::JoinHandle<()> {
        self.poll(true);
        tokio::spawn(async move {
            let mut tick = 0u32;
            loop {
                tokio::time::sleep(POLL).await;
                tick = tick.wrapping_add(1);
                self.poll(tick.is_multiple_of(HASH_EVERY));
            }
        })
    }

    /// Looks at the file once; reloads it when it changed. Returns whether rules were swapped.
    pub fn poll(&mut self, hash_anyway: bool) -> bool {
        let now = match stamp(&self.path) {
            Ok(s) => s,
            Err(e) => {
                if !self.missing {
                    tracing::warn!(path = %self.path.display(), "opensergo: cannot read the rules file ({e}); keeping the last rules");
                    self.missing = true;
                }
                return false;
            }
        };
        if self.missing {
            tracing::info!(path = %self.path.display(), "opensergo: the rules file is back");
            self.missing = false;
        }
        if self.seen == Some(now) && !hash_anyway {
            return false;
        }
        self.seen = Some(now);
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), "opensergo: cannot read the rules file ({e}); keeping the last rules");
                return false;
            }
        };
        let mut h = DefaultHasher::new();
        text.hash(&mut h);
        let hash = h.finish();
        if self.hash == Some(hash) {
            return false;
        }
        self.hash = Some(hash);
        let version = format!("file {hash:016x}");
        match yaml::parse(&text, &version) {
            Ok(rules) => {
                let apps: Vec<String> = rules.apps.keys().map(|(ns, app)| format!("{ns}/{app}")).collect();
                tracing::info!(
                    path = %self.path.display(),
                    %version,
                    objects_skipped = rules.problems.iter().filter(|p| p.contains("skipped")).count(),
                    fallback_actions = rules.fallbacks.len(),
                    "opensergo: rules file loaded for apps [{}]",
                    apps.join(", ")
                );
                self.store.set(Source::File, rules);
                true
            }
            Err(e) => {
                tracing::error!(path = %self.path.display(), "opensergo: the rules file does not parse, keeping the previous rules: {e}");
                false
            }
        }
    }
}
