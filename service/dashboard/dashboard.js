// kvstore dashboard: reads api/cluster every REFRESH_MS and draws it; looks keys up with api/key.
// Plain DOM, no framework and no build step. Text from the server only ever goes in textContent.
"use strict";

(() => {
  const REFRESH_MS = 2000;
  const STALE_AFTER_MS = 3 * REFRESH_MS;
  const SVG = "http://www.w3.org/2000/svg";
  // Okabe-Ito colours, distinguishable with the common colour-vision deficiencies.
  const PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#999999"];
  const RING_OUTER = 100;
  const RING_INNER = 72;
  // An inner band: each node's share of primaries as one contiguous arc, so balance shows at a glance.
  const SHARE_OUTER = 66;
  const SHARE_INNER = 58;

  const $ = (id) => document.getElementById(id);
  const lastStats = new Map(); // node id -> {stats, at}: what a node last reported, shown while it is down
  let ringDrawn = "";
  let lastSuccess = 0;

  // --- formatting -------------------------------------------------------------------------------

  const integer = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
  const decimal = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });

  function fmtInt(n) {
    return integer.format(n);
  }

  function fmtBytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let value = n;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return `${unit ? decimal.format(value) : fmtInt(value)} ${units[unit]}`;
  }

  function fmtDuration(seconds) {
    const s = Math.max(0, Math.round(seconds));
    if (s < 120) return `${s} s`;
    if (s < 7200) return `${Math.round(s / 60)} min`;
    if (s < 172800) return `${decimal.format(s / 3600)} h`;
    return `${decimal.format(s / 86400)} d`;
  }

  function fmtLatency(ms) {
    if (ms === null || ms === undefined) return "–";
    return ms < 1 ? `${fmtInt(ms * 1000)} µs` : `${decimal.format(ms)} ms`;
  }

  function fmtOffset(seconds) {
    if (seconds === null || seconds === undefined) return "unknown";
    const ms = seconds * 1000;
    const sign = ms > 0 ? "+" : "";
    return Math.abs(ms) < 1000 ? `${sign}${decimal.format(ms)} ms` : `${sign}${decimal.format(seconds)} s`;
  }

  function fmtTime(ms) {
    return new Date(ms).toLocaleTimeString();
  }

  function percent(part, whole) {
    return whole ? (100 * part) / whole : 0;
  }

  function colourOf(ring, nodeId) {
    const index = ring.nodes.indexOf(nodeId);
    if (index < 0) return "#888888";
    return index < PALETTE.length ? PALETTE[index] : `hsl(${(index * 137) % 360} 55% 50%)`;
  }

  // --- DOM helpers ------------------------------------------------------------------------------

  function el(tag, options = {}, children = []) {
    const node = document.createElement(tag);
    if (options.className) node.className = options.className;
    if (options.text !== undefined) node.textContent = String(options.text);
    for (const [name, value] of Object.entries(options.data || {})) node.dataset[name] = String(value);
    if (options.owner) node.style.setProperty("--owner", options.owner);
    for (const child of children) if (child) node.append(child);
    return node;
  }

  function figure(list, label, value, field) {
    list.append(el("dt", { text: label }), el("dd", { text: value, data: { field } }));
  }

  function showProblem(text) {
    const banner = $("problem");
    banner.textContent = text;
    banner.hidden = false;
  }

  // --- the cluster ------------------------------------------------------------------------------

  async function refresh() {
    try {
      const response = await fetch("api/cluster", { cache: "no-store" });
      const data = await response.json();
      if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
      render(data);
      lastSuccess = Date.now();
      $("problem").hidden = true;
    } catch (error) {
      const age = lastSuccess ? `; figures below are from ${fmtTime(lastSuccess)}` : "";
      if (!lastSuccess || Date.now() - lastSuccess > STALE_AFTER_MS) {
        showProblem(`Cannot reach ${location.host} (${error.message})${age}. Retrying every ${REFRESH_MS / 1000} s.`);
      }
    } finally {
      window.setTimeout(refresh, REFRESH_MS);
    }
  }

  function render(data) {
    document.body.dataset.servedBy = data.served_by;
    $("source").textContent =
      `Data from ${data.served_by} (the node serving this page) at ${fmtTime(data.generated_at_ms)}`;
    const config = data.config;
    $("config").replaceChildren(
      ...[`N=${config.n}`, `R=${config.r}`, `W=${config.w}`, `${fmtInt(config.partitions)} partitions`,
        `${data.nodes.length} nodes`].map((text) => el("span", { className: "chip", text })),
    );
    const counts = { up: 0, suspect: 0, down: 0 };
    for (const node of data.nodes) counts[node.state] = (counts[node.state] || 0) + 1;
    $("summary").textContent = Object.entries(counts).map(([state, n]) => `${n} ${state}`).join(" · ");
    for (const node of data.nodes) {
      if (node.stats) lastStats.set(node.id, { stats: node.stats, at: data.generated_at_ms });
    }
    $("nodes").replaceChildren(...data.nodes.map((node) => nodeCard(node, data)));
    drawRing(data);
    drawShares(data);
  }

  function nodeCard(node, data) {
    const remembered = lastStats.get(node.id);
    const stats = node.stats || (remembered && remembered.stats);
    const classes = ["card", node.state];
    if (!node.reachable) classes.push("unreachable");
    const title = el("h3", {}, [
      el("span", { className: "node-id", text: node.id }),
      el("span", { className: `state ${node.state}`, text: node.state, data: { field: "state" } }),
      node.id === data.served_by ? el("span", { className: "served", text: "serving this page" }) : null,
    ]);
    const card = el("article", { className: classes.join(" "), data: { node: node.id, state: node.state },
      owner: colourOf(data.ring, node.id) }, [title, el("p", { className: "address muted", text: node.address })]);
    if (node.state !== "up" && node.state_since_ms) {
      const since = fmtDuration((data.generated_at_ms - node.state_since_ms) / 1000);
      card.append(el("p", { className: "error", text: `${node.state} for ${since}, as ${data.served_by} sees it` }));
    }
    if (!node.reachable && node.error && node.state !== "down") {
      card.append(el("p", { className: "error", text: `No figures: ${node.error}` }));
    }
    if (!stats) {
      card.append(el("p", { className: "muted", text: "Not heard from since this page opened." }));
      return card;
    }
    if (!node.stats) {
      card.append(el("p", { className: "muted", text: `Last figures from ${fmtTime(remembered.at)}:` }));
    }
    card.append(figures(node, stats));
    return card;
  }

  function figures(node, stats) {
    const list = el("dl", { className: "figures" });
    figure(list, "Keys", fmtInt(stats.live_keys), "keys");
    figure(list, "On disk", fmtBytes(stats.disk.file_bytes), "disk");
    figure(list, "Store in use", `${fmtBytes(stats.disk.used_bytes)} of ${fmtBytes(stats.disk.limit_bytes)}`,
      "used");
    if (stats.storage_full) figure(list, "Storage", "FULL: refusing writes", "storage-full");
    const owners = Object.entries(stats.hints.by_owner).map(([owner, n]) => `${owner}: ${fmtInt(n)}`);
    figure(list, "Hints held", owners.length ? `${fmtInt(stats.hints.total)} (${owners.join(", ")})`
      : fmtInt(stats.hints.total), "hints");
    const client = stats.requests.client;
    const all = stats.requests.all;
    figure(list, "Client req/s", decimal.format(client.per_second), "client-rate");
    figure(list, "Client p99", fmtLatency(client.p99_ms), "client-p99");
    figure(list, "All req/s", `${decimal.format(all.per_second)} (p99 ${fmtLatency(all.p99_ms)})`, "rate");
    figure(list, "Clock offset", fmtOffset(node.clock_offset_s), "clock-offset");
    figure(list, "Uptime", fmtDuration(stats.uptime_s), "uptime");
    figure(list, "Repair", repairText(stats.repair, stats.wall_ms), "repair");
    if (stats.repair.running) {
      const bar = document.createElement("progress");
      bar.max = Math.max(1, stats.repair.partitions_total);
      bar.value = stats.repair.partitions_compared;
      list.append(el("dt", { text: "" }), el("dd", {}, [bar]));
    }
    return list;
  }

  function repairText(repair, now) {
    const keys = `${fmtInt(repair.keys_differing)} differed, ${fmtInt(repair.keys_copied)} copied`;
    const partitions = `${fmtInt(repair.partitions_compared)}/${fmtInt(repair.partitions_total)} partitions`;
    if (repair.running) return `running: ${partitions}, ${keys}`;
    if (!repair.finished_ms) return "no round yet";
    const partial = repair.partitions_compared < repair.partitions_total ? ` (${partitions})` : "";
    return `${fmtDuration((now - repair.finished_ms) / 1000)} ago: ${keys}${partial}`;
  }

  // --- the ring and the shares ------------------------------------------------------------------

  function point(radius, fraction) {
    const angle = fraction * 2 * Math.PI - Math.PI / 2;
    return `${(radius * Math.cos(angle)).toFixed(3)} ${(radius * Math.sin(angle)).toFixed(3)}`;
  }

  // The band between radii inner and outer from start/total to end/total of a turn (at most half a turn).
  function arc(start, end, total, outer = RING_OUTER, inner = RING_INNER) {
    const from = start / total;
    const to = end / total;
    const large = to - from > 0.5 ? 1 : 0;
    return `M ${point(outer, from)} A ${outer} ${outer} 0 ${large} 1 ${point(outer, to)} ` +
      `L ${point(inner, to)} A ${inner} ${inner} 0 ${large} 0 ${point(inner, from)} Z`;
  }

  // Arcs for a contiguous band from start to end, cut so that none exceeds half a turn.
  function band(start, end, total) {
    const arcs = [];
    for (let from = start; from < end; from += total / 2) {
      arcs.push(arc(from, Math.min(end, from + total / 2), total, SHARE_OUTER, SHARE_INNER));
    }
    return arcs;
  }

  function drawRing(data) {
    const ring = data.ring;
    const signature = `${ring.nodes.join(",")}|${ring.primary.join("")}`;
    const svg = $("ring");
    if (signature !== ringDrawn) {
      ringDrawn = signature;
      const total = ring.primary.length;
      const paths = ring.nodes.map(() => []);
      let start = 0;
      for (let partition = 1; partition <= total; partition += 1) {
        const owner = ring.primary[start];
        if (partition < total && ring.primary[partition] === owner && partition - start < total / 2) continue;
        paths[owner].push(arc(start, partition, total));
        start = partition;
      }
      let shareStart = 0;
      const groups = ring.nodes.map((nodeId, index) => {
        const group = document.createElementNS(SVG, "g");
        group.setAttribute("fill", colourOf(ring, nodeId));
        group.dataset.owner = nodeId;
        const title = document.createElementNS(SVG, "title");
        const count = ring.primary.filter((owner) => owner === index).length;
        title.textContent = `${nodeId}: primary of ${fmtInt(count)} partitions (${decimal.format(percent(count, total))}%)`;
        const path = document.createElementNS(SVG, "path");
        path.setAttribute("d", [...paths[index], ...band(shareStart, shareStart + count, total)].join(" "));
        shareStart += count;
        group.append(title, path);
        return group;
      });
      const label = document.createElementNS(SVG, "text");
      label.setAttribute("text-anchor", "middle");
      label.setAttribute("dominant-baseline", "middle");
      label.setAttribute("fill", "currentColor");
      label.setAttribute("font-size", "11");
      label.textContent = `${fmtInt(total)} partitions`;
      svg.replaceChildren(...groups, label);
      $("ring-partitions").textContent = fmtInt(total);
      $("legend").replaceChildren(...ring.nodes.map((nodeId) =>
        el("li", { data: { owner: nodeId }, owner: colourOf(ring, nodeId) },
          [el("span", { className: "swatch" }), document.createTextNode(nodeId)])));
    }
    const states = new Map(data.nodes.map((node) => [node.id, node.state]));
    for (const group of svg.querySelectorAll("g")) group.setAttribute("class", states.get(group.dataset.owner) || "");
  }

  // Each node's share of partitions (as primary, as another replica) and of the live keys counted on
  // all nodes, as bars; the tick on each bar marks an even share.
  function drawShares(data) {
    const partitions = data.config.partitions;
    const nodes = data.nodes.length;
    const replicas = Math.min(data.config.n, nodes);
    // A node down counts with the last keys it reported, so the others' shares do not jump.
    const liveKeys = new Map();
    for (const node of data.nodes) {
      const stats = node.stats || (lastStats.get(node.id) || {}).stats;
      if (stats) liveKeys.set(node.id, stats.live_keys);
    }
    const keys = [...liveKeys.values()].reduce((sum, n) => sum + n, 0);
    const rows = data.nodes.map((node) => {
      const owner = colourOf(data.ring, node.id);
      const nodeKeys = liveKeys.has(node.id) ? liveKeys.get(node.id) : null;
      const shares = [
        ["Primary", node.partitions.primary, partitions, 1 / nodes],
        ["Replica", node.partitions.replica, partitions, (replicas - 1) / nodes],
        ["Keys", nodeKeys, keys, liveKeys.size ? 1 / liveKeys.size : 0],
      ];
      return el("div", { className: "share-node", data: { node: node.id }, owner }, [
        el("h4", { text: node.id }),
        ...shares.map(([label, part, whole, even]) => {
          const fill = el("span", { className: "fill" });
          fill.style.width = `${percent(part || 0, whole).toFixed(2)}%`;
          const tick = el("span", { className: "even" });
          tick.style.left = `${(100 * even).toFixed(2)}%`;
          const text = part === null ? "unknown" : `${decimal.format(percent(part, whole))}% (${fmtInt(part)})`;
          return el("div", { className: "bar-row", data: { share: label.toLowerCase() } }, [
            el("span", { text: label }),
            el("div", { className: "bar" }, [fill, tick]),
            el("span", { className: "value", text, data: { field: label.toLowerCase() } }),
          ]);
        }),
      ]);
    });
    $("shares").replaceChildren(...rows);
  }

  // --- key lookup -------------------------------------------------------------------------------

  async function lookUp(event) {
    event.preventDefault();
    const key = $("lookup-key").value;
    const result = $("lookup-result");
    if (!key) return;
    result.replaceChildren(el("p", { className: "muted", text: "Looking up…" }));
    try {
      const response = await fetch(`api/key?key=${encodeURIComponent(key)}`, { cache: "no-store" });
      const data = await response.json();
      if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
      result.replaceChildren(...lookupResult(data));
    } catch (error) {
      result.replaceChildren(el("p", { className: "error", text: `Lookup failed: ${error.message}` }));
    }
  }

  function lookupResult(data) {
    const summary = el("p", { className: "lookup-summary" }, [
      document.createTextNode(`Key “${data.key}” (${fmtInt(data.key_bytes)} bytes) is in partition `),
      el("strong", { text: data.partition, data: { field: "partition" } }),
      document.createTextNode(". Preference list: "),
      el("strong", { text: data.preference_list.join(" → "), data: { field: "preference-list" } }),
      document.createTextNode(data.fallbacks.length ? `; fallbacks for hints: ${data.fallbacks.join(", ")}.` : "."),
    ]);
    const head = el("tr", {}, ["Replica", "Role", "State", "Holds", "Written", "By", "Newest?"]
      .map((text) => el("th", { text })));
    const rows = data.replicas.map((replica) => {
      const record = replica.record;
      let holds = replica.outcome.replace("_", " ");
      if (record) holds = record.tombstone ? "tombstone (deleted)" : `value, ${fmtBytes(record.value_bytes)}`;
      if (replica.error) holds += `: ${replica.error}`;
      let current = "–";
      let currentClass = "";
      if (replica.current === true) [current, currentClass] = ["newest", "current"];
      if (replica.current === false) [current, currentClass] = ["stale", "stale"];
      let written = "–";
      if (record) {
        const counter = record.version.counter ? ` +${record.version.counter}` : "";
        written = `${new Date(record.version.wall_ms).toLocaleString()}${counter}`;
      }
      return el("tr", { data: { node: replica.node, outcome: replica.outcome } }, [
        el("td", { text: replica.node }),
        el("td", { text: replica.role }),
        el("td", {}, [el("span", { className: `state ${replica.state}`, text: replica.state })]),
        el("td", { text: holds, data: { field: "holds" } }),
        el("td", { text: written, data: { timestamp: record ? record.version.timestamp : "" } }),
        el("td", { text: record ? record.version.node : "–" }),
        el("td", { className: currentClass, text: current, data: { field: "current" } }),
      ]);
    });
    const table = el("table", { data: { key: data.key } }, [el("thead", {}, [head]), el("tbody", {}, rows)]);
    const served = el("p", { className: "muted note", text: `Answered by ${data.served_by} at ${fmtTime(data.generated_at_ms)}; values are never shown, only their size.` });
    return [summary, el("div", { className: "table-wrap" }, [table]), served];
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("lookup-form").addEventListener("submit", lookUp);
    refresh();
  });
})();
