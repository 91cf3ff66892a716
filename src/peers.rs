//! Who may connect: the peer's credentials (SO_PEERCRED), checked at accept.
//!
//! The socket file must be open to the gateway's workers, which often run as another user than
//! the runner (APISIX's privileged agent, root, spawns the runner; its nginx workers, often
//! `nobody`, connect). The file's mode cannot tell those workers from any other local user, so
//! the runner asks the kernel who connected and admits, by default (`--allow-peers gateway`):
//!
//! * its own user and root;
//! * the processes of the gateway that spawned it: the runner's parent and grandparent as they
//!   were when the runner started, and their direct children. Under APISIX the parent is the
//!   privileged agent and the grandparent the nginx master, whose children are the workers.
//!   An ancestor counts only while it is the same process (its start time, from
//!   `/proc/<pid>/stat`, unchanged: a dead gateway's reused pid admits nobody), and not when it
//!   is pid 1 (init adopts every orphan, so "a child of init" means nothing) unless it is the
//!   grandparent and runs the parent's executable: a gateway's master as a container's init
//!   (APISIX's Docker image), the parent being its privileged agent.
//!
//! `any` admits everyone; `uid:N` and `gid:N` (the peer's effective primary gid) admit exactly
//! those; a comma-separated list admits the union (`gateway,uid:1001`). A list without
//! `gateway` does not admit root or the runner's own user unless it names them.
//!
//! Refused peers are closed at once, unanswered, and logged per uid at most once an interval.
//! One race is left: the peer's pid is the one it had at connect; a process that connects, then
//! exits, leaving the socket to a child, is judged by whatever process has the pid when the
//! runner looks, which is only admitted if a gateway worker was started with that very pid.
//!
//! Admitted peers are also counted per uid (`--max-connections-per-uid`), so that one local
//! user cannot take every connection slot from the gateway.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use tokio::net::UnixStream;
use tracing::warn;

use crate::limits::Limits;

/// The `--allow-peers` rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowPeers(Vec<Allow>);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Allow {
    /// The runner's own uid, root, and the processes of the gateway that spawned it.
    Gateway,
    Any,
    Uid(u32),
    Gid(u32),
}

impl Default for AllowPeers {
    fn default() -> AllowPeers {
        AllowPeers(vec![Allow::Gateway])
    }
}

impl FromStr for AllowPeers {
    type Err = String;

    fn from_str(s: &str) -> Result<AllowPeers, String> {
        let id = |kind: &str, n: &str| {
            n.parse::<u32>()
                .map_err(|_| format!("`{kind}:{n}`: a numeric {kind} is expected"))
        };
        let rules = s
            .split(',')
            .map(|part| match part.trim().split_once(':') {
                None if part.trim() == "gateway" => Ok(Allow::Gateway),
                None if part.trim() == "any" => Ok(Allow::Any),
                Some(("uid", n)) => id("uid", n).map(Allow::Uid),
                Some(("gid", n)) => id("gid", n).map(Allow::Gid),
                _ => Err(format!(
                    "`{}`: expected `gateway`, `any`, `uid:N` or `gid:N`",
                    part.trim()
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AllowPeers(rules))
    }
}

impl fmt::Display for AllowPeers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, rule) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match rule {
                Allow::Gateway => f.write_str("gateway")?,
                Allow::Any => f.write_str("any")?,
                Allow::Uid(n) => write!(f, "uid:{n}")?,
                Allow::Gid(n) => write!(f, "gid:{n}")?,
            }
        }
        Ok(())
    }
}

/// A process as `/proc/<pid>/stat` shows it: enough to walk up and to tell a reused pid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Proc {
    pub(crate) pid: u32,
    pub(crate) ppid: u32,
    /// Clock ticks after boot at which it started: a pid's next owner starts later.
    pub(crate) start: u64,
}

/// Reads a process's `/proc/<pid>/stat`; `None` when it is gone (or there is no /proc).
fn read_proc(pid: u32) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(pid, &stat)
}

