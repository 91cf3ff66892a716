//! limit-count's `sync_interval` on Redis as quota leasing: each runner takes grants of quota
//! from the shared counter and spends them locally, so most requests never wait on Redis and the
//! sum of the grants of a window never passes `count`: the limit holds cluster-wide (APISIX's
//! delayed sync lets every node spend the whole cached remainder, so N nodes over-admit).
//!
//! * The counter is the exact mode's (a grant is an `INCRBY` of it), so runners in either mode
//!   share a key. The script grants `min(want, count − used)` and answers the window's end on
//!   Redis's clock, which tells one window from the next.
//! * A key's pool is refilled by one task at a time (single flight): in the background when it
//!   falls below half of its last grant or has not synced for `sync_interval`; inline, bounded by
//!   `redis_timeout`, when it is empty (the first request of a key and window, and rarely
//!   otherwise). `want = ⌈rate × sync_interval × 1.5⌉`, from 1 to a quarter of what is left
//!   (at least 1), so one runner does not take what the others need.
//! * Tokens are spent only before the window's end as seen from before the grant was asked for,
//!   which is no later than Redis's: a token is never spent in a window it was not counted in.
//! * A pool that Redis answered empty rejects locally until the window ends: no round trip per
//!   reject. Runners under-admit at most by the tokens they hold unspent.

use std::pin::pin;
use std::sync::{Arc, LazyLock, Mutex};

use ext_plugin_sdk::Clock;
use redis::Script;
use tokio::sync::Notify;

use super::backend::{Backend, Unavailable};
use crate::limit_count::{Quota, Verdict};
use crate::support::clock::{Nanos, NANOS_PER_MS, NANOS_PER_SEC};
use crate::support::keyed::{lock, KeyedStore};

/// `KEYS[1]` the counter; `ARGV` count, window (ms), want. Returns `{granted, used, pttl, end}`,
/// `end` the window's end in ms on Redis's clock.
static GRANT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        lua_now_ms!(),
        r"
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local used = 0
local ttl = redis.call('PTTL', KEYS[1])
if ttl == -2 then
  ttl = window
else
  used = tonumber(redis.call('GET', KEYS[1]) or '0')
  if ttl < 0 then
    redis.call('PEXPIRE', KEYS[1], window)
    ttl = window
  end
end
local grant = math.max(0, math.min(want, limit - used))
if grant > 0 then
  if used == 0 then
    redis.call('SET', KEYS[1], grant, 'PX', ttl)
  else
    redis.call('INCRBY', KEYS[1], grant)
  end
end
return {grant, used + grant, ttl, now + ttl}
",
    ))
});

/// The leased quota of one quota of a conf, per limit key.
pub struct Leasing {
    sync_every: u64,
    pools: KeyedStore<Pool>,
}

/// One key's pool: its state under a short lock, and a wake-up for requests waiting on a refill.
pub struct Pool {
    state: Mutex<PoolState>,
    refilled: Notify,
}

/// What a runner knows of one key's window.
#[derive(Debug, Default)]
pub struct PoolState {
    /// Granted and not spent yet.
    tokens: u64,
    /// Local time the tokens must be spent by (0: no window known).
    until: u64,
    /// The window's end on Redis's clock (ms): the window's identity.
    end: i64,
    /// `count − used` after the last grant: what the other runners may still take.
    left: u64,
    last_grant: u64,
    synced_at: u64,
    spent_since_sync: u64,
    /// Requests per second, smoothed.
    rate: f64,
    refilling: bool,
}

/// What a request does with a pool.
#[derive(Debug, PartialEq)]
pub enum Take {
    /// Admitted; `Some(want)`: this request refills the pool in the background.
    Admit(Verdict, Option<u64>),
    /// Redis said the window is spent.
    Reject(Verdict),
    /// The pool is empty: this request refills it with `want` and then tries again.
    Refill(u64),
    /// The pool is empty and another request is refilling it.
    Wait,
}

