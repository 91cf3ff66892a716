# The ext-plugin protocol in Cap'n Proto: the contract between an API gateway and an external
# plugin runner. Gateways other than Apache APISIX implement this file; keep names and ordinals
# stable (add fields only at the end of a struct, never renumber).
#
# Transport: a Unix domain stream socket; the gateway connects, the runner listens. Every message
# travels in a frame:
#
#   byte 0      message type (u8): 0 error, 1 prepare_conf, 2 http_req_call, 3 extra_info,
#               4 http_resp_call
#   bytes 1..3  payload length, unsigned 24-bit big-endian (at most 16 777 215, never 0)
#   bytes 4..   payload: ONE message in the standard (unpacked) Cap'n Proto serialization,
#               segment table included; the table accounts exactly for the payload's length
#
# A connection carries one call at a time and many calls in sequence:
#
#   gateway -> runner   type 1 PrepareConfReq     runner -> gateway  type 1 PrepareConfResp
#   gateway -> runner   type 2 HTTPReqCallReq     runner -> gateway  type 2 HTTPReqCallResp
#   gateway -> runner   type 4 HTTPRespCallReq    runner -> gateway  type 4 HTTPRespCallResp
#   (any of them)                                 runner -> gateway  type 0 ErrorResp
#
# Inside a type 2 or type 4 call, before its final reply, the runner may send any number of
# type 3 ExtraInfoReq frames; the gateway answers each with a type 3 ExtraInfoResp.
#
# Text is UTF-8. A Text or Data field that is null (pointer not set) is ABSENT, which differs from
# an empty value wherever this file says so.

@0xb5301c91908b3bc4;

# A name with an optional text value. Used for plugin chains, query arguments and headers.
struct Pair {
  name @0 :Text;
  # Plugin name, argument name or header name (request header names arrive lower-cased).

  value @1 :Text;
  # Null = absent. On input an absent argument value is a bare flag (`?debug`), distinct from an
  # empty one (`?debug=`). On output (Rewrite, Stop) an absent value deletes the entry.
}

# A name with an optional binary value: gateway variables pushed up front.
struct PairData {
  name @0 :Text;
  # Variable name, as the gateway knows it (`route_id`, `request_time`, `http_x_user`, ...).

  value @1 :Data;
  # Null = the variable is nil at the gateway; empty = the empty string.
}

# The HTTP request method, in the order stock APISIX numbers it.
enum Method {
  get @0;
  head @1;
  post @2;
  put @3;
  delete @4;
  mkcol @5;
  copy @6;
  move @7;
  options @8;
  propfind @9;
  proppatch @10;
  lock @11;
  unlock @12;
  patch @13;
  trace @14;
}

# Why a call failed. Sent by the runner in a type 0 frame instead of the call's reply.
enum ErrorCode {
  badRequest @0;
  # The frame type is unknown or the payload could not be decoded. The connection stays usable
  # when the frame boundary was known.

  serviceUnavailable @1;
  # A plugin failed (error, panic or deadline) while serving the call.

  confTokenNotFound @2;
  # The call named a conf token the runner does not know (never issued, expired, or issued by a
  # previous runner process). The gateway prepares the conf again and retries.
}

# Type 0, runner -> gateway.
struct ErrorResp {
  code @0 :ErrorCode;
}

# Type 1, gateway -> runner: hand over a plugin chain, get a token for it.
struct PrepareConfReq {
  conf @0 :List(Pair);
  # The ordered plugin chain: `name` = plugin name, `value` = its JSON configuration as a string.
  # Null or empty = an empty chain (every call continues unchanged).

  key @1 :Text;
  # `conf_type#conf_id#<gateway plugin name>#<version>`, e.g. `route#1#ext-plugin-pre-req#12`.
  # The same key within the cache lifetime yields the same token.
}

# Type 1, runner -> gateway.
struct PrepareConfResp {
  confToken @0 :UInt32;
  # Non-zero. Valid until the runner forgets the conf (at least 1.2 x the conf expiry after its
  # last use); afterwards calls naming it get confTokenNotFound.
}

