//! Benchmark: the voice pipeline under load — `--calls` concurrent conversing calls, each with
//! `--turns` caller turns, through the real Telnyx, Deepgram, Cartesia and Groq clients against
//! their wire-level fakes, real Postgres and Redis.
//!
//! The engine runs in this process; the four fakes run in a child process (this same binary
//! with `--fakes`), as the vendors would run elsewhere, so the CPU and memory read from
//! `/proc/self` are the engine's own. Both share this machine's cores.
//!
//! Agent variants run side by side in the same run, calls assigned to them in turn
//! (`--variants`, default `off-clause,on-clause,on-stream,off-stream`): speculative replies
//! (`turn_taking.speculate`) `on` or `off`, and the model's text going to synthesis by
//! `clause` or as a `stream` of words (`text_chunking`). Each variant's agent has its own
//! system prompt, so the fake model's records tell the variants apart.
//!
//! Every `--pause-every`-th caller turn (default 3, 0: none) pauses: 800 ms of speech, a
//! silence that outlasts the endpointing by 120 ms, 700 ms more; the caller goes on inside the
//! hold-off, so an answer begun at the first end of speech must be thrown away.
//!
//! Reports:
//! * per variant, the reply latency the caller heard: end of the caller's speech (of a
//!   turn's last part) to the first agent audio it heard after it, read from the fake
//!   Telnyx's timeline of each leg, against the vendor floor (endpointing + the longer of the
//!   hold-off and model first token + synthesis first audio); the journal's `turn_latency`
//!   (whole turn, time saved by speculation); the fake model's requests, cancelled requests
//!   and the completion tokens they had been sent; the engine's speculation counters from
//!   `/metrics`.
//! * engine-added latency per turn as the engine's clocks see it: first audio frame handed to
//!   the media stream - final transcript, minus the hold-off and the waits the engine measured
//!   on the model (to first token, then tokens up to the first speakable piece) and on
//!   synthesis (to first audio). Mailbox queueing and all the engine's work are in it.
//! * the same with the sockets and clients: the whole turn minus the hold-off and what the
//!   fakes were configured to take. Also in it: the fakes' own scheduling (their timers fire
//!   on a millisecond tick, on the same two cores).
//! * process CPU and resident memory per conversing call, and the fakes' CPU beside it.
//!
//! Fakes' latency: `--llm-ttft-ms` (default 200) to the model's first token, then a token
//! every `--llm-token-ms` (10); `--tts-first-ms` (100) to synthesis' first audio.
//!
//! ```text
//! scripts/services up && eval "$(scripts/services env)"
//! cargo run --release --example voice_load -- --calls 200 --turns 3
//! ```

use std::collections::HashMap;
use std::time::{Duration, Instant};

use iace::config::{ServeArgs, TelephonyKind, TelnyxArgs, VoiceArgs};
use iace_dev::FakeVoices;
use iace_fakes::cartesia::FakeCartesiaConfig;
use iace_fakes::deepgram::FakeDeepgramConfig;
use iace_fakes::groq::FakeGroqConfig;
use iace_fakes::telnyx::{FakeTelnyx, FakeTelnyxConfig, Scenario};

mod common;
#[path = "common/voice.rs"]
mod voice;
use common::{arg, arg_str, cpu_ticks, percentile, spawn_self, ChildLines};
use voice::{CallerPlan, Heard, ModelLoad, Variant, ENDPOINTING_MS, HOLDOFF_MS};

/// Resident memory, KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Where the child's fakes listen and how to talk to them: its first JSON line on stdout.
#[derive(serde::Serialize, serde::Deserialize)]
struct Fakes {
    telnyx_api_base: String,
    telnyx_public_key: String,
    voice: VoiceArgs,
}

