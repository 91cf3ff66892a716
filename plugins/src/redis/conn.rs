//! limit-conn on Redis: not implemented yet. Its confs are parsed and checked (APISIX's fields,
//! `key_ttl`), then refused with a clear message, never counted locally in silence.

use ext_plugin_sdk::ConfError;

use super::conf::Storage;

/// Refuses the Redis policies of limit-conn, and `key_ttl` (a Redis-policy field) elsewhere.
pub fn check_conf(storage: Storage, key_ttl: Option<i64>) -> Result<(), ConfError> {
    match storage {
        Storage::Local => match key_ttl {
            Some(_) => Err(ConfError::new(
                "`key_ttl` applies to the Redis policies only (`policy` is \"local\")",
            )),
            None => Ok(()),
        },
        Storage::Redis(_) => Err(ConfError::new(
            "limit-conn with `policy` \"redis\" / \"redis-cluster\" is not supported by this runner \
             yet; use \"local\"",
        )),
    }
}
