//! The wire-level fakes of the voice vendors as one bundle, with the server's voice settings
//! pointing at them.

use anyhow::Context;

/// The wire-level fakes of the voice vendors (Deepgram, Cartesia, Groq) on loopback ports:
/// the dev world converses against them, and so do the end-to-end tests and the voice benchmark.
pub struct FakeVoices {
    /// Live speech-to-text.
    pub deepgram: iace_fakes::deepgram::FakeDeepgram,
    /// Speech synthesis.
    pub cartesia: iace_fakes::cartesia::FakeCartesia,
    /// Chat model and sentiment.
    pub groq: iace_fakes::groq::FakeGroq,
}

impl FakeVoices {
    /// Starts the three fakes.
    pub async fn start(
        deepgram: iace_fakes::deepgram::FakeDeepgramConfig,
        cartesia: iace_fakes::cartesia::FakeCartesiaConfig,
        groq: iace_fakes::groq::FakeGroqConfig,
    ) -> anyhow::Result<FakeVoices> {
        let deepgram = iace_fakes::deepgram::FakeDeepgram::start(deepgram)
            .await
            .context("starting the fake Deepgram")?;
        let cartesia = iace_fakes::cartesia::FakeCartesia::start(cartesia)
            .await
            .context("starting the fake Cartesia")?;
        let groq = iace_fakes::groq::FakeGroq::start(groq)
            .await
            .context("starting the fake Groq")?;
        Ok(FakeVoices {
            deepgram,
            cartesia,
            groq,
        })
    }

    /// The server's voice settings pointing at the fakes.
    pub fn args(&self) -> iace::config::VoiceArgs {
        iace::config::VoiceArgs {
            enabled: true,
            deepgram_api_key: Some(self.deepgram.api_key().to_owned()),
            deepgram_url: self.deepgram.url(),
            cartesia_api_key: Some(self.cartesia.api_key().to_owned()),
            cartesia_url: format!("ws://{}", self.cartesia.addr()),
            groq_api_key: Some(self.groq.api_key().to_owned()),
            groq_api_base: self.groq.base_url(),
            groq_model: "llama-3.3-70b-versatile".into(),
            groq_classify_model: "llama-3.1-8b-instant".into(),
            analysis_model: "openai/gpt-oss-20b".into(),
            analysis_retry_ms: 30_000,
        }
    }

    /// Stops the three fakes.
    pub async fn shutdown(self) {
        self.deepgram.shutdown().await;
        self.cartesia.shutdown().await;
        self.groq.shutdown().await;
    }
}
