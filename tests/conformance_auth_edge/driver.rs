//! The conformance driver: APISIX's test cases for a plugin, restated as data, run over the
//! socket against a real runner through the fake gateway, speaking FlatBuffers as stock APISIX
//! does.
//!
//! A [`Case`] is one conf (a chain) and either a verdict on the conf (`prepare_conf` accepts or
//! refuses it) or one request and what must come of it: a stop (status, body, headers) or a
//! proxied request (what the upstream sees once the rewrite is applied, and the response headers
//! the gateway is asked to set). A case names the APISIX test file and the `=== TEST` numbers it
//! stands for. A [`Skip`] names tests that cannot apply and says why. Every test number of every
//! file must be covered or skipped, exactly one of the two.
//!
//! A case marked [`Case::differs`] pins this runner's answer where it differs from APISIX's on
//! purpose (the plugin docs say why); the tests it stands for count as applicable but not as
//! conforming.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use bytes::Bytes;
use ext_plugin_runner::codec::Protocol;
use ext_plugin_runner::model::{HttpReqCallReq, Method, Pair, ReqAction};
use ext_plugin_runner::testing::{request, GatewayError, TestRunner};

/// Why a route without the plugin cannot apply.
pub const PLUGIN_OFF: &str = "a route without the plugin";
/// Why `_meta.disable` cannot apply.
pub const COMPONENT_OFF: &str =
    "`_meta.disable`: APISIX's plugin framework, a disabled plugin is never sent to the runner";
/// Why Vault references cannot apply.
pub const VAULT: &str =
    "Vault secret references (`$secret://`): the runner resolves `$ENV://` only";
/// Why a missing anonymous consumer cannot apply.
pub const NO_REGISTRY: &str = "an anonymous_consumer missing from the Consumer registry: here \
    the anonymous consumer is a name, with no registry to miss it";
/// Why consumer-scoped plugins cannot apply.
pub const CONSUMER_PLUGINS: &str = "plugins attached to Consumer objects (a per-consumer \
    limit-count): the runner's consumers carry credentials only";
/// Why the Admin API's schema endpoint cannot apply.
pub const SCHEMA_API: &str = "the Admin API's schema endpoint";

/// One APISIX test file: its name and how many `=== TEST` blocks it has.
pub struct File {
    pub name: &'static str,
    pub tests: u32,
}

/// Tests of a file that cannot apply to an ext-plugin runner.
pub struct Skip {
    pub file: &'static str,
    pub tests: Vec<u32>,
    pub why: &'static str,
}

pub fn skip(file: &'static str, tests: impl IntoIterator<Item = u32>, why: &'static str) -> Skip {
    Skip {
        file,
        tests: tests.into_iter().collect(),
        why,
    }
}

/// What a body must be.
#[derive(Clone, Debug)]
pub enum BodyCheck {
    Exact(String),
    Contains(String),
}

#[derive(Clone, Debug)]
enum Step {
    Accepted,
    Refused,
    Stops(u16),
    Proceeds,
}

/// One case: a chain, and a verdict on it or on one request through it.
#[derive(Clone, Debug)]
pub struct Case {
    file: &'static str,
    tests: Vec<u32>,
    what: &'static str,
    chain: Vec<(String, String)>,
    req: HttpReqCallReq,
    req_body: Option<Bytes>,
    step: Option<Step>,
    body: Option<BodyCheck>,
    /// Stop headers, or response headers set on a proxied request.
    headers: Vec<(String, Option<String>)>,
    upstream_headers: Vec<(String, Option<String>)>,
    upstream_args: Vec<(String, Option<String>)>,
    upstream_body: Option<BodyCheck>,
    differs: Option<&'static str>,
}

/// A case of APISIX's `file`, standing for its `tests`.
pub fn case(file: &'static str, tests: impl IntoIterator<Item = u32>, what: &'static str) -> Case {
    Case {
        file,
        tests: tests.into_iter().collect(),
        what,
        chain: Vec::new(),
        req: request(Method::Get, "/hello"),
        req_body: None,
        step: None,
        body: None,
        headers: Vec::new(),
        upstream_headers: Vec::new(),
        upstream_args: Vec::new(),
        upstream_body: None,
        differs: None,
    }
}

