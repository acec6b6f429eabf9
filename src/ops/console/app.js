// The user-sync console: a page over the operator API (/api/v1).
//
// The token is kept in sessionStorage (this tab only, never a cookie) and
// sent in the Authorization header of each request; nothing the server
// returns is ever parsed as HTML: every text goes into the page through
// textContent.
'use strict';

const TOKEN_KEY = 'user-sync-console-token';
const REFRESH_MS = 5000;
/// The chart's colours, by the state an event ended in.
const STATES = [
  ['applied', '#1f8a4c'],
  ['superseded', '#8fb8a0'],
  ['conflict', '#c46a00'],
  ['failed', '#b42318'],
  ['invalid', '#7a7f8c'],
];

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------------------
// The API
// ---------------------------------------------------------------------------

class ApiFailure extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

/// One request to the API: JSON in and out, the token in its header. A
/// refused token signs out. `raw` returns the response itself (a CSV).
async function api(path, { method = 'GET', body, raw = false } = {}) {
  const headers = { Authorization: 'Bearer ' + token() };
  const init = { method, headers, cache: 'no-store', credentials: 'omit' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch('/api/v1' + path, init);
  if (response.status === 401) {
    signOut('The token was refused: sign in again.');
    throw new ApiFailure('the token was refused', 401);
  }
  if (raw && response.ok) {
    return response;
  }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new ApiFailure(data.error || response.statusText, response.status);
  }
  return data;
}

// ---------------------------------------------------------------------------
// Building the page: elements with text, never HTML
// ---------------------------------------------------------------------------

/// An element with attributes and children (strings become text nodes).
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === 'onclick') {
      node.addEventListener('click', value);
    } else if (value !== undefined && value !== null && value !== false) {
      node.setAttribute(name, value === true ? '' : String(value));
    }
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/// A table cell labelled by its column (shown on a phone).
function cell(label, content, attrs = {}) {
  return el('td', { 'data-label': label, ...attrs }, content ?? '');
}

function fill(tbody, rows, empty) {
  tbody.replaceChildren(...rows);
  if (empty) empty.hidden = rows.length > 0;
}

function when(text) {
  if (!text) return '';
  const at = new Date(text);
  return Number.isNaN(at.getTime()) ? text : at.toLocaleString();
}

function userLink(host) {
  if (!host) return '–';
  return el('a', { href: '#user/' + encodeURIComponent(host) }, host);
}

let toastTimer;
function toast(message, isError = false) {
  const box = $('toast');
  box.textContent = message;
  box.className = isError ? 'error' : '';
  box.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { box.hidden = true; }, 6000);
}

/// Runs an action of a button, the button disabled meanwhile; says how it
/// went, and refreshes the view.
async function act(button, action) {
  button.disabled = true;
  try {
    const message = await action();
    if (message) toast(message);
  } catch (failure) {
    if (failure.status !== 401) toast(failure.message, true);
  } finally {
    button.disabled = false;
  }
  await show(currentView());
}

// ---------------------------------------------------------------------------
// Signing in and out
// ---------------------------------------------------------------------------

function signOut(message = '') {
  sessionStorage.removeItem(TOKEN_KEY);
  $('sign-in-error').textContent = message;
  for (const id of ['tabs', 'search', 'sign-out', 'paused-badge']) $(id).hidden = true;
  showSection('sign-in');
}

async function signIn(event) {
  event.preventDefault();
  const value = $('token').value.trim();
  if (!value) return;
  sessionStorage.setItem(TOKEN_KEY, value);
  try {
    await api('/status');
  } catch (failure) {
    if (failure.status !== 401) $('sign-in-error').textContent = failure.message;
    return;
  }
  $('token').value = '';
  $('sign-in-error').textContent = '';
  signedIn();
}

function signedIn() {
  for (const id of ['tabs', 'search', 'sign-out']) $(id).hidden = false;
  if (!location.hash || location.hash === '#sign-in') {
    location.hash = '#overview'; // the hashchange shows it
  } else {
    route();
  }
}

// ---------------------------------------------------------------------------
// Views
// ---------------------------------------------------------------------------

function currentView() {
  const hash = decodeURIComponent(location.hash.slice(1));
  if (hash.startsWith('user/')) return { name: 'user', id: hash.slice(5) };
  const name = ['overview', 'failed', 'conflicts', 'erasures'].includes(hash) ? hash : 'overview';
  return { name };
}

function showSection(name) {
  for (const section of document.querySelectorAll('main > section')) {
    // Not named as the hash is: the browser would scroll the header away.
    section.hidden = section.id !== 'view-' + name;
  }
  for (const link of document.querySelectorAll('#tabs a')) {
    link.classList.toggle('current', link.dataset.view === name);
  }
}

