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
async function api(method, path, body) {
  const init = { method, headers: { Accept: 'application/json' } };
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

function showError(err) {
  const box = $('error');
  box.textContent = err ? (err instanceof ApiError ? err.message : String(err)) : '';
  box.hidden = !err;
  if (err && !(err instanceof ApiError)) console.error(err);
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
  app.selected = stream;
  if (location.hash !== `#${stream}`) history.replaceState(null, '', `#${stream}`);
  renderStreams();
  const todoId = todoIdOf(stream);
  const [events, hist] = await Promise.all([
    readWholeStream(stream),
    todoId ? api('GET', `/todo/${todoId}/history`) : null,
  ]);
  if (app.selected !== stream) return; // another stream was selected meanwhile
  const after = new Map((hist ? hist.items : []).map((h) => [h.id, h.snapshot]));
  renderDetail(stream, todoId, events, after);
}

function renderDetail(stream, todoId, events, after) {
  $('detail-empty').hidden = true;
  $('detail-body').hidden = false;
  $('detail-body').classList.toggle('is-todo', !!todoId);
  $('selected-stream').textContent = stream;

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
      el('td', { class: 'todo-only' }, snap ? el('span', { 'data-testid': 'event-state' },
        el('span', { class: `status status-${snap.status}` }, snap.status), ' ', snap.description) : ''),
      el('td', { class: 'todo-only' }, todoId ? el('button', {
        type: 'button', class: 'small', 'data-testid': 'undo-button',
        title: 'Append an event restoring the state right after this one',
        onclick: () => guarded(() => undoTo(todoId, e.id)),
      }, 'undo to here') : ''));
  }));
}

async function undoTo(todoId, eventId) {
  const w = await api('PUT', `/todo/${todoId}/undo-to/${eventId}`);
  bumpStream(TODO_PREFIX + w.id, w.version, w.position);
  await selectStream(TODO_PREFIX + w.id);
}

// -- live tail ---------------------------------------------------------------------

let refreshTimer = null;
function refreshSelectedSoon() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => { if (app.selected) guarded(() => selectStream(app.selected), true); }, 150);
}

function onLiveEvent(msg) {
  let e;
  try { e = JSON.parse(msg.data); } catch { return; }
  const tail = $('live-tail');
  if (tail.querySelector(`[data-position="${Number(e.position)}"]`)) return; // replay after reconnect
  tail.prepend(el('li', { 'data-testid': 'live-event', 'data-position': e.position, 'data-stream': e.stream },
    el('span', { class: 'muted' }, `#${e.position}`), ' ',
    el('a', { href: `#${e.stream}`, onclick: (ev) => { ev.preventDefault(); guarded(() => selectStream(e.stream)); } }, e.stream),
    ' ', el('span', { class: 'type' }, e.type), ' ', el('span', { class: 'data' }, shortJson(e.data))));
  while (tail.children.length > LIVE_MAX) tail.lastElementChild.remove();
  bumpStream(e.stream, e.version, e.position);
  if (e.stream === app.selected) refreshSelectedSoon();
}

function startLiveTail() {
  const status = $('live-status');
  // Start just after the head seen by the first stream page: nothing is missed, nothing repeated.
  // On reconnect EventSource sends Last-Event-ID, which the server honours over `from`.
  app.source = new EventSource(`/subscribe/$all?from=${app.head + 1}`);
  app.source.onopen = () => { status.textContent = 'live'; status.className = 'badge ok'; };
  app.source.onerror = () => { status.textContent = 'reconnecting'; status.className = 'badge warn'; };
  app.source.onmessage = onLiveEvent;
}

// -- create form -------------------------------------------------------------------

async function createTodo(ev) {
  ev.preventDefault();
  const input = $('create-description');
  const w = await api('POST', '/todo', { description: input.value });
  input.value = '';
  bumpStream(TODO_PREFIX + w.id, w.version, w.position);
  await selectStream(TODO_PREFIX + w.id);
}

// -- start -------------------------------------------------------------------------

function init() {
  $('create-form').addEventListener('submit', (ev) => guarded(() => createTodo(ev)));
  $('streams-older').addEventListener('click', () => guarded(() => loadStreams(true)));
  $('streams-refresh').addEventListener('click', () => guarded(() => loadStreams(false)));
  guarded(async () => {
    try {
      await loadStreams(false);
    } finally {
      startLiveTail();
    }
    const fromHash = decodeURIComponent(location.hash.slice(1));
    if (fromHash) await selectStream(fromHash);
  });
}

init();
