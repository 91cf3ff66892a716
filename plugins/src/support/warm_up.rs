//! Sentinel's warm-up curve for the limiters (`warm_up_period_sec`, `cold_factor` *(ext)* of
//! limit-count and limit-req): after an idle period (or a deploy) a key may not take its full
//! threshold at once; it starts at `threshold / cold_factor` and rises to the full threshold as
//! traffic flows, over about `warm_up_period_sec` at full load.
//!
//! Sentinel's `WarmUpController` model, per key, in units of "seconds of full threshold":
//!
//! * a bucket of stored tokens starts full (`max`): the key is cold;
//! * each admitted request takes `1 / rate` tokens (rate: the key's threshold per second);
//! * tokens flow back at 1 per second while the key is warm (below `warning`), or while it is
//!   cold and its traffic is under `rate / cold_factor` (requests further apart than
//!   `cold_factor / rate`);
//! * `warning = T / (c − 1)`, `max = warning + 2T / (1 + c)` for period `T` and factor `c`;
//!   below `warning` the full threshold applies, above it the threshold is divided by
//!   `1 + (tokens − warning) × (c − 1) / (max − warning)`, which is `c` when the bucket is full.
//!
//! Sentinel syncs the bucket once a second with the last second's count; here it is synced at
//! every request, which is the same curve without the one-second steps.

use std::sync::Mutex;

use super::clock::NANOS_PER_SEC;
use super::keyed::{lock, KeyedStore};
use ext_plugin_sdk::ConfError;

/// The default `cold_factor`, Sentinel's.
pub const DEFAULT_COLD_FACTOR: f64 = 3.0;

pub struct WarmUp {
    warning: f64,
    max: f64,
    slope: f64,
    cold_factor: f64,
    keys: KeyedStore<Mutex<Tokens>>,
}

struct Tokens {
    stored: f64,
    synced: u64,
    last_admit: u64,
}

impl WarmUp {
    /// From the conf fields: `None` when `warm_up_period_sec` is not set.
    pub fn from_conf(
        period_sec: Option<f64>,
        cold_factor: Option<f64>,
        max_keys: usize,
    ) -> Result<Option<WarmUp>, ConfError> {
        let Some(period) = period_sec else {
            if cold_factor.is_some() {
                return Err(ConfError::field(
                    "cold_factor",
                    "needs `warm_up_period_sec`",
                ));
            }
            return Ok(None);
        };
        if !(period > 0.0 && period <= 3600.0) {
            return Err(ConfError::field(
                "warm_up_period_sec",
                format!("must be above 0 and at most 3600, got {period}"),
            ));
        }
        let c = cold_factor.unwrap_or(DEFAULT_COLD_FACTOR);
        if !(c > 1.0 && c <= 100.0) {
            return Err(ConfError::field(
                "cold_factor",
                format!("must be above 1 and at most 100, got {c}"),
            ));
        }
        let warning = period / (c - 1.0);
        let max = warning + 2.0 * period / (1.0 + c);
        Ok(Some(WarmUp {
            warning,
            max,
            slope: (c - 1.0) / (max - warning),
            cold_factor: c,
            // A key idle for a whole period is fully cold again: it may go.
            keys: KeyedStore::new(max_keys, (period * 4.0 * NANOS_PER_SEC as f64) as u64),
        }))
    }

    /// Runs `check` with the share (`1 / cold_factor` to 1) of `key`'s threshold that applies
    /// at `now`, under the key's lock; `rate` is the key's full threshold per second. When
    /// `check` admits the request, it takes its tokens.
    pub fn gate(&self, key: &str, now: u64, rate: f64, check: impl FnOnce(f64) -> bool) -> bool {
        let cell = self.keys.get_or_insert(key, now, || {
            Mutex::new(Tokens {
                stored: self.max,
                synced: now,
                last_admit: 0,
            })
        });
        let mut t = lock(&cell);
        let elapsed = now.saturating_sub(t.synced) as f64 / NANOS_PER_SEC as f64;
        let slow = t.last_admit == 0
            || now.saturating_sub(t.last_admit) as f64 / NANOS_PER_SEC as f64
                > self.cold_factor / rate;
        if t.stored < self.warning || slow {
            t.stored = (t.stored + elapsed).min(self.max);
        }
        t.synced = now;
        let share = self.share(t.stored);
        let admitted = check(share);
        if admitted {
            t.stored = (t.stored - 1.0 / rate).max(0.0);
            t.last_admit = now;
        }
        admitted
    }

    /// [`WarmUp::gate`] for a limiter that may have no warm-up: `check` gets the threshold
    /// share (1 without warm-up) and says whether it admitted, with its verdict.
    pub fn check<V>(
        warm: Option<&WarmUp>,
        key: &str,
        now: u64,
        rate: f64,
        check: impl FnOnce(f64) -> (bool, V),
    ) -> V {
        let Some(w) = warm else {
            return check(1.0).1;
        };
        let mut verdict = None;
        w.gate(key, now, rate, |share| {
            let (admitted, v) = check(share);
            verdict = Some(v);
            admitted
        });
        verdict.expect("gate runs its check")
    }

    /// A stable description, for state shared by a `group`.
    pub fn signature(&self) -> String {
        format!(
            "warm {:.3}/{:.3}/{}",
            self.warning, self.max, self.cold_factor
        )
    }

    /// The share of the threshold that applies with `stored` tokens.
    fn share(&self, stored: f64) -> f64 {
        if stored < self.warning {
            1.0
        } else {
            1.0 / ((stored - self.warning) * self.slope + 1.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = NANOS_PER_SEC;

    #[test]
    fn a_cold_key_starts_at_a_third_and_warms_under_load() {
        let w = WarmUp::from_conf(Some(10.0), None, 100).unwrap().unwrap();
        let t0 = 1000 * S;
        let mut first = 0.0;
        assert!(w.gate("k", t0, 100.0, |share| {
            first = share;
            true
        }));
        assert!((first - 1.0 / 3.0).abs() < 1e-9, "cold: {first}");
        // 100 requests/s, all admitted: the key warms up within about the period.
        let mut share_at = Vec::new();
        for ms in 1..=15_000u64 {
            if ms % 10 == 0 {
                w.gate("k", t0 + ms * S / 1000, 100.0, |share| {
                    if ms % 1000 == 0 {
                        share_at.push(share);
                    }
                    true
                });
            }
        }
        assert!(
            share_at.windows(2).all(|p| p[1] >= p[0]),
            "rises: {share_at:?}"
        );
        assert!(share_at[2] < 0.75, "still warming after 3 s: {share_at:?}");
        assert!(
            *share_at.last().unwrap() > 0.99,
            "warm after 15 s: {share_at:?}"
        );
        // Long idle: cold again.
        w.gate("k", t0 + 1000 * S, 100.0, |share| {
            assert!((share - 1.0 / 3.0).abs() < 1e-9);
            false
        });
    }

    #[test]
    fn fields_are_checked() {
        assert!(WarmUp::from_conf(None, None, 1).unwrap().is_none());
        for (p, c, says) in [
            (None, Some(3.0), "cold_factor"),
            (Some(0.0), None, "warm_up_period_sec"),
            (Some(1.0), Some(1.0), "cold_factor"),
        ] {
            let e = WarmUp::from_conf(p, c, 1).err().unwrap();
            assert!(e.message().contains(says), "{e}");
        }
    }
}
