//! What the scripted voice vendors share: the streams' channel capacity, μ-law timing, and a
//! lock that survives a poisoned mutex (a test that panics must not hide its cause).

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Capacity of every stream channel (inputs and events).
pub(super) const STREAM_CAPACITY: usize = 1024;
/// μ-law 8 kHz: bytes per millisecond of audio.
pub(super) const BYTES_PER_MS: u64 = 8;

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) fn audio_duration(bytes: u64) -> Duration {
    // 125 µs per byte at 8 kHz.
    Duration::from_micros(bytes * 1000 / BYTES_PER_MS)
}
