//! What the simulated caller heard: stereo 8 kHz 16-bit WAV, left = caller audio sent, right = bot
//! audio as played out, both placed by call time (frame `k` covers `[k × 20, k × 20 + 20)` ms).

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use super::caller::{FRAME_SAMPLES, SAMPLE_RATE};
use crate::audio::mulaw;

/// A stereo recording being written.
pub struct Recorder {
    path: PathBuf,
    writer: hound::WavWriter<BufWriter<File>>,
    bot: [i16; FRAME_SAMPLES],
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").field("path", &self.path).finish()
    }
}

impl Recorder {
    pub fn create(path: &Path) -> Result<Self, String> {
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: SAMPLE_RATE,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let writer = hound::WavWriter::create(path, spec).map_err(|e| format!("recording {}: {e}", path.display()))?;
        Ok(Self { path: path.to_path_buf(), writer, bot: [0; FRAME_SAMPLES] })
    }

    /// Appends one 20 ms frame: caller PCM on the left, bot μ-law (decoded) on the right.
    pub fn write_frame(&mut self, caller: &[i16], bot_mulaw: &[u8; FRAME_SAMPLES]) -> Result<(), String> {
        mulaw::decode_into(bot_mulaw, &mut self.bot).map_err(|e| e.to_string())?;
        let mut w = self.writer.get_i16_writer(2 * FRAME_SAMPLES as u32);
        for (i, &right) in self.bot.iter().enumerate() {
            w.write_sample(caller.get(i).copied().unwrap_or(0));
            w.write_sample(right);
        }
        w.flush().map_err(|e| format!("recording {}: {e}", self.path.display()))
    }

    /// Writes the header lengths and closes the file.
    pub fn finish(self) -> Result<PathBuf, String> {
        let path = self.path;
        self.writer.finalize().map_err(|e| format!("recording {}: {e}", path.display()))?;
        Ok(path)
    }
}
