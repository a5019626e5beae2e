//! The simulated carrier against a real Redis (`REDIS_URL`, see `scripts/services env`).
//!
//! Every test uses its own key prefix, so tests run in parallel and leave nothing shared
//! behind. Waits are generous and no test asserts on tight timing.

use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::{ClientLike, HashesInterface, KeysInterface, SetsInterface};
use fred::types::{ClusterHash, CustomCommand, Value};
use iace::telephony::simulated::{SimConfig, SimulatedCarrier, VENDOR};
use iace_actors::machine::{CallId, CarrierEvent, HangupCause, PhoneNumber};
use iace_actors::ports::{
    DialCommand, InboxItem, LegCommand, LegStatus, Telephony, TelephonyError,
};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use uuid::Uuid;

use crate::common::db::redis_url;

/// How long to wait for an event that must come.
const EVENT_WAIT: Duration = Duration::from_secs(15);

struct Harness {
    redis: Client,
    prefix: String,
    carrier: SimulatedCarrier,
    rx: UnboundedReceiver<InboxItem>,
}

impl Harness {
    async fn new(ring_ms: u64, talk_ms: u64) -> Self {
        let redis = iace::redis::connect(&redis_url())
            .await
            .expect("connect to redis");
        let prefix = format!("iace:test:sim:{}:", Uuid::new_v4());
        let (carrier, rx) = Self::carrier(&redis, &prefix, ring_ms, talk_ms);
        Self {
            redis,
            prefix,
            carrier,
            rx,
        }
    }

    fn carrier(
        redis: &Client,
        prefix: &str,
        ring_ms: u64,
        talk_ms: u64,
    ) -> (SimulatedCarrier, UnboundedReceiver<InboxItem>) {
        let (tx, rx) = unbounded_channel();
        let cfg = SimConfig {
            ring_ms,
            talk_ms,
            key_prefix: prefix.to_owned(),
        };
        (SimulatedCarrier::new(redis.clone(), cfg, tx), rx)
    }

    async fn next(&mut self) -> InboxItem {
        tokio::time::timeout(EVENT_WAIT, self.rx.recv())
            .await
            .expect("timed out waiting for a carrier event")
            .expect("event channel closed")
    }

    /// Events until (and including) the first `HungUp`.
    async fn until_hangup(&mut self) -> Vec<InboxItem> {
        let mut out = Vec::new();
        loop {
            let item = self.next().await;
            let done = matches!(item.event, CarrierEvent::HungUp { .. });
            out.push(item);
            if done {
                return out;
            }
        }
    }

    /// Asserts nothing arrives for `d`.
    async fn assert_quiet(&mut self, d: Duration) {
        if let Ok(Some(item)) = tokio::time::timeout(d, self.rx.recv()).await {
            panic!("unexpected event: {item:?}");
        }
    }

    async fn live_legs(&self) -> Vec<String> {
        self.redis
            .smembers(format!("{}live", self.prefix))
            .await
            .expect("smembers")
    }

    async fn cleanup(&self) {
        let keys: Vec<String> = self
            .redis
            .custom(
                CustomCommand::new_static("KEYS", ClusterHash::Random, false),
                vec![Value::from(format!("{}*", self.prefix))],
            )
            .await
            .expect("keys");
        for key in keys {
            let _: i64 = self.redis.del(key).await.expect("del");
        }
    }
}

fn phone(s: &str) -> PhoneNumber {
    PhoneNumber::parse(s).expect("valid test number")
}

fn dial(call_id: CallId, to: &str) -> DialCommand {
    DialCommand {
        call_id,
        command_id: format!("{call_id}:1"),
        from: phone("+14155550100"),
        to: phone(to),
        timeout_secs: 30,
    }
}

fn leg_cmd(call_id: CallId, leg: Option<&str>, seq: u32) -> LegCommand {
    LegCommand {
        call_id,
        carrier_call_id: leg.map(str::to_owned),
        command_id: format!("{call_id}:{seq}"),
    }
}