async function show(view) {
  if (!token()) return signOut();
  showSection(view.name);
  try {
    switch (view.name) {
      case 'overview': return await showOverview();
      case 'failed': return await showFailed();
      case 'conflicts': return await showConflicts();
      case 'erasures': return await showErasures();
      case 'user': return await showUser(view.id);
    }
  } catch (failure) {
    if (failure.status !== 401) toast(failure.message, true);
  }
}

function route() {
  show(currentView());
}

// --- overview ---------------------------------------------------------------

/// The last reading of the gate's calls, for the rate in use.
let lastCalls = null;

function seconds(value) {
  if (value < 60) return value.toFixed(1) + ' s';
  if (value < 3600) return Math.round(value / 60) + ' min';
  return (value / 3600).toFixed(1) + ' h';
}

function number(id, value, bad = false) {
  const node = $(id);
  node.textContent = value === null || value === undefined ? '–' : String(value);
  node.classList.toggle('bad', bad);
}

function showPause(paused) {
  $('paused-badge').hidden = !paused;
  $('resume-button').hidden = !paused;
  $('pause-button').textContent = paused ? 'Update the reason' : 'Pause every process';
  if (paused) {
    let text = 'Paused since ' + when(paused.paused_at);
    if (paused.paused_by) text += ' by ' + paused.paused_by;
    if (paused.reason) text += ': ' + paused.reason;
    $('pause-state').textContent = text + '. No API call is made; events wait, none fails.';
  } else {
    $('pause-state').textContent = 'Running. A pause stops every process\u2019s API calls within a second; events wait until resumed.';
  }
}

/// The share of the allowed rate this process used since the last
/// reading, and the numbers behind it.
function rateInUse(rate) {
  const now = performance.now();
  const allowed = Math.round(rate.allowed_rps) + ' requests/s allowed';
  let reading = { share: '–', detail: allowed };
  if (rate.api_key_refused) {
    reading = { share: 'key refused', detail: 'the Embedded API refuses the key' };
  } else if (lastCalls && now > lastCalls.at) {
    const perSecond = ((rate.calls_granted - lastCalls.calls) * 1000) / (now - lastCalls.at);
    const share = rate.allowed_rps > 0 ? Math.round((100 * perSecond) / rate.allowed_rps) : 0;
    reading = { share: share + '%', detail: perSecond.toFixed(1) + ' of ' + allowed };
  }
  lastCalls = { calls: rate.calls_granted, at: now };
  return reading;
}

async function showOverview() {
  const [status, activity] = await Promise.all([api('/status'), api('/activity')]);
  number('m-lag', seconds(status.outbox_lag_seconds));
  number('m-pending', status.pending_events);
  number('m-failed', status.failed_events, status.failed_events > 0);
  number('m-conflicts', status.open_conflicts, status.open_conflicts > 0);
  number('m-erasures', status.pending_erasures);
  number('m-queue', status.queue_depth);
  const rate = rateInUse(status.rate_limit);
  number('m-rate', rate.share, status.rate_limit.api_key_refused);
  $('m-rate-detail').textContent = rate.detail;
  number('m-synced', status.synced_users);
  const removed = status.retention;
  number('m-retention', removed.events);
  $('m-retention-detail').textContent = 'events; ' + removed.conflicts + ' conflicts, ' +
    removed.erasures + ' erasures, ' + removed.webhooks + ' webhooks; last pass ' +
    (removed.last_pass_at ? when(removed.last_pass_at) : 'never');
  showPause(status.paused);
  drawChart(activity.minutes);
}

const SVG = 'http://www.w3.org/2000/svg';

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

