//! Latency histograms with log-linear buckets, the layout the benchmark payloads use in the
//! guest (guest-tests/guest/src/bin/bench_time_dist.rs builds them at CPL3 and reports the
//! non-empty buckets): values below 32 exactly, then 16 buckets per power of two, so a bucket
//! is at most 1/16 (6.25%) of its values wide, up to 2^36 (larger values share the last one).

use serde::Serialize;

/// Sub-buckets per power of two, as a power of two.
pub const SUB_BITS: u32 = 4;
/// Values below this have a bucket each.
const EXACT: u64 = 2 << SUB_BITS;
/// Values at or above 2^MAX_BITS share the last bucket.
const MAX_BITS: u32 = 36;
/// Number of buckets.
pub const BUCKETS: usize = EXACT as usize + ((MAX_BITS - SUB_BITS - 1) as usize) * (1 << SUB_BITS);

/// Counts per bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram {
    counts: Vec<u64>,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
        }
    }
}

/// One non-empty bucket: values in `[lo, hi)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Bucket {
    /// Smallest value in the bucket.
    pub lo: u64,
    /// One past the largest.
    pub hi: u64,
    /// How many values fell in it.
    pub count: u64,
}

impl Histogram {
    /// The bucket of `value`.
    pub fn bucket_of(value: u64) -> usize {
        if value < EXACT {
            return value as usize;
        }
        let v = value.min((1 << MAX_BITS) - 1);
        let e = 63 - v.leading_zeros();
        let sub = (v >> (e - SUB_BITS)) & ((1 << SUB_BITS) - 1);
        EXACT as usize + ((e - SUB_BITS - 1) as usize) * (1 << SUB_BITS) + sub as usize
    }

    /// The values `[lo, hi)` bucket `index` holds (`None` past the last bucket).
    pub fn bucket_range(index: usize) -> Option<(u64, u64)> {
        if index >= BUCKETS {
            return None;
        }
        if (index as u64) < EXACT {
            return Some((index as u64, index as u64 + 1));
        }
        let k = index - EXACT as usize;
        let e = SUB_BITS + 1 + (k >> SUB_BITS) as u32;
        let sub = (k & ((1 << SUB_BITS) - 1)) as u64;
        let width = 1u64 << (e - SUB_BITS);
        let lo = ((1 << SUB_BITS) + sub) * width;
        Some((lo, lo + width))
    }

    /// Counts one value.
    pub fn record(&mut self, value: u64) {
        self.counts[Self::bucket_of(value)] += 1;
    }

    /// Adds `count` values to bucket `index`; false if there is no such bucket.
    pub fn add(&mut self, index: usize, count: u64) -> bool {
        match self.counts.get_mut(index) {
            Some(c) => {
                *c += count;
                true
            }
            None => false,
        }
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
    }

    /// How many values were counted.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The non-empty buckets, ascending.
    pub fn buckets(&self) -> Vec<Bucket> {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .filter_map(|(i, &count)| {
                Self::bucket_range(i).map(|(lo, hi)| Bucket { lo, hi, count })
            })
            .collect()
    }

    /// The value below which a fraction `q` (0..=1) of the values lie, interpolated linearly
    /// inside its bucket (exact below 32, within 6.25% above). `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let target = q.clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        for b in self.buckets() {
            if (below + b.count) as f64 >= target {
                let inside = ((target - below as f64) / b.count as f64).clamp(0.0, 1.0);
                let width = (b.hi - b.lo) as f64;
                // Exact buckets hold one value: report it, not a point inside [v, v+1).
                return Some(if b.hi - b.lo == 1 {
                    b.lo as f64
                } else {
                    b.lo as f64 + inside * width
                });
            }
            below += b.count;
        }
        None
    }

    /// The cumulative distribution at every non-empty bucket's upper edge: (value, fraction of
    /// values below it), starting at the first bucket's lower edge with 0.
    pub fn cdf(&self) -> Vec<(f64, f64)> {
        let total = self.total() as f64;
        let buckets = self.buckets();
        let mut points = Vec::with_capacity(buckets.len() + 1);
        if let Some(first) = buckets.first() {
            points.push((first.lo as f64, 0.0));
        }
        let mut below = 0u64;
        for b in buckets {
            below += b.count;
            points.push((b.hi as f64, below as f64 / total));
        }
        points
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_exact_below_32_then_16_per_octave() {
        assert_eq!(BUCKETS, 528);
        for v in 0..32 {
            assert_eq!(Histogram::bucket_of(v), v as usize);
            assert_eq!(Histogram::bucket_range(v as usize), Some((v, v + 1)));
        }
        assert_eq!(Histogram::bucket_of(32), 32);
        assert_eq!(Histogram::bucket_range(32), Some((32, 34)));
        assert_eq!(Histogram::bucket_of(63), 47);
        assert_eq!(Histogram::bucket_range(47), Some((62, 64)));
        assert_eq!(Histogram::bucket_of(64), 48);
        assert_eq!(Histogram::bucket_range(48), Some((64, 68)));
        assert_eq!(Histogram::bucket_of(u64::MAX), BUCKETS - 1);
        assert_eq!(Histogram::bucket_range(BUCKETS), None);
    }

    #[test]
    fn every_value_lies_in_its_bucket_and_buckets_tile_the_range() {
        let mut expected_lo = 0;
        for i in 0..BUCKETS {
            let (lo, hi) = Histogram::bucket_range(i).unwrap();
            assert_eq!(
                lo,
                expected_lo,
                "bucket {i} does not start where {} ended",
                i - 1
            );
            assert!(hi > lo);
            assert!((hi - lo) * 16 <= lo.max(16), "bucket {i} wider than 1/16");
            for v in [lo, (lo + hi) / 2, hi - 1] {
                assert_eq!(Histogram::bucket_of(v), i, "value {v}");
            }
            expected_lo = hi;
        }
        assert_eq!(expected_lo, 1 << MAX_BITS);
    }

    #[test]
    fn quantiles_and_cdf() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        for v in 1..=100 {
            h.record(v);
        }
        assert_eq!(h.total(), 100);
        assert_eq!(h.quantile(0.1), Some(10.0));
        let median = h.quantile(0.5).unwrap();
        assert!((48.0..=52.0).contains(&median), "{median}");
        let p90 = h.quantile(0.9).unwrap();
        assert!((88.0..=92.0).contains(&p90), "{p90}");
        let cdf = h.cdf();
        assert_eq!(cdf.first(), Some(&(1.0, 0.0)));
        assert_eq!(cdf.last().map(|p| p.1), Some(1.0));
        assert!(cdf.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
        let mut twice = h.clone();
        twice.merge(&h);
        assert_eq!(twice.total(), 200);
        assert!(!twice.add(BUCKETS, 1));
    }
}