fn kinds(items: &[InboxItem]) -> Vec<&'static str> {
    items
        .iter()
        .map(|i| match i.event {
            CarrierEvent::Initiated { .. } => "initiated",
            CarrierEvent::Ringing => "ringing",
            CarrierEvent::Answered => "answered",
            CarrierEvent::HungUp { .. } => "hangup",
            ref other => panic!("the simulated carrier never reports {other:?}"),
        })
        .collect()
}

/// Checks vendor, call id, deterministic event ids and the initiated leg id.
fn check_items(items: &[InboxItem], call_id: CallId, leg: &str) {
    for item in items {
        assert_eq!(item.vendor, VENDOR);
        assert_eq!(item.call_id, call_id);
        let kind = item.event_id.rsplit(':').next().expect("event id kind");
        assert_eq!(item.event_id, format!("{leg}:{kind}"));
        if let CarrierEvent::Initiated { carrier_call_id } = &item.event {
            assert_eq!(carrier_call_id, leg);
        }
    }
    for pair in items.windows(2) {
        assert!(
            pair[0].occurred_at <= pair[1].occurred_at,
            "occurred_at goes backwards: {pair:?}"
        );
    }
}

#[tokio::test]
async fn dial_plays_the_full_script_in_order() {
    let mut h = Harness::new(200, 300).await;
    let call = Uuid::new_v4();
    let leg = h
        .carrier
        .dial(dial(call, "+14155550123"))
        .await
        .expect("dial");
    assert!(leg.starts_with("sim-"), "leg id {leg}");

    let items = h.until_hangup().await;
    assert_eq!(
        kinds(&items),
        ["initiated", "ringing", "answered", "hangup"]
    );
    check_items(&items, call, &leg);
    assert_eq!(
        items[3].event,
        CarrierEvent::HungUp {
            cause: HangupCause::NormalClearing
        }
    );
    // Scheduled times: answer after the ring time, hangup after the talk time.
    let ring = items[2].occurred_at - items[0].occurred_at;
    let talk = items[3].occurred_at - items[2].occurred_at;
    assert_eq!(ring.num_milliseconds(), 200);
    assert_eq!(talk.num_milliseconds(), 300);

    h.assert_quiet(Duration::from_millis(500)).await;
    assert!(h.live_legs().await.is_empty(), "finished leg still live");
    assert_eq!(
        h.carrier.status(call, Some(&leg)).await.expect("status"),
        LegStatus::Ended(HangupCause::NormalClearing)
    );
    h.cleanup().await;
}

#[tokio::test]
async fn retried_dial_returns_the_same_leg_and_schedules_nothing_new() {
    let mut h = Harness::new(200, 300).await;
    let call = Uuid::new_v4();
    let cmd = dial(call, "+14155550123");
    let leg = h.carrier.dial(cmd.clone()).await.expect("dial");
    let again = h.carrier.dial(cmd.clone()).await.expect("retried dial");
    assert_eq!(leg, again);

    let items = h.until_hangup().await;
    assert_eq!(
        kinds(&items),
        ["initiated", "ringing", "answered", "hangup"]
    );
    // A retry after the leg ended is still the same leg.
    assert_eq!(h.carrier.dial(cmd).await.expect("late retry"), leg);
    h.assert_quiet(Duration::from_millis(800)).await;

    // A new command for the same call is a new leg.
    let mut second = dial(call, "+14155550123");
    second.command_id = format!("{call}:7");
    let other = h.carrier.dial(second).await.expect("second dial");
    assert_ne!(other, leg);
    h.cleanup().await;
}

#[tokio::test]
async fn busy_number_rings_then_hangs_up_busy() {
    let mut h = Harness::new(200, 300).await;
    let call = Uuid::new_v4();
    let leg = h
        .carrier
        .dial(dial(call, "+14155550486"))
        .await
        .expect("dial");
    let items = h.until_hangup().await;
    assert_eq!(kinds(&items), ["initiated", "ringing", "hangup"]);
    check_items(&items, call, &leg);
    assert_eq!(
        items[2].event,
        CarrierEvent::HungUp {
            cause: HangupCause::Busy
        }
    );
    assert_eq!(
        (items[2].occurred_at - items[0].occurred_at).num_milliseconds(),
        200
    );
    assert_eq!(
        h.carrier.status(call, None).await.expect("status"),
        LegStatus::Ended(HangupCause::Busy)
    );
    h.assert_quiet(Duration::from_millis(500)).await;
    h.cleanup().await;
}

