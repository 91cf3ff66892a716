//! The conformance kit: APISIX test cases as data, run through the SDK harness (the bulk) or the
//! runner over a real socket (a sample), with the accounting of which APISIX cases each table
//! covers, which it skips and why.
//!
//! A [`Case`] is one APISIX scenario: the chain (plugin confs), then steps — requests with what
//! the client and the upstream must see, upstream answers for the response phase, time passing,
//! re-prepares with a changed conf. It names the APISIX test blocks (`=== TEST n`) it stands
//! for. A [`Suite`] is one APISIX test file: its cases and its skips; [`Suite::check_accounting`]
//! proves that every block is covered or skipped with a reason, exactly once.
//!
//! Time: every case's plugins read a manual SDK [`Clock`] the case drives (`advance`), handed to
//! the harness ([`Harness::with_clock`]) or the runner ([`Config::clock`]); the harness runs on
//! tokio's paused clock, so delays are measured exactly and the manual clock moves by each
//! request's delay, as for requests a client sends one after another.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ext_plugin_catalogue::builtin;
use ext_plugin_runner::testing::{FakeGateway, TestRunner};
use ext_plugin_runner::Config;
use ext_plugin_sdk::harness::{request, Harness, LocalGateway};
use ext_plugin_sdk::model::{HttpReqCallReq, HttpRespCallReq, HttpRespCallResp, Pair, ReqAction};
use ext_plugin_sdk::*;

pub const PRE: &str = "route#1#ext-plugin-pre-req#1";
pub const POST_RESP: &str = "route#1#ext-plugin-post-resp#1";

// ---------------------------------------------------------------------------------------------
// Cases.

/// A header value the client or the upstream must (not) see.
#[derive(Clone, Debug)]
pub enum Hv {
    Is(String),
    /// Present, any value.
    Any,
    /// Present, a whole number of at least this much.
    AtLeast(u64),
    Absent,
}

/// What a request must come to.
#[derive(Clone, Debug, Default)]
pub struct Expect {
    /// 200 when the request goes upstream; otherwise the status the runner answers with.
    pub status: u16,
    /// The runner answers (also with a 200).
    pub stopped: bool,
    pub body: Option<String>,
    /// Headers the client gets from the runner (a stop's, or a rewrite's response headers).
    pub headers: Vec<(String, Hv)>,
    pub path: Option<String>,
    /// The upstream request's headers (values of one name joined with `, `).
    pub up_headers: Vec<(String, Hv)>,
    /// The upstream request's arguments: all values of the name, in order.
    pub up_args: Vec<(String, Vec<String>)>,
    /// How long the call took (tokio's paused clock), to the millisecond.
    pub delay_ms: Option<u64>,
}

/// The request goes upstream.
pub fn pass() -> Expect {
    Expect {
        status: 200,
        ..Expect::default()
    }
}

/// The runner answers with `status`.
pub fn stop(status: u16) -> Expect {
    Expect {
        status,
        stopped: true,
        ..Expect::default()
    }
}

/// [`pass`] for 200, [`stop`] for another status.
pub fn status(s: u16) -> Expect {
    if s == 200 {
        pass()
    } else {
        stop(s)
    }
}

impl Expect {
    pub fn body(mut self, b: &str) -> Self {
        self.body = Some(b.into());
        self
    }
    /// A response header the client gets.
    pub fn header(self, name: &str, value: &str) -> Self {
        self.header_is(name, Hv::Is(value.into()))
    }
    pub fn header_is(mut self, name: &str, v: Hv) -> Self {
        self.headers.push((name.into(), v));
        self
    }
    pub fn no_header(self, name: &str) -> Self {
        self.header_is(name, Hv::Absent)
    }
    pub fn path(mut self, p: &str) -> Self {
        self.path = Some(p.into());
        self
    }
    /// A request header the upstream gets.
    pub fn up(self, name: &str, value: &str) -> Self {
        self.up_is(name, Hv::Is(value.into()))
    }
    pub fn up_is(mut self, name: &str, v: Hv) -> Self {
        self.up_headers.push((name.into(), v));
        self
    }
    pub fn up_none(self, name: &str) -> Self {
        self.up_is(name, Hv::Absent)
    }
    pub fn arg(mut self, name: &str, values: &[&str]) -> Self {
        self.up_args
            .push((name.into(), values.iter().map(|v| v.to_string()).collect()));
        self
    }
    pub fn delay_ms(mut self, ms: u64) -> Self {
        self.delay_ms = Some(ms);
        self
    }
}

