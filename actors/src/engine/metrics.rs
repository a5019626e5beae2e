//! Prometheus metrics of the engine, registered in the registry the process exposes on
//! `/metrics`.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

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
    /// Live members of the cluster as this node last saw them (itself included).
    pub cluster_nodes: IntGauge,
    /// Shards this node holds a valid lease on.
    pub shards_owned: IntGauge,
    /// Shards that came to or left this node, by reason. Coming: `restart` (held before
    /// under this node's id), `free` (never leased, or released by another node), `takeover`
    /// (another node's lease lapsed). Leaving: `rebalance` and `drain` (handed to another
    /// node), `shutdown` (released on a clean stop), `lapsed` (this node could not renew in
    /// time), `lost` (taken by another node after a lapse), `superseded` (another process
    /// registered under this node's id).
    pub shard_handoffs: IntCounterVec,
    /// Carrier commands not sent because this node's lease on the call's shard could have
    /// lapsed (or the shard is being handed over); the shard's next owner reconciles.
    pub effects_withheld: IntCounter,
    /// Pokes sent to the node that runs a call (work stored here for a call run there).
    pub pokes_sent: IntCounter,
    /// Speculative replies (asked for during the turn-taking hold-off), by outcome:
    /// `started`, `used` (they answered the committed turn), `discarded`.
    pub speculative_replies: IntCounterVec,
    /// Model text deltas (about one token each) received for speculative replies that were
    /// discarded: the model output paid for and never spoken.
    pub speculative_tokens_discarded: IntCounter,
    /// Agents and customers read for call starts, by kind and result (`hit`: reused from the
    /// engine's short-lived lookups, `miss`: read from the store).
    pub lookups: IntCounterVec,
    /// New calls refused before anything was stored, by direction and reason (`capacity`:
    /// the node runs `max_live_calls`; `plan_limit`: the organization's concurrent calls).
    pub calls_refused: IntCounterVec,
    /// The node's capacity (`max_live_calls`; 0 is no limit), beside `iace_call_actors`.
    pub capacity: IntGauge,
    /// Calls that ended, by direction, status and end reason (counted once, by the write that
    /// ends them).
    pub calls_total: IntCounterVec,
    /// Live calls run by this node, by direction.
    pub active_calls: IntGaugeVec,
    /// Talk time of answered calls, from the answer to the end.
    pub call_duration: Histogram,
    /// Where each reply's time went, by stage (`stt`, `holdoff`, `llm_first_token`,
    /// `tts_first_audio`, `engine`, `total`).
    pub turn_latency: HistogramVec,
    /// Callers' sentiment per turn, in `[-1, 1]`.
    pub sentiment: Histogram,
    /// Calls handed to a person, by reason.
    pub escalations: IntCounterVec,
    /// Calls the carrier connected to a person.
    pub transfers: IntCounter,
    /// Agents cut off by the caller.
    pub barge_ins: IntCounter,
}

