// G.711 μ-law, as Twilio Media Streams carry it (8 kHz, one byte per sample).
// Shared by the capture worklet and the page; plain functions, no DOM.

const BIAS = 0x84;
const CLIP = 32635;

/** Encodes one sample in [-1, 1] to a μ-law byte. */
export function encodeMulaw(x) {
  let s = Math.round(x * 32767);
  let sign = 0;
  if (s < 0) {
    sign = 0x80;
    s = -s;
  }
  if (s > CLIP) s = CLIP;
  s += BIAS;
  let exponent = 7;
  for (let mask = 0x4000; (s & mask) === 0 && exponent > 0; mask >>= 1) exponent--;
  const mantissa = (s >> (exponent + 3)) & 0x0f;
  return ~(sign | (exponent << 4) | mantissa) & 0xff;
}

/** Decodes a μ-law byte to a sample in [-1, 1). */
export function decodeMulaw(code) {
  const u = ~code & 0xff;
  const exponent = (u >> 4) & 0x07;
  const magnitude = ((((u & 0x0f) << 3) + BIAS) << exponent) - BIAS;
  return (u & 0x80 ? -magnitude : magnitude) / 32768;
}

/** All 256 decoded values, for decoding a frame with one lookup per byte. */
export const MULAW_TABLE = Float32Array.from({ length: 256 }, (_, i) => decodeMulaw(i));

/** μ-law bytes of digital silence. */
export const MULAW_SILENCE = 0xff;
