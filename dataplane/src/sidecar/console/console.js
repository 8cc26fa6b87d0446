// vdrep console: the operator's page over the sidecar's JSON API.
//
// Plain JavaScript, no framework and no build step (see dataplane/src/sidecar/console.rs
// for why): a hash router, four views, and a refresh every few seconds that updates the
// data regions without touching forms the operator is filling in.
//
// The bearer token lives in the variable `token` only: never in a URL, a cookie or web
// storage, so a reload asks for it again. Every element is built with textContent, never
// innerHTML, so nothing the API returns can become markup.
'use strict';

let token = null;
// Every 2 s; every 0.5 s while a job on screen is unfinished, so its steps are followed.
const REFRESH_MS = 2000;
const BUSY_REFRESH_MS = 500;
let refresher = null;
let current = null;
let busy = false;

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
  if (s < 120) return s + ' s';
  if (s < 7200) return Math.round(s / 60) + ' min';
  if (s < 172800) return (s / 3600).toFixed(1) + ' h';
  return Math.round(s / 86400) + ' d';
}

const nowUnix = () => Math.floor(Date.now() / 1000);

function rel(unix) {
  if (unix === null || unix === undefined) return '–';
  const d = unix - nowUnix();
  return d >= 0 ? 'in ' + dur(d) : dur(-d) + ' ago';
}

function bytes(n) {
  if (n === null || n === undefined) return '–';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i += 1; }
  return (i ? n.toFixed(1) : n) + ' ' + u[i];
}

