//! The delivery worker: every node runs one. It leases the endpoints that have due deliveries
//! (one worker per endpoint at a time, any node), and for each works its deliveries until none
//! is due: the first pending delivery of each call goes out (calls in parallel, a call's events
//! in order), each attempt is recorded, failures wait their turn in [`RETRY_SCHEDULE`].
//!
//! Delivery is at least once: a worker killed between the receiver's 2xx and the record sends
//! the event again once the lease has expired, with the same `webhook-id`.
//!
//! [`RETRY_SCHEDULE`]: super::RETRY_SCHEDULE

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts, Registry};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::{retry_delay, transcript_data, DISABLE_AFTER_FAILING};
use crate::ports::outbox::{
    AttemptOutcome, AttemptRecord, DueDelivery, EndpointLease, OutboxStore, Recorded, WebhookSender,
};
use crate::ports::{Clock, QueryStore};

/// What the worker needs.
#[derive(Clone)]
pub struct DeliveryPorts {
    /// The outbox.
    pub store: Arc<dyn OutboxStore>,
    /// Calls and journals (a transcript is read when its event first goes out).
    pub queries: Arc<dyn QueryStore>,
    /// The HTTP client.
    pub sender: Arc<dyn WebhookSender>,
    /// Time.
    pub clock: Arc<dyn Clock>,
}

/// Tuning.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// This node's name in the endpoints' leases.
    pub node_id: String,
    /// How often the outbox is looked at when nothing nudges the worker (retries come due
    /// this way, and events committed by other nodes when notifications are lost).
    pub poll_every: Duration,
    /// An endpoint's lease lasts this long unless renewed.
    pub lease_ttl: Duration,
    /// Endpoints worked at once by this node.
    pub max_endpoints: u32,
    /// Deliveries of one endpoint in flight at once (each of another call).
    pub per_endpoint: u32,
    /// Delays before the attempts after a failure ([`RETRY_SCHEDULE`](super::RETRY_SCHEDULE)).
    pub retry_schedule: Vec<Duration>,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            node_id: "node".into(),
            poll_every: Duration::from_secs(1),
            lease_ttl: Duration::from_secs(30),
            max_endpoints: 64,
            per_endpoint: 16,
            retry_schedule: super::RETRY_SCHEDULE.to_vec(),
        }
    }
}

/// The worker's metrics.
#[derive(Clone)]
pub struct DeliveryMetrics {
    /// Attempts by outcome: `delivered`, `failed` (to be retried), `gave_up`, `gone` (410).
    pub deliveries: IntCounterVec,
    /// From the event's commit to its first attempt.
    pub lag: Histogram,
}

impl DeliveryMetrics {
    /// Registers them in `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<DeliveryMetrics> {
        let m = DeliveryMetrics {
            deliveries: IntCounterVec::new(
                Opts::new(
                    "iace_webhook_deliveries_total",
                    "Webhook delivery attempts by outcome (delivered, failed, gave_up, gone)",
                ),
                &["outcome"],
            )?,
            lag: Histogram::with_opts(
                HistogramOpts::new(
                    "iace_webhook_delivery_lag_seconds",
                    "From an event's commit to its first delivery attempt",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                ]),
            )?,
        };
        registry.register(Box::new(m.deliveries.clone()))?;
        registry.register(Box::new(m.lag.clone()))?;
        Ok(m)
    }
}

/// Messages of the worker.
#[derive(Debug)]
pub enum DeliveryMsg {
    /// Look at the outbox now (a timer, or a notification that an event was committed).
    Poll,
    /// An event was committed somewhere: look soon.
    Nudge,
}

/// The worker (see the module docs).
#[derive(Default)]
pub struct DeliveryWorker;

/// Its state.
pub struct DeliveryState {
    ports: DeliveryPorts,
    config: DeliveryConfig,
    metrics: Option<DeliveryMetrics>,
    /// Endpoints this node is working, and their tasks.
    working: HashMap<Uuid, JoinHandle<()>>,
    /// A poll is queued by a nudge (nudges between polls coalesce).
    nudged: bool,
}

impl Actor for DeliveryWorker {
    type Msg = DeliveryMsg;
    type State = DeliveryState;
    type Arguments = (DeliveryPorts, DeliveryConfig, Option<DeliveryMetrics>);

