//! Whole-file transcription: read a WAV at any rate, split long audio at quiet points into
//! segments the model handles well, transcribe each on the shared workers, join the text.

use std::path::Path;
use std::time::Duration;

use super::cancel::CancelToken;
use super::speech::{cut_window, quietest_cut};
use super::worker::{Job, Pool, Priority, Refused};
use super::{LocalSttConfig, LocalSttError};

/// How long to wait before offering a segment again to a full queue.
const RETRY: Duration = Duration::from_millis(20);

/// Reads a WAV file as mono samples on the ±1.0 scale (channels averaged) and its rate.
pub fn read_wav_mono(path: &Path) -> Result<(Vec<f32>, u32), LocalSttError> {
    let wav_err = |message: String| LocalSttError::Wav { path: path.to_path_buf(), message };
    let mut reader = hound::WavReader::open(path).map_err(|e| wav_err(e.to_string()))?;
    let spec = reader.spec();
    let channels = usize::from(spec.channels.max(1));
    if spec.sample_rate == 0 {
        return Err(wav_err("sample rate 0".into()));
    }
    let interleaved: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => reader.samples::<f32>().collect::<Result<_, _>>(),
        hound::SampleFormat::Int => {
            let scale = 2f32.powi(i32::from(spec.bits_per_sample.clamp(1, 32)) - 1);
            reader.samples::<i32>().map(|s| s.map(|v| v as f32 / scale)).collect::<Result<_, _>>()
        }
    }
    .map_err(|e| wav_err(e.to_string()))?;
    let mono = interleaved.chunks(channels).map(|c| c.iter().sum::<f32>() / c.len() as f32).collect();
    Ok((mono, spec.sample_rate))
}

/// Where to split `samples` so no piece is longer than `max` (each cut at the quietest 100 ms
/// near the piece's end).
fn split_points(samples: &[f32], rate_hz: u32, max: usize) -> Vec<usize> {
    let mut cuts = Vec::new();
    let mut start = 0;
    while samples.len() - start > max {
        let window = cut_window(max, rate_hz);
        let at = quietest_cut(samples, rate_hz, start + window.start..start + window.end).max(start + 1);
        cuts.push(at);
        start = at;
    }
    cuts.push(samples.len());
    cuts
}

pub(super) fn transcribe(
    pool: &Pool,
    config: &LocalSttConfig,
    samples: &[f32],
    rate_hz: u32,
) -> Result<String, LocalSttError> {
    if rate_hz == 0 {
        return Err(LocalSttError::Config("sample rate 0".into()));
    }
    let max = ((config.max_segment.as_secs_f64() * f64::from(rate_hz)) as usize).max(rate_hz as usize);
    let mut texts = Vec::new();
    let mut start = 0;
    for end in split_points(samples, rate_hz, max) {
        let piece = &samples[start..end];
        start = end;
        let Some(span) = config.gate.speech_span(piece, rate_hz) else { continue };
        let text = transcribe_one(pool, piece[span].to_vec(), rate_hz)?;
        if !text.is_empty() {
            texts.push(text);
        }
    }
    Ok(texts.join(" "))
}

fn transcribe_one(pool: &Pool, audio: Vec<f32>, rate_hz: u32) -> Result<String, LocalSttError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let mut job = Job {
        audio,
        rate_hz,
        forced: Vec::new(),
        draft: Vec::new(),
        cancel: CancelToken::new(),
        reply: Box::new(move |r| {
            let _ = tx.send(r);
        }),
    };
    loop {
        match pool.submit(job, Priority::Final) {
            Ok(()) => break,
            Err((Refused::Busy, back)) => {
                job = back;
                std::thread::sleep(RETRY);
            }
            Err((Refused::Stopped, _)) => return Err(LocalSttError::Stopped),
        }
    }
    match rx.recv() {
        Ok(Ok(Some(r))) => Ok(r.text),
        Ok(Ok(None)) | Err(_) => Err(LocalSttError::Stopped),
        Ok(Err(e)) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_audio_splits_into_bounded_pieces() {
        let rate = 8000;
        let samples: Vec<f32> = (0..rate * 40).map(|i| ((i as f32) * 0.05).sin() * 0.3).collect();
        let cuts = split_points(&samples, rate, (rate * 15) as usize);
        assert_eq!(*cuts.last().unwrap(), samples.len());
        let mut start = 0;
        for &c in &cuts {
            assert!(c > start && c - start <= (rate * 15) as usize, "{cuts:?}");
            start = c;
        }
        assert_eq!(split_points(&samples[..100], rate, 1000), vec![100]);
        assert_eq!(split_points(&[], rate, 1000), vec![0]);
    }

    #[test]
    fn wav_formats_read_as_mono() {
        let dir = tempfile::tempdir().unwrap();
        let stereo = dir.path().join("stereo.wav");
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 22050,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(&stereo, spec).unwrap();
        for _ in 0..10 {
            w.write_sample(16384i16).unwrap();
            w.write_sample(0i16).unwrap();
        }
        w.finalize().unwrap();
        let (mono, rate) = read_wav_mono(&stereo).unwrap();
        assert_eq!((mono.len(), rate), (10, 22050));
        assert!((mono[0] - 0.25).abs() < 1e-6);

        let float = dir.path().join("float.wav");
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 16000,
            bits_per_sample: 32,
            sample_format: hound::SampleFormat::Float,
        };
        let mut w = hound::WavWriter::create(&float, spec).unwrap();
        w.write_sample(-0.5f32).unwrap();
        w.finalize().unwrap();
        assert_eq!(read_wav_mono(&float).unwrap(), (vec![-0.5], 16000));

        let junk = dir.path().join("junk.wav");
        std::fs::write(&junk, b"RIFF nonsense").unwrap();
        let err = read_wav_mono(&junk).unwrap_err();
        assert!(err.to_string().contains("junk.wav"), "{err}");
    }
}
