// Hosts: add a host (key file or password) and confirm its host key by fingerprint; check
// (preflight then detect) and run playbooks with live per-host, per-step progress.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  let running = false;

  // Reload the hosts table or the host's facts only (the progress panel keeps the story of
  // the last run).
  function refreshTable() {
    const part = document.querySelector("[data-refresh-part]");
    if (!window.htmx || !part) { FA.refresh(); return Promise.resolve(); }
    const sel = "#" + part.id;
    return htmx.ajax("GET", location.pathname + location.search, { target: sel, select: sel, swap: "outerHTML" });
  }

  // --- host keys ---------------------------------------------------------------------------
  function askKey(name, fingerprint, message) {
    const box = $("key-confirm");
    if (!box) return;
    $("key-host").textContent = name;
    $("key-fingerprint").textContent = fingerprint;
    $("key-message").textContent = message || (name + " offers this SSH host key. Accept it only if it matches the host's own.");
    box.dataset.host = name;
    box.hidden = false;
    box.scrollIntoView({ block: "nearest" });
    $("key-accept").focus();
  }

  async function acceptKey() {
    const box = $("key-confirm"), name = box.dataset.host, fp = $("key-fingerprint").textContent;
    const button = $("key-accept");
    button.disabled = true;
    const res = await FA.api("POST", "/ui/api/hosts/" + encodeURIComponent(name) + "/accept-key", { fingerprint: fp });
    button.disabled = false;
    if (!res.ok) { FA.toast(res.error.message, "bad"); return; }
    box.hidden = true;
    FA.toast("Host key of " + name + " accepted", "ok");
    refreshTable();
  }

  // --- add a host ------------------------------------------------------------------------------
  function syncAuth() {
    const key = $("auth-key");
    if (!key) return;
    $("auth-key-fields").hidden = !key.checked;
    $("auth-password-fields").hidden = key.checked;
    $("host-private_key").required = key.checked;
    $("host-password").required = !key.checked;
  }

  function parseLabels(text) {
    const out = {};
    for (const part of text.split(",").map((s) => s.trim()).filter(Boolean)) {
      const at = part.indexOf("=");
      if (at < 1) return null;
      out[part.slice(0, at).trim()] = part.slice(at + 1).trim();
    }
    return out;
  }

  async function addHost(form) {
    if (!FA.validate(form)) return;
    const labelsInput = form.querySelector('[name="labels"]');
    const labels = parseLabels(labelsInput.value);
    if (labels === null) { FA.setError(labelsInput, "Write labels as key=value, separated by commas."); labelsInput.focus(); return; }
    const body = {
      name: form.elements.name.value.trim(), address: form.elements.address.value.trim(),
      port: parseInt(form.elements.port.value, 10), user: form.elements.user.value.trim(),
      role: form.elements.role.value, labels, accept_host_key: $("host-accept").checked,
    };
    if (form.elements.jump_host.value) body.jump_host = form.elements.jump_host.value;
    if ($("auth-key").checked) {
      const file = $("host-private_key").files[0];
      const text = file ? await file.text() : "";
      if (!text.includes("PRIVATE KEY")) {
        FA.setError($("host-private_key"), "This file is not an OpenSSH or PEM private key."); $("host-private_key").focus(); return;
      }
      if (text.includes("ENCRYPTED")) {
        FA.setError($("host-private_key"), "This key is protected by a passphrase; the appliance needs a key without one (ssh-keygen -p -N '' -f KEY on a copy)."); $("host-private_key").focus(); return;
      }
      body.private_key = text;
    } else {
      body.password = $("host-password").value;
    }
    const button = $("add-submit");
    button.disabled = true;
    button.textContent = "Adding…";
    const res = await FA.api("POST", "/ui/api/hosts", body);
    button.disabled = false;
    button.textContent = "Add host";
    if (!res.ok) {
      const err = Object.assign({}, res.error);
      if (err.param === "private_key" && $("auth-password").checked) err.param = "password";
      FA.showApiError(form, err);
      return;
    }
    const r = res.data;
    form.reset();
    await FA.refresh();
    if (r.accepted) FA.toast("Host " + body.name + " added; " + r.message, "ok");
    else if (r.fingerprint) { FA.toast("Host " + body.name + " added; confirm its key", "ok"); askKey(body.name, r.fingerprint, r.message); }
    else FA.toast(r.message, "bad");
  }

  // --- runs ------------------------------------------------------------------------------------
  function startView(title) {
    const panel = $("progress-panel");
    panel.hidden = false;
    $("progress-h").textContent = title;
    $("progress-live").textContent = "live";
    $("progress-live").classList.add("on");
    $("progress-status").textContent = "Starting…";
    panel.scrollIntoView({ block: "start", behavior: "smooth" });
    return FA.ProgressView($("progress-hosts"), title);
  }
  function stopView() {
    $("progress-live").textContent = "finished";
    $("progress-live").classList.remove("on");
  }

  // Start one install and follow it; resolves true when it succeeded.
  async function runOne(view, playbook, hosts, vars, dryRun, form) {
    const res = await FA.api("POST", "/ui/api/installs", { playbook, hosts, vars: vars || {}, dry_run: !!dryRun });
    if (!res.ok) {
      $("progress-status").textContent = playbook + " did not start: " + res.error.message;
      if (form) FA.showApiError(form, res.error); else FA.toast(res.error.message, "bad");
      return false;
    }
    $("progress-status").textContent = playbook + (dryRun ? " (dry run)" : "") + " on " + hosts.join(", ") + " …";
    const done = await FA.followInstall(res.data.id, (ev) => {
      if (!ev.host) { $("progress-status").textContent = playbook + ": " + (ev.message || ev.status); return; }
      view.add(Object.assign({}, ev, { step: ev.step ? playbook + " · " + ev.step : "" }));
    });
    const ok = !!done && done.message.startsWith("success");
    $("progress-status").textContent = playbook + (dryRun ? " (dry run)" : "") + ": " + (done ? done.message : "the stream ended early; see the host's page");
    return ok;
  }

  async function check(name, button) {
    if (running) { FA.toast("A run is in progress; wait for it to finish.", "bad"); return; }
    running = true;
    if (button) button.disabled = true;
    const view = startView("Check " + name);
    let ok = await runOne(view, "preflight", [name]);
    if (ok) ok = await runOne(view, "detect", [name]);
    stopView();
    running = false;
    FA.toast(ok ? "Check of " + name + " passed; facts updated" : "Check of " + name + " failed", ok ? "ok" : "bad");
    if (button) button.disabled = false;
    refreshTable();
  }

  async function runPlaybook(form) {
    if (running) { FA.toast("A run is in progress; wait for it to finish.", "bad"); return; }
    if (!FA.validate(form)) return;
    const varsInput = $("run-vars");
    let vars = {};
    if (varsInput.value.trim()) {
      try { vars = JSON.parse(varsInput.value); } catch (e) { vars = null; }
      if (!vars || typeof vars !== "object" || Array.isArray(vars)) { FA.setError(varsInput, "Variables must be a JSON object."); varsInput.focus(); return; }
    }
    FA.setError(varsInput, "");
    const playbook = form.elements.playbook.value;
    const hosts = Array.from($("run-hosts").selectedOptions).map((o) => o.value);
    const dry = $("run-dry").checked;
    if (!dry && ["reset", "k3s-server", "k3s-agent", "engine-host"].includes(playbook) &&
        !window.confirm("Run " + playbook + " on " + hosts.join(", ") + "? It changes the host" + (hosts.length > 1 ? "s" : "") + ".")) return;
    running = true;
    $("run-start").disabled = true;
    const view = startView(playbook + (dry ? " (dry run)" : "") + " on " + hosts.join(", "));
    const ok = await runOne(view, playbook, hosts, vars, dry, form);
    stopView();
    running = false;
    $("run-start").disabled = false;
    FA.toast(playbook + (ok ? " finished" : " failed"), ok ? "ok" : "bad");
    refreshTable();
  }

  function describePlaybook() {
    const sel = $("run-playbook");
    if (!sel) return;
    const opt = sel.selectedOptions[0];
    $("run-playbook-about").textContent = opt ? opt.dataset.about : "";
    const needs = opt && opt.dataset.requires;
    $("run-requires").textContent = needs ? "JSON object; this playbook needs: " + needs : "JSON object, optional";
  }

  // --- wiring (delegated: htmx swaps parts of the page) ----------------------------------------
  document.addEventListener("submit", (ev) => {
    if (ev.target.id === "add-host") { ev.preventDefault(); addHost(ev.target); }
    else if (ev.target.id === "run-form") { ev.preventDefault(); runPlaybook(ev.target); }
  });
  document.addEventListener("change", (ev) => {
    if (ev.target.name === "auth") syncAuth();
    if (ev.target.id === "run-playbook") describePlaybook();
  });
  document.addEventListener("click", (ev) => {
    const t = ev.target;
    const show = t.closest("[data-show]");
    if (show) {
      const form = document.querySelector(show.dataset.reset);
      if (form) { form.reset(); syncAuth(); }
      document.querySelector(show.dataset.show).scrollIntoView({ behavior: "smooth" });
      if (form) form.querySelector("input").focus();
      return;
    }
    const checkBtn = t.closest("[data-check]");
    if (checkBtn) { check(checkBtn.dataset.check, checkBtn); return; }
    const runOn = t.closest("[data-run-on]");
    if (runOn) {
      for (const o of $("run-hosts").options) o.selected = o.value === runOn.dataset.runOn;
      $("run-panel").scrollIntoView({ behavior: "smooth" });
      $("run-playbook").focus();
      return;
    }
    const accept = t.closest("[data-accept-key]");
    if (accept) { askKey(accept.dataset.acceptKey, accept.dataset.fingerprint); return; }
    if (t.closest("#key-accept")) { acceptKey(); return; }
    if (t.closest("#key-later")) { $("key-confirm").hidden = true; }
  });
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && $("key-confirm") && !$("key-confirm").hidden) $("key-confirm").hidden = true;
  });
  document.addEventListener("fa:refreshed", () => { syncAuth(); describePlaybook(); });
  syncAuth();
  describePlaybook();
})();
