//! The request phase as a plugin sees it.

use std::any::Any;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use bytes::{Bytes, BytesMut};

use super::env::Attachment;
use super::error::PluginError;
use super::extensions::Extensions;
use super::vars::{
    bytes_to_text, cookie_value, encode_args, encode_path, header_matches_var, GatewayVars,
    VarCache,
};
use crate::entries::Entries;
use crate::model::{ExtraInfoReq, HttpReqCallReq, Method, Pair, Rewrite};
use crate::text::Text;

/// Per-call scratch that outlives one plugin: recorded rewrites, fetched variables, the request
/// body, the consumer and extensions. Owned by the connection (or harness) and reset for each
/// call, so its vectors are reused.
#[derive(Default)]
pub struct CallState {
    pub(crate) rewrite: Rewrite,
    vars: VarCache,
    body: Option<Option<Bytes>>,
    consumer: Option<Text>,
    extensions: Extensions,
    /// The running plugin called [`RequestCall::mark_delayed`].
    delayed: bool,
    /// Where [`RequestCall::format_text`] writes: texts of one call share its storage, which
    /// the next call reclaims once they are dropped (the rewrite is recycled), so formatting a
    /// header value allocates nothing in steady state.
    scratch: BytesMut,
}

impl CallState {
    /// Makes the state ready for the next call (keeping its vectors' storage).
    pub fn reset(&mut self) {
        self.rewrite.clear();
        self.vars.clear();
        self.body = None;
        self.consumer = None;
        self.extensions.clear();
        self.delayed = false;
        // The last call's texts are gone with its rewrite: take the buffer's used room back now,
        // while nothing shares it, rather than mid-call, when this call's texts would (and
        // reserving would allocate). Never allocates, so an idle connection keeps what it had.
        // When a plugin kept a text beyond its call, nothing is reclaimed: `make_room` then
        // reserves (allocates) as before.
        if self.scratch.capacity() < SCRATCH_CALL_ROOM {
            let _reclaimed = self.scratch.try_reclaim(SCRATCH_CHUNK);
        }
    }

    /// Takes back a rewrite the chain returned once its reply is encoded, so that its vectors
    /// are reused by the next call instead of allocated again.
    pub fn recycle(&mut self, rewrite: Rewrite) {
        self.rewrite = rewrite;
        self.rewrite.clear();
    }

    fn format_text(&mut self, args: fmt::Arguments<'_>) -> Text {
        self.make_room();
        // As `ToString`: only a `Display` impl that returns an error (a bug in it) fails here;
        // the buffer itself always takes more bytes.
        fmt::Write::write_fmt(&mut self.scratch, args)
            .expect("a Display implementation returned an error unexpectedly");
        self.take_text()
    }

    /// [`CallState::format_text`] of a plain string, without the formatting machinery (which
    /// costs a few hundred instructions per value on the hot path).
    fn copy_text(&mut self, s: &str) -> Text {
        self.make_room();
        self.scratch.extend_from_slice(s.as_bytes());
        self.take_text()
    }

    /// An address as text: IPv4 (nearly every client) written digit by digit, IPv6 formatted
    /// by the standard library (its zero-run compression is not worth repeating here).
    fn ip_text(&mut self, ip: IpAddr) -> Text {
        match ip {
            IpAddr::V4(v4) => {
                let mut buf = [0; 15];
                self.copy_text(ipv4_str(v4, &mut buf))
            }
            IpAddr::V6(_) => self.format_text(format_args!("{ip}")),
        }
    }

    /// Room for a typical value without growing mid-write; when every text of the last calls is
    /// gone this reclaims the buffer instead of allocating.
    fn make_room(&mut self) {
        if self.scratch.capacity() < SCRATCH_MIN_ROOM {
            self.scratch.reserve(SCRATCH_CHUNK);
        }
    }

    /// What was written since the last text, as a text.
    fn take_text(&mut self) -> Text {
        let written = self.scratch.split().freeze();
        Text::from_utf8(written).expect("only `&str`s are written")
    }
}

