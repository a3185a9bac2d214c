// Audio for a playground call: the microphone through the capture worklet, and the bot's μ-law
// frames scheduled gap-free in the AudioContext, tapped by an AnalyserNode so the page can show
// (and tests can prove) what was actually played. Marks are released the way Twilio does: once
// everything queued before them has played; `clear` drops queued audio and releases them at once.

import { MULAW_TABLE } from './mulaw.js';

/** Extra delay when playback (re)starts, to absorb network jitter. */
const START_LEAD_S = 0.06;
/** Analyser RMS above which the bot counts as audible, and below which it is quiet. */
const AUDIBLE_RMS = 0.01;
const QUIET_RMS = 0.004;
/** Quiet this long ends a talk spurt. */
const SPURT_GAP_S = 0.35;

/** Starts capturing `stream` into 20 ms μ-law frames; `onFrame(bytes, rms)` gets each one. */
export async function startCapture(ctx, stream, onFrame) {
  await ctx.audioWorklet.addModule(new URL('./capture-worklet.js', import.meta.url));
  const source = ctx.createMediaStreamSource(stream);
  const node = new AudioWorkletNode(ctx, 'mulaw-capture', {
    numberOfInputs: 1,
    numberOfOutputs: 1,
    outputChannelCount: [1],
    channelCount: 1,
    channelCountMode: 'explicit',
  });
  node.port.onmessage = (e) => onFrame(new Uint8Array(e.data.frame), e.data.rms);
  // A muted path to the output keeps the worklet pulled by the graph in every browser.
  const mute = ctx.createGain();
  mute.gain.value = 0;
  source.connect(node);
  node.connect(mute);
  mute.connect(ctx.destination);
  return {
    stop() {
      node.port.onmessage = null;
      source.disconnect();
      node.disconnect();
      for (const track of stream.getTracks()) track.stop();
    },
  };
}

/** Plays the bot's audio and releases marks once what came before them has played. */
export class Player {
  constructor(ctx, { onMarkPlayed, onLevel }) {
    this.ctx = ctx;
    this.onMarkPlayed = onMarkPlayed;
    this.onLevel = onLevel;
    this.gain = ctx.createGain();
    this.analyser = ctx.createAnalyser();
    this.analyser.fftSize = 1024;
    this.gain.connect(this.analyser);
    this.analyser.connect(ctx.destination);
    this.samples = new Float32Array(this.analyser.fftSize);
    this.nextTime = 0;
    this.sources = new Set();
    this.marks = []; // {name, at}: `at` is when the audio before the mark ends
    this.peakRms = 0;
    this.spurts = 0;
    this.inSpurt = false;
    this.quietSince = null;
    this.timer = setInterval(() => this.tick(), 20);
  }

  /** Queues one chunk of μ-law audio right after what is already queued. */
  enqueue(bytes) {
    if (bytes.length === 0) return;
    const buffer = this.ctx.createBuffer(1, bytes.length, 8000);
    const pcm = buffer.getChannelData(0);
    for (let i = 0; i < bytes.length; i++) pcm[i] = MULAW_TABLE[bytes[i]];
    const source = this.ctx.createBufferSource();
    source.buffer = buffer;
    source.connect(this.gain);
    const now = this.ctx.currentTime;
    if (this.nextTime < now + 0.005) this.nextTime = now + START_LEAD_S; // underrun or first chunk
    source.start(this.nextTime);
    this.nextTime += buffer.duration;
    this.sources.add(source);
    source.onended = () => this.sources.delete(source);
  }

  /** A mark: echoed once everything queued so far has been heard. */
  mark(name) {
    this.marks.push({ name, at: Math.max(this.nextTime, this.ctx.currentTime) });
    this.releaseMarks();
  }

  /** Barge-in: stop and drop all queued audio; pending marks come back at once (as Twilio does). */
  clear() {
    for (const source of this.sources) {
      try {
        source.stop();
      } catch {
        // already stopped
      }
    }
    this.sources.clear();
    this.nextTime = 0;
    const pending = this.marks.splice(0);
    for (const m of pending) this.onMarkPlayed(m.name);
  }

  /** Seconds of audio still queued. */
  queuedSeconds() {
    return Math.max(0, this.nextTime - this.ctx.currentTime);
  }

  releaseMarks() {
    // What is scheduled at currentTime reaches the speaker outputLatency later.
    const heard = this.ctx.currentTime - (this.ctx.outputLatency || 0);
    while (this.marks.length > 0 && this.marks[0].at <= heard) this.onMarkPlayed(this.marks.shift().name);
  }

  tick() {
    this.releaseMarks();
    this.analyser.getFloatTimeDomainData(this.samples);
    let sum = 0;
    for (const v of this.samples) sum += v * v;
    const rms = Math.sqrt(sum / this.samples.length);
    this.peakRms = Math.max(this.peakRms, rms);
    const now = this.ctx.currentTime;
    if (rms >= AUDIBLE_RMS) {
      if (!this.inSpurt) this.spurts++;
      this.inSpurt = true;
      this.quietSince = null;
    } else if (rms < QUIET_RMS && this.inSpurt) {
      this.quietSince ??= now;
      if (now - this.quietSince >= SPURT_GAP_S) this.inSpurt = false;
    }
    this.onLevel(rms);
  }

  stop() {
    clearInterval(this.timer);
    this.clear();
  }
}
