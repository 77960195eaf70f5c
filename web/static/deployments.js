// Deployments: model + target → the simulator's proposal → confirm → live progress until the
// route serves (playbook steps from /api/installs/{id}/events, the state from the deployment).
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  let current = null, following = null;

  function refreshList() {
    if (!window.htmx || !$("deps-panel")) { FA.refresh(); return Promise.resolve(); }
    return htmx.ajax("GET", location.pathname + location.search, { target: "#deps-panel", select: "#deps-panel", swap: "outerHTML" });
  }

  function fact(dl, label, value) {
    const dt = document.createElement("dt"), dd = document.createElement("dd");
    dt.textContent = label;
    if (value instanceof Node) dd.appendChild(value); else dd.textContent = value;
    dl.append(dt, dd);
  }
  function stateBadge(status) {
    const b = $("proposal-state");
    b.className = "badge " + ({ serving: "ok", deploying: "starting", failed: "failed" }[status] || "plain");
    b.textContent = status;
  }

  function showProposal(dep, { actions = true } = {}) {
    current = dep;
    const p = dep.proposal, dl = $("proposal-facts");
    dl.replaceChildren();
    fact(dl, "Model", dep.model);
    fact(dl, "Target", dep.target + " (" + dep.target_kind + ")");
    fact(dl, "Route", dep.route);
    fact(dl, "Engine", p.engine === "vllm" ? "vLLM-compatible server" : "the appliance's engine (llama.cpp)");
    fact(dl, "Accelerators", p.gpu ? p.gpus + " × " + p.gpu : "none (CPU)");
    if (p.gpu) fact(dl, "Tensor parallel", String(p.tensor_parallel));
    fact(dl, "Max batch", String(p.max_batch));
    fact(dl, "Max model length", FA.fmt(p.max_model_len) + " tokens");
    if (p.gpu) fact(dl, "GPU memory use", FA.fmt(p.gpu_memory_utilization * 100) + "%");
    const pr = p.predicted || {};
    if (pr.ttft_ms !== undefined) {
      fact(dl, "Predicted", "TTFT " + FA.fmt(pr.ttft_ms) + " ms · TPOT " + FA.fmt(pr.tpot_ms, 1) + " ms · " +
        FA.fmt(pr.total_tokens_per_s) + " tokens/s · " + FA.fmt(pr.memory_gib_per_gpu, 1) + " GiB per GPU" +
        (pr.meets_slo === false ? " · misses the SLO" : ""));
    }
    const notes = $("proposal-notes");
    notes.replaceChildren(...(p.notes || []).map((n) => { const li = document.createElement("li"); li.textContent = n; return li; }));
    stateBadge(dep.status);
    $("proposal-h").textContent = "Proposal " + dep.id;
    $("proposal-actions").hidden = !actions;
    $("confirm").textContent = dep.status === "failed" ? "Deploy again" : "Confirm and deploy";
    $("deploy-progress").hidden = true;
    const panel = $("proposal-panel");
    panel.hidden = false;
    panel.scrollIntoView({ block: "start", behavior: "smooth" });
    if (actions) $("confirm").focus();
  }

  async function propose(form) {
    if (!FA.validate(form)) return;
    const data = FA.formData(form);
    const [kind, ...rest] = data.target.split(":");
    const body = { model: data.model, target_kind: kind, target: rest.join(":") };
    for (const k of ["input_tokens", "output_tokens", "concurrency", "gpus"]) if (data[k] !== undefined) body[k] = data[k];
    if (data.route) body.route = data.route;
    if (data.gpu) body.gpu = data.gpu;
    const button = $("propose");
    button.disabled = true;
    button.textContent = "Asking the simulator…";
    const res = await FA.api("POST", "/ui/api/deployments", body);
    button.disabled = false;
    button.textContent = "Propose a configuration";
    if (!res.ok) {
      const err = Object.assign({}, res.error);
      if (err.param === "target_kind") err.param = "target";
      FA.showApiError(form, err);
      return;
    }
    showProposal(res.data);
    refreshList();
  }

  async function follow(dep) {
    if (following === dep.id) return;
    following = dep.id;
    const started = Date.now();
    $("deploy-progress").hidden = false;
    const status = $("deploy-status");
    status.textContent = "Deploying " + dep.model + " on " + dep.target + "…";
    const view = FA.ProgressView($("deploy-hosts"), dep.id);
    let done = false;
    if (dep.target_kind === "host" && dep.install_id) {
      FA.followInstall(dep.install_id, (ev) => {
        if (!ev.host) { if (!done) status.textContent = (ev.message || ev.status); return; }
        view.add(ev);
      });
    }
    let final = dep;
    while (!done) {
      await new Promise((r) => setTimeout(r, 1500));
      const res = await FA.api("GET", "/ui/api/deployments/" + encodeURIComponent(dep.id));
      if (!res.ok) continue;
      final = res.data;
      stateBadge(final.status);
      if (final.status === "deploying") {
        if (dep.target_kind === "cluster") status.textContent = "Rolling out on " + dep.target + "… " + Math.round((Date.now() - started) / 1000) + " s";
        continue;
      }
      done = true;
    }
    following = null;
    if (final.status === "serving") {
      status.textContent = "Serving: route " + final.route + " answers through the gateway. " + (final.message || "");
      FA.toast(final.model + " is serving on " + final.target, "ok");
    } else {
      status.textContent = "Deployment " + final.status + ": " + (final.message || "no detail");
      FA.toast("Deployment of " + final.model + " " + final.status, "bad");
      $("proposal-actions").hidden = false;
      $("confirm").textContent = "Deploy again";
    }
    refreshList();
  }

  async function confirmCurrent() {
    if (!current) return;
    const button = $("confirm");
    button.disabled = true;
    const res = await FA.api("POST", "/ui/api/deployments/" + encodeURIComponent(current.id) + "/confirm");
    button.disabled = false;
    if (!res.ok) { FA.toast(res.error.message, "bad"); return; }
    $("proposal-actions").hidden = true;
    stateBadge(res.data.status);
    refreshList();
    follow(res.data);
  }

  async function discardCurrent() {
    if (!current) return;
    const res = await FA.api("DELETE", "/ui/api/deployments/" + encodeURIComponent(current.id));
    if (!res.ok) { FA.toast(res.error.message, "bad"); return; }
    $("proposal-panel").hidden = true;
    FA.toast("Proposal " + current.id + " discarded", "ok");
    current = null;
    refreshList();
    const first = document.querySelector("#propose-form select");
    if (first) first.focus();
  }

  async function load(id, then) {
    const res = await FA.api("GET", "/ui/api/deployments/" + encodeURIComponent(id));
    if (!res.ok) { FA.toast(res.error.message, "bad"); return; }
    then(res.data);
  }

  document.addEventListener("submit", (ev) => {
    if (ev.target.id === "propose-form") { ev.preventDefault(); propose(ev.target); }
  });
  document.addEventListener("click", (ev) => {
    const t = ev.target;
    if (t.closest("#confirm")) { confirmCurrent(); return; }
    if (t.closest("#discard")) { discardCurrent(); return; }
    const review = t.closest("[data-review]");
    if (review) { load(review.dataset.review, (d) => showProposal(d)); return; }
    const fol = t.closest("[data-follow]");
    if (fol) load(fol.dataset.follow, (d) => { showProposal(d, { actions: false }); follow(d); });
  });
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && $("proposal-panel") && !$("proposal-panel").hidden && current && current.status === "proposed" && !following) {
      $("proposal-panel").hidden = true;
    }
  });
})();
