//! The built-in plugin catalogue.
//!
//! Adding a plugin: write `plugins/<name>.rs` with a type implementing
//! [`ext_plugin_sdk::Plugin`], then add one line `<module> => <Type>,` to the list below. A module
//! serving several plugin names lists its types with `|`: `<module> => <TypeA> | <TypeB>,`.

use ext_plugin_sdk::Registry;

pub mod redis;
pub mod support;

macro_rules! builtin_plugins {
    ($($module:ident => $($plugin:ident)|+,)*) => {
        $(pub mod $module;)*

        /// A registry of every built-in plugin.
        pub fn builtin() -> Registry {
            Registry::new()$($(.with::<$module::$plugin>())+)*
        }
    };
}

/// Consumer loading and credential checks shared by the auth plugins.
pub mod consumers;

builtin_plugins! {
    adaptive_limit => AdaptiveLimit,
    api_breaker => ApiBreaker,
    basic_auth => BasicAuth,
    consumer_restriction => ConsumerRestriction,
    cors => Cors,
    debug_echo => DebugEcho,
    echo => Echo,
    fault_injection => FaultInjection,
    hmac_auth => HmacAuth,
    ip_restriction => IpRestriction,
    jwt_auth => JwtAuth,
    key_auth => KeyAuth,
    limit_conn => LimitConn,
    limit_count => LimitCount,
    limit_req => LimitReq,
    proxy_rewrite => ProxyRewrite,
    request_id => RequestId,
    request_validation => RequestValidation,
    response_rewrite => ResponseRewrite,
    restriction => RefererRestriction | UaRestriction,
    traffic_tag => TrafficTag,
    uri_blocker => UriBlocker,
}
