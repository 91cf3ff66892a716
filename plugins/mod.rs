//! The built-in plugin catalogue.
//!
//! Adding a plugin: write `plugins/<name>.rs` with a type implementing
//! [`crate::plugin::Plugin`], then add one line `<module> => <Type>,` to the list below.

use crate::registry::Registry;

pub mod support;

macro_rules! builtin_plugins {
    ($($module:ident => $plugin:ident,)*) => {
        $(pub mod $module;)*

        /// A registry of every built-in plugin.
        pub fn builtin() -> Registry {
            Registry::new()$(.with::<$module::$plugin>())*
        }
    };
}

builtin_plugins! {
    echo => Echo,
    fault_injection => FaultInjection,
    ip_restriction => IpRestriction,
    limit_conn => LimitConn,
    limit_count => LimitCount,
    limit_req => LimitReq,
    request_id => RequestId,
}
