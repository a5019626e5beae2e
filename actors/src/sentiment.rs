//! Caller sentiment scorers (the [`SentimentScorer`] port is in `crate::ports::sentiment`): a
//! local lexicon scorer, and
//! [`DegradingSentiment`], which answers with the lexicon (marked `degraded`) whenever the
//! sentiment vendor cannot (its breaker is open, it fails, it is too slow).
//!
//! Sentiment is optional work: the vendor behind it must sit behind a breaker of its own
//! (`groq_classify` in production), never the one of the conversation's replies, because the
//! turn budget cuts off a late answer and that cut-off counts against the vendor's breaker.
//!
//! The lexicon scorer is deliberately small and deterministic (a VADER-style word list with
//! negation, intensifiers and exclamation): good enough to keep tone adaptation and
//! escalation working through a vendor outage, never a replacement for the model.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::ports::sentiment::{Sentiment, SentimentError, SentimentLabel, SentimentScorer};

/// Word weights in `[-4, 4]` (VADER's scale).
const LEXICON: &[(&str, f64)] = &[
    ("amazing", 3.0),
    ("appreciate", 2.0),
    ("awesome", 3.0),
    ("glad", 2.0),
    ("good", 1.9),
    ("great", 3.0),
    ("happy", 2.7),
    ("helpful", 1.8),
    ("love", 3.2),
    ("nice", 1.8),
    ("perfect", 2.7),
    ("pleased", 2.2),
    ("resolved", 1.5),
    ("thank", 1.8),
    ("thanks", 1.9),
    ("wonderful", 2.7),
    ("yes", 0.5),
    ("angry", -2.3),
    ("annoyed", -1.8),
    ("awful", -2.5),
    ("bad", -2.5),
    ("broken", -1.8),
    ("cancel", -1.2),
    ("disappointed", -2.2),
    ("frustrated", -2.4),
    ("frustrating", -2.4),
    ("furious", -3.2),
    ("hate", -2.7),
    ("horrible", -2.5),
    ("idiot", -2.6),
    ("lawyer", -1.5),
    ("ridiculous", -2.1),
    ("scam", -2.9),
    ("sick", -1.6),
    ("stupid", -2.4),
    ("terrible", -2.9),
    ("unacceptable", -2.6),
    ("upset", -1.9),
    ("useless", -2.6),
    ("waste", -1.8),
    ("worst", -3.1),
    ("wrong", -1.8),
];

const NEGATIONS: &[&str] = &[
    "not", "no", "never", "isn't", "isnt", "don't", "dont", "doesn't", "doesnt", "didn't", "didnt",
    "won't", "wont", "can't", "cant", "cannot", "nothing", "neither", "nor",
];

const BOOSTERS: &[(&str, f64)] = &[
    ("absolutely", 0.293),
    ("completely", 0.293),
    ("extremely", 0.293),
    ("really", 0.293),
    ("so", 0.293),
    ("totally", 0.293),
    ("very", 0.293),
    ("barely", -0.293),
    ("kind", -0.293),
    ("slightly", -0.293),
    ("somewhat", -0.293),
];

/// The local scorer.
#[derive(Debug, Clone, Copy, Default)]
pub struct LexiconScorer;

impl LexiconScorer {
    /// Scores `text` in `[-1, 1]`.
    pub fn score_text(&self, text: &str) -> f64 {
        let words: Vec<String> = text
            .split(|c: char| !(c.is_alphanumeric() || c == '\''))
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect();
        let mut sum = 0.0;
        for (i, word) in words.iter().enumerate() {
            let Some(mut valence) = weight(word) else {
                continue;
            };
            // Up to three words back: boosters scale, a negation flips (and damps).
            for back in 1..=3.min(i) {
                let prior = words[i - back].as_str();
                if let Some(boost) = BOOSTERS.iter().find(|(w, _)| *w == prior).map(|(_, b)| *b) {
                    let scale = if back == 1 { 1.0 } else { 0.95 };
                    valence += boost.copysign(valence) * scale;
                }
                if NEGATIONS.contains(&prior) {
                    valence *= -0.74;
                }
            }
            sum += valence;
        }
        if sum != 0.0 {
            let bangs = text.matches('!').count().min(4) as f64;
            sum += (0.292 * bangs).copysign(sum);
        }
        // VADER's normalisation into (-1, 1).
        let alpha = 15.0;
        (sum / (sum * sum + alpha).sqrt()).clamp(-1.0, 1.0)
    }
}

