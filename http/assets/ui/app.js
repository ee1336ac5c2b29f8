// eventsd event browser: streams, their events, the state of a todo after each event (with
// undo), and a live tail of $all. Plain JS, no framework; every text goes through textContent.
'use strict';

const PAGE_SIZE = 50;        // streams per page; the list keeps this many per page loaded
const ROWS = 50;             // events of the selected stream shown at first, and added by "Older events"
const LIVE_MAX = 100;        // live-tail entries kept
const TODO_PREFIX = 'todo-';

const $ = (id) => document.getElementById(id);

const app = {
  streams: new Map(),   // stream name -> {stream, version, lastPosition}, at most listMax of them
  listMax: PAGE_SIZE,   // streams kept, the most recently written: PAGE_SIZE per page loaded
  olderBefore: null,    // `before` of the next older page, null at the end
  shown: null,          // the selected stream: {stream, todoId, first, last, seen, limit}, see selectStream
  head: 0,              // highest position seen
  source: null,         // EventSource of the live tail, null while closed
  tailFrom: null,       // the position the live tail asks for next; null until the head is known
  retryMs: 1000,        // wait before that, doubled up to 30 s while refused
  selections: 0,        // selections started; each is numbered by this count as it starts
  selected: 0,          // the number of the selection shown; one numbered lower is not shown after it
  createKey: null,      // Idempotency-Key of the create being tried, kept for its retries
  liveQueue: [],        // live events not drawn yet, oldest first, at most LIVE_MAX
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
const streamPath = (stream) => `/streams/${encodeURIComponent(stream)}`;
const todoPath = (todoId) => `/todo/${encodeURIComponent(todoId)}`;

/** Makes the address's #fragment name `stream` (without a hashchange: it is shown already). */
function setHash(stream) {
  const hash = `#${encodeURIComponent(stream)}`;
  if (location.hash !== hash) history.replaceState(null, '', hash);
}

// Live events can come by the thousand a second: what they change is drawn once per frame.
const dirty = new Set();
function drawSoon(part) {
  if (dirty.size === 0) requestAnimationFrame(draw);
  dirty.add(part);
}
function draw() {
  const parts = [...dirty];
  dirty.clear();
  if (parts.includes('streams')) renderStreams();
  if (parts.includes('live')) renderLive();
}

// -- streams list ----------------------------------------------------------------

function renderStreams() {
  const list = $('stream-list');
  const items = [...app.streams.values()].sort((a, b) => b.lastPosition - a.lastPosition);
  list.replaceChildren(...items.map((s) => el('li', {
    'data-testid': 'stream-item',
    'data-stream': s.stream,
    class: s.stream === app.shown?.stream ? 'selected' : null,
  }, el('button', { type: 'button', onclick: () => guarded(() => selectStream(s.stream)) },
    el('span', { class: 'stream-name' }, s.stream),
    el('span', { class: 'muted' }, `v${s.version} · #${s.lastPosition}`)))));
  $('streams-empty').hidden = items.length > 0;
  $('streams-older').hidden = app.olderBefore === null;
}

/** Keeps the `app.listMax` streams written last; "Older streams" then goes on after those. */
function trimStreams() {
  if (app.streams.size <= app.listMax) return;
  const items = [...app.streams.values()].sort((a, b) => b.lastPosition - a.lastPosition);
  for (const s of items.slice(app.listMax)) app.streams.delete(s.stream);
  app.olderBefore = items[app.listMax - 1].lastPosition;
}

/** Records what the server says of `s` unless the page knows something newer of it. */
function mergeStream(s) {
  const known = app.streams.get(s.stream);
  if (known && known.lastPosition >= s.lastPosition) return false;
  app.streams.set(s.stream, s);
  app.head = Math.max(app.head, s.lastPosition);
  return true;
}

/**
 * Loads the newest page of streams and cuts the list back to one page. A page is merged into
 * the list, not put in its place: a stream written while the page was on its way keeps the
 * newer entry the live tail gave it.
 */
async function loadStreams() {
  const page = await api('GET', `/streams?limit=${PAGE_SIZE}`);
  app.listMax = PAGE_SIZE;
  for (const s of page.items) mergeStream(s);
  app.olderBefore = page.next ?? null;
  trimStreams();
  renderStreams();
}

let loadingOlder = null; // the "Older streams" load on its way: a second click waits for it

/**
 * Loads the page of streams after the oldest kept, merged like loadStreams's. The list keeps
 * PAGE_SIZE more from the moment the page is asked for: raised only once it came, a stream
 * coming live meanwhile would push the oldest kept out, and the page, which starts after
 * that one, would never bring it back.
 */
function loadOlderStreams() {
  loadingOlder ??= (async () => {
    const before = app.olderBefore;
    if (before === null) return;
    app.listMax += PAGE_SIZE;
    let page;
    try {
      page = await api('GET', `/streams?limit=${PAGE_SIZE}&before=${before}`);
    } catch (e) {
      app.listMax = Math.max(PAGE_SIZE, app.listMax - PAGE_SIZE);
      trimStreams();
      drawSoon('streams');
      throw e;
    }
    // The cut moved meanwhile: more than PAGE_SIZE streams came live, filling the list with
    // streams newer than any of the page's, or ↻ cut it back to one page. The page no longer
    // follows the list; the next click asks for the one that does.
    if (app.olderBefore !== before) return;
    for (const s of page.items) mergeStream(s);
    app.olderBefore = page.next ?? null;
    trimStreams();
    renderStreams();
  })().finally(() => { loadingOlder = null; });
  return loadingOlder;
}

/** Records that `stream` reached `version` at `position` (from the live tail or a write). */
function bumpStream(stream, version, position) {
  if (!mergeStream({ stream, version, lastPosition: position })) return;
  trimStreams();
  drawSoon('streams');
}

// -- selected stream -------------------------------------------------------------

/** Up to `count` events of `stream` from version `from` on, page by page. */
async function readEvents(stream, from, count = Infinity) {
  const events = [];
  while (from !== null && events.length < count) {
    const limit = Math.min(1000, count - events.length);
    const page = await api('GET', `${streamPath(stream)}?from=${from}&limit=${limit}`);
    events.push(...page.items);
    from = page.items.length ? page.next ?? null : null;
  }
  return events;
}

/**
 * Finds the last version of the stream `name` with reads of one event each: from `hint` (a
 * version it likely has) on in doubling steps until one is past its end, then by halving.
 * Answers {stream, last, event}: `stream` spelt as the server spells it, `event` the last.
 */
async function findLast(name, hint) {
  let have = 0;         // a version the stream has
  let past = Infinity;  // a version past its end
  let step = 1;
  let probe = Math.max(1, hint);
  for (;;) {
    const page = await api('GET', `${streamPath(name)}?from=${probe}&limit=1`);
    const e = page.items[0];
    if (e && page.next === null) return { stream: e.stream, last: e.version, event: e };
    if (!e && probe === 1) throw new ApiError(404, { title: 'Not Found', detail: `${name} has no events` });
    if (e) have = probe;
    else past = probe;
    if (past <= have + 1) { past = Infinity; step = 1; } // it grew meanwhile: on from `have`
    if (past === Infinity) {
      probe = have + step;
      step *= 2;
    } else {
      probe = Math.max(1, Math.floor((have + past) / 2));
    }
  }
}

/**
 * The state of a todo right after each of `events`, by event id, as the server folds it (the
 * page never folds events itself): from the history when the events are the whole stream
 * (one request), else from each event's snapshot.
 */
async function statesAfter(todoId, events, whole) {
  if (!todoId || !events.length) return new Map();
  if (whole) {
    const hist = await api('GET', `${todoPath(todoId)}/history`);
    return new Map(hist.items.map((h) => [h.id, h.snapshot]));
  }
  const snaps = await Promise.all(events.map((e) =>
    api('GET', `${todoPath(todoId)}/snapshot/${encodeURIComponent(e.id)}`)));
  return new Map(events.map((e, i) => [e.id, snaps[i]]));
}

/**
 * Shows the newest ROWS events of the stream `name` (with a todo's state after each). The
 * selection and the address's #fragment change only when that has been read, and to the
 * name as the server spells it (a UUID in capitals names the same stream). A selection
 * answering after one started later has been shown is not shown; one that fails hides none.
 */
async function selectStream(name) {
  const selection = ++app.selections;
  const { stream, last } = await findLast(name, app.streams.get(name)?.version ?? 1);
  const events = (await readEvents(stream, Math.max(1, last - ROWS + 1))).slice(-ROWS);
  const todoId = todoIdOf(stream);
  const after = await statesAfter(todoId, events, events[0].version === 1);
  // Counted only now that it has been read: a later selection that fails (a link to no
  // stream, say) must not leave the person with neither stream shown.
  if (selection < app.selected) return;
  app.selected = selection;
  // first, last: the versions shown; seen: the newest version known (from the live tail);
  // limit: rows shown at most, ROWS more for each "Older events".
  app.shown = { stream, todoId, first: 0, last: 0, seen: 0, limit: ROWS };
  setHash(stream);
  renderStreams();
  $('detail-empty').hidden = true;
  $('detail-body').hidden = false;
  $('detail-body').classList.toggle('is-todo', !!todoId);
  $('selected-stream').textContent = stream;
  $('event-list').replaceChildren();
  appendRows(events, after);
  // Events that came live while it was read were not its events yet.
  const known = app.streams.get(stream)?.version ?? 0;
  if (known > app.shown.last) refreshSelected(known);
}

function eventRow(e, snap, todoId) {
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
      onclick: () => guarded(() => undoTo(todoId, e.id, app.shown.last)),
    }, 'undo to here') : ''));
}

