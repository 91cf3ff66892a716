//! The Redis backends beyond one plain server (docs/scale-out.md): a master found through
//! sentinels and followed across a failover, a 3-master Redis Cluster shared by three runner
//! processes, and TLS with a certificate the test makes, against real `redis-server` processes on loopback ports
//! (tests/common/redis_server.rs; skipped loudly without `redis-server`).

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::redis_server::{available, free_port, Server};
use common::{connect_spawned, prepared, runner_command, status, storm, Spawned, PRE};
use ext_plugin_runner::model::HttpReqCallReq;
use ext_plugin_runner::testing::temp_socket_path;
use ext_plugin_runner::testing::{request, FakeGateway, TestRunner};
use ext_plugin_sdk::Method;

/// A `redis-server --sentinel` watching one master as `mymaster`, with a quorum of 1 and a
/// master declared down after 1 s; killed on drop.
struct Sentinel {
    _dir: tempfile::TempDir,
    port: u16,
    child: Child,
}

impl Sentinel {
    fn start(master_port: u16) -> Sentinel {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor mymaster 127.0.0.1 {master_port} 1\n\
                 sentinel down-after-milliseconds mymaster 1000\n\
                 sentinel failover-timeout mymaster 5000\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting redis-server --sentinel");
        let s = Sentinel {
            _dir: dir,
            port,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while s.master_port() != Some(master_port) {
            assert!(
                Instant::now() < deadline,
                "the sentinel never knew the master"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    /// Whether the sentinel has found the replica and sees it healthy: it learns of replicas
    /// from the master's INFO, polled every 10 s, and cannot fail over to one it does not know.
    fn knows_a_replica(&self) -> bool {
        let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{}", self.port)) else {
            return false;
        };
        let Ok(mut con) = client.get_connection() else {
            return false;
        };
        let replicas: Vec<Vec<String>> = redis::cmd("SENTINEL")
            .arg("replicas")
            .arg("mymaster")
            .query(&mut con)
            .unwrap_or_default();
        replicas.iter().any(|fields| {
            fields
                .chunks(2)
                .any(|kv| kv[0] == "flags" && kv.get(1).is_some_and(|f| f == "slave"))
        })
    }

    /// The port of the master the sentinel names now.
    fn master_port(&self) -> Option<u16> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}", self.port)).ok()?;
        let mut con = client.get_connection().ok()?;
        let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg("mymaster")
            .query(&mut con)
            .ok()?;
        addr.map(|a| a.1)
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Calls until the answer is not a 500 (Redis unavailable), each within `bound`; that status.
async fn until_answered(
    gw: &mut FakeGateway,
    token: u32,
    req: &HttpReqCallReq,
    bound: Duration,
) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let started = Instant::now();
        let code = status(&gw.call(token, req).await.unwrap().action);
        let took = started.elapsed();
        assert!(took < bound, "a call waited {took:?}");
        if code != 500 {
            return code;
        }
        assert!(Instant::now() < deadline, "Redis never answered again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_keeps_the_count() {
    if !available("a_sentinel_failover_keeps_the_count") {
        return;
    }
    let master_port = free_port();
    let mut master = Server::start(Some(master_port), &[]);
    let replica_port = free_port();
    let replica = Server::start(
        Some(replica_port),
        &["--replicaof", "127.0.0.1", &master_port.to_string()],
    );
    // A replica that has not finished its first sync cannot acknowledge writes.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = replica.text(&["INFO", "replication"]);
        if info.contains("master_link_status:up") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replica never synced: {info}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sentinel = Sentinel::start(master_port);

    let runner = TestRunner::start(ext_plugin_catalogue::builtin()).await;
    let mut gw = runner.connect().await;
    let conf = format!(
        r#"{{"count": 5, "time_window": 600, "rejected_code": 429,
            "policy": "redis-sentinel", "redis_master_name": "mymaster",
            "redis_sentinels": [{{"host": "127.0.0.1", "port": {}}},
                                {{"host": "127.0.0.1", "port": {}}}],
            "redis_connect_timeout": 500, "redis_read_timeout": 500}}"#,
        free_port(), // a sentinel that is down: skipped
        sentinel.port
    );
    let token = gw
        .prepare("route#1#ext-plugin-pre-req#1", &[("limit-count", &conf)])
        .await
        .expect("the conf prepares");
    let req = request(Method::Get, "/").with_src_ip("10.0.0.1");
    for _ in 0..3 {
        assert_eq!(status(&gw.call(token, &req).await.unwrap().action), 200);
    }
    // The count reached the replica before the master goes.
    let synced: i64 = match master.cmd(&["WAIT", "1", "10000"]).unwrap() {
        redis::Value::Int(n) => n,
        other => panic!("{other:?}"),
    };
    assert_eq!(synced, 1, "the replica acknowledged the writes");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sentinel.knows_a_replica() {
        assert!(
            Instant::now() < deadline,
            "the sentinel never found the replica"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    master.stop();
    let deadline = Instant::now() + Duration::from_secs(30);
    while sentinel.master_port() != Some(replica_port) {
        assert!(Instant::now() < deadline, "the sentinel never failed over");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The runner finds the promoted replica; the count goes on from 3: two more, then 429.
    // A bound for a loaded machine: the point is "not a hang".
    let bound = Duration::from_secs(3);
    let mut codes = vec![until_answered(&mut gw, token, &req, bound).await];
    for _ in 0..2 {
        codes.push(until_answered(&mut gw, token, &req, bound).await);
    }
    assert_eq!(codes, [200, 200, 429], "the count survived the failover");
    drop(replica);
    runner.stop().await;
}

/// A loopback port for a cluster node: its bus port (+10000) must be a port too, and free.
fn cluster_port() -> u16 {
    loop {
        let p = free_port();
        if p < 55_000 && std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
}

/// Three masters on loopback joined with `redis-cli --cluster create`, once every node says the
/// cluster is ok; with `tls` (the CA, certificate and key of [`tls_certs`]) they listen (and
/// talk to each other) over TLS only. Each node with its client port.
fn cluster(tls: Option<&(PathBuf, PathBuf, PathBuf)>) -> Vec<(Server, u16)> {
    let path = |p: &PathBuf| p.to_str().unwrap().to_owned();
    let nodes: Vec<(Server, u16)> = (0..3)
        .map(|_| {
            let port = cluster_port();
            let mut args: Vec<String> = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "5000",
            ]
            .map(String::from)
            .to_vec();
            if let Some((ca, crt, key)) = tls {
                args.extend([
                    "--tls-port".into(),
                    port.to_string(),
                    "--tls-cluster".into(),
                    "yes".into(),
                    "--tls-cert-file".into(),
                    path(crt),
                    "--tls-key-file".into(),
                    path(key),
                    "--tls-ca-cert-file".into(),
                    path(ca),
                    "--tls-auth-clients".into(),
                    "no".into(),
                ]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let plain = tls.is_none().then_some(port);
            (Server::start(plain, &args), port)
        })
        .collect();
    let mut cli = Command::new("redis-cli");
    if let Some((ca, _, _)) = tls {
        cli.arg("--tls").arg("--cacert").arg(ca);
    }
    let out = cli
        .arg("--cluster")
        .arg("create")
        .args(nodes.iter().map(|(_, port)| format!("127.0.0.1:{port}")))
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("running redis-cli --cluster create");
    assert!(
        out.status.success(),
        "redis-cli --cluster create: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    for (n, _) in &nodes {
        loop {
            let info = n.text(&["CLUSTER", "INFO"]);
            if info.contains("cluster_state:ok") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster never formed: {info}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    nodes
}

/// Keys held by the nodes together.
fn cluster_keys(nodes: &[(Server, u16)]) -> i64 {
    nodes
        .iter()
        .map(|(n, _)| match n.cmd(&["DBSIZE"]).unwrap() {
            redis::Value::Int(k) => k,
            other => panic!("{other:?}"),
        })
        .sum()
}

/// How many of `codes` were admitted; every other one must be the conf's 429.
fn admitted(codes: &[u16]) -> usize {
    assert!(codes.iter().all(|&c| c == 200 || c == 429), "{codes:?}");
    codes.iter().filter(|&&c| c == 200).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_runner_processes_share_a_count_a_rate_and_a_concurrency_on_a_three_master_cluster() {
    if !available(
        "three_runner_processes_share_a_count_a_rate_and_a_concurrency_on_a_three_master_cluster",
    ) {
        return;
    }
    let nodes = cluster(None);
    let sockets: Vec<_> = (0..3).map(|_| temp_socket_path()).collect();
    let _runners: Vec<Spawned> = sockets
        .iter()
        .map(|s| Spawned(runner_command(s).spawn().expect("spawning the runner")))
        .collect();
    // A plugin's conf with `limits`, on the cluster through one node named (node `n`): the
    // client discovers the others.
    let on_cluster = |limits: &str, n: usize| {
        format!(
            r#"{{{limits}, "rejected_code": 429, "policy": "redis-cluster",
                "redis_cluster_name": "test", "redis_cluster_nodes": ["127.0.0.1:{}"],
                "redis_timeout": 2000}}"#,
            nodes[n].1
        )
    };
    let conf = on_cluster(r#""count": 10, "time_window": 600"#, 0);
    // Two connections per runner, as two gateway workers; keys spread over the slots.
    let mut admitted_per_key = Vec::new();
    for ip in ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"] {
        let gws = prepared(&sockets, 2, PRE, &[("limit-count", &conf)]).await;
        let codes = storm(gws, &request(Method::Get, "/").with_src_ip(ip), 4).await;
        admitted_per_key.push(admitted(&codes));
    }
    assert_eq!(
        admitted_per_key, [10; 4],
        "exactly `count` per key across three runners"
    );
    // Each key lives on exactly one master, the one its slot (its hash tag) belongs to.
    assert_eq!(cluster_keys(&nodes), 4);

    let req = request(Method::Get, "/").with_src_ip("10.0.0.5");
    // limit-req: one request per 10 s with a burst of 2, across the three: 3 pass, and one more
    // per 10 s the storm took (a machine slow enough for that is allowed for, never counted on).
    // Three buckets of their own would pass 9.
    let rate = on_cluster(r#""rate": 0.1, "burst": 2, "nodelay": true"#, 1);
    let gws = prepared(
        &sockets,
        1,
        "route#2#ext-plugin-pre-req#1",
        &[("limit-req", &rate)],
    )
    .await;
    let started = Instant::now();
    let codes = storm(gws, &req, 6).await;
    let drained = (started.elapsed().as_secs_f64() * 0.1).ceil() as usize;
    assert!(
        (3..=3 + drained).contains(&admitted(&codes)),
        "`burst + 1` across three runners: {codes:?}"
    );

    // limit-conn: nothing is answered (no response phase), so every admitted request stays in
    // flight: `conn + burst` in all, not per runner.
    let conn = on_cluster(r#""conn": 2, "burst": 1, "default_conn_delay": 0.01"#, 2);
    let gws = prepared(
        &sockets,
        2,
        "route#3#ext-plugin-pre-req#1",
        &[("limit-conn", &conn)],
    )
    .await;
    let codes = storm(gws, &req, 3).await;
    assert_eq!(
        admitted(&codes),
        3,
        "`conn + burst` in flight across three runners: {codes:?}"
    );
}

/// A test CA and server certificate in a directory of their own, when redis-server and openssl
/// are both here (else the test is skipped, loudly).
fn tls_setup(test: &str) -> Option<(tempfile::TempDir, (PathBuf, PathBuf, PathBuf))> {
    if !available(test) || !common::redis_server::openssl_available(test) {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let files = common::redis_server::tls_certs(dir.path());
    Some((dir, files))
}

/// A runner process trusting the roots in `ca` (`SSL_CERT_FILE`), or only the system's.
fn tls_runner(socket: &std::path::Path, ca: Option<&std::path::Path>) -> Spawned {
    let mut cmd = runner_command(socket);
    cmd.env_remove("SSL_CERT_FILE").env_remove("SSL_CERT_DIR");
    if let Some(ca) = ca {
        cmd.env("SSL_CERT_FILE", ca);
    }
    Spawned(cmd.spawn().expect("spawning the runner"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_redis_checks_the_certificate_unless_told_not_to() {
    let Some((_certs, (ca, crt, key))) =
        tls_setup("tls_to_redis_checks_the_certificate_unless_told_not_to")
    else {
        return;
    };
    let tls_port = free_port().to_string();
    let _redis = Server::start(
        None,
        &[
            "--tls-port",
            &tls_port,
            "--tls-cert-file",
            crt.to_str().unwrap(),
            "--tls-key-file",
            key.to_str().unwrap(),
            "--tls-ca-cert-file",
            ca.to_str().unwrap(),
            "--tls-auth-clients",
            "no",
        ],
    );
    let conf = |tls: &str| {
        format!(
            r#"{{"count": 2, "time_window": 600, "rejected_code": 429, "policy": "redis",
                "redis_host": "127.0.0.1", "redis_port": {tls_port}, "redis_timeout": 2000
                {tls}}}"#
        )
    };
    let verified = conf(r#", "redis_ssl": true, "redis_ssl_verify": true"#);
    let unverified = conf(r#", "redis_ssl": true"#);
    let plain = conf("");
    let (trusting, untrusting) = (temp_socket_path(), temp_socket_path());
    let _runners = [
        tls_runner(&trusting, Some(&ca)),
        tls_runner(&untrusting, None),
    ];
    // What three calls of one client answer, on `socket` with `conf` (route `route`).
    let three = |socket, route: &'static str, conf: String, ip: &'static str| async move {
        let mut gw = connect_spawned(socket).await;
        let token = gw
            .prepare(route, &[("limit-count", &conf)])
            .await
            .expect("the conf prepares");
        let req = request(Method::Get, "/").with_src_ip(ip);
        let mut codes = Vec::new();
        for _ in 0..3 {
            codes.push(status(&gw.call(token, &req).await.unwrap().action));
        }
        codes
    };
    let pre = |n| match n {
        1 => "route#1#ext-plugin-pre-req#1",
        2 => "route#2#ext-plugin-pre-req#1",
        _ => "route#3#ext-plugin-pre-req#1",
    };
    // Trusting the test CA: a verified and an unverified connection count; plain text to the TLS
    // port is no Redis at all (500, no fallback configured).
    assert_eq!(
        three(&trusting, pre(1), verified.clone(), "10.0.0.1").await,
        [200, 200, 429]
    );
    assert_eq!(
        three(&trusting, pre(2), unverified.clone(), "10.0.0.1").await,
        [200, 200, 429]
    );
    assert_eq!(three(&trusting, pre(3), plain, "10.0.0.1").await, [500; 3]);
    // Not trusting it: verification fails, so nothing is counted; unverified TLS still works.
    assert_eq!(
        three(&untrusting, pre(1), verified, "10.0.0.2").await,
        [500; 3]
    );
    assert_eq!(
        three(&untrusting, pre(2), unverified, "10.0.0.2").await,
        [200, 200, 429]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_is_reached_with_a_verified_certificate() {
    let Some((_certs, files)) = tls_setup("a_tls_cluster_is_reached_with_a_verified_certificate")
    else {
        return;
    };
    let nodes = cluster(Some(&files));
    let socket = temp_socket_path();
    let _runner = tls_runner(&socket, Some(&files.0));
    let conf = format!(
        r#"{{"count": 3, "time_window": 600, "rejected_code": 429,
            "policy": "redis-cluster", "redis_cluster_name": "tls",
            "redis_cluster_nodes": ["127.0.0.1:{}"], "redis_timeout": 2000,
            "redis_cluster_ssl": true, "redis_cluster_ssl_verify": true}}"#,
        nodes[0].1
    );
    let mut gw = connect_spawned(&socket).await;
    let token = gw
        .prepare("route#1#ext-plugin-pre-req#1", &[("limit-count", &conf)])
        .await
        .expect("the conf prepares");
    let req = request(Method::Get, "/").with_src_ip("10.0.0.9");
    let mut codes = Vec::new();
    for _ in 0..4 {
        codes.push(status(&gw.call(token, &req).await.unwrap().action));
    }
    assert_eq!(codes, [200, 200, 200, 429]);
    assert_eq!(cluster_keys(&nodes), 1);
}