/// What the client gets after the response phase.
#[derive(Clone, Debug, Default)]
pub struct RespExpect {
    pub body: Option<String>,
    pub headers: Vec<(String, Hv)>,
    /// Variables the response phase must (not) ask the gateway for.
    pub asked: Vec<(String, bool)>,
}

impl RespExpect {
    pub fn body(mut self, b: &str) -> Self {
        self.body = Some(b.into());
        self
    }
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), Hv::Is(value.into())));
        self
    }
    pub fn asks(mut self, var: &str) -> Self {
        self.asked.push((var.into(), true));
        self
    }
    pub fn does_not_ask(mut self, var: &str) -> Self {
        self.asked.push((var.into(), false));
        self
    }
}

/// An upstream answer for the response phase.
#[derive(Clone, Debug, Default)]
pub struct Upstream {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
    /// Variables the gateway answers in the response phase, besides the request's headers.
    pub vars: Vec<(String, String)>,
}

pub fn upstream(status: u16) -> Upstream {
    Upstream {
        status,
        ..Upstream::default()
    }
}

impl Upstream {
    pub fn header(mut self, n: &str, v: &str) -> Self {
        self.headers.push((n.into(), v.into()));
        self
    }
    pub fn body(mut self, b: &str) -> Self {
        self.body = Some(b.into());
        self
    }
    pub fn var(mut self, n: &str, v: &str) -> Self {
        self.vars.push((n.into(), v.into()));
        self
    }
}

/// What one request came to, for [`Step::Check`].
#[derive(Clone, Debug)]
pub struct Seen {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        find(&self.headers, name)
    }
}

fn find<'a>(list: &'a [(String, String)], name: &str) -> Option<&'a str> {
    list.iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

pub type CheckFn = fn(&[Seen]) -> Result<(), String>;

// A request (with its lazily read entries) is larger than the other steps; scripts are short.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub enum Step {
    /// Prepares a chain under a key; `Err(needle)`: prepare must fail with that in the message.
    Prepare {
        key: String,
        chain: Vec<(String, String)>,
        refused: Option<String>,
    },
    Send {
        /// The prepare key of the chain to run; the last prepared request chain when `None`.
        key: Option<String>,
        req: HttpReqCallReq,
        expect: Expect,
    },
    /// The response phase of the post-resp chain, for the last request that went upstream.
    Respond(Upstream, RespExpect),
    Advance(Duration),
    /// A check over every request seen so far.
    Check(&'static str, CheckFn),
}

#[derive(Clone)]
pub struct Case {
    pub file: &'static str,
    pub tests: Vec<u32>,
    pub steps: Vec<Step>,
    /// Variables the gateway answers for every request of the case.
    pub vars: Vec<(String, String)>,
    /// Also run over the wire.
    pub wire: bool,
}

pub fn case(file: &'static str, tests: &[u32]) -> Case {
    Case {
        file,
        tests: tests.to_vec(),
        steps: Vec::new(),
        vars: Vec::new(),
        wire: false,
    }
}

fn owned(chain: &[(&str, &str)]) -> Vec<(String, String)> {
    chain
        .iter()
        .map(|(n, c)| (n.to_string(), c.to_string()))
        .collect()
}

