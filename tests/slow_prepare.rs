//! A slow `prepare_conf` (a plugin reading a file, compiling a large schema or regex set) must
//! hold up neither other connections' prepares nor their calls, and concurrent prepares of one
//! key must build the chain once.
//!
//! The slow plugin waits at a [`Gate`] the test opens, so nothing here depends on timing: the
//! timeouts are hang guards, generous for a loaded machine. The runtimes have one worker, so a
//! prepare that blocked its worker would block the whole runner.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Condvar, LazyLock, Mutex};
use std::time::{Duration, Instant};

use ext_plugin_runner::model::{ErrorCode, Method, ReqAction};
use ext_plugin_runner::testing::{request, FakeGateway, GatewayError, TestRunner};
use ext_plugin_runner::{Config, Registry};
use ext_plugin_sdk::*;
use serde::Deserialize;

/// Hang guard for what the runner should answer while a prepare is blocked.
const GUARD: Duration = Duration::from_secs(10);

/// `f`, or a panic after [`GUARD`]. The guard's timer is a thread of its own, not the runtime's:
/// a runner that blocked its only worker would also stop the runtime's timers.
async fn guarded<T>(what: &str, f: impl Future<Output = T>) -> T {
    let (expired, expiry) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        std::thread::sleep(GUARD);
        let _ = expired.send(());
    });
    tokio::select! {
        out = f => out,
        _ = expiry => panic!("{what}: no answer within {GUARD:?}"),
    }
}

/// Where `gated` prepares wait until the test opens it.
#[derive(Default)]
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Default)]
struct GateState {
    /// Prepares that reached the gate.
    entered: usize,
    open: bool,
}

static GATES: LazyLock<Mutex<HashMap<String, Arc<Gate>>>> = LazyLock::new(Default::default);

impl Gate {
    /// The gate called `name`, opened when the returned guard drops (so a failed assertion
    /// does not leave a runner thread blocked).
    fn new(name: &str) -> (Arc<Gate>, Opener) {
        let gate = Arc::new(Gate::default());
        GATES.lock().unwrap().insert(name.to_owned(), gate.clone());
        (gate.clone(), Opener(gate))
    }

    fn get(name: &str) -> Option<Arc<Gate>> {
        GATES.lock().unwrap().get(name).cloned()
    }

    fn pass(&self) {
        let mut s = self.state.lock().unwrap();
        s.entered += 1;
        self.changed.notify_all();
        while !s.open {
            s = self.changed.wait(s).unwrap();
        }
    }

    fn open(&self) {
        self.state.lock().unwrap().open = true;
        self.changed.notify_all();
    }

    fn entered(&self) -> usize {
        self.state.lock().unwrap().entered
    }

    /// Blocks the test's thread (never a runtime worker) until `n` prepares reached the gate.
    fn wait_entered(&self, n: usize) {
        let deadline = Instant::now() + GUARD;
        let mut s = self.state.lock().unwrap();
        while s.entered < n {
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| panic!("{} of {n} prepares reached the gate", s.entered));
            s = self.changed.wait_timeout(s, left).unwrap().0;
        }
    }
}

struct Opener(Arc<Gate>);

impl Drop for Opener {
    fn drop(&mut self) {
        self.0.open();
    }
}

#[derive(Deserialize)]
struct GatedConf {
    gate: String,
}

/// Prepares only once its gate is open; a missing gate panics (a prepare that panics).
struct Gated;

impl Plugin for Gated {
    const NAME: &'static str = "gated";
    type Conf = GatedConf;

    fn prepare(conf: GatedConf, _: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        let gate = Gate::get(&conf.gate).unwrap_or_else(|| panic!("no gate {:?}", conf.gate));
        gate.pass();
        Ok(Gated)
    }
}

/// Answers 200 at once.
struct Quick;

impl Plugin for Quick {
    const NAME: &'static str = "quick";
    type Conf = serde_json::Value;

    fn prepare(_: serde_json::Value, _: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        Ok(Quick)
    }

    async fn request_filter(&self, _: &mut RequestCall<'_>) -> Result<Flow, PluginError> {
        Ok(Flow::Stop(Stop::new(200)))
    }
}

fn registry() -> Registry {
    Registry::new().with::<Gated>().with::<Quick>()
}

