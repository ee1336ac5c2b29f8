#!/usr/bin/env node
// End-to-end test of the /ui event browser in headless Chromium (playwright-core),
// against a running eventsd whose database holds nothing else:
//   open /ui, create a todo through the API, see it appear live in the tail and the
//   stream list, open its stream (events and the state after each one), undo to its
//   first event, check the state; create one through the form; a long stream opens at
//   its newest rows and reads only what is new; links in capitals, to $all and to no
//   stream, and a 404 that cancels no selection on its way; the stream list stays one page
//   per page loaded, and loses none to a live stream while "Older streams" loads; a hidden
//   tab closes its tail, and shown again after a burst reads only the rows it shows;
//   Swagger UI renders, runs a request and keeps no token.
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

/**
 * Holds the next answer to a request `url` matches: reads it, then creates a todo described
 * `description` and waits until the page lists its stream live, then lets the answer through.
 * Answers once the route is set: {written}, the create's answer once the held one went through.
 */
async function writeWhileAnswerHeld(page, url, description) {
  let settle;
  const written = new Promise((resolve, reject) => { settle = { resolve, reject }; });
  await page.route(url, async (route) => {
    try {
      const answer = await route.fetch();
      const w = await api('POST', '/todo', { description });
      await until(page, `the stream of "${description}" to be listed`,
        (s) => !!document.querySelector(`[data-testid="stream-item"][data-stream="${s}"]`), `todo-${w.id}`);
      await route.fulfill({ response: answer });
      settle.resolve(w);
    } catch (e) {
      settle.reject(e);
    }
  }, { times: 1 });
  return { written };
}

const text = (page, testid) => page.getByTestId(testid).textContent();
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const ROWS = 50; // app.js: events of a stream shown at first
const PAGE_SIZE = 50; // app.js: streams per page
const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);
const rowVersions = (page) => page.getByTestId('event-row').evaluateAll((els) => els.map((e) => Number(e.dataset.version)));
const listedStreams = (page) => page.getByTestId('stream-item').evaluateAll((els) => els.map((e) => e.dataset.stream));
const livePositions = (page) => page.getByTestId('live-event').evaluateAll((els) => els.map((e) => Number(e.dataset.position)));

/**
 * A new tab of `context` whose errors go to `problems`, which records the URLs it requests
 * and every EventSource it opens (window.__sources).
 */
