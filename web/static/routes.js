// Routes: fill the form to edit a route; test a model with one streamed request.
"use strict";
document.addEventListener("click", async (ev) => {
  const edit = ev.target.closest("[data-edit-route]");
  if (edit) {
    const r = JSON.parse(edit.dataset.editRoute);
    const form = document.getElementById("route-form");
    for (const k of Object.keys(r)) { const el = form.querySelector('[name="' + k + '"]'); if (el) el.value = r[k]; }
    form.scrollIntoView({ behavior: "smooth" });
    form.querySelector('[name="targets"]').focus();
    return;
  }
  const show = ev.target.closest("[data-show]");
  if (show) {
    const form = document.querySelector(show.dataset.reset);
    if (form) form.reset();
    document.querySelector(show.dataset.show).scrollIntoView({ behavior: "smooth" });
    form.querySelector("input").focus();
    return;
  }
  const test = ev.target.closest("[data-test-model]");
  if (!test) return;
  const model = test.dataset.testModel;
  const box = document.getElementById("test-result");
  box.hidden = false; box.className = "result"; box.textContent = "Testing " + model + "…";
  test.disabled = true;
  const started = performance.now();
  let line;
  try {
    if (test.dataset.task === "embedding") {
      const res = await FA.api("POST", "/ui/v1/embeddings", { model, input: "connectivity test" });
      const ms = performance.now() - started;
      line = res.ok ? ["ok", model + ": HTTP " + res.status + " in " + FA.fmt(ms) + " ms, " + res.data.data[0].embedding.length + " dimensions"]
        : ["bad", model + ": HTTP " + res.status + " after " + FA.fmt(ms) + " ms: " + res.error.message];
    } else {
      const r = await FA.streamChat("/ui/v1/chat/completions", { model, max_tokens: 8, temperature: 0, messages: [{ role: "user", content: "Say OK." }] }, {});
      line = r.error ? ["bad", model + ": HTTP " + r.status + " after " + FA.fmt(r.total) + " ms: " + r.error]
        : ["ok", model + ": HTTP " + r.status + ", first token " + FA.fmt(r.ttft) + " ms, total " + FA.fmt(r.total) + " ms, answer “" + r.text.trim().slice(0, 80) + "”"];
    }
  } catch (e) { line = ["bad", model + ": " + e.message]; }
  test.disabled = false;
  box.className = "result " + line[0];
  box.textContent = line[1];
});