/// A runner whose prepare deadline is past the hang guard: these tests hold builds at a gate
/// for as long as a loaded machine takes, and a build refused at its deadline is
/// tests/hostile_budgets.rs's subject, not theirs.
async fn start() -> TestRunner {
    let config = Config {
        prepare_timeout: 6 * GUARD,
        ..Config::default()
    };
    TestRunner::start_with(config, registry()).await
}

fn gated(name: &str) -> String {
    format!(r#"{{"gate": "{name}"}}"#)
}

/// A gateway connection (connecting needs the runtime's I/O driver too, so it is guarded).
async fn connect(runner: &TestRunner) -> FakeGateway {
    guarded("connecting", runner.connect()).await
}

/// Prepares `key` on its own task, as a gateway worker would.
fn spawn_prepare(
    mut gw: FakeGateway,
    key: &'static str,
    conf: String,
) -> tokio::task::JoinHandle<Result<u32, GatewayError>> {
    tokio::spawn(async move { gw.prepare(key, &[("gated", &conf)]).await })
}

async fn quick_call(gw: &mut FakeGateway, token: u32) {
    let reply = guarded("a call", gw.call(token, &request(Method::Get, "/"))).await;
    assert!(
        matches!(reply.unwrap().action, ReqAction::Stop(s) if s.status == 200),
        "the quick chain answers"
    );
}

const SLOW: &str = "route#1#ext-plugin-pre-req#1";

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn other_connections_prepare_and_call_while_a_prepare_is_blocked() {
    let (gate, opener) = Gate::new("blocked");
    let runner = start().await;
    let slow = spawn_prepare(connect(&runner).await, SLOW, gated("blocked"));
    gate.wait_entered(1);

    // The slow prepare is blocked in the plugin; another connection is served meanwhile.
    let mut gw = connect(&runner).await;
    let token = guarded(
        "a prepare of another key while a prepare is blocked",
        gw.prepare("route#2#ext-plugin-pre-req#1", &[("quick", "{}")]),
    )
    .await
    .unwrap();
    quick_call(&mut gw, token).await;
    assert_eq!(gate.entered(), 1);
    assert!(
        !slow.is_finished(),
        "the gate is closed: the slow prepare cannot be done"
    );

    drop(opener);
    let slow_token = guarded("the slow prepare once its gate opened", slow)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(slow_token, token);
    assert_eq!(
        guarded(
            "a re-prepare of the slow key",
            gw.prepare(SLOW, &[("gated", &gated("blocked"))])
        )
        .await
        .unwrap(),
        slow_token,
        "the same key keeps its token"
    );
    assert_eq!(gate.entered(), 1, "cached: not built again");
    runner.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn concurrent_prepares_of_one_key_build_once_and_share_the_token() {
    const N: usize = 4;
    let (gate, opener) = Gate::new("shared");
    let runner = start().await;
    let first = spawn_prepare(connect(&runner).await, SLOW, gated("shared"));
    gate.wait_entered(1);
    let mut rest = Vec::new();
    for _ in 1..N {
        rest.push(spawn_prepare(connect(&runner).await, SLOW, gated("shared")));
    }
    // The others are waiting on the first build (or not yet read); none can have an answer.
    let mut gw = connect(&runner).await;
    let token = guarded(
        "a prepare of another key",
        gw.prepare("route#2#ext-plugin-pre-req#1", &[("quick", "{}")]),
    )
    .await
    .unwrap();
    quick_call(&mut gw, token).await;
    assert!(rest.iter().all(|p| !p.is_finished()));

    drop(opener);
    let expected = guarded("the first prepare", first).await.unwrap().unwrap();
    for p in rest {
        let t = guarded("a concurrent prepare", p).await.unwrap().unwrap();
        assert_eq!(t, expected, "one key, one token");
    }
    assert_eq!(gate.entered(), 1, "one build for {N} prepares");
    runner.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_prepare_that_panics_is_refused_and_the_connection_lives() {
    let runner = start().await;
    let mut gw = connect(&runner).await;
    let refused = guarded(
        "a prepare whose plugin panics",
        gw.prepare(SLOW, &[("gated", &gated("no such gate"))]),
    )
    .await;
    assert!(
        matches!(refused, Err(GatewayError::Runner(ErrorCode::BadRequest))),
        "{refused:?}"
    );
    let token = guarded(
        "a prepare on the same connection",
        gw.prepare("route#2#ext-plugin-pre-req#1", &[("quick", "{}")]),
    )
    .await
    .unwrap();
    quick_call(&mut gw, token).await;
    runner.stop().await;
}
