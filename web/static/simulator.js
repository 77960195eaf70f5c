// Simulator: recommend layouts, then predict latency against concurrency for the winner.
"use strict";
// Listeners are delegated: the page is swapped in place (FA.refresh) after a calibration.
(function () {
  if (!document.getElementById("sim-form")) return;
  let curve = null;
  const $ = (id) => document.getElementById(id);

  async function loadRuns() {
    const res = await FA.api("GET", "/ui/api/sim/runs?limit=20");
    const box = $("runs");
    if (!res.ok) { box.innerHTML = '<p class="muted">Run history is not available.</p>'; return; }
    const runs = res.data.runs || [];
    if (!runs.length) { box.innerHTML = '<div class="empty"><strong>No runs yet</strong>Each prediction and recommendation is kept here.</div>'; return; }
    box.innerHTML = '<div class="table-wrap"><table><thead><tr><th>When</th><th>Kind</th><th>Model</th><th>Method</th><th>Result</th></tr></thead><tbody>' +
      runs.map((r) => {
        const s = r.summary || {};
        const result = r.kind === "predict" ? "TTFT " + FA.fmt(s.ttft_ms) + " ms, TPOT " + FA.fmt(s.tpot_ms, 1) + " ms"
          : (s.feasible ? "feasible" : "infeasible") + (s.top ? ", best " + FA.esc(s.top.deployment.gpu) + " ×" + (s.top.deployment.tp * s.top.deployment.pp * s.top.deployment.replicas) : "");
        return "<tr><td>" + new Date(r.created_at * 1000).toLocaleString() + "</td><td>" + FA.esc(r.kind) + "</td><td>" + FA.esc(r.model) + "</td><td>" + FA.esc(r.method) + "</td><td>" + result + "</td></tr>";
      }).join("") + "</tbody></table></div>";
  }

  async function calibrate(ev) {
    const cal = ev.target;
    ev.preventDefault();
    if (!FA.validate(cal)) return;
    const file = cal.elements.measurements.files[0];
    const button = $("calibrate"); button.disabled = true; button.textContent = "Training…";
    const res = await FA.api("POST", "/ui/api/sim/calibration", file.type ? file : new Blob([file], { type: "text/csv" }));
    button.disabled = false; button.textContent = "Calibrate";
    if (!res.ok) { FA.showApiError(cal, res.error); FA.toast(res.error.message, "bad"); return; }
    FA.toast("Calibrated with " + res.data.calibration.site_rows + " site measurements", "ok");
    FA.refresh();
  }

  async function recommend(ev) {
    const form = ev.target;
    ev.preventDefault();
    if (!FA.validate(form)) return;
    const f = FA.formData(form);
    const body = { model: f.model, gpu: f.gpu, gpus: f.gpus, input_tokens: f.input_tokens, output_tokens: f.output_tokens, concurrency: f.concurrency };
    if (f.ttft_ms) body.ttft_ms = f.ttft_ms;
    if (f.tpot_ms) body.tpot_ms = f.tpot_ms;
    const button = $("recommend"); button.disabled = true; button.textContent = "Searching…";
    const res = await FA.api("POST", "/ui/api/sim/recommend", body);
    button.disabled = false; button.textContent = "Recommend";
    const explain = $("sim-explain");
    if (!res.ok) { FA.showApiError(form, res.error); explain.hidden = false; explain.className = "result bad"; explain.textContent = res.error.message; return; }
    const rec = res.data;
    explain.hidden = false; explain.className = "result " + (rec.feasible ? "ok" : "bad");
    explain.textContent = rec.explanation + " (" + FA.fmt(rec.evaluated) + " layouts in " + FA.fmt(rec.elapsed_ms) + " ms, " + rec.method + ")";
    const tbody = $("ranked").tBodies[0];
    tbody.innerHTML = rec.candidates.map((c) => { const d = c.deployment; return "<tr><td class=\"num\">" + c.rank + "</td><td>" + FA.esc(d.gpu) + '</td><td class="num">' + d.tp + "×" + d.pp + "×" + d.replicas +
      "</td><td>" + FA.esc(d.dtype) + '</td><td class="num">' + c.max_batch + '</td><td class="num">' + FA.fmt(c.ttft_ms) + '</td><td class="num">' + FA.fmt(c.tpot_ms, 1) +
      '</td><td class="num">' + FA.fmt(c.tokens_per_s_per_user, 1) + '</td><td class="num">' + FA.fmt(c.total_tokens_per_s) + '</td><td class="num">' + FA.fmt(c.memory_gib_per_gpu, 1) +
      '</td><td class="num">' + FA.fmt(c.cost_per_hour, 2) + '</td><td class="num">' + FA.fmt(c.cost_per_million_tokens, 3) + '</td><td><span class="badge ' + (c.meets_slo ? "ok" : "bad") + '">' + (c.meets_slo ? "meets" : FA.esc(c.violations.join("; ") || "misses")) + "</span></td></tr>"; }).join("");
    $("ranked-panel").hidden = false;
    if (rec.candidates.length) await drawCurve(f, rec.candidates[0].deployment);
    loadRuns();
  }

  document.addEventListener("submit", (ev) => {
    if (ev.target.id === "sim-form") recommend(ev);
    else if (ev.target.id === "cal-form") calibrate(ev);
  });
  document.addEventListener("fa:refreshed", () => {
    curve = null;  // its element was replaced
    if ($("runs")) loadRuns();
  });

  async function drawCurve(f, d) {
    const batches = [1, 2, 4, 8, 16, 32, 64, 128];
    const points = await Promise.all(batches.map((b) => FA.api("POST", "/ui/api/sim/predict", {
      model: f.model, gpu: d.gpu, tp: d.tp, pp: d.pp, dtype: d.dtype, engine: d.engine,
      input_tokens: f.input_tokens, output_tokens: f.output_tokens, batch: b })));
    const ok = points.map((p, i) => [batches[i], p]).filter(([, p]) => p.ok && p.data.fits !== false);
    const data = [ok.map(([b]) => b), ok.map(([, p]) => p.data.ttft_ms), ok.map(([, p]) => p.data.tpot_ms), ok.map(([, p]) => p.data.e2e_s * 1000)];
    $("curve-panel").hidden = false;
    $("curve-label").textContent = "(" + d.gpu + ", TP " + d.tp + ", PP " + d.pp + ", " + d.dtype + ")";
    if (!curve) curve = FA.chart($("curve"), { time: false, xName: "Concurrency", xLabel: "concurrent requests", yLabel: "ms", points: true,
      series: [{ label: "TTFT", unit: " ms" }, { label: "TPOT", unit: " ms" }, { label: "end-to-end", unit: " ms" }], data });
    else curve.update(data);
  }
  loadRuns();
})();
