//! The command line, and the exact configuration a run used (printed in both outputs).

use anyhow::{bail, Result};
use clap::{Parser, ValueEnum};
use serde_json::{json, Value};

use crate::workload::{KeyChooser, Mix, MAX_THETA};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// Our binary protocol, token-aware (each request to its key's primary replica).
    Kv,
    /// Redis, RESP2.
    Redis,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Kv => "kv",
            Target::Redis => "redis",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Distribution {
    Uniform,
    Zipfian,
}

const AFTER_HELP: &str = "\
Closed loop (the default): each connection keeps --pipeline requests in flight.
Open loop (--rate): requests follow a fixed timetable spread over the connections;
latency counts from each request's intended send time, so a slow server cannot hide
its queueing (no coordinated omission). A connection sends at most --pipeline at
once; the rest queue, up to --queue-limit per connection, then count as dropped.

Against kv, a connection is token-aware: one socket per node, each request to its
key's primary replica (the ring rebuilt from TOPOLOGY, as client/ring.py does).

Exit status: 0 done without errors, 1 done with request errors, 2 could not run.

examples:
  kv-loadgen --target redis --nodes 127.0.0.1:6379 --duration 8 --mix get=50,put=50
  kv-loadgen --target kv --nodes 127.0.0.1:5000,127.0.0.1:5001 --rate 20000 --json -";

#[derive(Parser, Debug, Clone)]
#[command(name = "kv-loadgen", version, about = "A compiled load generator for our store and for Redis", after_help = AFTER_HELP)]
pub struct Args {
    /// What the addresses speak.
    #[arg(long, value_enum)]
    pub target: Target,
    /// kv: seed nodes, host:port,...; redis: one address. IPv6 as [::1]:port.
    #[arg(long, value_name = "HOST:PORT,...")]
    pub nodes: String,
    /// Connections in total.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub connections: u32,
    /// Requests each connection keeps in flight (closed loop), or may have in flight (open loop).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub pipeline: u32,
    /// Distinct keys.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=999_999_999_999))]
    pub keys: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(0..=16 * 1024 * 1024))]
    pub value_size: u32,
    /// Operation ratios, e.g. get=50,put=50 or put=100.
    #[arg(long, default_value = "get=50,put=50", value_parser = Mix::parse)]
    pub mix: Mix,
    /// Key popularity.
    #[arg(long, value_enum, default_value_t = Distribution::Uniform)]
    pub distribution: Distribution,
    /// Zipfian exponent (0 is uniform, 0.99 as in YCSB).
    #[arg(long, default_value_t = 0.99)]
    pub zipf_theta: f64,
    /// Seconds to measure.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// OS threads generating load (connections are spread over them).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub threads: u32,
    /// Random seed of keys and ops.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Open loop: total requests per second, on a fixed timetable.
    #[arg(long, value_name = "OPS_PER_SEC")]
    pub rate: Option<f64>,
    /// Open loop: requests a connection may queue behind its in-flight ones before dropping.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub queue_limit: u32,
    /// Open loop: wake at most once per this many microseconds and send every request due by then
    /// (0: wake for each request at its intended time). Saves generator CPU at high rates; the
    /// added wait is measured, since latency counts from each request's intended time.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub batch_us: u32,
    /// Seconds before an unanswered request counts as a timeout (and its connection is closed);
    /// also the connect timeout, and the grace after --duration before a hard stop.
    #[arg(long, default_value_t = 5.0)]
    pub timeout: f64,
    /// kv: GET quorum R (default: the node's).
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=255))]
    pub r: Option<u8>,
    /// kv: PUT quorum W (default: the node's).
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=255))]
    pub w: Option<u8>,
    /// Write the JSON report here ("-": stdout, and the text report goes to stderr).
    #[arg(long, value_name = "PATH|-")]
    pub json: Option<String>,
}

