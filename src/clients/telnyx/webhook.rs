//! Telnyx webhooks in: signature verification (vendor-protocols.md 1.4) and the mapping of
//! an event (1.3) to the engine's [`VendorEvent`].
//!
//! Verification runs over the raw body bytes, before any parsing: a request that fails it is
//! never looked at. Nothing here stores anything; the HTTP handler hands the mapped event to
//! the engine.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, VerifyingKey};
use iace_actors::engine::{EventRoute, VendorEvent};
use iace_actors::machine::{AmdResult, CarrierEvent, HangupCause, PhoneNumber};
use iace_actors::ports::Clock;

use super::client::{parse_client_state, ClientState};
use super::wire::{Envelope, Payload};

/// Signature header (base64 of 64 bytes).
pub const SIGNATURE_HEADER: &str = "telnyx-signature-ed25519";
/// Timestamp header (Unix seconds, decimal).
pub const TIMESTAMP_HEADER: &str = "telnyx-timestamp";
/// Default tolerance between the timestamp and our clock, both directions (the SDK's).
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// Why a webhook was refused. The text is safe to log; the HTTP answer stays generic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A required header is absent.
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    /// The timestamp is not an integer.
    #[error("malformed timestamp")]
    MalformedTimestamp,
    /// The timestamp is too far from now.
    #[error("timestamp outside the tolerance ({skew_secs} s from now)")]
    Stale {
        /// Seconds between the timestamp and now.
        skew_secs: i64,
    },
    /// The signature is not base64 of 64 bytes.
    #[error("malformed signature")]
    MalformedSignature,
    /// The signature does not verify.
    #[error("signature does not match")]
    Mismatch,
}

/// Verifies Telnyx webhook signatures with the configured public key.
#[derive(Clone)]
pub struct WebhookVerifier {
    key: VerifyingKey,
    tolerance: Duration,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for WebhookVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookVerifier")
            .field("tolerance", &self.tolerance)
            .finish_non_exhaustive()
    }
}

impl WebhookVerifier {
    /// A verifier for `public_key_base64` (TELNYX_PUBLIC_KEY: base64 of the 32-byte key).
    pub fn new(
        public_key_base64: &str,
        tolerance: Duration,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Self> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(public_key_base64.trim())
            .map_err(|e| anyhow::anyhow!("TELNYX_PUBLIC_KEY is not base64: {e}"))?;
        let bytes: [u8; 32] = raw.as_slice().try_into().map_err(|_| {
            anyhow::anyhow!(
                "TELNYX_PUBLIC_KEY must decode to 32 bytes (an Ed25519 public key), got {}",
                raw.len()
            )
        })?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|e| anyhow::anyhow!("TELNYX_PUBLIC_KEY is not an Ed25519 key: {e}"))?;
        Ok(WebhookVerifier {
            key,
            tolerance,
            clock,
        })
    }

    /// Checks the headers and the signature over `timestamp|body` (1.4 steps 1-6).
    pub fn verify(
        &self,
        signature: Option<&str>,
        timestamp: Option<&str>,
        body: &[u8],
    ) -> Result<(), VerifyError> {
        let signature = signature.ok_or(VerifyError::MissingHeader(SIGNATURE_HEADER))?;
        let timestamp = timestamp.ok_or(VerifyError::MissingHeader(TIMESTAMP_HEADER))?;
        let ts: i64 = timestamp
            .trim()
            .parse()
            .map_err(|_| VerifyError::MalformedTimestamp)?;
        let skew = self.clock.now().timestamp() - ts;
        let tolerance = i64::try_from(self.tolerance.as_secs()).unwrap_or(i64::MAX);
        if skew.abs() > tolerance {
            return Err(VerifyError::Stale { skew_secs: skew });
        }
        let sig = base64::engine::general_purpose::STANDARD
            .decode(signature.trim())
            .map_err(|_| VerifyError::MalformedSignature)?;
        let sig: [u8; 64] = sig
            .as_slice()
            .try_into()
            .map_err(|_| VerifyError::MalformedSignature)?;
        let mut message = Vec::with_capacity(timestamp.len() + 1 + body.len());
        message.extend_from_slice(timestamp.as_bytes());
        message.push(b'|');
        message.extend_from_slice(body);
        self.key
            .verify_strict(&message, &Signature::from_bytes(&sig))
            .map_err(|_| VerifyError::Mismatch)
    }
}

