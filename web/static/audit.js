// Audit: verify the hash chain on the server and show the result.
"use strict";
document.getElementById("verify").addEventListener("click", async (ev) => {
  const box = document.getElementById("verify-result");
  ev.target.disabled = true;
  box.hidden = false; box.className = "result"; box.textContent = "Verifying…";
  const res = await FA.api("GET", "/ui/api/audit/verify");
  ev.target.disabled = false;
  if (res.status === 404) {
    box.textContent = "This appliance has no audit chain verification yet (it comes with the identity component).";
    return;
  }
  if (!res.ok) { box.className = "result bad"; box.textContent = "Verification failed to run: " + res.error.message; return; }
  const d = res.data || {};
  const ok = d.ok !== undefined ? d.ok : d.valid;
  box.className = "result " + (ok ? "ok" : "bad");
  const parts = [ok ? "Chain intact" : "Chain BROKEN"];
  for (const k of ["entries", "checked", "checkpoints", "first_bad", "broken_at", "message", "reason"]) {
    if (d[k] !== undefined && d[k] !== null && d[k] !== "") parts.push(k.replace("_", " ") + ": " + d[k]);
  }
  box.textContent = parts.join(" · ");
  FA.toast(ok ? "Audit chain verified" : "Audit chain verification found a problem", ok ? "ok" : "bad");
});
