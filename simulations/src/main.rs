//! `iace-sim`: runs deterministic call-flow simulations of the engine.
//!
//! ```text
//! cargo run -p iace-sim --release -- --seed 42 --calls 2000 --faults chaos
//! cargo run -p iace-sim --release -- --sweep 1..200 --calls 300 --faults chaos
//! cargo run -p iace-sim --release -- --seed 42 --calls 50 --trace     # print every step
//! cargo run -p iace-sim --release -- --sweep 1..1001 --calls 100 --faults partition  # a cluster
//! ```
//! Exit code: 0 all invariants held, 1 a violation (with the command that replays it), 2 bad
//! arguments.

use std::process::ExitCode;
use std::time::Instant;

use iace_sim::{run, Profile, SimConfig};

const USAGE: &str = "usage: iace-sim [--seed N | --sweep FROM..TO] [--calls N] [--faults none|network|store|crash|chaos|outage|membership|partition|skew|cluster] [--gap-ms N] [--trace]";

struct Args {
    seeds: std::ops::Range<u64>,
    sweep: bool,
    calls: usize,
    faults: Profile,
    gap_ms: u64,
    trace: bool,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        seeds: 1..2,
        sweep: false,
        calls: 500,
        faults: Profile::Chaos,
        gap_ms: 2_000,
        trace: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--trace" {
            a.trace = true;
            continue;
        }
        if flag == "--help" || flag == "-h" {
            return Err(String::new());
        }
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let num = |v: &str| v.parse::<u64>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--seed" => {
                let s = num(&value)?;
                a.seeds = s..s.saturating_add(1);
            }
            "--sweep" => {
                let (from, to) = value
                    .split_once("..")
                    .ok_or(format!("--sweep wants FROM..TO, got {value}"))?;
                a.seeds = num(from)?..num(to)?;
                a.sweep = true;
                if a.seeds.is_empty() {
                    return Err(format!("--sweep {value} is empty"));
                }
            }
            "--calls" => {
                a.calls = usize::try_from(num(&value)?).map_err(|e| e.to_string())?;
                if a.calls == 0 {
                    return Err("--calls must be at least 1".into());
                }
            }
            "--faults" => {
                a.faults = Profile::parse(&value).ok_or(format!(
                    "--faults {value}: unknown profile (none, network, store, crash, chaos, outage, membership, partition, skew, cluster)"
                ))?
            }
            "--gap-ms" => a.gap_ms = num(&value)?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("error: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let (mut passed, mut failed) = (0u64, Vec::new());
    let (mut calls, mut sim_ms) = (0usize, 0u64);
    // Faults injected and what the nodes did, summed over the sweep.
    let mut totals = std::collections::BTreeMap::<String, u64>::new();
    for seed in args.seeds.clone() {
        let cfg = SimConfig {
            mean_gap_ms: args.gap_ms,
            keep_trace: args.trace,
            ..SimConfig::new(seed, args.calls, args.faults)
        };
        match run(&cfg) {
            Ok(report) => {
                passed += 1;
                calls += report.calls_planned;
                sim_ms += report.simulated_ms;
                for (k, v) in report.faults.iter().chain(report.cluster.iter()) {
                    let key = if k.starts_with("commands by ") {
                        "carrier commands checked against the leases".to_owned()
                    } else {
                        k.clone()
                    };
                    *totals.entry(key).or_default() += v;
                }
                if args.trace {
                    for line in &report.trace {
                        println!("{line}");
                    }
                }
                if args.sweep {
                    println!(
                        "seed {seed}: ok, {} calls, {:.2} simulated h, trace {:016x}",
                        report.calls_planned,
                        report.simulated_ms as f64 / 3.6e6,
                        report.trace_hash
                    );
                } else {
                    print!("{report}");
                }
            }
            Err(failure) => {
                if args.trace {
                    for line in &failure.report.trace {
                        println!("{line}");
                    }
                }
                eprint!("{failure}");
                failed.push(seed);
            }
        }
    }
    if args.sweep {
        let wall = started.elapsed().as_secs_f64().max(1e-9);
        println!(
            "sweep {}..{} ({} faults): {passed} seeds passed, {} failed {:?}; {calls} calls, {:.1} simulated h in {wall:.1} s ({:.0} calls/s, {:.1} simulated h/s)",
            args.seeds.start,
            args.seeds.end,
            args.faults,
            failed.len(),
            failed,
            sim_ms as f64 / 3.6e6,
            calls as f64 / wall,
            sim_ms as f64 / 3.6e6 / wall
        );
        if !totals.is_empty() {
            println!("  over the seeds that passed:");
            for (k, v) in &totals {
                println!("    {v:>9}  {k}");
            }
        }
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
