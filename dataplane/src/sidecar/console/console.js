// vdrep console, part 5 of 5: the router, the refresh loop and the token form.
// (The operator's page over the sidecar's JSON API.)
//
// Plain JavaScript, no framework and no build step (see dataplane/src/sidecar/console.rs
// for why): a hash router, four views, and a refresh every few seconds that updates the
// data regions without touching forms the operator is filling in.
//
// The token the form sets is core.js's `token`, in memory only.
'use strict';

// Every 2 s; every 0.5 s while a job on screen is unfinished, so its steps are followed.
const REFRESH_MS = 2000;
const BUSY_REFRESH_MS = 500;
let refresher = null;
let current = null;

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
  // A view change moves focus to the content, so keyboard and screen-reader users start
  // there rather than on the link they used.
  window.addEventListener('hashchange', () => { show(); $('main').focus({ preventScroll: true }); });
  tokenState();
  show();
});