impl Case {
    /// Prepares `chain` under the pre-req key (and, for the response phase, the post-resp key).
    pub fn chain(mut self, chain: &[(&str, &str)]) -> Self {
        for key in [PRE, POST_RESP] {
            self.steps.push(Step::Prepare {
                key: key.into(),
                chain: owned(chain),
                refused: None,
            });
        }
        self
    }
    /// [`Case::chain`] of one plugin.
    pub fn conf(self, plugin: &str, conf: &str) -> Self {
        self.chain(&[(plugin, conf)])
    }
    /// Prepares `chain` under `key` only.
    pub fn chain_at(mut self, key: &str, chain: &[(&str, &str)]) -> Self {
        self.steps.push(Step::Prepare {
            key: key.into(),
            chain: owned(chain),
            refused: None,
        });
        self
    }
    /// The conf must be refused, with `needle` in the reason.
    pub fn refused(mut self, plugin: &str, conf: &str, needle: &str) -> Self {
        self.steps.push(Step::Prepare {
            key: PRE.into(),
            chain: owned(&[(plugin, conf)]),
            refused: Some(needle.into()),
        });
        self
    }
    pub fn var(mut self, name: &str, value: &str) -> Self {
        self.vars.push((name.into(), value.into()));
        self
    }
    pub fn send(mut self, req: HttpReqCallReq, expect: Expect) -> Self {
        self.steps.push(Step::Send {
            key: None,
            req,
            expect,
        });
        self
    }
    /// A request through the chain prepared under `key`.
    pub fn send_at(mut self, key: &str, req: HttpReqCallReq, expect: Expect) -> Self {
        self.steps.push(Step::Send {
            key: Some(key.into()),
            req,
            expect,
        });
        self
    }
    /// The same request several times, expecting these statuses in turn (no response phase in
    /// between: for limit-conn, all are in flight at once).
    pub fn sends(mut self, req: HttpReqCallReq, statuses: &[u16]) -> Self {
        for &s in statuses {
            self = self.send(req.clone(), status(s));
        }
        self
    }
    /// The same request several times, each answered by the upstream (`statuses` of the
    /// requests that pass: the upstream's; the others: the runner's).
    pub fn answered(mut self, req: HttpReqCallReq, statuses: &[u16], runner: &[u16]) -> Self {
        for &s in statuses {
            if runner.contains(&s) {
                self = self.send(req.clone(), stop(s));
            } else {
                self = self
                    .send(req.clone(), pass())
                    .respond(upstream(s), RespExpect::default());
            }
        }
        self
    }
    pub fn respond(mut self, up: Upstream, expect: RespExpect) -> Self {
        self.steps.push(Step::Respond(up, expect));
        self
    }
    pub fn advance(mut self, secs: f64) -> Self {
        self.steps
            .push(Step::Advance(Duration::from_secs_f64(secs)));
        self
    }
    pub fn check(mut self, what: &'static str, f: CheckFn) -> Self {
        self.steps.push(Step::Check(what, f));
        self
    }
    pub fn wire(mut self) -> Self {
        self.wire = true;
        self
    }
}

/// A request; the query of `uri` becomes its (decoded) arguments.
pub fn get(uri: &str) -> HttpReqCallReq {
    method(Method::Get, uri)
}

pub fn method(m: Method, uri: &str) -> HttpReqCallReq {
    let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let mut req = request(m, &decode(path));
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        req = match pair.split_once('=') {
            Some((n, v)) => req.with_arg(&decode(n), &decode(v)),
            None => req.with_flag(&decode(pair)),
        };
    }
    req
}

// ---------------------------------------------------------------------------------------------
// Suites and their accounting.

/// The reasons several tables give for skipping APISIX cases.
pub mod why {
    pub const REDIS: &str = "the redis, redis-cluster and redis-sentinel policies: the runner \
                             counts locally and refuses them (a Redis backend may come later)";
    pub const CONSUMER_BOUND: &str = "the plugin bound to APISIX consumers or consumer groups, \
                                      merged into the route by APISIX; a runner chain has no \
                                      consumer-level plugins";
    pub const NO_PLUGIN: &str =
        "the route (or global rule) without the plugin, or deleted: APISIX \
                                 does not call the runner";
    pub const TLS: &str = "creates an SSL certificate object: the gateway's TLS, not the plugin";
    pub const ADMIN_OUTPUT: &str = "prints the conf as APISIX's admin API stores it";
}

