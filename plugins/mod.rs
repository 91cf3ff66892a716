//! The built-in plugin catalogue.
//!
//! Adding a plugin: write `plugins/<name>.rs` with a type implementing
//! [`crate::plugin::Plugin`], then add one line `<module> => <Type>,` to the list below.

use crate::registry::Registry;

macro_rules! builtin_plugins {
    ($($module:ident => $plugin:ident,)*) => {
        $(pub mod $module;)*

        /// A registry of every built-in plugin.
        pub fn builtin() -> Registry {
            Registry::new()$(.with::<$module::$plugin>())*
        }
    };
}

/// Consumer loading and credential checks shared by the auth plugins.
pub mod consumers;

builtin_plugins! {
    basic_auth => BasicAuth,
    echo => Echo,
    ip_restriction => IpRestriction,
    jwt_auth => JwtAuth,
    key_auth => KeyAuth,
    request_id => RequestId,
}