impl Case {
    /// Appends a plugin to the chain.
    pub fn plugin(mut self, name: &str, conf: impl Into<String>) -> Case {
        self.chain.push((name.to_owned(), conf.into()));
        self
    }

    pub fn accepted(mut self) -> Case {
        self.step = Some(Step::Accepted);
        self
    }

    pub fn refused(mut self) -> Case {
        self.step = Some(Step::Refused);
        self
    }

    /// The request: `method` and a path with an optional `?query` (decoded into arguments).
    pub fn req(mut self, method: Method, target: &str) -> Case {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let mut req = request(method, path);
        req.src_ip = self.req.src_ip;
        req.headers = std::mem::take(&mut self.req.headers);
        for part in query.split('&').filter(|p| !p.is_empty()) {
            req = match part.split_once('=') {
                Some((k, v)) => req.with_arg(&decode(k), &decode(v)),
                None => req.with_flag(&decode(part)),
            };
        }
        self.req = req;
        self
    }

    pub fn get(self, target: &str) -> Case {
        self.req(Method::Get, target)
    }

    /// A request header (the name is lower-cased, as the gateway sends it).
    pub fn header(mut self, name: &str, value: &str) -> Case {
        self.req = self.req.with_header(&name.to_ascii_lowercase(), value);
        self
    }

    pub fn src_ip(mut self, ip: &str) -> Case {
        self.req = self.req.with_src_ip(ip);
        self
    }

    /// The request body, answered when the runner asks for it.
    pub fn req_body(mut self, body: impl Into<Bytes>) -> Case {
        self.req_body = Some(body.into());
        self
    }

    pub fn stops(mut self, status: u16) -> Case {
        self.step = Some(Step::Stops(status));
        self
    }

    pub fn proceeds(mut self) -> Case {
        self.step = Some(Step::Proceeds);
        self
    }

    pub fn body(mut self, body: &str) -> Case {
        self.body = Some(BodyCheck::Exact(body.to_owned()));
        self
    }

    pub fn body_contains(mut self, part: &str) -> Case {
        self.body = Some(BodyCheck::Contains(part.to_owned()));
        self
    }

    /// A header of the answer: the stop's, or a response header of a proxied request.
    /// `None` means absent.
    pub fn resp_header(mut self, name: &str, value: Option<&str>) -> Case {
        self.headers
            .push((name.to_ascii_lowercase(), value.map(str::to_owned)));
        self
    }

    /// A header the upstream receives (`None`: it does not).
    pub fn upstream_header(mut self, name: &str, value: Option<&str>) -> Case {
        self.upstream_headers
            .push((name.to_ascii_lowercase(), value.map(str::to_owned)));
        self
    }

    /// A query argument the upstream receives (`None`: it does not).
    pub fn upstream_arg(mut self, name: &str, value: Option<&str>) -> Case {
        self.upstream_args
            .push((name.to_owned(), value.map(str::to_owned)));
        self
    }

    pub fn upstream_body(mut self, body: &str) -> Case {
        self.upstream_body = Some(BodyCheck::Exact(body.to_owned()));
        self
    }

    pub fn upstream_body_contains(mut self, part: &str) -> Case {
        self.upstream_body = Some(BodyCheck::Contains(part.to_owned()));
        self
    }

    /// Marks the case as pinning a difference from APISIX, documented in the plugin's docs.
    pub fn differs(mut self, why: &'static str) -> Case {
        self.differs = Some(why);
        self
    }

    fn label(&self) -> String {
        format!("{} TEST {:?} ({})", self.file, self.tests, self.what)
    }
}

/// Percent-decodes a query component, `+` as a space, as the gateway decodes arguments.
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 3 <= bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("ASCII escape");
                out.push(u8::from_str_radix(hex, 16).expect("a %XX escape"));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).expect("UTF-8 query")
}

