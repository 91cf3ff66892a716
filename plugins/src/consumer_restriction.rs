//! `consumer-restriction`: allow or deny by who the consumer is, or by the route or service.
//!
//! Conf (APISIX's): `{"type": "consumer_name", "whitelist": ["jack"], "blacklist": ["rose"],
//! "allowed_by_methods": [{"user": "jack", "methods": ["GET", "POST"]}], "rejected_code": 403,
//! "rejected_msg": "..."}`; at least one of the three lists.
//!
//! The value checked, by `type`:
//! * `consumer_name` (default): the consumer a runner auth plugin earlier in the chain attached;
//!   without one, the gateway's `consumer_name` where the gateway knows it (post-req).
//! * `consumer_group_id`: that consumer's `group_id`; without a runner consumer, the gateway's
//!   `consumer_group_id` (post-req).
//! * `service_id`, `route_id`: the gateway's variables (one `extra_info` round trip per call).
//!
//! APISIX's order: a blacklisted value is rejected; with a whitelist, a whitelisted value passes
//! and any other is rejected; otherwise `allowed_by_methods` rejects a value whose entry does not
//! list the request's method (values without an entry pass).
//!
//! * No value: `401 {"message": "The request is rejected, please check the TYPE for this
//!   request"}` (TYPE: the conf's `type`).
//! * Rejected: `rejected_code` (default 403) `{"message": rejected_msg}`, by default "The TYPE
//!   is forbidden.".

use std::collections::HashSet;

use serde::Deserialize;

use crate::consumers::ConsumerGroup;
use crate::support::reject;
use ext_plugin_sdk::*;

#[derive(Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Type {
    #[default]
    ConsumerName,
    ServiceId,
    RouteId,
    ConsumerGroupId,
}

