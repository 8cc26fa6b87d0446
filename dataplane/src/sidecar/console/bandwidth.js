// vdrep console, part 4 of 5: the Bandwidth view.
'use strict';

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
      el('dt', {}, 'Work hours now'), el('dd', { id: 'bw-work-hours' }, b.work_hours_now === null ? 'unknown (sender not reached)' : (b.work_hours_now ? 'yes' : 'no')),
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
