//! Benchmark: the voice pipeline under load — `--calls` concurrent conversing calls, each with
//! `--turns` caller turns, through the real Telnyx, Deepgram, Cartesia and Groq clients against
//! their wire-level fakes, real Postgres and Redis.
//!
//! The engine runs in this process; the four fakes run in a child process (this same binary
//! with `--fakes`), as the vendors would run elsewhere, so the CPU and memory read from
//! `/proc/self` are the engine's own. Both share this machine's cores.
//!
//! Reports, from the journaled per-turn latency records:
//! * engine-added latency per turn as the engine's clocks see it: first audio frame handed to
//!   the media stream - final transcript, minus the hold-off and the waits the engine measured
//!   on the model (to first token, then tokens up to the first speakable piece) and on
//!   synthesis (to first audio). Mailbox queueing and all the engine's work are in it.
//! * the same with the sockets and clients: the whole turn minus the hold-off and what the
//!   fakes were configured to take. Also in it: the fakes' own scheduling (their timers fire
//!   on a millisecond tick, on the same two cores).
//! * process CPU and resident memory per conversing call, and the fakes' CPU beside it.
//!
//! ```text
//! scripts/services up && eval "$(scripts/services env)"
//! cargo run --release --example voice_load -- --calls 200 --turns 3
//! ```

use std::time::{Duration, Instant};

use iace::config::{ServeArgs, TelephonyKind, TelnyxArgs, VoiceArgs};
use iace_dev::FakeVoices;
use iace_fakes::cartesia::FakeCartesiaConfig;
use iace_fakes::deepgram::FakeDeepgramConfig;
use iace_fakes::groq::FakeGroqConfig;
use iace_fakes::telnyx::{CallerScript, FakeTelnyx, FakeTelnyxConfig, Scenario};

mod common;
use common::{arg, percentile};

/// User + system CPU of a process (`self` or a pid), in clock ticks (Linux `/proc/*/stat`).
fn cpu_ticks(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // After the command name: state is field 0, utime 11, stime 12.
    field(11) + field(12)
}

/// Resident memory, KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Where the child's fakes listen and how to talk to them: one JSON line on its stdout.
#[derive(serde::Serialize, serde::Deserialize)]
struct Fakes {
    telnyx_api_base: String,
    telnyx_public_key: String,
    voice: VoiceArgs,
}

/// The benchmark's knobs, shared by both processes.
#[derive(Clone, Copy)]
struct Knobs {
    calls: usize,
    turns: usize,
    llm_ttft_ms: u64,
    llm_token_ms: u64,
    tts_first_ms: u64,
    port: u16,
}

impl Knobs {
    fn from_args() -> Self {
        Self {
            calls: arg("--calls", 200),
            turns: arg("--turns", 3).max(1),
            llm_ttft_ms: arg("--llm-ttft-ms", 150) as u64,
            llm_token_ms: arg("--llm-token-ms", 10) as u64,
            tts_first_ms: arg("--tts-first-ms", 80) as u64,
            port: u16::try_from(arg("--port", 0)).expect("a port"),
        }
    }

    fn args(&self) -> Vec<String> {
        [
            ("--calls", self.calls as u64),
            ("--turns", self.turns as u64),
            ("--llm-ttft-ms", self.llm_ttft_ms),
            ("--llm-token-ms", self.llm_token_ms),
            ("--tts-first-ms", self.tts_first_ms),
            ("--port", u64::from(self.port)),
        ]
        .into_iter()
        .flat_map(|(k, v)| [k.to_owned(), v.to_string()])
        .collect()
    }

    /// The caller of every call: waits for the greeting, then says a line and waits for the
    /// answer `turns` times, then hangs up.
    fn script(&self) -> CallerScript {
        let wait = Duration::from_secs(60);
        let quiet = Duration::from_millis(400);
        let mut script = CallerScript::new()
            .wait_for_agent_audio(wait)
            .wait_for_agent_silence(quiet, wait);
        for _ in 0..self.turns {
            script = script
                .say(Duration::from_millis(1500))
                .wait_for_agent_audio(wait)
                .wait_for_agent_silence(quiet, wait);
        }
        script.hangup()
    }
}

