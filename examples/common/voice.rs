//! What `voice_load` measures besides the engine's own records: the agent variants a run
//! compares, the scripted caller and its recogniser lines, the reply latency the caller heard
//! (read from the fake Telnyx's timeline of a leg), and the engine's Prometheus counters.
//!
//! It does no I/O: the benchmark hands it timelines, request records and `/metrics` text.

use std::time::Duration;

use iace_fakes::telnyx::{CallerScript, CallerTimeline, StepOutcome};

/// The engine's endpointing (the recogniser ends an utterance after this much silence).
pub const ENDPOINTING_MS: u64 = 300;
/// The turn-taking hold-off every variant's agent is configured with.
pub const HOLDOFF_MS: u64 = 250;
/// How far into the hold-off a pausing caller goes on talking.
const RESUME_INTO_HOLDOFF_MS: u64 = 120;

/// What the recogniser hears from a pausing caller after the pause.
pub const AFTER_PAUSE_LINE: &str = "The one from last week, please answer it.";

/// The variants a run compares unless `--variants` says otherwise.
pub const DEFAULT_VARIANTS: &str = "off-clause,on-clause,on-stream,off-stream";

/// One agent configuration under test: speculative replies on or off, and how the model's
/// text goes to synthesis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variant {
    /// `on-clause`, `off-stream`, ...
    pub name: String,
    /// `turn_taking.speculate`.
    pub speculate: bool,
    /// `text_chunking`: `clause` or `stream`.
    pub chunking: &'static str,
}

impl Variant {
    /// Reads a comma-separated list of `{on|off}-{clause|stream}`.
    pub fn parse_list(list: &str) -> Result<Vec<Variant>, String> {
        let mut variants: Vec<Variant> = Vec::new();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let (speculation, chunking) = name.split_once('-').ok_or_else(|| {
                format!("variant {name:?}: expected {{on|off}}-{{clause|stream}}")
            })?;
            let speculate = match speculation {
                "on" => true,
                "off" => false,
                _ => return Err(format!("variant {name:?}: speculation is on or off")),
            };
            let chunking = match chunking {
                "clause" => "clause",
                "stream" => "stream",
                _ => {
                    return Err(format!(
                        "variant {name:?}: text chunking is clause or stream"
                    ))
                }
            };
            if variants.iter().any(|v| v.name == name) {
                return Err(format!("variant {name:?} is listed twice"));
            }
            variants.push(Variant {
                name: name.to_owned(),
                speculate,
                chunking,
            });
        }
        if variants.is_empty() {
            return Err("--variants lists no variant".into());
        }
        Ok(variants)
    }

    /// Opens the system prompt of this variant's agent, so the model requests recorded by the
    /// fake can be told apart.
    pub fn marker(&self) -> String {
        format!("Bench variant {}.", self.name)
    }

    /// The agent's `persona_config`.
    pub fn persona_config(&self) -> serde_json::Value {
        serde_json::json!({
            "greeting": "Hello, thanks for calling.",
            "system_prompt": format!(
                "{} You are a helpful, concise phone assistant. Answer in one or two short spoken sentences.",
                self.marker()
            ),
            "turn_taking": {
                "holdoff_ms": HOLDOFF_MS,
                "speculate": self.speculate,
                "max_speculations": 2,
            },
        })
    }

    /// The agent's `voice_config`.
    pub fn voice_config(&self) -> serde_json::Value {
        serde_json::json!({"text_chunking": self.chunking})
    }

    /// Whether a recorded chat request's system prompt is this variant's.
    pub fn owns(&self, body: &serde_json::Value) -> bool {
        let marker = self.marker();
        body["messages"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["role"] == "system")
            .filter_map(|m| m["content"].as_str())
            .any(|c| c.starts_with(&marker))
    }
}

/// Where one caller turn sits in the script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TurnSteps {
    /// The turn's first `Say`.
    pub first_say: usize,
    /// Its last `Say`: the reply is due from its end. The step after it waits for the agent.
    pub last_say: usize,
    /// The caller paused inside the turn.
    pub paused: bool,
}

/// The caller of every call and what the recogniser hears from it.
#[derive(Debug, Clone)]
pub struct CallerPlan {
    /// The caller's script.
    pub script: CallerScript,
    /// One recogniser line per utterance, in order.
    pub lines: Vec<String>,
    /// The caller's turns.
    pub turns: Vec<TurnSteps>,
}

impl CallerPlan {
    /// Turns with a pause, per call.
    pub fn pauses(&self) -> usize {
        self.turns.iter().filter(|t| t.paused).count()
    }
}

