// vdrep console, part 1 of 5: what every view uses. Loaded in order by index.html as
// plain scripts (no modules, no build): core.js, machines.js, jobs.js, bandwidth.js, then
// console.js, which routes and refreshes.
//
// The bearer token lives in the variable `token` only: never in a URL, a cookie or web
// storage, so a reload asks for it again. Every element is built with textContent, never
// innerHTML, so nothing the API returns can become markup.
'use strict';

let token = null;
// Set by a view's refresh when a job on screen is unfinished (refreshes then come faster).
let busy = false;
const POINTS_SHOWN = 48;

const $ = (id) => document.getElementById(id);

// Builds an element: el('a', {href: '#/'}, 'text', child, ...).
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (v === true) e.setAttribute(k, '');
    else e.setAttribute(k, String(v));
  }
  for (const k of kids.flat()) {
    if (k === null || k === undefined || k === false) continue;
    e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  return e;
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (token) headers.Authorization = 'Bearer ' + token;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let r;
  try {
    r = await fetch(path, {
      method, headers, cache: 'no-store', credentials: 'omit',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, 'the sidecar does not answer (' + e.message + ')');
  }
  let data = null;
  try { data = await r.json(); } catch (_) { /* not JSON */ }
  if (!r.ok) {
    throw new ApiError(r.status, (data && data.error) || ('HTTP ' + r.status));
  }
  return data;
}

// Why a call failed, in words an operator can act on.
function explain(e, what) {
  if (e.status === 401) {
    return what + ' was refused: ' + (token
      ? 'the token entered is not accepted by this sidecar. '
      : 'no token entered (enter the sidecar\'s token above). ') + '(' + e.message + ')';
  }
  return what + ' failed: ' + e.message + (e.status ? ' (' + e.status + ')' : '');
}

function notify(text, kind) {
  const n = $('notice');
  n.hidden = false;
  n.className = 'notice ' + (kind || 'ok');
  n.setAttribute('role', kind === 'error' ? 'alert' : 'status');
  n.textContent = text;
}

function clearNotice() {
  const n = $('notice');
  n.hidden = true;
  n.textContent = '';
}

// ---- formatting -------------------------------------------------------------------------

const pad = (n) => String(n).padStart(2, '0');

function utc(unix) {
  if (unix === null || unix === undefined) return '–';
  const d = new Date(unix * 1000);
  return d.getUTCFullYear() + '-' + pad(d.getUTCMonth() + 1) + '-' + pad(d.getUTCDate()) +
    ' ' + pad(d.getUTCHours()) + ':' + pad(d.getUTCMinutes()) + ':' + pad(d.getUTCSeconds()) + ' UTC';
}

function dur(s) {
  if (s === null || s === undefined) return '–';
  s = Math.max(0, Math.round(s));
  // A no-break space keeps a number with its unit.
  if (s < 120) return s + '\u00a0s';
  if (s < 7200) return Math.round(s / 60) + '\u00a0min';
  if (s < 172800) return (s / 3600).toFixed(1) + '\u00a0h';
  return Math.round(s / 86400) + '\u00a0d';
}

const nowUnix = () => Math.floor(Date.now() / 1000);

function rel(unix) {
  if (unix === null || unix === undefined) return '–';
  const d = unix - nowUnix();
  if (d === 0) return 'now';
  return d > 0 ? 'in ' + dur(d) : dur(-d) + ' ago';
}

function bytes(n) {
  if (n === null || n === undefined) return '–';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i += 1; }
  return (i ? n.toFixed(1) : n) + '\u00a0' + u[i];
}

function mbit(bps) {
  if (bps === null || bps === undefined) return 'no limit';
  return (bps * 8 / 1e6).toFixed(1) + '\u00a0Mbit/s';
}

function healthBadge(h, reason) {
  const word = { normal: 'Normal', warning: 'Warning', critical: 'Critical' }[h] || h;
  return el('span', { class: 'health ' + h },
    el('span', { class: 'health-word' }, word),
    reason ? el('span', { class: 'reason' }, ' — ' + reason) : null);
}

const PHASES = {
  initial: 'Initial copy', protected: 'Delta cycles', resync_required: 'Resync required',
  resyncing: 'Resync',
};

