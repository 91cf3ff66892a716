//! The Redis fields of limit-count, limit-req and limit-conn: APISIX's `redis-schema` field set
//! with its defaults and bounds, checked once at prepare against the `policy`.
//!
//! The limiter confs keep these as their own fields (serde cannot combine `flatten` with
//! `deny_unknown_fields`): the `with_redis_fields!` macro appends them to a
//! conf struct and gives it `take_redis_fields()`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use ext_plugin_sdk::{ConfError, PrepareEnv};

use super::backend::{Backend, Target};
use super::keys::KeyBase;

/// Appends the Redis fields to a limiter's conf struct (keeping its other fields as written),
/// and an `fn take_redis_fields(&mut self) -> RedisFields`.
#[macro_export]
#[doc(hidden)]
macro_rules! with_redis_fields {
    ($(#[$m:meta])* $vis:vis struct $name:ident { $($body:tt)* }) => {
        $(#[$m])* $vis struct $name {
            $($body)*
            redis_host: Option<String>,
            redis_port: Option<i64>,
            redis_username: Option<String>,
            redis_password: Option<String>,
            redis_database: Option<i64>,
            redis_timeout: Option<i64>,
            redis_ssl: Option<bool>,
            redis_ssl_verify: Option<bool>,
            redis_keepalive_timeout: Option<i64>,
            redis_keepalive_pool: Option<i64>,
            redis_cluster_nodes: Option<Vec<String>>,
            redis_cluster_name: Option<String>,
            redis_cluster_ssl: Option<bool>,
            redis_cluster_ssl_verify: Option<bool>,
            redis_sentinels: Option<serde_json::Value>,
            redis_master_name: Option<serde_json::Value>,
            redis_role: Option<serde_json::Value>,
            redis_connect_timeout: Option<serde_json::Value>,
            redis_read_timeout: Option<serde_json::Value>,
            sentinel_username: Option<serde_json::Value>,
            sentinel_password: Option<serde_json::Value>,
            fallback: Option<String>,
            redis_key_prefix: Option<String>,
        }
        impl $name {
            fn take_redis_fields(&mut self) -> $crate::redis::conf::RedisFields {
                $crate::redis::conf::RedisFields {
                    redis_host: self.redis_host.take(),
                    redis_port: self.redis_port.take(),
                    redis_username: self.redis_username.take(),
                    redis_password: self.redis_password.take(),
                    redis_database: self.redis_database.take(),
                    redis_timeout: self.redis_timeout.take(),
                    redis_ssl: self.redis_ssl.take(),
                    redis_ssl_verify: self.redis_ssl_verify.take(),
                    redis_keepalive_timeout: self.redis_keepalive_timeout.take(),
                    redis_keepalive_pool: self.redis_keepalive_pool.take(),
                    redis_cluster_nodes: self.redis_cluster_nodes.take(),
                    redis_cluster_name: self.redis_cluster_name.take(),
                    redis_cluster_ssl: self.redis_cluster_ssl.take(),
                    redis_cluster_ssl_verify: self.redis_cluster_ssl_verify.take(),
                    sentinel: [
                        ("redis_sentinels", self.redis_sentinels.take()),
                        ("redis_master_name", self.redis_master_name.take()),
                        ("redis_role", self.redis_role.take()),
                        ("redis_connect_timeout", self.redis_connect_timeout.take()),
                        ("redis_read_timeout", self.redis_read_timeout.take()),
                        ("sentinel_username", self.sentinel_username.take()),
                        ("sentinel_password", self.sentinel_password.take()),
                    ],
                    fallback: self.fallback.take(),
                    redis_key_prefix: self.redis_key_prefix.take(),
                }
            }
        }
    };
}

/// The Redis fields of one limiter conf, as written.
pub struct RedisFields {
    pub redis_host: Option<String>,
    pub redis_port: Option<i64>,
    pub redis_username: Option<String>,
    pub redis_password: Option<String>,
    pub redis_database: Option<i64>,
    pub redis_timeout: Option<i64>,
    pub redis_ssl: Option<bool>,
    pub redis_ssl_verify: Option<bool>,
    pub redis_keepalive_timeout: Option<i64>,
    pub redis_keepalive_pool: Option<i64>,
    pub redis_cluster_nodes: Option<Vec<String>>,
    pub redis_cluster_name: Option<String>,
    pub redis_cluster_ssl: Option<bool>,
    pub redis_cluster_ssl_verify: Option<bool>,
    /// `redis-sentinel`'s fields: accepted by name, refused (the policy is not supported yet).
    pub sentinel: [(&'static str, Option<Value>); 7],
    pub fallback: Option<String>,
    pub redis_key_prefix: Option<String>,
}

/// A limiter's storage, as its `policy` and Redis fields resolve.
pub enum Storage {
    /// In-process counters only (`policy: "local"`).
    Local,
    Redis(RedisPolicy),
}

/// A Redis-backed limiter's settings, resolved at prepare.
pub struct RedisPolicy {
    pub backend: Arc<Backend>,
    /// *(ext)* `fallback: "local"`: the in-process limiter decides while Redis is unavailable.
    pub fallback_local: bool,
    /// Where this conf's keys live (prefix, plugin, scope hash).
    pub keys: KeyBase,
}

/// `redis_*` fields each policy allows (besides the common `redis_timeout`, `redis_password`,
/// keep-alive fields, `fallback` and `redis_key_prefix`).
const SINGLE_ONLY: [&str; 6] = [
    "redis_host",
    "redis_port",
    "redis_username",
    "redis_database",
    "redis_ssl",
    "redis_ssl_verify",
];
const CLUSTER_ONLY: [&str; 4] = [
    "redis_cluster_nodes",
    "redis_cluster_name",
    "redis_cluster_ssl",
    "redis_cluster_ssl_verify",
];

impl RedisFields {
    fn present(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        let mut mark = |name, set: bool| {
            if set {
                v.push(name)
            }
        };
        mark("redis_host", self.redis_host.is_some());
        mark("redis_port", self.redis_port.is_some());
        mark("redis_username", self.redis_username.is_some());
        mark("redis_password", self.redis_password.is_some());
        mark("redis_database", self.redis_database.is_some());
        mark("redis_timeout", self.redis_timeout.is_some());
        mark("redis_ssl", self.redis_ssl.is_some());
        mark("redis_ssl_verify", self.redis_ssl_verify.is_some());
        mark(
            "redis_keepalive_timeout",
            self.redis_keepalive_timeout.is_some(),
        );
        mark("redis_keepalive_pool", self.redis_keepalive_pool.is_some());
        mark("redis_cluster_nodes", self.redis_cluster_nodes.is_some());
        mark("redis_cluster_name", self.redis_cluster_name.is_some());
        mark("redis_cluster_ssl", self.redis_cluster_ssl.is_some());
        mark(
            "redis_cluster_ssl_verify",
            self.redis_cluster_ssl_verify.is_some(),
        );
        for (name, value) in &self.sentinel {
            mark(name, value.is_some());
        }
        mark("fallback", self.fallback.is_some());
        mark("redis_key_prefix", self.redis_key_prefix.is_some());
        v
    }
}

fn not_under(field: &str, policy: &str) -> ConfError {
    ConfError::new(format!(
        "`{field}` does not apply to `policy` {policy:?}; remove it or change the policy"
    ))
}

fn at_least(field: &str, value: Option<i64>, min: i64, default: i64) -> Result<i64, ConfError> {
    let v = value.unwrap_or(default);
    if v < min {
        return Err(ConfError::new(format!(
            "`{field}` must be at least {min}, got {v}"
        )));
    }
    Ok(v)
}

/// Resolves `policy` and the Redis fields of `plugin`'s conf. The scope of the keys is this
/// route and conf, or `group` when set. `policies`: the Redis policies `plugin` accepts.
pub fn storage(
    plugin: &'static str,
    policy: &str,
    f: RedisFields,
    group: Option<&str>,
    env: &PrepareEnv<'_>,
) -> Result<Storage, ConfError> {
    let present = f.present();
    match policy {
        "local" => {
            if let Some(field) = present.first() {
                return Err(not_under(field, policy));
            }
            return Ok(Storage::Local);
        }
        "redis" | "redis-cluster" => {}
        "redis-sentinel" => {
            return Err(ConfError::new(
                "`policy` \"redis-sentinel\" is not supported by this runner yet; use \"redis\" or \"redis-cluster\"",
            ))
        }
        other => {
            return Err(ConfError::new(format!(
                "`policy` must be \"local\", \"redis\" or \"redis-cluster\", got {other:?}"
            )))
        }
    }
    if let Some((name, _)) = f.sentinel.iter().find(|(_, v)| v.is_some()) {
        return Err(not_under(name, policy));
    }
    let foreign: &[&str] = if policy == "redis" {
        &CLUSTER_ONLY
    } else {
        &SINGLE_ONLY
    };
    if let Some(field) = present.iter().find(|p| foreign.contains(p)) {
        return Err(not_under(field, policy));
    }
    let fallback_local = match f.fallback.as_deref() {
        None => false,
        Some("local") => true,
        Some(other) => {
            return Err(ConfError::new(format!(
                "`fallback` must be \"local\", got {other:?}"
            )))
        }
    };
    let timeout = at_least("redis_timeout", f.redis_timeout, 1, 1000)?;
    // Accepted for APISIX parity; the runner keeps one multiplexed connection per backend.
    at_least(
        "redis_keepalive_timeout",
        f.redis_keepalive_timeout,
        1000,
        10_000,
    )?;
    at_least("redis_keepalive_pool", f.redis_keepalive_pool, 1, 100)?;
    // APISIX's minLength 0: an empty password means none.
    let password = f.redis_password.filter(|p| !p.is_empty());
    let target = if policy == "redis" {
        if f.redis_ssl == Some(true) {
            return Err(ConfError::new(
                "`redis_ssl`: TLS to Redis is not supported by this runner yet",
            ));
        }
        let host = f
            .redis_host
            .ok_or_else(|| ConfError::new("`redis_host` is required with `policy` \"redis\""))?;
        if host.len() < 2 {
            return Err(ConfError::new("`redis_host` must be at least 2 characters"));
        }
        let db = at_least("redis_database", f.redis_database, 0, 0)?;
        if let Some(path) = host.strip_prefix("unix:") {
            if f.redis_port.is_some() {
                return Err(ConfError::new(
                    "`redis_port` does not apply to a `redis_host` \"unix:/path\"",
                ));
            }
            if !path.starts_with('/') {
                return Err(ConfError::new(format!(
                    "`redis_host` {host:?}: a unix socket path must be absolute"
                )));
            }
            Target::Unix {
                path: path.to_owned(),
                db,
                username: f.redis_username,
                password,
            }
        } else {
            let port = at_least("redis_port", f.redis_port, 1, 6379)?;
            let port = u16::try_from(port).map_err(|_| {
                ConfError::new(format!("`redis_port` must be at most 65535, got {port}"))
            })?;
            Target::Tcp {
                host,
                port,
                db,
                username: f.redis_username,
                password,
            }
        }
    } else {
        if f.redis_cluster_ssl == Some(true) {
            return Err(ConfError::new(
                "`redis_cluster_ssl`: TLS to Redis is not supported by this runner yet",
            ));
        }
        let nodes = f.redis_cluster_nodes.ok_or_else(|| {
            ConfError::new("`redis_cluster_nodes` is required with `policy` \"redis-cluster\"")
        })?;
        if nodes.is_empty() {
            return Err(ConfError::new("`redis_cluster_nodes` must not be empty"));
        }
        let mut addrs = Vec::with_capacity(nodes.len());
        for (i, node) in nodes.iter().enumerate() {
            let parsed = (2..=100)
                .contains(&node.len())
                .then(|| node.rsplit_once(':'))
                .flatten()
                .and_then(|(h, p)| {
                    Some((
                        h.trim_matches(['[', ']']).to_owned(),
                        p.parse::<u16>().ok()?,
                    ))
                })
                .filter(|(h, p)| !h.is_empty() && *p > 0);
            let Some(addr) = parsed else {
                return Err(ConfError::new(format!(
                    "`redis_cluster_nodes[{i}]` {node:?} is not \"host:port\""
                )));
            };
            addrs.push(addr);
        }
        let name = f.redis_cluster_name.ok_or_else(|| {
            ConfError::new("`redis_cluster_name` is required with `policy` \"redis-cluster\"")
        })?;
        Target::Cluster {
            name,
            nodes: addrs,
            password,
        }
    };
    let prefix = f.redis_key_prefix.unwrap_or_else(|| "a6r".to_owned());
    if prefix.is_empty() || prefix.len() > 64 || prefix.contains(['{', '}']) {
        return Err(ConfError::new(
            "`redis_key_prefix` must be 1 to 64 characters without `{` or `}`",
        ));
    }
    let backend = super::backend::backend(target, Duration::from_millis(timeout as u64))?;
    let keys = KeyBase::new(&prefix, plugin, env, group);
    Ok(Storage::Redis(RedisPolicy {
        backend,
        fallback_local,
        keys,
    }))
}

#[cfg(test)]
mod tests {
    use ext_plugin_sdk::harness::TestEnv;
    use ext_plugin_sdk::Plugin;

    use crate::limit_conn::LimitConn;
    use crate::limit_count::LimitCount;
    use crate::limit_req::LimitReq;

    fn prepare<P: Plugin>(conf: &str) -> Result<(), String> {
        let env = TestEnv::default();
        let parsed: P::Conf = serde_json::from_str(conf).map_err(|e| e.to_string())?;
        env.with(
            "route#1#ext-plugin-pre-req#1",
            P::NAME,
            conf,
            &[P::NAME],
            |e| P::prepare(parsed, e),
        )
        .map(drop)
        .map_err(|e| e.message().to_owned())
    }

    #[test]
    fn redis_confs_are_checked_against_the_policy() {
        const COUNT: &str = r#""count": 1, "time_window": 10"#;
        for (conf, why) in [
            (r#""policy": "redis""#, "`redis_host` is required"),
            (r#""policy": "redis", "redis_host": "h""#, "at least 2"),
            (
                r#""policy": "redis", "redis_host": "rh", "redis_cluster_name": "c""#,
                "`redis_cluster_name` does not apply",
            ),
            (
                r#""redis_host": "rh""#,
                "`redis_host` does not apply to `policy` \"local\"",
            ),
            (r#""fallback": "local""#, "`fallback` does not apply"),
            (
                r#""policy": "redis", "redis_host": "rh", "fallback": "pass""#,
                "`fallback` must be",
            ),
            (
                r#""policy": "redis", "redis_host": "rh", "redis_port": 0"#,
                "`redis_port` must be at least 1",
            ),
            (
                r#""policy": "redis", "redis_host": "rh", "redis_port": 70000"#,
                "at most 65535",
            ),
            (
                r#""policy": "redis", "redis_host": "rh", "redis_timeout": 0"#,
                "`redis_timeout` must be at least 1",
            ),
            (
                r#""policy": "redis", "redis_host": "rh", "redis_keepalive_timeout": 10"#,
                "redis_keepalive_timeout",
            ),
            (
                r#""policy": "redis", "redis_host": "rh", "redis_ssl": true"#,
                "TLS",
            ),
            (
                r#""policy": "redis", "redis_host": "unix:/r.sock", "redis_port": 1"#,
                "`redis_port` does not apply",
            ),
            (
                r#""policy": "redis", "redis_host": "unix:r.sock""#,
                "absolute",
            ),
            (
                r#""policy": "redis", "redis_host": "rh", "redis_sentinels": []"#,
                "`redis_sentinels` does not apply",
            ),
            (r#""policy": "redis-sentinel""#, "not supported"),
            (
                r#""policy": "redis-cluster", "redis_cluster_name": "c""#,
                "`redis_cluster_nodes` is required",
            ),
            (
                r#""policy": "redis-cluster", "redis_cluster_nodes": ["a:1"]"#,
                "`redis_cluster_name` is required",
            ),
            (
                r#""policy": "redis-cluster", "redis_cluster_name": "c", "redis_cluster_nodes": ["nope"]"#,
                "redis_cluster_nodes[0]",
            ),
            (
                r#""policy": "redis-cluster", "redis_cluster_name": "c", "redis_cluster_nodes": ["a:1"], "redis_username": "u""#,
                "`redis_username` does not apply",
            ),
            (
                r#""policy": "redis", "redis_host": "rh", "sync_interval": 10"#,
                "smaller than `time_window`",
            ),
            (
                r#""policy": "redis", "redis_host": "rh", "sync_interval": 1, "window_type": "sliding""#,
                "fixed window only",
            ),
            (
                r#""policy": "redis", "redis_host": "rh", "sync_interval": 0.01"#,
                "0.1",
            ),
            (r#""sync_interval": 1"#, "Redis policies only"),
            (
                r#""policy": "redis", "redis_host": "rh", "redis_key_prefix": "{x}""#,
                "redis_key_prefix",
            ),
            (
                r#""policy": "redis", "redis_host": "rh", "warm_up_period_sec": 10"#,
                "`warm_up_period_sec` keeps per-runner state",
            ),
            (r#""policy": "etcd""#, "`policy` must be"),
            (
                r#""policy": "redis", "redis_host": "rh", "redis_bogus": 1"#,
                "redis_bogus",
            ),
        ] {
            let conf = format!("{{{COUNT}, {conf}}}");
            let e = prepare::<LimitCount>(&conf).expect_err(&conf);
            assert!(e.contains(why), "{conf}: {e}");
        }
        // Lazily connected: an unreachable host prepares (its calls fail as the conf says).
        for ok in [
            r#""policy": "redis", "redis_host": "127.0.0.1", "redis_port": 1, "allow_degradation": true"#,
            r#""policy": "redis", "redis_host": "unix:/nonexistent/r.sock", "fallback": "local", "redis_password": """#,
            r#""policy": "redis-cluster", "redis_cluster_name": "c", "redis_cluster_nodes": ["127.0.0.1:1", "[::1]:2"]"#,
            r#""policy": "redis", "redis_host": "rh", "sync_interval": -1, "redis_keepalive_pool": 5"#,
            r#""policy": "redis", "redis_host": "rh", "sync_interval": 0.5, "window_type": "fixed""#,
            r#""policy": "redis", "redis_host": "rh", "window_type": "sliding""#,
            r#""policy": "redis", "redis_host": "rh", "specific_items": {"vip": 5}"#,
        ] {
            let conf = format!("{{{COUNT}, {ok}}}");
            prepare::<LimitCount>(&conf).unwrap_or_else(|e| panic!("{conf}: {e}"));
        }
        let req = r#"{"rate": 1, "burst": 1, "policy": "redis-cluster", "redis_cluster_name": "c",
                      "redis_cluster_nodes": ["127.0.0.1:1"]}"#;
        prepare::<LimitReq>(req).unwrap();
        let e = prepare::<LimitReq>(
            r#"{"rate": 1, "burst": 1, "policy": "redis", "redis_host": "rh", "specific_items": {"a": 2}}"#,
        )
        .unwrap_err();
        assert!(e.contains("`specific_items` / `pattern` keeps"), "{e}");
        let e = prepare::<LimitReq>(r#"{"rate": 1, "burst": 1, "redis_timeout": 5}"#).unwrap_err();
        assert!(e.contains("`redis_timeout` does not apply"), "{e}");
        let conn = r#"{"conn": 1, "burst": 0, "default_conn_delay": 0.1, "policy": "redis", "redis_host": "rh""#;
        prepare::<LimitConn>(&format!("{conn}}}")).unwrap();
        prepare::<LimitConn>(&format!(r#"{conn}, "key_ttl": 5}}"#)).unwrap();
        let e = prepare::<LimitConn>(&format!(r#"{conn}, "key_ttl": 0}}"#)).unwrap_err();
        assert!(e.contains("`key_ttl` must be 1 to 86400"), "{e}");
        let e = prepare::<LimitConn>(
            r#"{"conn": 1, "burst": 0, "default_conn_delay": 0.1, "key_ttl": 60}"#,
        )
        .unwrap_err();
        assert!(e.contains("key_ttl"), "{e}");
    }
}