fn number(n: usize) -> String {
    format!("+1415{n:07}")
}

/// The child: runs the four fakes, prints where they are, and serves until stdin closes (the
/// parent finished or died).
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
    let script = k.script();
    for n in 0..k.calls {
        telnyx.set_caller_script(&number(n), script.clone());
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
    voices.deepgram.set_script(
        (1..=k.turns)
            .map(|t| format!("This is caller line number {t}, please answer it."))
            .collect::<Vec<_>>(),
    );
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
    // How late the fake model itself was: its first token against the configured time to
    // first token, measured inside the fake (timer ticks and scheduling on the shared cores).
    // This is part of the "with sockets and clients" figure but is not the engine's.
    let ttft = Duration::from_millis(k.llm_ttft_ms);
    let mut late_us: Vec<u64> = voices
        .groq
        .requests()
        .iter()
        .filter(|r| r.stream)
        .filter_map(|r| {
            let took = r.first_token_at?.checked_duration_since(r.received_at)?;
            Some(took.saturating_sub(ttft).as_micros() as u64)
        })
        .collect();
    late_us.sort_unstable();
    eprintln!(
        "  of which the fake model's own lateness (first token - request received - {} ms, in the fake, {} replies): p50 {:.2} ms, p99 {:.2} ms",
        k.llm_ttft_ms,
        late_us.len(),
        percentile(&late_us, 50.0) as f64 / 1000.0,
        percentile(&late_us, 99.0) as f64 / 1000.0
    );
    telnyx.shutdown().await;
    voices.shutdown().await;
    Ok(())
}

