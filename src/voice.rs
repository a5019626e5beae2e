//! Wiring of the voice pipeline: the real vendor clients (Deepgram, Cartesia, Groq) behind the
//! engine's voice ports, each through its circuit breaker (Groq's replies through `groq`, its
//! sentiment classifications through `groq_classify`), and the media endpoint's registry as
//! the calls' outbound media.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use iace_actors::breaker::Breakers;
use iace_actors::ports::voice::VoicePorts;
use iace_actors::sentiment::DegradingSentiment;

use crate::clients::cartesia::{CartesiaConfig, CartesiaMetrics, CartesiaTts};
use crate::clients::deepgram::{DeepgramConfig, DeepgramMetrics, DeepgramStt};
use crate::clients::groq::{GroqClient, GroqConfig, GroqLlm, GroqSentiment};
use crate::clients::retry::RetryPolicy;
use crate::config::VoiceArgs;
use crate::media::{MediaRegistry, RegistryMediaOut};

/// How long a sentiment classification may take before the lexicon answers instead. A miss
/// counts as a failure on `groq_classify` (only): see `clients::groq`.
const SENTIMENT_TIMEOUT: Duration = Duration::from_millis(800);

/// The voice ports of a server whose calls converse.
pub fn ports(
    args: &VoiceArgs,
    media: MediaRegistry,
    breakers: &Breakers,
    registry: &prometheus::Registry,
) -> anyhow::Result<VoicePorts> {
    let need = |v: &Option<String>, name: &str| {
        v.clone()
            .filter(|s| !s.is_empty())
            .with_context(|| format!("{name} is required when IACE_VOICE=true"))
    };
    let mut deepgram = DeepgramConfig::new(
        args.deepgram_url.clone(),
        need(&args.deepgram_api_key, "DEEPGRAM_API_KEY")?,
    );
    deepgram.breaker = breakers.get(crate::clients::deepgram::VENDOR).cloned();
    let stt = DeepgramStt::new(deepgram, Some(DeepgramMetrics::new(registry)?))?;

    let mut cartesia = CartesiaConfig::new(
        args.cartesia_url.clone(),
        need(&args.cartesia_api_key, "CARTESIA_API_KEY")?,
    );
    cartesia.breaker = breakers.get(crate::clients::cartesia::VENDOR).cloned();
    let tts = CartesiaTts::new(cartesia, Some(CartesiaMetrics::new(registry)?));

    let groq = Arc::new(GroqClient::new(GroqConfig {
        api_base: args.groq_api_base.clone(),
        api_key: need(&args.groq_api_key, "GROQ_API_KEY")?,
        model: args.groq_model.clone(),
        classify_model: args.groq_classify_model.clone(),
        retry: RetryPolicy {
            max_attempts: 2,
            base: Duration::from_millis(100),
            cap: Duration::from_millis(500),
            // A reply that has not started within this is no use to a caller on the line.
            attempt_timeout: Duration::from_secs(4),
            deadline: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(1),
        },
        breaker: breakers.get(crate::clients::groq::VENDOR).cloned(),
        // A classification is optional and bounded by its budget: one quick retry of a
        // refused connection or 5xx fits in it, nothing more.
        classify_retry: RetryPolicy {
            max_attempts: 2,
            base: Duration::from_millis(50),
            cap: Duration::from_millis(200),
            attempt_timeout: SENTIMENT_TIMEOUT,
            deadline: SENTIMENT_TIMEOUT,
            max_retry_after: Duration::from_millis(200),
        },
        classify_breaker: breakers
            .get(crate::clients::groq::CLASSIFY_BREAKER)
            .cloned(),
    })?);
    let degraded = prometheus::IntCounter::new(
        "iace_sentiment_degraded_total",
        "Caller turns scored by the local lexicon because the sentiment vendor could not answer",
    )?;
    registry.register(Box::new(degraded.clone()))?;
    let sentiment = DegradingSentiment::new(
        Arc::new(GroqSentiment::new(groq.clone())),
        SENTIMENT_TIMEOUT,
        degraded,
    );
    Ok(VoicePorts {
        stt: Arc::new(stt),
        tts: Arc::new(tts),
        llm: Arc::new(GroqLlm(groq)),
        sentiment: Arc::new(sentiment),
        media: Arc::new(RegistryMediaOut(media)),
        // Speech synthesis is what failed when this plays, so it cannot be speech: a short
        // chime tells the caller the line is alive before the transfer or goodbye.
        fallback_apology: Arc::new(crate::media::audio::greeting_ulaw(8000, 800)),
        tools: None,
    })
}

/// The model of post-call analyses (Groq structured outputs), when a Groq key is configured.
/// It has its own client: no breaker and longer timeouts than live replies (it is background
/// work, retried from its queue).
pub fn analysis_model(
    args: &VoiceArgs,
) -> anyhow::Result<Option<Arc<dyn iace_actors::ports::analysis::StructuredModel>>> {
    let Some(key) = args.groq_api_key.clone().filter(|k| !k.is_empty()) else {
        return Ok(None);
    };
    let client = Arc::new(GroqClient::new(GroqConfig {
        api_base: args.groq_api_base.clone(),
        api_key: key,
        model: args.analysis_model.clone(),
        classify_model: args.groq_classify_model.clone(),
        retry: RetryPolicy::default(),
        breaker: None,
        classify_retry: RetryPolicy::default(),
        classify_breaker: None,
    })?);
    Ok(Some(Arc::new(crate::clients::groq::GroqAnalysis::new(
        client,
        args.analysis_model.clone(),
    ))))
}