    async fn pre_start(
        &self,
        myself: ActorRef<DeliveryMsg>,
        (ports, config, metrics): Self::Arguments,
    ) -> Result<DeliveryState, ActorProcessingErr> {
        myself.send_message(DeliveryMsg::Poll)?;
        Ok(DeliveryState {
            ports,
            config,
            metrics,
            working: HashMap::new(),
            nudged: false,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<DeliveryMsg>,
        state: &mut DeliveryState,
    ) -> Result<(), ActorProcessingErr> {
        for (_, task) in state.working.drain() {
            task.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<DeliveryMsg>,
        msg: DeliveryMsg,
        state: &mut DeliveryState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            DeliveryMsg::Nudge => {
                if !state.nudged {
                    state.nudged = true;
                    myself.send_message(DeliveryMsg::Poll)?;
                }
            }
            DeliveryMsg::Poll => {
                let timer = !std::mem::take(&mut state.nudged);
                state.poll().await;
                if timer {
                    myself.send_after(state.config.poll_every, || DeliveryMsg::Poll);
                }
            }
        }
        Ok(())
    }
}

impl DeliveryState {
    async fn poll(&mut self) {
        self.working.retain(|_, task| !task.is_finished());
        let now = self.ports.clock.now();
        let room = self
            .config
            .max_endpoints
            .saturating_sub(self.working.len() as u32);
        if room == 0 {
            return;
        }
        let leases = match self
            .ports
            .store
            .claim_endpoints(&self.config.node_id, now, self.config.lease_ttl, room)
            .await
        {
            Ok(leases) => leases,
            Err(e) => {
                warn!(error = %e, "claiming webhook endpoints");
                return;
            }
        };
        for lease in leases {
            if self.working.contains_key(&lease.endpoint_id) {
                // Renewed by the claim; its task goes on.
                continue;
            }
            debug!(endpoint_id = %lease.endpoint_id, "delivering to endpoint");
            let endpoint = EndpointTask {
                ports: self.ports.clone(),
                config: self.config.clone(),
                metrics: self.metrics.clone(),
                lease,
            };
            let id = endpoint.lease.endpoint_id;
            self.working.insert(id, tokio::spawn(endpoint.run()));
        }
    }
}

/// Works one leased endpoint until nothing of it is due.
struct EndpointTask {
    ports: DeliveryPorts,
    config: DeliveryConfig,
    metrics: Option<DeliveryMetrics>,
    lease: EndpointLease,
}

impl EndpointTask {
    /// Keeps up to `per_endpoint` deliveries in flight, each the first pending one of its
    /// call, fetching more as attempts finish, until nothing is due and nothing in flight.
    async fn run(mut self) {
        let endpoint = self.lease.endpoint_id;
        let mut sends: JoinSet<Result<Recorded, String>> = JoinSet::new();
        let mut in_flight: HashMap<tokio::task::Id, Uuid> = HashMap::new();
        loop {
            let now = self.ports.clock.now();
            if !self.renew(now).await {
                return;
            }
            let room = self
                .config
                .per_endpoint
                .saturating_sub(in_flight.len() as u32);
            if room > 0 {
                let busy: Vec<Uuid> = in_flight.values().copied().collect();
                let due = match self
                    .ports
                    .store
                    .due_deliveries(endpoint, now, room, &busy)
                    .await
                {
                    Ok(due) => due,
                    Err(e) => {
                        warn!(endpoint_id = %endpoint, error = %e, "reading due deliveries");
                        return;
                    }
                };
                for delivery in due {
                    let id = delivery.id;
                    let attempt = Attempt {
                        schedule: self.config.retry_schedule.clone(),
                        ports: self.ports.clone(),
                        metrics: self.metrics.clone(),
                        lease: self.lease.clone(),
                        delivery,
                    };
                    let task = sends.spawn(attempt.run());
                    in_flight.insert(task.id(), id);
                }
            }
            if in_flight.is_empty() {
                if let Err(e) = self
                    .ports
                    .store
                    .release_endpoint(endpoint, &self.config.node_id)
                    .await
                {
                    debug!(endpoint_id = %endpoint, error = %e, "releasing an endpoint lease");
                }
                return;
            }
            // Wait for one attempt to finish, then take every other that has finished too,
            // before looking for more.
            let mut finished = vec![sends.join_next_with_id().await];
            while let Some(done) = sends.try_join_next_with_id() {
                finished.push(Some(done));
            }
            for done in finished.into_iter().flatten() {
                let (task, outcome) = match done {
                    Ok((task, outcome)) => (task, outcome),
                    Err(e) => {
                        in_flight.remove(&e.id());
                        warn!(endpoint_id = %endpoint, error = %e, "a delivery attempt panicked");
                        return;
                    }
                };
                in_flight.remove(&task);
                match outcome {
                    Ok(Recorded::Disabled(reason)) => {
                        warn!(endpoint_id = %endpoint, reason = %reason, "webhook endpoint disabled");
                        return;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        // The store is failing: the lease runs out, and whoever claims the
                        // endpoint next finds the deliveries as recorded.
                        warn!(endpoint_id = %endpoint, error = %e, "recording a delivery attempt");
                        return;
                    }
                }
            }
        }
    }

    /// Renews the lease when half of it has run; `false`: lost, stop.
    async fn renew(&mut self, now: DateTime<Utc>) -> bool {
        let endpoint = self.lease.endpoint_id;
        let ttl = chrono::Duration::from_std(self.config.lease_ttl).unwrap_or_default();
        if self.lease.until - now >= ttl / 2 {
            return true;
        }
        match self
            .ports
            .store
            .renew_endpoint(endpoint, &self.config.node_id, now + ttl)
            .await
        {
            Ok(true) => {
                self.lease.until = now + ttl;
                true
            }
            Ok(false) => {
                info!(endpoint_id = %endpoint, "endpoint lease lost; stopping its deliveries");
                false
            }
            Err(e) => {
                warn!(endpoint_id = %endpoint, error = %e, "renewing an endpoint lease");
                false
            }
        }
    }
}

/// One attempt of one delivery.
struct Attempt {
    schedule: Vec<Duration>,
    ports: DeliveryPorts,
    metrics: Option<DeliveryMetrics>,
    lease: EndpointLease,
    delivery: DueDelivery,
}

impl Attempt {
    async fn run(self) -> Result<Recorded, String> {
        let d = &self.delivery;
        let payload = match &d.payload {
            Some(p) => p.clone(),
            None => self.make_payload().await?,
        };
        let body = serde_json::to_vec(&payload).map_err(|e| format!("encoding: {e}"))?;
        let at = self.ports.clock.now();
        if let (Some(m), 0) = (&self.metrics, d.attempts) {
            m.lag
                .observe((at - d.created_at).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6);
        }
        let started = tokio::time::Instant::now();
        let sent = self
            .ports
            .sender
            .send(
                &self.lease.url,
                &d.event_id,
                d.call_id,
                at.timestamp(),
                &self.lease.secrets,
                body,
            )
            .await;
        let latency = started.elapsed();
        let attempt = d.attempts + 1;
        let outcome = match sent.status {
            Some(s) if (200..300).contains(&s) => AttemptOutcome::Delivered,
            Some(410) => AttemptOutcome::Gone,
            _ => AttemptOutcome::Failed,
        };
        let salt = u64::from_le_bytes(d.id.as_bytes()[..8].try_into().unwrap_or_default());
        let next_attempt_at = match outcome {
            AttemptOutcome::Failed => retry_delay(&self.schedule, attempt, salt)
                .and_then(|delay| chrono::Duration::from_std(delay).ok())
                .map(|delay| at + delay),
            _ => None,
        };
        if let Some(m) = &self.metrics {
            let label = match (outcome, next_attempt_at) {
                (AttemptOutcome::Delivered, _) => "delivered",
                (AttemptOutcome::Gone, _) => "gone",
                (AttemptOutcome::Failed, Some(_)) => "failed",
                (AttemptOutcome::Failed, None) => "gave_up",
            };
            m.deliveries.with_label_values(&[label]).inc();
        }
        if outcome != AttemptOutcome::Delivered {
            debug!(delivery_id = %d.id, event = %d.event_id, attempt, status = ?sent.status, error = ?sent.error, "webhook delivery failed");
        }
        let failing = chrono::Duration::from_std(DISABLE_AFTER_FAILING).unwrap_or_default();
        self.ports
            .store
            .record_attempt(&AttemptRecord {
                delivery_id: d.id,
                endpoint_id: self.lease.endpoint_id,
                attempt,
                at,
                outcome,
                status_code: sent.status,
                latency,
                error: sent.error,
                next_attempt_at,
                disable_if_failing_since: at - failing,
            })
            .await
            .map_err(|e| e.to_string())
    }

    /// The transcript's payload, read from the journal at the first attempt and kept.
    async fn make_payload(&self) -> Result<serde_json::Value, String> {
        let d = &self.delivery;
        let org = self.lease.organization_id;
        let call_id = d
            .call_id
            .ok_or_else(|| format!("event {} has no payload and no call", d.event_id))?;
        let call = self
            .ports
            .queries
            .get_call(org, call_id)
            .await
            .map_err(|e| format!("reading the call: {e}"))?;
        let journal = self
            .ports
            .queries
            .call_events(org, call_id)
            .await
            .map_err(|e| format!("reading the journal: {e}"))?;
        let (Some(call), Some(journal)) = (call, journal) else {
            return Err(format!("call {call_id} is gone"));
        };
        let payload = super::envelope(
            &d.event_type,
            d.occurred_at,
            transcript_data(&call, &journal),
        );
        self.ports
            .store
            .fix_payload(&d.event_id, &payload)
            .await
            .map_err(|e| format!("keeping the payload: {e}"))
    }
}
