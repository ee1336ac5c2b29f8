#!/usr/bin/env node
// End-to-end test of the /ui event browser in headless Chromium (playwright-core),
// against a running eventsd whose database holds nothing else:
//   open /ui, create a todo through the API, see it appear live in the tail and the
//   stream list, open its stream (events and the state after each one), undo to its
//   first event, check the state; create one through the form; Swagger UI renders.
// Screenshots of the three views go to $EVENTSD_SCREENSHOTS_DIR when it is set.
//
// Usage: NODE_PATH=<assets node_modules> node ui_browser.js http://127.0.0.1:<port>
// Env:   EVENTSD_CHROMIUM (default /usr/bin/chromium), EVENTSD_SCREENSHOTS_DIR (optional)
// Exits 0 when every check passed, 1 otherwise. Run by tests/http/ui_test.cpp (ctest http_ui_tests).
'use strict';

const assert = require('assert/strict');
const path = require('path');
const fs = require('fs');
const { chromium } = require('playwright-core');

const base = (process.argv[2] || '').replace(/\/$/, '');
const executablePath = process.env.EVENTSD_CHROMIUM || '/usr/bin/chromium';
const shotsDir = process.env.EVENTSD_SCREENSHOTS_DIR || '';
const TIMEOUT = 10000;

const log = (...a) => console.log('ui:', ...a);

async function api(method, p, body) {
  const init = { method, headers: { Accept: 'application/json' } };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const res = await fetch(base + p, init);
  const text = await res.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { json = null; }
  if (!res.ok) throw new Error(`${method} ${p} answered ${res.status}: ${text}`);
  return json;
}

async function screenshot(target, name) {
  if (!shotsDir) return;
  fs.mkdirSync(shotsDir, { recursive: true });
  const file = path.join(shotsDir, name);
  await target.screenshot({ path: file, animations: 'disabled' });
  log(`screenshot ${file}`);
}

/** Waits until `fn` (run in the page with `arg`) returns a truthy value. */
async function until(page, what, fn, arg) {
  try {
    await page.waitForFunction(fn, arg, { timeout: TIMEOUT, polling: 50 });
  } catch (e) {
    throw new Error(`timed out waiting for ${what}: ${e.message.split('\n')[0]}`);
  }
}

const text = (page, testid) => page.getByTestId(testid).textContent();

