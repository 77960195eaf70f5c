// Bundles: import from a path on this host (progress as server-sent events over fetch), or
// upload a tar from this computer (XMLHttpRequest for upload progress, then the import job
// is polled until it ends).
"use strict";
// Listeners are delegated and each import's progress is kept in `state`: FA.refresh swaps
// #main in place, so after a refresh the elements are new and are drawn again from `state`.
(function () {
  if (!document.getElementById("import-form")) return;
  const $ = (id) => document.getElementById(id);
  const state = {
    path: { busy: false, shown: false, pct: 0, text: "" },
    // phase: "" | "uploading" | "importing" | "done" | "failed"; title and error once it ended
    upload: { phase: "", sent: 0, total: 0, importPct: 0, text: "", title: "", result: null, error: "" },
  };

  function size(n) {
    const units = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return FA.fmt(n, i ? 1 : 0) + " " + units[i];
  }
  function left(s) {
    if (s === null || s === undefined || !isFinite(s)) return "";
    s = Math.max(0, Math.round(s));
    if (s < 60) return s + " s left";
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s left";
    return Math.floor(s / 3600) + " h " + Math.round((s % 3600) / 60) + " min left";
  }
  function progressText(pct, done, total, rate, eta) {
    return [FA.fmt(pct, 1) + "%", size(done) + " of " + size(total),
      rate ? size(rate) + "/s" : "", left(eta)].filter(Boolean).join(" · ");
  }
  function setText(el, text) { if (el && el.textContent !== text) el.textContent = text; }

  // --- drawing from state (also after each in-place refresh) ---------------------------------
  function resultNodes(u) {
    const head = document.createElement("strong");
    head.textContent = u.title;
    if (u.phase === "failed") {
      const p = document.createElement("p");
      p.textContent = u.error;
      return [head, p];
    }
    const r = u.result;
    const facts = document.createElement("dl");
    facts.className = "facts";
    const rows = [["Models", r.models.join(", ") || "none"], ["Signed by", r.signed_by || "unsigned"],
      ["Copied", size(r.bytes_copied) + (r.bytes_skipped ? " (" + size(r.bytes_skipped) + " already here)" : "")]];
    if (r.images && r.images.length) rows.splice(1, 0, ["Images", r.images.join(", ")]);
    for (const [k, v] of rows) {
      const dt = document.createElement("dt"), dd = document.createElement("dd");
      dt.textContent = k; dd.textContent = v;
      facts.append(dt, dd);
    }
    return [head, facts];
  }

  function draw() {
    const p = state.path, u = state.upload;
    if ($("import-form")) {
      $("import").disabled = p.busy;
      $("import-progress").hidden = !p.shown;
      $("import-bar").value = p.pct;
      setText($("import-status"), p.text);
    }
    if ($("upload-form")) {
      const running = u.phase === "uploading" || u.phase === "importing";
      $("upload").disabled = running;
      $("upload").textContent = running ? "Uploading…" : "Upload";
      $("upload-progress").hidden = !running;
      $("upload-bar").value = u.total ? (100 * u.sent) / u.total : 0;
      $("upload-import").hidden = u.phase !== "importing";
      $("upload-import-bar").value = u.importPct;
      const box = $("upload-result"), ended = u.phase === "done" || u.phase === "failed";
      // once ended, the result box shows what the status line announces
      setText($("upload-status"), u.text);
      $("upload-status").classList.toggle("sr-only", ended);
      box.hidden = !ended;
      box.classList.toggle("ok", u.phase === "done");
      box.classList.toggle("bad", u.phase === "failed");
      if (ended && box.dataset.drawn !== u.phase + u.text) {
        box.replaceChildren(...resultNodes(u));
        box.dataset.drawn = u.phase + u.text;
      }
    }
  }
  document.addEventListener("fa:refreshed", draw);

  // --- import from a path on this host -----------------------------------------------------
  async function importPath(form) {
    if (!FA.validate(form)) return;
    const p = state.path;
    Object.assign(p, { busy: true, shown: true, pct: 0, text: "Starting…" });
    draw();
    let resp;
    try {
      resp = await fetch("/ui/bundles/import", { method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": FA.csrf() },
        body: JSON.stringify(FA.formData(form)) });
    } catch (e) {
      resp = null;
    }
    if (!resp || !resp.ok) {
      let msg = resp ? resp.status + "" : "The appliance did not answer.";
      try { msg = (await resp.json()).error.message; } catch (e) { /* not JSON */ }
      Object.assign(p, { busy: false, text: msg });
      draw();
      FA.showApiError($("import-form"), { message: msg });
      return;
    }
    for await (const { event, data: raw } of FA.sse(resp)) {
      const data = JSON.parse(raw || "{}");
      if (event === "progress") {
        p.pct = data.total ? (100 * data.done) / data.total : 0;
        p.text = progressText(p.pct, data.done, data.total, data.rate, data.eta_s);
      } else if (event === "done") {
        p.pct = 100;
        p.text = data.already_imported ? "Already imported: " + data.name + " " + data.version
          : "Imported " + data.name + " " + data.version + ": " + (data.models.join(", ") || "no models") + (data.images.length ? ", images " + data.images.join(", ") : "");
        FA.toast(p.text, "ok");
        FA.refresh();
      } else if (event === "failed") {
        p.text = "Import failed: " + data.message;
        FA.toast(p.text, "bad");
      }
      draw();
    }
    p.busy = false;
    draw();
  }

  // --- upload a tar from this computer -----------------------------------------------------
  function finish(phase, title, extra) {
    const u = Object.assign(state.upload, { phase, title }, extra);
    u.text = title + (u.error ? ": " + u.error : "");
    FA.toast(u.text, phase === "done" ? "ok" : "bad");
    draw();
    if (phase === "done") FA.refresh();
  }

  function errorMessage(xhr) {
    try { return JSON.parse(xhr.responseText).error.message; } catch (e) { /* not JSON */ }
    return xhr.status + " " + xhr.statusText;
  }

  function upload(form) {
    if (!FA.validate(form)) return;
    const file = form.elements.bundle_tar.files[0];
    const u = state.upload, started = performance.now();
    Object.assign(u, { phase: "uploading", sent: 0, total: file.size, importPct: 0, result: null,
      title: "", error: "", text: "Uploading " + file.name + "…" });
    draw();
    const xhr = new XMLHttpRequest();
    const query = new URLSearchParams({ filename: file.name });
    if (form.elements.allow_unsigned.checked) query.set("allow_unsigned", "1");
    xhr.open("POST", "/ui/api/bundles?" + query);
    xhr.setRequestHeader("X-CSRF-Token", FA.csrf());
    xhr.setRequestHeader("Content-Type", "application/x-tar");
    let shown = 0;
    xhr.upload.addEventListener("progress", (ev) => {
      u.sent = ev.loaded;
      u.total = ev.lengthComputable ? ev.total : file.size;
      const now = performance.now(), rate = ev.loaded / Math.max((now - started) / 1000, 1e-3);
      // the bar follows every event; the announced text at most once a second
      if (now - shown > 1000 || ev.loaded === u.total) {
        shown = now;
        u.text = "Uploading " + file.name + ": " + progressText(u.total ? (100 * u.sent) / u.total : 0,
          u.sent, u.total, rate, rate ? (u.total - u.sent) / rate : null);
      }
      draw();
    });
    xhr.addEventListener("load", () => {
      if (xhr.status === 401) {
        FA.toast("Your session has ended; sign in again.", "bad");
        setTimeout(() => { location.href = "/sign-in?next=" + encodeURIComponent(location.pathname); }, 1200);
      }
      if (xhr.status !== 202) { finish("failed", "Upload failed", { error: errorMessage(xhr) }); return; }
      const job = JSON.parse(xhr.responseText);
      Object.assign(u, { phase: "importing", sent: u.total, text: "Uploaded " + file.name + "; importing…" });
      draw();
      follow(job.id);
    });
    xhr.addEventListener("error", () => {
      finish("failed", "Upload failed", { error: "the connection to the appliance broke off after " + size(u.sent) });
    });
    xhr.send(file);
  }

  // Poll the import job of an upload until it succeeds or fails.
  async function follow(id) {
    const u = state.upload;
    let misses = 0;
    for (;;) {
      const res = await FA.api("GET", "/ui/api/bundles/imports/" + encodeURIComponent(id));
      if (!res.ok) {
        if (res.status === 401 || ++misses > 10) { finish("failed", "Import status unavailable", { error: res.error.message }); return; }
      } else {
        misses = 0;
        const job = res.data;
        if (job.state === "success") {
          const r = job.result;
          finish("done", (r.already_imported ? "Already imported: " : "Imported ") + r.name + " " + r.version, { result: r, importPct: 100 });
          return;
        }
        if (job.state === "error") { finish("failed", "Import failed", { error: job.error }); return; }
        u.importPct = job.percent;
        u.text = job.state === "pending" ? "Uploaded; waiting to import…"
          : "Copying and verifying: " + progressText(job.percent, job.bytes_done, job.bytes_total, job.rate_bytes_s, job.eta_s);
        draw();
      }
      await new Promise((r) => setTimeout(r, 500));
    }
  }

  document.addEventListener("submit", (ev) => {
    if (ev.target.id === "import-form") { ev.preventDefault(); importPath(ev.target); }
    else if (ev.target.id === "upload-form") { ev.preventDefault(); upload(ev.target); }
  });
  // leaving the page would cut the upload off (the import itself runs on the appliance)
  window.addEventListener("beforeunload", (ev) => {
    if (state.upload.phase === "uploading") { ev.preventDefault(); ev.returnValue = ""; }
  });
})();
