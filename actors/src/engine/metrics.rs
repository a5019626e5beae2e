//! Prometheus metrics of the engine, registered in the registry the process exposes on
//! `/metrics`.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Engine counters and gauges.
#[derive(Clone)]
pub struct EngineMetrics {
    /// Calls stored by `create_call` (idempotent replays not counted).
    pub calls_created: IntCounter,
    /// Journaled events by kind.
    pub events_applied: IntCounterVec,
    /// Calls that reached a terminal status, by status and end reason: counted once per call,
    /// by the write that ends it (later entries of an ended call do not count).
    pub calls_ended: IntCounterVec,
    /// Facts of a second leg of a call (a dial the carrier did not deduplicate), journaled as
    /// `stray_leg` and released.
    pub stray_legs: IntCounter,
    /// Call actors started, by kind: `new` (a call just created), `live` (a live call
    /// recovered or re-activated), `ended` (an ended call woken to journal a late fact).
    pub activations: IntCounterVec,
    /// CallActors currently running.
    pub live_actors: IntGauge,
    /// CallActor crashes, by outcome (`restarted`, `gave_up`).
    pub actor_failures: IntCounterVec,
    /// Writes refused by compare-and-set (another owner or version).
    pub stale_writes: IntCounter,
    /// Carrier commands that failed, by effect.
    pub effect_failures: IntCounterVec,
    /// Vendor events received, by result (`new`, `duplicate`).
    pub inbox_events: IntCounterVec,
    /// Deadline timers that fired, by outcome (`delivered`, `superseded`, `after_end`).
    /// `after_end` must stay zero.
    pub timer_fires: IntCounterVec,
}

impl EngineMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = EngineMetrics {
            calls_created: IntCounter::new("iace_calls_created_total", "Calls created")?,
            events_applied: IntCounterVec::new(
                Opts::new("iace_call_events_total", "Call events journaled, by kind"),
                &["kind"],
            )?,
            calls_ended: IntCounterVec::new(
                Opts::new(
                    "iace_calls_ended_total",
                    "Calls ended, by status and end reason",
                ),
                &["status", "end_reason"],
            )?,
            stray_legs: IntCounter::new(
                "iace_stray_legs_total",
                "Facts of a second carrier leg of a call, journaled and released",
            )?,
            activations: IntCounterVec::new(
                Opts::new(
                    "iace_call_activations_total",
                    "Call actors started, by kind",
                ),
                &["kind"],
            )?,
            live_actors: IntGauge::new("iace_call_actors", "CallActors currently running")?,
            actor_failures: IntCounterVec::new(
                Opts::new(
                    "iace_call_actor_failures_total",
                    "CallActor crashes, by outcome",
                ),
                &["outcome"],
            )?,
            stale_writes: IntCounter::new(
                "iace_stale_writes_total",
                "Call writes refused by compare-and-set",
            )?,
            effect_failures: IntCounterVec::new(
                Opts::new("iace_effect_failures_total", "Carrier commands that failed"),
                &["effect"],
            )?,
            inbox_events: IntCounterVec::new(
                Opts::new(
                    "iace_inbox_events_total",
                    "Vendor events received, by result",
                ),
                &["result"],
            )?,
            timer_fires: IntCounterVec::new(
                Opts::new(
                    "iace_timer_fires_total",
                    "Deadline timers fired, by outcome",
                ),
                &["outcome"],
            )?,
        };
        registry.register(Box::new(m.timer_fires.clone()))?;
        registry.register(Box::new(m.calls_created.clone()))?;
        registry.register(Box::new(m.events_applied.clone()))?;
        registry.register(Box::new(m.calls_ended.clone()))?;
        registry.register(Box::new(m.live_actors.clone()))?;
        registry.register(Box::new(m.stray_legs.clone()))?;
        registry.register(Box::new(m.activations.clone()))?;
        registry.register(Box::new(m.actor_failures.clone()))?;
        registry.register(Box::new(m.stale_writes.clone()))?;
        registry.register(Box::new(m.effect_failures.clone()))?;
        registry.register(Box::new(m.inbox_events.clone()))?;
        Ok(m)
    }
}