#[tokio::test]
async fn rejected_number_fails_the_dial_without_a_leg() {
    let mut h = Harness::new(200, 300).await;
    let call = Uuid::new_v4();
    let err = h
        .carrier
        .dial(dial(call, "+14155550400"))
        .await
        .expect_err("dial must be rejected");
    assert!(matches!(err, TelephonyError::Rejected(_)), "{err:?}");
    assert_eq!(
        h.carrier.status(call, None).await.expect("status"),
        LegStatus::Unknown
    );
    assert!(h.live_legs().await.is_empty());
    h.assert_quiet(Duration::from_millis(500)).await;
    h.cleanup().await;
}

#[tokio::test]
async fn no_answer_number_rings_until_hung_up() {
    let mut h = Harness::new(200, 300).await;
    let call = Uuid::new_v4();
    let leg = h
        .carrier
        .dial(dial(call, "+14155550487"))
        .await
        .expect("dial");
    let first = [h.next().await, h.next().await];
    assert_eq!(kinds(&first), ["initiated", "ringing"]);
    // Well past ring + talk: still ringing, nothing else sent.
    h.assert_quiet(Duration::from_millis(1_000)).await;
    assert_eq!(
        h.carrier.status(call, Some(&leg)).await.expect("status"),
        LegStatus::Ringing
    );
    assert_eq!(h.live_legs().await, vec![leg.clone()]);

    // The engine's ring timeout hangs up.
    h.carrier
        .hangup(leg_cmd(call, Some(&leg), 2))
        .await
        .expect("hangup");
    let end = h.next().await;
    check_items(std::slice::from_ref(&end), call, &leg);
    assert_eq!(
        end.event,
        CarrierEvent::HungUp {
            cause: HangupCause::NormalClearing
        }
    );
    assert_eq!(
        h.carrier.status(call, Some(&leg)).await.expect("status"),
        LegStatus::Ended(HangupCause::NormalClearing)
    );
    assert!(h.live_legs().await.is_empty());
    h.cleanup().await;
}

#[tokio::test]
async fn hangup_mid_ring_stops_the_script_and_emits_one_hangup() {
    // Long ring so the hangup surely lands before the answer.
    let mut h = Harness::new(3_000, 300).await;
    let call = Uuid::new_v4();
    let leg = h
        .carrier
        .dial(dial(call, "+14155550123"))
        .await
        .expect("dial");
    let first = [h.next().await, h.next().await];
    assert_eq!(kinds(&first), ["initiated", "ringing"]);

    // By call id only (no carrier id), as after a crash before the dial returned.
    h.carrier
        .hangup(leg_cmd(call, None, 2))
        .await
        .expect("hangup");
    let end = h.next().await;
    assert_eq!(end.event_id, format!("{leg}:hangup"));
    assert_eq!(
        end.event,
        CarrierEvent::HungUp {
            cause: HangupCause::NormalClearing
        }
    );

    // Hanging up again, or an unknown leg, is fine and sends nothing.
    h.carrier
        .hangup(leg_cmd(call, Some(&leg), 3))
        .await
        .expect("second hangup");
    h.carrier
        .hangup(leg_cmd(Uuid::new_v4(), None, 2))
        .await
        .expect("unknown call");
    h.carrier
        .hangup(leg_cmd(call, Some("sim-does-not-exist"), 4))
        .await
        .expect("unknown leg");

    // Past the scheduled answer and hangup: nothing more.
    h.assert_quiet(Duration::from_millis(4_000)).await;
    assert_eq!(
        h.carrier.status(call, Some(&leg)).await.expect("status"),
        LegStatus::Ended(HangupCause::NormalClearing)
    );
    assert!(h.live_legs().await.is_empty());
    h.cleanup().await;
}

