//! The response phase as a plugin sees it.

use std::any::Any;

use bytes::Bytes;

use super::error::PluginError;
use super::extensions::Extensions;
use super::vars::{bytes_to_text, GatewayVars, VarCache};
use crate::model::{ExtraInfoReq, HttpRespCallReq, HttpRespCallResp, Pair};
use crate::text::Text;

/// Per-call scratch of the response phase, owned by the connection and reset for each call.
#[derive(Default)]
pub struct RespState {
    status: Option<u16>,
    /// `None` until a plugin changes a header; then the complete set the client gets.
    headers: Option<Vec<Pair>>,
    body: Option<Bytes>,
    upstream_body: Option<Option<Bytes>>,
    vars: VarCache,
    extensions: Extensions,
}

impl RespState {
    pub fn reset(&mut self) {
        self.status = None;
        self.headers = None;
        self.body = None;
        self.upstream_body = None;
        self.vars.clear();
        self.extensions.clear();
    }

    /// The reply for the gateway. When any header changed, every header is sent: the gateway
    /// then sends the client only the headers in the reply. Hop-by-hop and framing headers are
    /// left out of that set (see [`is_hop_by_hop`](crate::host::is_hop_by_hop)): they describe the upstream connection,
    /// and the gateway frames the client's response itself.
    pub fn take_reply(&mut self, id: u32) -> HttpRespCallResp {
        let mut headers = self.headers.take().unwrap_or_default();
        if !headers.is_empty() {
            let listed: Vec<Text> = headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("connection"))
                .filter_map(|h| h.value.as_deref())
                .flat_map(|v| v.split(','))
                .map(|n| Text::from(n.trim().to_owned()))
                .collect();
            headers.retain(|h| {
                !is_hop_by_hop(&h.name) && !listed.iter().any(|l| l.eq_ignore_ascii_case(&h.name))
            });
        }
        HttpRespCallResp {
            id,
            status: self.status.take().unwrap_or(0),
            headers,
            body: self.body.take(),
        }
    }
}

/// Headers that never go back to the gateway in a response reply: the hop-by-hop headers of
/// RFC 9110 §7.6.1 (and any the upstream's `Connection` names) and `Content-Length`. The gateway
/// sets the reply's headers on the client's response as they are, so an echoed
/// `Transfer-Encoding` or a `Content-Length` of a body a plugin replaced would corrupt it.
pub fn is_hop_by_hop(name: &str) -> bool {
    const NAMES: [&str; 9] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    ];
    NAMES.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// The upstream's answer, seen by one plugin of the chain. Reads reflect the changes of earlier
/// plugins; the `original_*` methods give the answer as the gateway sent it (the same names as
/// [`RequestCall`](crate::RequestCall)'s).
pub struct ResponseCall<'c> {
    req: &'c HttpRespCallReq,
    state: &'c mut RespState,
    gateway: &'c mut dyn GatewayVars,
}

