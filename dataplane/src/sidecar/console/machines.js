// vdrep console, part 2 of 5: the Machines view and a machine's detail.
'use strict';

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
        el('span', { class: 'muted' }, ' (threshold ' + dur(vm.rpo_threshold_seconds ?? vm.policy.rpo_threshold_seconds) + ')')),
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

function detail(vmName) {
  const enc = encodeURIComponent(vmName);
  let policyFilled = false;
  let pointsKey = '';
  let pointsCycle;
  let pointsAt = 0;
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
        el('dt', {}, 'RPO'), el('dd', {}, vm.rpo_seconds === null ? 'no point yet' : dur(vm.rpo_seconds), ' (threshold ' + dur(vm.rpo_threshold_seconds ?? vm.policy.rpo_threshold_seconds) + ')'),
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
      // Listing points reads the store (Azure: a listing of blob snapshots): only when a
      // new point was committed, or every 30 s.
      if (vm.last_cycle_unix !== pointsCycle || Date.now() - pointsAt > 30000) {
        pointsCycle = vm.last_cycle_unix;
        pointsAt = Date.now();
        await this.points();
      }
    },
    async points() {
      let doc;
      try {
        doc = await api('GET', '/v1/vms/' + enc + '/points');
      } catch (e) {
        setRegion('vm-points', el('p', { class: e.status === 409 ? 'muted' : 'error' }, 'Recovery points cannot be listed: ' + e.message));
        return;
      }
      // The VM's points (`points`: each disk at its part of one switch); a document
      // without them (an older sidecar) gives the cycles all disks share.
      const byId = new Map();
      if (Array.isArray(doc.points)) {
        for (const pt of doc.points) {
          // A point without every disk (one added later) cannot be failed over: dropped below.
          byId.set(pt.id, { id: pt.id, unix: pt.unix, bytes: pt.bytes, disks: pt.disks.length,
            digests: pt.disks.filter((d) => d.digest).length });
        }
      } else {
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
      }
      // Newest first, and only the newest POINTS_SHOWN: a day of 30-second cycles is
      // thousands of points (`vdrep points` lists them all).
      const every = [...byId.values()].filter((a) => a.disks === doc.disks.length).sort((a, b) => b.id - a.id);
      const all = every.slice(0, POINTS_SHOWN);
      const older = every.length - all.length;
      setRegion('vm-points', all.length
        ? table(null, ['Point', 'Time', 'Bytes changed', 'Digest'], all.map((a) => [
          '#' + a.id, utc(a.unix), bytes(a.bytes), a.digests === a.disks ? 'yes' : 'no']), 'compact')
        : el('p', {}, 'No recovery point yet: the initial replication has not been committed.'),
      el('p', { class: 'muted' }, 'Digest: a test failover verifies the disks against it (the initial copy and resyncs carry none). '
        + (older > 0 ? older + ' older points not shown (oldest #' + every[every.length - 1].id + '; `vdrep points` lists every one). ' : '')
        + 'Read from ' + doc.store + '.'));
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
