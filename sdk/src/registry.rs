//! The plugins a runner knows by name, and how a `prepare_conf` becomes a [`Chain`].

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::chain::{Chain, DynPlugin, Link};
use crate::env::Held;
use crate::model::PrepareConfReq;
use crate::services::Services;
use crate::state::StateRegistry;
use crate::text::Text;
use crate::{Attachment, Clock, ConfError, Plugin, PrepareEnv};

type Factory = fn(&str, &mut PrepareEnv<'_>) -> Result<Box<dyn DynPlugin>, ConfError>;

/// Plugin names → how to prepare them.
#[derive(Clone, Default)]
pub struct Registry {
    factories: HashMap<&'static str, Factory>,
    services: Services,
}

/// Why a chain could not be prepared: which entry, which plugin, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("chain entry {index} (`{plugin}`): {reason}")]
pub struct ChainError {
    pub index: usize,
    pub plugin: String,
    pub reason: String,
}

fn prepare<P: Plugin>(
    conf: &str,
    env: &mut PrepareEnv<'_>,
) -> Result<Box<dyn DynPlugin>, ConfError> {
    // An absent or empty conf means "all defaults".
    let json = if conf.trim().is_empty() { "{}" } else { conf };
    let conf: P::Conf = serde_json::from_str(json)?;
    Ok(Box::new(P::prepare(conf, env)?))
}

impl Registry {
    /// A registry with no plugins.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Adds plugin `P`.
    ///
    /// # Panics
    /// When a plugin of the same name is registered already: two plugins answering to one name
    /// is a programming error, caught at start-up.
    pub fn with<P: Plugin>(mut self) -> Registry {
        let previous = self.factories.insert(P::NAME, prepare::<P>);
        assert!(previous.is_none(), "plugin `{}` registered twice", P::NAME);
        self
    }

    /// Hands `value` to every plugin's prepare, found by type with
    /// [`PrepareEnv::service`]: for process-wide things a runner makes once from its own
    /// settings (a rule store fed by a file watcher, say). A second value of the same type
    /// replaces the first.
    pub fn provide<T: Any + Send + Sync>(mut self, value: Arc<T>) -> Registry {
        self.services.insert(value);
        self
    }

    /// The value of type `T` given to [`Registry::provide`], if any.
    pub fn service<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        self.services.get()
    }

    /// Whether a plugin of this name is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.factories.contains_key(name)
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.factories.keys().copied().collect();
        names.sort_unstable();
        names
    }

    /// Prepares `req`'s chain as `prepare_conf` would and drops it, outside any runner: tells
    /// whether a gateway's conf would be accepted, and why not. For offline tools and the conf
    /// fuzz target; plugin state made while preparing is dropped with the chain.
    pub fn check(&self, req: &PrepareConfReq) -> Result<(), ChainError> {
        self.build_chain(req, &StateRegistry::default(), &Clock::system())
            .map(drop)
    }

    /// Prepares every entry of `req`'s chain on its own, as `prepare_conf` would prepare it in
    /// the chain, and drops them: a verdict per entry, where [`Registry::check`] stops at the
    /// first refusal. For offline tools that report every bad entry at once.
    pub fn check_entries(&self, req: &PrepareConfReq) -> Vec<Result<(), ChainError>> {
        let (state, clock) = (StateRegistry::default(), Clock::system());
        let names = chain_names(req);
        (0..req.conf.len())
            .map(|index| {
                let mut held = Vec::new();
                self.prepare_entry(req, index, &names, &state, &clock, &mut held)
                    .map(drop)
            })
            .collect()
    }

    /// Parses and validates every entry of a chain. Fails closed: one unknown plugin or bad conf
    /// fails the whole chain. Plugins share state through `state` and read time from `clock`
    /// (both one per runner).
    pub fn build_chain(
        &self,
        req: &PrepareConfReq,
        state: &StateRegistry,
        clock: &Clock,
    ) -> Result<Chain, ChainError> {
        let names = chain_names(req);
        let mut links = Vec::with_capacity(req.conf.len());
        let mut held = Vec::new();
        for index in 0..req.conf.len() {
            links.push(self.prepare_entry(req, index, &names, state, clock, &mut held)?);
        }
        Ok(Chain {
            attachment: Attachment::from_key(&req.key),
            // A copy: the request's key is a slice of the frame, which the chain must not pin.
            key: Text::from(req.key.as_str().to_owned()),
            links,
            _state: held.into_boxed_slice(),
            observer: None,
        })
    }

    /// Prepares entry `index` of `req`'s chain (whose plugin names are `names`); the state it
    /// asked for is added to `held`.
    fn prepare_entry(
        &self,
        req: &PrepareConfReq,
        index: usize,
        names: &[&str],
        state: &StateRegistry,
        clock: &Clock,
        held: &mut Vec<Held>,
    ) -> Result<Link, ChainError> {
        let entry = &req.conf[index];
        let fail = |reason: String| ChainError {
            index,
            plugin: entry.name.to_string(),
            reason,
        };
        let Some((&name, factory)) = self.factories.get_key_value(entry.name.as_str()) else {
            return Err(fail(format!(
                "unknown plugin; this runner has: {}",
                self.names().join(", ")
            )));
        };
        let conf = entry.value.as_deref().unwrap_or("");
        let mut env = PrepareEnv {
            key: &req.key,
            plugin: name,
            conf,
            chain: names,
            state,
            services: &self.services,
            clock,
            held: Vec::new(),
        };
        let plugin = factory(conf, &mut env).map_err(|e| fail(e.to_string()))?;
        held.append(&mut env.held);
        Ok(Link { name, plugin })
    }
}

fn chain_names(req: &PrepareConfReq) -> Vec<&str> {
    req.conf.iter().map(|p| p.name.as_str()).collect()
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("plugins", &self.names())
            .finish()
    }
}
