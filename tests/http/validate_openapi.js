#!/usr/bin/env node
// Validates the OpenAPI document the server serves (build/static/openapi.json):
//   1. it is a valid OpenAPI 3 document (@apidevtools/swagger-parser validate(): schema + $refs),
//   2. it documents every route of API.md (and /streams, the extra route of the /ui),
//   3. the error statuses of API.md §4 are described as application/problem+json.
// Usage: NODE_PATH=<assets node_modules> node validate_openapi.js <openapi.json>
// Exits 0 when valid, 1 otherwise (printing every failure).
'use strict';

const fs = require('fs');
const SwaggerParser = require('@apidevtools/swagger-parser');

// Every route of API.md, as [method, path]. Keep in sync with API.md.
const EXPECTED_ROUTES = [
  // §1 todos
  ['post', '/todo'],
  ['get', '/todo'],
  ['put', '/todo/change-description'],
  ['put', '/todo/{id}/put-in-progress'],
  ['put', '/todo/{id}/done'],
  ['put', '/todo/{id}/undo-to/{eventId}'],
  ['get', '/todo/{id}'],
  ['get', '/todo/{id}/history'],
  ['get', '/todo/{id}/snapshot/{eventId}'],
  // §2 event store
  ['get', '/streams/{streamId}'],
  ['get', '/streams/$all'],
  ['get', '/subscribe/$all'],
  ['get', '/streams'], // stream list used by /ui
  // §3 operations
  ['get', '/healthz'],
  ['get', '/readyz'],
  ['get', '/metrics'],
  ['get', '/openapi.json'],
  ['get', '/swagger'],
  ['get', '/ui'],
  ['get', '/admin/projections'],
  ['post', '/admin/projections/{name}/rebuild'],
];

// Statuses of API.md §4 that must be described as problem+json somewhere.
const ERROR_STATUSES = ['400', '404', '409', '412', '413', '415', '503'];

async function main() {
  const file = process.argv[2];
  if (!file) {
    console.error('usage: validate_openapi.js <openapi.json>');
    return 2;
  }
  const failures = [];
  let raw;
  try {
    raw = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    console.error(`cannot read ${file}: ${e.message}`);
    return 1;
  }
  if (!/^3\.\d+\.\d+$/.test(String(raw.openapi))) failures.push(`"openapi" is ${raw.openapi}, expected 3.x.y`);

  let api;
  try {
    // validate() dereferences, so give it a copy and keep `raw` for the checks below.
    api = await SwaggerParser.validate(structuredClone(raw));
  } catch (e) {
    failures.push(`not a valid OpenAPI document: ${e.message}`);
  }

  const paths = raw.paths || {};
  for (const [method, path] of EXPECTED_ROUTES) {
    if (!paths[path]) failures.push(`missing path ${path}`);
    else if (!paths[path][method]) failures.push(`missing ${method.toUpperCase()} ${path}`);
  }

  if (api) {
    // swagger-parser checks path parameters only for Swagger 2.0; check them for OpenAPI 3 here.
    for (const [path, item] of Object.entries(api.paths)) {
      const templated = [...path.matchAll(/\{([^}]+)\}/g)].map((m) => m[1]).sort();
      for (const [method, op] of Object.entries(item)) {
        if (!op || typeof op !== 'object' || !op.responses) continue;
        const declared = [...(item.parameters || []), ...(op.parameters || [])]
          .filter((p) => p.in === 'path').map((p) => p.name).sort();
        if (JSON.stringify(templated) !== JSON.stringify(declared))
          failures.push(`${method.toUpperCase()} ${path}: path parameters [${declared}] do not match the template [${templated}]`);
      }
    }

    const problemStatuses = new Set();
    for (const [path, item] of Object.entries(api.paths)) {
      for (const [method, op] of Object.entries(item)) {
        if (!op || typeof op !== 'object' || !op.responses) continue;
        for (const [status, response] of Object.entries(op.responses)) {
          if (status >= '400' && response.content && response.content['application/problem+json']) problemStatuses.add(status);
          if (status >= '400' && !(response.content && response.content['application/problem+json']))
            failures.push(`${method.toUpperCase()} ${path} ${status}: not application/problem+json`);
        }
      }
    }
    for (const s of ERROR_STATUSES) if (!problemStatuses.has(s)) failures.push(`no route documents a ${s} problem+json answer`);
  }

  if (failures.length) {
    for (const f of failures) console.error(`FAIL: ${f}`);
    console.error(`${file}: ${failures.length} problem(s)`);
    return 1;
  }
  const count = Object.values(paths).reduce((n, item) => n + Object.keys(item).filter((k) => k !== 'parameters').length, 0);
  console.log(`${file}: valid OpenAPI ${raw.openapi}, ${count} operations, all ${EXPECTED_ROUTES.length} expected routes present`);
  return 0;
}

main().then((code) => process.exit(code), (e) => { console.error(e); process.exit(1); });