/// A plugin's suite: its APISIX files, cases and skips.
pub struct Suite {
    pub plugin: &'static str,
    pub files: Vec<File>,
    pub cases: Vec<Case>,
    pub skips: Vec<Skip>,
}

/// The numbers of one plugin's row in the conformance table.
#[derive(Debug, PartialEq, Eq)]
pub struct Counts {
    pub total: u32,
    pub applicable: u32,
    pub conforming: u32,
    pub differing: u32,
}

impl Suite {
    /// Checks that every test of every file is covered or skipped, exactly one of the two, and
    /// counts the row.
    pub fn counts(&self) -> Counts {
        let mut covered: BTreeMap<&str, BTreeSet<u32>> = BTreeMap::new();
        let mut differing: BTreeMap<&str, BTreeSet<u32>> = BTreeMap::new();
        for c in &self.cases {
            assert!(!c.tests.is_empty(), "{} names no test", c.label());
            for &t in &c.tests {
                covered.entry(c.file).or_default().insert(t);
                if c.differs.is_some() {
                    differing.entry(c.file).or_default().insert(t);
                }
            }
        }
        let mut skipped: BTreeMap<&str, BTreeSet<u32>> = BTreeMap::new();
        for s in &self.skips {
            assert!(!s.why.is_empty(), "{} skips without a reason", s.file);
            for &t in &s.tests {
                assert!(
                    skipped.entry(s.file).or_default().insert(t),
                    "{} TEST {t} is skipped twice",
                    s.file
                );
            }
        }
        let mut counts = Counts {
            total: 0,
            applicable: 0,
            conforming: 0,
            differing: 0,
        };
        let empty = BTreeSet::new();
        for f in &self.files {
            let cov = covered.remove(f.name).unwrap_or_default();
            let skp = skipped.remove(f.name).unwrap_or_default();
            let dif = differing.get(f.name).unwrap_or(&empty);
            for t in 1..=f.tests {
                match (cov.contains(&t), skp.contains(&t)) {
                    (true, true) => panic!("{} TEST {t} is both covered and skipped", f.name),
                    (false, false) => panic!("{} TEST {t} is neither covered nor skipped", f.name),
                    _ => {}
                }
            }
            if let Some(t) = cov.iter().chain(&skp).find(|t| **t == 0 || **t > f.tests) {
                panic!("{} has no TEST {t}", f.name);
            }
            counts.total += f.tests;
            counts.applicable += cov.len() as u32;
            counts.differing += dif.len() as u32;
            counts.conforming += (cov.len() - dif.len()) as u32;
        }
        assert!(covered.is_empty(), "cases of unknown files: {covered:?}");
        assert!(skipped.is_empty(), "skips of unknown files: {skipped:?}");
        counts
    }

    /// The row of docs/conformance/auth-and-edge.md for this plugin.
    pub fn row(&self) -> String {
        let c = self.counts();
        format!(
            "| {} | {} | {} | {} | {} |",
            self.plugin, c.total, c.applicable, c.conforming, c.differing
        )
    }

    /// Runs every case over the socket; all failures are reported together.
    pub async fn run(&self) {
        self.counts();
        let runner = TestRunner::start(ext_plugin_catalogue::builtin()).await;
        let mut gw = runner.connect_with(Protocol::FlatBuffers).await;
        let mut failures = String::new();
        for (i, c) in self.cases.iter().enumerate() {
            // A key per case: no case sees another's chain.
            let key = format!("route#{}-{i}#ext-plugin-pre-req#1", self.plugin);
            let chain: Vec<(&str, &str)> = c
                .chain
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            let prepared = gw.prepare(&key, &chain).await;
            let outcome = match (&c.step, prepared) {
                (Some(Step::Accepted), Ok(_)) => Ok(()),
                (Some(Step::Refused), Err(GatewayError::Runner(_))) => Ok(()),
                (Some(Step::Refused), Ok(_)) => Err("the conf was accepted".to_owned()),
                (_, Err(e)) => Err(format!("prepare_conf failed: {e}")),
                (Some(step), Ok(token)) => {
                    gw.req_body = c.req_body.clone();
                    match gw.call(token, &c.req).await {
                        Ok(reply) => check(c, step, &reply.action),
                        Err(e) => Err(format!("the call failed: {e}")),
                    }
                }
                (None, Ok(_)) => Err("the case says nothing to expect".to_owned()),
            };
            if let Err(why) = outcome {
                let _ = writeln!(failures, "{}: {why}", c.label());
            }
        }
        runner.stop().await;
        assert!(failures.is_empty(), "cases that fail:\n{failures}");
    }
}