#[tokio::test]
async fn status_follows_the_script() {
    let mut h = Harness::new(1_500, 1_500).await;
    let call = Uuid::new_v4();
    assert_eq!(
        h.carrier.status(call, None).await.expect("status"),
        LegStatus::Unknown
    );
    let leg = h
        .carrier
        .dial(dial(call, "+14155550123"))
        .await
        .expect("dial");

    // Each status is read right after the event that starts the phase arrives; the phase
    // lasts 1.5 s, far more than a status round trip.
    let items = [h.next().await, h.next().await];
    assert_eq!(kinds(&items), ["initiated", "ringing"]);
    assert_eq!(
        h.carrier.status(call, Some(&leg)).await.expect("status"),
        LegStatus::Ringing
    );
    assert_eq!(
        h.carrier.status(call, None).await.expect("status by call"),
        LegStatus::Ringing
    );

    let answered = h.next().await;
    assert_eq!(answered.event, CarrierEvent::Answered);
    assert_eq!(
        h.carrier.status(call, Some(&leg)).await.expect("status"),
        LegStatus::Answered
    );

    let end = h.next().await;
    assert!(matches!(end.event, CarrierEvent::HungUp { .. }));
    assert_eq!(
        h.carrier.status(call, Some(&leg)).await.expect("status"),
        LegStatus::Ended(HangupCause::NormalClearing)
    );
    assert_eq!(
        h.carrier
            .status(call, Some("sim-unknown"))
            .await
            .expect("status"),
        LegStatus::Unknown
    );
    h.cleanup().await;
}

#[tokio::test]
async fn answer_of_an_inbound_call_answers_then_hangs_up_after_talk() {
    let mut h = Harness::new(200, 300).await;
    let call = Uuid::new_v4();
    let cmd = leg_cmd(call, Some("inbound-leg-1"), 2);
    h.carrier.answer(cmd.clone()).await.expect("answer");
    h.carrier.answer(cmd).await.expect("retried answer");

    let items = h.until_hangup().await;
    assert_eq!(kinds(&items), ["answered", "hangup"]);
    check_items(&items, call, "inbound-leg-1");
    assert_eq!(
        (items[1].occurred_at - items[0].occurred_at).num_milliseconds(),
        300
    );
    h.assert_quiet(Duration::from_millis(500)).await;

    // Answering an ended leg with a new command is refused.
    let err = h
        .carrier
        .answer(leg_cmd(call, Some("inbound-leg-1"), 3))
        .await
        .expect_err("ended leg");
    assert!(matches!(err, TelephonyError::Rejected(_)), "{err:?}");
    h.cleanup().await;
}

#[tokio::test]
async fn resume_after_a_crash_completes_the_call() {
    // Long ring: the "crash" happens while the leg rings.
    let mut h = Harness::new(1_500, 300).await;
    let call = Uuid::new_v4();
    let cmd = dial(call, "+14155550123");
    let leg = h.carrier.dial(cmd.clone()).await.expect("dial");
    let first = [h.next().await, h.next().await];
    assert_eq!(kinds(&first), ["initiated", "ringing"]);

    // Crash: the instance and its tasks go away; only Redis remains.
    let (restarted, rx) = Harness::carrier(&h.redis, &h.prefix, 1_500, 300);
    let old = std::mem::replace(&mut h.carrier, restarted);
    drop(old);
    h.rx = rx;

    // A dial retried by the restarted engine is the same leg and schedules nothing.
    assert_eq!(h.carrier.dial(cmd).await.expect("retried dial"), leg);
    assert_eq!(h.carrier.resume().await.expect("resume"), 1);

    // Past events again (same ids, deduplicated by the engine), then the rest on time.
    let items = h.until_hangup().await;
    check_items(&items, call, &leg);
    assert_eq!(
        kinds(&items),
        ["initiated", "ringing", "answered", "hangup"]
    );
    assert_eq!(items[0].event_id, first[0].event_id);
    assert_eq!(items[0].occurred_at, first[0].occurred_at);
    assert_eq!(items[1].occurred_at, first[1].occurred_at);
    h.assert_quiet(Duration::from_millis(500)).await;
    assert!(h.live_legs().await.is_empty());
    h.cleanup().await;
}

