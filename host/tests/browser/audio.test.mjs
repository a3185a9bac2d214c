// The playground's audio code without a browser: the μ-law codec against G.711 anchor values,
// and the capture worklet's resampler (48 kHz → 8 kHz) under a stub AudioWorklet scope.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { encodeMulaw, decodeMulaw, MULAW_TABLE } from '../../assets/playground/mulaw.js';

test('μ-law matches G.711 and round-trips every code', () => {
  assert.equal(encodeMulaw(0), 0xff);
  assert.equal(encodeMulaw(1), 0x80);
  assert.equal(encodeMulaw(-1), 0x00);
  assert.equal(encodeMulaw(1000 / 32767), 0xce); // G.711: 1000 → segment 3, step 1
  assert.equal(encodeMulaw(-1000 / 32767), 0x4e);
  assert.equal(decodeMulaw(0x80), 32124 / 32768);
  assert.equal(decodeMulaw(0xff), 0);
  for (let code = 0; code < 256; code++) {
    if (code === 0x7f) continue; // negative zero encodes as positive zero
    assert.equal(encodeMulaw(decodeMulaw(code)), code, `code ${code}`);
    assert.equal(MULAW_TABLE[code], decodeMulaw(code));
  }
});

/** Loads the worklet with a stub scope at `rate`; returns a processor and the frames it posts. */
async function worklet(rate) {
  const posted = [];
  let Processor;
  globalThis.sampleRate = rate;
  globalThis.AudioWorkletProcessor = class {
    constructor() {
      this.port = { postMessage: (m) => posted.push(m) };
    }
  };
  globalThis.registerProcessor = (_name, cls) => {
    Processor = cls;
  };
  await import(`../../assets/playground/capture-worklet.js?rate=${rate}`);
  return { processor: new Processor(), posted };
}

function feedTone(processor, rate, hz, amp, seconds) {
  const quantum = 128;
  let n = 0;
  for (let q = 0; q < (rate * seconds) / quantum; q++) {
    const block = new Float32Array(quantum);
    for (let i = 0; i < quantum; i++, n++) block[i] = amp * Math.sin((2 * Math.PI * hz * n) / rate);
    processor.process([[block]]);
  }
}

const rmsOf = (frames) => {
  let sum = 0;
  let count = 0;
  for (const f of frames) for (const b of new Uint8Array(f.frame)) (sum += decodeMulaw(b) ** 2), count++;
  return Math.sqrt(sum / count);
};

test('the capture worklet resamples 48 kHz to 20 ms μ-law frames and keeps out aliases', async () => {
  const { processor, posted } = await worklet(48000);
  feedTone(processor, 48000, 1000, 0.5, 1);
  assert.ok(posted.length >= 49 && posted.length <= 50, `frames in 1 s: ${posted.length}`);
  assert.ok(posted.every((m) => m.frame.byteLength === 160));
  const speech = rmsOf(posted.slice(2));
  assert.ok(Math.abs(speech - 0.5 / Math.SQRT2) < 0.02, `1 kHz passes: rms ${speech}`);
  assert.ok(Math.abs(posted[10].rms - speech) < 0.02, 'the posted rms is the frame rms');
  posted.length = 0;
  feedTone(processor, 48000, 6000, 0.5, 1); // would fold to 2 kHz without the low-pass
  const alias = rmsOf(posted.slice(2));
  assert.ok(alias < 0.01, `6 kHz is filtered out: rms ${alias}`);
});

test('the capture worklet passes 8 kHz through unchanged', async () => {
  const { processor, posted } = await worklet(8000);
  feedTone(processor, 8000, 440, 0.3, 0.5);
  assert.equal(posted.length, 25);
  assert.ok(Math.abs(rmsOf(posted) - 0.3 / Math.SQRT2) < 0.01);
});