/// An authentic body that is not a Telnyx event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a Telnyx event: {0}")]
pub struct ParseError(pub String);

/// Maps a verified webhook body to the engine's terms.
pub fn parse_event(body: &[u8], now: DateTime<Utc>) -> Result<VendorEvent, ParseError> {
    // The typed fields straight from the bytes (not through the stored copy: cloning a
    // value tree per webhook cost more than reading the bytes twice).
    let envelope: Envelope = serde_json::from_slice(body).map_err(|e| ParseError(e.to_string()))?;
    let raw: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ParseError(e.to_string()))?;
    let data = envelope.data;
    if data.id.trim().is_empty() {
        return Err(ParseError("data.id is empty".into()));
    }
    let occurred_at = data
        .occurred_at
        .as_deref()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map_or(now, |t| t.with_timezone(&Utc));
    let p = &data.payload;
    let leg = p.call_control_id.clone().filter(|l| !l.trim().is_empty());
    let state = p.client_state.as_deref().and_then(parse_client_state);
    let offer = data.event_type == "call.initiated" && p.direction.as_deref() == Some("incoming");
    let (route, fact) = match state {
        Some(ClientState::Call(call_id)) => (
            EventRoute::Call {
                call_id,
                leg: leg.clone(),
            },
            fact(&data.event_type, p, leg.as_deref()),
        ),
        // A transfer's own leg: recorded with the call, never applied to it (its ringing or
        // its failure is not the call's).
        Some(ClientState::TransferTarget(call_id)) => {
            (EventRoute::Call { call_id, leg: None }, None)
        }
        None if offer => match (leg.clone(), phone(&p.from), phone(&p.to)) {
            (Some(leg), Some(from), Some(to)) => (
                EventRoute::Offer { leg, from, to },
                fact(&data.event_type, p, None),
            ),
            // An offer we cannot attribute (no leg, or numbers that are not E.164): keep it
            // on record; with a leg the engine rejects it.
            (Some(leg), _, _) => (EventRoute::Leg(leg), None),
            (None, _, _) => (EventRoute::Nowhere, None),
        },
        None => match leg.clone() {
            Some(l) => (
                EventRoute::Leg(l),
                fact(&data.event_type, p, leg.as_deref()),
            ),
            None => (EventRoute::Nowhere, None),
        },
    };
    Ok(VendorEvent {
        vendor: "telnyx".into(),
        event_id: data.id,
        event_type: data.event_type,
        occurred_at,
        route,
        fact,
        raw: Some(raw),
    })
}

/// The fact an event type stands for (`None`: recorded only).
fn fact(event_type: &str, p: &Payload, leg: Option<&str>) -> Option<CarrierEvent> {
    Some(match event_type {
        "call.initiated" => match (p.direction.as_deref(), leg) {
            (Some("incoming"), _) => return None,
            // Telnyx reports an outbound leg once: it exists and it is alerting.
            (_, Some(leg)) => CarrierEvent::RingingLeg {
                carrier_call_id: leg.to_owned(),
            },
            (_, None) => CarrierEvent::Ringing,
        },
        "call.answered" => CarrierEvent::Answered,
        "call.hangup" => CarrierEvent::HungUp {
            cause: hangup_cause(p.hangup_cause.as_deref()),
        },
        "call.machine.detection.ended" | "call.machine.premium.detection.ended" => {
            CarrierEvent::MachineDetection {
                result: amd_result(p.result.as_deref()),
            }
        }
        "streaming.started" => CarrierEvent::StreamStarted,
        "streaming.stopped" => CarrierEvent::StreamStopped,
        "streaming.failed" => CarrierEvent::StreamFailed {
            reason: p
                .failure_reason
                .clone()
                .unwrap_or_else(|| "unspecified".into()),
        },
        "call.bridged" => CarrierEvent::Bridged { to: p.to.clone() },
        "call.dtmf.received" => CarrierEvent::Dtmf {
            digit: p.digit.clone().filter(|d| !d.is_empty())?,
        },
        _ => return None,
    })
}

