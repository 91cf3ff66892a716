//! The two ways a plugin fails: a bad conf at prepare time, a failed call at run time.

use std::borrow::Cow;
use std::error::Error;
use std::fmt;
use std::sync::Arc;

/// A conf the plugin cannot honour. Fails `prepare_conf` with BAD_REQUEST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfError(Cow<'static, str>);

impl ConfError {
    pub fn new(message: impl Into<Cow<'static, str>>) -> ConfError {
        ConfError(message.into())
    }

    /// A conf error naming the field it is about: "`` `<field>` ``: reason".
    pub fn field(field: &str, reason: impl fmt::Display) -> ConfError {
        ConfError(format!("`{field}`: {reason}").into())
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
///
/// `?` converts the errors a plugin commonly meets (JSON, I/O, UTF-8, number parsing) into a
/// `PluginError` that keeps the original as its [`source`](Error::source); for any other error
/// use [`Context::context`] or [`PluginError::with_source`].
#[derive(Debug, Clone)]
pub struct PluginError {
    kind: Kind,
    message: Cow<'static, str>,
    source: Option<Arc<dyn Error + Send + Sync>>,
}

impl PartialEq for PluginError {
    /// Two errors are equal when they say the same thing (sources are not compared).
    fn eq(&self, other: &PluginError) -> bool {
        self.kind == other.kind && self.message == other.message
    }
}

impl Eq for PluginError {}

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
            source: None,
        }
    }

    /// A plugin failure caused by `source`; the message reads `<message>: <source>`.
    pub fn with_source(
        message: impl Into<Cow<'static, str>>,
        source: impl Error + Send + Sync + 'static,
    ) -> PluginError {
        let message = message.into();
        PluginError {
            kind: Kind::Plugin,
            message: format!("{message}: {source}").into(),
            source: Some(Arc::new(source)),
        }
    }

    /// The gateway connection failed or broke the protocol during an `extra_info` exchange. The
    /// runner fails the call and closes the connection, whatever the chain returns.
    pub fn gateway(message: impl Into<Cow<'static, str>>) -> PluginError {
        PluginError {
            kind: Kind::Gateway,
            message: message.into(),
            source: None,
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

impl Error for PluginError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn Error + 'static))
    }
}

/// `?` on these errors in a filter fails the call with the error as the source.
macro_rules! plugin_error_from {
    ($($ty:ty => $what:literal,)*) => {$(
        impl From<$ty> for PluginError {
            fn from(e: $ty) -> PluginError {
                PluginError::with_source($what, e)
            }
        }
    )*};
}

plugin_error_from! {
    serde_json::Error => "JSON",
    std::io::Error => "I/O",
    std::str::Utf8Error => "UTF-8",
    std::string::FromUtf8Error => "UTF-8",
    std::num::ParseIntError => "number",
    std::num::ParseFloatError => "number",
    std::fmt::Error => "formatting",
}

/// Adds what was being done to an error, turning it into the SDK's error types:
/// `result.context("signing the token")?` in a filter, `result.field("rules[0].key")?` in
/// `prepare`.
pub trait Context<T> {
    /// A run-time failure: `PluginError` "`<what>`: cause", keeping the cause as its source.
    fn context(self, what: &'static str) -> Result<T, PluginError>;

    /// A conf failure naming the field: `ConfError` "`` `<field>` ``: cause".
    fn field(self, field: &str) -> Result<T, ConfError>;
}

impl<T, E: Error + Send + Sync + 'static> Context<T> for Result<T, E> {
    fn context(self, what: &'static str) -> Result<T, PluginError> {
        self.map_err(|e| PluginError::with_source(what, e))
    }

    fn field(self, field: &str) -> Result<T, ConfError> {
        self.map_err(|e| ConfError::field(field, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn question_mark_keeps_the_cause_as_source() {
        fn parse(s: &str) -> Result<u8, PluginError> {
            Ok(s.parse::<u8>()?)
        }
        let err = parse("x").unwrap_err();
        assert!(err.message().starts_with("number: "), "{err}");
        assert!(err.source().is_some());
        assert!(!err.is_gateway_failure());
    }

    #[test]
    fn context_and_field_say_what_was_being_done() {
        let bad: Result<(), std::io::Error> = Err(std::io::Error::other("disk on fire"));
        let err = bad.context("reading the key").unwrap_err();
        assert_eq!(err.message(), "reading the key: disk on fire");
        let bad: Result<(), std::io::Error> = Err(std::io::Error::other("nope"));
        assert_eq!(
            bad.field("rules[0].key").unwrap_err().message(),
            "`rules[0].key`: nope"
        );
    }
}
