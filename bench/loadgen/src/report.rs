//! What a run measured (`Stats`, one per thread, merged), the generator's own CPU, and the report
//! as JSON and as text.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::workload::Op;

/// Latencies are recorded in nanoseconds, up to this (100 s), 3 significant digits.
const MAX_LATENCY_NS: u64 = 100_000_000_000;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("valid histogram bounds")
}

/// One thread's counts over the measured window.
pub struct Stats {
    pub ops: [u64; 2],
    pub get_misses: u64,
    pub errors: BTreeMap<String, u64>,
    pub latency: [Histogram<u64>; 2],
    /// Open loop: requests whose intended send time fell in the window.
    pub scheduled: u64,
    /// Open loop: requests dropped because their connection's queue was full, or the connection gone.
    pub dropped: u64,
    /// Open loop: the longest queue any connection had (at any time, warm-up included).
    pub max_queue: u64,
    /// Open loop: how late the generator itself handed each request to its connection, after its
    /// intended time (timer precision and the loop's own delays; not queueing behind the server).
    pub schedule_lag: Histogram<u64>,
    /// Connections closed by an error or a timeout (at any time).
    pub connections_lost: u64,
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            ops: [0; 2],
            get_misses: 0,
            errors: BTreeMap::new(),
            latency: [new_histogram(), new_histogram()],
            scheduled: 0,
            dropped: 0,
            max_queue: 0,
            schedule_lag: new_histogram(),
            connections_lost: 0,
        }
    }

    pub fn error(&mut self, kind: &str, count: u64) {
        if count > 0 {
            *self.errors.entry(kind.to_string()).or_default() += count;
        }
    }

    pub fn merge(&mut self, other: &Stats) {
        for op in 0..2 {
            self.ops[op] += other.ops[op];
            self.latency[op].add(&other.latency[op]).expect("histograms of equal bounds");
        }
        self.get_misses += other.get_misses;
        for (kind, count) in &other.errors {
            self.error(kind, *count);
        }
        self.scheduled += other.scheduled;
        self.dropped += other.dropped;
        self.max_queue = self.max_queue.max(other.max_queue);
        self.schedule_lag.add(&other.schedule_lag).expect("histograms of equal bounds");
        self.connections_lost += other.connections_lost;
    }

    pub fn total_ops(&self) -> u64 {
        self.ops.iter().sum()
    }

    pub fn total_errors(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// User and system CPU seconds of this whole process (every thread) so far.
pub fn process_cpu() -> (f64, f64) {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc != 0 {
        return (0.0, 0.0);
    }
    let seconds = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    (seconds(usage.ru_utime), seconds(usage.ru_stime))
}

/// Everything the report says; `measured_s` is the window's length, `cpu` user and system
/// seconds over it.
pub struct Run<'a> {
    pub config: Value,
    pub command: String,
    pub target: &'a str,
    pub nodes: Vec<Value>,
    pub measured_s: f64,
    pub cpu: (f64, f64),
    pub rate: Option<f64>,
    pub stats: &'a Stats,
}

fn ms(ns: u64) -> f64 {
    (ns as f64 / 1e6 * 1e4).round() / 1e4
}

fn percentiles(histogram: &Histogram<u64>) -> Value {
    if histogram.is_empty() {
        return Value::Null;
    }
    json!({
        "p50": ms(histogram.value_at_quantile(0.50)),
        "p90": ms(histogram.value_at_quantile(0.90)),
        "p99": ms(histogram.value_at_quantile(0.99)),
        "p99_9": ms(histogram.value_at_quantile(0.999)),
        "max": ms(histogram.max()),
        "mean": ms(histogram.mean().round() as u64),
    })
}