/// Stacked bars, one a minute, coloured by the state events ended in.
function drawChart(minutes) {
  const width = 720;
  const height = 220;
  const left = 36;
  const bottom = 22;
  const plot = { w: width - left - 8, h: height - bottom - 10 };
  const totals = minutes.map((m) => Object.values(m.counts).reduce((a, b) => a + b, 0));
  const top = Math.max(1, ...totals);
  const chart = svg('svg', {
    viewBox: `0 0 ${width} ${height}`,
    role: 'img',
    'aria-label': 'Events finished per minute over the last hour, by outcome',
  });
  chart.append(svg('line', { class: 'axis', x1: left, y1: 10 + plot.h, x2: width - 8, y2: 10 + plot.h }));
  for (const fraction of [0.5, 1]) {
    const y = 10 + plot.h - fraction * plot.h;
    chart.append(svg('line', { class: 'axis', x1: left, y1: y, x2: width - 8, y2: y }));
    chart.append(svg('text', { x: left - 6, y: y + 4, 'text-anchor': 'end' }, String(Math.round(top * fraction))));
  }
  const slot = plot.w / Math.max(1, minutes.length);
  minutes.forEach((minute, i) => {
    let y = 10 + plot.h;
    const x = left + i * slot + 1;
    const parts = [];
    for (const [state, colour] of STATES) {
      const count = minute.counts[state] || 0;
      if (!count) continue;
      parts.push(state + ' ' + count);
      const h = (count / top) * plot.h;
      y -= h;
      chart.append(svg('rect', { x, y, width: Math.max(1, slot - 2), height: h, fill: colour }));
    }
    if (parts.length) {
      const hit = svg('rect', { x, y: 10, width: Math.max(1, slot - 2), height: plot.h, fill: 'transparent' });
      hit.append(svg('title', {}, new Date(minute.minute).toLocaleTimeString() + ': ' + parts.join(', ')));
      chart.append(hit);
    }
  });
  const labels = [[0, '-60 min'], [Math.floor(minutes.length / 2), '-30 min'], [minutes.length - 1, 'now']];
  for (const [i, text] of labels) {
    chart.append(svg('text', { x: left + i * slot + slot / 2, y: height - 6, 'text-anchor': 'middle' }, text));
  }
  $('chart').replaceChildren(chart);
  const legend = STATES.map(([state, colour]) => {
    const item = el('span', {}, state);
    item.style.setProperty('--swatch', colour);
    return item;
  });
  $('legend').replaceChildren(...legend);
}

async function pause(event) {
  event.preventDefault();
  const reason = $('pause-reason').value.trim();
  await act($('pause-button'), async () => {
    await api('/pause', { method: 'POST', body: { reason: reason || null } });
    $('pause-reason').value = '';
    return 'Paused: every process stops making API calls within a second.';
  });
}

async function resume() {
  await act($('resume-button'), async () => {
    await api('/resume', { method: 'POST', body: {} });
    return 'Resumed: the pending events are picked up.';
  });
}

// --- failed events ------------------------------------------------------------

function retryButton(host) {
  const button = el('button', { type: 'button', class: 'small retry' }, 'Retry');
  button.addEventListener('click', () => act(button, async () => {
    const done = await api('/events/retry', { method: 'POST', body: { host_user_ids: [host] } });
    return done.retried + ' event(s) back to pending';
  }));
  return button;
}

async function showFailed() {
  const rows = await api('/events?state=failed&limit=500');
  fill($('failed-rows'), rows.map((e) => el('tr', { 'data-event': e.id, 'data-host': e.host_user_id },
    cell('Event', String(e.id)),
    cell('Host user', userLink(e.host_user_id)),
    cell('Kind', e.kind || '–'),
    cell('Attempts', String(e.attempts)),
    cell('Reason', e.reason || '', { class: 'reason' }),
    cell('Finished', when(e.finished_at)),
    cell('', e.host_user_id ? retryButton(e.host_user_id) : null, { class: 'actions' }),
  )), $('failed-empty'));
  $('retry-all').disabled = rows.length === 0;
}

async function retryAll() {
  await act($('retry-all'), async () => {
    const done = await api('/events/retry', { method: 'POST', body: { state: 'failed' } });
    return done.retried + ' event(s) back to pending';
  });
}

// --- conflicts ----------------------------------------------------------------

function holder(c) {
  if (c.holder_host_user_id) return el('span', {}, 'host user ', userLink(c.holder_host_user_id));
  if (c.holder_embedded_user_id) return 'Embedded user ' + c.holder_embedded_user_id;
  return '–';
}

function resolveControls(c) {
  const note = el('input', { placeholder: 'Note', 'aria-label': 'Note', maxlength: 2000, class: 'note' });
  const buttons = ['adopt', 'retry', 'ignore'].map((action) => {
    const button = el('button', { type: 'button', class: 'small', 'data-action': action }, action[0].toUpperCase() + action.slice(1));
    button.addEventListener('click', () => act(button, async () => {
      const done = await api('/conflicts/' + encodeURIComponent(c.id) + '/resolve', {
        method: 'POST',
        body: { action, note: note.value.trim() || null },
      });
      return done.message;
    }));
    return button;
  });
  return el('div', {}, note, ...buttons);
}

async function showConflicts() {
  const status = $('conflict-status').value;
  const rows = await api('/conflicts?status=' + encodeURIComponent(status));
  fill($('conflict-rows'), rows.map((c) => el('tr', { 'data-id': c.id, 'data-host': c.host_user_id },
    cell('Id', String(c.id)),
    cell('Host user', userLink(c.host_user_id)),
    cell('Username', c.username),
    cell('Reason', c.reason),
    cell('Held by', holder(c)),
    cell('Detected', when(c.detected_at)),
    cell('Status', c.resolution ? c.resolution + (c.resolved_by ? ' by ' + c.resolved_by : '') : c.status),
    cell('', c.status === 'open' ? resolveControls(c) : (c.note || ''), { class: 'actions' }),
  )), $('conflicts-empty'));
}

