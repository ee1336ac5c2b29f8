// eventsd event browser: streams, their events, the state of a todo after each event (with
// undo), and a live tail of $all. Plain JS, no framework; every text goes through textContent.
'use strict';

const PAGE_SIZE = 50;        // streams per page
const LIVE_MAX = 100;        // live-tail entries kept
const TODO_PREFIX = 'todo-';

const $ = (id) => document.getElementById(id);

const app = {
  streams: new Map(),   // stream name -> {stream, version, lastPosition}
  olderBefore: null,    // `before` of the next older page, null at the end
  selected: null,       // selected stream name
  head: 0,              // highest position seen
  source: null,         // EventSource of the live tail
  tailFrom: 1,          // the position the live tail asks for when it connects again by hand
  retryMs: 1000,        // wait before that, doubled up to 30 s while refused
  reads: 0,             // reads of a selected stream started; only the newest is shown
  createKey: null,      // Idempotency-Key of the create being tried, kept for its retries
};

// -- helpers -------------------------------------------------------------------

/** Creates an element; attrs go through setAttribute, children are nodes or text. */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

class ApiError extends Error {
  constructor(status, problem) {
    const p = problem || {};
    let msg = `${status} ${p.title || 'Error'}${p.detail ? `: ${p.detail}` : ''}`;
    for (const e of p.errors || []) msg += `\n• ${e.field}: ${(e.messages || []).join('; ')}`;
    super(msg);
    this.status = status;
    this.problem = p;
  }
}

/** Calls the API; answers the parsed JSON body or throws an ApiError (problem+json made readable). */
async function api(method, path, body, headers = {}) {
  const init = { method, headers: { Accept: 'application/json', ...headers } };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, { title: 'Network error', detail: e.message });
  }
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!res.ok) throw new ApiError(res.status, data || { title: res.statusText, detail: text });
  return data;
}

/** Shows an ApiError, a message of the page's own (a string), or nothing (null). */
function showError(err) {
  const box = $('error');
  box.textContent = err ? (err instanceof ApiError ? err.message : String(err)) : '';
  box.hidden = !err;
  if (err && !(err instanceof ApiError) && typeof err !== 'string') console.error(err);
}

/**
 * Runs an async action; a failure is shown in the error box. A success of a person's action
 * clears it; a background refresh (`quiet`) leaves it, so it cannot hide an error just shown.
 */
async function guarded(action, quiet = false) {
  try {
    await action();
    if (!quiet) showError(null);
  } catch (e) {
    showError(e);
  }
}

const todoIdOf = (stream) => (stream && stream.startsWith(TODO_PREFIX) ? stream.slice(TODO_PREFIX.length) : null);
const shortJson = (v) => (v && Object.keys(v).length ? JSON.stringify(v) : '');

// -- streams list ----------------------------------------------------------------

function renderStreams() {
  const list = $('stream-list');
  const items = [...app.streams.values()].sort((a, b) => b.lastPosition - a.lastPosition);
  list.replaceChildren(...items.map((s) => el('li', {
    'data-testid': 'stream-item',
    'data-stream': s.stream,
    class: s.stream === app.selected ? 'selected' : null,
  }, el('button', { type: 'button', onclick: () => guarded(() => selectStream(s.stream)) },
    el('span', { class: 'stream-name' }, s.stream),
    el('span', { class: 'muted' }, `v${s.version} · #${s.lastPosition}`)))));
  $('streams-empty').hidden = items.length > 0;
  $('streams-older').hidden = app.olderBefore === null;
}

/** Loads a page of streams: the newest when `older` is false, else the next older page. */
async function loadStreams(older = false) {
  const q = new URLSearchParams({ limit: String(PAGE_SIZE) });
  if (older && app.olderBefore !== null) q.set('before', String(app.olderBefore));
  const page = await api('GET', `/streams?${q}`);
  if (!older) app.streams.clear();
  for (const s of page.items) {
    app.streams.set(s.stream, s);
    app.head = Math.max(app.head, s.lastPosition);
  }
  app.olderBefore = page.next ?? null;
  renderStreams();
}

/** Records that `stream` reached `version` at `position` (from the live tail or a write). */
function bumpStream(stream, version, position) {
  const known = app.streams.get(stream);
  if (known && known.lastPosition >= position) return;
  app.streams.set(stream, { stream, version, lastPosition: position });
  app.head = Math.max(app.head, position);
  renderStreams();
}

