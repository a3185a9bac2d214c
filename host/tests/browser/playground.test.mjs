// The playground in headless Chromium with a fake microphone fed from a speech WAV.
// Run by `cargo test --test integration playground` (host/tests/integration/playground.rs),
// which starts the server with the provider fakes and passes:
//   BASE_URL       the server, e.g. http://127.0.0.1:41234
//   MIC_WAV        16-bit PCM WAV the fake microphone plays (speech after a pause, then silence)
//   PERSONA        persona to pick
//   USER_TEXT      what the fake STT transcribes the speech as
//   SCREENSHOT     where to save a mid-call screenshot
//   RESULT_JSON    where to write the page's final call state, for the Rust side's checks
//   CHROMIUM       browser binary (default /usr/bin/chromium)

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { chromium } from 'playwright-core';

const env = (name, fallback) => {
  const v = process.env[name] ?? fallback;
  if (v === undefined) throw new Error(`${name} is not set`);
  return v;
};

const BASE_URL = env('BASE_URL');
const MIC_WAV = env('MIC_WAV');
const PERSONA = env('PERSONA');
const USER_TEXT = env('USER_TEXT');
const SCREENSHOT = env('SCREENSHOT');
const RESULT_JSON = env('RESULT_JSON');
const CHROMIUM = env('CHROMIUM', '/usr/bin/chromium');

const readState = (page) => page.evaluate(() => JSON.parse(document.getElementById('state').textContent));

/** Waits until `check(state)` holds; fails with the last state seen. */
async function waitForState(page, what, check, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  let state;
  while (Date.now() < deadline) {
    state = await readState(page);
    if (check(state)) return state;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.fail(`timed out waiting for ${what}; state: ${JSON.stringify(state)}`);
}

test('a playground call: greeting heard, caller heard, answer heard, transcript and latencies shown', async () => {
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--use-fake-ui-for-media-stream',
      '--use-fake-device-for-media-stream',
      `--use-file-for-fake-audio-capture=${MIC_WAV}`,
      '--disable-background-networking',
      '--disable-component-update',
      '--no-first-run',
    ],
  });
  const errors = [];
  try {
    const page = await browser.newPage({ viewport: { width: 1100, height: 760 } });
    page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
    page.on('console', (m) => m.type() === 'error' && errors.push(`console: ${m.text()} at ${m.location().url}`));
    page.on('response', (r) => r.status() >= 400 && errors.push(`HTTP ${r.status()} ${r.url()}`));

    await page.goto(`${BASE_URL}/playground`);
    await page.waitForSelector('#persona:not([disabled])', { timeout: 5000 });
    const offered = await page.$$eval('#persona option', (os) => os.map((o) => o.value));
    assert.ok(offered.includes('built-in'), `built-in is always offered: ${offered}`);
    assert.ok(offered.includes(PERSONA), `${PERSONA} is offered: ${offered}`);
    await page.selectOption('#persona', PERSONA);
    await page.click('#call');

    // The greeting plays before the caller speaks (the WAV starts with a pause).
    const greeted = await waitForState(page, 'the greeting', (s) => s.botSpurts >= 1 && s.lines.some((l) => l.role === 'assistant'), 8000);
    assert.equal(greeted.lines.filter((l) => l.role === 'user').length, 0, 'greeting came first');

    // The caller's turn is transcribed and answered, with latencies.
    const answered = await waitForState(
      page,
      'the answer to the caller',
      (s) => {
        const u = s.lines.findIndex((l) => l.role === 'user');
        return u >= 0 && s.lines.slice(u + 1).some((l) => l.role === 'assistant' && l.latency) && s.marksEchoed >= 2;
      },
      15000,
    );
    await new Promise((r) => setTimeout(r, 500)); // let the bot's "talking" light settle
    await page.screenshot({ path: SCREENSHOT });

    await page.click('#hangup');
    const end = await waitForState(page, 'the end of the call', (s) => s.ended && s.outcome, 5000);
    writeFileSync(RESULT_JSON, JSON.stringify(end, null, 1));
    console.log(JSON.stringify({ ...end, lines: end.lines.map((l) => `${l.role}: ${l.text}`) }));

    assert.equal(end.personaServing, PERSONA, 'the persona picked serves the call');
    assert.equal(end.outcome, 'caller_hung_up');
    assert.equal(end.closeCode, 1000, 'the server closed the socket cleanly');
    assert.equal(end.error, null);
    // Audio both ways, for real.
    assert.ok(end.rmsCaptured > 0.01, `the microphone was captured: rms ${end.rmsCaptured}`);
    assert.ok(end.framesSent >= 150, `mic frames sent: ${end.framesSent}`);
    assert.ok(end.rmsPlayed > 0.01, `bot audio was played: rms ${end.rmsPlayed}`);
    assert.ok(end.framesReceived >= 50, `bot frames received: ${end.framesReceived}`);
    // Greeting, then the answer: two separate stretches of bot audio, the second after the user line.
    const userIdx = end.lines.findIndex((l) => l.role === 'user');
    const user = end.lines[userIdx];
    assert.equal(user.text, USER_TEXT);
    assert.ok(end.botSpurts >= 2, `greeting and answer heard as two spurts: ${end.botSpurts}`);
    assert.ok(end.botSpurts > user.botSpurtsAt, 'bot audio was heard after the caller spoke');
    assert.ok(end.framesReceived >= user.framesReceivedAt + 25, 'the answer brought new audio');
    const answer = end.lines.slice(userIdx + 1).find((l) => l.role === 'assistant');
    assert.ok(answer.text.length > 0);
    for (const k of ['stt_final_ms', 'llm_first_token_ms', 'tts_first_byte_ms', 'voice_to_voice_ms']) {
      assert.equal(typeof answer.latency[k], 'number', `${k} in ${JSON.stringify(answer.latency)}`);
    }
    // The page shows them.
    const rows = await page.$$eval('#latency tbody tr', (rs) => rs.map((r) => r.textContent));
    assert.ok(rows.length >= 1 && rows.some((r) => /\d+ ms/.test(r)), `latency table: ${rows}`);
    const shown = await page.textContent('#transcript');
    assert.ok(shown.includes(USER_TEXT) && shown.includes(answer.text), `transcript shown: ${shown}`);
    // VAD went speaking → silent.
    const firstSpeaking = end.vadChanges.indexOf(true);
    assert.ok(firstSpeaking >= 0 && end.vadChanges.slice(firstSpeaking).includes(false), `vad: ${end.vadChanges}`);
    // Marks came back once their audio played.
    assert.ok(end.marksEchoed >= 2 && end.marksEchoed <= end.marksReceived, `marks ${end.marksEchoed}/${end.marksReceived}`);
    assert.ok(answered.lines.length >= 3);
    assert.deepEqual(errors, []);
  } finally {
    await browser.close();
  }
});
