//! Where a plugin's variables come from, in either phase: the engines that read variables
//! ([`expr`](super::expr) conditions, [`template`](super::template) strings) take any [`Vars`].
//!
//! * In the request phase, [`RequestCall`] answers them ([`RequestCall::var`]: request data is
//!   free, anything else one cached round trip).
//! * In the response phase, [`ResponseVars`] answers what the upstream's answer already says
//!   (`status`, `upstream_status`, `sent_http_<name>`, `upstream_http_<name>`) without asking
//!   the gateway, and the rest through [`ResponseCall::var`]. In `ext-plugin-post-resp` the
//!   gateway has not sent anything to the client yet, so its own `status` would not be the
//!   upstream's.

use std::future::Future;

use ext_plugin_sdk::{PluginError, RequestCall, ResponseCall, Text};

/// A source of gateway variables by APISIX name; `None` is nil.
pub trait Vars: Send {
    fn var(&mut self, name: &str)
        -> impl Future<Output = Result<Option<Text>, PluginError>> + Send;
}

impl Vars for RequestCall<'_> {
    fn var(
        &mut self,
        name: &str,
    ) -> impl Future<Output = Result<Option<Text>, PluginError>> + Send {
        RequestCall::var(self, name)
    }
}

/// The response phase's variables (see the [module docs](self)).
pub struct ResponseVars<'a, 'c>(pub &'a mut ResponseCall<'c>);

impl Vars for ResponseVars<'_, '_> {
    async fn var(&mut self, name: &str) -> Result<Option<Text>, PluginError> {
        let call = &mut *self.0;
        match name {
            "status" => return Ok(Some(Text::from(call.status().to_string()))),
            "upstream_status" => return Ok(Some(Text::from(call.original_status().to_string()))),
            _ => {}
        }
        if let Some(header) = name.strip_prefix("sent_http_") {
            return Ok(header_var(call.headers(), header));
        }
        if let Some(header) = name.strip_prefix("upstream_http_") {
            let original = call.original_headers().iter();
            let pairs = original.filter_map(|p| Some((p.name.as_str(), p.value.as_deref()?)));
            return Ok(header_var(pairs, header));
        }
        call.var(name).await
    }
}

/// The first header matching an nginx `*_http_<name>` variable (`-` written `_`, any case).
fn header_var<'h>(headers: impl Iterator<Item = (&'h str, &'h str)>, var: &str) -> Option<Text> {
    headers
        .into_iter()
        .find(|(n, _)| {
            n.len() == var.len()
                && n.bytes().zip(var.bytes()).all(|(h, v)| {
                    let h = if h == b'-' {
                        b'_'
                    } else {
                        h.to_ascii_lowercase()
                    };
                    h == v.to_ascii_lowercase()
                })
        })
        .map(|(_, v)| Text::from(v.to_owned()))
}
