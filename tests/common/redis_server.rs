//! Real `redis-server` processes for the tests: one per [`Server`], each in its own directory
//! with a unix socket the test controls it through, optionally listening on a loopback port
//! too (replication, sentinels and clusters need TCP), killed on drop.
//!
//! Without `redis-server` on the PATH (or `openssl`, for the TLS tests), [`available`] says
//! loudly that the calling test was skipped, unless `REDIS_TESTS=require` (CI) makes that a
//! failure. Install them with `apt-get install -y redis-server openssl`.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether `redis-server` can run here; loud when it cannot.
pub fn available(test: &str) -> bool {
    have("redis-server", "redis-server", test)
}

/// Whether the openssl CLI (for [`tls_certs`]) can run here; loud when it cannot.
pub fn openssl_available(test: &str) -> bool {
    have("openssl", "openssl", test)
}

/// Whether `program` runs; when it does not, the test is skipped, loudly, unless
/// `REDIS_TESTS=require` (CI) makes that a failure.
fn have(program: &str, package: &str, test: &str) -> bool {
    let found = Command::new(program)
        .arg(if program == "openssl" {
            "version"
        } else {
            "--version"
        })
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("REDIS_TESTS").as_deref() != Ok("require"),
            "REDIS_TESTS=require but {program} is not installed"
        );
        // Past the test harness's capture, so that a skip is seen even when the test passes.
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED {test}: {program} is not installed (apt-get install -y {package}, \
             or REDIS_TESTS=require to fail) ***\n"
        );
    }
    found
}

/// A loopback port nobody listens on now (the usual bind-and-release; a clash fails the start
/// loudly rather than silently).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One `redis-server` process.
pub struct Server {
    pub dir: tempfile::TempDir,
    /// The loopback port, when it listens on one.
    pub port: Option<u16>,
    args: Vec<String>,
    child: Option<Child>,
}

impl Server {
    /// A server on a unix socket only.
    pub fn unix() -> Server {
        Server::start(None, &[])
    }

    /// A server on a unix socket and on 127.0.0.1:`port` (0: none), with more `args`
    /// (`["--replicaof", ...]`, TLS settings, ...).
    pub fn start(port: Option<u16>, args: &[&str]) -> Server {
        let mut s = Server {
            dir: tempfile::tempdir().unwrap(),
            port,
            args: args.iter().map(|a| a.to_string()).collect(),
            child: None,
        };
        s.restart();
        s
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("r.sock")
    }

    /// `redis_host` for this server's socket.
    pub fn host(&self) -> String {
        format!("unix:{}", self.socket().display())
    }

    /// Starts the process again (after [`Server::stop`]), with the same settings.
    pub fn restart(&mut self) {
        let port = self.port.unwrap_or(0).to_string();
        let child = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--unixsocket"])
            .arg(self.socket())
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(self.dir.path())
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cmd(&["PING"]).is_err() {
            assert!(Instant::now() < deadline, "redis-server never answered");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process (as a crash would) and removes its socket.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(self.socket());
    }

    /// An outage for the failure-path tests: `"paused"` pauses every client for 4 s (Redis
    /// stalls, the connection stays), `"stopped"` kills the server (see [`Server::stop`]).
    pub fn outage(&mut self, phase: &str) {
        match phase {
            "paused" => {
                self.cmd(&["CLIENT", "PAUSE", "4000", "ALL"]).unwrap();
            }
            "stopped" => self.stop(),
            other => panic!("no outage {other:?}"),
        }
    }

    /// A command's text answer (`INFO`, `CLUSTER INFO`), or what went wrong, as text.
    pub fn text(&self, args: &[&str]) -> String {
        match self.cmd(args) {
            Ok(redis::Value::BulkString(b)) => String::from_utf8_lossy(&b).into_owned(),
            Ok(redis::Value::VerbatimString { text, .. }) => text,
            other => format!("{other:?}"),
        }
    }

    /// One command over the unix socket.
    pub fn cmd(&self, args: &[&str]) -> redis::RedisResult<redis::Value> {
        let client = redis::Client::open(format!("redis+unix://{}", self.socket().display()))?;
        let mut con = client.get_connection()?;
        let mut c = redis::cmd(args[0]);
        for a in &args[1..] {
            c.arg(*a);
        }
        c.query(&mut con)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A test CA and a server certificate it signed for `127.0.0.1` and `localhost`, made with the
/// openssl CLI (PEM files in `dir`): `(ca.crt, server.crt, server.key)`.
pub fn tls_certs(dir: &std::path::Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &str| {
        let out = Command::new("openssl")
            .args(args.split_whitespace())
            .current_dir(dir)
            .output()
            .expect("running openssl (apt-get install -y openssl)");
        assert!(
            out.status.success(),
            "openssl {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    const EC: &str = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2";
    run(&format!(
        "req -x509 {EC} -keyout ca.key -out ca.crt -subj /CN=test-ca \
         -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign"
    ));
    run(&format!(
        "req {EC} -keyout server.key -out server.csr -subj /CN=localhost"
    ));
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    run(
        "x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt \
         -days 2 -extfile server.ext",
    );
    let file = |name| dir.join(name);
    (file("ca.crt"), file("server.crt"), file("server.key"))
}
