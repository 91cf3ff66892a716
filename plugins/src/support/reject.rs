//! The conf fields every limiter shares: how a rejection looks (`rejected_code`,
//! `rejected_msg`, *(ext)* `rejected_headers`), the storage `policy` and *(ext)* `max_keys`.
//!
//! Confs keep these as their own fields (serde cannot combine `flatten` with
//! `deny_unknown_fields`) and validate them here.

use serde::Deserialize;

use ext_plugin_sdk::{ConfError, Stop};

/// One extra header, `{"key": ..., "value": ...}` (api-breaker's `break_response_headers` shape).
#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct HeaderConf {
    pub key: String,
    pub value: String,
}

/// The rejection answer, built once at prepare time: `status`, the extra headers and
/// `{"error_msg": msg}\n` (no body when `msg` is absent, so the gateway shows its error page).
pub fn rejection(
    field: &str,
    status: u16,
    msg: Option<&str>,
    headers: &[HeaderConf],
) -> Result<Stop, ConfError> {
    check_status(field, status)?;
    if msg == Some("") {
        return Err(ConfError::new(
            "`rejected_msg` must not be empty (leave it out for no body)",
        ));
    }
    let stop = match msg {
        Some(m) => Stop::json_message(status, "error_msg", m),
        None => Stop::new(status),
    };
    with_headers(stop, headers)
}

/// Adds validated `headers` to `stop`.
pub fn with_headers(mut stop: Stop, headers: &[HeaderConf]) -> Result<Stop, ConfError> {
    for h in headers {
        if !is_token(&h.key) {
            return Err(ConfError::new(format!(
                "{:?} is not a valid header name",
                h.key
            )));
        }
        if h.value.bytes().any(|b| b == b'\r' || b == b'\n') {
            return Err(ConfError::new(format!(
                "the value of header {:?} has a line break",
                h.key
            )));
        }
        stop = stop.with_header(h.key.clone(), h.value.clone());
    }
    Ok(stop)
}

/// *(ext)* The response header a limiter in `dry_run` adds where it would have rejected; the
/// value names the plugin, so access logs show what a rule would do before it is enforced.
pub const DRY_RUN_HEADER: &str = "x-dry-run-reject";

/// Records a would-be rejection of `plugin` in a dry run: the marker header, and a debug line.
pub fn dry_run_reject(call: &mut ext_plugin_sdk::RequestCall<'_>, plugin: &'static str) {
    tracing::debug!(plugin, "dry run: would reject");
    call.set_response_header(DRY_RUN_HEADER, plugin);
}

/// A status the gateway can answer with.
pub fn check_status(field: &str, status: u16) -> Result<(), ConfError> {
    if (200..=599).contains(&status) {
        Ok(())
    } else {
        Err(ConfError::new(format!(
            "`{field}` must be 200 to 599, got {status}"
        )))
    }
}

/// An HTTP token (header names).
pub fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The answer when a limiter cannot decide (no rule applies, or a variable count is unusable):
/// a 500 without a body, as APISIX answers, unless `allow_degradation` lets the request through.
pub fn undecided(allow_degradation: bool, why: &str) -> ext_plugin_sdk::Flow {
    tracing::debug!(why, allow_degradation, "limiter cannot decide");
    if allow_degradation {
        ext_plugin_sdk::Flow::Continue
    } else {
        ext_plugin_sdk::Flow::Stop(Stop::new(500))
    }
}

pub fn default_policy() -> String {
    "local".into()
}

pub fn default_max_keys() -> usize {
    super::keyed::DEFAULT_MAX_KEYS
}

pub fn check_max_keys(max_keys: usize) -> Result<(), ConfError> {
    if (1..=10_000_000).contains(&max_keys) {
        Ok(())
    } else {
        Err(ConfError::new(format!(
            "`max_keys` must be 1 to 10000000, got {max_keys}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_have_the_apisix_shape() {
        let h = [HeaderConf {
            key: "X-A".into(),
            value: "1".into(),
        }];
        let s = rejection("rejected_code", 429, Some("slow"), &h).unwrap();
        assert_eq!(s.status, 429);
        assert_eq!(&s.body[..], b"{\"error_msg\":\"slow\"}\n");
        assert_eq!(s.headers[0].name.as_str(), "X-A");
        assert!(rejection("rejected_code", 429, None, &[])
            .unwrap()
            .body
            .is_empty());
        assert!(rejection("rejected_code", 700, None, &[])
            .unwrap_err()
            .message()
            .contains("rejected_code"));
        let bad = [HeaderConf {
            key: "a b".into(),
            value: "1".into(),
        }];
        assert!(rejection("rejected_code", 429, None, &bad).is_err());
    }
}
