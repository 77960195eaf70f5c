// Live progress of installs (playbook runs, deployments) from /api/installs/{id}/events:
// one block per host, one line per step with its state, the run's own lines on top.
"use strict";
(function () {
  const LABELS = { started: "running", ok: "ok", changed: "changed", skipped: "skipped", failed: "failed",
    warn: "warning", info: "info", "would-change": "would change", done: "done" };
  const BADGE = { started: "starting", ok: "ok", changed: "ok", skipped: "plain", failed: "failed",
    warn: "warn", info: "plain", "would-change": "warn", done: "ok" };

  function badge(status, text) {
    const b = document.createElement("span");
    b.className = "badge " + (BADGE[status] || "plain");
    b.textContent = text || LABELS[status] || status;
    return b;
  }

  // A view of one run inside `root` (emptied first).
  FA.ProgressView = function (root, title) {
    root.replaceChildren();
    const hosts = new Map();
    function hostBlock(name) {
      if (hosts.has(name)) return hosts.get(name);
      const box = document.createElement("section");
      box.className = "progress-host";
      box.dataset.host = name;
      const head = document.createElement("h3");
      const label = document.createElement("span");
      label.textContent = name;
      const state = badge("started", "running");
      head.append(label, state);
      const list = document.createElement("ol");
      list.className = "steps";
      box.append(head, list);
      root.appendChild(box);
      const entry = { box, state, list, steps: new Map(), note: null };
      hosts.set(name, entry);
      return entry;
    }
    function step(entry, name, ev) {
      let li = entry.steps.get(name);
      if (!li) {
        li = document.createElement("li");
        li.className = "step";
        entry.steps.set(name, li);
        entry.list.appendChild(li);
      }
      const label = document.createElement("span");
      label.className = "step-name";
      label.textContent = name;
      const msg = document.createElement("span");
      msg.className = "step-msg";
      msg.textContent = ev.message || "";
      li.replaceChildren(badge(ev.status), label, msg);
      li.dataset.status = ev.status;
    }
    return {
      title,
      add(ev) {
        if (!ev.host) return;  // the run's own lines go to the status line
        const entry = hostBlock(ev.host);
        if (ev.step) { step(entry, ev.step, ev); return; }
        if (ev.status === "ok" || ev.status === "failed") {
          entry.state.replaceWith(entry.state = badge(ev.status === "ok" ? "ok" : "failed", ev.status === "ok" ? "success" : "failed"));
        }
        // keep the reason a host failed; its closing "host failed (...)" line adds nothing
        if (ev.message && ev.status !== "ok" && !(entry.note && ev.message.startsWith("host "))) {
          if (!entry.note) { entry.note = document.createElement("p"); entry.note.className = "hint"; entry.box.insertBefore(entry.note, entry.list); }
          entry.note.textContent = ev.message;
        }
      },
    };
  };

  // Follow install `id` (server-sent events read through fetch, so a missing install is an
  // answer, not a console error): onEvent(ev) once per event; resolves with the "done" event
  // (message "success: ..." / "failed: ...") or null when the stream ended without one.
  // Retries while the install does not exist yet (a deployment starts it a moment later) and
  // after a dropped connection (a replay from the start; events already seen are skipped).
  FA.followInstall = async function (id, onEvent, { retries = 20 } = {}) {
    let seen = 0, last = null;
    const url = "/ui/api/installs/" + encodeURIComponent(id) + "/events";
    for (let tries = 0; tries <= retries; tries++) {
      if (tries) await new Promise((r) => setTimeout(r, 750));
      let resp;
      try { resp = await fetch(url, { credentials: "same-origin", headers: { Accept: "text/event-stream" } }); } catch (e) { continue; }
      if (resp.status === 401) { FA.toast("Your session has ended; sign in again.", "bad"); return last; }
      if (!resp.ok) { try { await resp.text(); } catch (e) { /* ignore */ } continue; }
      let ended = false;
      try {
        for await (const { event, data } of FA.sse(resp)) {
          if (event === "end") { ended = true; continue; }
          let ev;
          try { ev = JSON.parse(data); } catch (e) { continue; }
          if (ev.seq && ev.seq <= seen) continue;
          seen = ev.seq || seen + 1;
          if (ev.status === "done") last = ev;
          onEvent(ev);
        }
      } catch (e) { /* connection dropped: reconnect below */ }
      if (ended) return last;
    }
    return last;
  };
})();
