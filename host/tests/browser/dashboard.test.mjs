// The call history dashboard in headless Chromium, after a simulated load.
// Run by `cargo test --test integration history` (host/tests/integration/history.rs), which
// simulates the calls against the server with the provider fakes and passes:
//   BASE_URL       the server, e.g. http://127.0.0.1:41234
//   EXPECT_CALLS   how many calls the list must show
//   CALL_SID       a call with an answered turn, to open
//   SCREENSHOTS    a directory for dashboard-list.png and dashboard-call.png
//   CHROMIUM       browser binary (default /usr/bin/chromium)

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const env = (name, fallback) => {
  const v = process.env[name] ?? fallback;
  if (v === undefined) throw new Error(`${name} is not set`);
  return v;
};

const BASE_URL = env('BASE_URL');
const EXPECT_CALLS = Number(env('EXPECT_CALLS'));
const CALL_SID = env('CALL_SID');
const SCREENSHOTS = env('SCREENSHOTS');
const CHROMIUM = env('CHROMIUM', '/usr/bin/chromium');

test('the dashboard lists the calls and shows one call: transcript, recording, latency chart', async () => {
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--disable-background-networking', '--disable-component-update', '--no-first-run'],
  });
  const errors = [];
  try {
    const page = await browser.newPage({ viewport: { width: 1200, height: 820 } });
    page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
    page.on('console', (m) => m.type() === 'error' && errors.push(`console: ${m.text()}`));

    await page.goto(`${BASE_URL}/dashboard`);
    await page.waitForSelector('#calls[data-state="loaded"]', { timeout: 15_000 });
    const rows = page.locator('#calls tbody tr[data-sid]');
    assert.equal(await rows.count(), EXPECT_CALLS, 'one row per simulated call');
    const outcomes = await rows.evaluateAll((trs) => trs.map((tr) => tr.dataset.outcome));
    assert.ok(outcomes.every((o) => o === 'caller_hung_up'), `outcomes: ${outcomes}`);
    await page.screenshot({ path: join(SCREENSHOTS, 'dashboard-list.png') });

    await page.click(`#calls tbody tr[data-sid="${CALL_SID}"]`);
    await page.waitForSelector(`#call-view[data-loaded="${CALL_SID}"]`, { timeout: 15_000 });
    assert.equal(await page.getAttribute('body', 'data-view'), 'call');

    // The transcript: the greeting, the caller's words and the answer, in order.
    const lines = await page.locator('#transcript .line').evaluateAll((els) =>
      els.map((el) => ({ role: el.dataset.role, seq: Number(el.dataset.seq), text: el.textContent })));
    assert.ok(lines.length >= 3, `transcript lines: ${JSON.stringify(lines)}`);
    assert.deepEqual(lines.map((l) => l.seq), lines.map((_, i) => i), 'in order');
    const roles = lines.map((l) => l.role);
    assert.equal(roles[0], 'assistant', 'the greeting first');
    const user = roles.indexOf('user');
    assert.ok(user > 0 && roles.slice(user + 1).includes('assistant'), `an answer after the caller: ${roles}`);

    // The recording plays: the player loads the stereo WAV the server recorded.
    const audio = await page.waitForFunction(() => {
      const a = document.getElementById('recording');
      return a && a.readyState >= 1 && Number.isFinite(a.duration) && a.duration > 0
        ? { duration: a.duration, src: a.currentSrc }
        : null;
    }, null, { timeout: 15_000 });
    const { duration, src } = await audio.jsonValue();
    assert.ok(src.includes(`/api/calls/${CALL_SID}/recording`) || src.startsWith('blob:'), src);
    assert.ok(duration > 2 && duration < 30, `recording duration ${duration}`);

    // The latency chart: one group per answered turn, with a voice-to-voice bar.
    const turns = page.locator('#latency-chart [data-turn]');
    assert.ok(await turns.count() >= 1, 'at least one answered turn in the chart');
    const bars = await page.locator('#latency-chart [data-turn] rect[data-metric]').evaluateAll((rs) =>
      rs.map((r) => ({ metric: r.dataset.metric, ms: Number(r.dataset.ms) })).filter((b) => !Number.isNaN(b.ms)));
    const v2v = bars.filter((b) => b.metric === 'v2v');
    assert.ok(v2v.length >= 1 && v2v.every((b) => b.ms > 0 && b.ms < 10_000), `bars: ${JSON.stringify(bars)}`);
    for (const metric of ['stt', 'llm', 'tts']) {
      assert.ok(bars.some((b) => b.metric === metric), `a ${metric} bar: ${JSON.stringify(bars)}`);
    }
    await page.screenshot({ path: join(SCREENSHOTS, 'dashboard-call.png'), fullPage: true });
    assert.deepEqual(errors, [], 'no page errors');
  } finally {
    await browser.close();
  }
});