/// `pid (comm) state ppid ... starttime ...`: the command name may hold spaces and parentheses,
/// so the fields are counted from its last `)`. starttime is field 22, ppid field 4.
fn parse_stat(pid: u32, stat: &str) -> Option<Proc> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(Proc {
        pid,
        ppid: fields.get(1)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

/// Who may connect, decided once at start (the gateway's processes are the runner's ancestors
/// as they were then).
pub(crate) struct PeerPolicy {
    allow: AllowPeers,
    own_uid: u32,
    /// The runner's parent and grandparent, when they are processes of a gateway (not init).
    ancestors: Vec<Proc>,
    per_uid: Arc<PerUid>,
}

impl PeerPolicy {
    pub(crate) fn new(allow: AllowPeers, max_per_uid: usize) -> PeerPolicy {
        let ancestors = if allow.0.contains(&Allow::Gateway) {
            ancestors(std::process::id(), read_proc, same_exe)
        } else {
            Vec::new()
        };
        PeerPolicy {
            allow,
            own_uid: nix::unistd::geteuid().as_raw(),
            ancestors,
            per_uid: Arc::new(PerUid {
                max: max_per_uid,
                counts: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Whether `stream`'s peer may connect, and its per-uid slot; `None` (logged, throttled)
    /// when it may not: the caller drops the stream unanswered.
    pub(crate) fn admit(&self, stream: &UnixStream, limits: &Limits) -> Option<PeerSlot> {
        let cred = match stream.peer_cred() {
            Ok(c) => c,
            Err(e) => {
                if let Some(hits) = limits.refused_peers.hit("unknown") {
                    warn!(error = %e, hits, "cannot read a connecting peer's credentials; closed it");
                }
                return None;
            }
        };
        let (uid, gid, pid) = (cred.uid(), cred.gid(), cred.pid().map(|p| p as u32));
        if !self.admits(uid, gid, pid, read_proc) {
            if let Some(hits) = limits.refused_peers.hit(&uid.to_string()) {
                warn!(uid, gid, pid, hits, allow_peers = %self.allow,
                      "refused a connection from a peer --allow-peers does not admit; closed it unanswered");
            }
            return None;
        }
        let slot = PerUid::take(&self.per_uid, uid);
        if slot.is_none() {
            if let Some(hits) = limits.peer_connections.hit(&uid.to_string()) {
                warn!(uid, pid, hits, limit = self.per_uid.max,
                      "--max-connections-per-uid reached for this uid; closed a new connection unanswered");
            }
        }
        slot
    }

    /// The rule itself; `proc` reads a process (`/proc`, or a test's table).
    fn admits(
        &self,
        uid: u32,
        gid: u32,
        pid: Option<u32>,
        proc: impl Fn(u32) -> Option<Proc>,
    ) -> bool {
        self.allow.0.iter().any(|rule| match *rule {
            Allow::Any => true,
            Allow::Uid(n) => uid == n,
            Allow::Gid(n) => gid == n,
            Allow::Gateway => {
                uid == self.own_uid || uid == 0 || pid.is_some_and(|p| self.of_gateway(p, &proc))
            }
        })
    }

    /// Whether `pid` is one of the runner's recorded ancestors or a direct child of one, each
    /// ancestor still the same process.
    fn of_gateway(&self, pid: u32, proc: &impl Fn(u32) -> Option<Proc>) -> bool {
        let alive = |a: &Proc| proc(a.pid).is_some_and(|now| now.start == a.start);
        let Some(peer) = proc(pid) else { return false };
        self.ancestors
            .iter()
            .any(|a| (peer.pid == a.pid || peer.ppid == a.pid) && alive(a))
    }
}

/// The runner's parent and grandparent (`pid`'s). Pid 1 adopts every orphan, so it is not
/// taken for the gateway, with one exception: a grandparent at pid 1 running the same
/// executable as the parent is a gateway's master as a container's init (APISIX's image
/// `exec`s openresty; the privileged agent that spawns the runner is its fork). `same_exe`
/// compares two processes' executables (false when they cannot be read).
fn ancestors(
    pid: u32,
    proc: impl Fn(u32) -> Option<Proc>,
    same_exe: impl Fn(u32, u32) -> bool,
) -> Vec<Proc> {
    let mut found: Vec<Proc> = Vec::new();
    let mut next = proc(pid).map(|p| p.ppid);
    while let Some(ppid) = next.filter(|_| found.len() < 2) {
        let master_as_init = |parent: &Proc| ppid == 1 && same_exe(parent.pid, 1);
        if ppid == 0 || (ppid == 1 && !found.first().is_some_and(master_as_init)) {
            break;
        }
        let Some(p) = proc(ppid) else { break };
        found.push(p);
        next = Some(p.ppid);
    }
    found
}

/// Whether two processes run the same executable (`/proc/<pid>/exe`).
fn same_exe(a: u32, b: u32) -> bool {
    let exe = |pid: u32| std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    matches!((exe(a), exe(b)), (Some(x), Some(y)) if x == y)
}

/// Connections per peer uid. Bounded: a uid with no connection has no entry.
struct PerUid {
    max: usize,
    counts: Mutex<HashMap<u32, usize>>,
}

impl PerUid {
    fn take(this: &Arc<PerUid>, uid: u32) -> Option<PeerSlot> {
        let mut counts = this.counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(uid).or_insert(0);
        if *n >= this.max {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            per_uid: Arc::clone(this),
            uid,
        })
    }
}

/// One admitted connection's place in its uid's count, given back when dropped.
pub(crate) struct PeerSlot {
    per_uid: Arc<PerUid>,
    uid: u32,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut counts = self
            .per_uid
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process table: pid → (ppid, start).
    fn table(rows: &[(u32, u32, u64)]) -> impl Fn(u32) -> Option<Proc> + '_ {
        move |pid| {
            rows.iter()
                .find(|r| r.0 == pid)
                .map(|&(pid, ppid, start)| Proc { pid, ppid, start })
        }
    }

    fn policy(allow: &str, ancestors: Vec<Proc>) -> PeerPolicy {
        PeerPolicy {
            allow: allow.parse().unwrap(),
            own_uid: 500,
            ancestors,
            per_uid: Arc::new(PerUid {
                max: 2,
                counts: Mutex::new(HashMap::new()),
            }),
        }
    }

    // APISIX: master 100 → privileged agent 110 → runner 120; workers 101, 102 (nobody);
    // 200 is a local user's shell, 201 its child; 1 is init.
    const PROCS: &[(u32, u32, u64)] = &[
        (1, 0, 1),
        (100, 1, 50),
        (110, 100, 60),
        (120, 110, 70),
        (101, 100, 61),
        (102, 100, 62),
        (200, 1, 80),
        (201, 200, 81),
    ];

    #[test]
    fn the_ancestors_are_the_parent_and_grandparent_never_init() {
        assert_eq!(pids(&ancestors(120, table(PROCS), never_same)), [110, 100]);
        assert_eq!(
            pids(&ancestors(110, table(PROCS), never_same)),
            [100],
            "stops at init"
        );
        assert_eq!(pids(&ancestors(201, table(PROCS), never_same)), [200]);
        let always_same = |_, _| true;
        assert!(
            ancestors(200, table(PROCS), always_same).is_empty(),
            "init as the parent never counts"
        );
    }

    fn never_same(_: u32, _: u32) -> bool {
        false
    }

    fn pids(found: &[Proc]) -> Vec<u32> {
        found.iter().map(|p| p.pid).collect()
    }

    #[test]
    fn a_master_running_as_a_containers_init_counts() {
        // The container: master 1 → privileged agent 7 → runner 9; a worker 8.
        let procs = [(1, 0, 1), (7, 1, 5), (9, 7, 6), (8, 1, 5)];
        let forks_of_init = |a: u32, b: u32| [a, b].iter().all(|p| [1, 7].contains(p));
        let found = ancestors(9, table(&procs), forks_of_init);
        assert_eq!(pids(&found), [7, 1]);
        let p = policy("gateway", found);
        assert!(p.admits(65534, 65534, Some(8), table(&procs)), "the worker");
        // A host whose init is something else: the agent's parent at pid 1 is not the gateway.
        assert_eq!(pids(&ancestors(9, table(&procs), never_same)), [7]);
    }

    #[test]
    fn the_gateway_rule_admits_the_workers_own_uid_and_root_only() {
        let p = policy("gateway", ancestors(120, table(PROCS), never_same));
        let admits = |uid, pid| p.admits(uid, 65534, Some(pid), table(PROCS));
        assert!(admits(65534, 101), "a worker of the master");
        assert!(admits(65534, 110), "the agent itself");
        assert!(admits(500, 201), "the runner's own user");
        assert!(admits(0, 201), "root");
        assert!(!admits(65534, 201), "another user's process");
        assert!(!admits(65534, 200), "a child of init");
        assert!(!p.admits(65534, 65534, None, table(PROCS)), "no pid");
    }

    #[test]
    fn a_dead_gateways_reused_pid_admits_nobody() {
        let p = policy("gateway", ancestors(120, table(PROCS), never_same));
        // The master died; pid 100 now belongs to a later process, parent of 300.
        let reused = [(100, 1, 999), (300, 100, 1000)];
        assert!(!p.admits(65534, 65534, Some(300), table(&reused)));
    }

    #[test]
    fn lists_narrow_and_any_widens() {
        let none = Vec::new();
        let p = policy("uid:1001,gid:7", none.clone());
        assert!(p.admits(1001, 1, None, table(PROCS)));
        assert!(p.admits(2000, 7, None, table(PROCS)));
        assert!(!p.admits(500, 1, None, table(PROCS)), "own uid not listed");
        assert!(!p.admits(0, 0, None, table(PROCS)), "root not listed");
        assert!(policy("any", none).admits(4242, 4242, None, table(PROCS)));
    }

    #[test]
    fn the_rule_parses_and_prints_back() {
        for text in ["gateway", "any", "uid:0,gid:65534", "gateway,uid:1001"] {
            assert_eq!(text.parse::<AllowPeers>().unwrap().to_string(), text);
        }
        for bad in ["", "uid:", "uid:x", "nobody", "user:1", "gateway,"] {
            let err = bad.parse::<AllowPeers>().unwrap_err();
            assert!(err.contains('`'), "{bad}: {err}");
        }
    }

    #[test]
    fn proc_stat_lines_parse_whatever_the_command_name() {
        let stat =
            "4242 (a (b) c) S 17 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        let p = parse_stat(4242, stat).unwrap();
        assert_eq!((p.ppid, p.start), (17, 987654));
        assert!(parse_stat(1, "garbage").is_none());
        let me = read_proc(std::process::id()).expect("/proc/self/stat");
        assert_eq!(me.pid, std::process::id());
    }

    #[test]
    fn connections_per_uid_are_capped_and_given_back() {
        let p = policy("any", Vec::new());
        let a = PerUid::take(&p.per_uid, 7).unwrap();
        let _b = PerUid::take(&p.per_uid, 7).unwrap();
        assert!(PerUid::take(&p.per_uid, 7).is_none(), "max 2");
        assert!(PerUid::take(&p.per_uid, 8).is_some(), "another uid");
        drop(a);
        let _c = PerUid::take(&p.per_uid, 7).expect("a slot came back");
        drop(_c);
        drop(_b);
        assert!(
            p.per_uid.counts.lock().unwrap().is_empty(),
            "no entry is kept for a uid without connections"
        );
    }
}
