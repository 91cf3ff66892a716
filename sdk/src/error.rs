//! The two ways a plugin fails: a bad conf at prepare time, a failed call at run time.

use std::borrow::Cow;
use std::fmt;

/// A conf the plugin cannot honour. Fails `prepare_conf` with BAD_REQUEST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfError(Cow<'static, str>);

impl ConfError {
    pub fn new(message: impl Into<Cow<'static, str>>) -> ConfError {
        ConfError(message.into())
    }

    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ConfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfError {}

impl From<serde_json::Error> for ConfError {
    fn from(e: serde_json::Error) -> ConfError {
        ConfError(e.to_string().into())
    }
}

/// Why a call could not be served. The call is answered with SERVICE_UNAVAILABLE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginError {
    kind: Kind,
    message: Cow<'static, str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Plugin,
    Gateway,
}

impl PluginError {
    /// A plugin failure.
    pub fn new(message: impl Into<Cow<'static, str>>) -> PluginError {
        PluginError {
            kind: Kind::Plugin,
            message: message.into(),
        }
    }

    /// The gateway connection failed or broke the protocol during an `extra_info` exchange. The
    /// runner fails the call and closes the connection, whatever the chain returns.
    pub fn gateway(message: impl Into<Cow<'static, str>>) -> PluginError {
        PluginError {
            kind: Kind::Gateway,
            message: message.into(),
        }
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// True when the connection to the gateway is no longer usable.
    pub fn is_gateway_failure(&self) -> bool {
        self.kind == Kind::Gateway
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PluginError {}