function mbit(bps) {
  if (bps === null || bps === undefined) return 'no limit';
  return (bps * 8 / 1e6).toFixed(1) + ' Mbit/s';
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
  const parts = [name + ' ' + pct + ' %'];
  if (d.rate_bytes_per_second !== null && d.rate_bytes_per_second !== undefined) {
    parts.push((d.rate_bytes_per_second / 1e6).toFixed(1) + ' MB/s');
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

// ---- Machines ---------------------------------------------------------------------------

const machines = {
  title: 'Machines',
  mount(main) {
    main.append(el('h1', {}, 'Protected machines'), el('div', { id: 'vms' }, el('p', { class: 'muted' }, 'Loading…')));
  },
  async refresh() {
    let v;
    try { v = await loadVms(); } catch (e) { setRegion('vms', readError(e)); return; }
    if (!v.vms.length) {
      setRegion('vms', el('p', {}, 'The sender replicates no machine yet.'));
      return;
    }
    const bw = mbit(v.sender.bandwidth_bytes_per_second);
    const rows = v.vms.map((vm) => [
      el('a', { href: '#/vm/' + encodeURIComponent(vm.vm) }, vm.vm),
      healthBadge(vm.health, vm.reason),
      el('span', {}, vm.rpo_seconds === null ? 'no point yet' : dur(vm.rpo_seconds),
        el('span', { class: 'muted' }, ' (threshold ' + dur(vm.policy.rpo_threshold_seconds) + ')')),
      vm.last_cycle_unix ? el('span', {}, utc(vm.last_cycle_unix), el('span', { class: 'muted' }, ' ' + rel(vm.last_cycle_unix))) : '–',
      vmPhase(vm),
      bw,
      vm.next_retry_unix ? utc(vm.next_retry_unix) + ' (' + rel(vm.next_retry_unix) + ')' : '–',
    ]);
    setRegion('vms', table(null,
      ['Machine', 'Health', 'RPO', 'Latest recovery point', 'Phase', 'Bandwidth', 'Next retry'],
      rows, 'machines'));
  },
};

// ---- Machine detail ---------------------------------------------------------------------

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

function detail(vmName) {
  const enc = encodeURIComponent(vmName);
  let policyFilled = false;
  let pointsKey = '';
  return {
    title: 'Machine ' + vmName,
    mount(main) {
      main.append(
        el('p', {}, el('a', { href: '#/' }, '← All machines')),
        el('h1', {}, 'Machine ', el('span', { class: 'mono' }, vmName)),
        el('div', { id: 'vm-summary' }, el('p', { class: 'muted' }, 'Loading…')),
        el('h2', {}, 'Disks'), el('div', { id: 'vm-disks' }),
        el('h2', {}, 'Recovery points'), el('div', { id: 'vm-points' }, el('p', { class: 'muted' }, 'Loading…')),
        el('h2', {}, 'Actions'), this.actions(),
        el('h2', {}, 'Replication policy'), this.policyForm(),
        el('h2', {}, 'Recent jobs'), el('div', { id: 'vm-jobs' }));
    },
    actions() {
      const resync = el('form', { id: 'resync-form', class: 'action', onsubmit: (ev) => { ev.preventDefault(); this.resync(ev.target); } },
        el('fieldset', {},
          el('legend', {}, 'Resynchronize'),
          el('p', { class: 'hint' }, 'Compares block checksums of source and replica and sends only what differs.'),
          el('div', { class: 'radio' }, el('input', { type: 'radio', id: 'resync-now', name: 'when', value: 'now', checked: true }),
            el('label', { for: 'resync-now' }, 'Now')),
          el('div', { class: 'radio' }, el('input', { type: 'radio', id: 'resync-window', name: 'when', value: 'window' }),
            el('label', { for: 'resync-window', id: 'resync-window-label' }, 'In the next off-hours window')),
          el('button', { type: 'submit', id: 'resync-button' }, 'Resynchronize')));
      const failover = el('form', { id: 'failover-form', class: 'action', onsubmit: (ev) => { ev.preventDefault(); this.failover(ev.target); } },
        el('fieldset', {},
          el('legend', {}, 'Test failover'),
          el('p', { class: 'hint' }, 'Writes every disk at the chosen point as a fixed VHD beside the store, verified against the sender\'s digest; replication goes on.'),
          el('div', { class: 'field' },
            el('label', { for: 'failover-point' }, 'Recovery point'),
            el('select', { id: 'failover-point', name: 'point' }, el('option', { value: '' }, 'Newest point'))),
          el('button', { type: 'submit', id: 'failover-button' }, 'Test failover')));
      return el('div', { class: 'actions' }, resync, failover, el('div', { id: 'action-result', 'aria-live': 'polite' }));
    },
    policyForm() {
      const f = el('form', { id: 'policy-form', novalidate: true, onsubmit: (ev) => { ev.preventDefault(); this.savePolicy(ev.target); } },
        numberField('Replication interval (seconds)', 'interval_seconds', '', { min: 1, max: 86400, required: true }, 'ASR uses 30, 300 or 900'),
        numberField('Retention (hours)', 'retention_hours', '', { min: 0, max: 24, required: true }, '0 to 24'),
        numberField('RPO threshold (seconds)', 'rpo_threshold_seconds', '', { min: 1, max: 604800, required: true }, 'above it the machine shows Warning'),
        el('span', { class: 'field-error', 'data-error-for': '_form', 'aria-live': 'polite' }),
        el('button', { type: 'submit', id: 'policy-save' }, 'Save policy'));
      return f;
    },
    async resync(form) {
      const now = form.elements.when.value === 'now';
      try {
        const j = await api('POST', '/v1/vms/' + enc + '/resync', { now });
        this.started(j, now ? 'Resync job ' : 'Resync job (in the next off-hours window) ');
      } catch (e) {
        notify(explain(e, 'Resynchronize'), 'error');
      }
    },
    async failover(form) {
      const p = form.elements.point.value;
      try {
        const j = await api('POST', '/v1/vms/' + enc + '/test-failover', p === '' ? {} : { point: Number(p) });
        this.started(j, 'Test failover job ');
      } catch (e) {
        notify(explain(e, 'Test failover'), 'error');
      }
    },
    started(job, what) {
      notify(what + job.id + ' created.', 'ok');
      setRegion('action-result', el('p', {}, what,
        el('a', { href: '#/jobs/' + encodeURIComponent(job.id) }, job.id), ' created: follow it in Jobs.'));
    },
    async savePolicy(form) {
      const names = ['interval_seconds', 'retention_hours', 'rpo_threshold_seconds'];
      let cur;
      try { cur = await api('GET', '/v1/vms/' + enc + '/policy'); } catch (e) { notify(explain(e, 'Reading the policy'), 'error'); return; }
      const body = Object.assign({}, cur);
      for (const n of names) {
        const raw = form.elements[n].value.trim();
        body[n] = raw === '' ? null : Number(raw);
      }
      try {
        await api('PUT', '/v1/vms/' + enc + '/policy', body);
        showValidation(form, names, '');
        fieldError(form, '_form', '');
        notify('Policy of ' + vmName + ' saved.', 'ok');
      } catch (e) {
        if (e.status === 400) showValidation(form, names, e.message);
        else notify(explain(e, 'Saving the policy'), 'error');
      }
    },
    async refresh() {
      let vm;
      try {
        vm = await api('GET', '/v1/vms/' + enc);
      } catch (e) {
        if (e.status === 404) setRegion('vm-summary', el('p', { class: 'error' }, e.message));
        else setRegion('vm-summary', readError(e));
        return;
      }
      loadVms().catch(() => {});
      setRegion('vm-summary', el('dl', { class: 'summary' },
        el('dt', {}, 'Health'), el('dd', {}, healthBadge(vm.health, vm.reason)),
        el('dt', {}, 'RPO'), el('dd', {}, vm.rpo_seconds === null ? 'no point yet' : dur(vm.rpo_seconds), ' (threshold ' + dur(vm.policy.rpo_threshold_seconds) + ')'),
        el('dt', {}, 'Latest recovery point'), el('dd', {}, utc(vm.last_cycle_unix)),
        el('dt', {}, 'Phase'), el('dd', {}, vmPhase(vm)),
        el('dt', {}, 'Next retry'), el('dd', {}, vm.next_retry_unix ? utc(vm.next_retry_unix) + ' (' + rel(vm.next_retry_unix) + ')' : '–')));
      setRegion('vm-disks', table(null, ['Disk', 'Format', 'Size', 'Source', 'Phase', 'Last cycle'],
        vm.disks.map((d) => [d.disk, d.format || '–', bytes(d.size_bytes), el('span', { class: 'mono' }, d.path), phase(d),
          d.last_cycle === null ? '–' : '#' + d.last_cycle + ' ' + rel(d.last_cycle_unix)])));
      const p = vm.policy;
      $('resync-window-label').textContent = 'In the next off-hours window (' + pad(p.resync_window_start_hour) + ':00–' + pad(p.resync_window_end_hour) + ':00 site time)';
      if (!policyFilled) {
        const f = $('policy-form');
        for (const n of ['interval_seconds', 'retention_hours', 'rpo_threshold_seconds']) f.elements[n].value = p[n];
        policyFilled = true;
      }
      setRegion('vm-jobs', vm.jobs.length
        ? jobsTable(vm.jobs.slice(0, 5), false)
        : el('p', { class: 'muted' }, 'No jobs yet.'),
      el('p', {}, el('a', { href: '#/jobs?vm=' + enc }, 'All jobs of ' + vmName)));
      await this.points();
    },
    async points() {
      let doc;
      try {
        doc = await api('GET', '/v1/vms/' + enc + '/points');
      } catch (e) {
        setRegion('vm-points', el('p', { class: e.status === 409 ? 'muted' : 'error' }, 'Recovery points cannot be listed: ' + e.message));
        return;
      }
      // A VM's point id is the cycle all its disks share; bytes add up over the disks.
      const byId = new Map();
      for (const d of doc.disks) {
        for (const pt of d.points) {
          const a = byId.get(pt.id) || { id: pt.id, unix: pt.unix, bytes: 0, disks: 0, digests: 0 };
          a.bytes += pt.bytes;
          a.disks += 1;
          a.digests += pt.digest ? 1 : 0;
          a.unix = Math.max(a.unix, pt.unix);
          byId.set(pt.id, a);
        }
      }
      const all = [...byId.values()].filter((a) => a.disks === doc.disks.length).sort((a, b) => b.id - a.id);
      setRegion('vm-points', all.length
        ? table(null, ['Point', 'Time', 'Bytes changed', 'Digest'], all.map((a) => [
          '#' + a.id, utc(a.unix), bytes(a.bytes),
          a.digests === a.disks ? 'yes (failover verifies it)' : 'no (initial copy or resync)']))
        : el('p', {}, 'No recovery point yet: the initial replication has not been committed.'),
      el('p', { class: 'muted' }, 'Read from ' + doc.store + '.'));
      const key = all.map((a) => a.id).join(',');
      if (key !== pointsKey) {
        pointsKey = key;
        const sel = $('failover-point');
        const keep = sel.value;
        sel.replaceChildren(el('option', { value: '' }, 'Newest point'),
          ...all.map((a) => el('option', { value: a.id }, '#' + a.id + ' — ' + utc(a.unix))));
        if ([...sel.options].some((o) => o.value === keep)) sel.value = keep;
      }
    },
  };
}

// ---- Jobs -------------------------------------------------------------------------------

const KINDS = { enable_protection: 'Enable protection', resync: 'Resynchronize', test_failover: 'Test failover' };

function stateWord(s) {
  return el('span', { class: 'state ' + s }, { queued: 'Queued', running: 'Running', succeeded: 'Done', failed: 'Failed' }[s] || s);
}

function jobsTable(jobs, withVm) {
  const heads = ['Job', 'Kind'].concat(withVm ? ['Machine'] : [], ['State', 'Created', 'Ended']);
  return table(null, heads, jobs.map((j) => [
    el('a', { href: '#/jobs/' + encodeURIComponent(j.id) }, j.id),
    KINDS[j.kind] || j.kind,
  ].concat(withVm ? [j.vm] : [], [
    stateWord(j.state),
    utc(j.created_unix),
    j.ended_unix ? utc(j.ended_unix) : (j.not_before_unix && j.state === 'queued' ? 'not before ' + utc(j.not_before_unix) : '–'),
  ])), 'jobs');
}

function jobs(query) {
  const q = new URLSearchParams(query);
  return {
    title: 'Jobs',
    mount(main) {
      const vmSel = el('select', { id: 'filter-vm', name: 'vm' }, el('option', { value: '' }, 'All machines'));
      const stSel = el('select', { id: 'filter-state', name: 'state' }, el('option', { value: '' }, 'Any state'),
        ...['queued', 'running', 'succeeded', 'failed'].map((s) => el('option', { value: s }, s)));
      stSel.value = q.get('state') || '';
      const f = el('form', { id: 'jobs-filter', class: 'filters', onsubmit: (ev) => {
        ev.preventDefault();
        const p = new URLSearchParams();
        if (vmSel.value) p.set('vm', vmSel.value);
        if (stSel.value) p.set('state', stSel.value);
        location.hash = '#/jobs' + (p.toString() ? '?' + p : '');
      } },
      el('div', { class: 'field' }, el('label', { for: 'filter-vm' }, 'Machine'), vmSel),
      el('div', { class: 'field' }, el('label', { for: 'filter-state' }, 'State'), stSel),
      el('button', { type: 'submit' }, 'Filter'));
      main.append(el('h1', {}, 'Jobs'), f, el('div', { id: 'jobs' }, el('p', { class: 'muted' }, 'Loading…')));
      loadVms().then((v) => {
        const want = q.get('vm') || '';
        const names = new Set(v.vms.map((x) => x.vm));
        if (want) names.add(want);
        for (const n of [...names].sort()) vmSel.append(el('option', { value: n }, n));
        vmSel.value = want;
      }).catch(() => {});
    },
    async refresh() {
      const p = new URLSearchParams();
      if (q.get('vm')) p.set('vm', q.get('vm'));
      if (q.get('state')) p.set('state', q.get('state'));
      let v;
      try { v = await api('GET', '/v1/jobs' + (p.toString() ? '?' + p : '')); } catch (e) { setRegion('jobs', readError(e)); return; }
      loadVms().catch(() => {});
      busy = v.jobs.some((j) => j.state === 'queued' || j.state === 'running');
      setRegion('jobs', v.jobs.length ? jobsTable(v.jobs, true) : el('p', {}, 'No jobs match.'));
    },
  };
}

function jobDetail(id) {
  return {
    title: 'Job ' + id,
    mount(main) {
      main.append(el('p', {}, el('a', { href: '#/jobs' }, '← All jobs')),
        el('h1', {}, 'Job ', el('span', { class: 'mono' }, id)),
        el('div', { id: 'job' }, el('p', { class: 'muted' }, 'Loading…')));
    },
    async refresh() {
      let j;
      try { j = await api('GET', '/v1/jobs/' + encodeURIComponent(id)); } catch (e) { setRegion('job', e.status === 404 ? el('p', { class: 'error' }, e.message) : readError(e)); return; }
      busy = j.state === 'queued' || j.state === 'running';
      const parts = [el('dl', { class: 'summary' },
        el('dt', {}, 'Kind'), el('dd', {}, KINDS[j.kind] || j.kind),
        el('dt', {}, 'Machine'), el('dd', {}, el('a', { href: '#/vm/' + encodeURIComponent(j.vm) }, j.vm)),
        el('dt', {}, 'State'), el('dd', { id: 'job-state' }, stateWord(j.state)),
        el('dt', {}, 'Created'), el('dd', {}, utc(j.created_unix)),
        j.not_before_unix ? [el('dt', {}, 'Not before'), el('dd', {}, utc(j.not_before_unix))] : null,
        el('dt', {}, 'Ended'), el('dd', {}, utc(j.ended_unix))),
      el('h2', {}, 'Steps'),
      table(null, ['Step', 'State', 'Started', 'Ended', 'Took', 'Message'], j.steps.map((s) => [
        s.name, stateWord(s.state), utc(s.started_unix), utc(s.ended_unix),
        s.started_unix ? dur((s.ended_unix || nowUnix()) - s.started_unix) : '–', s.message || '–']), 'steps')];
      if (j.errors.length) {
        parts.push(el('h2', {}, 'Errors'), el('ol', { class: 'errors' }, j.errors.map((e) => el('li', {}, e))));
      }
      if (j.result) parts.push(el('h2', {}, 'Result'), result(j));
      setRegion('job', parts);
    },
  };
}

// A job's result: for a test failover, where every disk was written.
function result(j) {
  const r = j.result;
  if (j.kind === 'test_failover' && r.disks) {
    return el('div', { id: 'job-result' },
      el('p', {}, 'Point ', el('strong', {}, r.point === null ? '–' : '#' + r.point), ' written into ',
        el('span', { class: 'mono' }, String(r.folder)), r.verified ? ', every disk verified against the sender\'s digest.' : ', not verified (the point carries no digest).'),
      table(null, ['Disk', 'Written to', 'Verified'], r.disks.map((d) => [
        d.disk || '–', el('span', { class: 'mono disk-path' }, d.path || '–'), d.verified ? 'yes' : 'no'])));
  }
  return el('pre', { id: 'job-result', class: 'mono' }, JSON.stringify(r, null, 2));
}

// ---- Bandwidth --------------------------------------------------------------------------

const DAYS = ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'];
const RATE_FIELDS = ['work_hour_bytes_per_second', 'non_work_hour_bytes_per_second'];

const bandwidth = {
  title: 'Bandwidth',
  filled: false,
  mount(main) {
    this.filled = false;
    const f = el('form', { id: 'bandwidth-form', novalidate: true, onsubmit: (ev) => { ev.preventDefault(); this.save(ev.target); } },
      el('div', { class: 'check' }, el('input', { type: 'checkbox', id: 'f-no_throttle', name: 'no_throttle' }),
        el('label', { for: 'f-no_throttle' }, 'No throttle (no limit at any time)')),
      el('fieldset', { class: 'days' }, el('legend', {}, 'Work days'),
        DAYS.map((d) => el('span', { class: 'check' }, el('input', { type: 'checkbox', id: 'day-' + d, name: 'work_days', value: d }),
          el('label', { for: 'day-' + d }, d)))),
      el('span', { class: 'field-error', 'data-error-for': 'work_days', 'aria-live': 'polite' }),
      numberField('Work hours start (hour, 0–23)', 'work_hour_start', '', { min: 0, max: 23 }),
      numberField('Work hours end (hour, 0–24)', 'work_hour_end', '', { min: 0, max: 24 }),
      numberField('Work-hour limit (Mbit/s)', 'work_hour_bytes_per_second', '', { min: 0.512, max: 1023, step: 'any' }, 'empty: no limit; 0.512 to 1023'),
      numberField('Off-hours limit (Mbit/s)', 'non_work_hour_bytes_per_second', '', { min: 0.512, max: 1023, step: 'any' }, 'empty: no limit; 0.512 to 1023'),
      numberField('Site time offset from UTC (minutes)', 'utc_offset_minutes', '', { min: -840, max: 840 }),
      el('span', { class: 'field-error', 'data-error-for': '_form', 'aria-live': 'polite' }),
      el('button', { type: 'submit', id: 'bandwidth-save' }, 'Save schedule'));
    main.append(el('h1', {}, 'Bandwidth'),
      el('p', { class: 'hint' }, 'One schedule for the whole host, as the sender runs it; changes apply without restarting a transfer.'),
      el('div', { id: 'bw-now' }, el('p', { class: 'muted' }, 'Loading…')), el('h2', {}, 'Schedule'), f);
  },
  async refresh() {
    let b;
    try { b = await api('GET', '/v1/bandwidth'); } catch (e) { setRegion('bw-now', readError(e)); return; }
    loadVms().catch(() => {});
    setRegion('bw-now', el('dl', { class: 'summary' },
      el('dt', {}, 'Limit in effect now'), el('dd', { id: 'bw-current' }, mbit(b.current_bytes_per_second)),
      el('dt', {}, 'Work hours now'), el('dd', {}, b.work_hours_now === null ? 'unknown (sender not reached)' : (b.work_hours_now ? 'yes' : 'no')),
      el('dt', {}, 'Sender runs this schedule'), el('dd', {}, b.applied ? 'yes' : 'not yet'),
      b.sender_policy ? [el('dt', {}, 'Sender reports'), el('dd', { class: 'mono' }, b.sender_policy)] : null));
    if (!this.filled) {
      const f = $('bandwidth-form');
      const p = b.policy;
      f.elements.no_throttle.checked = p.no_throttle;
      for (const d of DAYS) $('day-' + d).checked = p.work_days.includes(d);
      f.elements.work_hour_start.value = p.work_hour_start;
      f.elements.work_hour_end.value = p.work_hour_end;
      for (const n of RATE_FIELDS) f.elements[n].value = p[n] === null ? '' : String(p[n] * 8 / 1e6);
      f.elements.utc_offset_minutes.value = p.utc_offset_minutes;
      this.filled = true;
    }
  },
  async save(f) {
    const names = ['work_days', 'work_hour_start', 'work_hour_end', 'utc_offset_minutes'].concat(RATE_FIELDS);
    const num = (n) => (f.elements[n].value.trim() === '' ? null : Number(f.elements[n].value));
    const body = {
      no_throttle: f.elements.no_throttle.checked,
      work_days: DAYS.filter((d) => $('day-' + d).checked),
      work_hour_start: num('work_hour_start'),
      work_hour_end: num('work_hour_end'),
      utc_offset_minutes: num('utc_offset_minutes'),
    };
    // Mbit/s on the page, bytes per second in the API (1 Mbit/s = 125,000 B/s).
    for (const n of RATE_FIELDS) {
      const m = num(n);
      body[n] = m === null ? null : Math.round(m * 125000);
    }
    try {
      await api('PUT', '/v1/bandwidth', body);
      showValidation(f, names, '');
      fieldError(f, '_form', '');
      notify('Bandwidth schedule saved.', 'ok');
      this.refresh();
    } catch (e) {
      if (e.status === 400) showValidation(f, names, e.message);
      else notify(explain(e, 'Saving the schedule'), 'error');
    }
  },
};

// ---- router, refresh, token -------------------------------------------------------------

function route() {
  const h = location.hash.replace(/^#/, '') || '/';
  const [path, query] = h.split('?');
  let m;
  if ((m = path.match(/^\/vm\/(.+)$/))) return detail(decodeURIComponent(m[1]));
  if ((m = path.match(/^\/jobs\/(.+)$/))) return jobDetail(decodeURIComponent(m[1]));
  if (path === '/jobs') return jobs(query || '');
  if (path === '/bandwidth') return bandwidth;
  return machines;
}

async function tick() {
  const view = current;
  busy = false;
  try {
    await view.refresh();
    if (view === current) {
      $('updated').textContent = 'Updated ' + utc(nowUnix()) + ' · refreshes every '
        + (busy ? BUSY_REFRESH_MS / 1000 + ' s while a job runs' : REFRESH_MS / 1000 + ' s');
    }
  } catch (e) {
    $('updated').textContent = 'Refresh failed: ' + e.message;
  }
  return view;
}

// The refresh loop: one tick at a time, the next one scheduled when it ended.
function schedule() {
  if (refresher) clearTimeout(refresher);
  refresher = setTimeout(async () => {
    const view = await tick();
    if (view === current) schedule();
  }, busy ? BUSY_REFRESH_MS : REFRESH_MS);
}

function show() {
  current = route();
  clearNotice();
  const main = $('main');
  main.replaceChildren();
  current.mount(main);
  document.title = current.title + ' · vdrep console';
  const top = location.hash.replace(/^#/, '').split(/[/?]/)[1] || '';
  for (const a of document.querySelectorAll('nav a')) {
    const view = a.getAttribute('data-view');
    const on = (view === 'machines' && (top === '' || top === 'vm')) || view === top;
    if (on) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  if (refresher) clearTimeout(refresher);
  tick().then((view) => { if (view === current) schedule(); });
}

function tokenState() {
  $('token-state').textContent = token
    ? 'Token entered (kept in this tab\'s memory only; a reload forgets it).'
    : 'No token: actions will be refused.';
}

document.addEventListener('DOMContentLoaded', () => {
  $('token-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const input = $('token');
    token = input.value.trim() || null;
    input.value = '';
    tokenState();
    notify(token ? 'Token entered.' : 'No token entered.', 'ok');
    tick();
  });
  $('token-forget').addEventListener('click', () => {
    token = null;
    tokenState();
    notify('Token forgotten.', 'ok');
  });
  window.addEventListener('hashchange', show);
  tokenState();
  show();
});