fn weight(word: &str) -> Option<f64> {
    LEXICON.iter().find(|(w, _)| *w == word).map(|(_, v)| *v)
}

#[async_trait]
impl SentimentScorer for LexiconScorer {
    async fn score(&self, text: &str) -> Result<Sentiment, SentimentError> {
        let score = self.score_text(text);
        Ok(Sentiment {
            score,
            label: SentimentLabel::of(score),
            source: "lexicon".into(),
            degraded: false,
        })
    }
}

/// The vendor scorer with the lexicon behind it: every turn gets a sentiment.
pub struct DegradingSentiment {
    primary: Arc<dyn SentimentScorer>,
    fallback: LexiconScorer,
    timeout: Duration,
    degraded: prometheus::IntCounter,
}

impl DegradingSentiment {
    /// `primary` is the vendor client (which fails fast while its breaker is open); it gets
    /// `timeout` per turn before the lexicon answers instead. `degraded` counts fallbacks.
    pub fn new(
        primary: Arc<dyn SentimentScorer>,
        timeout: Duration,
        degraded: prometheus::IntCounter,
    ) -> Self {
        DegradingSentiment {
            primary,
            fallback: LexiconScorer,
            timeout,
            degraded,
        }
    }

    /// The sentiment of `text`, from the vendor when it answers in time, else from the
    /// lexicon with `degraded: true`. Never fails.
    pub async fn score(&self, text: &str) -> Sentiment {
        let reason = match tokio::time::timeout(self.timeout, self.primary.score(text)).await {
            Ok(Ok(sentiment)) => return sentiment,
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {} ms", self.timeout.as_millis()),
        };
        tracing::debug!(reason = %reason, "sentiment degraded to the lexicon");
        self.degraded.inc();
        let score = self.fallback.score_text(text);
        Sentiment {
            score,
            label: SentimentLabel::of(score),
            source: "lexicon".into(),
            degraded: true,
        }
    }
}