/// Why a group of APISIX cases cannot apply to an ext-plugin runner.
#[derive(Clone, Debug)]
pub struct Skip {
    pub tests: Vec<u32>,
    pub why: &'static str,
}

pub struct Suite {
    /// The APISIX plugin.
    pub plugin: &'static str,
    /// APISIX test files and how many `=== TEST` blocks each has.
    pub files: Vec<(&'static str, u32)>,
    pub cases: Vec<Case>,
    pub skips: Vec<(&'static str, Skip)>,
}

/// One row of the published table: APISIX's blocks, those that apply, those covered by a case
/// (every case must pass: [`Suite::run`] fails otherwise).
#[derive(Debug, PartialEq, Eq)]
pub struct Tally {
    pub total: u32,
    pub apply: u32,
    pub covered: u32,
}

impl Suite {
    pub fn new(plugin: &'static str, files: &[(&'static str, u32)]) -> Suite {
        Suite {
            plugin,
            files: files.to_vec(),
            cases: Vec::new(),
            skips: Vec::new(),
        }
    }

    pub fn skip(
        mut self,
        file: &'static str,
        tests: impl IntoIterator<Item = u32>,
        why: &'static str,
    ) -> Self {
        self.skips.push((
            file,
            Skip {
                tests: tests.into_iter().collect(),
                why,
            },
        ));
        self
    }

    pub fn cases(mut self, cases: Vec<Case>) -> Self {
        self.cases.extend(cases);
        self
    }

