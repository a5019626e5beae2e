//! The Telnyx edge of the process: the command client, the webhook verifier and the
//! media-stream tokens built from the configuration, and the media endpoint's reports fed into
//! the engine.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use iace_actors::breaker::Breakers;
use iace_actors::engine::Engine;
use iace_actors::machine::MediaReport;
use tracing::{info, warn};
use uuid::Uuid;

use super::clock::SystemClock;
use crate::clients::retry::RetryPolicy;
use crate::clients::telnyx::{TelnyxClient, TelnyxConfig, TelnyxMetrics, WebhookVerifier};
use crate::config::TelnyxArgs;
use crate::media::{MediaConfig, MediaSink, MediaStats, MediaTokens, StreamInfo};

/// The Telnyx edge: the command client, the webhook verifier, the media-stream tokens.
pub(super) struct TelnyxEdge {
    pub(super) client: Arc<TelnyxClient>,
    pub(super) verifier: Arc<WebhookVerifier>,
    pub(super) tokens: Arc<MediaTokens>,
    pub(super) media: MediaConfig,
}

pub(super) fn telnyx_edge(
    args: &TelnyxArgs,
    token_ttl: Duration,
    media_url: Option<String>,
    registry: &prometheus::Registry,
    breakers: &Breakers,
) -> anyhow::Result<TelnyxEdge> {
    let need = |v: &Option<String>, name: &str| {
        v.clone()
            .filter(|v| !v.trim().is_empty())
            .with_context(|| format!("{name} is required with IACE_TELEPHONY=telnyx"))
    };
    let api_key = need(&args.telnyx_api_key, "TELNYX_API_KEY")?;
    let connection_id = need(&args.telnyx_connection_id, "TELNYX_CONNECTION_ID")?;
    let public_key = need(&args.telnyx_public_key, "TELNYX_PUBLIC_KEY")?;
    let public_url = need(&args.public_url, "IACE_PUBLIC_URL")?;
    let tokens = Arc::new(
        match args.media_secret.as_deref().filter(|s| !s.is_empty()) {
            Some(secret) => MediaTokens::new(secret.as_bytes()),
            None => {
                warn!("IACE_MEDIA_SECRET is not set: media-stream tokens use a random per-process secret (a stream that reaches another node or a restarted one is refused)");
                MediaTokens::random()
            }
        }
        .with_ttl(token_ttl),
    );
    let signer = tokens.clone();
    let client = TelnyxClient::new(
        TelnyxConfig {
            api_base: args.telnyx_api_base.clone(),
            api_key,
            connection_id,
            public_url,
            media_url,
            answering_machine_detection: args.telnyx_amd.clone(),
            transfer_timeout_secs: 30,
            retry: RetryPolicy {
                max_attempts: 3,
                base: Duration::from_millis(250),
                cap: Duration::from_secs(2),
                attempt_timeout: Duration::from_secs(3),
                // Below the engine's per-command bound (10 s), which retries on its own.
                deadline: Duration::from_secs(8),
                max_retry_after: Duration::from_secs(5),
            },
            stream_tokens: Arc::new(move |call_id| signer.token(call_id)),
            breaker: breakers
                .get(crate::clients::telnyx::client::VENDOR)
                .cloned(),
        },
        Some(TelnyxMetrics::new(registry)?),
    )?;
    let verifier = WebhookVerifier::new(
        &public_key,
        Duration::from_secs(args.telnyx_webhook_tolerance_secs),
        Arc::new(SystemClock),
    )?;
    Ok(TelnyxEdge {
        client: Arc::new(client),
        verifier: Arc::new(verifier),
        tokens,
        media: MediaConfig {
            greeting: args.media_greeting,
            echo: args.media_echo,
            ..MediaConfig::default()
        },
    })
}

/// The media endpoint's reports, into the engine: a started stream starts the call's
/// conversation, caller audio and mark echoes go to it, a finished stream's figures are
/// journaled with its call. Start and DTMF are journaled from Telnyx's own webhooks (DTMF
/// reaches the conversation from there, deduplicated by the inbox).
pub(super) struct EngineMedia(pub(super) Engine);

impl MediaSink for EngineMedia {
    /// Refuses a stream for a call this node does not run. Otherwise asks the engine for the
    /// call's status. When the engine cannot answer (the database
    /// is unreachable), the stream is admitted: its token is authentic and expires, and
    /// refusing would cut a live call's audio for a blip.
    fn admits(&self, call_id: Uuid) -> crate::media::Admission {
        let engine = self.0.clone();
        Box::pin(async move {
            if !engine.runs_call(call_id) {
                // The call is run by another node (it moved while the carrier connected
                // here): that node is told to point the stream at itself.
                warn!(call_id = %call_id, "media stream for a call another node runs; refused, and its node asked to restart the stream");
                engine.media_misrouted(call_id);
                return false;
            }
            match engine.call_status(call_id).await {
                Ok(Some(status)) => !status.is_terminal(),
                Ok(None) => false,
                Err(e) => {
                    warn!(call_id = %call_id, error = %e, "call status unknown; media stream admitted on its token");
                    true
                }
            }
        })
    }

    fn started(&self, call_id: Uuid, info: StreamInfo) {
        info!(call_id = %call_id, stream_id = %info.stream_id, encoding = %info.encoding, "media stream attached");
        self.0.media_started(call_id);
    }

    fn audio(&self, call_id: Uuid, mulaw: Vec<u8>) {
        self.0.media_audio(call_id, mulaw);
    }

    fn mark(&self, call_id: Uuid, name: String) {
        self.0.media_mark(call_id, name);
    }

    fn dtmf(&self, call_id: Uuid, digit: String) {
        info!(call_id = %call_id, digit = %digit, "dtmf on the media stream");
    }

    fn stopped(&self, call_id: Uuid, stats: MediaStats) {
        info!(call_id = %call_id, stream_id = %stats.stream_id, frames_in = stats.frames_in, frames_out = stats.frames_out, gaps = stats.gaps, jitter_ms = stats.jitter_ms, "media stream ended");
        self.0.report_media(
            call_id,
            MediaReport {
                stream_id: stats.stream_id,
                frames_in: stats.frames_in,
                frames_out: stats.frames_out,
                gaps: stats.gaps,
                jitter_ms: stats.jitter_ms,
                duration_ms: stats.duration_ms,
            },
        );
    }
}
