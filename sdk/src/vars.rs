//! Gateway variables: answered locally when the request carries them, otherwise fetched from
//! the gateway with one `extra_info` round trip and cached for the rest of the call.

use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::error::PluginError;
use crate::model::{ExtraInfoReq, Pair};
use crate::text::Text;

/// The connection's side of an `extra_info` exchange: send one request to the gateway, wait for
/// its answer. Boxed because it only runs on a round trip, which costs far more than the box.
///
/// Implementations must be cancel safe: plugins may drop the future at any await (see
/// [Gateway round trips](crate#gateway-round-trips)), and the connection must stay in step,
/// with the next fetch getting its own answer. An `Err` fails the fetch; a
/// [`PluginError::gateway`] one says the connection is unusable, and the host then fails the
/// call whatever the plugin returns.
pub trait GatewayVars: Send {
    fn fetch<'a>(
        &'a mut self,
        req: ExtraInfoReq,
    ) -> Pin<Box<dyn Future<Output = Result<Option<Bytes>, PluginError>> + Send + 'a>>;
}

/// Values fetched from the gateway during one call. A handful per call at most: a vector beats a
/// map, and is reused across calls.
#[derive(Default)]
pub(crate) struct VarCache {
    entries: Vec<(Text, Option<Bytes>)>,
}

impl VarCache {
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Option<Bytes>> {
        self.entries
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, v)| v)
    }

    /// The cached value, or one fetched from the gateway (and then cached).
    pub(crate) async fn get_or_fetch(
        &mut self,
        gateway: &mut dyn GatewayVars,
        name: &str,
    ) -> Result<Option<Bytes>, PluginError> {
        if let Some(v) = self.get(name) {
            return Ok(v.clone());
        }
        let name = Text::from(name.to_owned());
        let value = gateway.fetch(ExtraInfoReq::Var(name.clone())).await?;
        self.entries.push((name, value.clone()));
        Ok(value)
    }
}

/// A variable's bytes as text. Variables are text in practice; stray non-UTF-8 bytes are replaced
/// rather than failing the call.
pub(crate) fn bytes_to_text(b: Bytes) -> Text {
    Text::from_utf8(b.clone())
        .unwrap_or_else(|| Text::from(String::from_utf8_lossy(&b).into_owned()))
}

/// Compares a header name with the `x_y` part of an `http_x_y` variable, as nginx does
/// (case-insensitive, `-` in the header matching `_` in the variable).
pub(crate) fn header_matches_var(header: &str, var: &str) -> bool {
    header.len() == var.len()
        && header.bytes().zip(var.bytes()).all(|(h, v)| {
            let h = if h == b'-' {
                b'_'
            } else {
                h.to_ascii_lowercase()
            };
            h == v.to_ascii_lowercase()
        })
}

/// Finds cookie `name` in a `Cookie` header value.
pub(crate) fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

/// Characters kept as they are in a re-encoded query: RFC 3986 unreserved.
const QUERY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Characters kept in a re-encoded path: unreserved plus `/`.
const PATH: &AsciiSet = &QUERY.remove(b'/');

/// Re-encodes a decoded query (`a=1&flag&b=`), percent-encoding names and values.
pub(crate) fn encode_args(args: &[Pair], out: &mut String) {
    for (i, arg) in args.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        let _ = write!(out, "{}", utf8_percent_encode(&arg.name, QUERY));
        if let Some(v) = &arg.value {
            let _ = write!(out, "={}", utf8_percent_encode(v, QUERY));
        }
    }
}

/// Re-encodes a decoded path.
pub(crate) fn encode_path(path: &str, out: &mut String) {
    let _ = write!(out, "{}", utf8_percent_encode(path, PATH));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_match_nginx_variables() {
        assert!(header_matches_var("x-user-id", "x_user_id"));
        assert!(header_matches_var("X-User-ID", "x_user_id"));
        assert!(!header_matches_var("x-user", "x_user_id"));
    }

    #[test]
    fn cookies_are_found_by_name() {
        assert_eq!(cookie_value("a=1; sid=xyz; b=2", "sid"), Some("xyz"));
        assert_eq!(cookie_value("a=1", "sid"), None);
    }

    #[test]
    fn queries_and_paths_are_re_encoded() {
        let mut s = String::new();
        encode_args(
            &[
                Pair::new("a b", "1&2"),
                Pair::absent("flag"),
                Pair::new("e", ""),
            ],
            &mut s,
        );
        assert_eq!(s, "a%20b=1%262&flag&e=");
        let mut p = String::new();
        encode_path("/a b/ü", &mut p);
        assert_eq!(p, "/a%20b/%C3%BC");
    }
}