/**
 * Adds the shown stream's `events` (next after those shown, or newer: then only they are
 * shown, rows being consecutive versions) below its rows, dropping the oldest beyond its
 * limit; the state on top is the one after the last of them.
 */
function appendRows(events, after) {
  const shown = app.shown;
  const list = $('event-list');
  if (events[0].version !== shown.last + 1) list.replaceChildren();
  list.append(...events.map((e) => eventRow(e, after.get(e.id), shown.todoId)));
  while (list.children.length > shown.limit) list.firstElementChild.remove();
  shown.first = Number(list.firstElementChild.dataset.version);
  shown.last = events[events.length - 1].version;
  shown.seen = Math.max(shown.seen, shown.last);
  $('events-older').hidden = shown.first <= 1;

  const state = after.get(events[events.length - 1].id);
  $('state').hidden = !state;
  $('state-description').textContent = state ? state.description : '';
  $('state-status').textContent = state ? state.status : '';
  $('state-version').textContent = state ? String(state.version) : '';
}

/**
 * Reads the shown stream's events after the last shown: the newest `limit` of them, when more
 * came. Its end is found first (one read when the live tail told it), as a tab shown again
 * after a while hidden may have thousands to catch up on, of which it keeps `limit` rows.
 */
async function readNewer() {
  const shown = app.shown;
  if (!shown) return;
  const end = await findLast(shown.stream, shown.seen);
  if (end.last <= shown.last) return;
  const from = Math.max(shown.last + 1, end.last - shown.limit + 1);
  const events = from === end.last ? [end.event] : await readEvents(shown.stream, from, end.last - from + 1);
  const after = await statesAfter(shown.todoId, events, false);
  if (app.shown !== shown) return; // another stream was selected meanwhile
  appendRows(events, after);
}