    /// Every block of every file is covered by a case or skipped, exactly once.
    pub fn check_accounting(&self) -> Result<Tally, String> {
        let mut errors = Vec::new();
        let mut tally = Tally {
            total: 0,
            apply: 0,
            covered: 0,
        };
        for &(file, total) in &self.files {
            let mut seen: HashMap<u32, &str> = HashMap::new();
            let mut claim = |n: u32, by: &'static str, errors: &mut Vec<String>| {
                if n == 0 || n > total {
                    errors.push(format!(
                        "{file}: TEST {n} does not exist (the file has {total})"
                    ));
                } else if let Some(prev) = seen.insert(n, by) {
                    errors.push(format!("{file}: TEST {n} counted twice ({prev}, {by})"));
                }
            };
            for c in self.cases.iter().filter(|c| c.file == file) {
                for &n in &c.tests {
                    claim(n, "case", &mut errors);
                }
            }
            for (_, s) in self.skips.iter().filter(|(f, _)| *f == file) {
                if s.why.is_empty() {
                    errors.push(format!("{file}: a skip of {:?} gives no reason", s.tests));
                }
                for &n in &s.tests {
                    claim(n, "skip", &mut errors);
                }
            }
            let missing: BTreeSet<u32> = (1..=total).filter(|n| !seen.contains_key(n)).collect();
            if !missing.is_empty() {
                errors.push(format!(
                    "{file}: TEST {missing:?} neither covered nor skipped"
                ));
            }
            tally.total += total;
            tally.covered += seen.values().filter(|&&v| v == "case").count() as u32;
        }
        for c in &self.cases {
            if !self.files.iter().any(|(f, _)| *f == c.file) {
                errors.push(format!("a case names unknown file {}", c.file));
            }
        }
        tally.apply = tally.covered;
        if errors.is_empty() {
            Ok(tally)
        } else {
            Err(errors.join("\n"))
        }
    }

    /// Runs every case through the SDK harness; panics with every failure.
    pub async fn run(&self) {
        let mut failures = Vec::new();
        for c in &self.cases {
            let clock = Clock::manual();
            let gw = HarnessGw::new(&clock);
            if let Err(e) = run_steps(c, gw, &clock).await {
                failures.push(format!("{} {:?}: {e}", c.file, c.tests));
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {} {} cases failed:\n{}",
            failures.len(),
            self.cases.len(),
            self.plugin,
            failures.join("\n")
        );
    }

    /// Runs the cases marked `wire` over a real socket.
    pub async fn run_wire(&self) {
        let wired: Vec<_> = self.cases.iter().filter(|c| c.wire).collect();
        assert!(
            !wired.is_empty(),
            "{}: no case runs over the wire",
            self.plugin
        );
        let mut failures = Vec::new();
        for c in wired {
            let clock = Clock::manual();
            let gw = WireGw::new(&clock).await;
            if let Err(e) = run_steps(c, gw, &clock).await {
                failures.push(format!("{} {:?}: {e}", c.file, c.tests));
            }
        }
        assert!(
            failures.is_empty(),
            "over the wire:\n{}",
            failures.join("\n")
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Gateways: the SDK harness in memory, or the fake gateway over a socket.

pub(crate) trait Gw {
    type Handle: Clone;
    async fn prepare(&mut self, key: &str, chain: &[(&str, &str)]) -> Result<Self::Handle, String>;
    async fn call(&mut self, h: &Self::Handle, req: &HttpReqCallReq) -> Result<ReqAction, String>;
    async fn respond(
        &mut self,
        h: &Self::Handle,
        req: &HttpRespCallReq,
    ) -> Result<HttpRespCallResp, String>;
    fn vars(&mut self) -> &mut HashMap<String, Option<Bytes>>;
    fn set_resp_body(&mut self, body: Option<Bytes>);
    /// Variable names asked since the last call to this.
    fn take_asked(&mut self) -> Vec<String>;
}

pub(crate) struct HarnessGw {
    harness: Harness,
    gw: LocalGateway,
}

impl HarnessGw {
    /// Every built-in plugin, reading `clock`.
    fn new(clock: &Clock) -> HarnessGw {
        HarnessGw {
            harness: Harness::new(builtin()).with_clock(clock.clone()),
            gw: LocalGateway::new(),
        }
    }
}

fn var_names(asked: Vec<ext_plugin_sdk::model::ExtraInfoReq>) -> Vec<String> {
    asked
        .into_iter()
        .filter_map(|a| match a {
            ext_plugin_sdk::model::ExtraInfoReq::Var(n) => Some(n.to_string()),
            _ => None,
        })
        .collect()
}

impl Gw for HarnessGw {
    type Handle = Arc<Chain>;
    async fn prepare(&mut self, key: &str, chain: &[(&str, &str)]) -> Result<Arc<Chain>, String> {
        self.harness.prepare(key, chain).map_err(|e| e.to_string())
    }
    async fn call(&mut self, h: &Arc<Chain>, req: &HttpReqCallReq) -> Result<ReqAction, String> {
        self.gw
            .call(h, req)
            .await
            .map_err(|e| format!("plugin error: {e}"))
    }
    async fn respond(
        &mut self,
        h: &Arc<Chain>,
        req: &HttpRespCallReq,
    ) -> Result<HttpRespCallResp, String> {
        self.gw
            .resp_call(h, req)
            .await
            .map_err(|e| format!("plugin error: {e}"))
    }
    fn vars(&mut self) -> &mut HashMap<String, Option<Bytes>> {
        &mut self.gw.vars
    }
    fn set_resp_body(&mut self, body: Option<Bytes>) {
        self.gw.resp_body = body;
    }
    fn take_asked(&mut self) -> Vec<String> {
        var_names(std::mem::take(&mut self.gw.asked))
    }
}

pub(crate) struct WireGw {
    _runner: TestRunner,
    gw: FakeGateway,
}

impl WireGw {
    /// A runner of every built-in plugin, reading `clock`.
    async fn new(clock: &Clock) -> WireGw {
        let config = Config {
            clock: clock.clone(),
            ..Config::default()
        };
        let runner = TestRunner::start_with(config, builtin()).await;
        let gw = runner.connect().await;
        WireGw {
            _runner: runner,
            gw,
        }
    }
}

impl Gw for WireGw {
    type Handle = u32;
    async fn prepare(&mut self, key: &str, chain: &[(&str, &str)]) -> Result<u32, String> {
        self.gw.prepare(key, chain).await.map_err(|e| e.to_string())
    }
    async fn call(&mut self, h: &u32, req: &HttpReqCallReq) -> Result<ReqAction, String> {
        Ok(self
            .gw
            .call(*h, req)
            .await
            .map_err(|e| e.to_string())?
            .action)
    }
    async fn respond(
        &mut self,
        h: &u32,
        req: &HttpRespCallReq,
    ) -> Result<HttpRespCallResp, String> {
        let headers: Vec<(&str, &str)> = req
            .headers
            .iter()
            .map(|p| (p.name.as_str(), p.value.as_deref().unwrap_or("")))
            .collect();
        self.gw
            .resp_call(*h, req.status, &headers)
            .await
            .map_err(|e| e.to_string())
    }
    fn vars(&mut self) -> &mut HashMap<String, Option<Bytes>> {
        &mut self.gw.vars
    }
    fn set_resp_body(&mut self, body: Option<Bytes>) {
        self.gw.resp_body = body;
    }
    fn take_asked(&mut self) -> Vec<String> {
        var_names(std::mem::take(&mut self.gw.asked))
    }
}

// ---------------------------------------------------------------------------------------------
// Running a case.

/// The upstream's view of a passed request: headers (lower-cased names) and arguments after the
/// rewrite, applied as APISIX applies an ext-plugin rewrite.
struct Upstreamed {
    path: String,
    headers: Vec<(String, String)>,
    args: Vec<(String, Option<String>)>,
}

fn upstreamed(req: &HttpReqCallReq, action: &ReqAction) -> Upstreamed {
    let mut headers: Vec<(String, String)> = req
        .headers
        .iter()
        .filter_map(|h| Some((h.name().to_ascii_lowercase(), h.value()?.to_owned())))
        .collect();
    let mut args: Vec<(String, Option<String>)> = req
        .args
        .iter()
        .map(|a| (a.name().to_string(), a.value().map(str::to_owned)))
        .collect();
    let mut path = req.path.to_string();
    if let ReqAction::Rewrite(r) = action {
        if let Some(p) = &r.path {
            path = p.to_string();
        }
        for h in &r.headers {
            let name = h.name.to_ascii_lowercase();
            headers.retain(|(n, _)| *n != name);
            if let Some(v) = &h.value {
                headers.push((name, v.to_string()));
            }
        }
        // The first entry of a name replaces the argument, later ones append; none deletes.
        let mut changed: Vec<&str> = Vec::new();
        for a in &r.args {
            match &a.value {
                None => args.retain(|(n, _)| n.as_str() != a.name.as_str()),
                Some(v) if changed.contains(&a.name.as_str()) => {
                    args.push((a.name.to_string(), Some(v.to_string())))
                }
                Some(v) => {
                    args.retain(|(n, _)| n.as_str() != a.name.as_str());
                    args.push((a.name.to_string(), Some(v.to_string())));
                    changed.push(a.name.as_str());
                }
            }
        }
    }
    Upstreamed {
        path,
        headers,
        args,
    }
}

fn joined(list: &[(String, String)], name: &str) -> Option<String> {
    let values: Vec<&str> = list
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

fn check_value(what: &str, name: &str, got: Option<String>, want: &Hv) -> Result<(), String> {
    let ok = match (want, &got) {
        (Hv::Is(v), Some(g)) => g == v,
        (Hv::Any, Some(_)) => true,
        (Hv::AtLeast(min), Some(g)) => g.parse::<u64>().is_ok_and(|n| n >= *min),
        (Hv::Absent, None) => true,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{what} header {name}: want {want:?}, got {got:?}"))
    }
}

fn pairs(list: &[Pair]) -> Vec<(String, String)> {
    list.iter()
        .filter_map(|p| Some((p.name.to_string(), p.value.as_deref()?.to_owned())))
        .collect()
}

async fn run_steps<G: Gw>(c: &Case, mut gw: G, clock: &Clock) -> Result<(), String> {
    // Chains stay prepared for the whole case, as a conf cache keeps them.
    let mut kept: Vec<G::Handle> = Vec::new();
    let mut by_key: HashMap<String, G::Handle> = HashMap::new();
    let mut pre: Option<G::Handle> = None;
    let mut post: Option<G::Handle> = None;
    let mut seen: Vec<Seen> = Vec::new();
    let mut last_up: Option<Vec<(String, String)>> = None;
    for (i, step) in c.steps.iter().enumerate() {
        let at = |e: String| format!("step {i}: {e}");
        match step {
            Step::Prepare {
                key,
                chain,
                refused,
            } => {
                let entries: Vec<(&str, &str)> = chain
                    .iter()
                    .map(|(n, c)| (n.as_str(), c.as_str()))
                    .collect();
                match (gw.prepare(key, &entries).await, refused) {
                    (Ok(h), None) => {
                        by_key.insert(key.clone(), h.clone());
                        if key.contains("post-resp") {
                            post = Some(h.clone());
                        } else {
                            pre = Some(h.clone());
                        }
                        kept.push(h);
                    }
                    (Err(e), Some(needle)) if e.contains(needle.as_str()) => {}
                    (Err(e), Some(needle)) => {
                        return Err(at(format!(
                            "refused for another reason than {needle:?}: {e}"
                        )))
                    }
                    (Ok(_), Some(needle)) => {
                        return Err(at(format!(
                            "{chain:?} prepared; APISIX refuses it ({needle})"
                        )))
                    }
                    (Err(e), None) => return Err(at(format!("{chain:?} refused: {e}"))),
                }
            }
            Step::Advance(d) => clock.advance(*d),
            Step::Check(what, f) => f(&seen).map_err(|e| at(format!("{what}: {e}")))?,
            Step::Send { key, req, expect } => {
                let h = match key {
                    Some(k) => by_key.get(k).cloned(),
                    None => pre.clone(),
                }
                .ok_or_else(|| at("no chain prepared".into()))?;
                let v = gw.vars();
                v.clear();
                for (n, val) in &c.vars {
                    v.insert(n.clone(), Some(Bytes::from(val.clone())));
                }
                let start = tokio::time::Instant::now();
                let action = gw.call(&h, req).await.map_err(at)?;
                let took = start.elapsed();
                clock.advance(took);
                let got = observe(req, &action);
                let up = upstreamed(req, &action);
                check_send(expect, &got, &up, &action, took)
                    .map_err(|e| at(format!("{} {}: {e}", req.method.as_str(), req.path)))?;
                if got.status == 200 {
                    last_up = Some(up.headers.clone());
                }
                seen.push(Seen {
                    status: got.status,
                    headers: got.headers,
                });
            }
            Step::Respond(up, expect) => {
                let h = post
                    .clone()
                    .ok_or_else(|| at("no post-resp chain".into()))?;
                let v = gw.vars();
                v.clear();
                // The gateway answers the request's variables from the request as proxied.
                for (n, val) in last_up.iter().flatten() {
                    v.insert(
                        format!("http_{}", n.replace('-', "_")),
                        Some(Bytes::from(val.clone())),
                    );
                }
                for (n, val) in c.vars.iter().chain(&up.vars) {
                    v.insert(n.clone(), Some(Bytes::from(val.clone())));
                }
                gw.set_resp_body(up.body.clone().map(Bytes::from));
                gw.take_asked();
                let req = HttpRespCallReq {
                    status: up.status,
                    headers: up
                        .headers
                        .iter()
                        .map(|(n, v)| Pair::new(n.clone(), v.clone()))
                        .collect(),
                    ..HttpRespCallReq::default()
                };
                let reply = gw.respond(&h, &req).await.map_err(at)?;
                let asked = gw.take_asked();
                check_respond(expect, up, &reply, &asked)
                    .map_err(|e| at(format!("response {}: {e}", up.status)))?;
            }
        }
    }
    Ok(())
}

struct Got {
    status: u16,
    body: Option<String>,
    headers: Vec<(String, String)>,
}

fn observe(_req: &HttpReqCallReq, action: &ReqAction) -> Got {
    match action {
        ReqAction::Stop(s) => Got {
            status: if s.status == 0 { 200 } else { s.status },
            body: Some(String::from_utf8_lossy(&s.body).into_owned()),
            headers: pairs(&s.headers),
        },
        ReqAction::Rewrite(r) => Got {
            status: 200,
            body: None,
            headers: pairs(&r.resp_headers),
        },
        ReqAction::Continue => Got {
            status: 200,
            body: None,
            headers: Vec::new(),
        },
    }
}

fn check_send(
    e: &Expect,
    got: &Got,
    up: &Upstreamed,
    action: &ReqAction,
    took: Duration,
) -> Result<(), String> {
    let stopped = matches!(action, ReqAction::Stop(_));
    let want_stop = e.stopped || e.status != 200;
    if !want_stop && stopped {
        return Err(format!(
            "stopped with {} {:?}, want it proxied",
            got.status, got.body
        ));
    }
    if want_stop && (!stopped || got.status != e.status) {
        return Err(format!(
            "want {}, got {} ({})",
            e.status,
            got.status,
            if stopped { "stopped" } else { "proxied" }
        ));
    }
    if let Some(b) = &e.body {
        if got.body.as_deref() != Some(b.as_str()) {
            return Err(format!("body: want {b:?}, got {:?}", got.body));
        }
    }
    for (n, want) in &e.headers {
        check_value("response", n, joined(&got.headers, n), want)?;
    }
    if let Some(p) = &e.path {
        if up.path != *p {
            return Err(format!("upstream path: want {p:?}, got {:?}", up.path));
        }
    }
    for (n, want) in &e.up_headers {
        check_value("upstream", n, joined(&up.headers, n), want)?;
    }
    for (n, want) in &e.up_args {
        let got: Vec<String> = up
            .args
            .iter()
            .filter(|(an, _)| an == n)
            .map(|(_, v)| v.clone().unwrap_or_default())
            .collect();
        if got != *want {
            return Err(format!(
                "upstream arg {n}: want {want:?}, got {got:?} (all: {:?})",
                up.args
            ));
        }
    }
    let ms = took.as_millis() as u64;
    if let Some(d) = e.delay_ms {
        if ms != d {
            return Err(format!("delay: want {d} ms, got {ms} ms"));
        }
    }
    Ok(())
}

fn check_respond(
    e: &RespExpect,
    up: &Upstream,
    reply: &HttpRespCallResp,
    asked: &[String],
) -> Result<(), String> {
    let body = match &reply.body {
        Some(b) => Some(String::from_utf8_lossy(b).into_owned()),
        None => up.body.clone(),
    };
    if let Some(b) = &e.body {
        if body.as_deref() != Some(b.as_str()) {
            return Err(format!("body: want {b:?}, got {body:?}"));
        }
    }
    let headers = if reply.headers.is_empty() {
        up.headers.clone()
    } else {
        pairs(&reply.headers)
    };
    for (n, want) in &e.headers {
        check_value("response", n, joined(&headers, n), want)?;
    }
    for (var, want) in &e.asked {
        if asked.contains(var) != *want {
            return Err(format!(
                "asked {asked:?}: {var} {}",
                if *want { "missing" } else { "asked" }
            ));
        }
    }
    Ok(())
}