/// `ip` in dotted decimal, as its `Display` writes it, into `buf`.
fn ipv4_str(ip: Ipv4Addr, buf: &mut [u8; 15]) -> &str {
    let mut len = 0;
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            buf[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            buf[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            buf[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        buf[len] = b'0' + octet % 10;
        len += 1;
    }
    std::str::from_utf8(&buf[..len]).expect("digits and dots are ASCII")
}

/// [`CallState::format_text`] makes room for at least this much before formatting ...
const SCRATCH_MIN_ROOM: usize = 64;
/// ... by reserving this much (one allocation serves many calls' texts).
const SCRATCH_CHUNK: usize = 1024;
/// [`CallState::reset`] takes the buffer's room back when less than this is left.
const SCRATCH_CALL_ROOM: usize = 512;

/// One request, seen by one plugin of the chain.
///
/// Reads reflect the rewrites recorded by earlier plugins of the chain (path, headers, args,
/// body); the `original_*` methods give the request as the gateway sent it. Writes are recorded
/// and sent to the gateway as one rewrite when the chain ends. [`ResponseCall`](crate::ResponseCall)
/// uses the same names for the same ideas.
pub struct RequestCall<'c> {
    req: &'c HttpReqCallReq,
    state: &'c mut CallState,
    gateway: &'c mut dyn GatewayVars,
    attachment: Attachment,
}

impl<'c> RequestCall<'c> {
    pub(crate) fn new(
        req: &'c HttpReqCallReq,
        state: &'c mut CallState,
        gateway: &'c mut dyn GatewayVars,
        attachment: Attachment,
    ) -> RequestCall<'c> {
        RequestCall {
            req,
            state,
            gateway,
            attachment,
        }
    }

    /// The gateway's id for this call.
    pub fn id(&self) -> u32 {
        self.req.id
    }

    pub fn method(&self) -> Method {
        self.req.method
    }

    /// `args` formatted as a [`Text`] (`call.format_text(format_args!("{n}"))`), written into
    /// the call's reusable buffer: in steady state no allocation, where `n.to_string().into()`
    /// makes one or two per value. For per-call values (header values, keys); a text kept after
    /// the call holds a chunk of that buffer, so copy one you keep for long.
    pub fn format_text(&mut self, args: fmt::Arguments<'_>) -> Text {
        self.state.format_text(args)
    }

    /// `s` copied into the call's reusable buffer, as [`RequestCall::format_text`] would write
    /// it but without the formatting machinery: for a value built on the stack (a number's
    /// digits, an id) that a plugin sets as a header.
    pub fn copy_text(&mut self, s: &str) -> Text {
        self.state.copy_text(s)
    }

    /// The client's address; `None` when the gateway sent none.
    pub fn src_ip(&self) -> Option<IpAddr> {
        self.req.src_ip
    }

    /// Where the chain is attached at the gateway.
    pub fn attachment(&self) -> Attachment {
        self.attachment
    }

    /// Tells the runner this plugin held the request back (a pacing delay) before letting it
    /// go on: its decision is counted as `delay` rather than `pass` in the runner's metrics.
    /// Nothing else changes.
    pub fn mark_delayed(&mut self) {
        self.state.delayed = true;
    }

    /// Whether the plugin that just ran marked the request delayed; clears the mark.
    pub(crate) fn take_delayed(&mut self) -> bool {
        std::mem::take(&mut self.state.delayed)
    }

    /// The upstream path (percent-decoded, no query), as rewritten so far.
    pub fn path(&self) -> &str {
        self.state.rewrite.path.as_deref().unwrap_or(&self.req.path)
    }

    /// The first value of header `name` (any case), as rewritten so far.
    pub fn header(&self, name: &str) -> Option<&str> {
        if let Some(set) = last_named(&self.state.rewrite.headers, name) {
            return set.value.as_deref();
        }
        sent_header(&self.req.headers, name)
    }

    /// [`RequestCall::header`] as a [`Text`] to keep for the call (to set it as another
    /// header, say): a rewritten value is shared, one the gateway sent is copied into the
    /// call's reusable buffer ([`RequestCall::format_text`]), so neither allocates.
    pub fn header_text(&mut self, name: &str) -> Option<Text> {
        if let Some(set) = last_named(&self.state.rewrite.headers, name) {
            return set.value.clone();
        }
        let req = self.req;
        let value = sent_header(&req.headers, name)?;
        Some(self.state.copy_text(value))
    }

    /// Every value of header `name` (any case), as rewritten so far.
    pub fn header_values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s str> + 's {
        let rewritten = last_named(&self.state.rewrite.headers, name);
        let original = rewritten.is_none().then_some(&self.req.headers);
        rewritten
            .and_then(|p| p.value.as_deref())
            .into_iter()
            .chain(
                original
                    .into_iter()
                    .flatten()
                    .filter(move |h| h.name_eq_ignore_case(name))
                    .filter_map(|h| h.value()),
            )
    }

    /// The request headers as rewritten so far, in order: `(name, value)`, repeats kept. The
    /// headers the gateway sent come first (names lower-cased) minus those a plugin set or
    /// removed, then the ones plugins set.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        let rewritten = &self.state.rewrite.headers;
        let kept = self
            .req
            .headers
            .iter()
            .filter(move |h| !rewritten.iter().any(|r| h.name_eq_ignore_case(&r.name)))
            .filter_map(|h| Some((h.name(), h.value()?)));
        let set = rewritten
            .iter()
            .filter_map(|h| Some((h.name.as_str(), h.value.as_deref()?)));
        kept.chain(set)
    }

    /// The request headers exactly as the gateway sent them, before any plugin of this chain
    /// changed them: names lower-cased, repeats kept, in order.
    ///
    /// The first call in a call makes the list (one allocation); [`RequestCall::header`] and
    /// [`RequestCall::headers`] read the frame without one.
    pub fn original_headers(&self) -> &[Pair] {
        self.req.headers.as_pairs()
    }

    /// The first value of query argument `name`, as rewritten so far; a bare flag (`?debug`) is
    /// `Some("")`.
    pub fn arg(&self, name: &str) -> Option<&str> {
        if let Some(p) = self.state.rewrite.args.iter().find(|a| a.name == *name) {
            // A rewrite's entry without a value is a deletion.
            return p.value.as_deref();
        }
        let a = self.req.args.iter().find(|a| a.name_is(name))?;
        Some(a.value().unwrap_or(""))
    }

    /// [`RequestCall::arg`] as a [`Text`] sharing the frame or the rewrite.
    fn arg_text(&self, name: &str) -> Option<Text> {
        if let Some(p) = self.state.rewrite.args.iter().find(|a| a.name == *name) {
            return p.value.clone();
        }
        let a = self.req.args.iter().find(|a| a.name_is(name))?;
        Some(a.value_text().unwrap_or_default())
    }

    /// The query arguments as rewritten so far, in order: `(name, value)`, decoded, repeats
    /// kept; a bare flag (`?debug`) has no value. The gateway's arguments come first minus those
    /// a plugin set or removed, then the ones plugins set.
    pub fn args(&self) -> impl Iterator<Item = (&str, Option<&str>)> + '_ {
        let rewritten = &self.state.rewrite.args;
        let kept = self
            .req
            .args
            .iter()
            .filter(move |a| !rewritten.iter().any(|r| a.name_is(&r.name)))
            .map(|a| (a.name(), a.value()));
        // In a rewrite an entry without a value deletes the argument.
        let set = rewritten
            .iter()
            .filter_map(|a| Some((a.name.as_str(), Some(a.value.as_deref()?))));
        kept.chain(set)
    }

    /// The query arguments exactly as the gateway sent them: decoded, repeats kept, in order; a
    /// bare flag has no value. Made on the first call in a call, as
    /// [`RequestCall::original_headers`].
    pub fn original_args(&self) -> &[Pair] {
        self.req.args.as_pairs()
    }

    /// The consumer an authentication plugin earlier in the chain identified.
    pub fn consumer(&self) -> Option<&str> {
        self.state.consumer.as_deref()
    }

    /// Records the authenticated consumer for later plugins (and the `consumer_name` variable).
    pub fn set_consumer(&mut self, name: impl Into<Text>) {
        self.state.consumer = Some(name.into());
    }

    /// Stores a value for later plugins of this call; one value per type.
    pub fn insert<T: Any + Send>(&mut self, value: T) {
        self.state.extensions.insert(value);
    }

    /// A value an earlier plugin of this call stored with [`RequestCall::insert`].
    pub fn get<T: Any + Send>(&self) -> Option<&T> {
        self.state.extensions.get()
    }

    /// A gateway variable (`remote_addr`, `route_id`, `http_x_user`, `arg_id`, `cookie_sid`,
    /// `request_time`, ...); `None` when it is nil.
    ///
    /// Free (answered from the request): `remote_addr`, `request_method`, `uri`, `request_uri`,
    /// `args`, `host`, `arg_*`, `http_*`, `cookie_*`, variables the gateway pushed with the
    /// request, and `consumer_name` once an earlier plugin set a consumer. Anything else costs
    /// one round trip to the gateway, once per call. `consumer_name` without a runner consumer is
    /// asked of the gateway only where it can know it (`ext-plugin-post-req`).
    ///
    /// # Errors and cancellation
    ///
    /// `Err` when the round trip fails. When the gateway connection failed or broke the protocol
    /// ([`PluginError::is_gateway_failure`]) the call fails whatever the plugin returns: pass the
    /// error on with `?`. Dropping the future (a timeout, `select!`) is safe: the runner reads
    /// and drops the abandoned answer before it replies or asks again. See
    /// [Gateway round trips](crate#gateway-round-trips).
    pub async fn var(&mut self, name: &str) -> Result<Option<Text>, PluginError> {
        if let Some(local) = self.local_var(name) {
            return Ok(local);
        }
        self.gateway_var(name).await
    }

    /// A variable when it can be had without waiting, for
    /// [`Plugin::request_filter_sync`](crate::Plugin::request_filter_sync): `Some(value)` when
    /// [`RequestCall::var`] would answer without a round trip (request data, a variable the
    /// gateway pushed, one already fetched in this call), `None` when only the gateway can
    /// answer it (decline the synchronous hook then, and ask with `var`).
    pub fn var_now(&mut self, name: &str) -> Option<Option<Text>> {
        if let Some(local) = self.local_var(name) {
            return Some(local);
        }
        if let Some(pushed) = self.pushed_var(name) {
            return Some(pushed);
        }
        self.state
            .vars
            .get(name)
            .map(|fetched| fetched.clone().map(bytes_to_text))
    }

    /// A variable as the gateway holds it: like [`RequestCall::var`], but asked of the gateway
    /// (one round trip, cached for the call) even when `var` would answer it from the request.
    /// For values whose exact bytes matter: `request_uri` here is the path and query exactly as
    /// the client sent them (what a request signature covers), while `var("request_uri")`
    /// re-encodes the decoded path and arguments.
    ///
    /// # Errors and cancellation
    ///
    /// As [`RequestCall::var`]: `Err` when the round trip fails (a gateway failure fails the call
    /// whatever the plugin returns); dropping the future is safe.
    pub async fn gateway_var(&mut self, name: &str) -> Result<Option<Text>, PluginError> {
        if let Some(pushed) = self.pushed_var(name) {
            return Ok(pushed);
        }
        let fetched = self.state.vars.get_or_fetch(self.gateway, name).await?;
        Ok(fetched.map(bytes_to_text))
    }

    /// `Some(value)` for a variable the gateway sent with the call, `None` for the others.
    fn pushed_var(&self, name: &str) -> Option<Option<Text>> {
        let pushed = self.req.extra_info.iter().find(|p| p.name == *name)?;
        Some(pushed.value.clone().map(bytes_to_text))
    }

    /// `Some(value)` for variables answered without the gateway, `None` for the others.
    fn local_var(&mut self, name: &str) -> Option<Option<Text>> {
        Some(match name {
            "remote_addr" => self.req.src_ip.map(|ip| self.state.ip_text(ip)),
            "request_method" => Some(Text::from_static(self.req.method.as_str())),
            "uri" => Some(
                self.state
                    .rewrite
                    .path
                    .clone()
                    .unwrap_or_else(|| self.req.path.clone()),
            ),
            "request_uri" => {
                let mut s = String::new();
                encode_path(&self.req.path, &mut s);
                if !self.req.args.is_empty() {
                    s.push('?');
                    encode_args(self.req.args.as_pairs(), &mut s);
                }
                Some(s.into())
            }
            "args" => {
                let mut s = String::new();
                encode_args(self.req.args.as_pairs(), &mut s);
                Some(s.into())
            }
            "host" => self.header("host").map(|h| {
                let host = match h.rsplit_once(':') {
                    Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
                    _ => h,
                };
                Text::from(host.to_ascii_lowercase())
            }),
            "consumer_name" => match (&self.state.consumer, self.attachment) {
                (Some(c), _) => Some(c.clone()),
                (None, Attachment::PostReq | Attachment::Other) => return None,
                (None, _) => None,
            },
            _ => {
                if let Some(arg) = name.strip_prefix("arg_") {
                    self.arg_text(arg)
                } else if let Some(header) = name.strip_prefix("http_") {
                    self.joined_header(header)
                } else if let Some(cookie) = name.strip_prefix("cookie_") {
                    self.cookie(cookie)
                } else {
                    return None;
                }
            }
        })
    }

    /// Cookie `name` from the (possibly rewritten) `Cookie` headers, sharing their storage.
    fn cookie(&self, name: &str) -> Option<Text> {
        if let Some(p) = last_named(&self.state.rewrite.headers, "cookie") {
            let header = p.value.as_ref()?;
            return cookie_value(header, name).map(|v| header.slice_ref(v));
        }
        self.req
            .headers
            .iter()
            .filter(|h| h.name_eq_ignore_case("cookie"))
            .find_map(|h| {
                let header = h.value_text()?;
                cookie_value(&header, name).map(|v| header.slice_ref(v))
            })
    }

    /// Header values for an `http_*` variable, joined with `, ` as nginx joins repeats.
    fn joined_header(&self, var: &str) -> Option<Text> {
        if let Some(p) = self
            .state
            .rewrite
            .headers
            .iter()
            .rev()
            .find(|p| header_matches_var(&p.name, var))
        {
            return p.value.clone();
        }
        let mut values = self
            .req
            .headers
            .iter()
            .filter(|h| header_matches_var(h.name(), var));
        let first = values.by_ref().find_map(|h| h.value_text())?;
        let mut values = values.filter_map(|h| h.value());
        match values.next() {
            None => Some(first),
            Some(second) => {
                let mut joined = format!("{first}, {second}");
                for v in values {
                    joined.push_str(", ");
                    joined.push_str(v);
                }
                Some(joined.into())
            }
        }
    }

    /// The request body as rewritten so far, else the client's (fetched from the gateway at most
    /// once per call); `None` when the request has none.
    ///
    /// # Errors and cancellation
    ///
    /// As [`RequestCall::var`]: `Err` when the round trip fails (a gateway failure fails the call
    /// whatever the plugin returns); dropping the future is safe.
    pub async fn body(&mut self) -> Result<Option<Bytes>, PluginError> {
        if let Some(body) = &self.state.rewrite.body {
            return Ok(Some(body.clone()));
        }
        if let Some(body) = &self.state.body {
            return Ok(body.clone());
        }
        let body = self.gateway.fetch(ExtraInfoReq::ReqBody).await?;
        self.state.body = Some(body.clone());
        Ok(body)
    }

    /// Rewrites the upstream path (raw, no `?`; the gateway escapes it).
    pub fn set_path(&mut self, path: impl Into<Text>) {
        self.state.rewrite.path = Some(path.into());
    }

    /// Sets request header `name`, replacing every value it had. `host` also changes the
    /// upstream Host. The protocol cannot append a second value to a header.
    pub fn set_header(&mut self, name: impl Into<Text>, value: impl Into<Text>) {
        push_replacing(&mut self.state.rewrite.headers, Pair::new(name, value));
    }

    /// Removes request header `name` (every value).
    pub fn remove_header(&mut self, name: impl Into<Text>) {
        push_replacing(&mut self.state.rewrite.headers, Pair::absent(name));
    }

    /// Sets query argument `name` to one value, replacing every value it had.
    pub fn set_arg(&mut self, name: impl Into<Text>, value: impl Into<Text>) {
        let pair = Pair::new(name, value);
        self.state.rewrite.args.retain(|a| a.name != pair.name);
        self.state.rewrite.args.push(pair);
    }

    /// Adds a value to query argument `name`, keeping the values it has.
    pub fn append_arg(&mut self, name: impl Into<Text>, value: impl Into<Text>) {
        let pair = Pair::new(name, value);
        let args = &mut self.state.rewrite.args;
        if !args.iter().any(|a| a.name == pair.name) {
            // On the wire the first entry of a name replaces the argument, so the values the
            // request already has are sent first.
            args.extend(
                self.req
                    .args
                    .iter()
                    .filter(|a| a.name_is(&pair.name))
                    .map(|a| a.to_pair()),
            );
        }
        args.push(pair);
    }

    /// Deletes query argument `name`.
    pub fn remove_arg(&mut self, name: impl Into<Text>) {
        let pair = Pair::absent(name);
        self.state.rewrite.args.retain(|a| a.name != pair.name);
        self.state.rewrite.args.push(pair);
    }

    /// Sets a header on the client's response, whether the request is proxied or stopped by a
    /// later plugin. Stock APISIX ignores connection, content-length, transfer-encoding,
    /// location, server, www-authenticate, content-encoding, content-type, content-location and
    /// content-language here.
    pub fn set_response_header(&mut self, name: impl Into<Text>, value: impl Into<Text>) {
        push_replacing(&mut self.state.rewrite.resp_headers, Pair::new(name, value));
    }

    /// Deletes header `name` from the client's response (the names `set_response_header`
    /// cannot set cannot be deleted either).
    pub fn remove_response_header(&mut self, name: impl Into<Text>) {
        push_replacing(&mut self.state.rewrite.resp_headers, Pair::absent(name));
    }

    /// Replaces the request body sent upstream.
    pub fn set_body(&mut self, body: impl Into<Bytes>) {
        self.state.rewrite.body = Some(body.into());
    }
}

