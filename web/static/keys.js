// API keys: show a new key's secret once, then refresh the table.
"use strict";
document.addEventListener("fa:done", (ev) => {
  if (ev.target.id !== "create-key") return;
  const created = ev.detail.data;
  const name = ev.target.querySelector('[name="name"]').value.trim();
  ev.target.reset();
  htmx.ajax("GET", location.pathname + location.search, { target: "#keys-panel", select: "#keys-panel", swap: "outerHTML" }).then(() => {
    document.getElementById("new-secret-name").textContent = name + " (" + created.id + ")";
    document.getElementById("new-secret-value").textContent = created.key;
    const box = document.getElementById("new-secret");
    box.hidden = false;
    box.querySelector("button").focus();
    FA.toast("Key " + name + " created", "ok");
  });
});