async function openPage(context, name, problems) {
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  const requests = [];
  page.on('request', (r) => requests.push(r.url()));
  page.on('pageerror', (e) => problems.push(`${name} page error: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`${name} console error: ${m.text()}`); });
  page.on('requestfailed', (r) => {
    // An EventSource is cut when it is closed or its page; anything else is a failure.
    if (!r.url().includes('/subscribe/')) problems.push(`${name} request failed: ${r.url()} ${r.failure()?.errorText}`);
  });
  await page.addInitScript(() => {
    const Native = window.EventSource;
    window.__sources = [];
    window.EventSource = class extends Native {
      constructor(...args) {
        super(...args);
        window.__sources.push(this);
      }
    };
  });
  return { page, requests };
}

/** Makes `page` hidden or visible as a browser does when its tab is switched away or back. */
async function setHidden(page, hidden) {
  await page.evaluate((h) => {
    Object.defineProperty(document, 'hidden', { configurable: true, get: () => h });
    Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => (h ? 'hidden' : 'visible') });
    document.dispatchEvent(new Event('visibilitychange'));
  }, hidden);
}

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

    // -- a double click creates one todo, and undoes once ------------------------------------
    const before = (await api('GET', '/streams?limit=1')).items[0].lastPosition; // the log's head
    await page.getByTestId('create-description').fill('Double click');
    await page.getByTestId('create-submit').dblclick();
    await until(page, 'the double-clicked todo to be selected',
      () => document.querySelector('[data-testid="state-description"]')?.textContent === 'Double click');
    const dblStream = await text(page, 'selected-stream');
    await page.getByTestId('event-row').first().getByTestId('undo-button').dblclick();
    await until(page, 'the double-clicked undo to show',
      () => document.querySelectorAll('[data-testid="event-row"]').length === 2);
    await sleep(500); // a second request would have been sent at once
    const sinceBefore = (await api('GET', `/streams/$all?from=${before + 1}&limit=1000`)).items;
    assert.deepEqual(sinceBefore.map((e) => [e.stream, e.type]),
      [[dblStream, 'created'], [dblStream, 'undo-to-some-history-state']],
      'a double click sends one create and one undo');
    // An undo from a page that shows an older version is a 412 (If-Match), not an undo.
    const firstEvent = sinceBefore[0].id;
    await page.evaluate(([id, ev]) => guarded(() => undoTo(id, ev, 1)), [dblStream.slice(5), firstEvent]);
    assert.match(await text(page, 'error'), /^412 /);
    assert.equal((await api('GET', `/streams/${dblStream}`)).items.length, 2, 'the stale undo appended nothing');
    problems.splice(0, problems.length, ...problems.filter((p) => !/status of 412/.test(p)));
    log('double clicks: one create, one undo; a stale undo is a 412');

    // -- the selected stream follows steady writes, and an older read never wins -------------
    const steady = await api('POST', '/todo', { description: 'Steady writes' });
    const steadyStream = `todo-${steady.id}`;
    await page.evaluate((s) => { location.hash = `#${s}`; }, steadyStream); // hashchange selects it
    await until(page, 'the hash to select the stream',
      (s) => document.querySelector('[data-testid="selected-stream"]')?.textContent === s
        && document.querySelectorAll('[data-testid="event-row"]').length === 1, steadyStream);
    const shown = new Set();
    let version = 1;
    for (let i = 0; i < 60; i++) { // a write every ~45 ms for about 3 s
      version = (await api('PUT', `/todo/${steady.id}/${i % 2 ? 'done' : 'put-in-progress'}`)).version;
      shown.add(await text(page, 'state-version'));
      await sleep(45);
    }
    const between = [...shown].map(Number).filter((v) => v > 1 && v < version);
    assert.ok(between.length > 0, `the detail showed versions ${[...shown]} while writes went on to ${version}`);
    await until(page, 'the last write to show',
      (v) => document.querySelector('[data-testid="state-version"]')?.textContent === String(v), version);
    // A read whose answer comes after a newer read's is not shown: the newer one is.
    let held = 0;
    await page.route(`**/streams/${steadyStream}?*`, async (route) => {
      if (held++ > 0) return route.continue();
      const answer = await route.fetch(); // the stream as it is now ...
      await sleep(1500); // ... delivered after the write below and the read that shows it
      return route.fulfill({ response: answer });
    });
    await page.evaluate((s) => { guarded(() => selectStream(s)); }, steadyStream); // not awaited
    await sleep(300);
    const final = await api('PUT', `/todo/${steady.id}/done`);
    await page.evaluate((s) => guarded(() => selectStream(s)), steadyStream);
    assert.equal(await text(page, 'state-version'), String(final.version));
    await sleep(2000); // the held answer has come
    await page.unroute(`**/streams/${steadyStream}?*`);
    assert.ok(held >= 2, `the stream was read ${held} times`);
    assert.equal(await text(page, 'state-version'), String(final.version));
    assert.ok(final.version > ROWS);
    assert.deepEqual(await rowVersions(page), range(final.version - ROWS + 1, final.version), `the newest ${ROWS} events`);
    assert.equal(await page.getByTestId('event-state').count(), ROWS, 'every event shown has its state');
    log(`steady writes: versions ${between.length} shown between 1 and ${version}; a late read did not win`);

    // -- a description without spaces wraps inside its panel ------------------------------------
    const long = await api('POST', '/todo', { description: 'L'.repeat(255) });
    await page.evaluate((s) => { location.hash = `#${s}`; }, `todo-${long.id}`);
    await until(page, 'the long todo to show',
      () => document.querySelector('[data-testid="state-description"]')?.textContent.length === 255);
    const table = await page.locator('table.events').boundingBox();
    const panel = await page.locator('#detail').boundingBox();
    assert.ok(table.x + table.width <= panel.x + panel.width,
      `the events table (right edge ${table.x + table.width}) stays in its panel (${panel.x + panel.width})`);
    log('long description: wrapped');

    // -- a link to $all is refused; one in capitals opens the stream at its newest rows -------
    const link = await openPage(context, 'link', problems);
    await link.page.goto(`${base}/ui#$all`);
    await link.page.getByTestId('error').waitFor({ state: 'visible' });
    assert.match(await text(link.page, 'error'), /#\$all is not a stream/);
    assert.equal(await link.page.locator('#detail-body').isHidden(), true, 'nothing is shown for #$all');
    // Named with its UUID in capitals (API §6: the same stream), it is shown as the server names it.
    await link.page.evaluate((h) => { location.hash = h; }, `#todo-${steady.id.toUpperCase()}`);
    await until(link.page, 'the stream named in capitals to open',
      (s) => document.querySelector('[data-testid="selected-stream"]')?.textContent === s, steadyStream);
    assert.equal(new URL(link.page.url()).hash, `#${steadyStream}`);
    assert.deepEqual(await rowVersions(link.page), range(final.version - ROWS + 1, final.version),
      `a long stream opens at its newest ${ROWS} events`);
    assert.equal(await link.page.getByTestId('event-state').count(), ROWS);
    assert.equal(await text(link.page, 'state-version'), String(final.version));
    const linkItem = link.page.locator(`[data-testid="stream-item"][data-stream="${steadyStream}"]`);
    assert.equal(await linkItem.getAttribute('class'), 'selected');
    // A live event of it is read alone: from the version after the last shown, with the
    // state after it from its snapshot, never the whole stream or its history again.
    const mark = link.requests.length;
    const next = await api('PUT', `/todo/${steady.id}/put-in-progress`);
    const nextEvent = (await api('GET', `/streams/${steadyStream}?from=${next.version}&limit=1`)).items[0].id;
    await until(link.page, 'its live event to show',
      (v) => document.querySelector('[data-testid="state-version"]')?.textContent === String(v), next.version);
    assert.deepEqual(await rowVersions(link.page), range(next.version - ROWS + 1, next.version));
    assert.equal(await linkItem.getAttribute('class'), 'selected');
    const read = link.requests.slice(mark).map((u) => new URL(u)).filter((u) => !u.pathname.startsWith('/subscribe/'));
    assert.ok(read.length > 0);
    for (const u of read) {
      if (u.pathname === `/streams/${steadyStream}`) assert.equal(u.searchParams.get('from'), String(next.version), `${u}`);
      else assert.equal(u.pathname, `/todo/${steady.id}/snapshot/${nextEvent}`, `${u}`);
    }
    // Older events on request, each with its state.
    await link.page.getByTestId('events-older').click();
    await until(link.page, 'the older events',
      (n) => document.querySelectorAll('[data-testid="event-row"]').length === n, Math.min(next.version, 2 * ROWS));
    assert.deepEqual(await rowVersions(link.page), range(Math.max(1, next.version - 2 * ROWS + 1), next.version));
    assert.equal(await link.page.getByTestId('event-state').count(), Math.min(next.version, 2 * ROWS));
    assert.equal(await link.page.getByTestId('events-older').isHidden(), next.version <= 2 * ROWS);
    // A link to no stream is a 404; the stream shown stays, named by the #fragment, and live.
    await link.page.evaluate((h) => { location.hash = h; }, `#todo-${crypto.randomUUID()}`);
    await until(link.page, 'the 404', () => /^404 /.test(document.querySelector('[data-testid="error"]')?.textContent));
    assert.equal(await text(link.page, 'selected-stream'), steadyStream);
    assert.equal(new URL(link.page.url()).hash, `#${steadyStream}`);
    const after404 = await api('PUT', `/todo/${steady.id}/done`);
    await until(link.page, 'the stream shown to follow its writes after a 404',
      (v) => document.querySelector('[data-testid="state-version"]')?.textContent === String(v), after404.version);
    // #$all again, by hashchange this time.
    await link.page.evaluate(() => { location.hash = '#$all'; });
    await until(link.page, 'the #$all refusal', () => /#\$all is not a stream/.test(document.querySelector('[data-testid="error"]')?.textContent));
    assert.equal(new URL(link.page.url()).hash, `#${steadyStream}`);
    assert.equal(await text(link.page, 'selected-stream'), steadyStream);
    const global = link.requests.filter((u) => /\/streams\/(%24|\$)all/i.test(u));
    assert.deepEqual(global, [], '#$all reads nothing of the log');
    // A stream clicked whose read is held back, then a link to no stream: the 404 cancels
    // nothing, and the stream clicked is shown when its answer comes.
    const slowStream = `todo-${long.id}`;
    let releaseSlow;
    const slowReleased = new Promise((resolve) => { releaseSlow = resolve; });
    let slowAsked;
    const slowRead = new Promise((resolve) => { slowAsked = resolve; });
    await link.page.route((u) => u.pathname === `/streams/${slowStream}`, async (route) => {
      slowAsked();
      await slowReleased;
      return route.continue();
    }, { times: 1 });
    await link.page.locator(`[data-testid="stream-item"][data-stream="${slowStream}"] button`).click();
    await slowRead;
    await link.page.evaluate((h) => { location.hash = h; }, `#todo-${crypto.randomUUID()}`);
    await until(link.page, 'the 404 while the stream clicked is on its way',
      () => /^404 /.test(document.querySelector('[data-testid="error"]')?.textContent));
    assert.equal(await text(link.page, 'selected-stream'), steadyStream);
    assert.equal(new URL(link.page.url()).hash, `#${steadyStream}`);
    releaseSlow();
    await until(link.page, 'the stream clicked before the 404 to show',
      (s) => document.querySelector('[data-testid="selected-stream"]')?.textContent === s, slowStream);
    assert.equal(new URL(link.page.url()).hash, `#${slowStream}`);
    assert.deepEqual(await rowVersions(link.page), [1]);
    assert.equal((await text(link.page, 'state-description')).length, 255);
    assert.equal(await link.page.locator(`[data-testid="stream-item"][data-stream="${slowStream}"]`).getAttribute('class'), 'selected');
    await link.page.close();
    problems.splice(0, problems.length, ...problems.filter((p) => !/^link console error: .*status of 404/.test(p)));
    log(`links: #$all refused; capitals open ${steadyStream} at v${final.version - ROWS + 1}..; a new event read from v${next.version}; a 404 keeps it and cancels no selection on its way`);

    // -- the stream list keeps one page per page loaded; ↻ keeps what came meanwhile ---------
    const lists = await openPage(context, 'lists', problems);
    await lists.page.goto(`${base}/ui`);
    await until(lists.page, 'the live tail to connect',
      () => document.querySelector('[data-testid="live-status"]')?.textContent === 'live');
    const many = await Promise.all(range(1, PAGE_SIZE + 10).map((i) => api('POST', '/todo', { description: `Many ${i}` })));
    const newest = many.reduce((a, b) => (a.position > b.position ? a : b));
    await until(lists.page, 'the newest stream on top of a full list',
      ([s, n]) => document.querySelectorAll('[data-testid="stream-item"]').length === n
        && document.querySelector('[data-testid="stream-item"]').dataset.stream === s,
      [`todo-${newest.id}`, PAGE_SIZE]);
    assert.deepEqual(await listedStreams(lists.page), (await api('GET', `/streams?limit=${PAGE_SIZE}`)).items.map((s) => s.stream),
      `the ${PAGE_SIZE} streams written last, after ${many.length} new ones came live`);
    // "Older streams" goes on after the streams kept.
    const twoPages = (await api('GET', `/streams?limit=${2 * PAGE_SIZE}`));
    await lists.page.getByTestId('streams-older').click();
    await until(lists.page, 'the older page',
      (n) => document.querySelectorAll('[data-testid="stream-item"]').length === n, twoPages.items.length);
    assert.deepEqual(await listedStreams(lists.page), twoPages.items.map((s) => s.stream));
    assert.equal(await lists.page.getByTestId('streams-older').isHidden(), twoPages.next === null);
    // ↻ whose answer was read before a stream was written, and comes after it is listed.
    const during = await writeWhileAnswerHeld(lists.page, `**/streams?limit=${PAGE_SIZE}`, 'During a refresh');
    await lists.page.getByTestId('streams-refresh').click();
    await until(lists.page, 'the list cut back to one page by ↻',
      (n) => document.querySelectorAll('[data-testid="stream-item"]').length === n, PAGE_SIZE);
    const refreshed = await listedStreams(lists.page);
    assert.equal(refreshed[0], `todo-${(await during.written).id}`, 'a stream written during ↻ stays listed, on top');
    assert.deepEqual(refreshed, (await api('GET', `/streams?limit=${PAGE_SIZE}`)).items.map((s) => s.stream));
    log(`stream list: ${PAGE_SIZE} kept of ${many.length} new; older page; ↻ kept todo-${during.id}`);

    // -- a hidden tab closes its tail, and shown again goes on where it was -----------------
    const tailFrom = await lists.page.evaluate(() => app.tailFrom);
    const opened = await lists.page.evaluate(() => window.__sources.length);
    await setHidden(lists.page, true);
    assert.equal(await lists.page.evaluate(() => window.__sources.at(-1).readyState), 2, 'closed while hidden');
    assert.equal(await text(lists.page, 'live-status'), 'paused');
    const whileHidden = [];
    for (let i = 0; i < 3; i++) whileHidden.push(await api('POST', '/todo', { description: `While hidden ${i + 1}` }));
    await setHidden(lists.page, false);
    await until(lists.page, 'the writes made while hidden in the tail',
      (p) => !!document.querySelector(`[data-testid="live-event"][data-position="${p}"]`), whileHidden[2].position);
    const sources = await lists.page.evaluate(() => window.__sources.map((s) => s.url));
    assert.equal(sources.length, opened + 1, 'one EventSource opened when shown again');
    assert.equal(new URL(sources.at(-1)).search, `?from=${tailFrom}`);
    const resumed = await livePositions(lists.page);
    assert.deepEqual(resumed, range(resumed.at(-1), whileHidden[2].position).reverse(), 'the tail has no gap and no repeat');
    assert.ok(resumed.at(-1) <= Math.min(...many.map((m) => m.position)), 'from the first write after the tab opened');
    log(`hidden: tail closed at #${tailFrom - 1}, reopened from ${tailFrom}, ${resumed.length} events without gaps`);

    // -- "Older streams" loses no stream to one written while its page is on its way ------------
    // More than two pages of streams, so that the page merged cuts the list and a third follows.
    const existing = (await api('GET', '/streams?limit=1000')).items.length;
    const more = await Promise.all(range(1, Math.max(0, 2 * PAGE_SIZE + 10 - existing))
      .map((i) => api('POST', '/todo', { description: `More ${i}` })));
    if (more.length) {
      const top = more.reduce((a, b) => (a.position > b.position ? a : b));
      await until(lists.page, 'the streams added on top of the list',
        (s) => document.querySelector('[data-testid="stream-item"]')?.dataset.stream === s, `todo-${top.id}`);
    }
    // A page refused keeps the list at one page: a stream coming live after it pushes one out.
    await lists.page.route((u) => u.pathname === '/streams' && u.searchParams.has('before'), (route) => route.fulfill({
      status: 503,
      contentType: 'application/problem+json',
      body: JSON.stringify({ type: 'about:blank', title: 'Service Unavailable', status: 503, detail: 'older page refused by the test' }),
    }), { times: 1 });
    await lists.page.getByTestId('streams-older').click();
    await until(lists.page, 'the refused older page to be said',
      () => /^503 .*older page refused/.test(document.querySelector('[data-testid="error"]')?.textContent));
    const afterRefused = await api('POST', '/todo', { description: 'After a refused older page' });
    await lists.page.locator(`[data-testid="stream-item"][data-stream="todo-${afterRefused.id}"]`).waitFor();
    assert.deepEqual(await listedStreams(lists.page), (await api('GET', `/streams?limit=${PAGE_SIZE}`)).items.map((s) => s.stream),
      `still the ${PAGE_SIZE} streams written last after a refused older page`);
    problems.splice(0, problems.length, ...problems.filter((p) => !/^lists console error: .*status of 503/.test(p)));
    const onePage = await listedStreams(lists.page);
    assert.equal(onePage.length, PAGE_SIZE);
    // The page after the oldest listed, read before a write, answered after it is listed.
    const duringOlder = await writeWhileAnswerHeld(lists.page,
      (u) => u.pathname === '/streams' && u.searchParams.has('before'), 'During an older page');
    await lists.page.getByTestId('streams-older').click();
    await until(lists.page, 'the older page after a stream came live',
      (n) => document.querySelectorAll('[data-testid="stream-item"]').length === n, 2 * PAGE_SIZE);
    const withOlder = await listedStreams(lists.page);
    assert.ok(withOlder.includes(onePage.at(-1)), `${onePage.at(-1)}, the oldest listed when "Older streams" was clicked, stays listed`);
    assert.equal(withOlder[0], `todo-${(await duringOlder.written).id}`);
    assert.deepEqual(withOlder, (await api('GET', `/streams?limit=${2 * PAGE_SIZE}`)).items.map((s) => s.stream),
      'the list holds the newest two pages of streams, none lost');
    // The next "Older streams" goes on right after the oldest of those.
    const threePages = await api('GET', `/streams?limit=${3 * PAGE_SIZE}`);
    await lists.page.getByTestId('streams-older').click();
    await until(lists.page, 'the third page',
      (n) => document.querySelectorAll('[data-testid="stream-item"]').length === n, threePages.items.length);
    assert.deepEqual(await listedStreams(lists.page), threePages.items.map((s) => s.stream));
    assert.equal(await lists.page.getByTestId('streams-older').isHidden(), threePages.next === null);
    await lists.page.close();
    log(`older streams: one refused kept one page; todo-${duringOlder.id} came live while a page was on its way; ${onePage.at(-1)} kept; ${threePages.items.length} after a third page`);

    // -- a hot todo's tab shown again reads only the rows it shows -------------------------------
    const hotTodo = await api('POST', '/todo', { description: 'Hot 0' });
    const hotStream = `todo-${hotTodo.id}`;
    const hot = await openPage(context, 'hot', problems);
    await hot.page.goto(`${base}/ui#${hotStream}`);
    await until(hot.page, 'the hot todo to open, its tail live',
      (s) => document.querySelector('[data-testid="selected-stream"]')?.textContent === s
        && document.querySelector('[data-testid="live-status"]')?.textContent === 'live', hotStream);
    await setHidden(hot.page, true);
    // More events than one read of a stream answers (1000), written ten at a time.
    const HOT_WRITES = 1100;
    let hotLast = hotTodo;
    for (let i = 0; i < HOT_WRITES; i += 10) {
      const acks = await Promise.all(range(i + 1, i + 10).map((n) =>
        api('PUT', '/todo/change-description', { id: hotTodo.id, description: `Hot ${n}` })));
      for (const a of acks) if (a.version > hotLast.version) hotLast = a;
    }
    assert.equal(hotLast.version, HOT_WRITES + 1);
    const hotMark = hot.requests.length;
    await setHidden(hot.page, false);
    await until(hot.page, 'the tail to catch up with the writes made while hidden',
      (p) => !!document.querySelector(`[data-testid="live-event"][data-position="${p}"]`), hotLast.position);
    await until(hot.page, 'the newest version to show, with no read of it left',
      (v) => document.querySelector('[data-testid="state-version"]')?.textContent === String(v) && refreshing === null,
      hotLast.version);
    const newestRows = range(hotLast.version - ROWS + 1, hotLast.version);
    assert.deepEqual(await rowVersions(hot.page), newestRows, `the newest ${ROWS} events`);
    const hotHistory = (await api('GET', `/todo/${hotTodo.id}/history`)).items.slice(-ROWS);
    assert.deepEqual(await hot.page.getByTestId('event-state').allTextContents(),
      hotHistory.map((h) => `${h.snapshot.status} ${h.snapshot.description}`), 'each with the state after it');
    assert.equal(await text(hot.page, 'state-description'), hotHistory.at(-1).snapshot.description);
    const since = hot.requests.slice(hotMark).map((u) => new URL(u));
    const streamReads = since.filter((u) => u.pathname === `/streams/${hotStream}`)
      .map((u) => ({ from: Number(u.searchParams.get('from')), limit: Number(u.searchParams.get('limit')) }));
    const probes = streamReads.filter((r) => r.limit === 1);
    const rowReads = streamReads.filter((r) => r.limit > 1);
    for (const r of rowReads)
      assert.ok(r.from >= newestRows[0] && r.limit <= ROWS, `a read of rows not shown: ${JSON.stringify(r)}`);
    assert.ok(rowReads.reduce((n, r) => n + r.limit, 0) <= ROWS, `events read beyond one-event probes: ${JSON.stringify(rowReads)}`);
    assert.ok(probes.length < HOT_WRITES / 10, `${probes.length} one-event probes for ${HOT_WRITES} new events`);
    const hotSnapshots = since.filter((u) => u.pathname.startsWith(`/todo/${hotTodo.id}/`));
    assert.ok(hotSnapshots.length <= ROWS, `${hotSnapshots.length} reads of states`);
    for (const u of hotSnapshots)
      assert.ok(hotHistory.some((h) => u.pathname === `/todo/${hotTodo.id}/snapshot/${h.id}`), `${u}`);
    await hot.page.close();
    log(`hot todo: ${HOT_WRITES} events while hidden; shown again, ${probes.length} one-event probes, ${rowReads.length} read(s) of rows, ${hotSnapshots.length} states`);

    // -- a tail or a first load refused is asked again; nothing from before is replayed ----------
    const refused = await context.newPage();
    refused.setDefaultTimeout(TIMEOUT);
    refused.on('pageerror', (e) => problems.push(`refused page error: ${e.message}`));
    const refuse = async (route) => route.fulfill({
      status: 503,
      contentType: 'application/problem+json',
      body: JSON.stringify({ type: 'about:blank', title: 'Service Unavailable', status: 503, detail: 'refused by the test' }),
    });
    await refused.route('**/streams?limit=50', refuse, { times: 1 });
    await refused.route('**/subscribe/**', refuse, { times: 1 });
    await refused.goto(`${base}/ui`);
    await refused.getByTestId('error').waitFor({ state: 'visible' });
    assert.match(await text(refused, 'error'), /503 .*refused by the test/);
    await until(refused, 'the refused tail to come back',
      () => document.querySelector('[data-testid="live-status"]')?.textContent === 'live');
    await refused.getByTestId('error').waitFor({ state: 'hidden' });
    assert.equal(await refused.getByTestId('live-event').count(), 0, 'nothing from before is replayed');
    const afterRefusal = await api('POST', '/todo', { description: 'After a refusal' });
    await refused.locator(`[data-testid="live-event"][data-position="${afterRefusal.position}"]`).waitFor();
    assert.equal(await refused.getByTestId('live-event').count(), 1);
    // An address whose #fragment is not a stream name is said so.
    await refused.goto(`${base}/ui#%E0%A4%A`);
    await refused.getByTestId('error').waitFor({ state: 'visible' });
    assert.match(await text(refused, 'error'), /is not a stream name/);
    await refused.close();
    log('refusals: the first load and the tail asked again; a bad #fragment said');

    // -- Swagger UI renders the server's document -------------------------------------------
    const swagger = await context.newPage();
    swagger.on('pageerror', (e) => problems.push(`swagger page error: ${e.message}`));
    swagger.on('console', (m) => {
      if (m.type() === 'error' && /Content Security Policy/.test(m.text())) problems.push(`swagger: ${m.text()}`);
    });
    await swagger.goto(`${base}/swagger`);
    await swagger.locator('.opblock').first().waitFor();
    const operations = await swagger.locator('.opblock').count();
    assert.ok(operations >= 20, `Swagger UI shows ${operations} operations`);
    assert.equal(await swagger.locator('.errors-wrapper').count(), 0, 'Swagger UI reports no errors');
    // Its Execute runs under the page's Content-Security-Policy (a violation is a console error).
    const healthz = swagger.locator('#operations-operations-healthz');
    await healthz.locator('.opblock-summary').click();
    await healthz.locator('button.execute').click();
    await healthz.locator('.live-responses-table .response-col_status', { hasText: '200' }).waitFor();
    // The admin token typed into Authorize is not kept in localStorage.
    await swagger.locator('.auth-wrapper button.authorize').click();
    await swagger.locator('.modal-ux input').first().fill('some-admin-token');
    await swagger.locator('.modal-ux .auth-btn-wrapper button.authorize').click();
    await swagger.locator('.modal-ux .auth-btn-wrapper button.btn-done').click();
    assert.equal(await swagger.evaluate(() => localStorage.getItem('authorized')), null, 'no token in localStorage');
    log(`swagger: ${operations} operations; Execute ran; Authorize kept nothing`);

    assert.deepEqual(problems, [], 'no page errors, console errors or failed requests');
  } finally {
    await browser.close();
  }
  return 0;
}

main().then(
  (code) => { if (code === 0) log('all checks passed'); process.exit(code); },
  (e) => { console.error(`ui: FAILED: ${e.stack || e}`); process.exit(1); });
