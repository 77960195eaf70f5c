// Sign in with a user account through the identity API (JSON), then go where the user was going.
"use strict";
(function () {
  const form = document.getElementById("password-form");
  const change = document.getElementById("change-form");
  const next = form.dataset.next || "/";
  let csrf = "", current = "";
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (!FA.validate(form)) return;
    const body = { username: form.username.value.trim(), password: form.password.value };
    const resp = await fetch("/api/auth/login", { method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    let data = {};
    try { data = await resp.json(); } catch (e) { /* not JSON */ }
    if (resp.status === 200) {
      if (data.must_change_password) {
        csrf = data.csrf_token; current = body.password;
        form.hidden = true; change.hidden = false;
        document.getElementById("new_password").focus();
        return;
      }
      location.href = next;
      return;
    }
    const message = resp.status === 401 ? "Wrong user name or password."
      : (data.error && data.error.message) || "Sign-in failed (" + resp.status + ").";
    FA.setError(form.password, message);
    form.password.select();
  });
  change.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (!FA.validate(change)) return;
    const a = document.getElementById("new_password"), b = document.getElementById("new_password2");
    if (a.value !== b.value) { FA.setError(b, "The two passwords differ."); b.focus(); return; }
    const resp = await fetch("/api/auth/password", { method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify({ current_password: current, new_password: a.value }) });
    if (resp.ok) { location.href = next; return; }
    let data = {};
    try { data = await resp.json(); } catch (e) { /* not JSON */ }
    FA.setError(a, (data.error && data.error.message) || "Could not change the password.");
    a.focus();
  });
})();
