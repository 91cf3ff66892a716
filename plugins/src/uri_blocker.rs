//! `uri-blocker` (docs/plugins/security.md): reject requests whose URI matches a rule.
//!
//! Conf: `{"block_rules": ["\\.\\./", "^/admin"], "rejected_code": 403, "rejected_msg":
//! "blocked", "case_insensitive": false, "rejected_headers": [{"key": "X-Blocked", "value":
//! "1"}]}`.
//!
//! The rules are one compiled regex set, searched (unanchored, RE2 syntax) in `request_uri`:
//! the client's path, re-encoded, plus `?` and the re-encoded query when there is one.
//! Reject: `Stop(rejected_code, rejected_headers, {"error_msg": rejected_msg}\n)`, or an empty
//! body when `rejected_msg` is unset (the gateway then serves its own error page).

use regex::RegexSet;
use serde::Deserialize;

use crate::support::patterns::Budget;

use super::restriction::{self, RejectedHeader};
use ext_plugin_sdk::*;

pub struct UriBlocker {
    rules: RegexSet,
    reject: Stop,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UriBlockerConf {
    block_rules: Vec<String>,
    #[serde(default = "default_code")]
    rejected_code: u16,
    #[serde(default)]
    rejected_msg: Option<String>,
    #[serde(default)]
    case_insensitive: bool,
    #[serde(default)]
    rejected_headers: Vec<RejectedHeader>,
}

fn default_code() -> u16 {
    403
}

impl Plugin for UriBlocker {
    const NAME: &'static str = "uri-blocker";
    type Conf = UriBlockerConf;

    fn prepare(conf: UriBlockerConf, _env: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        if conf.block_rules.is_empty() {
            return Err(ConfError::new("`block_rules` must not be empty"));
        }
        restriction::check_list("block_rules", &conf.block_rules, 4096, true)?;
        restriction::check_status("rejected_code", conf.rejected_code)?;
        let reject = match &conf.rejected_msg {
            Some(m) if m.is_empty() => {
                return Err(ConfError::new("`rejected_msg` must not be empty"))
            }
            Some(m) => Stop::json_message(conf.rejected_code, "error_msg", m),
            None => Stop::new(conf.rejected_code),
        };
        Ok(UriBlocker {
            rules: Budget::default().set("block_rules", &conf.block_rules, conf.case_insensitive)?,
            reject: restriction::with_headers(reject, conf.rejected_headers)?,
        })
    }

    async fn request_filter(&self, call: &mut RequestCall<'_>) -> Result<Flow, PluginError> {
        // Answered locally from the request: no round trip.
        let uri = call.var("request_uri").await?.unwrap_or_default();
        if self.rules.is_match(&uri) {
            return Ok(Flow::Stop(self.reject.clone()));
        }
        Ok(Flow::Continue)
    }
}