#[async_trait]
impl SentimentScorer for DegradingSentiment {
    /// Never fails: the lexicon answers whenever the vendor cannot.
    async fn score(&self, text: &str) -> Result<Sentiment, SentimentError> {
        Ok(DegradingSentiment::score(self, text).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::{BreakerConfig, Breakers, CallOutcome};
    use crate::testkit::TokioClock;

    #[test]
    fn the_lexicon_reads_the_obvious() {
        let l = LexiconScorer;
        assert!(l.score_text("Thank you, that was really helpful!") >= 0.5);
        assert!(l.score_text("This is the worst service, I'm so frustrated") <= -0.5);
        assert_eq!(l.score_text("My account number is 4 4 7 1"), 0.0);
        // Negation flips, boosters strengthen, exclamation marks intensify.
        assert!(l.score_text("this is not good") < 0.0);
        assert!(l.score_text("very bad") < l.score_text("bad"));
        assert!(l.score_text("terrible!!!") < l.score_text("terrible"));
        for text in [
            "",
            "good good good good good good good good",
            "HATE hate hate!!!!",
        ] {
            let s = l.score_text(text);
            assert!((-1.0..=1.0).contains(&s), "{text}: {s}");
        }
        assert_eq!(SentimentLabel::of(0.5), SentimentLabel::Positive);
        assert_eq!(SentimentLabel::of(0.0), SentimentLabel::Neutral);
        assert_eq!(SentimentLabel::of(-0.5), SentimentLabel::Negative);
    }

    /// A vendor scorer behind its breaker, failing on demand.
    struct Vendor {
        breaker: crate::breaker::BreakerHandle,
        failing: std::sync::atomic::AtomicBool,
        calls: std::sync::atomic::AtomicU32,
    }

    #[async_trait]
    impl SentimentScorer for Vendor {
        async fn score(&self, _text: &str) -> Result<Sentiment, SentimentError> {
            let permit = self
                .breaker
                .acquire()
                .map_err(|_| SentimentError::Unavailable("breaker open".into()))?;
            self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let elapsed = Duration::from_millis(5);
            if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
                self.breaker
                    .record(permit, CallOutcome::Failure { elapsed });
                Err(SentimentError::Unavailable("503".into()))
            } else {
                self.breaker
                    .record(permit, CallOutcome::Success { elapsed });
                Ok(Sentiment {
                    score: 0.9,
                    label: SentimentLabel::Positive,
                    source: "groq".into(),
                    degraded: false,
                })
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_sentiment_vendor_degrades_to_the_lexicon_and_recovers() {
        let clock = Arc::new(TokioClock::new(
            chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
        ));
        let config = BreakerConfig {
            consecutive_failures: 3,
            open_wait: Duration::from_secs(10),
            half_open_probes: 1,
            ..BreakerConfig::default()
        };
        let registry = prometheus::Registry::new();
        let breakers = Breakers::start([("groq".to_owned(), config)].into(), clock, &registry)
            .await
            .unwrap();
        let vendor = Arc::new(Vendor {
            breaker: breakers.get("groq").unwrap().clone(),
            failing: true.into(),
            calls: 0.into(),
        });
        let degraded = prometheus::IntCounter::new("degraded", "fallbacks").unwrap();
        let scorer =
            DegradingSentiment::new(vendor.clone(), Duration::from_secs(2), degraded.clone());

        for _ in 0..3 {
            let s = scorer.score("this is useless, I'm furious").await;
            assert!(s.degraded);
            assert_eq!(s.source, "lexicon");
            assert_eq!(s.label, SentimentLabel::Negative);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        // Open: the vendor is not even asked; the lexicon answers at once.
        let before = vendor.calls.load(std::sync::atomic::Ordering::SeqCst);
        let s = scorer.score("thanks, great").await;
        assert!(s.degraded);
        assert_eq!(s.label, SentimentLabel::Positive);
        assert_eq!(
            vendor.calls.load(std::sync::atomic::Ordering::SeqCst),
            before
        );
        assert_eq!(degraded.get(), 4);

        // The vendor comes back; after the open wait a probe succeeds and it answers again.
        vendor
            .failing
            .store(false, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(11)).await;
        let s = scorer.score("fine").await;
        assert!(!s.degraded);
        assert_eq!(s.source, "groq");
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(
            breakers.get("groq").unwrap().state(),
            crate::breaker::BreakerState::Closed
        );
        breakers.stop();
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_vendor_is_cut_off_by_the_turn_timeout() {
        struct Slow;
        #[async_trait]
        impl SentimentScorer for Slow {
            async fn score(&self, _text: &str) -> Result<Sentiment, SentimentError> {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Err(SentimentError::Unavailable("late".into()))
            }
        }
        let degraded = prometheus::IntCounter::new("degraded", "fallbacks").unwrap();
        let scorer = DegradingSentiment::new(Arc::new(Slow), Duration::from_millis(800), degraded);
        let started = tokio::time::Instant::now();
        let s = scorer
            .score("I want to speak to a human, this is ridiculous")
            .await;
        assert!(s.degraded);
        assert_eq!(s.label, SentimentLabel::Negative);
        assert_eq!(started.elapsed(), Duration::from_millis(800));
    }
}
