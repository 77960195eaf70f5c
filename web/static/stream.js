// Read an OpenAI-style server-sent event stream from fetch(): onDelta(text), usage at the end.
"use strict";
(function () {
  FA.streamChat = async function (url, body, { onDelta, signal }) {
    const started = performance.now();
    const resp = await fetch(url, {
      method: "POST", signal, credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": document.querySelector('meta[name="csrf-token"]').content },
      body: JSON.stringify(Object.assign({}, body, { stream: true, stream_options: { include_usage: true } })),
    });
    const out = { status: resp.status, ttft: null, total: null, tokens: 0, usage: null, text: "", error: null };
    if (!resp.ok) {
      let msg = resp.status + " " + resp.statusText;
      try { const j = await resp.json(); msg = (j.error && j.error.message) || msg; } catch (e) { /* not JSON */ }
      out.error = msg; out.total = performance.now() - started;
      return out;
    }
    for await (const { data } of FA.sse(resp)) {
      if (!data || data === "[DONE]") continue;
      let chunk;
      try { chunk = JSON.parse(data); } catch (e) { continue; }
      if (chunk.error) { out.error = chunk.error.message || "stream error"; continue; }
      if (chunk.usage) out.usage = chunk.usage;
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
      const text = delta && delta.content;
      if (text) {
        if (out.ttft === null) out.ttft = performance.now() - started;
        out.tokens += 1;
        out.text += text;
        if (onDelta) onDelta(text);
      }
    }
    out.total = performance.now() - started;
    if (out.usage && out.usage.completion_tokens) out.tokens = out.usage.completion_tokens;
    return out;
  };
})();