/// What the child saw, once its stdin closed: its second JSON line on stdout.
#[derive(serde::Serialize, serde::Deserialize)]
struct FakesReport {
    /// Per variant, in `--variants` order.
    heard: Vec<Heard>,
    /// Per variant, in `--variants` order.
    model: Vec<ModelLoad>,
    /// Calls whose leg never started its media stream.
    calls_without_media: usize,
    /// Pausing turns the recogniser heard as two utterances (it sent the line after the
    /// pause as a final transcript of its own).
    pauses_split: usize,
    /// The fake model's own lateness per streamed reply, µs, sorted.
    model_late_us: Vec<u64>,
    /// Webhook deliveries the server acknowledged: send to response head, µs, sorted.
    webhook_ack_us: Vec<u64>,
    /// Webhook delivery attempts that failed.
    webhook_failed: usize,
}

/// The benchmark's knobs, shared by both processes.
#[derive(Clone)]
struct Knobs {
    calls: usize,
    turns: usize,
    pause_every: usize,
    variants: Vec<Variant>,
    llm_ttft_ms: u64,
    llm_token_ms: u64,
    tts_first_ms: u64,
    port: u16,
    /// The server's `IACE_JOURNAL_WRITERS` (0: one transaction per write).
    journal_writers: u16,
    /// The server's `IACE_DB_MAX_CONNECTIONS`.
    db_connections: u32,
    /// The server's `IACE_MAX_LIVE_CALLS` (0: no limit).
    max_live_calls: usize,
}

impl Knobs {
    fn from_args() -> anyhow::Result<Self> {
        let variants = arg_str("--variants", voice::DEFAULT_VARIANTS);
        Ok(Self {
            calls: arg("--calls", 200),
            turns: arg("--turns", 3).max(1),
            pause_every: arg("--pause-every", 3),
            variants: Variant::parse_list(&variants).map_err(anyhow::Error::msg)?,
            llm_ttft_ms: arg("--llm-ttft-ms", 200) as u64,
            llm_token_ms: arg("--llm-token-ms", 10) as u64,
            tts_first_ms: arg("--tts-first-ms", 100) as u64,
            port: u16::try_from(arg("--port", 0)).expect("a port"),
            journal_writers: u16::try_from(arg("--journal-writers", 4)).expect("a count"),
            db_connections: u32::try_from(arg("--db-connections", 20)).expect("a count"),
            max_live_calls: arg("--max-live-calls", 0),
        })
    }

    fn args(&self) -> Vec<String> {
        let variants = self
            .variants
            .iter()
            .map(|v| v.name.as_str())
            .collect::<Vec<_>>()
            .join(",");
        [
            ("--calls", self.calls.to_string()),
            ("--turns", self.turns.to_string()),
            ("--pause-every", self.pause_every.to_string()),
            ("--variants", variants),
            ("--llm-ttft-ms", self.llm_ttft_ms.to_string()),
            ("--llm-token-ms", self.llm_token_ms.to_string()),
            ("--tts-first-ms", self.tts_first_ms.to_string()),
            ("--port", self.port.to_string()),
            ("--journal-writers", self.journal_writers.to_string()),
            ("--db-connections", self.db_connections.to_string()),
            ("--max-live-calls", self.max_live_calls.to_string()),
        ]
        .into_iter()
        .flat_map(|(k, v)| [k.to_owned(), v])
        .collect()
    }

    fn plan(&self) -> CallerPlan {
        CallerPlan::new(self.turns, self.pause_every)
    }

    /// The variant of call `n` (of destination `number(n)`): round-robin, in both processes.
    fn variant_of(&self, n: usize) -> usize {
        n % self.variants.len()
    }

    /// Calls of variant `v`.
    fn calls_of(&self, v: usize) -> usize {
        (0..self.calls).filter(|&n| self.variant_of(n) == v).count()
    }

    /// The best reply latency the vendors allow, ms: the recogniser's endpointing, then the
    /// hold-off or, when longer, the model's first token and synthesis' first audio.
    fn floor_ms(&self) -> u64 {
        ENDPOINTING_MS + HOLDOFF_MS.max(self.llm_ttft_ms + self.tts_first_ms)
    }
}