/// A grant as Redis answered it.
#[derive(Debug, Clone, Copy)]
pub struct Grant {
    pub granted: u64,
    pub used: u64,
    /// Milliseconds the window has left.
    pub pttl: u64,
    /// The window's end on Redis's clock (ms).
    pub end: i64,
}

impl PoolState {
    /// One request at `now` against quota `q`; `sync_every` in ns.
    pub fn take(&mut self, now: u64, q: Quota, sync_every: u64) -> Take {
        if now >= self.until {
            // The window ended: unspent tokens were counted in it and must not be spent in the
            // next one.
            self.tokens = 0;
            self.left = q.count;
        }
        let reset_in = self.until.saturating_sub(now);
        if self.tokens > 0 {
            self.tokens -= 1;
            self.spent_since_sync += 1;
            let low = self.tokens.saturating_mul(2) < self.last_grant;
            let stale = now.saturating_sub(self.synced_at) >= sync_every;
            let refill = (low || stale) && self.left > 0 && !self.refilling;
            self.refilling |= refill;
            let v = Verdict {
                admitted: true,
                remaining: self.tokens.saturating_add(self.left),
                reset_in,
            };
            return Take::Admit(v, refill.then(|| self.want(now, sync_every)));
        }
        if self.left == 0 {
            return Take::Reject(Verdict {
                admitted: false,
                remaining: 0,
                reset_in,
            });
        }
        if self.refilling {
            return Take::Wait;
        }
        self.refilling = true;
        Take::Refill(self.want(now, sync_every))
    }

    /// How many tokens to ask for at `now`: what the recent rate (or the rate since the last
    /// sync, when higher: a burst) spends in 1.5 sync intervals, at most a quarter of what is
    /// left.
    fn want(&self, now: u64, sync_every: u64) -> u64 {
        let rate = match self.synced_at {
            0 => 0.0,
            at => self
                .rate
                .max(per_sec(self.spent_since_sync, now.saturating_sub(at))),
        };
        let by_rate = (rate * sync_every as f64 / NANOS_PER_SEC as f64 * 1.5).ceil();
        let cap = (self.left / 4).max(1);
        (by_rate as u64).clamp(1, cap)
    }

    /// Applies a grant for quota `q` asked for at `asked` (local time), answered at `now`.
    pub fn granted(&mut self, g: Grant, q: Quota, asked: u64, now: u64) {
        // Ends half a window apart or more (a window is longer than any round trip): the grant
        // is of another window than the tokens held.
        let half_ms = (q.window / NANOS_PER_MS / 2) as i64;
        if self.until <= asked || (g.end - self.end).abs() >= half_ms {
            self.tokens = 0;
        }
        self.tokens += g.granted;
        self.end = g.end;
        // `asked + pttl` is no later than the window's end on Redis: the ttl was read after.
        self.until = asked.saturating_add(g.pttl.saturating_mul(NANOS_PER_MS));
        self.left = q.count.saturating_sub(g.used);
        self.last_grant = g.granted;
        let sample = per_sec(self.spent_since_sync, now.saturating_sub(self.synced_at));
        self.rate = match self.synced_at {
            0 => sample,
            _ => (self.rate + sample) / 2.0,
        };
        self.synced_at = now;
        self.spent_since_sync = 0;
        self.refilling = false;
    }
}

/// `n` per `elapsed` ns, in per second (elapsed taken as at least a millisecond).
fn per_sec(n: u64, elapsed: u64) -> f64 {
    n as f64 * NANOS_PER_SEC as f64 / elapsed.max(NANOS_PER_MS) as f64
}

/// Ends a refill however it ends (answered, failed, or its request dropped): the pool may be
/// refilled again and its waiters try again.
struct Refilling<'a>(&'a Pool);

impl Drop for Refilling<'_> {
    fn drop(&mut self) {
        lock(&self.0.state).refilling = false;
        self.0.refilled.notify_waiters();
    }
}