/// The values of `name` among `pairs`, joined as one header line.
fn joined(pairs: &[(String, Option<String>)], name: &str) -> Option<String> {
    let values: Vec<&str> = pairs
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .filter_map(|(_, v)| v.as_deref())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

fn expect_pairs(
    what: &str,
    seen: &[(String, Option<String>)],
    wanted: &[(String, Option<String>)],
) -> Result<(), String> {
    for (name, value) in wanted {
        let got = joined(seen, name);
        if got.as_deref() != value.as_deref() {
            return Err(format!(
                "{what} {name}: want {value:?}, got {got:?} (all: {seen:?})"
            ));
        }
    }
    Ok(())
}

fn expect_body(what: &str, got: &[u8], want: &BodyCheck) -> Result<(), String> {
    let got = String::from_utf8_lossy(got);
    let ok = match want {
        BodyCheck::Exact(b) => got == *b,
        BodyCheck::Contains(p) => got.contains(p.as_str()),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{what}: want {want:?}, got {got:?}"))
    }
}

fn owned(p: &[Pair]) -> Vec<(String, Option<String>)> {
    p.iter()
        .map(|p| (p.name.to_string(), p.value.as_deref().map(str::to_owned)))
        .collect()
}

/// Applies a rewrite's entries to `base` the way a gateway does: the first entry of a name
/// replaces every value it had (or deletes it), later entries of the same name add values.
fn apply(base: &[Pair], rewrite: &[Pair], fold_case: bool) -> Vec<(String, Option<String>)> {
    let same = |a: &str, b: &str| {
        if fold_case {
            a.eq_ignore_ascii_case(b)
        } else {
            a == b
        }
    };
    let mut out = owned(base);
    let mut touched: Vec<&str> = Vec::new();
    for p in rewrite {
        if !touched.iter().any(|t| same(t, &p.name)) {
            out.retain(|(n, _)| !same(n, &p.name));
            touched.push(&p.name);
        }
        if let Some(v) = &p.value {
            out.push((p.name.to_string(), Some(v.to_string())));
        }
    }
    out
}

fn check(c: &Case, step: &Step, action: &ReqAction) -> Result<(), String> {
    match (step, action) {
        (Step::Stops(status), ReqAction::Stop(s)) => {
            if s.status != *status {
                return Err(format!("want status {status}, got {} ({s:?})", s.status));
            }
            if let Some(b) = &c.body {
                expect_body("body", &s.body, b)?;
            }
            expect_pairs("header", &owned(&s.headers), &c.headers)
        }
        (Step::Proceeds, ReqAction::Continue | ReqAction::Rewrite(_)) => {
            let empty = Default::default();
            let r = match action {
                ReqAction::Rewrite(r) => r,
                _ => &empty,
            };
            expect_pairs("response header", &owned(&r.resp_headers), &c.headers)?;
            let headers = apply(c.req.headers.as_pairs(), &r.headers, true);
            expect_pairs("upstream header", &headers, &c.upstream_headers)?;
            let args = apply(c.req.args.as_pairs(), &r.args, false);
            expect_pairs("upstream arg", &args, &c.upstream_args)?;
            if let Some(b) = &c.upstream_body {
                let body = r.body.as_ref().or(c.req_body.as_ref());
                expect_body("upstream body", body.map_or(&[][..], |b| &b[..]), b)?;
            }
            Ok(())
        }
        (step, action) => Err(format!("want {step:?}, got {action:?}")),
    }
}
