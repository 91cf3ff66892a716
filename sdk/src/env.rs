//! What a plugin learns and gets at prepare time.

use std::any::Any;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use crate::metrics::Metrics;
use crate::services::Services;
use crate::state::{ScopeKey, StateRegistry};
use crate::Clock;

/// Where the gateway attached the chain, read from the `prepare_conf` key
/// (`conf_type#conf_id#<gateway plugin name>#<version>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attachment {
    /// `ext-plugin-pre-req`: before the gateway's own plugins (before its authentication).
    PreReq,
    /// `ext-plugin-post-req`: after the gateway's own plugins (`consumer_name` is known).
    PostReq,
    /// `ext-plugin-post-resp`: request and response phases around the upstream call.
    PostResp,
    /// A key of another shape (a gateway other than APISIX).
    Other,
}

impl Attachment {
    pub fn from_key(key: &str) -> Attachment {
        match key.rsplit('#').nth(1) {
            Some("ext-plugin-pre-req") => Attachment::PreReq,
            Some("ext-plugin-post-req") => Attachment::PostReq,
            Some("ext-plugin-post-resp") => Attachment::PostResp,
            _ => Attachment::Other,
        }
    }
}

/// The route part of a key: `route#1` of `route#1#ext-plugin-pre-req#12`. It is the same for the
/// route's pre-req, post-req and post-resp chains and across conf versions.
pub(crate) fn route_scope(key: &str) -> &str {
    let mut parts = key.rsplitn(3, '#');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(_version), Some(_plugin), Some(route)) => route,
        _ => key,
    }
}

/// A stable hash of a conf string, for scoping state to "this conf".
pub(crate) fn conf_hash(conf: &str) -> u64 {
    // SipHash with fixed keys: stable for the life of the process, which is all state needs.
    let mut h = std::hash::DefaultHasher::new();
    conf.hash(&mut h);
    h.finish()
}

/// Prepare-time context for one plugin of a chain.
pub struct PrepareEnv<'a> {
    pub(crate) key: &'a str,
    pub(crate) plugin: &'static str,
    pub(crate) conf: &'a str,
    pub(crate) chain: &'a [&'a str],
    pub(crate) state: &'a StateRegistry,
    pub(crate) services: &'a Services,
    pub(crate) clock: &'a Clock,
    /// Every state value handed out, for the chain being built to keep (the registry holds
    /// state weakly).
    pub(crate) held: Vec<Held>,
}

pub(crate) use crate::state::Held;

impl PrepareEnv<'_> {
    /// The `prepare_conf` key, e.g. `route#1#ext-plugin-pre-req#12`.
    pub fn key(&self) -> &str {
        self.key
    }

    /// The key without its attachment and version, e.g. `route#1`.
    pub fn route(&self) -> &str {
        route_scope(self.key)
    }

    pub fn attachment(&self) -> Attachment {
        Attachment::from_key(self.key)
    }

    /// The plugin's conf as the gateway sent it (JSON text). Stable across runner processes
    /// and releases for one conf, so plugins sharing state outside the process (a Redis key)
    /// can derive names from it.
    pub fn conf(&self) -> &str {
        self.conf
    }

    /// The registry to export metrics through (see [`crate::metrics`]): register at prepare
    /// time, keep the handles, and label by [`PrepareEnv::route`] and the plugin name only.
    pub fn metrics(&self) -> &Metrics {
        self.state.metrics()
    }

    /// The names of every plugin in this chain, in order (this one included).
    pub fn chain(&self) -> &[&str] {
        self.chain
    }

    /// The process-wide value of type `T` the runner provided with
    /// [`Registry::provide`](crate::Registry::provide); `None` when it provided none.
    pub fn service<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        self.services.get()
    }

    /// The clock to measure time by, in `prepare` and (keep a clone) in the filters: the
    /// runner's monotonic clock, or the manual clock a test drives. See [`Clock`].
    pub fn clock(&self) -> &Clock {
        self.clock
    }

    /// State shared by every chain of this route, plugin and conf: the pre-req and post-resp
    /// attachments of one route see the same value, and so do re-prepares of the same conf. A
    /// changed conf gets fresh state (as the gateway's own limiters reset). `init` runs when no
    /// live chain asked for such state yet.
    ///
    /// The state lives as long as any prepared chain that asked for it, whatever the plugin
    /// keeps: the returned `Arc`, a field cloned out of it, or nothing. When the last such
    /// chain goes (evicted from the runner's conf cache, say), the runner may keep the state a
    /// while longer, so that the route prepared again finds it (see
    /// [`StateRegistry::retaining`](crate::host::StateRegistry::retaining)).
    pub fn state<T: Any + Send + Sync>(&mut self, init: impl FnOnce() -> T) -> Arc<T> {
        let key = ScopeKey::Route {
            route: self.route().to_owned(),
            plugin: self.plugin,
            conf_hash: conf_hash(self.conf),
        };
        self.hold(self.state.get_or_init(key, init))
    }

    /// State shared by every chain, of any route, that uses this plugin with the same `group`
    /// name (APISIX's `group` field of the limit plugins). It lives as long as any chain that
    /// asked for it, like [`PrepareEnv::state`].
    pub fn group_state<T: Any + Send + Sync>(
        &mut self,
        group: &str,
        init: impl FnOnce() -> T,
    ) -> Arc<T> {
        let key = ScopeKey::Group {
            group: group.to_owned(),
            plugin: self.plugin,
        };
        self.hold(self.state.get_or_init(key, init))
    }

    /// Keeps `value` with the chain being prepared.
    fn hold<T: Any + Send + Sync>(&mut self, (value, held): (Arc<T>, Held)) -> Arc<T> {
        self.held.push(held);
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attachment_and_route_come_from_the_key() {
        assert_eq!(
            Attachment::from_key("route#1#ext-plugin-pre-req#12"),
            Attachment::PreReq
        );
        assert_eq!(
            Attachment::from_key("service#a#ext-plugin-post-resp#1"),
            Attachment::PostResp
        );
        assert_eq!(Attachment::from_key("whatever"), Attachment::Other);
        assert_eq!(route_scope("route#1#ext-plugin-post-req#12"), "route#1");
        assert_eq!(route_scope("plain"), "plain");
    }
}