// --- erasures -----------------------------------------------------------------

async function showErasures() {
  const rows = await api('/erasures?limit=500');
  fill($('erasure-rows'), rows.map((e) => el('tr', { 'data-host': e.host_user_id },
    cell('Id', String(e.id)),
    cell('Host user', userLink(e.host_user_id)),
    cell('Embedded user', e.embedded_user_id || '–'),
    cell('Event', String(e.event_id)),
    cell('Outcome', e.outcome),
    cell('Requested', when(e.requested_at)),
    cell('Completed', when(e.completed_at)),
  )), $('erasures-empty'));
}

/// Fetches the CSV with the token, then saves it from a Blob: a plain link
/// could not carry the header.
async function downloadErasures() {
  const button = $('download-erasures');
  button.disabled = true;
  try {
    const response = await api('/erasures?format=csv&limit=1000000', { raw: true });
    const blob = await response.blob();
    const url = URL.createObjectURL(blob);
    const link = el('a', { href: url, download: 'erasures.csv' });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    toast('erasures.csv downloaded');
  } catch (failure) {
    if (failure.status !== 401) toast(failure.message, true);
  } finally {
    button.disabled = false;
  }
}

// --- one user -------------------------------------------------------------------

let reveal = false;
let shownUser = null;

async function showUser(id) {
  if (id !== shownUser) reveal = false;
  shownUser = id;
  $('user-title').textContent = 'Host user ' + id;
  $('reveal').textContent = reveal ? 'Mask username' : 'Reveal username';
  let record;
  try {
    record = await api('/users/' + encodeURIComponent(id) + '?reveal=' + reveal);
  } catch (failure) {
    if (failure.status !== 404) throw failure;
    $('user-missing').textContent = failure.message;
    $('user-missing').hidden = false;
    $('user-body').hidden = true;
    return;
  }
  $('user-missing').hidden = true;
  $('user-body').hidden = false;
  const m = record.mapping;
  const facts = m
    ? [['State', m.state], ['Embedded userId', m.embedded_user_id || '–'], ['Username', m.username || '–'], ['Updated', when(m.updated_at)]]
    : [['State', 'no row in user_sync.users: the worker has not acted on it']];
  $('user-mapping').replaceChildren(...facts.flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, v)]));
  fill($('user-events'), record.events.map((e) => el('tr', { 'data-event': e.id },
    cell('Event', String(e.id)),
    cell('Kind', e.kind || '–'),
    cell('State', e.state),
    cell('Attempts', String(e.attempts)),
    cell('Reason', e.reason || '', { class: 'reason' }),
    cell('Occurred', when(e.occurred_at)),
    cell('', null, { class: 'actions' }),
  )));
  const newest = $('user-events').querySelector('td.actions');
  if (newest) newest.append(retryButton(record.host_user_id));
  fill($('user-conflicts'), record.conflicts.map((c) => el('tr', {},
    cell('Id', el('a', { href: '#conflicts' }, String(c.id))),
    cell('Username', c.username),
    cell('Reason', c.reason),
    cell('Status', c.resolution || c.status),
    cell('Detected', when(c.detected_at)),
  )));
  fill($('user-erasures'), record.erasures.map((e) => el('tr', {},
    cell('Id', String(e.id)),
    cell('Embedded user', e.embedded_user_id || '–'),
    cell('Outcome', e.outcome),
    cell('Requested', when(e.requested_at)),
    cell('Completed', when(e.completed_at)),
  )));
}

// ---------------------------------------------------------------------------
// Start
// ---------------------------------------------------------------------------

function start() {
  $('sign-in-form').addEventListener('submit', signIn);
  $('sign-out').addEventListener('click', () => signOut());
  $('search').addEventListener('submit', (event) => {
    event.preventDefault();
    const id = $('search-id').value.trim();
    if (id) location.hash = '#user/' + encodeURIComponent(id);
  });
  $('pause-form').addEventListener('submit', pause);
  $('resume-button').addEventListener('click', resume);
  $('retry-all').addEventListener('click', retryAll);
  $('conflict-status').addEventListener('change', () => show(currentView()));
  $('download-erasures').addEventListener('click', downloadErasures);
  $('reveal').addEventListener('click', () => {
    reveal = !reveal;
    show(currentView());
  });
  window.addEventListener('hashchange', route);
  setInterval(() => {
    if (token() && currentView().name === 'overview' && !document.hidden) showOverview().catch(() => {});
  }, REFRESH_MS);
  if (token()) signedIn(); else signOut();
}

start();