// -- selected stream -------------------------------------------------------------

async function readWholeStream(stream) {
  const events = [];
  let from = 1;
  while (from !== null) {
    const page = await api('GET', `/streams/${encodeURIComponent(stream)}?from=${from}&limit=1000`);
    events.push(...page.items);
    from = page.items.length ? page.next ?? null : null;
  }
  return events;
}

async function selectStream(stream) {
  const read = ++app.reads;
  app.selected = stream;
  const hash = `#${encodeURIComponent(stream)}`;
  if (location.hash !== hash) history.replaceState(null, '', hash);
  renderStreams();
  const todoId = todoIdOf(stream);
  // The events first, then the history: it is as new as they are or newer, so every event
  // shown has its state, and the state on top is the one after the last event shown.
  const events = await readWholeStream(stream);
  const hist = todoId ? await api('GET', `/todo/${todoId}/history`) : null;
  if (read !== app.reads) return; // a newer read (of this stream or another) was started
  const after = new Map((hist ? hist.items : []).map((h) => [h.id, h.snapshot]));
  renderDetail(stream, todoId, events, after);
}

function renderDetail(stream, todoId, events, after) {
  $('detail-empty').hidden = true;
  $('detail-body').hidden = false;
  $('detail-body').classList.toggle('is-todo', !!todoId);
  $('selected-stream').textContent = stream;

  const version = events.length ? events[events.length - 1].version : 0;
  const last = events.length ? after.get(events[events.length - 1].id) : null;
  $('state').hidden = !last;
  $('state-description').textContent = last ? last.description : '';
  $('state-status').textContent = last ? last.status : '';
  $('state-version').textContent = last ? String(last.version) : '';

  $('event-list').replaceChildren(...events.map((e) => {
    const snap = after.get(e.id);
    return el('tr', { 'data-testid': 'event-row', 'data-event-id': e.id, 'data-version': e.version },
      el('td', {}, e.version),
      el('td', {}, e.position),
      el('td', { class: 'type' }, e.type),
      el('td', { class: 'muted' }, e.occurredAt),
      el('td', { class: 'data' }, shortJson(e.data)),
      el('td', { class: 'todo-only state-after' }, snap ? el('span', { 'data-testid': 'event-state' },
        el('span', { class: `status status-${snap.status}` }, snap.status), ' ', snap.description) : ''),
      el('td', { class: 'todo-only' }, todoId ? el('button', {
        type: 'button', class: 'small', 'data-testid': 'undo-button',
        title: 'Append an event restoring the state right after this one',
        onclick: () => guarded(() => undoTo(todoId, e.id, version)),
      }, 'undo to here') : ''));
  }));
}

/**
 * Undoes to `eventId` of a todo shown at `version`. The buttons are off until the answer (a
 * second click is not a second undo), and If-Match makes a todo changed since it was shown a
 * 412, after which the page shows it as it is now.
 */
async function undoTo(todoId, eventId, version) {
  const buttons = [...document.querySelectorAll('[data-testid="undo-button"]')];
  for (const b of buttons) b.disabled = true;
  try {
    const w = await api('PUT', `/todo/${todoId}/undo-to/${eventId}`, undefined, { 'If-Match': `"${version}"` });
    bumpStream(TODO_PREFIX + w.id, w.version, w.position);
    await selectStream(TODO_PREFIX + w.id);
  } catch (e) {
    if (e.status === 412) await guarded(() => selectStream(TODO_PREFIX + todoId), true);
    throw e;
  } finally {
    for (const b of buttons) b.disabled = false; // those still shown, if the stream was not read again
  }
}

// -- live tail ---------------------------------------------------------------------

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// The selected stream is read again 150 ms after an event of it comes; under steady writes
// a read in progress is followed by one more, 150 ms after it ends, never cut short.
let refreshing = false;
let refreshAgain = false;
async function refreshSelectedSoon() {
  refreshAgain = true;
  if (refreshing) return;
  refreshing = true;
  try {
    while (refreshAgain) {
      await sleep(150);
      refreshAgain = false;
      if (app.selected) await guarded(() => selectStream(app.selected), true);
    }
  } finally {
    refreshing = false;
  }
}

