// Starts Swagger UI over the server's own OpenAPI document (served by eventsd at /openapi.json).
'use strict';
window.addEventListener('load', function () {
  window.ui = SwaggerUIBundle({
    url: '/openapi.json',
    dom_id: '#swagger-ui',
    deepLinking: true,
    tryItOutEnabled: true,
    displayRequestDuration: true,
    // The admin token typed into Authorize lasts as long as the page: kept, it would stay in
    // localStorage for any later user of this browser profile (and any script of this origin).
    persistAuthorization: false,
    validatorUrl: null, // no internet: never call the public validator
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    plugins: [SwaggerUIBundle.plugins.DownloadUrl],
    layout: 'StandaloneLayout',
  });
});
