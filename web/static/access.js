// Projects & users: create users (one-time password shown once) and projects, roles, members,
// quotas and model allow-lists; confirm dialogs for what cannot be undone by a click.
"use strict";
(function () {
  const $ = (sel, root) => (root || document).querySelector(sel);
  let shown = location.search; // the query the page's content was rendered for
  const QUOTAS = ["tokens_per_day", "tokens_per_month", "rpm", "max_concurrent", "gpu_limit"];

  // --- refresh in place, keeping open <details>, then put the focus somewhere sensible ------
  async function refresh(url, focus, keep) {
    const open = keep === false ? []
      : Array.from(document.querySelectorAll("#main details[open][id]")).map((d) => d.id);
    const target = url || location.pathname + location.search;
    if (window.htmx) {
      await htmx.ajax("GET", target, { target: "#main", select: "#main", swap: "outerHTML" });
      if (url) { history.pushState({}, "", url); shown = location.search; }
    } else { location.href = target; return; }
    open.forEach((id) => { const d = document.getElementById(id); if (d) d.open = true; });
    for (const sel of [].concat(focus || [])) {
      const el = sel && $(sel);
      if (el) { el.focus(); return; }
    }
  }
  const attr = (s) => '"' + String(s).replace(/["\\]/g, "\\$&") + '"';

  // --- the one-time password box -------------------------------------------------------------
  function showPassword(user, password) {
    const box = document.getElementById("new-password");
    if (!box) return;
    $("#new-password-user").textContent = user;
    $("#new-password-value").textContent = password;
    box.hidden = false;
    box.querySelector("[data-copy]").focus();
    box.scrollIntoView({ block: "nearest" });
  }
  document.addEventListener("click", (ev) => {
    if (!ev.target.closest("#new-password-dismiss")) return;
    $("#new-password-value").textContent = "";
    $("#new-password").hidden = true;
  });

  // --- confirm dialog ----------------------------------------------------------------------
  function confirmDialog(title, text, label) {
    const d = document.getElementById("confirm-dialog");
    if (!d || typeof d.showModal !== "function") return Promise.resolve(window.confirm(title + "\n\n" + text));
    $("#confirm-title", d).textContent = title || "Are you sure?";
    $("#confirm-text", d).textContent = text || "";
    $("#confirm-ok", d).textContent = label || "Confirm";
    d.returnValue = "";
    return new Promise((resolve) => {
      d.addEventListener("close", () => resolve(d.returnValue === "ok"), { once: true });
      d.showModal();
      $("#confirm-cancel", d).focus(); // the safe choice first
    });
  }

  // --- buttons that call the API (after a confirmation where they say so) ------------------
  document.addEventListener("click", async (ev) => {
    const b = ev.target.closest("button[data-call]");
    if (!b) return;
    if (b.dataset.confirm && !(await confirmDialog(b.dataset.confirmTitle, b.dataset.confirm, b.dataset.confirmLabel))) return;
    const row = b.closest("tr[data-user], tr[data-member]");
    const rowSel = row ? (row.dataset.user !== undefined ? "tr[data-user=" + attr(row.dataset.user) + "] button"
                                                          : "#add-member select") : null;
    b.disabled = true;
    const res = await FA.api(b.dataset.method || "POST", b.dataset.call, b.dataset.body ? JSON.parse(b.dataset.body) : undefined);
    b.disabled = false;
    if (!res.ok) { FA.toast((res.error && res.error.message) || "Request failed", "bad"); return; }
    await refresh(null, ['[aria-label=' + attr(b.getAttribute("aria-label")) + ']', rowSel, "#main"]);
    FA.toast(b.dataset.done || "Done", "ok");
    if (b.dataset.otpFor && res.data && res.data.one_time_password) showPassword(b.dataset.otpFor, res.data.one_time_password);
  });

  // --- role dialog -----------------------------------------------------------------------------
  let roleTarget = null;
  document.addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-role-dialog]");
    if (b) {
      const d = document.getElementById("role-dialog");
      roleTarget = { id: b.dataset.userId, name: b.dataset.username, role: b.dataset.role, label: b.getAttribute("aria-label") };
      $("#role-title", d).textContent = "Change the role of " + roleTarget.name;
      d.querySelectorAll('input[name="role"]').forEach((r) => { r.checked = r.value === roleTarget.role; });
      $("#role-directory", d).hidden = b.dataset.source === "local";
      d.showModal();
      const checked = $('input[name="role"]:checked', d);
      if (checked) checked.focus();
      return;
    }
    if (ev.target.closest("#role-cancel")) document.getElementById("role-dialog").close();
  });

  // --- forms -----------------------------------------------------------------------------------
  function syncPattern(el) {
    if (!el.dataset || !el.dataset.patternMsg) return;
    el.setCustomValidity("");
    if (el.validity.patternMismatch) el.setCustomValidity(el.dataset.patternMsg);
  }
  document.addEventListener("input", (ev) => syncPattern(ev.target), true);

  const shape = {
    "create-user": (form, body) => {
      const mode = $('[name="password_mode"]:checked', form).value;
      delete body.password_mode;
      if (mode !== "set") delete body.password;
      for (const k of ["display_name", "email"]) if (!body[k]) delete body[k];
      return body;
    },
    "create-project": (form, body) => body,
    "update-project": (form, body) => {
      for (const k of QUOTAS) if (body[k] === undefined) body[k] = 0; // 0 removes a quota
      if (body.models === undefined) body.models = [];
      return body;
    },
    "add-member": (form, body) => body,
    "member-role": (form, body) => ({ user: form.dataset.user, role: body.role }),
  };
  const METHOD = { "update-project": "PATCH" };

  async function after(kind, form, res, body) {
    const data = res.data || {};
    if (kind === "create-user") {
      const name = data.user.username;
      form.reset();
      await refresh(null, ["#nu-username"]);
      FA.toast("User " + name + " created", "ok");
      if (data.one_time_password) showPassword(name, data.one_time_password);
    } else if (kind === "create-project") {
      const url = "/access?project=" + encodeURIComponent(data.id) + "#project-panel";
      await refresh(url, ["#am-user", "#project-panel"], false);
      FA.toast("Project " + data.id + " created: add its members here", "ok");
    } else if (kind === "update-project") {
      await refresh(null, ["#project-settings button[type=submit]"]);
      FA.toast(form.dataset.done || "Saved", "ok");
    } else if (kind === "add-member") {
      await refresh(null, ["#am-user", "#members-h"]);
      FA.toast(data.username + " added as " + data.role, "ok");
    } else if (kind === "member-role") {
      await refresh(null, ["tr[data-member=" + attr(form.dataset.user) + "] select"]);
      FA.toast((form.dataset.done || "Saved").replace("{role}", body.role), "ok");
    }
  }

  document.addEventListener("submit", async (ev) => {
    const form = ev.target;
    if (form.id === "role-form") { ev.preventDefault(); return changeRole(form); }
    const kind = form.dataset.access;
    if (!kind || !shape[kind]) return;
    ev.preventDefault();
    Array.from(form.elements).forEach(syncPattern);
    if (!FA.validate(form)) return;
    const body = shape[kind](form, FA.formData(form));
    const button = $('button[type="submit"]', form);
    if (button) button.disabled = true;
    const res = await FA.api(METHOD[kind] || "POST", form.dataset.url, body);
    if (button) button.disabled = false;
    if (!res.ok) { FA.showApiError(form, res.error); return; }
    await after(kind, form, res, body);
  });

  async function changeRole(form) {
    const d = document.getElementById("role-dialog");
    const picked = $('input[name="role"]:checked', form);
    if (!roleTarget || !picked) return;
    if (picked.value === roleTarget.role) { d.close(); return; }
    const save = $("#role-save", form);
    save.disabled = true;
    const res = await FA.api("PATCH", "/ui/api/users/" + encodeURIComponent(roleTarget.id), { role: picked.value });
    save.disabled = false;
    if (!res.ok) { FA.toast((res.error && res.error.message) || "Request failed", "bad"); return; }
    d.close();
    await refresh(null, ['[aria-label=' + attr(roleTarget.label) + ']']);
    FA.toast(roleTarget.name + " is now " + picked.value, "ok");
  }

  // --- small behaviours ---------------------------------------------------------------------------
  document.addEventListener("change", (ev) => {
    const el = ev.target;
    if (el.name === "password_mode") {
      const set = el.form.querySelector('[name="password_mode"]:checked').value === "set";
      const field = $("#nu-password-field");
      const input = $("#nu-password");
      field.hidden = !set; input.disabled = !set;
      if (!set) FA.setError(input, "");
      if (set) input.focus();
    } else if (el.id === "nu-role") {
      const notes = JSON.parse(($("#role-notes") || {}).textContent || "{}");
      $("#nu-role-hint").textContent = notes[el.value] || "";
    } else if (el.matches("select[data-current]")) {
      $('button[type="submit"]', el.form).disabled = el.value === el.dataset.current;
    }
  });
  // Back and forward over the addresses pushed above: show what the address names (a jump to
  // a fragment, such as the skip link, keeps the query and reloads nothing).
  window.addEventListener("popstate", () => { if (location.search !== shown) location.reload(); });
  document.addEventListener("DOMContentLoaded", () => {
    if (location.hash === "#project-panel") { const p = $("#project-panel"); if (p) p.focus(); }
  });
})();
