//! Requests and chains as a gateway sends them, for tests.

use std::net::IpAddr;

use bytes::Bytes;

use crate::model::{DataPair, HttpReqCallReq, Method, Pair, PrepareConfReq};

/// The `prepare_conf` request for a chain of `(plugin name, JSON conf)` entries under `key`.
pub fn prepare_request(key: &str, chain: &[(&str, &str)]) -> PrepareConfReq {
    PrepareConfReq {
        key: key.to_owned().into(),
        conf: chain
            .iter()
            .map(|(n, c)| Pair::new(n.to_string(), c.to_string()))
            .collect(),
    }
}

/// A request as a gateway sends it: from 127.0.0.1, no args, no headers.
pub fn request(method: Method, path: &str) -> HttpReqCallReq {
    HttpReqCallReq {
        method,
        path: path.to_owned().into(),
        src_ip: Some(IpAddr::from([127, 0, 0, 1])),
        ..HttpReqCallReq::default()
    }
}

/// Builders for test requests.
impl HttpReqCallReq {
    /// Adds a header (names as the gateway sends them: lower case).
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push(Pair::new(name.to_owned(), value.to_owned()));
        self
    }

    /// Adds a query argument.
    pub fn with_arg(mut self, name: &str, value: &str) -> Self {
        self.args.push(Pair::new(name.to_owned(), value.to_owned()));
        self
    }

    /// A bare query flag (`?name`).
    pub fn with_flag(mut self, name: &str) -> Self {
        self.args.push(Pair::absent(name.to_owned()));
        self
    }

    /// Sets the client address.
    ///
    /// # Panics
    /// When `ip` is not an IP address (a test's own mistake).
    pub fn with_src_ip(mut self, ip: &str) -> Self {
        self.src_ip = Some(ip.parse().expect("a valid IP address"));
        self
    }

    /// A variable pushed with the request (Cap'n Proto `extraInfo`).
    pub fn with_pushed_var(mut self, name: &str, value: Option<&str>) -> Self {
        self.extra_info.push(DataPair {
            name: name.to_owned().into(),
            value: value.map(|v| Bytes::copy_from_slice(v.as_bytes())),
        });
        self
    }
}
