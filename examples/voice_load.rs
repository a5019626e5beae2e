//! Benchmark: the voice pipeline under load — `--calls` concurrent conversing calls, each with
//! `--turns` caller turns, through the real Telnyx, Deepgram, Cartesia and Groq clients against
//! their wire-level fakes, real Postgres and Redis, all in this one process.
//!
//! Reports, from the journaled per-turn latency records: the engine-added latency per turn
//! (first audio frame handed to the media stream - final transcript, minus the hold-off, the
//! model's time to first token and token streaming up to the first speakable piece, and the
//! synthesis time to first audio: what the engine itself spends, including mailbox queueing),
//! and the whole turn; plus process CPU and resident memory per conversing call. CPU and
//! memory include the fakes (they run in this process: four vendors pacing audio both ways for
//! every call), so they are upper bounds of the engine's own share.
//!
//! ```text
//! scripts/services up && eval "$(scripts/services env)"
//! cargo run --release --example voice_load -- --calls 200 --turns 3
//! ```

use std::time::{Duration, Instant};

use iace::config::{DbArgs, ServeArgs, TelephonyKind, TelnyxArgs, VoiceArgs};
use iace_sim::cartesia::{FakeCartesia, FakeCartesiaConfig};
use iace_sim::deepgram::{FakeDeepgram, FakeDeepgramConfig};
use iace_sim::groq::{FakeGroq, FakeGroqConfig};
use iace_sim::telnyx::{CallerScript, FakeTelnyx, FakeTelnyxConfig, Scenario};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| v.parse().expect("a number"))
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// User + system CPU of this process, in clock ticks (Linux `/proc/self/stat`).
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let calls = arg("--calls", 200);
    let turns = arg("--turns", 3).max(1);
    let llm_ttft_ms = arg("--llm-ttft-ms", 150) as u64;
    let tts_first_ms = arg("--tts-first-ms", 80) as u64;
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

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let public = format!("http://127.0.0.1:{port}");
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
    let deepgram = FakeDeepgram::start(FakeDeepgramConfig::default()).await?;
    let lines: Vec<String> = (1..=turns)
        .map(|t| format!("This is caller line number {t}, please answer it."))
        .collect();
    deepgram.set_script(lines);
    let cartesia = FakeCartesia::start(FakeCartesiaConfig {
        first_chunk_delay: Duration::from_millis(tts_first_ms),
        ..FakeCartesiaConfig::default()
    })
    .await?;
    let groq = FakeGroq::start(FakeGroqConfig {
        ttft: Duration::from_millis(llm_ttft_ms),
        inter_token: Duration::from_millis(10),
        ..FakeGroqConfig::default()
    })
    .await?;
    let running = iace::app::start(ServeArgs {
        db: DbArgs {
            database_url: database_url.clone(),
        },
        redis_url,
        bind: format!("127.0.0.1:{port}").parse()?,
        telephony: TelephonyKind::Telnyx,
        telnyx: TelnyxArgs {
            telnyx_api_key: Some("bench-key".into()),
            telnyx_connection_id: Some("bench-connection".into()),
            telnyx_public_key: Some(telnyx.public_key_base64()),
            telnyx_api_base: telnyx.api_base(),
            telnyx_amd: "disabled".into(),
            telnyx_webhook_tolerance_secs: 300,
            public_url: Some(public.clone()),
            media_secret: Some("bench".into()),
            media_greeting: false,
            media_echo: false,
        },
        breakers: Default::default(),
        voice: VoiceArgs {
            enabled: true,
            deepgram_api_key: Some(deepgram.api_key().to_owned()),
            deepgram_url: deepgram.url(),
            cartesia_api_key: Some(cartesia.api_key().to_owned()),
            cartesia_url: format!("ws://{}", cartesia.addr()),
            groq_api_key: Some(groq.api_key().to_owned()),
            groq_api_base: groq.base_url(),
            groq_model: "llama-3.3-70b-versatile".into(),
            groq_classify_model: "llama-3.1-8b-instant".into(),
        },
        admin_token: None,
        sim_ring_ms: 0,
        sim_talk_ms: 0,
        sim_key_prefix: "unused:".into(),
        node_id: Some("bench".into()),
        ring_timeout_secs: 30,
        max_call_secs: 3600,
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

    let wait = Duration::from_secs(60);
    let quiet = Duration::from_millis(400);
    let mut script = CallerScript::new()
        .wait_for_agent_audio(wait)
        .wait_for_agent_silence(quiet, wait);
    for _ in 0..turns {
        script = script
            .say(Duration::from_millis(1500))
            .wait_for_agent_audio(wait)
            .wait_for_agent_silence(quiet, wait);
    }
    let script = script.hangup();
    let baseline_rss = rss_kib();
    let started = Instant::now();
    let cpu_start = cpu_ticks();
    let mut ids = Vec::new();
    for n in 0..calls {
        let to = format!("+1415{:07}", n);
        telnyx.set_caller_script(&to, script.clone());
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
    // Sample memory while every call converses.
    let mut peak_rss = 0;
    let mut peak_sessions = 0;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        peak_rss = peak_rss.max(rss_kib());
        peak_sessions = peak_sessions.max(running.engine.voice_sessions());
        let live = running.engine.live_call_actors().await.unwrap_or(0);
        if live == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let wall = started.elapsed();
    let cpu = cpu_ticks() - cpu_start;
    let mut engine_us = Vec::new();
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
            engine_us.push(l["engine_us"].as_u64().unwrap_or(0));
            total_us.push(l["total_us"].as_u64().unwrap_or(0));
        }
    }
    engine_us.sort_unstable();
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
        "whole turn (final transcript -> first frame, incl. hold-off {}+ ms, model {llm_ttft_ms} ms, synthesis {tts_first_ms} ms): p50 {:.1} ms, p99 {:.1} ms",
        250,
        percentile(&total_us, 50.0) as f64 / 1000.0,
        percentile(&total_us, 99.0) as f64 / 1000.0
    );
    println!(
        "process CPU (engine + 4 fakes): {cpu_s:.1} s over {:.1} s = {:.2}% of one core per conversing call",
        wall.as_secs_f64(),
        core_pct_per_call
    );
    println!(
        "resident memory: {:.1} MB before, {:.1} MB peak -> {:.2} MB per conversing call (engine + fakes)",
        baseline_rss as f64 / 1024.0,
        peak_rss as f64 / 1024.0,
        (peak_rss.saturating_sub(baseline_rss)) as f64 / 1024.0 / peak_sessions.max(1) as f64
    );
    running.shutdown().await;
    telnyx.shutdown().await;
    deepgram.shutdown().await;
    cartesia.shutdown().await;
    groq.shutdown().await;
    Ok(())
}
