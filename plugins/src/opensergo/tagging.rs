//! TrafficRouter and TrafficLane on the traffic-tag engine: they decide a request's subset and
//! label it in a header (for APISIX's `traffic-split`); the gateway routes.
//!
//! * Lanes are checked first; the first lane that matches writes its name into its header
//!   (`traceIdBaggage`, else the route conf's `tag_header`).
//! * Then the app's routers, in order, route by route: the first route whose match holds (a
//!   route with no match always holds) chooses a subset by weight and writes it into
//!   `tag_header`; the chosen destination's fallback subset, if any, goes into
//!   `<tag_header>-fallback`.
//! * `tag_header` belongs to the runner: a client-sent value is removed when no router chose a
//!   subset, so clients cannot pick their own.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use serde_json::{json, Value};

use ext_plugin_sdk::{PluginError, RequestCall, Text};

use super::model::{Lane, Router, RouterRoute};
use crate::support::patterns::Budget;
use crate::traffic_tag;

/// One destination of a route.
pub struct TagSpec {
    pub tag: String,
    pub weight: u32,
    pub fallback: Option<String>,
}

/// One route: traffic-tag `http_match` entries (ORed; `None`: always) and weighted tags.
pub struct RouteSpec {
    pub matches: Option<Vec<Value>>,
    pub tags: Vec<TagSpec>,
}

fn engine_rule(i: usize, matches: Option<Vec<Value>>, tags: &[(&str, u32)]) -> Result<traffic_tag::Rule, String> {
    let mut conf = json!({
        "weighted_tags": tags.iter().map(|(t, w)| json!({"tag": t, "weight": w})).collect::<Vec<_>>(),
    });
    if let Some(m) = matches {
        conf["http_match"] = Value::Array(m);
    }
    let conf: traffic_tag::RuleConf = serde_json::from_value(conf).map_err(|e| e.to_string())?;
    traffic_tag::rule(i, conf, &mut Budget::default()).map_err(|e| e.message().replace("rules[", "route["))
}

pub fn compile_router(name: &str, routes: Vec<RouteSpec>) -> Result<Router, String> {
    let routes = routes
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let tags: Vec<(&str, u32)> = r.tags.iter().map(|t| (t.tag.as_str(), t.weight)).collect();
            Ok(RouterRoute {
                rule: engine_rule(i, r.matches, &tags)?,
                fallbacks: r
                    .tags
                    .iter()
                    .filter_map(|t| Some((t.tag.clone(), t.fallback.clone()?)))
                    .collect(),
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Router {
        name: name.to_owned(),
        routes,
    })
}

pub fn compile_lane(
    name: &str,
    matches: Vec<Value>,
    lane: String,
    header: Option<String>,
) -> Result<Lane, String> {
    if let Some(h) = &header {
        if !crate::support::reject::is_token(h) {
            return Err(format!("traceIdBaggage {h:?} is not a header name"));
        }
    }
    Ok(Lane {
        name: name.to_owned(),
        rule: engine_rule(0, Some(matches), &[(&lane, 1)])?,
        lane,
        header: header.map(|h| h.to_ascii_lowercase()),
    })
}

/// The compiled routers and lanes of one app, with the round-robin counters.
pub struct Tagging {
    lanes: Vec<Arc<Lane>>,
    routes: Vec<(Arc<Router>, usize, AtomicU64)>,
}

impl Tagging {
    pub fn new(lanes: Vec<Arc<Lane>>, routers: &[Arc<Router>]) -> Option<Tagging> {
        let routes: Vec<_> = routers
            .iter()
            .flat_map(|r| (0..r.routes.len()).map(|i| (r.clone(), i, AtomicU64::new(0))))
            .collect();
        (!lanes.is_empty() || !routes.is_empty()).then_some(Tagging { lanes, routes })
    }

    /// Labels the request. `fallback_header` is `<tag_header>-fallback`.
    pub async fn apply(
        &self,
        call: &mut RequestCall<'_>,
        tag_header: &Text,
        fallback_header: &Text,
    ) -> Result<(), PluginError> {
        let incoming = call.header(tag_header).is_some();
        let mut labelled = false;
        for lane in &self.lanes {
            if lane.rule.matches(call).await? {
                let header = match &lane.header {
                    Some(h) => Text::from(h.clone()),
                    None => {
                        labelled = true;
                        tag_header.clone()
                    }
                };
                call.set_header(header, Text::from(lane.lane.clone()));
                break;
            }
        }
        for (router, i, counter) in &self.routes {
            let route = &router.routes[*i];
            if route.rule.matches(call).await? {
                let tag = route.rule.choose(call, counter).await?.clone();
                if let Some((_, fb)) = route.fallbacks.iter().find(|(t, _)| **t == *tag) {
                    call.set_header(fallback_header.clone(), Text::from(fb.clone()));
                }
                call.set_header(tag_header.clone(), tag);
                return Ok(());
            }
        }
        if incoming && !labelled {
            call.remove_header(tag_header.clone());
        }
        Ok(())
    }
}
