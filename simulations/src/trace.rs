//! The event trace of a run: every store write, carrier command, webhook delivery, fault and
//! crash, stamped with simulated time. Its hash is the determinism check.

/// Trace recorder: a running FNV-1a hash, and the lines themselves when asked for.
#[derive(Debug)]
pub struct Trace {
    hash: u64,
    lines: u64,
    keep: Option<Vec<String>>,
}

impl Trace {
    /// A trace that keeps its lines only when `keep` is true.
    pub fn new(keep: bool) -> Self {
        Trace {
            hash: 0xcbf2_9ce4_8422_2325,
            lines: 0,
            keep: keep.then(Vec::new),
        }
    }

    /// Adds one line.
    pub fn record(&mut self, at_ms: u64, line: &str) {
        let full = format!("{at_ms:>10} {line}");
        for b in full.bytes().chain(std::iter::once(b'\n')) {
            self.hash ^= u64::from(b);
            self.hash = self.hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.lines += 1;
        if let Some(keep) = &mut self.keep {
            keep.push(full);
        }
    }

    /// FNV-1a 64 of every line so far.
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// Number of lines.
    pub fn len(&self) -> u64 {
        self.lines
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.lines == 0
    }

    /// The kept lines (empty unless kept).
    pub fn take_lines(&mut self) -> Vec<String> {
        self.keep.take().unwrap_or_default()
    }
}
