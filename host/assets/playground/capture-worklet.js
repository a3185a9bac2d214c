// The microphone path: runs on the audio thread, low-pass filters and resamples whatever rate the
// AudioContext runs at to 8 kHz, encodes μ-law and posts one 20 ms frame (160 bytes) at a time,
// with its RMS, to the page.

import { encodeMulaw } from './mulaw.js';

const OUT_RATE = 8000;
const FRAME = 160;
// Keep the band a phone call has (Twilio's μ-law is band-limited to ~3.4 kHz anyway).
const CUTOFF_HZ = 3600;

/** A windowed-sinc (Blackman) low-pass with unity gain at DC. */
function lowpass(rate, cutoff, taps) {
  const h = new Float32Array(taps);
  const mid = (taps - 1) / 2;
  const fc = cutoff / rate;
  let sum = 0;
  for (let i = 0; i < taps; i++) {
    const n = i - mid;
    const sinc = n === 0 ? 2 * fc : Math.sin(2 * Math.PI * fc * n) / (Math.PI * n);
    const w = 0.42 - 0.5 * Math.cos((2 * Math.PI * i) / (taps - 1)) + 0.08 * Math.cos((4 * Math.PI * i) / (taps - 1));
    h[i] = sinc * w;
    sum += h[i];
  }
  for (let i = 0; i < taps; i++) h[i] /= sum;
  return h;
}

class MulawCapture extends AudioWorkletProcessor {
  constructor() {
    super();
    // `sampleRate` is the context's rate (a global of the worklet scope).
    this.step = sampleRate / OUT_RATE;
    const taps = this.step <= 1 ? 1 : Math.ceil(this.step * 12) | 1;
    this.h = taps === 1 ? Float32Array.of(1) : lowpass(sampleRate, CUTOFF_HZ, taps);
    let size = 1;
    while (size < taps + 4) size <<= 1;
    this.ring = new Float32Array(size);
    this.mask = size - 1;
    this.count = 0; // input samples seen
    this.next = taps - 1; // position of the next output sample, in input samples
    this.frame = new Uint8Array(FRAME);
    this.fill = 0;
    this.sumSq = 0;
  }

  /** The filtered input at absolute index k. */
  fir(k) {
    const { h, ring, mask } = this;
    let acc = 0;
    for (let j = 0; j < h.length; j++) acc += h[j] * ring[(k - j) & mask];
    return acc;
  }

  emit(y) {
    this.sumSq += y * y;
    this.frame[this.fill++] = encodeMulaw(y);
    if (this.fill === FRAME) {
      const rms = Math.sqrt(this.sumSq / FRAME);
      this.port.postMessage({ frame: this.frame.buffer, rms }, [this.frame.buffer]);
      this.frame = new Uint8Array(FRAME);
      this.fill = 0;
      this.sumSq = 0;
    }
  }

  process(inputs) {
    const input = inputs[0] && inputs[0][0];
    if (!input) return true; // not connected yet
    for (let i = 0; i < input.length; i++) {
      this.ring[this.count & this.mask] = input[i];
      this.count++;
      // Linear interpolation between two filtered samples needs both to exist.
      while (this.next <= this.count - 2) {
        const k = Math.floor(this.next);
        const frac = this.next - k;
        const y = frac === 0 ? this.fir(k) : this.fir(k) * (1 - frac) + this.fir(k + 1) * frac;
        this.emit(y);
        this.next += this.step;
      }
    }
    return true;
  }
}

registerProcessor('mulaw-capture', MulawCapture);
