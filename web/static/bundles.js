// Bundles: import from a path on this host with live progress (server-sent events over fetch).
"use strict";
(function () {
  const form = document.getElementById("import-form");
  const bar = document.getElementById("import-bar"), status = document.getElementById("import-status");
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (!FA.validate(form)) return;
    const body = FA.formData(form);
    document.getElementById("import-progress").hidden = false;
    bar.value = 0; status.textContent = "Starting…";
    const button = document.getElementById("import"); button.disabled = true;
    const resp = await fetch("/ui/bundles/import", { method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": document.querySelector('meta[name="csrf-token"]').content },
      body: JSON.stringify(body) });
    if (!resp.ok) {
      button.disabled = false;
      let msg = resp.status + ""; try { msg = (await resp.json()).error.message; } catch (e) { /* not JSON */ }
      FA.showApiError(form, { message: msg }); status.textContent = msg; return;
    }
    const reader = resp.body.getReader(), decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const lines = buffer.slice(0, cut).split("\n"); buffer = buffer.slice(cut + 2);
        const event = (lines.find((l) => l.startsWith("event:")) || "event: message").slice(6).trim();
        const data = JSON.parse((lines.find((l) => l.startsWith("data:")) || "data: {}").slice(5));
        if (event === "progress") {
          const pct = data.total ? (100 * data.done) / data.total : 0;
          bar.value = pct;
          status.textContent = FA.fmt(pct, 1) + "% · " + FA.fmt(data.done / 1048576, 1) + " of " + FA.fmt(data.total / 1048576, 1) + " MiB · " +
            FA.fmt(data.rate / 1048576, 1) + " MiB/s" + (data.eta_s !== null ? " · " + FA.fmt(data.eta_s) + " s left" : "");
        } else if (event === "done") {
          bar.value = 100;
          status.textContent = data.already_imported ? "Already imported: " + data.name + " " + data.version
            : "Imported " + data.name + " " + data.version + ": " + (data.models.join(", ") || "no models") + (data.images.length ? ", images " + data.images.join(", ") : "");
          FA.toast(status.textContent, "ok");
          FA.refresh();
        } else if (event === "failed") {
          status.textContent = "Import failed: " + data.message;
          FA.toast(status.textContent, "bad");
        }
      }
    }
    button.disabled = false;
  });
})();