#[tokio::test]
async fn resume_replays_a_leg_whose_whole_script_passed_while_down() {
    let mut h = Harness::new(200, 300).await;
    let call = Uuid::new_v4();
    let leg = h
        .carrier
        .dial(dial(call, "+14155550123"))
        .await
        .expect("dial");
    // Crash right away: nothing (or only the first events) got out.
    let (restarted, rx) = Harness::carrier(&h.redis, &h.prefix, 200, 300);
    drop(std::mem::replace(&mut h.carrier, restarted));
    h.rx = rx;

    // Down for longer than the whole script.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(
        h.carrier.status(call, Some(&leg)).await.expect("status"),
        LegStatus::Ended(HangupCause::NormalClearing)
    );
    assert_eq!(h.carrier.resume().await.expect("resume"), 1);
    let items = h.until_hangup().await;
    check_items(&items, call, &leg);
    assert_eq!(
        kinds(&items),
        ["initiated", "ringing", "answered", "hangup"]
    );
    h.assert_quiet(Duration::from_millis(500)).await;
    assert!(h.live_legs().await.is_empty());

    // Nothing left to resume.
    let (again, _rx) = Harness::carrier(&h.redis, &h.prefix, 200, 300);
    assert_eq!(again.resume().await.expect("resume"), 0);
    h.cleanup().await;
}

#[tokio::test]
async fn resume_finishes_a_leg_ended_just_before_a_crash() {
    let mut h = Harness::new(200, 300).await;
    let call = Uuid::new_v4();
    let leg = h
        .carrier
        .dial(dial(call, "+14155550487"))
        .await
        .expect("dial");
    let first = [h.next().await, h.next().await];
    assert_eq!(kinds(&first), ["initiated", "ringing"]);

    // The process died after marking the leg ended, before its HungUp got out: the leg is
    // ended in Redis but still live.
    let (restarted, rx) = Harness::carrier(&h.redis, &h.prefix, 200, 300);
    drop(std::mem::replace(&mut h.carrier, restarted));
    h.rx = rx;
    let ended_at = chrono::Utc::now().timestamp_millis();
    let _: i64 = h
        .redis
        .hset(
            format!("{}leg:{leg}", h.prefix),
            vec![
                ("ended_at", ended_at.to_string()),
                ("ended_cause", "normal_clearing".to_owned()),
            ],
        )
        .await
        .expect("hset");
    assert_eq!(h.live_legs().await, vec![leg.clone()]);

    assert_eq!(h.carrier.resume().await.expect("resume"), 1);
    let items = h.until_hangup().await;
    check_items(&items, call, &leg);
    assert_eq!(kinds(&items), ["initiated", "ringing", "hangup"]);
    assert_eq!(items[2].occurred_at.timestamp_millis(), ended_at);
    h.assert_quiet(Duration::from_millis(500)).await;
    assert!(h.live_legs().await.is_empty());
    h.cleanup().await;
}

#[tokio::test]
async fn connect_to_a_down_redis_fails_quickly() {
    // Nothing listens on port 1.
    let started = std::time::Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        iace::redis::connect("redis://127.0.0.1:1"),
    )
    .await
    .expect("connect must not hang");
    assert!(result.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );

    // A peer that accepts connections but never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = silent.local_addr().expect("addr");
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = silent.accept().await {
            held.push(sock);
        }
    });
    let started = std::time::Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        iace::redis::connect(&format!("redis://{addr}")),
    )
    .await
    .expect("connect to a silent peer must not hang");
    assert!(result.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    holder.abort();

    let ok = iace::redis::connect(&redis_url()).await.expect("connect");
    iace::redis::ping(&ok).await.expect("ping");
}