impl CallerPlan {
    /// Waits for the greeting, then `turns` times says something and waits for the whole
    /// answer, then hangs up. Every `pause_every`-th turn (0: none) is two utterances: the
    /// caller pauses long enough for the recogniser to end the first, and goes on talking
    /// `RESUME_INTO_HOLDOFF_MS` into the hold-off, so an answer begun at the first end must
    /// be withdrawn.
    pub fn new(turns: usize, pause_every: usize) -> Self {
        let wait = Duration::from_secs(60);
        let quiet = Duration::from_millis(400);
        let mut script = CallerScript::new()
            .wait_for_agent_audio(wait)
            .wait_for_agent_silence(quiet, wait);
        let mut lines = Vec::new();
        let mut steps = Vec::new();
        for t in 1..=turns {
            let first_say = script.steps.len();
            let paused = pause_every > 0 && t % pause_every == 0;
            if paused {
                script = script
                    .say(Duration::from_millis(800))
                    .silence(Duration::from_millis(
                        ENDPOINTING_MS + RESUME_INTO_HOLDOFF_MS,
                    ))
                    .say(Duration::from_millis(700));
                // Neither part may look unfinished (a trailing digit, comma or "and"), or
                // the engine would hold off longer than the pause.
                lines.push(format!("This is caller line number {t}, about my order."));
                lines.push(AFTER_PAUSE_LINE.to_owned());
            } else {
                script = script.say(Duration::from_millis(1500));
                lines.push(format!("This is caller line number {t}, please answer it."));
            }
            steps.push(TurnSteps {
                first_say,
                last_say: script.steps.len() - 1,
                paused,
            });
            script = script
                .wait_for_agent_audio(wait)
                .wait_for_agent_silence(quiet, wait);
        }
        CallerPlan {
            script: script.hangup(),
            lines,
            turns: steps,
        }
    }

    /// What the caller of one leg heard, added to `into`.
    pub fn measure(&self, timeline: &CallerTimeline, into: &mut Heard) {
        let step = |i: usize| timeline.steps.iter().find(|s| s.index == i);
        for turn in &self.turns {
            let (Some(first), Some(end_ms)) = (
                step(turn.first_say),
                step(turn.last_say).and_then(|s| s.end_ms()),
            ) else {
                continue;
            };
            let answered = step(turn.last_say + 1)
                .and_then(|s| s.end)
                .is_some_and(|e| e.outcome == StepOutcome::Done);
            if !answered {
                continue;
            }
            // Audio that began while the caller still had the floor is an answer over them
            // (or to half of what they said): no latency to speak of.
            if timeline
                .agent_audio
                .iter()
                .any(|a| a.start_ms >= first.start_ms && a.start_ms < end_ms)
            {
                into.over_caller += 1;
                continue;
            }
            if let Some(audio) = timeline.agent_audio.iter().find(|a| a.start_ms >= end_ms) {
                let latency = audio.start_ms - end_ms;
                into.latency_ms.push(latency);
                if turn.paused {
                    into.after_pause_ms.push(latency);
                }
            }
        }
    }
}

/// Replies as the callers of one variant heard them.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Heard {
    /// End of the caller's speech to the first agent audio heard after it, ms, per answered
    /// turn.
    pub latency_ms: Vec<u64>,
    /// The same for the turns with a pause only.
    pub after_pause_ms: Vec<u64>,
    /// Turns whose answer began playing before the caller had finished the turn.
    pub over_caller: usize,
}

/// What the fake model saw of one variant's agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModelLoad {
    /// Chat requests (streamed replies).
    pub requests: usize,
    /// Of which the engine dropped before the answer was complete.
    pub cancelled: usize,
    /// Completion tokens sent on the cancelled ones.
    pub cancelled_tokens: u64,
    /// Completion tokens sent on all of them.
    pub tokens: u64,
}

/// The sum of the samples of `name` in Prometheus text exposition, restricted to the series
/// carrying `label` when given; 0 when there is none.
pub fn metric(text: &str, name: &str, label: Option<(&str, &str)>) -> f64 {
    let wanted = label.map(|(k, v)| format!("{k}=\"{v}\""));
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.trim().rsplit_once(' ')?;
            let (metric, labels) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            let labelled = wanted
                .as_ref()
                .is_none_or(|w| labels.split(',').any(|p| p == w));
            (metric == name && labelled)
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        // Not `sum()`: a float sum of nothing is -0, printed "-0".
        .fold(0.0, |total, v| total + v)
}

