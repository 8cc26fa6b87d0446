// vdrep console, part 3 of 5: the Jobs view and a job's drill-down.
'use strict';

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
        ...[['queued', 'Queued'], ['running', 'Running'], ['succeeded', 'Done'], ['failed', 'Failed']]
          .map(([v, label]) => el('option', { value: v }, label)));
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
      const shown = j.result ? result(j) : null;
      if (shown) parts.push(el('h2', {}, 'Result'), shown);
      setRegion('job', parts);
    },
  };
}

// A job's result: for a test failover, where every disk was written; for enabling
// protection, the disks. A resync's result is the sidecar's own bookkeeping: not shown.
function result(j) {
  const r = j.result;
  if (j.kind === 'resync') return null;
  if (j.kind === 'enable_protection' && Array.isArray(r.disks)) {
    return el('ul', { id: 'job-result' }, r.disks.map((d) => el('li', { class: 'mono' }, String(d))));
  }
  if (j.kind === 'test_failover' && r.disks) {
    return el('div', { id: 'job-result' },
      el('p', {}, 'Point ', el('strong', {}, r.point === null ? '–' : '#' + r.point), ' written into ',
        el('span', { class: 'mono' }, String(r.folder)), r.verified ? ', every disk verified against the sender\'s digest.' : ', not verified (the point carries no digest).'),
      table(null, ['Disk', 'Written to', 'Verified'], r.disks.map((d) => [
        d.disk || '–', el('span', { class: 'mono disk-path' }, d.path || '–'), d.verified ? 'yes' : 'no'])));
  }
  return el('pre', { id: 'job-result', class: 'mono' }, JSON.stringify(r, null, 2));
}