/// The last entry named `name` (any case): the one the gateway applies.
fn last_named<'p>(pairs: &'p [Pair], name: &str) -> Option<&'p Pair> {
    pairs
        .iter()
        .rev()
        .find(|p| p.name.eq_ignore_ascii_case(name))
}

/// The first value of header `name` (any case) as the gateway sent it.
fn sent_header<'e>(headers: &'e Entries, name: &str) -> Option<&'e str> {
    headers
        .iter()
        .find(|h| h.name_eq_ignore_case(name))
        .and_then(|h| h.value())
}

/// Records a set/delete, dropping earlier entries of the same name so the rewrite stays small.
fn push_replacing(pairs: &mut Vec<Pair>, pair: Pair) {
    pairs.retain(|p| !p.name.eq_ignore_ascii_case(&pair.name));
    pairs.push(pair);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatted_texts_reuse_one_buffer_without_touching_live_ones() {
        let mut state = CallState::default();
        let kept = state.format_text(format_args!("{}", 42));
        let mut live = std::collections::VecDeque::new();
        for i in 0..2000u32 {
            let t = state.format_text(format_args!("value {i}"));
            assert_eq!(t, format!("value {i}").as_str());
            live.push_back(t);
            if live.len() > 3 {
                live.pop_front();
            }
            if i % 100 == 0 {
                // A call's end: its texts are gone, the buffer can be reclaimed.
                live.clear();
            }
        }
        assert_eq!(kept, "42", "a text kept across calls is never overwritten");
        assert!(live.iter().all(|t| t.starts_with("value ")));
    }

    #[test]
    fn header_text_reads_the_header_as_rewritten_so_far() {
        let req = crate::harness::request(crate::Method::Get, "/").with_header("x-id", "sent");
        let mut test = crate::harness::TestCall::new(req);
        let mut call = test.call();
        assert_eq!(call.header_text("X-Id").as_deref(), Some("sent"));
        assert_eq!(call.header_text("x-other"), None);
        call.set_header("X-Id", "rewritten");
        assert_eq!(call.header_text("x-id").as_deref(), Some("rewritten"));
        call.remove_header("x-id");
        assert_eq!(call.header_text("x-id"), None);
        assert_eq!(call.format_text(format_args!("{}-{}", 1, "a")), "1-a");
        assert_eq!(call.copy_text("copied"), "copied");
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        let mut state = CallState::default();
        for octet in 0..=255u8 {
            for ip in [
                [octet, 0, 9, 10],
                [1, octet, 99, 100],
                [255, 200, octet, 1],
                [0, 0, 0, octet],
            ] {
                let ip = IpAddr::from(ip);
                assert_eq!(state.ip_text(ip), ip.to_string().as_str());
            }
        }
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(state.ip_text(v6), "2001:db8::1");
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(state.ip_text(mapped), mapped.to_string().as_str());
    }
}