function onLiveEvent(msg) {
  let e;
  try { e = JSON.parse(msg.data); } catch { return; }
  const tail = $('live-tail');
  if (tail.querySelector(`[data-position="${Number(e.position)}"]`)) return; // replay after reconnect
  app.tailFrom = Math.max(app.tailFrom, Number(e.position) + 1);
  tail.prepend(el('li', { 'data-testid': 'live-event', 'data-position': e.position, 'data-stream': e.stream },
    el('span', { class: 'muted' }, `#${e.position}`), ' ',
    el('a', { href: `#${encodeURIComponent(e.stream)}`, onclick: (ev) => { ev.preventDefault(); guarded(() => selectStream(e.stream)); } }, e.stream),
    ' ', el('span', { class: 'type' }, e.type), ' ', el('span', { class: 'data' }, shortJson(e.data))));
  while (tail.children.length > LIVE_MAX) tail.lastElementChild.remove();
  bumpStream(e.stream, e.version, e.position);
  if (e.stream === app.selected) refreshSelectedSoon();
}

/**
 * Subscribes to $all from `app.tailFrom`. After a cut, EventSource connects again by itself
 * and sends Last-Event-ID, which the server honours over `from`. An answer other than a
 * stream (a 503 while the server has as many subscribers as it takes, say) makes it give up
 * for good: then the page asks again, later and later, from where its tail is.
 */
function startLiveTail() {
  const status = $('live-status');
  const source = new EventSource(`/subscribe/$all?from=${app.tailFrom}`);
  app.source = source;
  source.onopen = () => {
    status.textContent = 'live';
    status.className = 'badge ok';
    app.retryMs = 1000;
  };
  source.onerror = () => {
    status.textContent = 'reconnecting';
    status.className = 'badge warn';
    if (source.readyState !== EventSource.CLOSED) return;
    setTimeout(() => { if (app.source === source) startLiveTail(); }, app.retryMs);
    app.retryMs = Math.min(app.retryMs * 2, 30000);
  };
  source.onmessage = onLiveEvent;
}

// -- create form -------------------------------------------------------------------

function newKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return [...bytes].map((b) => b.toString(16).padStart(2, '0')).join('');
}

/**
 * Creates a todo. The button is off until the answer (a double click creates one todo), and
 * the Idempotency-Key stays the same for a retry of the same text after a failure whose
 * outcome the page cannot know (no answer, a 5xx): the retry answers the todo created, if any.
 */
async function createTodo(ev) {
  ev.preventDefault();
  const input = $('create-description');
  const button = $('create-submit');
  if (button.disabled) return;
  button.disabled = true;
  try {
    app.createKey ??= newKey();
    const w = await api('POST', '/todo', { description: input.value }, { 'Idempotency-Key': app.createKey });
    app.createKey = null;
    input.value = '';
    bumpStream(TODO_PREFIX + w.id, w.version, w.position);
    await selectStream(TODO_PREFIX + w.id);
  } catch (e) {
    if (e.status >= 400 && e.status < 500) app.createKey = null; // nothing was created
    throw e;
  } finally {
    button.disabled = false;
  }
}

// -- start -------------------------------------------------------------------------

/** Selects the stream the address's #fragment names, if it names one. */
function selectFromHash() {
  let stream;
  try {
    stream = decodeURIComponent(location.hash.slice(1));
  } catch {
    showError(`The address's #${location.hash.slice(1)} is not a stream name.`);
    return;
  }
  if (stream && stream !== app.selected) guarded(() => selectStream(stream));
}

/**
 * Loads the newest streams, then starts the live tail just after the head they show: nothing
 * is missed, nothing repeated. Until the head is known the tail waits (from position 1 it
 * would replay the whole log as live); a failed load is shown and tried again every 3 s.
 */
async function start(failedBefore = false) {
  try {
    await loadStreams(false);
  } catch (e) {
    showError(e);
    setTimeout(() => start(true), 3000);
    return;
  }
  if (failedBefore) showError(null);
  app.tailFrom = app.head + 1;
  startLiveTail();
  selectFromHash();
}

function init() {
  $('create-form').addEventListener('submit', (ev) => guarded(() => createTodo(ev)));
  $('create-description').addEventListener('input', () => { app.createKey = null; });
  $('streams-older').addEventListener('click', () => guarded(() => loadStreams(true)));
  $('streams-refresh').addEventListener('click', () => guarded(() => loadStreams(false)));
  window.addEventListener('hashchange', selectFromHash);
  start();
}

init();