impl Type {
    fn as_str(self) -> &'static str {
        match self {
            Type::ConsumerName => "consumer_name",
            Type::ServiceId => "service_id",
            Type::RouteId => "route_id",
            Type::ConsumerGroupId => "consumer_group_id",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerRestrictionConf {
    #[serde(default, rename = "type")]
    kind: Type,
    blacklist: Option<Vec<String>>,
    whitelist: Option<Vec<String>>,
    allowed_by_methods: Option<Vec<MethodsConf>>,
    #[serde(default = "default_rejected_code")]
    rejected_code: u16,
    rejected_msg: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MethodsConf {
    user: Option<String>,
    methods: Vec<String>,
}

fn default_rejected_code() -> u16 {
    403
}

/// The methods APISIX's schema accepts; CONNECT and PURGE never reach a runner (the protocol
/// has no number for them) but are valid in a conf.
const METHODS: [&str; 10] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "PURGE",
];

pub struct ConsumerRestriction {
    kind: Type,
    blacklist: HashSet<String>,
    whitelist: Option<HashSet<String>>,
    /// `(user, allowed methods)`, in conf order: the first entry of a user decides.
    by_methods: Vec<(Option<String>, Vec<Method>)>,
    reject: Stop,
    missing: Stop,
}

impl Plugin for ConsumerRestriction {
    const NAME: &'static str = "consumer-restriction";
    type Conf = ConsumerRestrictionConf;

    fn prepare(conf: ConsumerRestrictionConf, env: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        if conf.blacklist.is_none() && conf.whitelist.is_none() && conf.allowed_by_methods.is_none()
        {
            return Err(ConfError::new(
                "set at least one of `whitelist`, `blacklist` and `allowed_by_methods`",
            ));
        }
        for (field, list) in [("whitelist", &conf.whitelist), ("blacklist", &conf.blacklist)] {
            if list.as_ref().is_some_and(Vec::is_empty) {
                return Err(ConfError::field(field, "must have at least 1 item"));
            }
        }
        let mut by_methods = Vec::new();
        for (i, rule) in conf.allowed_by_methods.unwrap_or_default().into_iter().enumerate() {
            if rule.methods.is_empty() {
                return Err(ConfError::field(
                    &format!("allowed_by_methods[{i}].methods"),
                    "must have at least 1 item",
                ));
            }
            let mut methods = Vec::new();
            for m in &rule.methods {
                if !METHODS.contains(&m.as_str()) {
                    return Err(ConfError::field(
                        &format!("allowed_by_methods[{i}].methods"),
                        format!("{m:?} is not one of {}", METHODS.join(", ")),
                    ));
                }
                methods.extend(Method::parse(m));
            }
            by_methods.push((rule.user, methods));
        }
        reject::check_status("rejected_code", conf.rejected_code)?;
        let kind = conf.kind.as_str();
        if conf.kind == Type::ConsumerName
            && env.attachment() == Attachment::PreReq
            && !env.chain().iter().any(|p| p.ends_with("-auth"))
        {
            tracing::warn!(
                route = env.route(),
                "consumer-restriction on consumer_name in ext-plugin-pre-req with no runner auth \
                 plugin before it: the gateway has not authenticated anyone yet, so every request \
                 is rejected"
            );
        }
        let message = conf
            .rejected_msg
            .unwrap_or_else(|| format!("The {kind} is forbidden."));
        Ok(ConsumerRestriction {
            kind: conf.kind,
            blacklist: conf.blacklist.unwrap_or_default().into_iter().collect(),
            whitelist: conf.whitelist.map(|w| w.into_iter().collect()),
            by_methods,
            reject: Stop::json_message(conf.rejected_code, "message", &message),
            missing: Stop::json_message(
                401,
                "message",
                &format!("The request is rejected, please check the {kind} for this request"),
            ),
        })
    }

    async fn request_filter(&self, call: &mut RequestCall<'_>) -> Result<Flow, PluginError> {
        let Some(value) = self.value(call).await? else {
            return Ok(Flow::Stop(self.missing.clone()));
        };
        Ok(if self.allows(&value, call.method()) {
            Flow::Continue
        } else {
            Flow::Stop(self.reject.clone())
        })
    }
}

impl ConsumerRestriction {
    /// The value this conf's `type` names, for this request.
    async fn value(&self, call: &mut RequestCall<'_>) -> Result<Option<Text>, PluginError> {
        if self.kind != Type::ConsumerGroupId {
            return call.var(self.kind.as_str()).await;
        }
        if let Some(consumer) = call.consumer() {
            // A runner consumer: its group, or none (the gateway's consumer is another one).
            return Ok(call
                .get::<ConsumerGroup>()
                .filter(|g| g.consumer == consumer)
                .map(|g| g.group.clone()));
        }
        match call.attachment() {
            Attachment::PostReq | Attachment::Other => call.var("consumer_group_id").await,
            Attachment::PreReq | Attachment::PostResp => Ok(None),
        }
    }

    /// APISIX's decision: blacklist, then whitelist, then `allowed_by_methods`.
    fn allows(&self, value: &str, method: Method) -> bool {
        if self.blacklist.contains(value) {
            return false;
        }
        if let Some(whitelist) = &self.whitelist {
            // A whitelisted value skips the method check; any other value is rejected.
            return whitelist.contains(value);
        }
        match self.by_methods.iter().find(|(u, _)| u.as_deref() == Some(value)) {
            Some((_, methods)) => methods.contains(&method),
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ext_plugin_sdk::harness::{block_on, request, Harness, LocalGateway};
    use ext_plugin_sdk::model::ReqAction;

    fn outcome(conf: &str, consumer: Option<&str>, method: Method) -> ReqAction {
        let harness = Harness::new(crate::builtin());
        let mut chain = Vec::new();
        let auth = r#"{"consumers": [{"username": "jack", "key": "k-jack"}, {"username": "rose", "key": "k-rose"}]}"#;
        chain.push(("key-auth", auth));
        chain.push(("consumer-restriction", conf));
        let chain = harness.prepare("route#1#ext-plugin-pre-req#1", &chain).unwrap();
        let mut req = request(method, "/hello");
        if let Some(c) = consumer {
            req = req.with_header("apikey", &format!("k-{c}"));
        }
        block_on(LocalGateway::new().call(&chain, &req)).unwrap()
    }

    fn status(a: &ReqAction) -> u16 {
        match a {
            ReqAction::Stop(s) => s.status,
            _ => 200,
        }
    }

    #[test]
    fn blacklist_beats_whitelist_which_beats_methods() {
        let conf = r#"{"whitelist": ["jack"], "blacklist": ["rose"],
                       "allowed_by_methods": [{"user": "jack", "methods": ["POST"]}]}"#;
        assert_eq!(status(&outcome(conf, Some("jack"), Method::Get)), 200, "whitelisted");
        assert_eq!(status(&outcome(conf, Some("rose"), Method::Get)), 403);
        let conf = r#"{"allowed_by_methods": [{"user": "jack", "methods": ["POST"]}]}"#;
        assert_eq!(status(&outcome(conf, Some("jack"), Method::Get)), 403);
        assert_eq!(status(&outcome(conf, Some("jack"), Method::Post)), 200);
        assert_eq!(status(&outcome(conf, Some("rose"), Method::Get)), 200, "no entry: allowed");
    }

    #[test]
    fn bad_confs_are_refused() {
        let harness = Harness::new(crate::builtin());
        for (conf, says) in [
            ("{}", "at least one"),
            (r#"{"whitelist": []}"#, "whitelist"),
            (r#"{"whitelist": ["a"], "type": "ip"}"#, "unknown variant"),
            (r#"{"allowed_by_methods": [{"user": "a", "methods": ["FETCH"]}]}"#, "FETCH"),
            (r#"{"allowed_by_methods": [{"user": "a", "methods": []}]}"#, "methods"),
            (r#"{"whitelist": ["a"], "rejected_code": 100}"#, "rejected_code"),
            (r#"{"whitelist": ["a"], "title": "x"}"#, "title"),
        ] {
            let e = harness
                .prepare("route#1#ext-plugin-post-req#1", &[("consumer-restriction", conf)])
                .err()
                .unwrap_or_else(|| panic!("{conf} must be refused"));
            assert!(e.reason.contains(says), "{conf}: {e}");
        }
    }
}