/// The `q` quantile (0..1) of a Prometheus histogram with label `label`, as the upper bound
/// of the bucket it falls in (seconds); 0 when the histogram is empty.
pub fn histogram_quantile(text: &str, name: &str, label: (&str, &str), q: f64) -> f64 {
    let bucket = format!("{name}_bucket");
    let wanted = format!("{}=\"{}\"", label.0, label.1);
    let mut buckets: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| {
            let (series, value) = l.trim().rsplit_once(' ')?;
            let (metric, labels) = series.split_once('{')?;
            let labels = labels.strip_suffix('}')?;
            if metric != bucket || !labels.split(',').any(|p| p == wanted) {
                return None;
            }
            let le = labels
                .split(',')
                .find_map(|p| p.strip_prefix("le=\""))?
                .trim_end_matches('"');
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, value.parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map_or(0.0, |b| b.1);
    if total == 0.0 {
        return 0.0;
    }
    buckets
        .iter()
        .find(|(_, count)| *count >= q * total)
        .map_or(0.0, |(le, _)| *le)
}

#[cfg(test)]
mod tests {
    use super::*;
    use iace_fakes::telnyx::{AgentAudioInterval, CallerStep, StepEnd, StepRecord};

    fn ran(plan: &CallerPlan, ends: &[u64], waits_done: bool) -> Vec<StepRecord> {
        let mut start = 0;
        plan.script
            .steps
            .iter()
            .zip(ends)
            .enumerate()
            .map(|(index, (step, &end))| {
                let waits = matches!(step, CallerStep::WaitForAgentAudio { .. });
                let rec = StepRecord {
                    index,
                    step: step.clone(),
                    start_ms: start,
                    end: Some(StepEnd {
                        at_ms: end,
                        outcome: if waits && !waits_done {
                            StepOutcome::TimedOut
                        } else {
                            StepOutcome::Done
                        },
                    }),
                };
                start = end;
                rec
            })
            .collect()
    }

    fn audio(start_ms: u64, end_ms: u64) -> AgentAudioInterval {
        AgentAudioInterval {
            start_ms,
            end_ms: Some(end_ms),
        }
    }

    #[test]
    fn a_pausing_turn_is_two_lines_and_counts_from_its_second_part() {
        let plan = CallerPlan::new(2, 2);
        assert_eq!(plan.lines.len(), 3);
        assert_eq!(
            plan.turns,
            vec![
                TurnSteps {
                    first_say: 2,
                    last_say: 2,
                    paused: false
                },
                TurnSteps {
                    first_say: 5,
                    last_say: 7,
                    paused: true
                },
            ]
        );
        // greeting waits, turn 1 (say, waits), turn 2 (say, silence, say, waits), hangup.
        let ends = [
            1000, 2000, 3500, 4400, 5000, 5800, 6220, 6920, 7900, 9000, 9000,
        ];
        let timeline = CallerTimeline {
            steps: ran(&plan, &ends, true),
            agent_audio: vec![audio(500, 1600), audio(4400, 4600), audio(7830, 8500)],
            ..CallerTimeline::default()
        };
        let mut heard = Heard::default();
        plan.measure(&timeline, &mut heard);
        assert_eq!(heard.latency_ms, vec![900, 910]);
        assert_eq!(heard.after_pause_ms, vec![910]);
        assert_eq!(heard.over_caller, 0);

        // An answer that starts in the pause is an answer over the caller, not a latency.
        let timeline = CallerTimeline {
            agent_audio: vec![audio(500, 1600), audio(4400, 4600), audio(6300, 8500)],
            ..timeline
        };
        let mut heard = Heard::default();
        plan.measure(&timeline, &mut heard);
        assert_eq!(heard.latency_ms, vec![900]);
        assert_eq!(heard.over_caller, 1);

        // A turn the agent never answered is not counted.
        let timeline = CallerTimeline {
            steps: ran(&plan, &ends, false),
            ..timeline
        };
        let mut heard = Heard::default();
        plan.measure(&timeline, &mut heard);
        assert_eq!(heard, Heard::default());
    }

    #[test]
    fn variants_parse_strictly() {
        let v = Variant::parse_list(DEFAULT_VARIANTS).unwrap();
        assert_eq!(v.len(), 4);
        assert!(v[1].speculate && v[1].chunking == "clause");
        assert!(!v[3].speculate && v[3].chunking == "stream");
        for bad in ["", "on", "maybe-clause", "on-word", "on-clause,on-clause"] {
            assert!(Variant::parse_list(bad).is_err(), "{bad:?}");
        }
        let body = serde_json::json!({"messages": [
            {"role": "system", "content": format!("{} More.", v[0].marker())},
            {"role": "user", "content": "Bench variant on-clause."},
        ]});
        assert!(v[0].owns(&body));
        assert!(!v[1].owns(&body));
    }

    #[test]
    fn metrics_are_summed_per_label_and_absent_is_zero() {
        let text = "# HELP x_total X.\n# TYPE x_total counter\n\
                    x_total{outcome=\"used\",node=\"a\"} 3\nx_total{outcome=\"discarded\"} 2\n\
                    x_total_other 9\ny 1.5\n";
        assert_eq!(metric(text, "x_total", None), 5.0);
        assert_eq!(metric(text, "x_total", Some(("outcome", "used"))), 3.0);
        assert_eq!(metric(text, "x_total", Some(("outcome", "started"))), 0.0);
        assert_eq!(metric(text, "y", None), 1.5);
        assert_eq!(metric(text, "z", None).to_string(), "0");
    }
}