// One read of the selected stream's new events at a time: events that come during one make
// one more follow it, so a burst of writes costs two reads, not one per event.
let refreshing = null;
let refreshAgain = false;

/** Shows the selected stream's events after the last shown, `version` being one of them. */
function refreshSelected(version = 0) {
  if (app.shown) app.shown.seen = Math.max(app.shown.seen, version);
  refreshAgain = true;
  refreshing ??= (async () => {
    try {
      while (refreshAgain) {
        refreshAgain = false;
        await guarded(readNewer, true);
      }
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

/** Shows the ROWS events before the oldest shown, with their states, above it. */
async function loadOlderEvents() {
  const shown = app.shown;
  const first = shown?.first;
  if (!first || first <= 1) return;
  const from = Math.max(1, first - ROWS);
  const events = await readEvents(shown.stream, from, first - from);
  const after = await statesAfter(shown.todoId, events, false);
  if (app.shown !== shown || shown.first !== first) return; // rows changed meanwhile: click again
  shown.limit += events.length;
  shown.first = from;
  $('event-list').prepend(...events.map((e) => eventRow(e, after.get(e.id), shown.todoId)));
  $('events-older').hidden = shown.first <= 1;
}

/** Shows a write of this page: its stream on top of the list and its new event. */
async function showWrite(w) {
  const stream = TODO_PREFIX + w.id;
  bumpStream(stream, w.version, w.position);
  if (app.shown?.stream === stream) await refreshSelected(w.version);
  else await selectStream(stream);
}

/**
 * Undoes to `eventId` of a todo shown at `version`. The buttons are off until the answer (a
 * second click is not a second undo), and If-Match makes a todo changed since it was shown a
 * 412, after which the page shows what changed.
 */
async function undoTo(todoId, eventId, version) {
  const buttons = [...document.querySelectorAll('[data-testid="undo-button"]')];
  for (const b of buttons) b.disabled = true;
  try {
    const w = await api('PUT', `${todoPath(todoId)}/undo-to/${encodeURIComponent(eventId)}`, undefined,
      { 'If-Match': `"${version}"` });
    await showWrite(w);
  } catch (e) {
    if (e.status === 412) await refreshSelected();
    throw e;
  } finally {
    for (const b of buttons) b.disabled = false; // those still shown
  }
}

// -- live tail ---------------------------------------------------------------------

function liveItem(e) {
  return el('li', { 'data-testid': 'live-event', 'data-position': e.position, 'data-stream': e.stream },
    el('span', { class: 'muted' }, `#${e.position}`), ' ',
    el('a', { href: `#${encodeURIComponent(e.stream)}`, onclick: (ev) => { ev.preventDefault(); guarded(() => selectStream(e.stream)); } }, e.stream),
    ' ', el('span', { class: 'type' }, e.type), ' ', el('span', { class: 'data' }, shortJson(e.data)));
}

function renderLive() {
  const tail = $('live-tail');
  tail.prepend(...app.liveQueue.splice(0).reverse().map(liveItem));
  while (tail.children.length > LIVE_MAX) tail.lastElementChild.remove();
}

function onLiveEvent(msg) {
  let e;
  try { e = JSON.parse(msg.data); } catch { return; }
  if (e.position < app.tailFrom) return; // replayed after a reconnect: shown already
  app.tailFrom = e.position + 1;
  app.liveQueue.push(e);
  if (app.liveQueue.length > LIVE_MAX) app.liveQueue.shift();
  drawSoon('live');
  bumpStream(e.stream, e.version, e.position);
  if (e.stream === app.shown?.stream) refreshSelected(e.version);
}

function showLiveStatus(text, kind = '') {
  const status = $('live-status');
  status.textContent = text;
  status.className = `badge ${kind}`.trim();
}

/**
 * Subscribes to $all from `app.tailFrom`. After a cut, EventSource connects again by itself
 * and sends Last-Event-ID, which the server honours over `from`. An answer other than a
 * stream (a 503 while the server has as many subscribers as it takes, say) makes it give up
 * for good: then the page asks again, later and later, from where its tail is.
 */
function startLiveTail() {
  showLiveStatus('connecting');
  const source = new EventSource(`/subscribe/$all?from=${app.tailFrom}`);
  app.source = source;
  source.onopen = () => {
    showLiveStatus('live', 'ok');
    app.retryMs = 1000;
  };
  source.onerror = () => {
    showLiveStatus('reconnecting', 'warn');
    if (source.readyState !== EventSource.CLOSED) return;
    setTimeout(() => { if (app.source === source) startLiveTail(); }, app.retryMs);
    app.retryMs = Math.min(app.retryMs * 2, 30000);
  };
  source.onmessage = onLiveEvent;
}

/**
 * A hidden tab closes its live tail and opens it again from where it was when shown: a
 * browser allows six connections to a server, and six tabs each holding one would leave
 * none for any other request to it.
 */
function onVisibilityChange() {
  if (app.tailFrom === null) return; // not started: start() opens it
  if (document.hidden && app.source) {
    app.source.close();
    app.source = null;
    showLiveStatus('paused');
  } else if (!document.hidden && !app.source) {
    startLiveTail();
  }
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
    await showWrite(w);
  } catch (e) {
    if (e.status >= 400 && e.status < 500) app.createKey = null; // nothing was created
    throw e;
  } finally {
    button.disabled = false;
  }
}

// -- start -------------------------------------------------------------------------

/**
 * Selects the stream the address's #fragment names, if it names one. Names starting with `$`
 * are the server's own: `$all` is the whole log, far too long to read into a page. When the
 * stream cannot be shown, the #fragment names the one shown again.
 */
function selectFromHash() {
  let stream;
  try {
    stream = decodeURIComponent(location.hash.slice(1));
  } catch {
    showError(`The address's #${location.hash.slice(1)} is not a stream name.`);
    return;
  }
  if (!stream || stream === app.shown?.stream) return;
  const restoreHash = () => { if (app.shown) setHash(app.shown.stream); };
  if (stream.startsWith('$')) {
    showError(`The address's #${stream} is not a stream: names starting with $ are the server's own ($all is the whole log, too long to show here).`);
    restoreHash();
    return;
  }
  guarded(async () => {
    try {
      await selectStream(stream);
    } catch (e) {
      restoreHash();
      throw e;
    }
  });
}

/**
 * Loads the newest streams, then starts the live tail just after the head they show: nothing
 * is missed, nothing repeated. Until the head is known the tail waits (from position 1 it
 * would replay the whole log as live); a failed load is shown and tried again every 3 s.
 */
async function start(failedBefore = false) {
  try {
    await loadStreams();
  } catch (e) {
    showError(e);
    setTimeout(() => start(true), 3000);
    return;
  }
  if (failedBefore) showError(null);
  app.tailFrom = app.head + 1;
  if (document.hidden) showLiveStatus('paused');
  else startLiveTail();
  selectFromHash();
}

function init() {
  $('create-form').addEventListener('submit', (ev) => guarded(() => createTodo(ev)));
  $('create-description').addEventListener('input', () => { app.createKey = null; });
  $('streams-older').addEventListener('click', () => guarded(loadOlderStreams));
  $('streams-refresh').addEventListener('click', () => guarded(loadStreams));
  $('events-older').addEventListener('click', () => guarded(loadOlderEvents));
  window.addEventListener('hashchange', selectFromHash);
  document.addEventListener('visibilitychange', onVisibilityChange);
  start();
}

init();
