//! A sliding-window counter (Sentinel's LeapArray): the window is split into `n` buckets and a
//! count is the sum of the buckets still inside the window, so a burst at a window boundary is
//! seen by the next window instead of being forgiven.
//!
//! Not synchronised: each limiter keeps one per key under a short lock, which makes "check, then
//! add" atomic.

/// `K` counters per bucket (e.g. total/errors/slow for a breaker).
#[derive(Debug, Clone)]
pub struct LeapArray<const K: usize> {
    bucket_ns: u64,
    buckets: Box<[Bucket<K>]>,
}

const UNUSED: u64 = u64::MAX;

#[derive(Debug, Clone, Copy)]
struct Bucket<const K: usize> {
    /// Start of the bucket's time span; [`UNUSED`] before the first count.
    start: u64,
    counts: [u64; K],
}

impl<const K: usize> LeapArray<K> {
    /// A window of `window_ns` split into `buckets` (≥ 1) buckets.
    pub fn new(window_ns: u64, buckets: usize) -> LeapArray<K> {
        let buckets = buckets.max(1);
        LeapArray {
            bucket_ns: (window_ns / buckets as u64).max(1),
            buckets: vec![
                Bucket {
                    start: UNUSED,
                    counts: [0; K]
                };
                buckets
            ]
            .into(),
        }
    }

    fn window_ns(&self) -> u64 {
        self.bucket_ns * self.buckets.len() as u64
    }

    fn live(&self, b: &Bucket<K>, now: u64) -> bool {
        b.start != UNUSED && now.saturating_sub(b.start) < self.window_ns()
    }

    /// Adds `by` to counter `k` of the bucket covering `now`.
    pub fn add(&mut self, now: u64, k: usize, by: u64) {
        let start = now - now % self.bucket_ns;
        let i = (now / self.bucket_ns) as usize % self.buckets.len();
        let b = &mut self.buckets[i];
        if b.start != start {
            *b = Bucket {
                start,
                counts: [0; K],
            };
        }
        b.counts[k] += by;
    }

    /// The counters summed over the window ending at `now`.
    pub fn sum(&self, now: u64) -> [u64; K] {
        let mut total = [0; K];
        for b in self.buckets.iter().filter(|b| self.live(b, now)) {
            for (t, c) in total.iter_mut().zip(b.counts) {
                *t += c;
            }
        }
        total
    }

    /// When the oldest bucket holding counts leaves the window (the earliest moment the sum can
    /// drop); `None` when the window is empty.
    pub fn next_expiry(&self, now: u64) -> Option<u64> {
        self.buckets
            .iter()
            .filter(|b| self.live(b, now) && b.counts.iter().any(|&c| c > 0))
            .map(|b| b.start.saturating_add(self.window_ns()))
            .min()
    }

    pub fn clear(&mut self) {
        for b in self.buckets.iter_mut() {
            b.start = UNUSED;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_slide_out_bucket_by_bucket() {
        let mut w: LeapArray<1> = LeapArray::new(1000, 10);
        w.add(1000, 0, 3); // bucket [1000, 1100)
        w.add(1550, 0, 2); // bucket [1500, 1600)
        assert_eq!(w.sum(1999), [5]);
        assert_eq!(w.next_expiry(1999), Some(2000));
        assert_eq!(w.sum(2000), [2], "the first bucket left the window");
        assert_eq!(w.sum(2500), [0]);
        assert_eq!(w.next_expiry(2500), None);
    }

    #[test]
    fn a_reused_slot_starts_from_zero() {
        let mut w: LeapArray<2> = LeapArray::new(1000, 4);
        w.add(10, 1, 7);
        w.add(1010, 0, 1); // same slot, one window later
        assert_eq!(w.sum(1010), [1, 0]);
        w.clear();
        assert_eq!(w.sum(1010), [0, 0]);
    }
}