impl Run<'_> {
    pub fn to_json(&self) -> Value {
        let stats = self.stats;
        let total = stats.total_ops();
        let mut all = new_histogram();
        for histogram in &stats.latency {
            all.add(histogram).expect("histograms of equal bounds");
        }
        let requests = total + stats.total_errors();
        let (user, sys) = self.cpu;
        let per_s = |n: u64| round2(n as f64 / self.measured_s);
        json!({
            "tool": "kv-loadgen",
            "version": env!("CARGO_PKG_VERSION"),
            "target": self.target,
            "config": self.config,
            "command": self.command,
            "nodes": self.nodes,
            "measured_s": round6(self.measured_s),
            "ops": total,
            "ops_by_type": {"get": stats.ops[Op::Get as usize], "put": stats.ops[Op::Put as usize]},
            "get_misses": stats.get_misses,
            "ops_per_s": per_s(total),
            "ops_per_s_by_type": {
                "get": per_s(stats.ops[Op::Get as usize]),
                "put": per_s(stats.ops[Op::Put as usize]),
            },
            "errors": {"total": stats.total_errors(), "by_kind": stats.errors},
            "connections_lost": stats.connections_lost,
            "latency_ms": {
                "all": percentiles(&all),
                "get": percentiles(&stats.latency[Op::Get as usize]),
                "put": percentiles(&stats.latency[Op::Put as usize]),
            },
            "open_loop": self.rate.map(|rate| json!({
                "target_rate": rate,
                "achieved_rate": per_s(total),
                "achieved_fraction": if rate > 0.0 { round6(total as f64 / self.measured_s / rate) } else { 0.0 },
                "scheduled": stats.scheduled,
                "dropped": stats.dropped,
                "max_queue": stats.max_queue,
                "schedule_lag_ms": percentiles(&stats.schedule_lag),
            })),
            "generator_cpu": {
                "user_s": round6(user),
                "sys_s": round6(sys),
                "total_s": round6(user + sys),
                "us_per_request": (requests > 0).then(|| round2((user + sys) * 1e6 / requests as f64)),
                "cores_used": round6((user + sys) / self.measured_s),
            },
        })
    }

    pub fn to_text(&self) -> String {
        let report = self.to_json();
        let stats = self.stats;
        let mut out = String::new();
        let _ = writeln!(out, "kv-loadgen: {} at {}", self.target, self.config["nodes"].as_str().unwrap_or(""));
        let _ = writeln!(out, "  config:   {}", self.command);
        if !self.nodes.is_empty() {
            let nodes: Vec<String> = self
                .nodes
                .iter()
                .map(|node| {
                    let address = node["address"].as_str().unwrap_or("?");
                    node["id"].as_str().map_or(address.to_string(), |id| format!("{id}={address}"))
                })
                .collect();
            let _ = writeln!(out, "  nodes:    {}", nodes.join(" "));
        }
        let _ = writeln!(
            out,
            "  measured: {:.3} s, {} ops ({} get, {} put, {} get misses), {} errors",
            self.measured_s,
            stats.total_ops(),
            stats.ops[0],
            stats.ops[1],
            stats.get_misses,
            stats.total_errors()
        );
        let _ = writeln!(out, "  ops/s:    {:.0}", report["ops_per_s"].as_f64().unwrap_or(0.0));
        if let Some(open) = report["open_loop"].as_object() {
            let _ = writeln!(
                out,
                "  open loop: target {:.0}/s, achieved {:.0}/s ({:.1}%), scheduled {}, dropped {}, longest queue {}",
                open["target_rate"].as_f64().unwrap_or(0.0),
                open["achieved_rate"].as_f64().unwrap_or(0.0),
                open["achieved_fraction"].as_f64().unwrap_or(0.0) * 100.0,
                open["scheduled"],
                open["dropped"],
                open["max_queue"]
            );
            let lag = &open["schedule_lag_ms"];
            if !lag.is_null() {
                let _ = writeln!(
                    out,
                    "  generator's own send lag ms: p50 {} p99 {} p99.9 {} max {}",
                    lag["p50"], lag["p99"], lag["p99_9"], lag["max"]
                );
            }
        }
        for name in ["all", "get", "put"] {
            let latency = &report["latency_ms"][name];
            if latency.is_null() {
                continue;
            }
            let _ = writeln!(
                out,
                "  latency {name:<3} ms: p50 {} p90 {} p99 {} p99.9 {} max {}",
                latency["p50"], latency["p90"], latency["p99"], latency["p99_9"], latency["max"]
            );
        }
        for (kind, count) in &stats.errors {
            let _ = writeln!(out, "  error {kind}: {count}");
        }
        if stats.connections_lost > 0 {
            let _ = writeln!(out, "  connections lost: {}", stats.connections_lost);
        }
        let cpu = &report["generator_cpu"];
        let _ = writeln!(
            out,
            "  generator CPU: {} s user + {} s sys = {:.1} us/request ({:.2} cores)",
            cpu["user_s"],
            cpu["sys_s"],
            cpu["us_per_request"].as_f64().unwrap_or(0.0),
            cpu["cores_used"].as_f64().unwrap_or(0.0)
        );
        out
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_merge_and_report() {
        let mut a = Stats::new();
        a.ops = [3, 1];
        a.latency[0].record(1_000_000).unwrap();
        a.latency[0].record(2_000_000).unwrap();
        a.latency[0].record(3_000_000).unwrap();
        a.latency[1].record(500_000).unwrap();
        a.error("TIMEOUT", 2);
        let mut b = Stats::new();
        b.ops = [0, 1];
        b.latency[1].record(700_000).unwrap();
        b.error("TIMEOUT", 1);
        b.error("redis:ERR", 1);
        b.error("none", 0);
        a.merge(&b);
        assert_eq!((a.total_ops(), a.total_errors()), (5, 4));
        let run = Run {
            config: json!({"nodes": "127.0.0.1:1"}),
            command: "kv-loadgen ...".into(),
            target: "redis",
            nodes: vec![],
            measured_s: 2.0,
            cpu: (0.5, 0.25),
            rate: Some(10.0),
            stats: &a,
        };
        let report = run.to_json();
        assert_eq!(report["ops"], 5);
        assert_eq!(report["ops_by_type"]["put"], 2);
        assert_eq!(report["ops_per_s"], 2.5);
        assert_eq!(report["errors"]["by_kind"]["TIMEOUT"], 3);
        assert_eq!(report["errors"]["total"], 4);
        assert_eq!(report["generator_cpu"]["us_per_request"], 83333.33);
        assert_eq!(report["open_loop"]["achieved_fraction"], 0.25);
        let p50 = report["latency_ms"]["get"]["p50"].as_f64().unwrap();
        assert!((p50 - 2.0).abs() < 0.01, "{p50}");
        assert!(report["latency_ms"]["all"]["max"].as_f64().unwrap() >= 3.0);
        let text = run.to_text();
        assert!(text.contains("config:   kv-loadgen ..."), "{text}");
        assert!(text.contains("error TIMEOUT: 3"), "{text}");
        assert!(text.contains("us/request"), "{text}");
    }
}
