#!/usr/bin/env python3
"""Reference outputs from Pipecat 1.14's own modules, for Switchboard's audio parity tests.

Runs the real `SileroVADAnalyzer` (pipecat/audio/vad/silero.py + vad_analyzer.py, the bundled
silero_vad.onnx through the onnxruntime package), the real `LocalSmartTurnAnalyzerV3`
(local_smart_turn_v3.py + base_smart_turn.py + _whisper_features.py, soxr HQ, the bundled
smart-turn-v3.2-cpu.onnx) and prints the same JSON lines as `switchboard analyze --json
--no-denoise`, plus a "volume" field per window.

Only glue is written here: the loop that feeds 20 ms chunks, the VADController's
SPEAKING/QUIET edge detection (pipecat/audio/vad/vad_controller.py `_handle_vad`), and the
order in which TurnAnalyzerUserTurnStopStrategy hands audio and VAD events to the turn
analyzer (each chunk is appended with the speaking flag from *before* VAD saw it; at a VAD
stop `analyze_end_of_turn` runs). Time is the stream position, not the wall clock: the turn
analyzer's `time.monotonic()` is replaced by "seconds of audio appended so far", which is
what arrival time is on a real-time call.

Usage (in the venv made by setup_venv.sh):
  reference.py analyze FILE.wav [--confidence C --start-secs S --stop-secs S --min-volume V
                                 --pre-speech-ms MS --turn-stop-secs S --max-duration-secs S
                                 --no-turn]
  reference.py features FILE.wav OUT.f32   # Smart Turn features of the file's last 8 s (16 kHz)
  reference.py turn-segment FILE.wav OUT.f32 START END
      # 16 kHz model input (after soxr HQ when the file is 8 kHz, pad/truncate to 8 s)
      # of samples [START, END) of FILE; also prints the model probability.
"""

import argparse
import asyncio
import json
import sys
import wave

import numpy as np

# Pipecat logs at DEBUG on import; keep stdout clean for JSON lines.
from loguru import logger

logger.remove()

from pipecat.audio.turn.base_turn_analyzer import EndOfTurnState  # noqa: E402
from pipecat.audio.turn.smart_turn import base_smart_turn  # noqa: E402
from pipecat.audio.turn.smart_turn._whisper_features import (  # noqa: E402
    compute_whisper_log_mel_features,
)
from pipecat.audio.turn.smart_turn.base_smart_turn import SmartTurnParams  # noqa: E402
from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import (  # noqa: E402
    LocalSmartTurnAnalyzerV3,
)
from pipecat.audio.vad.silero import SileroVADAnalyzer  # noqa: E402
from pipecat.audio.vad.vad_analyzer import VADParams, VADState  # noqa: E402


class StreamClock:
    """Stands in for the `time` module inside base_smart_turn: seconds of audio seen."""

    def __init__(self):
        self.now = 0.0

    def monotonic(self):
        return self.now

    def perf_counter(self):
        import time

        return time.perf_counter()


def read_wav(path):
    with wave.open(path, "rb") as w:
        if w.getnchannels() != 1 or w.getsampwidth() != 2:
            sys.exit(f"{path}: need mono 16-bit PCM")
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    return rate, pcm


def emit(obj):
    print(json.dumps(obj), flush=False)


