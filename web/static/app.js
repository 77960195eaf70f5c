// The console's shared behaviour: theme, toasts, API calls with CSRF, forms with inline
// validation, tables with search/sort/pagination, copy buttons, confirm-and-call buttons.
"use strict";
(function () {
  const FA = (window.FA = {});
  const csrf = () => (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
  FA.csrf = csrf;  // the X-CSRF-Token header's value, for calls made without FA.api (uploads)

  // --- theme -----------------------------------------------------------------------------
  function syncThemeButton() {
    const b = document.getElementById("theme-toggle");
    if (!b) return;
    const dark = document.documentElement.dataset.theme === "dark";
    b.textContent = dark ? "Light theme" : "Dark theme";
    b.setAttribute("aria-pressed", String(dark));
  }
  document.addEventListener("click", (ev) => {
    if (!ev.target.closest("#theme-toggle")) return;
    const next = document.documentElement.dataset.theme === "dark" ? "light" : "dark";
    document.documentElement.dataset.theme = next;
    try { localStorage.setItem("fa-theme", next); } catch (e) { /* storage disabled */ }
    syncThemeButton();
    document.dispatchEvent(new CustomEvent("fa:theme"));
  });

  // --- toasts ----------------------------------------------------------------------------
  FA.toast = function (message, kind) {
    const box = document.getElementById("toasts");
    if (!box) return;
    const t = document.createElement("div");
    t.className = "toast " + (kind || "");
    t.textContent = message;
    box.appendChild(t);
    setTimeout(() => t.remove(), kind === "bad" ? 9000 : 4500);
  };

  // --- API calls (through the console's same-origin doors) --------------------------------
  FA.api = async function (method, url, body) {
    const opts = { method, headers: { "X-CSRF-Token": csrf() }, credentials: "same-origin" };
    if (body instanceof Blob) {  // a file as it is (e.g. a CSV upload)
      opts.headers["Content-Type"] = body.type || "application/octet-stream";
      opts.body = body;
    } else if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    let resp;
    try { resp = await fetch(url, opts); } catch (e) {
      return { ok: false, status: 0, error: { message: "The appliance did not answer: " + e.message } };
    }
    let data = null;
    const type = resp.headers.get("Content-Type") || "";
    if (type.includes("json")) { try { data = await resp.json(); } catch (e) { data = null; } }
    else { data = await resp.text(); }
    if (resp.status === 401) {
      FA.toast("Your session has ended; sign in again.", "bad");
      setTimeout(() => { location.href = "/sign-in?next=" + encodeURIComponent(location.pathname); }, 1200);
    }
    const error = !resp.ok ? ((data && data.error) || { message: resp.status + " " + resp.statusText }) : null;
    return { ok: resp.ok, status: resp.status, data, error };
  };

  // Server-sent events of a fetch() response, one {event, data} at a time (data: the event's
  // data: lines joined by newlines). Used by the playground, the bundle import and progress.js.
  FA.sse = async function* (resp) {
    const reader = resp.body.getReader(), decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const lines = buffer.slice(0, cut).split("\n"); buffer = buffer.slice(cut + 2);
        const event = (lines.find((l) => l.startsWith("event:")) || "event: message").slice(6).trim();
        const data = lines.filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
        yield { event, data };
      }
    }
  };

  // Reload the page's main content in place (htmx), keeping scroll position and focus sane.
  FA.refresh = function () {
    if (window.htmx) {
      return htmx.ajax("GET", location.pathname + location.search, { target: "#main", select: "#main", swap: "outerHTML" });
    }
    location.reload();
  };

  // --- forms -----------------------------------------------------------------------------
  function errorBox(input) {
    const ids = (input.getAttribute("aria-describedby") || "").split(/\s+/);
    for (const id of ids) {
      const el = id && document.getElementById(id);
      if (el && el.classList.contains("field-error")) return el;
    }
    return null;
  }
  function setError(input, message) {
    const box = errorBox(input);
    if (box) box.textContent = message || "";
    if (message) input.setAttribute("aria-invalid", "true"); else input.removeAttribute("aria-invalid");
  }
  FA.setError = setError;
  function checkField(input) {
    if (!input.willValidate) return true;
    const ok = input.checkValidity();
    setError(input, ok ? "" : input.validationMessage);
    return ok;
  }
  FA.validate = function (form) {
    let first = null;
    for (const el of form.elements) {
      if (el.name && !checkField(el) && !first) first = el;
    }
    if (first) first.focus();
    return !first;
  };
  FA.formData = function (form) {
    const out = {};
    for (const el of form.elements) {
      if (!el.name || el.disabled || el.type === "submit" || el.type === "button") continue;
      const kind = el.dataset.type;
      let v;
      if (el.type === "checkbox") v = el.checked;
      else if (el.multiple) v = Array.from(el.selectedOptions).map((o) => o.value);
      else v = el.value.trim();
      if (v === "" && kind) continue; // optional typed fields left empty
      if (kind === "int") v = parseInt(v, 10);
      else if (kind === "float") v = parseFloat(v);
      else if (kind === "list") v = v ? v.split(",").map((s) => s.trim()).filter(Boolean) : [];
      else if (kind === "floats") v = v ? v.split(",").map((s) => parseFloat(s)) : [];
      if (el.dataset.scale) v = v * parseFloat(el.dataset.scale);
      out[el.dataset.as || el.name] = v;
    }
    return out;
  };
  FA.showApiError = function (form, error) {
    const field = error && error.param && form && form.querySelector('[name="' + error.param + '"], [data-as="' + error.param + '"]');
    if (field) { setError(field, error.message); field.focus(); }
    FA.toast((error && error.message) || "Request failed", "bad");
  };
  document.addEventListener("focusout", (ev) => {
    const el = ev.target;
    if (el.form && el.form.hasAttribute("novalidate") && el.name && el.value !== "") checkField(el);
  });
  document.addEventListener("input", (ev) => {
    if (ev.target.getAttribute && ev.target.getAttribute("aria-invalid") === "true") checkField(ev.target);
  });
  document.addEventListener("change", (ev) => {
    if (ev.target.matches && ev.target.matches("select[data-autosubmit]")) ev.target.form.submit();
  });
  document.addEventListener("submit", async (ev) => {
    const form = ev.target;
    if (!form.dataset.api) return;
    ev.preventDefault();
    if (!FA.validate(form)) return;
    const button = form.querySelector('button[type="submit"]');
    if (button) button.disabled = true;
    const body = FA.formData(form);
    const res = await FA.api(form.dataset.method || "POST", form.dataset.api, body);
    if (button) button.disabled = false;
    if (!res.ok) { FA.showApiError(form, res.error); return; }
    form.dispatchEvent(new CustomEvent("fa:done", { detail: res, bubbles: true }));
    if (form.dataset.done) { FA.toast(form.dataset.done, "ok"); form.reset(); FA.refresh(); }
  });

  // --- buttons that call the API after a confirmation ---------------------------------------
  document.addEventListener("click", async (ev) => {
    const b = ev.target.closest("button[data-api]");
    if (!b) return;
    if (b.dataset.confirm && !window.confirm(b.dataset.confirm)) return;
    b.disabled = true;
    const res = await FA.api(b.dataset.method || "POST", b.dataset.api);
    b.disabled = false;
    if (!res.ok) { FA.toast(res.error.message, "bad"); return; }
    FA.toast(b.dataset.done || "Done", "ok");
    FA.refresh();
  });

  // --- copy buttons ------------------------------------------------------------------------
  document.addEventListener("click", async (ev) => {
    const b = ev.target.closest("[data-copy]");
    if (!b) return;
    const src = document.querySelector(b.dataset.copy);
    const text = src ? src.textContent : "";
    try {
      await navigator.clipboard.writeText(text);
    } catch (e) {
      const range = document.createRange();
      range.selectNodeContents(src);
      const sel = window.getSelection();
      sel.removeAllRanges(); sel.addRange(range);
      document.execCommand("copy");
    }
    FA.toast("Copied to the clipboard", "ok");
  });

  // --- tables: search, sort, pagination -------------------------------------------------------
  const PAGE = 25;
  function cellValue(td) {
    const t = td ? (td.dataset.sort || td.textContent.trim()) : "";
    const n = parseFloat(t.replace(/,/g, ""));
    return /^-?[\d,.]+$/.test(t.replace(/\s/g, "")) && !isNaN(n) ? n : t.toLowerCase();
  }
  function enhance(table) {
    if (table.dataset.enhanced) return;
    table.dataset.enhanced = "1";
    const body = table.tBodies[0];
    const rows = Array.from(body.rows);
    const state = { q: "", page: 0, col: -1, dir: 1 };
    const tools = document.createElement("div");
    tools.className = "table-tools";
    const label = (table.getAttribute("aria-labelledby") && document.getElementById(table.getAttribute("aria-labelledby")))
      ? document.getElementById(table.getAttribute("aria-labelledby")).textContent.trim() : "table";
    const search = document.createElement("input");
    search.type = "search";
    search.placeholder = "Search…";
    search.setAttribute("aria-label", "Search " + label);
    const count = document.createElement("span");
    count.className = "count";
    tools.append(search, count);
    const wrap = table.closest(".table-wrap") || table;
    wrap.before(tools);
    const pager = document.createElement("div");
    pager.className = "pager";
    const prev = document.createElement("button"); prev.type = "button"; prev.className = "small"; prev.textContent = "Previous";
    const next = document.createElement("button"); next.type = "button"; next.className = "small"; next.textContent = "Next";
    const where = document.createElement("span");
    pager.append(prev, where, next);
    wrap.after(pager);
    Array.from(table.tHead.rows[0].cells).forEach((th, i) => {
      if (!th.textContent.trim() || th.querySelector(".sr-only")) return;
      const b = document.createElement("button");
      b.type = "button"; b.className = "sort";
      b.append(...th.childNodes);
      th.appendChild(b);
      b.addEventListener("click", () => {
        state.dir = state.col === i ? -state.dir : 1;
        state.col = i;
        table.tHead.querySelectorAll("th").forEach((h) => h.removeAttribute("aria-sort"));
        th.setAttribute("aria-sort", state.dir > 0 ? "ascending" : "descending");
        draw();
      });
    });
    function draw() {
      let shown = rows.filter((r) => !state.q || r.textContent.toLowerCase().includes(state.q));
      if (state.col >= 0) {
        shown = shown.slice().sort((a, b) => {
          const x = cellValue(a.cells[state.col]), y = cellValue(b.cells[state.col]);
          return (x > y ? 1 : x < y ? -1 : 0) * state.dir;
        });
      }
      const pages = Math.max(1, Math.ceil(shown.length / PAGE));
      state.page = Math.min(state.page, pages - 1);
      body.replaceChildren(...shown.slice(state.page * PAGE, state.page * PAGE + PAGE));
      if (!shown.length) {
        const tr = document.createElement("tr"), td = document.createElement("td");
        td.colSpan = table.tHead.rows[0].cells.length; td.className = "muted";
        td.textContent = "Nothing matches “" + search.value + "”.";
        tr.appendChild(td); body.appendChild(tr);
      }
      const noun = (n) => n + (n === 1 ? " row" : " rows");
      count.textContent = shown.length === rows.length ? noun(rows.length) : shown.length + " of " + noun(rows.length);
      pager.hidden = pages <= 1;
      where.textContent = "Page " + (state.page + 1) + " of " + pages;
      prev.disabled = state.page === 0; next.disabled = state.page >= pages - 1;
    }
    search.addEventListener("input", () => { state.q = search.value.toLowerCase().trim(); state.page = 0; draw(); });
    prev.addEventListener("click", () => { state.page--; draw(); });
    next.addEventListener("click", () => { state.page++; draw(); });
    draw();
  }
  FA.enhance = function (root) {
    (root || document).querySelectorAll("table[data-table]").forEach(enhance);
    syncThemeButton();
  };
  document.addEventListener("DOMContentLoaded", () => FA.enhance());
  document.addEventListener("htmx:afterSettle", () => { FA.enhance(); document.dispatchEvent(new CustomEvent("fa:refreshed")); });
  FA.fmt = function (v, digits) {
    if (v === null || v === undefined || Number.isNaN(v)) return "—";
    return Number(v).toLocaleString(undefined, { maximumFractionDigits: digits === undefined ? 0 : digits });
  };
  FA.esc = function (s) {
    return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  };
})();