impl Pool {
    /// Asks Redis for `want` tokens of `rkey` under `q` and adds them to the pool.
    async fn refill(
        &self,
        backend: &Backend,
        rkey: &str,
        q: Quota,
        want: u64,
        asked: u64,
        clock: &Clock,
    ) -> Result<(), Unavailable> {
        let _done = Refilling(self);
        let window_ms = (q.window / NANOS_PER_MS).clamp(1, i64::MAX as u64) as i64;
        let args = [q.count.min(i64::MAX as u64) as i64, window_ms, want as i64];
        let (granted, used, pttl, end): (i64, i64, i64, i64) =
            backend.eval(&GRANT, rkey, &args, None).await?;
        let g = Grant {
            granted: granted.max(0) as u64,
            used: used.max(0) as u64,
            pttl: pttl.max(0) as u64,
            end,
        };
        lock(&self.state).granted(g, q, asked, clock.nanos());
        Ok(())
    }
}

impl Leasing {
    /// `sync_every`: `sync_interval` in ns; `max_keys` and `idle` bound the pools.
    pub fn new(sync_every: u64, max_keys: usize, idle: u64) -> Leasing {
        Leasing {
            sync_every,
            pools: KeyedStore::new(max_keys, idle),
        }
    }

    /// One request of `key` (Redis key from `rkey`) under `q` at `now` on `clock`. Waits on
    /// Redis only when the pool is empty, at most `redis_timeout`.
    pub async fn acquire(
        &self,
        backend: &Arc<Backend>,
        key: &str,
        rkey: impl Fn() -> String,
        q: Quota,
        now: u64,
        clock: &Clock,
    ) -> Result<Verdict, Unavailable> {
        let pool = self.pools.get_or_insert(key, now, || Pool {
            state: Mutex::new(PoolState::default()),
            refilled: Notify::new(),
        });
        let deadline = tokio::time::Instant::now() + backend.timeout();
        let mut now = now;
        loop {
            let mut waiting = pin!(pool.refilled.notified());
            let take = {
                let mut state = lock(&pool.state);
                let take = state.take(now, q, self.sync_every);
                if take == Take::Wait {
                    // Registered before the lock goes: the refill's wake-up cannot be missed.
                    waiting.as_mut().enable();
                }
                take
            };
            match take {
                Take::Admit(v, None) | Take::Reject(v) => return Ok(v),
                Take::Admit(v, Some(want)) => {
                    let refill = background(
                        pool.clone(),
                        backend.clone(),
                        rkey(),
                        q,
                        want,
                        now,
                        clock.clone(),
                    );
                    match tokio::runtime::Handle::try_current() {
                        Ok(rt) => drop(rt.spawn(refill)),
                        // No runtime to leave it to: refill before answering.
                        Err(_) => refill.await,
                    }
                    return Ok(v);
                }
                Take::Refill(want) => {
                    pool.refill(backend, &rkey(), q, want, now, clock).await?;
                }
                Take::Wait => {
                    if tokio::time::timeout_at(deadline, waiting).await.is_err() {
                        return Err(Unavailable::Timeout);
                    }
                }
            }
            now = clock.nanos();
            if tokio::time::Instant::now() >= deadline {
                return Err(Unavailable::Timeout);
            }
        }
    }
}

