//! kv-loadgen: a compiled closed- and open-loop load generator for our store (binary protocol,
//! token-aware) and for Redis (RESP2), cheap enough in CPU that it is not what a benchmark
//! measures. It prints its own CPU per request beside every figure.
//!
//! Modules, one idea each: `cli` (options and the exact configuration), `workload` (ops, keys,
//! values), `protocol` and `resp` (the two codecs), `ring` (key placement), `connect` (setup before
//! the load), `driver` (the event loop), `report` (stats, CPU, JSON and text).

mod cli;
mod connect;
mod driver;
mod protocol;
mod report;
mod resp;
mod ring;
mod workload;

use std::io::Write;
use std::process::ExitCode;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use serde_json::{json, Value};

use cli::{Args, Target};
use driver::{Shared, Work};
use report::{process_cpu, Run, Stats};

/// Time between the last connection made and the first request, for the threads to start.
const START_DELAY: Duration = Duration::from_millis(20);

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("kv-loadgen: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// The sockets of every lane, and the nodes they reach (for the report).
struct Connected {
    lanes: Vec<Vec<std::net::TcpStream>>,
    ring: Option<ring::Ring>,
    nodes: Vec<Value>,
}

fn connect_all(args: &Args, timeout: Duration) -> Result<Connected> {
    let addresses = connect::split_addresses(&args.nodes)?;
    let mut lanes = Vec::with_capacity(args.connections as usize);
    match args.target {
        Target::Redis => {
            ensure!(addresses.len() == 1, "--target redis takes one address, not {}", addresses.len());
            let (host, port) = connect::parse_address(&addresses[0], 6379)?;
            let address = connect::join_address(&host, port);
            for _ in 0..args.connections {
                lanes.push(vec![connect::connect(Target::Redis, &address, timeout, None)?]);
            }
            Ok(Connected { lanes, ring: None, nodes: vec![json!({"address": address})] })
        }
        Target::Kv => {
            let seeds: Vec<String> = addresses
                .iter()
                .map(|a| connect::parse_address(a, 5000).map(|(h, p)| connect::join_address(&h, p)))
                .collect::<Result<_>>()?;
            let cluster = connect::discover(&seeds, timeout)?;
            let limits = &cluster.limits;
            if args.value_size > limits.max_value_bytes {
                bail!("--value-size {} exceeds the nodes' limit of {} bytes", args.value_size, limits.max_value_bytes);
            }
            for _ in 0..args.connections {
                let mut sockets = Vec::with_capacity(cluster.addresses.len());
                for (id, address) in cluster.ring.node_ids.iter().zip(&cluster.addresses) {
                    sockets.push(connect::connect(Target::Kv, address, timeout, Some(id))?);
                }
                lanes.push(sockets);
            }
            let topology = &cluster.topology;
            let nodes = cluster
                .ring
                .node_ids
                .iter()
                .zip(&cluster.addresses)
                .map(|(id, address)| {
                    json!({
                        "id": id, "address": address,
                        "n": topology.replicas, "r": topology.read_quorum, "w": topology.write_quorum,
                        "partitions": topology.partitions,
                    })
                })
                .collect();
            Ok(Connected { lanes, ring: Some(cluster.ring), nodes })
        }
    }
}

fn run(args: &Args) -> Result<ExitCode> {
    args.validate()?;
    let timeout = Duration::from_secs_f64(args.timeout);
    let chooser = args.key_chooser()?;
    let connected = connect_all(args, timeout)?;

    let threads = args.threads as usize;
    let mut works: Vec<Work> = (0..threads).map(|thread| Work { thread, threads, lanes: Vec::new() }).collect();
    for (lane, sockets) in connected.lanes.into_iter().enumerate() {
        works[lane % threads].lanes.push((lane, sockets));
    }
    let start = Instant::now() + START_DELAY;
    let measure_start = start + Duration::from_secs_f64(args.warmup);
    let measure_end = measure_start + Duration::from_secs_f64(args.duration);
    let shared = Arc::new(Shared {
        target: args.target,
        ring: connected.ring,
        mix: args.mix,
        chooser,
        value: workload::make_value(args.value_size as usize),
        pipeline: args.pipeline,
        r: args.r.unwrap_or(0),
        w: args.w.unwrap_or(0),
        seed: args.seed,
        start,
        measure_start,
        measure_end,
        timeout,
        queue_limit: args.queue_limit as usize,
        batch: Duration::from_micros(args.batch_us.into()),
        rate: args.rate,
        total_lanes: args.connections as usize,
    });

    let (results, received) = mpsc::channel();
    for work in works {
        let shared = Arc::clone(&shared);
        let results = results.clone();
        std::thread::Builder::new()
            .name(format!("loadgen-{}", work.thread))
            .spawn(move || {
                let _ = results.send(driver::run(&shared, work));
            })
            .context("cannot start a load thread")?;
    }
    drop(results);

    sleep_until(measure_start);
    let cpu_before = process_cpu();
    let window_start = Instant::now();
    sleep_until(measure_end);
    let cpu_after = process_cpu();
    let measured = window_start.elapsed().as_secs_f64();

    // A hard stop: threads end at measure_end by themselves; one that has not by now is stuck.
    let deadline = measure_end + timeout;
    let mut stats = Stats::new();
    for _ in 0..threads {
        let wait = deadline.saturating_duration_since(Instant::now());
        match received.recv_timeout(wait) {
            Ok(result) => stats.merge(&result?),
            Err(_) => bail!("a load thread did not stop within --timeout after --duration"),
        }
    }

    let run = Run {
        config: args.to_json(),
        command: args.command_line(),
        target: args.target.name(),
        nodes: connected.nodes,
        measured_s: measured,
        cpu: (cpu_after.0 - cpu_before.0, cpu_after.1 - cpu_before.1),
        rate: args.rate,
        stats: &stats,
    };
    let text = run.to_text();
    match args.json.as_deref() {
        Some("-") => {
            eprint!("{text}");
            println!("{}", serde_json::to_string_pretty(&run.to_json())?);
        }
        Some(path) => {
            print!("{text}");
            let mut file = std::fs::File::create(path).with_context(|| format!("cannot write {path}"))?;
            writeln!(file, "{}", serde_json::to_string_pretty(&run.to_json())?)?;
        }
        None => print!("{text}"),
    }
    let clean = stats.total_errors() == 0 && stats.connections_lost == 0 && stats.total_ops() > 0;
    Ok(if clean { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn sleep_until(at: Instant) {
    if let Some(pause) = at.checked_duration_since(Instant::now()) {
        std::thread::sleep(pause);
    }
}
