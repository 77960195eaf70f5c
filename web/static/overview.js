// Overview: draw the first snapshot, then follow /ui/events (server-sent events).
"use strict";
(function () {
  const first = JSON.parse(document.getElementById("overview-data").textContent);
  const defs = {
    rps: [{ label: "requests/s", digits: 3 }],
    tps: [{ label: "tokens/s", digits: 2 }],
    ttft: [{ label: "P50", unit: " ms" }, { label: "P95", unit: " ms" }, { label: "P99", unit: " ms" }],
    latency: [{ label: "P50", unit: " ms" }, { label: "P95", unit: " ms" }, { label: "P99", unit: " ms" }],
    error_rate: [{ label: "errors", unit: " %", digits: 2 }],
  };
  const keys = { rps: ["rps"], tps: ["tps"], error_rate: ["error_rate"],
    ttft: ["ttft_p50", "ttft_p95", "ttft_p99"], latency: ["latency_p50", "latency_p95", "latency_p99"] };
  const charts = {};
  function dataFor(name, s) { return [s.t].concat(keys[name].map((k) => s[k])); }
  document.querySelectorAll("[data-chart]").forEach((el) => {
    const name = el.dataset.chart;
    // percentiles exist only for minutes with traffic: show each as a point too
    charts[name] = FA.chart(el, { series: defs[name], data: dataFor(name, first.series), points: name === "ttft" || name === "latency" });
  });

  function table(rows, head, render) {
    if (!rows.length) return '<div class="empty"><strong>No traffic yet</strong>Requests in this window show here.</div>';
    return '<div class="table-wrap"><table><thead><tr>' + head.map((h, i) => "<th" + (i ? ' class="num"' : "") + ">" + h + "</th>").join("") +
      "</tr></thead><tbody>" + rows.map(render).join("") + "</tbody></table></div>";
  }
  function render(snap) {
    FA.lastSnapshot = snap;
    for (const el of document.querySelectorAll("[data-k]")) {
      const k = el.dataset.k;
      const v = k === "in_flight" ? snap.in_flight : snap.totals[k];
      el.textContent = FA.fmt(v, el.hasAttribute("data-ms") ? 0 : (k.endsWith("_1m") ? 3 : 2));
    }
    for (const name in charts) charts[name].update(dataFor(name, snap.series));
    const row = (r, label) => "<tr><td>" + FA.esc(label) + '</td><td class="num">' + FA.fmt(r.requests) + '</td><td class="num">' + FA.fmt(r.tokens) + '</td><td class="num">' + FA.fmt(r.errors) + "</td></tr>";
    document.getElementById("top-models").innerHTML = table(snap.top_models, ["Model", "Requests", "Tokens", "Errors"], (r) => row(r, r.name));
    document.getElementById("top-keys").innerHTML = table(snap.top_keys, ["Key", "Requests", "Tokens", "Errors"], (r) => row(r, r.label + (r.label !== r.name ? " (" + r.name + ")" : "")));
    const engines = snap.engines.map((e) => "<tr><td>" + FA.esc(e.name) + " <span class=\"hint\">" + FA.esc(e.task) + '</span></td><td><span class="badge ' + FA.esc(e.state) + '">' + FA.esc(e.state) + '</span></td><td class="num">' + e.restarts + "</td><td>" + FA.esc(e.last_error || "") + "</td></tr>");
    const ups = snap.upstreams.map((u) => "<tr><td>" + FA.esc(u.name) + ' <span class="hint">' + FA.esc(u.kind) + '</span></td><td><span class="badge ' + FA.esc(u.breaker) + '">breaker ' + FA.esc(u.breaker.replace("_", " ")) + '</span></td><td class="num">' + u.in_flight + " in flight</td><td class=\"mono\">" + FA.esc(u.base_url) + "</td></tr>");
    document.getElementById("health-tables").innerHTML =
      (engines.length ? '<div class="table-wrap"><table><caption class="sr-only">Engines</caption><thead><tr><th>Engine</th><th>State</th><th class="num">Restarts</th><th>Last error</th></tr></thead><tbody>' + engines.join("") + "</tbody></table></div>"
        : '<div class="empty"><strong>No local engines</strong>Import a bundle with a model to serve it here.</div>') +
      (ups.length ? '<div class="table-wrap"><table><caption class="sr-only">Upstreams</caption><thead><tr><th>Upstream</th><th>Breaker</th><th class="num">Load</th><th>URL</th></tr></thead><tbody>' + ups.join("") + "</tbody></table></div>"
        : '<p class="hint">No upstreams configured.</p>');
    const h = document.getElementById("health");
    h.className = "badge " + snap.health.state;
    h.title = snap.health.detail;
    h.firstChild.textContent = snap.health.text;
  }
  render(first);

  const live = document.getElementById("live");
  const source = new EventSource("/ui/events?window=" + encodeURIComponent(first.window));
  source.addEventListener("overview", (ev) => { render(JSON.parse(ev.data)); live.textContent = "Live"; live.classList.add("on"); });
  source.onerror = () => { live.textContent = "Reconnecting…"; live.classList.remove("on"); };
  window.addEventListener("pagehide", () => source.close());
})();
