//! A mergeable quantile sketch (DDSketch: Masson, Rim and Lee, VLDB 2019) for the analytics
//! rollups: durations and latencies are counted in logarithmic buckets, so any quantile is
//! read back within a relative error of [`RELATIVE_ACCURACY`], two sketches merge by adding
//! their counts (a day's sketch is the sum of its hours'), and a sketch stores in a few hundred
//! bytes.
//!
//! Values are positive (seconds, microseconds); values at or below [`MIN_VALUE`] (and zero)
//! are counted apart and read back as 0.

use std::collections::BTreeMap;

/// Relative accuracy of every quantile: the value read back is within 1% of the true one.
pub const RELATIVE_ACCURACY: f64 = 0.01;
/// Smaller values are counted as zero.
pub const MIN_VALUE: f64 = 1e-9;
/// Buckets kept at most; past it the lowest are folded together (the low quantiles lose
/// accuracy first, never the high ones operators watch).
pub const MAX_BUCKETS: usize = 4096;

const FORMAT: u8 = 1;

fn gamma() -> f64 {
    (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY)
}

fn key_of(value: f64) -> i32 {
    (value.ln() / gamma().ln()).ceil() as i32
}

fn value_of(key: i32) -> f64 {
    let g = gamma();
    // The bucket (g^(k-1), g^k]: its value within the accuracy of both ends.
    2.0 * g.powi(key) / (g + 1.0)
}

/// A sketch of a set of positive values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sketch {
    buckets: BTreeMap<i32, u64>,
    zeros: u64,
    count: u64,
}

/// A stored sketch that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable sketch: {0}")]
pub struct SketchError(&'static str);

impl Sketch {
    /// An empty sketch.
    pub fn new() -> Sketch {
        Sketch::default()
    }

    /// Values added.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Adds a value (negative, NaN and values at or below [`MIN_VALUE`] count as zero).
    pub fn add(&mut self, value: f64) {
        self.count += 1;
        if value.is_nan() || value <= MIN_VALUE {
            self.zeros += 1;
            return;
        }
        *self.buckets.entry(key_of(value)).or_insert(0) += 1;
        self.collapse();
    }

    /// Adds everything `other` holds.
    pub fn merge(&mut self, other: &Sketch) {
        self.count += other.count;
        self.zeros += other.zeros;
        for (k, n) in &other.buckets {
            *self.buckets.entry(*k).or_insert(0) += n;
        }
        self.collapse();
    }

    fn collapse(&mut self) {
        while self.buckets.len() > MAX_BUCKETS {
            let Some((low, n)) = self.buckets.pop_first() else {
                return;
            };
            if let Some(next) = self.buckets.values_mut().next() {
                *next += n;
            } else {
                self.buckets.insert(low, n);
                return;
            }
        }
    }

    /// The `q`-quantile (0 to 1) of the values, by rank `⌊q·(n−1)⌋`; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * (self.count - 1) as f64).floor() as u64;
        if rank < self.zeros {
            return Some(0.0);
        }
        let mut seen = self.zeros;
        for (k, n) in &self.buckets {
            seen += n;
            if seen > rank {
                return Some(value_of(*k));
            }
        }
        self.buckets.keys().next_back().map(|k| value_of(*k))
    }

    /// The stored form: a format byte, then LEB128 varints: count of zeros, number of
    /// buckets, and per bucket its key's delta from the previous (zigzag for the first) and
    /// its count.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 3 * self.buckets.len());
        out.push(FORMAT);
        put(&mut out, self.zeros);
        put(&mut out, self.buckets.len() as u64);
        let mut previous: Option<i32> = None;
        for (k, n) in &self.buckets {
            match previous {
                None => put(&mut out, zigzag(*k)),
                Some(p) => put(&mut out, (*k - p) as u64),
            }
            put(&mut out, *n);
            previous = Some(*k);
        }
        out
    }

    /// Reads [`Sketch::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Sketch, SketchError> {
        let (&format, mut rest) = bytes.split_first().ok_or(SketchError("empty"))?;
        if format != FORMAT {
            return Err(SketchError("unknown format"));
        }
        let zeros = take(&mut rest)?;
        let n = take(&mut rest)?;
        if n > MAX_BUCKETS as u64 {
            return Err(SketchError("too many buckets"));
        }
        let mut buckets = BTreeMap::new();
        let mut count = zeros;
        let mut key: i64 = 0;
        for i in 0..n {
            let raw = take(&mut rest)?;
            key = if i == 0 {
                unzigzag(raw)
            } else {
                if raw == 0 {
                    return Err(SketchError("keys out of order"));
                }
                key.checked_add(i64::try_from(raw).map_err(|_| SketchError("key"))?)
                    .ok_or(SketchError("key"))?
            };
            let k = i32::try_from(key).map_err(|_| SketchError("key out of range"))?;
            let c = take(&mut rest)?;
            count = count.checked_add(c).ok_or(SketchError("count overflows"))?;
            buckets.insert(k, c);
        }
        if !rest.is_empty() {
            return Err(SketchError("trailing bytes"));
        }
        Ok(Sketch {
            buckets,
            zeros,
            count,
        })
    }
}

