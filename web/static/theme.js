// Runs in <head> before the page paints: apply the saved (or the system's) colour theme.
(function () {
  var saved = null;
  try { saved = localStorage.getItem("fa-theme"); } catch (e) { /* storage disabled */ }
  var dark = window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches;
  document.documentElement.dataset.theme = saved || (dark ? "dark" : "light");
})();
