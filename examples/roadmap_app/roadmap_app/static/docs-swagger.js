// Starts Swagger UI on /docs (a file, not an inline script: the Content Security Policy allows
// only this origin's scripts).
"use strict";
window.addEventListener("DOMContentLoaded", () => {
  const mount = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: mount.dataset.spec,
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
    layout: "BaseLayout",
  });
});