# Type 2, gateway -> runner: run the chain for one request.
struct HTTPReqCallReq {
  id @0 :UInt32;
  # Chosen by the gateway; echoed in the reply.

  srcIp @1 :Data;
  # The client address: 4 bytes (IPv4) or 16 bytes (IPv6), network order.

  method @2 :Method;

  path @3 :Text;
  # Percent-decoded request path, without the query string.

  args @4 :List(Pair);
  # Decoded query arguments in request order; a repeated name is several entries.

  headers @5 :List(Pair);
  # Request headers, names lower-cased; a repeated name is several entries.

  confToken @6 :UInt32;
  # A token from PrepareConfResp.

  extraInfo @7 :List(PairData);
  # Variables the gateway pushes up front. A variable listed here is answered from this list
  # without an ExtraInfoReq round trip. May be null.
}

# Type 2, runner -> gateway: what the gateway does with the request.
struct HTTPReqCallResp {
  id @0 :UInt32;
  # The request's id.

  action :union {
    continue @1 :Void;
    # Proxy the request unchanged.

    stop @2 :Stop;
    # Answer the client now; the upstream is not called.

    rewrite @3 :Rewrite;
    # Change the request, then proxy it.
  }
}

# Answer the client directly.
struct Stop {
  status @0 :UInt16;
  # HTTP status; 0 means 200.

  headers @1 :List(Pair);
  # Response headers, added in order (a repeated name appears several times); an absent value
  # removes the header.

  body @2 :Data;
  # Response body; null or empty = no body.
}

# Change the request before it is proxied. Null fields leave that part unchanged.
struct Rewrite {
  path @0 :Text;
  # New upstream path, raw, without `?` (the gateway escapes it). Null = keep.

  headers @1 :List(Pair);
  # Request headers to set, in order (the last duplicate wins); an absent value deletes the
  # header. Setting `host` also changes the upstream Host.

  args @2 :List(Pair);
  # Query arguments: the first entry of a name replaces that argument, later entries of the same
  # name append; an absent value deletes the argument.

  respHeaders @3 :List(Pair);
  # Headers set on the client's response. Stock APISIX ignores connection, content-length,
  # transfer-encoding, location, server, www-authenticate, content-encoding, content-type,
  # content-location and content-language here.

  body @4 :Data;
  # Replaces the request body. Null = keep the body.
}

# Type 3, runner -> gateway, only while a type 2 or type 4 call is open: ask for data the call
# did not carry.
struct ExtraInfoReq {
  info :union {
    var @0 :Text;
    # A gateway variable by name (`route_id`, `remote_addr`, `request_time`, `arg_x`, `http_x`,
    # `cookie_x`, ...).

    reqBody @1 :Void;
    # The request body.

    respBody @2 :Void;
    # The upstream response body; only inside a type 4 call, and at most once per call.
  }
}

# Type 3, gateway -> runner: the answer to one ExtraInfoReq.
struct ExtraInfoResp {
  result @0 :Data;
  # Null = the variable is nil / there is no body; empty = the empty string / an empty body.
}

# Type 4, gateway -> runner: the upstream answered; run the chain's response phase.
struct HTTPRespCallReq {
  id @0 :UInt32;
  # Chosen by the gateway; unrelated to any HTTPReqCallReq id. Echoed in the reply.

  status @1 :UInt16;
  # The upstream's status.

  headers @2 :List(Pair);
  # The upstream's response headers, in their original case; repeats are several entries.

  confToken @3 :UInt32;
  # A token from PrepareConfResp.
}

# Type 4, runner -> gateway.
struct HTTPRespCallResp {
  id @0 :UInt32;
  # The request's id.

  status @1 :UInt16;
  # New status; 0 keeps the upstream's.

  headers @2 :List(Pair);
  # When non-empty, the COMPLETE set of response headers: the gateway sends only these, not the
  # upstream's. Null or empty = keep the upstream's headers.

  body @3 :Data;
  # Replaces the response body. Null = keep the upstream's body.
}