/// Starts the child and reads where its fakes listen.
async fn spawn_fakes(k: Knobs) -> anyhow::Result<(tokio::process::Child, Fakes)> {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .arg("--fakes")
        .args(k.args())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let mut line = String::new();
    tokio::io::BufReader::new(stdout)
        .read_line(&mut line)
        .await?;
    let fakes = serde_json::from_str(&line)
        .map_err(|e| anyhow::anyhow!("the fakes did not start ({e}): {line:?}"))?;
    Ok((child, fakes))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    let mut k = Knobs::from_args();
    if std::env::args().any(|a| a == "--fakes") {
        return run_fakes(k).await;
    }
    let Knobs {
        calls,
        turns,
        llm_ttft_ms,
        llm_token_ms,
        tts_first_ms,
        ..
    } = k;
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
    let (mut child, fakes) = spawn_fakes(k).await?;
    let child_pid = child.id().map(|p| p.to_string()).unwrap_or_default();
    let running = iace::app::start(ServeArgs {
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
        ..ServeArgs::local(
            &database_url,
            &redis_url,
            format!("127.0.0.1:{port}").parse()?,
        )
    })
    .await?;
    let (_, key) = iace::app::create_org(&database_url, "Voice bench").await?;
    let http = reqwest::Client::new();
    let agent: serde_json::Value = http
        .post(format!("{public}/v1/agents"))
        .bearer_auth(&key)
        .json(&serde_json::json!({
            "name": "Bench agent",
            "persona_config": {"greeting": "Hello, thanks for calling."}
        }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let agent_id = agent["id"].as_str().unwrap_or_default().to_owned();

    let baseline_rss = rss_kib();
    let started = Instant::now();
    let cpu_start = cpu_ticks("self");
    let fakes_cpu_start = cpu_ticks(&child_pid);
    let mut ids = Vec::new();
    for n in 0..calls {
        let to = number(n);
        let call: serde_json::Value = http
            .post(format!("{public}/v1/calls"))
            .bearer_auth(&key)
            .json(&serde_json::json!({"to": to, "from": "+14155550199", "agent_id": agent_id}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
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
            None if sessions >= calls => steady = Some((Instant::now(), cpu_ticks("self"))),
            Some((since, ticks)) if sessions < calls && steady_cpu.is_none() => {
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
    let fakes_cpu = cpu_ticks(&child_pid) - fakes_cpu_start;
    let mut engine_us = Vec::new();
    let mut formula_us = Vec::new();
    let mut total_us = Vec::new();
    let mut completed = 0;
    for id in &ids {
        let t: serde_json::Value = http
            .get(format!("{public}/v1/calls/{id}/transcript"))
            .bearer_auth(&key)
            .send()
            .await?
            .json()
            .await?;
        if t["status"] == "completed" {
            completed += 1;
        }
        for l in t["latency"].as_array().into_iter().flatten() {
            let field = |k: &str| l[k].as_u64().unwrap_or(0);
            engine_us.push(field("engine_us"));
            total_us.push(field("total_us"));
            // The issue's formula: the whole turn minus what the fakes were configured to
            // take (time to first token, the token intervals up to the first speakable
            // piece, time to first audio) and the configured hold-off. What is left is the
            // engine plus both real clients and the sockets.
            let token_us = llm_token_ms * 1000;
            let intervals = (field("llm_stream_us") + token_us / 2)
                .checked_div(token_us)
                .unwrap_or(0);
            let configured = field("holdoff_us")
                + llm_ttft_ms * 1000
                + intervals * token_us
                + tts_first_ms * 1000;
            formula_us.push(field("total_us").saturating_sub(configured));
        }
    }
    engine_us.sort_unstable();
    formula_us.sort_unstable();
    total_us.sort_unstable();
    // Clock ticks are 1/100 s on Linux.
    let cpu_s = cpu as f64 / 100.0;
    let core_pct_per_call = cpu_s / wall.as_secs_f64() * 100.0 / calls as f64;
    println!(
        "calls {calls} x {turns} turns: {completed} completed, peak {peak_sessions} concurrent conversations, wall {:.1} s",
        wall.as_secs_f64()
    );
    println!(
        "turns measured {}: engine-added p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        engine_us.len(),
        percentile(&engine_us, 50.0) as f64 / 1000.0,
        percentile(&engine_us, 99.0) as f64 / 1000.0,
        engine_us.last().copied().unwrap_or(0) as f64 / 1000.0
    );
    println!(
        "  with sockets and clients (whole turn - hold-off - configured model and synthesis latency): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&formula_us, 50.0) as f64 / 1000.0,
        percentile(&formula_us, 99.0) as f64 / 1000.0,
        formula_us.last().copied().unwrap_or(0) as f64 / 1000.0
    );
    println!(
        "whole turn (final transcript -> first frame, incl. hold-off {}+ ms, model {llm_ttft_ms} ms + {llm_token_ms} ms/token, synthesis {tts_first_ms} ms): p50 {:.1} ms, p99 {:.1} ms",
        250,
        percentile(&total_us, 50.0) as f64 / 1000.0,
        percentile(&total_us, 99.0) as f64 / 1000.0
    );
    println!(
        "engine CPU: {cpu_s:.1} s over {:.1} s = {:.2}% of one core per conversing call (the fakes' process: {:.1} s)",
        wall.as_secs_f64(),
        core_pct_per_call,
        fakes_cpu as f64 / 100.0
    );
    if let Some((span, ticks)) = steady_cpu {
        let secs = ticks as f64 / 100.0;
        println!(
            "  while all {calls} converse: {secs:.1} s over {:.1} s = {:.2}% of one core per conversing call",
            span.as_secs_f64(),
            secs / span.as_secs_f64() * 100.0 / calls as f64
        );
    }
    println!(
        "engine resident memory: {:.1} MB before, {:.1} MB peak -> {:.2} MB per conversing call",
        baseline_rss as f64 / 1024.0,
        peak_rss as f64 / 1024.0,
        (peak_rss.saturating_sub(baseline_rss)) as f64 / 1024.0 / peak_sessions.max(1) as f64
    );
    running.shutdown().await;
    // The benchmark's database goes with it.
    let admin = sqlx::PgPool::connect(&base_url).await?;
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&admin)
        .await?;
    // Closing its stdin stops the child.
    drop(child.stdin.take());
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    Ok(())
}