fn number(n: usize) -> String {
    format!("+1415{n:07}")
}

/// The child: runs the four fakes, prints where they are, serves until stdin closes (the
/// parent finished or died), then prints what the callers heard and the model saw.
async fn run_fakes(k: Knobs) -> anyhow::Result<()> {
    let public = format!("http://127.0.0.1:{}", k.port);
    let telnyx = FakeTelnyx::start(FakeTelnyxConfig {
        api_key: "bench-key".into(),
        connection_id: "bench-connection".into(),
        signing_seed: [5u8; 32],
        inbound_webhook_url: Some(format!("{public}/v1/webhooks/telnyx")),
        default_scenario: Scenario::Answer {
            ring: Duration::from_millis(100),
            talk: None,
        },
        ..FakeTelnyxConfig::default()
    })
    .await?;
    let plan = k.plan();
    for n in 0..k.calls {
        telnyx.set_caller_script(&number(n), plan.script.clone());
    }
    let voices = FakeVoices::start(
        FakeDeepgramConfig::default(),
        FakeCartesiaConfig {
            first_chunk_delay: Duration::from_millis(k.tts_first_ms),
            ..FakeCartesiaConfig::default()
        },
        FakeGroqConfig {
            ttft: Duration::from_millis(k.llm_ttft_ms),
            inter_token: Duration::from_millis(k.llm_token_ms),
            ..FakeGroqConfig::default()
        },
    )
    .await?;
    // Every connection (one per call) replays the script from its first line, one line per
    // utterance; a pausing turn is two utterances and so has two lines.
    voices.deepgram.set_script(plan.lines.clone());
    let fakes = Fakes {
        telnyx_api_base: telnyx.api_base(),
        telnyx_public_key: telnyx.public_key_base64(),
        voice: voices.args(),
    };
    println!("{}", serde_json::to_string(&fakes)?);
    let _ = tokio::task::spawn_blocking(|| {
        use std::io::Read;
        std::io::stdin().read_to_end(&mut Vec::new())
    })
    .await;

    let mut heard = vec![Heard::default(); k.variants.len()];
    let numbers: HashMap<String, usize> = (0..k.calls).map(|n| (number(n), n)).collect();
    let mut with_media = 0;
    for leg in telnyx.legs() {
        let Some(&n) = numbers.get(&leg.to) else {
            continue;
        };
        if let Some(timeline) = telnyx.caller_timeline(&leg.call_control_id) {
            with_media += 1;
            plan.measure(&timeline, &mut heard[k.variant_of(n)]);
        }
    }
    let requests = voices.groq.requests();
    let mut model = vec![ModelLoad::default(); k.variants.len()];
    for r in requests.iter().filter(|r| r.stream) {
        let Some(v) = k.variants.iter().position(|v| v.owns(&r.body)) else {
            continue;
        };
        let load = &mut model[v];
        load.requests += 1;
        load.tokens += u64::from(r.tokens_sent);
        if r.cancelled {
            load.cancelled += 1;
            load.cancelled_tokens += u64::from(r.tokens_sent);
        }
    }
    // How late the fake model itself was: its first token against the configured time to
    // first token, measured inside the fake (timer ticks and scheduling on the shared cores).
    // This is part of the "with sockets and clients" figure but is not the engine's.
    let ttft = Duration::from_millis(k.llm_ttft_ms);
    let mut model_late_us: Vec<u64> = requests
        .iter()
        .filter(|r| r.stream)
        .filter_map(|r| {
            let took = r.first_token_at?.checked_duration_since(r.received_at)?;
            Some(took.saturating_sub(ttft).as_micros() as u64)
        })
        .collect();
    model_late_us.sort_unstable();
    let pauses_split = voices
        .deepgram
        .connections()
        .iter()
        .flat_map(|c| c.final_transcripts())
        .filter(|t| t.trim() == voice::AFTER_PAUSE_LINE)
        .count();
    let report = FakesReport {
        heard,
        model,
        calls_without_media: k.calls.saturating_sub(with_media),
        pauses_split,
        model_late_us,
        webhook_ack_us: {
            let mut acked: Vec<u64> = telnyx
                .deliveries()
                .iter()
                .filter(|d| d.succeeded())
                .map(|d| d.latency.as_micros() as u64)
                .collect();
            acked.sort_unstable();
            acked
        },
        webhook_failed: telnyx
            .deliveries()
            .iter()
            .filter(|d| !d.succeeded())
            .count(),
    };
    println!("{}", serde_json::to_string(&report)?);
    telnyx.shutdown().await;
    voices.shutdown().await;
    Ok(())
}

