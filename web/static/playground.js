// Playground: a multi-turn chat streamed through /ui/v1/chat/completions.
"use strict";
(function () {
  const form = document.getElementById("chat-form");
  if (!form) return;
  const $ = (id) => document.getElementById(id);
  const transcript = $("transcript");
  let history = [];
  let controller = null;

  function settings() {
    const body = { model: $("model").value, temperature: parseFloat($("temperature").value), max_tokens: parseInt($("max_tokens").value, 10) };
    const system = $("system").value.trim();
    return { body, system };
  }
  function messages(extra) {
    const { system } = settings();
    return (system ? [{ role: "system", content: system }] : []).concat(history, extra || []);
  }
  function curl() {
    const pre = $("curl");
    const { body } = settings();
    const example = Object.assign({}, body, { stream: true, messages: messages(history.length ? [] : [{ role: "user", content: $("message").value || "Hello!" }]) });
    pre.textContent = "curl " + pre.dataset.base + "/chat/completions \\\n  -H \"Authorization: Bearer $KEY\" -H \"Content-Type: application/json\" \\\n  -d '" +
      JSON.stringify(example).replace(/'/g, "'\\''") + "'";
  }
  function bubble(role, text) {
    const empty = $("transcript-empty");
    if (empty) empty.remove();
    const div = document.createElement("div");
    div.className = "msg " + role;
    const who = document.createElement("span");
    who.className = "who"; who.textContent = role === "user" ? "You" : "Assistant";
    const body = document.createElement("span");
    body.className = "text"; body.textContent = text;
    div.append(who, body);
    transcript.appendChild(div);
    transcript.scrollTop = transcript.scrollHeight;
    return body;
  }
  for (const id of ["model", "system", "temperature", "max_tokens", "message"]) $(id).addEventListener("input", curl);
  $("message").addEventListener("keydown", (ev) => { if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) form.requestSubmit(); });
  $("clear").addEventListener("click", () => { history = []; transcript.replaceChildren(); curl(); $("message").focus(); });
  $("stop").addEventListener("click", () => controller && controller.abort());

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const text = $("message").value.trim();
    const temp = $("temperature"), max = $("max_tokens");
    let bad = false;
    for (const el of [temp, max]) { const ok = el.checkValidity(); FA.setError(el, ok ? "" : el.validationMessage); bad = bad || !ok; }
    FA.setError($("message"), text ? "" : "Type a message first.");
    if (!text || bad) return;
    const user = { role: "user", content: text };
    bubble("user", text);
    const out = bubble("assistant", "");
    out.parentElement.setAttribute("aria-busy", "true");
    $("message").value = "";
    $("send").disabled = true; $("stop").disabled = false;
    controller = new AbortController();
    const { body } = settings();
    let result;
    try {
      result = await FA.streamChat("/ui/v1/chat/completions", Object.assign({}, body, { messages: messages([user]) }),
        { signal: controller.signal, onDelta: (t) => { out.textContent += t; transcript.scrollTop = transcript.scrollHeight; } });
    } catch (e) {
      result = { error: e.name === "AbortError" ? "stopped" : e.message, text: out.textContent };
    }
    out.parentElement.removeAttribute("aria-busy");
    $("send").disabled = false; $("stop").disabled = true;
    if (result.error) {
      FA.toast(result.error === "stopped" ? "Stopped" : "The model answered with an error: " + result.error, result.error === "stopped" ? "" : "bad");
      if (!out.textContent) out.parentElement.remove();
    }
    if (result.text) history.push(user, { role: "assistant", content: result.text });
    if (result.ttft !== null && result.ttft !== undefined) {
      $("ttft").textContent = FA.fmt(result.ttft) + " ms";
      const gen = (result.total - result.ttft) / 1000;
      $("tps").textContent = result.tokens > 1 && gen > 0 ? FA.fmt((result.tokens - 1) / gen, 1) : "—";
      $("ntokens").textContent = FA.fmt(result.tokens);
      $("total").textContent = FA.fmt(result.total) + " ms";
    }
    curl();
    $("message").focus();
  });
  curl();
})();
