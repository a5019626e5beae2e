//! Inbound stream quality from Telnyx's own numbering: missing and reordered chunks
//! (`media.chunk`) and RFC 3550 §6.4.1 interarrival jitter (`media.timestamp` against arrival
//! time).
//!
//! Pure arithmetic over numbers handed in by the session: it must not read the clock, so the
//! tests can feed exact arrival times.

use std::collections::BTreeSet;

/// How many missing chunk numbers are remembered individually so that a late arrival can be
/// taken back off the gap count. Older holes are final: memory stays bounded whatever the peer
/// sends.
const MISSING_WINDOW: usize = 1024;

/// Running gap / reorder / jitter figures for one inbound track.
#[derive(Debug, Default)]
pub struct InboundQuality {
    /// Highest chunk number seen so far.
    highest: Option<u64>,
    /// Chunk numbers skipped over and not (yet) seen.
    missing: BTreeSet<u64>,
    /// Holes that fell out of `missing`: counted as lost for good.
    lost_for_good: u64,
    out_of_order: u64,
    /// `(timestamp_ms, arrival_ms)` of the previous chunk with a timestamp.
    previous: Option<(f64, f64)>,
    jitter_ms: f64,
}

impl InboundQuality {
    /// Records one inbound chunk. `chunk` and `timestamp_ms` are Telnyx's (absent on some
    /// frames); `arrival_ms` is our receive time on any monotonic millisecond scale.
    pub fn record(&mut self, chunk: Option<u64>, timestamp_ms: Option<u64>, arrival_ms: f64) {
        if let Some(chunk) = chunk {
            self.record_chunk(chunk);
        }
        if let Some(ts) = timestamp_ms {
            let ts = ts as f64;
            if let Some((prev_ts, prev_arrival)) = self.previous {
                // D(i,j) = (Rj - Ri) - (Sj - Si); J += (|D| - J) / 16.
                let d = (arrival_ms - prev_arrival) - (ts - prev_ts);
                self.jitter_ms += (d.abs() - self.jitter_ms) / 16.0;
            }
            self.previous = Some((ts, arrival_ms));
        }
    }

    fn record_chunk(&mut self, chunk: u64) {
        match self.highest {
            None => self.highest = Some(chunk),
            Some(high) if chunk > high => {
                // Chunks before the first one seen are not counted: the stream may have been
                // started before we attached (a reconnect), and they are nobody's loss.
                for hole in high.saturating_add(1)..chunk {
                    self.missing.insert(hole);
                    if self.missing.len() > MISSING_WINDOW {
                        self.missing.pop_first();
                        self.lost_for_good += 1;
                    }
                    // A peer jumping by billions must not make us loop: past the window the
                    // rest are final losses.
                    if hole - high > MISSING_WINDOW as u64 * 2 {
                        self.lost_for_good += chunk - hole - 1;
                        break;
                    }
                }
                self.highest = Some(chunk);
            }
            Some(_) => {
                // Late (filling a hole) or duplicate: either way not in sequence.
                self.missing.remove(&chunk);
                self.out_of_order += 1;
            }
        }
    }

    /// Chunks skipped and never received.
    pub fn gaps(&self) -> u64 {
        self.lost_for_good + self.missing.len() as u64
    }

    /// Chunks that arrived after a higher-numbered one (late fills and duplicates).
    pub fn out_of_order(&self) -> u64 {
        self.out_of_order
    }

    /// RFC 3550 interarrival jitter estimate in milliseconds.
    pub fn jitter_ms(&self) -> f64 {
        self.jitter_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(chunks: &[u64]) -> InboundQuality {
        let mut q = InboundQuality::default();
        for &c in chunks {
            q.record(Some(c), None, 0.0);
        }
        q
    }

    #[test]
    fn in_order_has_no_gaps() {
        let q = feed(&[1, 2, 3, 4]);
        assert_eq!((q.gaps(), q.out_of_order()), (0, 0));
        // Starting late is not a gap.
        let q = feed(&[40, 41, 42]);
        assert_eq!((q.gaps(), q.out_of_order()), (0, 0));
    }

    #[test]
    fn gaps_late_fills_and_duplicates() {
        let q = feed(&[1, 2, 4, 3, 6]);
        assert_eq!(q.gaps(), 1, "5 never came; 3 came late");
        assert_eq!(q.out_of_order(), 1);

        let q = feed(&[1, 5, 2, 2]);
        assert_eq!(q.gaps(), 2, "3 and 4 missing");
        assert_eq!(q.out_of_order(), 2, "late 2 and its duplicate");
    }

    #[test]
    fn huge_jump_is_bounded() {
        let q = feed(&[1, u64::MAX / 2]);
        assert_eq!(q.gaps(), u64::MAX / 2 - 2);
        assert!(q.missing.len() <= MISSING_WINDOW);
    }

    #[test]
    fn jitter_follows_rfc3550() {
        let mut q = InboundQuality::default();
        for (ts, at) in [(0, 0.0), (20, 20.0), (40, 40.0)] {
            q.record(None, Some(ts), at);
        }
        assert_eq!(q.jitter_ms(), 0.0);

        let mut q = InboundQuality::default();
        q.record(None, Some(0), 100.0);
        q.record(None, Some(20), 130.0); // 10 ms late: J = 10/16
        assert!((q.jitter_ms() - 0.625).abs() < 1e-9);
        q.record(None, Some(40), 140.0); // 10 ms early: J += (10 - J)/16
        assert!((q.jitter_ms() - (0.625 + (10.0 - 0.625) / 16.0)).abs() < 1e-9);
    }
}
