// Drives the sidecar's console in Debian's chromium through playwright-core (never a
// browser Playwright downloads). Started by tests/tests/console.rs against a real receiver,
// sender and sidecar; it clicks what an operator clicks, asserts what the page shows, writes
// screenshots of each view at 1280 and 390 px into CONSOLE_SHOTS, and writes what the Rust
// side checks further (the test failover's disks) as JSON to CONSOLE_OUT.
//
// Usage: node console.cjs (main | unreachable)
//   env CONSOLE_URL (http://127.0.0.1:PORT), CONSOLE_TOKEN, CONSOLE_SHOTS, CONSOLE_OUT
'use strict';

const fs = require('fs');
const os = require('os');
const path = require('path');
const assert = require('assert/strict');

const PW = path.join(__dirname, '../../ops/node_modules/playwright-core');
let chromium;
try {
  ({ chromium } = require(PW));
} catch (e) {
  console.error('playwright-core is not installed in ops/node_modules: run `bash ops/setup.sh` '
    + '(or `cd ops && npm ci --ignore-scripts`). ' + e.message);
  process.exit(3);
}
const CHROMIUM = '/usr/bin/chromium';
if (!fs.existsSync(CHROMIUM)) {
  console.error('Debian chromium is not installed at ' + CHROMIUM
    + ': run `bash ops/setup.sh` (apt-get install chromium)');
  process.exit(3);
}

const base = process.env.CONSOLE_URL;
const TOKEN = process.env.CONSOLE_TOKEN;
const shots = process.env.CONSOLE_SHOTS;
const outFile = process.env.CONSOLE_OUT;
const mode = process.argv[2] || 'main';
const WIDTHS = { wide: { width: 1280, height: 900 }, narrow: { width: 390, height: 844 } };

function step(msg) {
  console.log('[console] ' + msg);
}

async function launch() {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'vdrep-chromium-'));
  const ctx = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: WIDTHS.wide,
  });
  // The page must run air-gapped: every request that leaves the sidecar is refused and
  // fails the test.
  const outside = [];
  await ctx.route('**/*', (route) => {
    const u = route.request().url();
    if (u.startsWith(base + '/') || u === base) return route.continue();
    outside.push(u);
    return route.abort();
  });
  const page = ctx.pages()[0] || await ctx.newPage();
  const problems = [];
  page.on('console', (m) => {
    if (m.type() === 'error' && !/status of 401|status of 400/.test(m.text())) problems.push('console: ' + m.text());
  });
  page.on('pageerror', (e) => problems.push('page error: ' + e.message));
  return { ctx, page, outside, problems, profile };
}

async function shot(page, name, size) {
  await page.setViewportSize(WIDTHS[size]);
  await page.waitForTimeout(300);
  const file = path.join(shots, name + '-' + WIDTHS[size].width + '.png');
  await page.screenshot({ path: file, fullPage: true });
  step('screenshot ' + file);
}

async function both(page, name) {
  await shot(page, name, 'wide');
  await shot(page, name, 'narrow');
  await page.setViewportSize(WIDTHS.wide);
}

// The table row whose first cell is `name`.
function row(page, region, name) {
  return page.locator('#' + region + ' tbody tr').filter({
    has: page.locator('th', { hasText: new RegExp('^' + name + '$') }),
  });
}

async function enterToken(page, t, byKeyboard) {
  await page.getByLabel('Token', { exact: true }).fill(t);
  if (byKeyboard) await page.getByLabel('Token', { exact: true }).press('Enter');
  else await page.getByRole('button', { name: 'Use token' }).click();
  await page.locator('#token-state', { hasText: 'Token entered' }).waitFor();
}

async function waitJobState(page, id, word, timeout) {
  await page.locator('#jobs tbody tr').filter({ hasText: id }).locator('.state', { hasText: word })
    .waitFor({ timeout });
}

let lastPage = null;

fs.rmSync(path.join(shots, 'failure.png'), { force: true });