impl EngineMetrics {
    /// Observes what a journal entry just written says about the product: the call's end,
    /// reply latencies, sentiment, escalations, transfers, barge-ins. `ended_now`: the entry
    /// ended the call.
    pub fn observe(
        &self,
        call: &crate::machine::Call,
        event: &crate::machine::Event,
        ended_now: bool,
    ) {
        use crate::machine::record::ConversationRecord as R;
        use crate::machine::{CarrierEvent, Event};
        if ended_now {
            self.calls_total
                .with_label_values(&[
                    call.spec.direction.as_str(),
                    call.status.as_str(),
                    call.end_reason.map_or("none", |r| r.as_str()),
                ])
                .inc();
            if let (Some(a), Some(e)) = (call.answered_at, call.ended_at) {
                self.call_duration
                    .observe((e - a).num_milliseconds().max(0) as f64 / 1000.0);
            }
        }
        match event {
            Event::Carrier {
                event: CarrierEvent::Bridged { .. },
                ..
            } => self.transfers.inc(),
            Event::Conversation { record } => match record {
                R::TurnLatency {
                    stt_us,
                    holdoff_us,
                    llm_first_token_us,
                    tts_first_audio_us,
                    engine_us,
                    total_us,
                    ..
                } => {
                    for (stage, us) in [
                        ("stt", stt_us),
                        ("holdoff", holdoff_us),
                        ("llm_first_token", llm_first_token_us),
                        ("tts_first_audio", tts_first_audio_us),
                        ("engine", engine_us),
                        ("total", total_us),
                    ] {
                        self.turn_latency
                            .with_label_values(&[stage])
                            .observe(*us as f64 / 1e6);
                    }
                }
                R::Sentiment { score, .. } => self.sentiment.observe(*score),
                R::Escalation { reason, .. } => {
                    let reason = serde_json::to_value(reason)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default();
                    self.escalations.with_label_values(&[&reason]).inc();
                }
                R::BargeIn { .. } => self.barge_ins.inc(),
                _ => {}
            },
            _ => {}
        }
    }

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
            cluster_nodes: IntGauge::new(
                "iace_cluster_nodes",
                "Live cluster members seen by this node",
            )?,
            shards_owned: IntGauge::new(
                "iace_shards_owned",
                "Shards this node holds a valid lease on",
            )?,
            shard_handoffs: IntCounterVec::new(
                Opts::new(
                    "iace_shard_handoffs_total",
                    "Shards that came to or left this node, by reason",
                ),
                &["reason"],
            )?,
            effects_withheld: IntCounter::new(
                "iace_effects_withheld_total",
                "Carrier commands withheld because the shard lease could have lapsed",
            )?,
            pokes_sent: IntCounter::new(
                "iace_pokes_sent_total",
                "Pokes sent to the node that runs a call",
            )?,
            speculative_replies: IntCounterVec::new(
                Opts::new(
                    "iace_speculative_replies_total",
                    "Replies asked for during the turn-taking hold-off, by outcome",
                ),
                &["outcome"],
            )?,
            lookups: IntCounterVec::new(
                Opts::new(
                    "iace_lookups_total",
                    "Agents and customers read for call starts, by kind and result",
                ),
                &["kind", "result"],
            )?,
            calls_refused: IntCounterVec::new(
                Opts::new(
                    "iace_calls_refused_total",
                    "New calls refused before anything was stored, by direction and reason",
                ),
                &["direction", "reason"],
            )?,
            capacity: IntGauge::new(
                "iace_call_capacity",
                "Most calls this node runs at once (0: no limit)",
            )?,
            speculative_tokens_discarded: IntCounter::new(
                "iace_speculative_tokens_discarded_total",
                "Model tokens received for speculative replies that were discarded",
            )?,
            calls_total: IntCounterVec::new(
                Opts::new(
                    "iace_calls_total",
                    "Calls that ended, by direction, status and end reason",
                ),
                &["direction", "status", "end_reason"],
            )?,
            active_calls: IntGaugeVec::new(
                Opts::new(
                    "iace_active_calls",
                    "Live calls run by this node, by direction",
                ),
                &["direction"],
            )?,
            call_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "iace_call_duration_seconds",
                    "Talk time of answered calls, from the answer to the end",
                )
                .buckets(vec![
                    5.0, 15.0, 30.0, 60.0, 120.0, 180.0, 300.0, 600.0, 900.0, 1800.0, 3600.0,
                ]),
            )?,
            turn_latency: HistogramVec::new(
                HistogramOpts::new(
                    "iace_turn_latency_seconds",
                    "Where each reply's time went, by stage",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0,
                ]),
                &["stage"],
            )?,
            sentiment: Histogram::with_opts(
                HistogramOpts::new("iace_sentiment_score", "Callers' sentiment per turn")
                    .buckets(vec![-0.8, -0.6, -0.4, -0.2, 0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
            )?,
            escalations: IntCounterVec::new(
                Opts::new(
                    "iace_escalations_total",
                    "Calls handed to a person, by reason",
                ),
                &["reason"],
            )?,
            transfers: IntCounter::new(
                "iace_transfers_total",
                "Calls the carrier connected to a person",
            )?,
            barge_ins: IntCounter::new("iace_barge_ins_total", "Agents cut off by the caller")?,
        };
        registry.register(Box::new(m.calls_total.clone()))?;
        registry.register(Box::new(m.active_calls.clone()))?;
        registry.register(Box::new(m.call_duration.clone()))?;
        registry.register(Box::new(m.turn_latency.clone()))?;
        registry.register(Box::new(m.sentiment.clone()))?;
        registry.register(Box::new(m.escalations.clone()))?;
        registry.register(Box::new(m.transfers.clone()))?;
        registry.register(Box::new(m.barge_ins.clone()))?;
        registry.register(Box::new(m.lookups.clone()))?;
        registry.register(Box::new(m.calls_refused.clone()))?;
        registry.register(Box::new(m.capacity.clone()))?;
        registry.register(Box::new(m.speculative_replies.clone()))?;
        registry.register(Box::new(m.speculative_tokens_discarded.clone()))?;
        registry.register(Box::new(m.pokes_sent.clone()))?;
        registry.register(Box::new(m.cluster_nodes.clone()))?;
        registry.register(Box::new(m.shards_owned.clone()))?;
        registry.register(Box::new(m.shard_handoffs.clone()))?;
        registry.register(Box::new(m.effects_withheld.clone()))?;
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