async function main() {
  if (!/^https?:\/\/[^/]+$/.test(base)) {
    console.error('usage: ui_browser.js http://127.0.0.1:<port>');
    return 2;
  }
  // A few todos in different states, so that the streams list shows something.
  const seeds = [];
  for (const d of ['Buy milk', 'Write the quarterly report', 'Call the plumber', 'Plan the trip'])
    seeds.push(await api('POST', '/todo', { description: d }));
  await api('PUT', `/todo/${seeds[1].id}/put-in-progress`);
  await api('PUT', `/todo/${seeds[2].id}/done`);
  await api('PUT', '/todo/change-description', { id: seeds[3].id, description: 'Plan the trip to Lisbon' });
  await api('PUT', `/todo/${seeds[3].id}/put-in-progress`);

  const browser = await chromium.launch({
    executablePath,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const problems = [];
  try {
    const context = await browser.newContext({ viewport: { width: 1440, height: 860 } });
    const page = await context.newPage();
    page.setDefaultTimeout(TIMEOUT);
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    page.on('console', (m) => { if (m.type() === 'error') problems.push(`console error: ${m.text()}`); });
    page.on('requestfailed', (r) => {
      // The EventSource is cut when the page closes; anything else is a failure.
      if (!r.url().includes('/subscribe/')) problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`);
    });

    // -- the streams list ---------------------------------------------------------
    await page.goto(`${base}/ui`);
    await until(page, 'the live tail to connect',
      () => document.querySelector('[data-testid="live-status"]')?.textContent === 'live');
    const listed = await page.getByTestId('stream-item').evaluateAll((els) => els.map((e) => e.dataset.stream));
    const fromApi = (await api('GET', '/streams?limit=50')).items.map((s) => s.stream);
    assert.deepEqual(listed, fromApi, 'the stream list shows GET /streams, newest first');
    assert.equal(listed.length, 4);
    assert.equal(listed[0], `todo-${seeds[3].id}`);
    assert.equal(await page.getByTestId('error').isHidden(), true);
    log(`streams list: ${listed.length} streams`);

    // -- a todo created through the API appears live ------------------------------
    const created = await api('POST', '/todo', { description: 'Water the plants' });
    const stream = `todo-${created.id}`;
    const live = page.locator(`[data-testid="live-event"][data-stream="${stream}"]`);
    await live.first().waitFor();
    assert.equal(await live.count(), 1);
    assert.equal(await live.first().getAttribute('data-position'), String(created.position));
    assert.match(await live.first().textContent(), /created/);
    assert.match(await live.first().textContent(), /Water the plants/);
    const item = page.locator(`[data-testid="stream-item"][data-stream="${stream}"]`);
    await item.waitFor();
    assert.equal(await page.getByTestId('stream-item').first().getAttribute('data-stream'), stream,
      'the new stream is on top of the list');
    log(`live: ${stream} at #${created.position}`);

    await screenshot(page, 'ui-streams.png');

    // Three more events, each one seen live.
    await api('PUT', `/todo/${created.id}/put-in-progress`);
    await api('PUT', '/todo/change-description', { id: created.id, description: 'Water the plants on the balcony' });
    const done = await api('PUT', `/todo/${created.id}/done`);
    await until(page, 'four live events of the stream',
      (s) => document.querySelectorAll(`[data-testid="live-event"][data-stream="${s}"]`).length === 4, stream);
    assert.match(await item.textContent(), new RegExp(`v4 · #${done.position}`));

    // -- its stream: events and the state after each -------------------------------
    await item.locator('button').click();
    await until(page, 'the stream to open',
      (s) => document.querySelector('[data-testid="selected-stream"]')?.textContent === s
        && document.querySelectorAll('[data-testid="event-row"]').length === 4, stream);
    assert.equal(await item.getAttribute('class'), 'selected');
    const rows = page.getByTestId('event-row');
    const versions = await rows.evaluateAll((els) => els.map((e) => e.dataset.version));
    assert.deepEqual(versions, ['1', '2', '3', '4']);
    const events = (await api('GET', `/streams/${stream}`)).items;
    const ids = await rows.evaluateAll((els) => els.map((e) => e.dataset.eventId));
    assert.deepEqual(ids, events.map((e) => e.id), 'one row per event of GET /streams/{streamId}');
    const types = await rows.locator('td.type').allTextContents();
    assert.deepEqual(types, ['created', 'status-changed-to-in-progress', 'description-changed', 'status-changed-to-done']);
    const states = await page.getByTestId('event-state').allTextContents();
    assert.deepEqual(states, [
      'Created Water the plants',
      'InProgress Water the plants',
      'InProgress Water the plants on the balcony',
      'Done Water the plants on the balcony',
    ]);
    assert.equal(await text(page, 'state-description'), 'Water the plants on the balcony');
    assert.equal(await text(page, 'state-status'), 'Done');
    assert.equal(await text(page, 'state-version'), '4');
    assert.equal(new URL(page.url()).hash, `#${stream}`);
    log('stream: 4 events, state Done');

    await screenshot(page, 'ui-stream.png');

    // -- undo to its first event ------------------------------------------------------
    await rows.first().getByTestId('undo-button').click();
    await until(page, 'the undo to show',
      () => document.querySelectorAll('[data-testid="event-row"]').length === 5
        && document.querySelector('[data-testid="state-version"]')?.textContent === '5');
    assert.equal(await text(page, 'state-description'), 'Water the plants');
    assert.equal(await text(page, 'state-status'), 'Created');
    assert.equal(await rows.nth(4).locator('td.type').textContent(), 'undo-to-some-history-state');
    assert.equal(await page.getByTestId('error').isHidden(), true);
    const hist = await api('GET', `/todo/${created.id}/history`);
    assert.equal(hist.items.length, 5);
    assert.equal(hist.items[4].type, 'undo-to-some-history-state');
    assert.deepEqual(hist.items[4].snapshot,
      { id: created.id, description: 'Water the plants', status: 'Created', version: 5 });
    await until(page, 'the undo event in the live tail',
      (s) => document.querySelectorAll(`[data-testid="live-event"][data-stream="${s}"]`).length === 5, stream);
    log('undo: state back to Created "Water the plants"');

    // -- a todo created through the form -------------------------------------------------
    await page.getByTestId('create-description').fill('Created from the browser');
    await page.getByTestId('create-submit').click();
    await until(page, 'the new todo to be selected',
      () => document.querySelector('[data-testid="state-description"]')?.textContent === 'Created from the browser'
        && document.querySelectorAll('[data-testid="event-row"]').length === 1);
    const formStream = await text(page, 'selected-stream');
    assert.match(formStream, /^todo-[0-9a-f-]{36}$/);
    const formTodo = await api('GET', `/todo/${formStream.slice(5)}/history`);
    assert.equal(formTodo.items[0].snapshot.description, 'Created from the browser');
    await page.locator(`[data-testid="live-event"][data-stream="${formStream}"]`).waitFor();
    // A validation error is shown, not swallowed.
    await page.getByTestId('create-description').fill('x');
    await page.getByTestId('create-submit').click();
    await page.getByTestId('error').waitFor({ state: 'visible' });
    assert.match(await text(page, 'error'), /400/);
    assert.match(await text(page, 'error'), /description/);
    await page.getByTestId('create-description').fill('');
    problems.splice(0, problems.length, ...problems.filter((p) => !/status of 400/.test(p)));
    log('form: created and selected; a 400 is shown');

    // -- live tail under a burst of writes ------------------------------------------------
    const burst = [];
    for (let i = 0; i < 8; i++) burst.push(api('POST', '/todo', { description: `Burst ${i + 1}` }));
    const acks = await Promise.all(burst);
    const last = Math.max(...acks.map((a) => a.position));
    await until(page, 'the burst in the live tail',
      (p) => !!document.querySelector(`[data-testid="live-event"][data-position="${p}"]`), last);
    const positions = await page.getByTestId('live-event').evaluateAll((els) => els.map((e) => Number(e.dataset.position)));
    const head = (await api('GET', `/streams/$all?from=${last}`)).items.at(-1).position;
    assert.equal(head, last);
    // Newest first, every position since the page opened exactly once.
    const sorted = [...positions].sort((a, b) => b - a);
    assert.deepEqual(positions, sorted, 'live tail newest first');
    assert.equal(new Set(positions).size, positions.length, 'no duplicates in the live tail');
    assert.equal(positions[0], head);
    assert.equal(positions.at(-1), created.position, 'the tail starts with the first write after the page opened');
    assert.equal(positions.length, head - created.position + 1, 'no gaps in the live tail');
    await page.getByTestId('streams-refresh').click();
    log(`live tail: ${positions.length} events, #${positions.at(-1)}..#${positions[0]}`);

    await page.getByTestId('error').waitFor({ state: 'hidden' }); // the refresh succeeded
    await screenshot(page, 'ui-live-tail.png');

    // -- Swagger UI renders the server's document -------------------------------------------
    const swagger = await context.newPage();
    swagger.on('pageerror', (e) => problems.push(`swagger page error: ${e.message}`));
    await swagger.goto(`${base}/swagger`);
    await swagger.locator('.opblock').first().waitFor();
    const operations = await swagger.locator('.opblock').count();
    assert.ok(operations >= 20, `Swagger UI shows ${operations} operations`);
    assert.equal(await swagger.locator('.errors-wrapper').count(), 0, 'Swagger UI reports no errors');
    log(`swagger: ${operations} operations`);

    assert.deepEqual(problems, [], 'no page errors, console errors or failed requests');
  } finally {
    await browser.close();
  }
  return 0;
}

main().then(
  (code) => { if (code === 0) log('all checks passed'); process.exit(code); },
  (e) => { console.error(`ui: FAILED: ${e.stack || e}`); process.exit(1); });