impl Args {
    pub fn validate(&self) -> Result<()> {
        for (name, value) in [("--duration", self.duration), ("--timeout", self.timeout)] {
            if !(value.is_finite() && value > 0.0 && value <= 86_400.0) {
                bail!("{name} must be above 0 and at most a day, not {value}");
            }
        }
        if !(self.warmup.is_finite() && (0.0..=86_400.0).contains(&self.warmup)) {
            bail!("--warmup must be 0 or more seconds, not {}", self.warmup);
        }
        if !(0.0..=MAX_THETA).contains(&self.zipf_theta) {
            bail!("--zipf-theta must be in [0, {MAX_THETA}], not {}", self.zipf_theta);
        }
        if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate > 0.0 && rate <= 100_000_000.0) {
                bail!("--rate must be above 0, not {rate}");
            }
        }
        if self.target == Target::Redis && (self.r.is_some() || self.w.is_some()) {
            bail!("--r and --w are for --target kv");
        }
        if self.threads > self.connections {
            bail!("--threads {} exceeds --connections {}", self.threads, self.connections);
        }
        Ok(())
    }

    pub fn key_chooser(&self) -> Result<KeyChooser> {
        match self.distribution {
            Distribution::Uniform => KeyChooser::uniform(self.keys),
            Distribution::Zipfian => KeyChooser::new(self.keys, self.zipf_theta),
        }
    }

    pub fn distribution_name(&self) -> &'static str {
        match self.distribution {
            Distribution::Uniform => "uniform",
            Distribution::Zipfian => "zipfian",
        }
    }

    pub fn mode(&self) -> &'static str {
        if self.rate.is_some() {
            "open"
        } else {
            "closed"
        }
    }

    /// The full command line that repeats this run, every option spelled out.
    pub fn command_line(&self) -> String {
        let mut parts = vec![
            "kv-loadgen".to_string(),
            format!("--target {}", self.target.name()),
            format!("--nodes {}", self.nodes),
            format!("--connections {}", self.connections),
            format!("--pipeline {}", self.pipeline),
            format!("--keys {}", self.keys),
            format!("--value-size {}", self.value_size),
            format!("--mix {}", self.mix.describe()),
            format!("--distribution {}", self.distribution_name()),
        ];
        if self.distribution == Distribution::Zipfian {
            parts.push(format!("--zipf-theta {}", self.zipf_theta));
        }
        parts.extend([
            format!("--duration {}", self.duration),
            format!("--warmup {}", self.warmup),
            format!("--threads {}", self.threads),
            format!("--seed {}", self.seed),
            format!("--timeout {}", self.timeout),
        ]);
        if let Some(rate) = self.rate {
            parts.push(format!("--rate {rate}"));
            parts.push(format!("--queue-limit {}", self.queue_limit));
            parts.push(format!("--batch-us {}", self.batch_us));
        }
        if let Some(r) = self.r {
            parts.push(format!("--r {r}"));
        }
        if let Some(w) = self.w {
            parts.push(format!("--w {w}"));
        }
        parts.join(" ")
    }

    pub fn to_json(&self) -> Value {
        json!({
            "target": self.target.name(),
            "nodes": self.nodes,
            "mode": self.mode(),
            "connections": self.connections,
            "pipeline": self.pipeline,
            "keys": self.keys,
            "value_size": self.value_size,
            "mix": {"get": self.mix.get * 100.0, "put": (1.0 - self.mix.get) * 100.0},
            "distribution": self.distribution_name(),
            "zipf_theta": if self.distribution == Distribution::Zipfian { json!(self.zipf_theta) } else { Value::Null },
            "duration_s": self.duration,
            "warmup_s": self.warmup,
            "threads": self.threads,
            "seed": self.seed,
            "rate": self.rate,
            "queue_limit": self.rate.map(|_| self.queue_limit),
            "batch_us": self.rate.map(|_| self.batch_us),
            "timeout_s": self.timeout,
            "r": self.r,
            "w": self.w,
            "command": self.command_line(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Args> {
        let mut argv = vec!["kv-loadgen", "--target", "redis", "--nodes", "127.0.0.1:6379"];
        argv.extend_from_slice(extra);
        let args = Args::try_parse_from(argv)?;
        args.validate()?;
        Ok(args)
    }

    #[test]
    fn defaults_and_command_line() {
        let args = parse(&[]).unwrap();
        assert_eq!((args.connections, args.pipeline, args.keys, args.value_size), (50, 1, 10_000, 100));
        assert_eq!(args.mode(), "closed");
        assert_eq!(
            args.command_line(),
            "kv-loadgen --target redis --nodes 127.0.0.1:6379 --connections 50 --pipeline 1 --keys 10000 \
             --value-size 100 --mix get=50,put=50 --distribution uniform --duration 10 --warmup 2 \
             --threads 1 --seed 1 --timeout 5"
        );
        // The command line parses back to the same configuration.
        let again = Args::try_parse_from(args.command_line().split(' ')).unwrap();
        assert_eq!(again.command_line(), args.command_line());
    }

    #[test]
    fn refusals() {
        assert!(parse(&["--duration", "0"]).is_err());
        assert!(parse(&["--rate", "-5"]).is_err());
        assert!(parse(&["--connections", "0"]).is_err());
        assert!(parse(&["--r", "1"]).is_err());
        assert!(parse(&["--threads", "4", "--connections", "2"]).is_err());
        assert!(parse(&["--mix", "get=0"]).is_err());
        assert!(parse(&["--zipf-theta", "11"]).is_err());
        assert_eq!(parse(&["--rate", "1000"]).unwrap().mode(), "open");
    }
}
