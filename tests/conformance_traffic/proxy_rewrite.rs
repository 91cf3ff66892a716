//! proxy-rewrite against APISIX's t/plugin/proxy-rewrite*.t.
//!
//! APISIX's test upstream echoes what it received; here the same is read from the rewrite: the
//! path the runner sends (decoded: the gateway encodes it, so `%3F` in it reaches the upstream
//! as `%253F`, as in APISIX), the headers and the arguments as the gateway applies them.

use crate::kit::why::ADMIN_OUTPUT;
use crate::kit::*;

const P: &str = "proxy-rewrite";

const NO_PLUGIN: &str = "the route without the plugin: the gateway's own X-Forwarded-* handling";
const METHOD: &str = "rewrites the request method, which the ext-plugin protocol cannot change \
                      (the runner refuses `method`)";
const RAW_URI: &str = "`use_real_request_uri_unsafe: true` passes the raw request line on; the \
                       protocol carries the decoded path only (the runner refuses it)";
const SEVERAL_LINES: &str =
    "asserts several header lines of one name; the protocol sets one value \
                             per header, so the runner sends them joined with `, ` (HTTP's same \
                             list), as the block before pins";

pub fn suite() -> Suite {
    Suite::new(
        P,
        &[
            ("proxy-rewrite.t", 66),
            ("proxy-rewrite2.t", 11),
            ("proxy-rewrite3.t", 43),
        ],
    )
    .skip("proxy-rewrite.t", [4], NO_PLUGIN)
    .skip("proxy-rewrite.t", [35], ADMIN_OUTPUT)
    .skip("proxy-rewrite.t", 45..=55, RAW_URI)
    .skip("proxy-rewrite.t", [59, 61, 63, 65], SEVERAL_LINES)
    .skip("proxy-rewrite2.t", [2, 3, 6, 8], NO_PLUGIN)
    .skip("proxy-rewrite3.t", [1, 2, 3, 4, 6, 7], METHOD)
    .skip("proxy-rewrite3.t", [8, 9, 10, 11, 40, 41], RAW_URI)
    .cases(proxy_rewrite_t())
    .cases(proxy_rewrite2_3_t())
}