class ObservedSilero(SileroVADAnalyzer):
    """The real analyzer; records each window's probability and smoothed volume."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.windows = []
        self._p = None

    def voice_confidence(self, buffer):
        p = super().voice_confidence(buffer)
        self._p = float(np.asarray(p).reshape(-1)[0])
        return p

    def _get_smoothed_volume(self, audio):
        v = super()._get_smoothed_volume(audio)
        self.windows.append((self._p, float(v)))
        return v


def analyze(args):
    rate, pcm = read_wav(args.wav)
    if rate not in (8000, 16000):
        sys.exit("reference analyze needs an 8 or 16 kHz file")
    vad = ObservedSilero(
        sample_rate=rate,
        params=VADParams(
            confidence=args.confidence,
            start_secs=args.start_secs,
            stop_secs=args.stop_secs,
            min_volume=args.min_volume,
        ),
    )
    vad.set_sample_rate(rate)
    window = vad.num_frames_required()

    clock = StreamClock()
    base_smart_turn.time = clock
    # Chunk times sit exactly on the pre-speech boundary; a nudge of 1e-6 ms makes the
    # inclusive comparison `t >= start` independent of float rounding (Switchboard counts
    # samples, so its boundary is exact).
    turn = LocalSmartTurnAnalyzerV3(
        sample_rate=rate,
        params=SmartTurnParams(
            stop_secs=args.turn_stop_secs,
            pre_speech_ms=args.pre_speech_ms + 1e-6,
            max_duration_secs=args.max_duration_secs,
        ),
    )
    turn.set_sample_rate(rate)
    loop = asyncio.new_event_loop()

    chunk = rate // 50  # 20 ms, as Twilio delivers it
    speaking = False  # VADController state: only SPEAKING/QUIET edges are events
    user_speaking = False  # the stop strategy's `_vad_user_speaking`
    seen_windows = 0
    pos = 0
    while pos < len(pcm):
        frame = pcm[pos : pos + chunk]
        pos += len(frame)
        t = pos / rate
        clock.now = t
        if not args.no_turn:
            if turn.append_audio(frame.tobytes(), user_speaking) == EndOfTurnState.COMPLETE:
                emit({"t": round(t, 6), "event": "turn_fallback"})
        state = vad._run_analyzer(frame.tobytes())
        for p, v in vad.windows[seen_windows:]:
            seen_windows += 1
            wt = seen_windows * window / rate
            emit({"t": round(wt, 6), "vad": p, "volume": v})
        if state != (VADState.SPEAKING if speaking else VADState.QUIET) and state in (
            VADState.SPEAKING,
            VADState.QUIET,
        ):
            speaking = state == VADState.SPEAKING
            wt = seen_windows * window / rate
            emit({"t": round(wt, 6), "event": "speech_start" if speaking else "speech_stop"})
            if args.no_turn:
                continue
            if speaking:
                turn.update_vad_start_secs(args.start_secs)
                user_speaking = True
            else:
                user_speaking = False
                verdict, metrics = loop.run_until_complete(turn.analyze_end_of_turn())
                if metrics is not None:
                    emit(
                        {
                            "t": round(wt, 6),
                            "turn_probability": metrics.probability,
                            "turn_complete": verdict == EndOfTurnState.COMPLETE,
                        }
                    )
    loop.close()


def model_input_16k(pcm, rate):
    """What `_predict_endpoint` feeds the front end: 16 kHz float32, last 8 s or left-padded."""
    audio = pcm.astype(np.float32) / 32768.0
    turn = LocalSmartTurnAnalyzerV3(sample_rate=rate)
    turn.set_sample_rate(rate)
    audio = turn._resample_to_model_rate(audio)
    n = 8 * 16000
    if len(audio) > n:
        audio = audio[-n:]
    elif len(audio) < n:
        audio = np.pad(audio, (n - len(audio), 0))
    return turn, audio


def features(args):
    rate, pcm = read_wav(args.wav)
    _, audio = model_input_16k(pcm, rate)
    feats = compute_whisper_log_mel_features(audio, do_normalize=True)
    feats.astype("<f4").tofile(args.out)


def turn_segment(args):
    rate, pcm = read_wav(args.wav)
    seg = pcm[args.start : args.end]
    turn, audio = model_input_16k(seg, rate)
    audio.astype("<f4").tofile(args.out)
    result = turn._predict_endpoint(seg.astype(np.float32) / 32768.0)
    emit({"turn_probability": result["probability"]})


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("analyze")
    a.add_argument("wav")
    a.add_argument("--confidence", type=float, default=0.7)
    a.add_argument("--start-secs", type=float, default=0.2)
    a.add_argument("--stop-secs", type=float, default=0.2)
    a.add_argument("--min-volume", type=float, default=0.6)
    a.add_argument("--pre-speech-ms", type=float, default=500.0)
    a.add_argument("--turn-stop-secs", type=float, default=1.5)
    a.add_argument("--max-duration-secs", type=float, default=8.0)
    a.add_argument("--no-turn", action="store_true")
    f = sub.add_parser("features")
    f.add_argument("wav")
    f.add_argument("out")
    s = sub.add_parser("turn-segment")
    s.add_argument("wav")
    s.add_argument("out")
    s.add_argument("start", type=int)
    s.add_argument("end", type=int)
    args = ap.parse_args()
    {"analyze": analyze, "features": features, "turn-segment": turn_segment}[args.cmd](args)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
