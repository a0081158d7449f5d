"""``kv bench``: a closed-loop load generator for the cluster and, with the same code, for Redis;
and the benchmark scripts.

This package sits beside ``client`` and ``service`` and uses the client library's public API and
its transport only; the library never imports it (``kv bench`` reaches it through an import made
when that command runs). It measures the throughput and latency of our cluster and of Redis under
the same load, then reads back every key whose final value is known. One idea per module, the pure
cores apart from the I/O (this file imports none of them, so importing one module does not load all):

* ``workload``: pure. What load is generated: the operation mix, key choice (uniform or Zipfian),
  key names and values, and the ledger that knows which write decides each key.
* ``report``: pure. What a run measured (``Stats``), the report built from it, as JSON and as
  text, and the live status line.
* ``histogram``: pure. Latencies in fixed memory, mergeable across processes.
* ``targets``: I/O. One bench connection: a ``Client`` routing to primaries, or a Redis socket.
* ``worker``: I/O. One process's connections and lanes through warm-up, measurement and the
  read-back check.
* ``runner``: I/O. A target's workers, in this process or in spawned worker processes, and the
  status line while they run.
* ``plot``: the report's latencies and throughput as a PNG (matplotlib).
* ``cli``: the options, the run from the first target to the exit status, and where output goes.
* ``benchmarks``: the published comparison with Redis (``python3 -m bench.benchmarks``), driven
  by the compiled generator in ``loadgen`` (Rust), not by ``kv bench``, whose own CPU per request
  caps what it can measure; ``ab``: a same-run A/B of two versions of the node.
* ``security_cost``: the cost of TLS and authentication, through ``kv bench``.
* ``protocol_floor``: a yardstick server, our protocol from a dict in memory.

Every loop is bounded by count and time, and traffic goes only to the addresses given (for the
cluster: to its members, reached through the seed addresses where those name them).
"""