impl<'c> ResponseCall<'c> {
    pub(crate) fn new(
        req: &'c HttpRespCallReq,
        state: &'c mut RespState,
        gateway: &'c mut dyn GatewayVars,
    ) -> ResponseCall<'c> {
        ResponseCall {
            req,
            state,
            gateway,
        }
    }

    /// The gateway's id for this call (unrelated to the request phase's id).
    pub fn id(&self) -> u32 {
        self.req.id
    }

    /// The status the upstream answered, before any plugin of this chain changed it.
    pub fn original_status(&self) -> u16 {
        self.req.status
    }

    /// The status the client will get, as changed so far.
    pub fn status(&self) -> u16 {
        self.state.status.unwrap_or(self.req.status)
    }

    pub fn set_status(&mut self, status: u16) {
        self.state.status = Some(status);
    }

    /// The upstream's headers exactly as the gateway sent them, before any plugin of this chain
    /// changed them: original case, repeats kept, in order.
    pub fn original_headers(&self) -> &[Pair] {
        &self.req.headers
    }

    /// The headers the client will get, as changed so far, in order: `(name, value)`.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.current_headers()
            .iter()
            .filter_map(|h| Some((h.name.as_str(), h.value.as_deref()?)))
    }

    fn current_headers(&self) -> &[Pair] {
        self.state.headers.as_deref().unwrap_or(&self.req.headers)
    }

    /// The first value of header `name` (any case), as changed so far.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.current_headers()
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| h.value.as_deref())
    }

    /// Every value of header `name` (any case), as changed so far.
    pub fn header_values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s str> + 's {
        self.current_headers()
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| h.value.as_deref())
    }

    fn headers_mut(&mut self) -> &mut Vec<Pair> {
        let upstream = &self.req.headers;
        self.state.headers.get_or_insert_with(|| upstream.clone())
    }

    /// Sets header `name`, replacing every value it had.
    pub fn set_header(&mut self, name: impl Into<Text>, value: impl Into<Text>) {
        let pair = Pair::new(name, value);
        let headers = self.headers_mut();
        headers.retain(|h| !h.name.eq_ignore_ascii_case(&pair.name));
        headers.push(pair);
    }

    /// Adds a value to header `name`, keeping the values it has.
    pub fn append_header(&mut self, name: impl Into<Text>, value: impl Into<Text>) {
        let pair = Pair::new(name, value);
        self.headers_mut().push(pair);
    }

    /// Removes header `name` (every value).
    pub fn remove_header(&mut self, name: impl Into<Text>) {
        let name = name.into();
        self.headers_mut()
            .retain(|h| !h.name.eq_ignore_ascii_case(&name));
    }

    /// The response body as changed so far, or the upstream's (fetched from the gateway at most
    /// once per call); `None` when there is none.
    ///
    /// # Errors and cancellation
    ///
    /// `Err` when the round trip fails. When the gateway connection failed or broke the protocol
    /// ([`PluginError::is_gateway_failure`]) the call fails whatever the plugin returns: pass the
    /// error on with `?`. Dropping the future (a timeout, `select!`) is safe: the runner reads
    /// and drops the abandoned answer before it replies or asks again. See
    /// [Gateway round trips](crate#gateway-round-trips).
    pub async fn body(&mut self) -> Result<Option<Bytes>, PluginError> {
        if let Some(body) = &self.state.body {
            return Ok(Some(body.clone()));
        }
        if let Some(body) = &self.state.upstream_body {
            return Ok(body.clone());
        }
        let body = self.gateway.fetch(ExtraInfoReq::RespBody).await?;
        self.state.upstream_body = Some(body.clone());
        Ok(body)
    }

    /// Replaces the response body.
    pub fn set_body(&mut self, body: impl Into<Bytes>) {
        self.state.body = Some(body.into());
    }

    /// A gateway variable (`request_time`, `upstream_status`, `http_x_request_id`, ...), fetched
    /// from the gateway once per call; `None` when it is nil. The response phase carries no
    /// request data, so every variable costs one round trip.
    ///
    /// # Errors and cancellation
    ///
    /// As [`ResponseCall::body`]: `Err` when the round trip fails (a gateway failure fails the
    /// call whatever the plugin returns); dropping the future is safe.
    pub async fn var(&mut self, name: &str) -> Result<Option<Text>, PluginError> {
        let v = self.state.vars.get_or_fetch(self.gateway, name).await?;
        Ok(v.map(bytes_to_text))
    }

    /// Stores a value for later plugins of this call; one value per type.
    pub fn insert<T: Any + Send>(&mut self, value: T) {
        self.state.extensions.insert(value);
    }

    /// A value an earlier plugin of this call stored with [`ResponseCall::insert`].
    pub fn get<T: Any + Send>(&self) -> Option<&T> {
        self.state.extensions.get()
    }
}

#[cfg(test)]
mod tests {
    use crate::harness::TestResp;

    #[test]
    fn a_reply_never_carries_hop_by_hop_or_framing_headers() {
        let mut resp = TestResp::new(200);
        let mut call = resp.call();
        for (n, v) in [
            ("Content-Length", "12"),
            ("Transfer-Encoding", "chunked"),
            ("Connection", "keep-alive, X-Trace"),
            ("X-Trace", "1"),
            ("Keep-Alive", "timeout=5"),
            ("Content-Type", "text/plain"),
        ] {
            call.append_header(n, v);
        }
        call.set_header("x-new", "1");
        let reply = resp.reply();
        let names: Vec<&str> = reply.headers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["Content-Type", "x-new"]);
    }
}
