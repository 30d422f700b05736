// Renders the served OpenAPI document with Swagger UI (vendored in
// swagger-ui/, see its LICENSE and VENDORED). "Try it out" sends requests to
// this origin with the token entered under "Authorize".
window.addEventListener("load", () => {
  window.ui = SwaggerUIBundle({
    url: "/api/v1/openapi.json",
    dom_id: "#reference",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    // No badge from validator.swagger.io: the page talks to this server only.
    validatorUrl: null,
  });
});