/// A refill left to run after the request that started it was answered; its failure is the
/// backend's to log (the breaker), and the pool's next empty moment asks again.
async fn background(
    pool: Arc<Pool>,
    backend: Arc<Backend>,
    rkey: String,
    q: Quota,
    want: u64,
    asked: u64,
    clock: Clock,
) {
    let _ = pool.refill(&backend, &rkey, q, want, asked, &clock).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = NANOS_PER_SEC;
    const Q: Quota = Quota {
        count: 100,
        window: 10 * S,
    };

    fn grant(granted: u64, used: u64, pttl_ms: u64, end: i64) -> Grant {
        Grant {
            granted,
            used,
            pttl: pttl_ms,
            end,
        }
    }

    fn admitted(t: Take) -> Option<u64> {
        match t {
            Take::Admit(v, refill) => {
                assert!(v.admitted);
                refill
            }
            other => panic!("expected an admission, got {other:?}"),
        }
    }

    #[test]
    fn an_empty_pool_refills_once_and_others_wait() {
        let mut p = PoolState::default();
        let t0 = 100 * S;
        assert_eq!(
            p.take(t0, Q, S),
            Take::Refill(1),
            "no rate known yet: one token"
        );
        assert_eq!(p.take(t0, Q, S), Take::Wait, "single flight");
        p.granted(grant(1, 1, 10_000, 50_000), Q, t0, t0 + NANOS_PER_MS);
        assert!(!p.refilling);
        // The one token is spent and, the pool being below half its grant, a refill starts.
        let want = admitted(p.take(t0 + 2 * NANOS_PER_MS, Q, S)).expect("a background refill");
        assert!(want >= 1);
        assert_eq!(p.take(t0 + 3 * NANOS_PER_MS, Q, S), Take::Wait);
    }

    #[test]
    fn grants_follow_the_rate_and_leave_most_to_the_others() {
        let mut p = PoolState::default();
        let t0 = 100 * S;
        p.take(t0, Q, S);
        p.granted(grant(10, 10, 10_000, 50_000), Q, t0, t0);
        // Ten requests in 100 ms: 100/s, so 1.5 s worth is 150, capped at a quarter of 90.
        for i in 0..10 {
            p.take(t0 + i * 10 * NANOS_PER_MS, Q, S);
        }
        p.refilling = false;
        assert_eq!(p.take(t0 + 100 * NANOS_PER_MS, Q, S), Take::Refill(22));
        p.granted(
            grant(22, 32, 9_900, 50_000),
            Q,
            t0 + 100 * NANOS_PER_MS,
            t0 + 100 * NANOS_PER_MS,
        );
        assert_eq!((p.tokens, p.left), (22, 68), "same window: added");
    }

    #[test]
    fn tokens_are_never_spent_outside_their_window() {
        let mut p = PoolState::default();
        let t0 = 100 * S;
        p.take(t0, Q, S);
        p.granted(grant(50, 50, 10_000, 50_000), Q, t0, t0 + 5 * NANOS_PER_MS);
        assert_eq!(p.until, t0 + 10 * S, "from when the grant was asked for");
        let stale = admitted(p.take(t0 + 10 * S - 1, Q, S));
        assert!(stale.is_some(), "no sync for a second: refill");
        p.refilling = false;
        // The window ended: 49 tokens were counted in it and are dropped.
        assert_eq!(
            p.take(t0 + 10 * S, Q, S),
            Take::Refill(1),
            "one spent in 10 s"
        );
        assert_eq!(p.tokens, 0);
        // A grant of a window that began while tokens were held replaces them.
        let mut p = PoolState::default();
        p.take(t0, Q, S);
        p.granted(grant(50, 50, 10_000, 50_000), Q, t0, t0);
        p.granted(grant(5, 5, 10_000, 59_000), Q, t0 + S, t0 + S);
        assert_eq!(p.tokens, 5, "another window's end: the old tokens go");
        p.granted(grant(5, 10, 9_000, 59_001), Q, t0 + 2 * S, t0 + 2 * S);
        assert_eq!(p.tokens, 10, "the same window, a millisecond apart");
    }

    #[test]
    fn a_spent_window_rejects_locally_until_it_ends() {
        let mut p = PoolState::default();
        let t0 = 100 * S;
        p.take(t0, Q, S);
        p.granted(grant(0, 100, 4_000, 50_000), Q, t0, t0);
        let Take::Reject(v) = p.take(t0 + S, Q, S) else {
            panic!("spent")
        };
        assert_eq!((v.admitted, v.remaining, v.reset_in), (false, 0, 3 * S));
        assert!(!p.refilling, "no round trip per reject");
        assert!(matches!(p.take(t0 + 4 * S, Q, S), Take::Refill(_)));
    }
}