async function main() {
  const { ctx, page, outside, problems } = await launch();
  lastPage = page;
  const out = {};

  // The security headers reach the browser.
  const resp = await page.goto(base + '/');
  const h = resp.headers();
  assert.match(h['content-security-policy'] || '', /frame-ancestors 'none'/);
  assert.equal(h['x-content-type-options'], 'nosniff');

  // Machines: web Normal with an RPO; db (not allowed by the receiver) Critical with why.
  step('machines view');
  const web = row(page, 'vms', 'web');
  await web.locator('.health.normal', { hasText: 'Normal' }).waitFor({ timeout: 30000 });
  const rpo = await web.locator('td[data-label="RPO"]').innerText();
  assert.match(rpo, /^\d+\ss \(threshold /, 'RPO of web: ' + rpo);
  const db = row(page, 'vms', 'db');
  await db.locator('.health.critical', { hasText: 'Critical' }).waitFor({ timeout: 60000 });
  const dbHealth = await db.locator('td[data-label="Health"]').innerText();
  assert.match(dbHealth, /^Critical — .+/, 'db shows a reason: ' + dbHealth);
  out.db_health = dbHealth;
  step('db: ' + dbHealth);
  assert.match(await web.locator('td[data-label="Bandwidth"]').innerText(), /no limit|Mbit\/s/);
  // It refreshes by itself: the "updated" line changes without a reload.
  const before = await page.locator('#updated').innerText();
  await page.waitForFunction((b) => document.getElementById('updated').textContent !== b, before, { timeout: 10000 });
  await both(page, 'machines');

  // Keyboard: the first Tab reaches the skip link, then the views.
  await page.keyboard.press('Tab');
  assert.equal(await page.evaluate(() => document.activeElement.textContent), 'Skip to content');

  // An action without the token is refused, and the page says so.
  step('resync without a token');
  await web.getByRole('link', { name: 'web' }).click();
  await page.locator('#vm-disks tbody tr').first().waitFor();
  const format = await page.locator('#vm-disks td[data-label="Format"]').first().innerText();
  assert.equal(format, 'vhdx-dynamic');
  await page.getByRole('button', { name: 'Resynchronize' }).click();
  const refused = page.locator('#notice.error');
  await refused.waitFor();
  const refusedText = await refused.innerText();
  assert.match(refusedText, /refused/i);
  assert.match(refusedText, /no token entered/);
  out.refused = refusedText;

  // Points, listed from the store; failover needs a chosen one later.
  await page.locator('#vm-points tbody tr').first().waitFor({ timeout: 20000 });

  // The token: entered once, kept in memory only.
  step('token');
  await enterToken(page, TOKEN);
  const kept = await page.evaluate(() => ({
    cookie: document.cookie, local: localStorage.length, session: sessionStorage.length, url: location.href,
  }));
  assert.equal(kept.cookie, '');
  assert.equal(kept.local, 0);
  assert.equal(kept.session, 0);
  assert.ok(!kept.url.includes(TOKEN), 'token in the URL: ' + kept.url);

  // Policy: the API's validation message next to the field.
  step('policy validation');
  const retention = page.getByLabel('Retention (hours)');
  await retention.fill('48');
  await page.getByRole('button', { name: 'Save policy' }).click();
  const err = page.locator('[data-error-for="retention_hours"]');
  await err.filter({ hasText: 'retention_hours ranges from 0 to 24' }).waitFor();
  assert.equal(await retention.getAttribute('aria-invalid'), 'true');
  await both(page, 'machine-detail');
  await retention.fill('24');
  await page.getByRole('button', { name: 'Save policy' }).click();
  await page.locator('#notice.ok', { hasText: 'Policy of web saved' }).waitFor();

  // Resynchronize now: the Jobs view shows the job running, then done.
  step('resync');
  await page.getByLabel('Now').check();
  await page.getByRole('button', { name: 'Resynchronize' }).click();
  const created = page.locator('#action-result a');
  await created.waitFor();
  const resyncId = await created.innerText();
  out.resync_job = resyncId;
  // The Jobs view of this machine (a hash change: the token stays), while the job starts.
  await page.evaluate(() => { location.hash = '#/jobs?vm=web'; });
  await waitJobState(page, resyncId, 'Running', 60000);
  step(resyncId + ' running');
  await waitJobState(page, resyncId, 'Done', 120000);
  step(resyncId + ' done');
  // The filter form: machine and state.
  await page.getByRole('link', { name: 'Jobs', exact: true }).click();
  await page.locator('#filter-vm option[value="web"]').waitFor({ state: 'attached' });
  await page.getByLabel('Machine').selectOption('web');
  await page.getByLabel('State').selectOption('succeeded');
  await page.getByRole('button', { name: 'Filter' }).click();
  await page.waitForURL(/#\/jobs\?vm=web&state=succeeded$/);
  await waitJobState(page, resyncId, 'Done', 10000);
  await both(page, 'jobs');
  await page.getByRole('link', { name: resyncId }).click();
  await page.locator('#job-state', { hasText: 'Done' }).waitFor();
  await page.locator('#job tbody tr').first().waitFor();
  await both(page, 'job-detail');

  // Resynchronize in the next off-hours window: a job that waits for it.
  await page.goto(base + '/#/vm/web');
  await page.getByLabel('In the next off-hours window').check();
  await page.getByRole('button', { name: 'Resynchronize' }).click();
  await page.locator('#action-result', { hasText: 'in the next off-hours window' }).waitFor();
  out.window_job = await page.locator('#action-result a').innerText();

  // A reload forgets the token.
  await page.reload();
  await page.locator('#token-state', { hasText: 'No token' }).waitFor();
  await enterToken(page, TOKEN, true);

  // Test failover at a chosen point (not the newest: the oldest delta point listed).
  step('test failover');
  await page.goto(base + '/#/vm/web');
  await page.locator('#vm-points tbody tr').first().waitFor({ timeout: 20000 });
  await enterToken(page, TOKEN).catch(() => {});
  const values = await page.locator('#failover-point option').evaluateAll((os) => os.map((o) => o.value).filter((v) => v !== ''));
  assert.ok(values.length >= 2, 'points listed: ' + values);
  const chosen = values.map(Number).filter((v) => v >= 1).sort((a, b) => a - b)[0];
  assert.ok(chosen !== undefined, 'a delta point: ' + values);
  await page.getByLabel('Recovery point').selectOption(String(chosen));
  await page.getByRole('button', { name: 'Test failover' }).click();
  await page.locator('#action-result a').waitFor();
  const foId = await page.locator('#action-result a').innerText();
  await page.locator('#action-result a').click();
  await page.locator('#job-state', { hasText: 'Done' }).waitFor({ timeout: 120000 });
  await page.locator('#job-result tbody tr').first().waitFor();
  const disks = await page.locator('#job-result tbody tr').evaluateAll((rs) => rs.map((r) => ({
    disk: r.querySelector('th').textContent,
    path: r.querySelector('td[data-label="Written to"]').textContent,
  })));
  const pointText = await page.locator('#job-result strong').innerText();
  assert.equal(pointText, '#' + chosen);
  out.failover = { job: foId, point: chosen, disks };
  await both(page, 'failover-job');

  // Bandwidth: set a work-hour schedule covering every hour; the limit in effect follows.
  step('bandwidth');
  await page.getByRole('link', { name: 'Bandwidth', exact: true }).click();
  await page.locator('#bw-current').waitFor();
  await page.getByLabel('No throttle').uncheck();
  for (const d of ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun']) await page.getByLabel(d, { exact: true }).check();
  await page.getByLabel('Work hours start').fill('0');
  await page.getByLabel('Work hours end').fill('24');
  await page.getByLabel('Work-hour limit (Mbit/s)').fill('2000');
  await page.getByRole('button', { name: 'Save schedule' }).click();
  await page.locator('[data-error-for="work_hour_bytes_per_second"]', { hasText: 'work_hour_bytes_per_second' }).waitFor();
  await page.getByLabel('Work-hour limit (Mbit/s)').fill('400');
  await page.getByLabel('Off-hours limit (Mbit/s)').fill('');
  await page.getByRole('button', { name: 'Save schedule' }).click();
  await page.locator('#bw-current', { hasText: /400\.0\sMbit\/s/ }).waitFor({ timeout: 20000 });
  await page.locator('#bw-work-hours', { hasText: 'yes' }).waitFor({ timeout: 20000 });
  await both(page, 'bandwidth');
  await page.goto(base + '/#/');
  await row(page, 'vms', 'web').locator('td[data-label="Bandwidth"]', { hasText: /400\.0\sMbit\/s/ }).waitFor({ timeout: 20000 });

  assert.deepEqual(outside, [], 'requests outside the sidecar');
  assert.deepEqual(problems, [], 'errors in the page');
  fs.writeFileSync(outFile, JSON.stringify(out, null, 2));
  await ctx.close();
}

// The sender is gone: the page says plainly that the sidecar cannot reach it.
async function unreachable() {
  const { ctx, page, outside, problems } = await launch();
  await page.goto(base + '/');
  const banner = page.locator('#banner');
  await banner.filter({ hasText: 'cannot reach the sender' }).waitFor({ timeout: 30000 });
  await both(page, 'sender-unreachable');
  assert.deepEqual(outside, [], 'requests outside the sidecar');
  assert.deepEqual(problems, [], 'errors in the page');
  fs.writeFileSync(outFile, JSON.stringify({ banner: await banner.innerText() }, null, 2));
  await ctx.close();
}

(mode === 'unreachable' ? unreachable() : main()).then(() => step('ok'), async (e) => {
  console.error('[console] FAILED: ' + (e && e.stack ? e.stack : e));
  if (lastPage) {
    // What the page showed when it failed.
    try {
      await lastPage.screenshot({ path: path.join(shots, 'failure.png'), fullPage: true });
      console.error('[console] the page at ' + lastPage.url() + ':\n' + await lastPage.locator('body').innerText());
    } catch (_) { /* the browser is gone */ }
  }
  process.exit(1);
});