// A disk's or VM's phase: percent, rate and ETA while a copy runs.
function phase(d) {
  const name = PHASES[d.phase] || d.phase;
  if (d.phase !== 'initial' && d.phase !== 'resyncing') {
    if (d.phase === 'protected' && d.next_cycle_unix) {
      return name + (d.next_cycle_unix > nowUnix() ? ' (next ' + rel(d.next_cycle_unix) + ')' : ' (switching now)');
    }
    return name;
  }
  const pct = d.size_bytes ? Math.floor(d.copied_bytes * 100 / d.size_bytes) : 100;
  const parts = [name + ' ' + pct + '\u00a0%'];
  if (d.health === 'critical') {
    // Not retried: no rate, no ETA until an operator acts.
    parts.push('stopped');
    return el('span', {}, el('progress', { max: 100, value: pct, 'aria-label': name + ' progress' }),
      ' ' + parts.join(' · '));
  }
  if (d.rate_bytes_per_second !== null && d.rate_bytes_per_second !== undefined) {
    parts.push((d.rate_bytes_per_second / 1e6).toFixed(1) + '\u00a0MB/s');
  }
  if (d.eta_unix) parts.push('ETA ' + utc(d.eta_unix).slice(11, 19) + ' (' + rel(d.eta_unix) + ')');
  return el('span', {}, el('progress', { max: 100, value: pct, 'aria-label': name + ' progress' }),
    ' ' + parts.join(' · '));
}

// The VM's phase: the first disk that is not merely protected speaks for it.
function vmPhase(vm) {
  const busy = vm.disks.find((d) => d.phase !== 'protected');
  return phase(busy || vm.disks[0] || { phase: 'protected' });
}

// A table whose cells carry their column's name, so narrow screens show rows as cards.
function table(caption, heads, rows, cls) {
  const t = el('table', { class: cls || '' });
  if (caption) t.append(el('caption', {}, caption));
  t.append(el('thead', {}, el('tr', {}, heads.map((h) => el('th', { scope: 'col' }, h)))));
  const tb = el('tbody');
  for (const r of rows) {
    tb.append(el('tr', {}, r.map((c, i) => (i === 0
      ? el('th', { scope: 'row', 'data-label': heads[i] }, c)
      : el('td', { 'data-label': heads[i] }, c)))));
  }
  t.append(tb);
  return el('div', { class: 'table-wrap' }, t);
}

function setRegion(id, ...kids) {
  const r = $(id);
  if (!r) return;
  r.replaceChildren(...kids.flat());
}

// ---- the sender banner ------------------------------------------------------------------

function senderBanner(sender) {
  const b = $('banner');
  if (sender && sender.reachable) {
    b.hidden = true;
    b.textContent = '';
    return;
  }
  b.hidden = false;
  const age = sender && sender.status_age_seconds !== null && sender.status_age_seconds !== undefined
    ? ' Its last status is ' + dur(sender.status_age_seconds) + ' old.' : ' It has not answered since the sidecar started.';
  b.textContent = 'The sidecar cannot reach the sender: what is shown may be out of date, and requests wait for it.' + age;
}

async function loadVms() {
  const v = await api('GET', '/v1/vms');
  senderBanner(v.sender);
  return v;
}

function readError(e) {
  if (e.status === 401) {
    return el('p', { class: 'error', role: 'alert' },
      'This sidecar needs a token to read (--read-token-file): enter it above. (' + e.message + ')');
  }
  return el('p', { class: 'error', role: 'alert' }, 'Cannot load: ' + e.message);
}

// ---- forms ------------------------------------------------------------------------------

function fieldError(form, name, text) {
  const out = form.querySelector('[data-error-for="' + name + '"]');
  // A group of checkboxes is a RadioNodeList, not one input: its message is enough.
  const input = form.elements[name];
  if (out) out.textContent = text || '';
  if (input instanceof Element) {
    if (text) input.setAttribute('aria-invalid', 'true');
    else input.removeAttribute('aria-invalid');
  }
}

// A validation message goes next to the field it names (`retention_hours ranges ...`);
// others go under the form.
function showValidation(form, names, message) {
  for (const n of names) fieldError(form, n, '');
  fieldError(form, '_form', '');
  // The longest name first: `non_work_hour_...` also contains `work_hour_...`.
  const hit = [...names].sort((a, b) => b.length - a.length).find((n) => message.includes(n));
  fieldError(form, hit || '_form', message);
  if (hit && form.elements[hit]) form.elements[hit].focus();
}

function numberField(label, name, value, attrs, hint) {
  const id = 'f-' + name;
  return el('div', { class: 'field' },
    el('label', { for: id }, label),
    el('input', Object.assign({ id, name, type: 'number', value, 'aria-describedby': id + '-err' + (hint ? ' ' + id + '-hint' : '') }, attrs || {})),
    hint ? el('span', { id: id + '-hint', class: 'hint' }, hint) : null,
    el('span', { id: id + '-err', class: 'field-error', 'data-error-for': name, 'aria-live': 'polite' }));
}