/// `hangup_cause` (1.3) in the engine's terms.
pub fn hangup_cause(cause: Option<&str>) -> HangupCause {
    match cause.unwrap_or("unspecified") {
        "normal_clearing" => HangupCause::NormalClearing,
        "user_busy" => HangupCause::Busy,
        "no_answer" | "timeout" => HangupCause::NoAnswer,
        "call_rejected" => HangupCause::Rejected,
        "originator_cancel" => HangupCause::OriginatorCancel,
        "not_found" => HangupCause::NotFound,
        "time_limit" => HangupCause::TimeLimit,
        _ => HangupCause::Unspecified,
    }
}

/// Answering-machine detection results (standard and premium) in the engine's terms.
pub fn amd_result(result: Option<&str>) -> AmdResult {
    match result.unwrap_or("not_sure") {
        "human" | "human_residence" | "human_business" => AmdResult::Human,
        "machine" | "fax_detected" => AmdResult::Machine,
        _ => AmdResult::NotSure,
    }
}

fn phone(raw: &Option<String>) -> Option<PhoneNumber> {
    raw.as_deref()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use ed25519_dalek::{Signer, SigningKey};

    struct At(i64);
    impl Clock for At {
        fn now(&self) -> DateTime<Utc> {
            Utc.timestamp_opt(self.0, 0).unwrap()
        }
    }

    const VECTOR_KEY: &str = "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=";
    const VECTOR_TS: &str = "1700000000";
    const VECTOR_BODY: &[u8] = br#"{"data":{"event_type":"call.hangup"}}"#;
    const VECTOR_SIG: &str =
        "+HUd2Jh32zctPWKKinzLX5qTGhZLKdvSwr9beaswFfZA+yox8IRwA0CO0mOLR9FguZxL5vBwso0pSd8F7zIfBw==";

    fn verifier(now: i64) -> WebhookVerifier {
        WebhookVerifier::new(VECTOR_KEY, DEFAULT_TOLERANCE, Arc::new(At(now))).unwrap()
    }

    #[test]
    fn the_protocol_test_vector_verifies() {
        let v = verifier(1_700_000_000);
        assert_eq!(
            v.verify(Some(VECTOR_SIG), Some(VECTOR_TS), VECTOR_BODY),
            Ok(())
        );
        // Within the tolerance both ways.
        assert_eq!(
            verifier(1_700_000_300).verify(Some(VECTOR_SIG), Some(VECTOR_TS), VECTOR_BODY),
            Ok(())
        );
        assert_eq!(
            verifier(1_699_999_700).verify(Some(VECTOR_SIG), Some(VECTOR_TS), VECTOR_BODY),
            Ok(())
        );
    }

    proptest::proptest! {
        /// Random bytes and headers (with a fresh timestamp half the time, so the signature
        /// check itself runs): never a panic, never accepted.
        #[test]
        fn random_deliveries_are_never_accepted(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            sig in proptest::option::of(".{0,120}"),
            sig64 in proptest::collection::vec(proptest::prelude::any::<u8>(), 64),
            fresh in proptest::prelude::any::<bool>(),
            ts in proptest::option::of(".{0,24}"),
        ) {
            let v = verifier(1_700_000_000);
            let encoded = base64::engine::general_purpose::STANDARD.encode(&sig64);
            let (sig, ts) = if fresh {
                (Some(encoded.as_str()), Some(VECTOR_TS))
            } else {
                (sig.as_deref(), ts.as_deref())
            };
            proptest::prop_assert!(v.verify(sig, ts, &body).is_err());
        }
    }

    #[test]
    fn tampering_and_bad_headers_are_refused() {
        let v = verifier(1_700_000_000);
        let tampered = br#"{"data":{"event_type":"call.answered"}}"#;
        assert_eq!(
            v.verify(Some(VECTOR_SIG), Some(VECTOR_TS), tampered),
            Err(VerifyError::Mismatch)
        );
        // The timestamp is part of the message: another one breaks the signature.
        assert_eq!(
            v.verify(Some(VECTOR_SIG), Some("1700000001"), VECTOR_BODY),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            v.verify(None, Some(VECTOR_TS), VECTOR_BODY),
            Err(VerifyError::MissingHeader(SIGNATURE_HEADER))
        );
        assert_eq!(
            v.verify(Some(VECTOR_SIG), None, VECTOR_BODY),
            Err(VerifyError::MissingHeader(TIMESTAMP_HEADER))
        );
        assert_eq!(
            v.verify(Some("%%%not base64"), Some(VECTOR_TS), VECTOR_BODY),
            Err(VerifyError::MalformedSignature)
        );
        assert_eq!(
            v.verify(Some("AAAA"), Some(VECTOR_TS), VECTOR_BODY),
            Err(VerifyError::MalformedSignature)
        );
        assert_eq!(
            v.verify(Some(VECTOR_SIG), Some("17e8"), VECTOR_BODY),
            Err(VerifyError::MalformedTimestamp)
        );
    }

    #[test]
    fn stale_timestamps_are_refused_both_ways() {
        assert_eq!(
            verifier(1_700_000_301).verify(Some(VECTOR_SIG), Some(VECTOR_TS), VECTOR_BODY),
            Err(VerifyError::Stale { skew_secs: 301 })
        );
        assert_eq!(
            verifier(1_699_999_699).verify(Some(VECTOR_SIG), Some(VECTOR_TS), VECTOR_BODY),
            Err(VerifyError::Stale { skew_secs: -301 })
        );
    }

    #[test]
    fn another_key_does_not_verify() {
        let other = SigningKey::from_bytes(&[9u8; 32]);
        let sig = other.sign(
            format!("{VECTOR_TS}|")
                .as_bytes()
                .iter()
                .chain(VECTOR_BODY)
                .copied()
                .collect::<Vec<u8>>()
                .as_slice(),
        );
        let sig = base64::engine::general_purpose::STANDARD.encode(sig.to_bytes());
        assert_eq!(
            verifier(1_700_000_000).verify(Some(&sig), Some(VECTOR_TS), VECTOR_BODY),
            Err(VerifyError::Mismatch)
        );
        assert!(WebhookVerifier::new("c2hvcnQ=", DEFAULT_TOLERANCE, Arc::new(At(0))).is_err());
        assert!(WebhookVerifier::new("***", DEFAULT_TOLERANCE, Arc::new(At(0))).is_err());
    }

    fn event(event_type: &str, payload: serde_json::Value) -> VendorEvent {
        let body = serde_json::json!({
            "data": {"record_type": "event", "event_type": event_type, "id": "ev-1",
                     "occurred_at": "2026-11-23T10:00:00.123456Z", "payload": payload},
            "meta": {"attempt": 1, "delivered_to": "http://x"}
        });
        parse_event(body.to_string().as_bytes(), Utc::now()).unwrap()
    }

    #[test]
    fn events_map_to_routes_and_facts() {
        let id = uuid::Uuid::new_v4();
        let state = super::super::client::client_state(id);
        let e = event(
            "call.initiated",
            serde_json::json!({"call_control_id": "v3:abc", "client_state": state, "direction": "outgoing", "state": "bridging"}),
        );
        assert_eq!(
            e.route,
            EventRoute::Call {
                call_id: id,
                leg: Some("v3:abc".into())
            }
        );
        assert_eq!(
            e.fact,
            Some(CarrierEvent::RingingLeg {
                carrier_call_id: "v3:abc".into()
            })
        );
        assert_eq!(
            e.occurred_at.to_rfc3339(),
            "2026-11-23T10:00:00.123456+00:00"
        );
        assert_eq!(e.event_id, "ev-1");

        let e = event(
            "call.hangup",
            serde_json::json!({"call_control_id": "v3:abc", "client_state": state, "hangup_cause": "user_busy"}),
        );
        assert_eq!(
            e.fact,
            Some(CarrierEvent::HungUp {
                cause: HangupCause::Busy
            })
        );

        let e = event(
            "call.initiated",
            serde_json::json!({"call_control_id": "v3:in", "client_state": null, "direction": "incoming",
                               "from": "+14155550101", "to": "+14155550123", "state": "parked"}),
        );
        assert_eq!(
            e.route,
            EventRoute::Offer {
                leg: "v3:in".into(),
                from: "+14155550101".parse().unwrap(),
                to: "+14155550123".parse().unwrap()
            }
        );
        assert_eq!(e.fact, None);

        // No client_state: routed by leg.
        let e = event(
            "call.hangup",
            serde_json::json!({"call_control_id": "v3:in", "client_state": "", "hangup_cause": "originator_cancel"}),
        );
        assert_eq!(e.route, EventRoute::Leg("v3:in".into()));
        assert_eq!(
            e.fact,
            Some(CarrierEvent::HungUp {
                cause: HangupCause::OriginatorCancel
            })
        );

        // Unknown types are recorded, not acted on.
        let e = event(
            "call.speak.started",
            serde_json::json!({"call_control_id": "v3:abc", "client_state": state}),
        );
        assert_eq!(e.fact, None);
        assert!(matches!(e.route, EventRoute::Call { .. }));

        let e = event(
            "call.machine.premium.detection.ended",
            serde_json::json!({"call_control_id": "v3:abc", "client_state": state, "result": "human_business"}),
        );
        assert_eq!(
            e.fact,
            Some(CarrierEvent::MachineDetection {
                result: AmdResult::Human
            })
        );

        // The leg a transfer created: recorded with the call, not applied.
        let target = super::super::client::transfer_target_state(id);
        let e = event(
            "call.hangup",
            serde_json::json!({"call_control_id": "v3:human", "client_state": target, "hangup_cause": "user_busy"}),
        );
        assert_eq!(
            e.route,
            EventRoute::Call {
                call_id: id,
                leg: None
            }
        );
        assert_eq!(e.fact, None);
    }

    #[test]
    fn hangup_causes_and_amd_results() {
        for (raw, cause) in [
            ("normal_clearing", HangupCause::NormalClearing),
            ("user_busy", HangupCause::Busy),
            ("no_answer", HangupCause::NoAnswer),
            ("timeout", HangupCause::NoAnswer),
            ("call_rejected", HangupCause::Rejected),
            ("originator_cancel", HangupCause::OriginatorCancel),
            ("not_found", HangupCause::NotFound),
            ("time_limit", HangupCause::TimeLimit),
            ("unspecified", HangupCause::Unspecified),
            ("something_new", HangupCause::Unspecified),
        ] {
            assert_eq!(hangup_cause(Some(raw)), cause, "{raw}");
        }
        assert_eq!(amd_result(Some("fax_detected")), AmdResult::Machine);
        assert_eq!(amd_result(Some("silence")), AmdResult::NotSure);
    }

    #[test]
    fn malformed_bodies_are_parse_errors() {
        assert!(parse_event(b"not json", Utc::now()).is_err());
        assert!(parse_event(br#"{"data":{}}"#, Utc::now()).is_err());
        assert!(parse_event(
            br#"{"data":{"event_type":"call.answered","id":"  ","payload":{}}}"#,
            Utc::now()
        )
        .is_err());
    }
}
