//! The three kinds of metric keel exports. Each is plain atomics: observing one is a few
//! relaxed atomic additions, with no lock and no allocation. Relaxed ordering is enough, as
//! a scrape only needs every value to be one that was true at some moment.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// A count that only goes up (`# TYPE counter`).
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (`# TYPE gauge`).
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn set(&self, value: i64) {
        self.0.store(value, Ordering::Relaxed);
    }

    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A distribution of durations over fixed buckets (`# TYPE histogram`), in seconds as
/// Prometheus histograms of time are.
///
/// Buckets are kept per bucket, not cumulatively (one addition per observation), and summed
/// when written; the count is the sum of the buckets, so `_count` always equals the `+Inf`
/// bucket even while observations land during a scrape. The sum is kept in whole nanoseconds
/// so that it is an integer addition rather than a compare-and-swap loop on a float.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds in seconds, ascending; a bucket holds what is at most its bound.
    bounds: &'static [f64],
    /// The same bounds in nanoseconds, which observations are compared with.
    bounds_nanos: Box<[u64]>,
    /// Observations per bucket; the last one holds those above every bound.
    counts: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// `bounds`: the buckets' upper bounds in seconds, ascending, without `+Inf`.
    pub fn new(bounds: &'static [f64]) -> Histogram {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "histogram bounds must ascend");
        Histogram {
            bounds,
            bounds_nanos: bounds.iter().map(|b| (b * 1e9).round() as u64).collect(),
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        // Most observations fall in the first buckets, so a linear search is the quick one.
        let bucket = self.bounds_nanos.iter().position(|bound| nanos <= *bound).unwrap_or(self.bounds_nanos.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Upper bounds in seconds, without `+Inf`.
    pub fn bounds(&self) -> &'static [f64] {
        self.bounds
    }

    /// Observations per bucket (not cumulative), one more than there are bounds.
    pub fn bucket_counts(&self) -> Vec<u64> {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect()
    }

    /// Every observation added up, in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9
    }

    /// How many observations were made.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_gauges_count() {
        let c = Counter::default();
        c.inc();
        c.add(4);
        assert_eq!(c.get(), 5);
        let g = Gauge::default();
        g.inc();
        g.inc();
        g.dec();
        assert_eq!(g.get(), 1);
        g.set(-3);
        assert_eq!(g.get(), -3);
    }

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        static BOUNDS: &[f64] = &[0.001, 0.01, 0.1];
        let h = Histogram::new(BOUNDS);
        h.observe(Duration::from_micros(500));
        // A bound is inclusive (Prometheus' `le`).
        h.observe(Duration::from_millis(1));
        h.observe(Duration::from_millis(2));
        h.observe(Duration::from_secs(5));
        assert_eq!(h.bucket_counts(), vec![2, 1, 0, 1]);
        assert_eq!(h.count(), 4);
        assert!((h.sum_seconds() - 5.0035).abs() < 1e-9, "{}", h.sum_seconds());
        assert_eq!(h.bounds(), BOUNDS);
    }
}
