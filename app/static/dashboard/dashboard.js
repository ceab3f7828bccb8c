/* viraltrace live page: plain JS and SVG, no framework, no build step (docs/dashboard.md).
 *
 * Reads the query API (/v1/...) with a read key kept in sessionStorage and sent
 * only as an Authorization header. Every string from the API reaches the page
 * through textContent or an SVG attribute, never as HTML. */
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const KEY_STORE = "viraltrace.readKey";
  const REFRESH_MS = 5000;
  const TREE_PAGE = 1000;
  const CASCADES_SHOWN = 20;
  // Colour-blind-safe categorical palette (Okabe-Ito), then greys for the rest.
  const PALETTE = ["#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442",
    "#000000"];
  const NO_CHANNEL = "#bcc3ca";

  const $ = (id) => document.getElementById(id);
  const state = {
    key: null,
    campaign: null,
    selected: null, // root of the cascade drawn in the tree
    timer: null,
    running: false,
    again: false, // a refresh was asked for while one ran
    paused: false, // the connect form is open
  };

  // ---- small DOM helpers (text only) ----------------------------------------------------

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text != null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
    if (text != null) node.textContent = String(text);
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  const integer = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
  const decimal = new Intl.NumberFormat(undefined, { maximumFractionDigits: 2 });

  function num(value, format) {
    if (value == null || Number.isNaN(value)) return "—";
    return (format || integer).format(value);
  }

  function clock(iso) {
    if (!iso) return "—";
    const date = new Date(iso);
    return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleTimeString();
  }

  function when(iso) {
    if (!iso) return "—";
    const date = new Date(iso);
    return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString();
  }

  // ---- the API ----------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, body) {
      const error = (body && body.error) || {};
      super(error.message || (status ? "HTTP " + status : "cannot reach the server"));
      this.status = status;
      this.reason = error.reason || (status ? "http_" + status : "network");
      this.field = error.field || null;
    }
  }

  async function api(path, params) {
    const url = new URL(path, location.origin);
    for (const [name, value] of Object.entries(params || {})) {
      if (value != null && value !== "") url.searchParams.set(name, value);
    }
    let response;
    try {
      response = await fetch(url, {
        headers: { Authorization: "Bearer " + state.key, Accept: "application/json" },
        cache: "no-store",
        credentials: "omit",
      });
    } catch (err) {
      throw new ApiError(0, null);
    }
    let body = null;
    try {
      body = await response.json();
    } catch (err) {
      body = null;
    }
    if (!response.ok) throw new ApiError(response.status, body);
    return body;
  }

  const campaignPath = (suffix) =>
    "/v1/campaigns/" + encodeURIComponent(state.campaign) + "/" + suffix;

  // ---- panels -----------------------------------------------------------------------------

  function panelError(section, err) {
    const box = section.querySelector(".panel-error");
    if (!err) {
      box.hidden = true;
      box.textContent = "";
      return;
    }
    box.hidden = false;
    box.textContent = err.status
      ? `${err.status} ${err.reason}${err.field ? " (" + err.field + ")" : ""}: ${err.message}`
      : "Cannot reach the server: " + err.message;
  }

  function tiles(list, entries) {
    clear(list);
    for (const [label, value] of entries) {
      const item = el("div");
      item.append(el("dt", label), el("dd", value));
      list.append(item);
    }
  }

  async function loadSummary() {
    const s = await api(campaignPath("summary"));
    const largest = s.largest_cascade;
    tiles($("summary"), [
      ["Views", num(s.views)],
      ["Clicks", num(s.clicks)],
      ["Shares", num(s.shares)],
      ["Conversions", num(s.conversions)],
      ["Unique visitors", num(s.unique_visitors)],
      ["K-factor", num(s.k_factor, decimal)],
      ["Cascades", num(s.cascades)],
      ["Largest cascade", largest ? num(largest.size) : "—"],
      ["Open alerts", num(s.open_alerts)],
    ]);
  }

  function niceMax(value) {
    if (value <= 0) return 1;
    const step = Math.pow(10, Math.floor(Math.log10(value)));
    for (const m of [1, 2, 5, 10]) if (m * step >= value) return m * step;
    return 10 * step;
  }

  function axes(chart, width, height, pad, top, label) {
    chart.append(
      svg("line", { class: "axis", x1: pad.l, y1: height - pad.b, x2: width - pad.r, y2: height - pad.b }),
      svg("line", { class: "axis", x1: pad.l, y1: pad.t, x2: pad.l, y2: height - pad.b }),
      svg("text", { class: "label", x: pad.l - 6, y: pad.t + 4, "text-anchor": "end" }, label(top)),
      svg("text", { class: "label", x: pad.l - 6, y: height - pad.b, "text-anchor": "end" }, label(0)),
    );
  }

  function timeLabels(chart, width, height, pad, first, last) {
    chart.append(
      svg("text", { class: "label", x: pad.l, y: height - 4 }, first),
      svg("text", { class: "label", x: width - pad.r, y: height - 4, "text-anchor": "end" }, last),
    );
  }

  async function loadSpread() {
    const metric = $("metric").value;
    const [interval, seconds] = $("range").value.split(" ");
    const to = new Date();
    const from = new Date(to.getTime() - Number(seconds) * 1000);
    const series = await api(campaignPath("timeseries"), {
      metric,
      interval,
      from: from.toISOString(),
      to: to.toISOString(),
    });
    const points = series.points || [];
    const chart = $("spread");
    clear(chart);
    const width = 1000, height = 240, pad = { l: 56, r: 12, t: 12, b: 24 };
    const values = points.map((p) => Number(p.value) || 0);
    const top = niceMax(Math.max(0, ...values));
    const x = (i) => pad.l + (points.length < 2 ? 0 : (i / (points.length - 1)) * (width - pad.l - pad.r));
    const y = (v) => height - pad.b - (v / top) * (height - pad.t - pad.b);
    axes(chart, width, height, pad, top, (v) => num(v));
    if (points.length) {
      const line = values.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
      const base = `${x(points.length - 1).toFixed(1)},${y(0)} ${x(0).toFixed(1)},${y(0)}`;
      chart.append(svg("polygon", { class: "area", points: line + " " + base }));
      chart.append(svg("polyline", { class: "curve", points: line }));
      timeLabels(chart, width, height, pad, when(points[0].t), when(points[points.length - 1].t));
    }
    const total = values.reduce((a, b) => a + b, 0);
    const peak = values.indexOf(Math.max(...values));
    $("spread-desc").textContent = points.length
      ? `${num(total)} ${metric} in ${points.length} buckets of ${interval}` +
        (total ? `; peak ${num(values[peak])} at ${when(points[peak].t)}.` : ".")
      : "No points in this range.";
  }

  async function loadCascades() {
    const list = await api(campaignPath("cascades"), {
      order_by: $("order-by").value,
      limit: CASCADES_SHOWN,
    });
    const body = $("cascades").tBodies[0];
    clear(body);
    const rows = list.cascades || [];
    $("cascades-empty").hidden = rows.length > 0;
    for (const c of rows) {
      const tr = el("tr");
      tr.dataset.root = c.root;
      tr.setAttribute("aria-current", String(c.root === state.selected));
      const pick = el("button", c.root, "link");
      pick.type = "button";
      pick.setAttribute("aria-label", "Draw cascade " + c.root);
      pick.addEventListener("click", () => select(c.root));
      const first = el("td");
      first.append(pick);
      tr.append(
        first,
        el("td", num(c.size)),
        el("td", num(c.depth)),
        el("td", num(c.reach)),
        el("td", num(c.virality, decimal)),
        el("td", num(c.growth_per_min, decimal)),
        el("td", num(c.forecast_size)),
        el("td", clock(c.last_ts)),
      );
      body.append(tr);
    }
    // Nothing chosen yet: draw the first by the chosen order (refresh loads the tree).
    if (!state.selected && rows.length) {
      state.selected = rows[0].root;
      body.rows[0].setAttribute("aria-current", "true");
    }
  }

  async function select(root) {
    state.selected = root;
    for (const tr of $("cascades").tBodies[0].rows) {
      tr.setAttribute("aria-current", String(tr.dataset.root === root));
    }
    const section = $("tree").closest("section");
    try {
      await loadTree();
      panelError(section, null);
    } catch (err) {
      if (!handleAuth(err)) panelError(section, err);
    }
  }

  // ---- the tree -----------------------------------------------------------------------------

  /** Radial layout: leaves spread evenly around the circle in depth-first order,
   * a parent in the middle of its children's angles, rings by generation. Nodes
   * whose parent is not on this page (orphans) hang from an undrawn centre. */
  function radialLayout(nodes) {
    const byId = new Map(nodes.map((n) => [n.id, { node: n, children: [] }]));
    const tops = [];
    for (const item of byId.values()) {
      const parent = item.node.parent && byId.get(item.node.parent);
      if (parent) parent.children.push(item);
      else tops.push(item);
    }
    const hub = tops.length === 1 ? tops[0] : { node: null, children: tops };
    // Iterative post-order: leaf counts, then angles; no recursion for deep chains.
    const order = [];
    const stack = [[hub, 0]];
    let levels = 0;
    while (stack.length) {
      const [item, level] = stack.pop();
      item.level = level;
      levels = Math.max(levels, level);
      order.push(item);
      item.children.sort((a, b) => (a.node.ts < b.node.ts ? -1 : a.node.ts > b.node.ts ? 1 : 0));
      for (let i = item.children.length - 1; i >= 0; i--) stack.push([item.children[i], level + 1]);
    }
    let leaves = 0;
    for (const item of order) if (!item.children.length) item.leaf = leaves++;
    for (let i = order.length - 1; i >= 0; i--) {
      const item = order[i];
      if (!item.children.length) {
        item.angle = ((item.leaf + 0.5) / Math.max(1, leaves)) * 2 * Math.PI;
      } else {
        const kids = item.children;
        item.angle = (kids[0].angle + kids[kids.length - 1].angle) / 2;
      }
    }
    return { order, levels };
  }

  function channelColours(nodes) {
    const names = [...new Set(nodes.map((n) => n.channel).filter(Boolean))].sort();
    const colours = new Map(names.map((name, i) => [name, PALETTE[i % PALETTE.length]]));
    return { names, colour: (channel) => (channel ? colours.get(channel) : NO_CHANNEL) };
  }

  function drawTree(tree) {
    const chart = $("tree");
    clear(chart);
    chart.removeAttribute("hidden"); // an SVG element has no .hidden property
    const nodes = tree.nodes || [];
    const size = 600, centre = size / 2, margin = 24;
    const { order, levels } = radialLayout(nodes);
    const ring = levels ? (centre - margin) / levels : 0;
    for (const item of order) {
      item.x = centre + ring * item.level * Math.cos(item.angle);
      item.y = centre + ring * item.level * Math.sin(item.angle);
    }
    const { names, colour } = channelColours(nodes);
    // Area grows with descendants, up to half a ring so that generations stay apart.
    const maxDescendants = Math.max(1, ...nodes.map((n) => n.descendants || 0));
    const maxRadius = Math.min(18, Math.max(3, ring ? ring * 0.5 : 18));
    const minRadius = Math.min(2.5, maxRadius / 2);
    const edges = svg("g", { class: "edges" });
    const dots = svg("g", { class: "nodes" });
    for (const item of order) {
      for (const child of item.children) {
        if (item.node) {
          edges.append(svg("line", { class: "edge", x1: item.x, y1: item.y, x2: child.x, y2: child.y }));
        }
      }
      if (!item.node) continue;
      const n = item.node;
      const flags = n.flags || [];
      const radius =
        minRadius + (maxRadius - minRadius) * Math.sqrt((n.descendants || 0) / maxDescendants);
      const dot = svg("circle", {
        class: "node" + (flags.length ? " flagged" : ""),
        cx: item.x.toFixed(1),
        cy: item.y.toFixed(1),
        r: radius.toFixed(1),
        fill: colour(n.channel),
        "data-id": n.id,
      });
      dot.append(svg("title", null,
        `${n.id} · ${n.channel || "no channel"} · depth ${n.depth} · ${n.descendants} below · ` +
        `${n.clicks} clicks · ${n.conversions} conversions` +
        (n.state && n.state !== "attached" ? ` · ${n.state}` : "") +
        (flags.length ? ` · flagged: ${flags.join(", ")}` : "")));
      dots.append(dot);
    }
    chart.append(edges, dots);

    const legend = $("tree-legend");
    clear(legend);
    const entries = names.map((name) => [name, colour(name)]);
    if (nodes.some((n) => !n.channel)) entries.push(["no channel", NO_CHANNEL]);
    for (const [name, fill] of entries) {
      const item = el("li");
      const swatch = svg("svg", { width: 12, height: 12, viewBox: "0 0 12 12", "aria-hidden": "true" });
      swatch.append(svg("circle", { cx: 6, cy: 6, r: 5, fill, stroke: "#1b1f24" }));
      item.append(swatch, document.createTextNode(" " + name));
      legend.append(item);
    }

    const stats = tree.stats || {};
    const total = Math.max(stats.size || 0, nodes.length);
    const hidden = total - nodes.length;
    $("tree-caption").textContent =
      `Cascade ${tree.root}: ${num(nodes.length)} of ${num(total)} nodes drawn` +
      (hidden > 0 || tree.next_cursor
        ? ` (${num(hidden)} not shown: the first ${num(nodes.length)} in breadth-first order).`
        : ".") +
      " Size shows descendants, colour the channel; dashed nodes are flagged.";
    const forecast = tree.forecast || {};
    tiles($("tree-stats"), [
      ["Depth", num(stats.depth)],
      ["Reach", num(stats.reach)],
      ["Max breadth", num(stats.max_breadth)],
      ["Virality", num(stats.virality, decimal)],
      ["Growth/min", num(stats.growth_per_min, decimal)],
      ["Forecast size", num(forecast.final_size)],
    ]);
    chart.dataset.root = tree.root;
    chart.dataset.nodes = String(nodes.length);
  }

  async function loadTree() {
    if (!state.selected) return;
    const tree = await api("/v1/cascades/" + encodeURIComponent(state.selected), { limit: TREE_PAGE });
    drawTree(tree);
  }

  // ---- buzz and alerts ----------------------------------------------------------------------

  async function loadBuzz() {
    const buzz = await api(campaignPath("buzz"));
    const minutes = buzz.minutes || [];
    const chart = $("buzz");
    clear(chart);
    const width = 480, height = 160, pad = { l: 44, r: 8, t: 10, b: 24 };
    const start = new Date(buzz.start).getTime();
    const end = new Date(buzz.end).getTime();
    const span = Math.max(60000, end - start);
    const slot = ((width - pad.l - pad.r) * 60000) / span;
    const topVolume = niceMax(Math.max(0, ...minutes.map((m) => m.volume || 0)));
    axes(chart, width, height, pad, 1, (v) => `${Math.round(v * 100)}%`);
    const inner = height - pad.t - pad.b;
    for (const m of minutes) {
      const x = pad.l + ((new Date(m.minute).getTime() - start) / span) * (width - pad.l - pad.r);
      const volume = (inner * (m.volume || 0)) / topVolume;
      const negative = inner * (m.negative_share || 0);
      chart.append(svg("rect", {
        class: "volume", x: x.toFixed(1), width: Math.max(1, slot - 1).toFixed(1),
        y: (height - pad.b - volume).toFixed(1), height: volume.toFixed(1),
      }));
      const bar = svg("rect", {
        class: "bar", x: x.toFixed(1), width: Math.max(1, slot - 1).toFixed(1),
        y: (height - pad.b - negative).toFixed(1), height: negative.toFixed(1),
      });
      bar.append(svg("title", null,
        `${clock(m.minute)}: ${Math.round((m.negative_share || 0) * 100)}% negative of ${m.volume}`));
      chart.append(bar);
    }
    timeLabels(chart, width, height, pad, clock(buzz.start), clock(buzz.end));
    const volume = minutes.reduce((a, m) => a + (m.volume || 0), 0);
    const negative = minutes.reduce((a, m) => a + (m.negative || 0), 0);
    $("buzz-desc").textContent = volume
      ? `${num(volume)} comments, reactions and captions; ${Math.round((100 * negative) / volume)}% ` +
        "negative. Red: negative share per minute; grey: volume."
      : "No buzz in the last hour.";
    const terms = new Map();
    for (const m of minutes) {
      for (const [term, count] of m.top_negative_terms || []) {
        terms.set(term, (terms.get(term) || 0) + count);
      }
    }
    const list = $("buzz-terms");
    clear(list);
    const top = [...terms].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1)).slice(0, 10);
    for (const [term, count] of top) list.append(el("li", `${term} (${count})`));
    $("buzz-no-terms").hidden = top.length > 0;
  }

  async function loadAlerts() {
    const alerts = await api(campaignPath("alerts"), { state: "open" });
    const list = $("alerts");
    clear(list);
    $("alerts-empty").hidden = alerts.length > 0;
    for (const a of alerts) {
      const item = el("li");
      item.append(el("div", a.kind, "kind"));
      item.append(el("div",
        `since ${when(a.opened_at)} · value ${num(a.value, decimal)} vs baseline ` +
        `${num(a.baseline, decimal)} (threshold ${num(a.threshold, decimal)})`, "muted"));
      const explanation = a.explanation || {};
      const terms = (explanation.top_negative_terms || []).map((t) => t.term);
      if (terms.length) item.append(el("div", "Terms: " + terms.join(", ")));
      for (const sample of (explanation.samples || []).slice(0, 3)) {
        item.append(el("blockquote", sample.text));
      }
      const roots = (explanation.top_branches || []).map((b) => b.root).filter(Boolean);
      if (roots.length) {
        const line = el("div", "Cascades: ");
        for (const root of roots.slice(0, 5)) {
          const pick = el("button", root, "link");
          pick.type = "button";
          pick.addEventListener("click", () => select(root));
          line.append(pick, document.createTextNode(" "));
        }
        item.append(line);
      }
      list.append(item);
    }
  }

  // ---- refresh loop ---------------------------------------------------------------------------

  const PANELS = [
    ["summary", loadSummary],
    ["spread", loadSpread],
    ["cascades", loadCascades],
    ["buzz", loadBuzz],
    ["alerts", loadAlerts],
  ];

  /** 401: the key is missing or wrong: forget it and ask again. 403: the key cannot
   * read this campaign: ask for another campaign or key. Returns whether it handled
   * ``err``. */
  function handleAuth(err) {
    if (!(err instanceof ApiError) || (err.status !== 401 && err.status !== 403)) return false;
    if (err.status === 401) {
      sessionStorage.removeItem(KEY_STORE);
      state.key = null;
      showConnect(`The server refused the key (${err.reason}): ${err.message}. Enter a read key.`);
    } else {
      showConnect(`This key cannot read campaign ${state.campaign} (${err.reason}): ` +
        `${err.message}. Choose another campaign or key.`);
    }
    return true;
  }

  async function refresh() {
    if (!state.key || state.paused) return;
    if (state.running) {
      state.again = true;
      return;
    }
    state.running = true;
    clearTimeout(state.timer);
    let failed = 0;
    try {
      const results = await Promise.allSettled(PANELS.map(([, load]) => load()));
      const treeResult = state.selected
        ? (await Promise.allSettled([loadTree()]))[0]
        : { status: "fulfilled" };
      const sections = [...PANELS.map(([id]) => $(id).closest("section")), $("tree").closest("section")];
      for (const [i, result] of [...results, treeResult].entries()) {
        const err = result.status === "rejected" ? result.reason : null;
        if (err && handleAuth(err)) return;
        if (err) failed++;
        panelError(sections[i], err);
      }
      $("status").textContent =
        `${state.campaign}: updated ${new Date().toLocaleTimeString()}` +
        (failed ? ` (${failed} panel${failed > 1 ? "s" : ""} failed)` : "") +
        ($("live").checked ? "" : " (paused)");
    } finally {
      state.running = false;
      if (state.again && state.key) {
        state.again = false;
        refresh();
      } else {
        schedule();
      }
    }
  }

  function schedule() {
    clearTimeout(state.timer);
    if (state.key && !state.paused && $("live").checked && !document.hidden) {
      state.timer = setTimeout(refresh, REFRESH_MS);
    }
  }

  // ---- connect form -------------------------------------------------------------------------

  function showConnect(message) {
    state.paused = true;
    clearTimeout(state.timer);
    $("board").hidden = true;
    $("controls").hidden = true;
    $("connect").hidden = false;
    $("connect-message").textContent = message || "";
    $("campaign").value = state.campaign || "";
    $("key").value = state.key || "";
    (state.campaign ? $("key") : $("campaign")).focus();
  }

  function start() {
    state.paused = false;
    $("connect").hidden = true;
    $("board").hidden = false;
    $("controls").hidden = false;
    $("campaign-name").textContent = state.campaign;
    const url = new URL(location.href);
    url.searchParams.set("campaign", state.campaign);
    history.replaceState(null, "", url);
    refresh();
  }

  function init() {
    state.campaign = new URL(location.href).searchParams.get("campaign");
    state.key = sessionStorage.getItem(KEY_STORE);
    $("connect").addEventListener("submit", (event) => {
      event.preventDefault();
      state.key = $("key").value.trim();
      const campaign = $("campaign").value.trim();
      if (campaign !== state.campaign) state.selected = null;
      state.campaign = campaign;
      sessionStorage.setItem(KEY_STORE, state.key);
      start();
    });
    $("change").addEventListener("click", () => showConnect(""));
    $("live").addEventListener("change", () => ($("live").checked ? refresh() : schedule()));
    for (const id of ["metric", "range"]) $(id).addEventListener("change", refresh);
    $("order-by").addEventListener("change", refresh);
    document.addEventListener("visibilitychange", () => {
      if (document.hidden) clearTimeout(state.timer);
      else if ($("live").checked) refresh();
    });
    if (state.key && state.campaign) start();
    else showConnect("");
  }

  init();
})();