fn proxy_rewrite_t() -> Vec<Case> {
    let f = "proxy-rewrite.t";
    let hello = || get("/hello");
    vec![
        case(f, &[1]).conf(P, r#"{"uri": "/apisix/home", "host": "apisix.iresty.com"}"#),
        case(f, &[2]).conf(P, r#"{"uri": "/test/add", "host": "apisix.iresty.com"}"#),
        case(f, &[3]).conf(P, r#"{"uri": "/test/update", "host": "apisix.iresty.com"}"#),
        case(f, &[5, 6])
            .conf(P, r#"{"uri": "/plugin_proxy_rewrite", "host": "apisix.iresty.com"}"#)
            .send(hello(), pass().path("/plugin_proxy_rewrite").up("host", "apisix.iresty.com"))
            .wire(),
        // The upstream's scheme is the upstream's conf.
        case(f, &[7, 8])
            .conf(P, r#"{"uri": "/plugin_proxy_rewrite", "host": "test.com"}"#)
            .send(hello(), pass().path("/plugin_proxy_rewrite").up("host", "test.com")),
        case(f, &[9, 10])
            .conf(P, r#"{"uri": "/uri/plugin_proxy_rewrite", "headers": {"X-Api-Version": "v2"}}"#)
            .send(
                hello().with_header("x-api-version", "v1"),
                pass().path("/uri/plugin_proxy_rewrite").up("x-api-version", "v2"),
            ),
        case(f, &[11, 12])
            .conf(P, r#"{"uri": "/uri/plugin_proxy_rewrite", "headers": {"X-Api-Engine": "apisix"}}"#)
            .send(hello(), pass().up("x-api-engine", "apisix")),
        case(f, &[13, 14])
            .conf(P, r#"{"uri": "/uri/plugin_proxy_rewrite", "headers": {"X-Api-Test": "hello"}}"#)
            .send(hello().with_header("x-api-test", ""), pass().up("x-api-test", "hello")),
        case(f, &[15, 16])
            .conf(P, r#"{"uri": "/plugin_proxy_rewrite_args"}"#)
            .send(
                get("/hello?q=apisix&a=iresty"),
                pass().path("/plugin_proxy_rewrite_args").arg("q", &["apisix"]).arg("a", &["iresty"]),
            ),
        case(f, &[17, 18])
            .conf(P, r#"{"uri": "/plugin_proxy_rewrite_args"}"#)
            .send(hello(), pass().path("/plugin_proxy_rewrite_args")),
        // An empty value removes the header.
        case(f, &[19, 20])
            .conf(P, r#"{"uri": "/uri/plugin_proxy_rewrite", "headers": {"X-Api-Engine": "APISIX", "X-Api-Test": ""}}"#)
            .send(
                hello().with_header("x-api-test", "foo").with_header("x-api-engine", "bar"),
                pass().up("x-api-engine", "APISIX").up_none("x-api-test"),
            )
            .wire(),
        case(f, &[21, 22, 23])
            .conf(P, r#"{"regex_uri": ["^/test/(.*)/(.*)/(.*)", "/$1_$2_$3"]}"#)
            .send(get("/test/plugin/proxy/rewrite"), pass().path("/plugin_proxy_rewrite"))
            .send(get("/test/not/found"), pass().path("/test/not/found")),
        case(f, &[24, 25])
            .conf(P, r#"{"uri": "/hello", "regex_uri": ["^/test/(.*)", "/${1}1"]}"#)
            .send(get("/test/hello"), pass().path("/hello")),
        case(f, &[26]).refused(P, r#"{"regex_uri": ["^/test/(.*)"]}"#, "pairs"),
        case(f, &[27]).refused(P, r#"{"regex_uri": ["[^/test/(.*)", "/$1"]}"#, "regex_uri[0]"),
        case(f, &[28]).refused(P, r#"{"regex_uri": ["^/test/(.*)", "/$`1"]}"#, "regex_uri[1]"),
        case(f, &[29]).refused(P, r#"{"uri": "hello"}"#, "`uri`"),
        case(f, &[30]).refused(P, r#"{"uri": "home"}"#, "`uri`"),
        case(f, &[31]).refused(P, r#"{"uri": "/uri/plugin_proxy_rewrite", "headers": {"X-Api:Version": "v2"}}"#, "not a header name"),
        case(f, &[32]).refused(P, r#"{"uri": "/uri/plugin_proxy_rewrite", "headers": {"X-Api-Version": "v2\r\n"}}"#, "line break"),
        // The uri's own query goes first, the request's follows.
        case(f, &[33, 34])
            .conf(P, r#"{"uri": "/plugin_proxy_rewrite_args?q=apisix"}"#)
            .send(
                get("/hello?a=iresty"),
                pass().path("/plugin_proxy_rewrite_args").arg("q", &["apisix"]).arg("a", &["iresty"]),
            )
            .wire(),
        case(f, &[36, 37])
            .conf(P, r#"{"uri": "/uri", "headers": {"x-api": "$remote_addr", "name": "$arg_name", "x-key": "$http_key"}}"#)
            .send(
                get("/hello?name=Bill").with_header("key", "X-APISIX"),
                pass()
                    .path("/uri")
                    .up("key", "X-APISIX")
                    .up("name", "Bill")
                    .up("x-api", "127.0.0.1")
                    .up("x-key", "X-APISIX"),
            ),
        case(f, &[38, 39])
            .conf(
                P,
                r#"{"uri": "/uri", "headers": {"x-api": "$helle", "name": "$arg_world", "x-key": "$http_key",
                                               "Version": "nginx_var_does_not_exist"}}"#,
            )
            .send(
                hello(),
                pass()
                    .path("/uri")
                    .up("version", "nginx_var_does_not_exist")
                    .up_none("x-api")
                    .up_none("name")
                    .up_none("x-key"),
            ),
        case(f, &[40, 41])
            .conf(P, r#"{"uri": "/$arg_new_uri"}"#)
            .send(get("/test?new_uri=hello"), pass().path("/hello")),
        case(f, &[42]).conf(P, r#"{"host": "apisix.iresty.com:6443"}"#),
        // APISIX's serverless function beside it checks $uri; here the path sent is checked.
        case(f, &[43, 44])
            .conf(P, r#"{"uri": "/uri", "host": "test.com:6443"}"#)
            .send(hello(), pass().path("/uri").up("host", "test.com:6443")),
        case(f, &[56, 57])
            .conf(P, r#"{"uri": "/print_uri_detailed", "use_real_request_uri_unsafe": false}"#)
            .send(
                get("/hello?name=a%20b&x=1"),
                pass().path("/print_uri_detailed").arg("name", &["a b"]).arg("x", &["1"]),
            ),
        // One header, the values joined: the upstream reads the same list.
        case(f, &[58])
            .conf(P, r#"{"uri": "/plugin_proxy_rewrite_multi_header", "headers": {"set": {"x-multi": ["val1", "val2"]}}}"#)
            .send(hello().with_header("x-multi", "origin"), pass().up("x-multi", "val1, val2")),
        case(f, &[60])
            .conf(P, r#"{"uri": "/plugin_proxy_rewrite_multi_header", "headers": {"add": {"x-multi": ["val1", "val2"]}}}"#)
            .send(hello().with_header("x-multi", "origin"), pass().up("x-multi", "origin, val1, val2")),
        case(f, &[62])
            .conf(
                P,
                r#"{"regex_uri": ["^/test/(.*)", "/plugin_proxy_rewrite_multi_header"],
                    "headers": {"set": {"x-multi": ["cap-$1", "$http_x_src"]}}}"#,
            )
            .send(
                get("/test/echo").with_header("x-src", "from-src"),
                pass().path("/plugin_proxy_rewrite_multi_header").up("x-multi", "cap-echo, from-src"),
            ),
        case(f, &[64])
            .conf(
                P,
                r#"{"regex_uri": ["^/test/(.*)", "/plugin_proxy_rewrite_multi_header"],
                    "headers": {"add": {"x-multi": ["cap-$1", "$http_x_src"]}}}"#,
            )
            .send(get("/test/echo").with_header("x-src", "from-src"), pass().up("x-multi", "cap-echo, from-src")),
        // A line break reflected from the path lands in an argument, which the gateway encodes.
        case(f, &[66])
            .conf(P, r#"{"regex_uri": ["^(/reflect.*)", "/print_request_received?orig=$1"]}"#)
            .send(
                get("/reflect%0d%0aX-Injected:pwn"),
                pass().path("/print_request_received").arg("orig", &["/reflect\r\nX-Injected:pwn"]),
            ),
    ]
}

fn proxy_rewrite2_3_t() -> Vec<Case> {
    let (f2, f3) = ("proxy-rewrite2.t", "proxy-rewrite3.t");
    let echo = || get("/echo");
    let path = "/hello?0z=700&a=c HTTP/1.1\r\nHost:google.com\r\n\r\n";
    vec![
        case(f2, &[1])
            .conf(P, r#"{"uri": "/plugin_proxy_rewrite"}"#)
            .send(get("/hello"), pass().path("/plugin_proxy_rewrite")),
        case(f2, &[4])
            .conf(P, r#"{"headers": {"X-Forwarded-Proto": "https"}}"#)
            .send(echo().with_header("x-forwarded-proto", "grpc"), pass().up("x-forwarded-proto", "https")),
        case(f2, &[5])
            .conf(P, r#"{"headers": {"X-Forwarded-Proto": "https-rewrite"}}"#)
            .send(echo().with_header("x-forwarded-proto", "grpc"), pass().up("x-forwarded-proto", "https-rewrite")),
        case(f2, &[7])
            .conf(P, r#"{"headers": {"X-Forwarded-Port": 10080}}"#)
            .send(echo().with_header("x-forwarded-port", "8080"), pass().up("x-forwarded-port", "10080"))
            .wire(),
        case(f2, &[9])
            .conf(P, r#"{"headers": {"remove": ["X-Forwarded-Host"]}}"#)
            .send(echo(), pass().up_none("x-forwarded-host")),
        case(f2, &[10])
            .conf(P, r#"{"headers": {"remove": ["X-Forwarded-Host"]}}"#)
            .send(echo().with_header("x-forwarded-host", "client.example.com"), pass().up_none("x-forwarded-host")),
        case(f2, &[11])
            .conf(P, r#"{"headers": {"X-Forwarded-Host": "my-upstream.example.com"}}"#)
            .send(
                echo().with_header("x-forwarded-host", "client.example.com"),
                pass().up("x-forwarded-host", "my-upstream.example.com"),
            ),
        case(f3, &[5]).refused(P, r#"{"uri": "/apisix/home", "method": "GET1", "host": "apisix.iresty.com"}"#, "method"),
        case(f3, &[12, 13])
            .conf(P, r#"{"headers": {"X-Forwarded-Host": "test.com"}}"#)
            .send(echo().with_header("x-forwarded-host", "apisix.ai"), pass().up("x-forwarded-host", "test.com")),
        case(f3, &[14, 15, 16, 17, 18])
            .conf(P, r#"{"headers": {"add": {"test": "123"}, "set": {"test2": "2233"}, "remove": ["hello"]}}"#)
            .send(
                echo().with_header("test", "sssss").with_header("test", "bbb"),
                pass().up("test", "sssss, bbb, 123"),
            )
            .send(echo().with_header("test", "sssss"), pass().up("test", "sssss, 123"))
            .send(echo().with_header("hello", "word"), pass().up_none("hello"))
            .send(echo(), pass().up("test2", "2233"))
            .wire(),
        case(f3, &[19, 20])
            .conf(P, r#"{"headers": {"add": {"test": "test_in_add"}, "set": {"test": "test_in_set"}}}"#)
            .send(echo(), pass().up("test", "test_in_set")),
        // The path is left alone: the gateway encodes it as it came.
        case(f3, &[21, 22])
            .conf(P, r#"{"host": "test.xxxx.com"}"#)
            .send(get("/hello%3f0z=700%26a=c%20HTTP/1.1%0D%0AHost:google.com%0d%0a%0d%0a"), pass().path(path).up("host", "test.xxxx.com")),
        // `?` from the variable stays in the path, escaped.
        case(f3, &[23, 24])
            .conf(P, r#"{"uri": "/$uri/remain", "host": "test.xxxx.com"}"#)
            .send(
                get("/hello%3f0z=700%26a=c%20HTTP/1.1%0D%0AHost:google.com%0d%0a%0d%0a"),
                pass()
                    .path("//hello%3F0z=700&a=c HTTP/1.1\r\nHost:google.com\r\n\r\n/remain")
                    .up("host", "test.xxxx.com"),
            ),
        case(f3, &[25, 26])
            .conf(P, r#"{"regex_uri": ["^/test/(.*)/(.*)/(.*)", "/$1_$2_$3?a=c"]}"#)
            .send(get("/test/plugin/proxy/rewrite"), pass().path("/plugin_proxy_rewrite").arg("a", &["c"])),
        case(f3, &[27, 28])
            .conf(P, r#"{"regex_uri": ["^/test/(.*)/(.*)/(.*)", "/echo"], "headers": {"add": {"X-Request-ID": "$1/$2/$3"}}}"#)
            .send(get("/test/plugin/proxy/rewrite"), pass().path("/echo").up("x-request-id", "plugin/proxy/rewrite")),
        case(f3, &[29, 30])
            .conf(P, r#"{"regex_uri": ["^/test/(.*)/(.*)/(.*)", "/echo"], "headers": {"add": {"X-Request-ID": "$1/$2/$3"}}}"#)
            .send(echo().with_header("x-foo", "Foo"), pass().up("x-foo", "Foo").up("x-request-id", "//")),
        case(f3, &[31, 32])
            .conf(P, r#"{"regex_uri": ["^/test/(not_matched)?.*", "/echo"], "headers": {"add": {"X-Request-ID": "test1/$1/$2/test2"}}}"#)
            .send(get("/test/plugin/proxy/rewrite"), pass().path("/echo").up("x-request-id", "test1///test2")),
        case(f3, &[33, 34])
            .conf(P, r#"{"headers": {"X-Forwarded-Port": "9882"}}"#)
            .send(echo().with_header("x-forwarded-port", "9881"), pass().up("x-forwarded-port", "9882")),
        // The gateway appends the client address when it proxies.
        case(f3, &[35, 36])
            .conf(P, r#"{"headers": {"X-Forwarded-For": "22.22.22.22"}}"#)
            .send(echo().with_header("x-forwarded-for", "11.11.11.11"), pass().up("x-forwarded-for", "22.22.22.22")),
        case(f3, &[37, 38, 39])
            .conf(
                P,
                r#"{"regex_uri": ["^/test/(.*)/(.*)/(.*)/hello", "/hello/$1_$2_$3",
                                  "^/test/(.*)/(.*)/(.*)/world", "/world/$1_$2_$3"]}"#,
            )
            .send(get("/test/plugin/proxy/rewrite/hello"), pass().path("/hello/plugin_proxy_rewrite"))
            .send(get("/test/plugin/proxy/rewrite/world"), pass().path("/world/plugin_proxy_rewrite")),
        case(f3, &[42, 43])
            .conf(P, r#"{"use_real_request_uri_unsafe": false}"#)
            .send(get("/print%5Furi%5Fdetailed"), pass().path("/print_uri_detailed")),
    ]
}

run_the_table!();