/// Starts the child and reads where its fakes listen.
async fn spawn_fakes(k: &Knobs) -> anyhow::Result<(tokio::process::Child, ChildLines, Fakes)> {
    let mut args = vec!["--fakes".to_owned()];
    args.extend(k.args());
    let (child, lines, line) = spawn_self(&args).await?;
    let fakes = serde_json::from_str(&line)
        .map_err(|e| anyhow::anyhow!("the fakes did not start ({e}): {line:?}"))?;
    Ok((child, lines, fakes))
}

/// Closes the child's stdin, which makes it report, and reads the report.
async fn fakes_report(
    child: &mut tokio::process::Child,
    lines: &mut ChildLines,
) -> anyhow::Result<FakesReport> {
    drop(child.stdin.take());
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .map_err(|_| anyhow::anyhow!("the fakes did not report within 60 s"))??
        .unwrap_or_default();
    serde_json::from_str(&line)
        .map_err(|e| anyhow::anyhow!("the fakes' report is unreadable ({e}): {line:?}"))
}

/// The engine's Prometheus text; empty when its metrics listener is off.
async fn fetch_metrics(addr: Option<std::net::SocketAddr>) -> anyhow::Result<String> {
    let Some(addr) = addr else {
        return Ok(String::new());
    };
    Ok(reqwest::get(format!("http://{addr}/metrics"))
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// Milliseconds of sorted µs samples at percentile `p`.
fn ms(sorted_us: &[u64], p: f64) -> f64 {
    percentile(sorted_us, p) as f64 / 1000.0
}

/// What the journal says of one variant's turns.
#[derive(Default)]
struct Journaled {
    total_us: Vec<u64>,
    saved_us: Vec<u64>,
}

/// Prints one variant's figures.
fn print_variant(k: &Knobs, v: usize, heard: &Heard, model: &ModelLoad, journal: &Journaled) {
    let variant = &k.variants[v];
    let mut lat = heard.latency_ms.clone();
    lat.sort_unstable();
    let mut paused = heard.after_pause_ms.clone();
    paused.sort_unstable();
    let expected = k.calls_of(v) * k.turns;
    let answered = lat.len() + heard.over_caller;
    println!(
        "{} (speculation {}, text chunking {}): {} calls, replies measured {} of {} turns{}",
        variant.name,
        if variant.speculate { "on" } else { "off" },
        variant.chunking,
        k.calls_of(v),
        lat.len(),
        expected,
        if heard.over_caller > 0 {
            format!(
                ", {} answered before the caller had finished",
                heard.over_caller
            )
        } else {
            String::new()
        }
    );
    let p50 = percentile(&lat, 50.0);
    println!(
        "  reply latency at the caller (end of speech -> first agent audio heard): p50 {} ms, p95 {} ms, p99 {} ms, max {} ms; p50 - floor {:+} ms",
        p50,
        percentile(&lat, 95.0),
        percentile(&lat, 99.0),
        lat.last().copied().unwrap_or(0),
        p50 as i64 - k.floor_ms() as i64
    );
    if !paused.is_empty() {
        println!(
            "    turns with a pause ({}): p50 {} ms, p99 {} ms",
            paused.len(),
            percentile(&paused, 50.0),
            percentile(&paused, 99.0)
        );
    }
    println!(
        "  journal turn_latency ({} turns): total p50 {:.1} ms, saved by speculation p50 {:.1} ms",
        journal.total_us.len(),
        ms(&journal.total_us, 50.0),
        ms(&journal.saved_us, 50.0)
    );
    println!(
        "  model: {} requests, {} cancelled (discard rate {:.1}%), {:.2} requests per answered turn, extra tokens {} (sent on cancelled requests, of {} in all)",
        model.requests,
        model.cancelled,
        model.cancelled as f64 * 100.0 / model.requests.max(1) as f64,
        model.requests as f64 / answered.max(1) as f64,
        model.cancelled_tokens,
        model.tokens
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    let mut k = Knobs::from_args()?;
    if std::env::args().any(|a| a == "--fakes") {
        return run_fakes(k).await;
    }
    let base_url = std::env::var("DATABASE_URL").map_err(|_| {
        anyhow::anyhow!("DATABASE_URL is not set: eval \"$(scripts/services env)\"")
    })?;
    let redis_url = std::env::var("REDIS_URL")
        .map_err(|_| anyhow::anyhow!("REDIS_URL is not set: eval \"$(scripts/services env)\""))?;
    let name = format!("iace_bench_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(&base_url).await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await?;
    admin.close().await;
    let database_url = format!("{}/{name}", &base_url[..base_url.rfind('/').unwrap()]);

    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    k.port = listener.local_addr()?.port();
    drop(listener);
    let port = k.port;
    let public = format!("http://127.0.0.1:{port}");
    let (mut child, mut child_lines, fakes) = spawn_fakes(&k).await?;
    let child_pid = child.id().map(|p| p.to_string()).unwrap_or_default();
    let mut args = ServeArgs {
        telephony: TelephonyKind::Telnyx,
        telnyx: TelnyxArgs {
            telnyx_api_key: Some("bench-key".into()),
            telnyx_connection_id: Some("bench-connection".into()),
            telnyx_public_key: Some(fakes.telnyx_public_key.clone()),
            telnyx_api_base: fakes.telnyx_api_base.clone(),
            telnyx_amd: "disabled".into(),
            telnyx_webhook_tolerance_secs: 300,
            public_url: Some(public.clone()),
            media_secret: Some("bench".into()),
            media_greeting: false,
            media_echo: false,
        },
        voice: fakes.voice,
        sim_ring_ms: 0,
        sim_talk_ms: 0,
        sim_key_prefix: "unused:".into(),
        node_id: Some("bench".into()),
        journal_writers: k.journal_writers,
        max_live_calls: Some(k.max_live_calls),
        ..ServeArgs::local(
            &database_url,
            &redis_url,
            format!("127.0.0.1:{port}").parse()?,
        )
    };
    args.db.db_max_connections = k.db_connections;
    let running = iace::app::start(args).await?;
    let measured = measure(&k, &running, &child_pid, &database_url).await;
    let metrics = fetch_metrics(running.metrics_addr).await;
    let report = fakes_report(&mut child, &mut child_lines).await;
    running.shutdown().await;
    // The benchmark's database goes with it.
    let admin = sqlx::PgPool::connect(&base_url).await?;
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&admin)
        .await?;
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    print_report(&k, &measured?, &report?, &metrics?);
    Ok(())
}

/// What the engine process measured of a run.
struct Measured {
    completed: usize,
    peak_sessions: usize,
    wall: Duration,
    cpu: u64,
    fakes_cpu: u64,
    steady_cpu: Option<(Duration, u64)>,
    baseline_rss: u64,
    peak_rss: u64,
    engine_us: Vec<u64>,
    formula_us: Vec<u64>,
    total_us: Vec<u64>,
    journaled: Vec<Journaled>,
    /// `POST /v1/calls` round trips, µs, sorted.
    create_us: Vec<u64>,
}

/// Creates the variants' agents, places the calls, samples CPU and memory while they
/// converse, and reads their journals once all have ended.
async fn measure(
    k: &Knobs,
    running: &iace::app::Running,
    child_pid: &str,
    database_url: &str,
) -> anyhow::Result<Measured> {
    let public = format!("http://{}", running.addr);
    let (_, key) = iace::app::create_org(database_url, "Voice bench").await?;
    let http = reqwest::Client::new();
    let mut agents = Vec::new();
    for variant in &k.variants {
        let agent: serde_json::Value = http
            .post(format!("{public}/v1/agents"))
            .bearer_auth(&key)
            .json(&serde_json::json!({
                "name": format!("Bench agent {}", variant.name),
                "persona_config": variant.persona_config(),
                "voice_config": variant.voice_config(),
            }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        agents.push(agent["id"].as_str().unwrap_or_default().to_owned());
    }

    let baseline_rss = rss_kib();
    let started = Instant::now();
    let cpu_start = cpu_ticks("self");
    let fakes_cpu_start = cpu_ticks(child_pid);
    let mut ids = Vec::new();
    let mut create_us = Vec::with_capacity(k.calls);
    for n in 0..k.calls {
        let asked = Instant::now();
        let call: serde_json::Value = http
            .post(format!("{public}/v1/calls"))
            .bearer_auth(&key)
            .json(&serde_json::json!({
                "to": number(n),
                "from": "+14155550199",
                "agent_id": agents[k.variant_of(n)],
            }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        create_us.push(asked.elapsed().as_micros() as u64);
        ids.push(call["id"].as_str().unwrap_or_default().to_owned());
        // Spread the arrivals over a second or two, as a dialer would.
        tokio::time::sleep(Duration::from_millis(8)).await;
    }
    // Sample memory while the calls converse,
    // and measure CPU over the stretch where all of them are conversing at once.
    let mut peak_rss = 0;
    let mut peak_sessions = 0;
    let mut steady: Option<(Instant, u64)> = None;
    let mut steady_cpu: Option<(Duration, u64)> = None;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        peak_rss = peak_rss.max(rss_kib());
        let sessions = running.engine.voice_sessions();
        peak_sessions = peak_sessions.max(sessions);
        match steady {
            None if sessions >= k.calls => steady = Some((Instant::now(), cpu_ticks("self"))),
            Some((since, ticks)) if sessions < k.calls && steady_cpu.is_none() => {
                steady_cpu = Some((since.elapsed(), cpu_ticks("self") - ticks));
            }
            _ => {}
        }
        let live = running.engine.live_call_actors().await.unwrap_or(0);
        if live == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let wall = started.elapsed();
    let cpu = cpu_ticks("self") - cpu_start;
    let fakes_cpu = cpu_ticks(child_pid) - fakes_cpu_start;
    let mut m = Measured {
        completed: 0,
        peak_sessions,
        wall,
        cpu,
        fakes_cpu,
        steady_cpu,
        baseline_rss,
        peak_rss,
        engine_us: Vec::new(),
        formula_us: Vec::new(),
        total_us: Vec::new(),
        journaled: (0..k.variants.len())
            .map(|_| Journaled::default())
            .collect(),
        create_us: {
            create_us.sort_unstable();
            create_us
        },
    };
    for (n, id) in ids.iter().enumerate() {
        let t: serde_json::Value = http
            .get(format!("{public}/v1/calls/{id}/transcript"))
            .bearer_auth(&key)
            .send()
            .await?
            .json()
            .await?;
        if t["status"] == "completed" {
            m.completed += 1;
        }
        let journaled = &mut m.journaled[k.variant_of(n)];
        for l in t["latency"].as_array().into_iter().flatten() {
            let field = |name: &str| l[name].as_u64().unwrap_or(0);
            m.engine_us.push(field("engine_us"));
            m.total_us.push(field("total_us"));
            journaled.total_us.push(field("total_us"));
            journaled.saved_us.push(field("saved_us"));
            // The whole turn minus what the fakes were configured to take (time to first
            // token, the token intervals up to the first speakable piece, time to first
            // audio) and the hold-off, plus what of those waits ran inside the hold-off
            // (a speculative reply's `saved_us`). What is left is the engine plus both real
            // clients and the sockets.
            let token_us = k.llm_token_ms * 1000;
            let intervals = (field("llm_stream_us") + token_us / 2)
                .checked_div(token_us)
                .unwrap_or(0);
            let configured = field("holdoff_us")
                + k.llm_ttft_ms * 1000
                + intervals * token_us
                + k.tts_first_ms * 1000;
            m.formula_us
                .push((field("total_us") + field("saved_us")).saturating_sub(configured));
        }
    }
    m.engine_us.sort_unstable();
    m.formula_us.sort_unstable();
    m.total_us.sort_unstable();
    for j in &mut m.journaled {
        j.total_us.sort_unstable();
        j.saved_us.sort_unstable();
    }
    Ok(m)
}

/// Prints the run's figures.
fn print_report(k: &Knobs, m: &Measured, fakes: &FakesReport, metrics: &str) {
    let Knobs {
        calls,
        turns,
        llm_ttft_ms,
        llm_token_ms,
        tts_first_ms,
        ..
    } = *k;
    println!(
        "calls {calls} x {turns} turns ({}), variants {}: {} completed, peak {} concurrent conversations, wall {:.1} s{}",
        if k.pause_every == 0 {
            "no pauses".to_owned()
        } else {
            format!(
                "a pause every {} turns, {} of {} heard by the recogniser as two utterances",
                k.pause_every,
                fakes.pauses_split,
                k.plan().pauses() * calls
            )
        },
        k.variants.len(),
        m.completed,
        m.peak_sessions,
        m.wall.as_secs_f64(),
        if fakes.calls_without_media > 0 {
            format!(", {} calls never streamed media", fakes.calls_without_media)
        } else {
            String::new()
        }
    );
    println!(
        "vendor floor: endpointing {ENDPOINTING_MS} + max(hold-off {HOLDOFF_MS}, model first token {llm_ttft_ms} + synthesis first audio {tts_first_ms}) = {} ms",
        k.floor_ms()
    );
    for v in 0..k.variants.len() {
        let (Some(heard), Some(model)) = (fakes.heard.get(v), fakes.model.get(v)) else {
            continue;
        };
        print_variant(k, v, heard, model, &m.journaled[v]);
    }
    let counter = |name: &str, outcome: Option<&str>| {
        voice::metric(metrics, name, outcome.map(|o| ("outcome", o)))
    };
    println!(
        "engine speculation counters (/metrics): replies started {}, used {}, discarded {}; tokens discarded {}",
        counter("iace_speculative_replies_total", Some("started")),
        counter("iace_speculative_replies_total", Some("used")),
        counter("iace_speculative_replies_total", Some("discarded")),
        counter("iace_speculative_tokens_discarded_total", None)
    );
    let mean = |name: &str| {
        let count = voice::metric(metrics, &format!("{name}_count"), None);
        voice::metric(metrics, &format!("{name}_sum"), None) / count.max(1.0)
    };
    println!(
        "database writes (journal writers {}): call create p50 {:.2} ms, p99 {:.2} ms; webhook ack p50 {:.2} ms, p99 {:.2} ms ({} acknowledged, {} failed); mean batch: journal {:.1}, inbox {:.1}",
        k.journal_writers,
        ms(&m.create_us, 50.0),
        ms(&m.create_us, 99.0),
        ms(&fakes.webhook_ack_us, 50.0),
        ms(&fakes.webhook_ack_us, 99.0),
        fakes.webhook_ack_us.len(),
        fakes.webhook_failed,
        mean("iace_journal_batch_size"),
        mean("iace_inbox_batch_size"),
    );
    let waited = |kind: &str, q: f64| {
        voice::histogram_quantile(metrics, "iace_db_acquire_seconds", ("kind", kind), q) * 1000.0
    };
    println!(
        "pool wait (bucket upper bounds; pool of {} connections): transactions mean {:.2} ms, p50 <= {} ms, p99 <= {} ms; probe once a second p99 <= {} ms",
        voice::metric(metrics, "iace_db_pool_max_connections", None),
        voice::metric(metrics, "iace_db_acquire_seconds_sum", Some(("kind", "transaction")))
            / voice::metric(metrics, "iace_db_acquire_seconds_count", Some(("kind", "transaction")))
                .max(1.0)
            * 1000.0,
        waited("transaction", 0.5),
        waited("transaction", 0.99),
        waited("probe", 0.99),
    );
    let looked = |kind: &str, result: &str| {
        let text = metrics;
        text.lines()
            .filter(|l| l.starts_with("iace_lookups_total{"))
            .filter(|l| l.contains(&format!("kind=\"{kind}\"")))
            .filter(|l| l.contains(&format!("result=\"{result}\"")))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum::<f64>()
    };
    println!(
        "agent lookups at call starts: {} reused, {} read from the store",
        looked("agent", "hit"),
        looked("agent", "miss")
    );
    println!(
        "turns measured {}: engine-added p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        m.engine_us.len(),
        ms(&m.engine_us, 50.0),
        ms(&m.engine_us, 99.0),
        m.engine_us.last().copied().unwrap_or(0) as f64 / 1000.0
    );
    println!(
        "  with sockets and clients (whole turn - hold-off - configured model and synthesis latency): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(&m.formula_us, 50.0),
        ms(&m.formula_us, 99.0),
        m.formula_us.last().copied().unwrap_or(0) as f64 / 1000.0
    );
    println!(
        "  of which the fake model's own lateness (first token - request received - {llm_ttft_ms} ms, in the fake, {} replies): p50 {:.2} ms, p99 {:.2} ms",
        fakes.model_late_us.len(),
        ms(&fakes.model_late_us, 50.0),
        ms(&fakes.model_late_us, 99.0)
    );
    println!(
        "whole turn (final transcript -> first frame, incl. hold-off {HOLDOFF_MS}+ ms, model {llm_ttft_ms} ms + {llm_token_ms} ms/token, synthesis {tts_first_ms} ms): p50 {:.1} ms, p99 {:.1} ms",
        ms(&m.total_us, 50.0),
        ms(&m.total_us, 99.0)
    );
    // Clock ticks are 1/100 s on Linux.
    let cpu_s = m.cpu as f64 / 100.0;
    let wall = m.wall.as_secs_f64();
    println!(
        "engine CPU: {cpu_s:.1} s over {wall:.1} s = {:.2}% of one core per conversing call (the fakes' process: {:.1} s)",
        cpu_s / wall * 100.0 / calls as f64,
        m.fakes_cpu as f64 / 100.0
    );
    if let Some((span, ticks)) = m.steady_cpu {
        let secs = ticks as f64 / 100.0;
        println!(
            "  while all {calls} converse: {secs:.1} s over {:.1} s = {:.2}% of one core per conversing call",
            span.as_secs_f64(),
            secs / span.as_secs_f64() * 100.0 / calls as f64
        );
    }
    println!(
        "engine resident memory: {:.1} MB before, {:.1} MB peak -> {:.2} MB per conversing call",
        m.baseline_rss as f64 / 1024.0,
        m.peak_rss as f64 / 1024.0,
        (m.peak_rss.saturating_sub(m.baseline_rss)) as f64 / 1024.0 / m.peak_sessions.max(1) as f64
    );
}
