//! Redis key names: stable across runner processes and releases, one hash tag per key so a
//! cluster keeps every script on one slot.
//!
//! `{<prefix>:<plugin>:<h>:<rule>:<limit key>}`, where `h` is the first 16 hex digits of the
//! sha256 of `route ␀ plugin ␀ conf` (or `group ␀ plugin` for a `group`): a changed conf starts
//! new counters, as APISIX's do. A limit key above 128 bytes is replaced by its sha256.

use sha2::{Digest, Sha256};

use ext_plugin_sdk::PrepareEnv;

/// The part of a conf's keys fixed at prepare.
pub struct KeyBase {
    base: String,
}

/// Longest limit key kept verbatim in a Redis key.
const MAX_VERBATIM: usize = 128;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl KeyBase {
    pub fn new(prefix: &str, plugin: &str, env: &PrepareEnv<'_>, group: Option<&str>) -> KeyBase {
        let mut h = Sha256::new();
        match group {
            Some(g) => h.update(format!("group\0{g}\0{plugin}")),
            None => h.update(format!("{}\0{plugin}\0{}", env.route(), env.conf())),
        }
        let digest = h.finalize();
        KeyBase {
            base: format!("{{{prefix}:{plugin}:{}", &hex(&digest)[..16]),
        }
    }

    /// The key of `limit_key` under rule `rule` (0 without rules).
    pub fn key(&self, rule: usize, limit_key: &str) -> String {
        if limit_key.len() > MAX_VERBATIM {
            let digest = Sha256::digest(limit_key.as_bytes());
            format!("{}:{rule}:#{}}}", self.base, hex(&digest))
        } else {
            format!("{}:{rule}:{limit_key}}}", self.base)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_tagged_and_bounded() {
        let kb = KeyBase {
            base: "{a6r:limit-count:0123456789abcdef".into(),
        };
        assert_eq!(
            kb.key(0, "1.2.3.4"),
            "{a6r:limit-count:0123456789abcdef:0:1.2.3.4}"
        );
        let long = "x".repeat(200);
        let k = kb.key(1, &long);
        assert!(
            k.len() < 120 && k.starts_with('{') && k.ends_with('}'),
            "{k}"
        );
        assert_ne!(k, kb.key(1, &"y".repeat(200)));
    }
}
