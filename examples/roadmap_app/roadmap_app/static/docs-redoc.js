// Starts ReDoc on /redoc (a file, not an inline script: the Content Security Policy allows only
// this origin's scripts).
"use strict";
window.addEventListener("DOMContentLoaded", () => {
  const mount = document.getElementById("redoc");
  // No search: it indexes in a Worker made from a blob: URL, which the policy refuses.
  Redoc.init(mount.dataset.spec, { disableSearch: true }, mount);
});