fn zigzag(k: i32) -> u64 {
    ((k << 1) ^ (k >> 31)) as u32 as u64
}

fn unzigzag(v: u64) -> i64 {
    let v = v as i64;
    (v >> 1) ^ -(v & 1)
}

fn put(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn take(input: &mut &[u8]) -> Result<u64, SketchError> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = input.split_first().ok_or(SketchError("truncated"))?;
        *input = rest;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(SketchError("varint too long"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn exact(values: &[f64], q: f64) -> f64 {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let rank = (q * (v.len() - 1) as f64).floor() as usize;
        v[rank]
    }

    #[test]
    fn an_empty_sketch_has_no_quantile_and_zeros_read_back_as_zero() {
        let mut s = Sketch::new();
        assert_eq!(s.quantile(0.5), None);
        s.add(0.0);
        s.add(-3.0);
        s.add(5.0);
        assert_eq!(s.count(), 3);
        assert_eq!(s.quantile(0.0), Some(0.0));
        assert_eq!(s.quantile(0.5), Some(0.0));
        let top = s.quantile(1.0).unwrap();
        assert!((top - 5.0).abs() <= 5.0 * RELATIVE_ACCURACY, "{top}");
    }

    #[test]
    fn corrupt_bytes_are_refused() {
        let mut s = Sketch::new();
        for v in [0.001, 0.2, 3.0, 4000.0] {
            s.add(v);
        }
        let bytes = s.to_bytes();
        assert_eq!(Sketch::from_bytes(&bytes).unwrap(), s);
        assert!(Sketch::from_bytes(&[]).is_err());
        assert!(Sketch::from_bytes(&[9]).is_err());
        assert!(Sketch::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(Sketch::from_bytes(&trailing).is_err());
    }

    #[test]
    fn a_million_latencies_fit_in_a_few_hundred_bytes() {
        let mut s = Sketch::new();
        // 1 ms to 10 s, spread over four decades.
        for i in 0..1_000_000u64 {
            let x = 10f64.powf(-3.0 + 4.0 * (i as f64 / 1e6));
            s.add(x);
        }
        let bytes = s.to_bytes();
        assert!(bytes.len() < 2000, "{} bytes", bytes.len());
        let p95 = s.quantile(0.95).unwrap();
        let truth = 10f64.powf(-3.0 + 4.0 * 0.95);
        assert!(
            (p95 - truth).abs() <= truth * RELATIVE_ACCURACY * 1.01,
            "{p95} {truth}"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Every quantile is within the relative accuracy of the exact one.
        #[test]
        fn quantiles_are_within_the_relative_accuracy(
            values in proptest::collection::vec(1e-6f64..1e6, 1..400),
            q in 0.0f64..=1.0,
        ) {
            let mut s = Sketch::new();
            for v in &values {
                s.add(*v);
            }
            let got = s.quantile(q).unwrap();
            let want = exact(&values, q);
            prop_assert!((got - want).abs() <= want * RELATIVE_ACCURACY * (1.0 + 1e-9),
                "q {q}: {got} against {want}");
        }

        /// Merging two sketches is the sketch of both sets, and the stored form round-trips.
        #[test]
        fn merging_is_the_sketch_of_the_union(
            a in proptest::collection::vec(0.0f64..1e5, 0..200),
            b in proptest::collection::vec(0.0f64..1e5, 0..200),
        ) {
            let sketch = |v: &[f64]| {
                let mut s = Sketch::new();
                for x in v {
                    s.add(*x);
                }
                s
            };
            let mut merged = sketch(&a);
            merged.merge(&sketch(&b));
            let all: Vec<f64> = a.iter().chain(&b).copied().collect();
            prop_assert_eq!(&merged, &sketch(&all));
            prop_assert_eq!(Sketch::from_bytes(&merged.to_bytes()).unwrap(), merged);
        }
    }
}
