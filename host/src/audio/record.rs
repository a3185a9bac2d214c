//! Per-call stereo recording: caller on the left, bot on the right as the caller heard it,
//! 8 kHz 16-bit PCM WAV, streamed to disk.
//!
//! Two layers:
//! - [`Timeline`] places samples by the call's clock, not by arrival order: caller frames at their
//!   Twilio media timestamp, bot frames at the playout time the transport computed while pacing.
//!   Gaps are silence. Audio is released only once it is final: the caller's clock (its newest
//!   timestamp) minus a hold-back that covers the ≤ 100 ms of bot audio the transport queues ahead
//!   of real time, so a Twilio `clear` can still remove bot audio that was never played
//!   ([`Timeline::clear_bot_from`]). Memory is a fixed ring; nothing allocates per frame.
//! - [`CallRecorder`] feeds released audio to a `hound` writer and rewrites the RIFF/data sizes
//!   about once a second of audio, so a crash loses about a second; [`repair`] fixes the header
//!   of a file that was never finalised. The recorder is `Send`, to run on a blocking thread.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use thiserror::Error;

/// Sample rate of recordings.
pub const RECORD_RATE: u32 = 8000;
const SAMPLES_PER_MS: u64 = RECORD_RATE as u64 / 1000;
/// Frames further than this beyond the current end are rejected as bogus timestamps (10 min).
const MAX_JUMP_FRAMES: u64 = 10 * 60 * RECORD_RATE as u64;
/// Header rewrite period, in frames of audio (1 s).
const FLUSH_EVERY_FRAMES: u64 = RECORD_RATE as u64;
/// Bytes per stereo 16-bit frame.
const BLOCK_ALIGN: u64 = 4;

/// Errors from recording and repair.
#[derive(Debug, Error)]
pub enum RecordError {
    /// The call sid cannot be used in a file name.
    #[error("call sid {0:?} is not usable in a file name (expected letters, digits, '-' or '_')")]
    BadCallSid(String),
    /// The start time is before 1970.
    #[error("recording start time is before the Unix epoch")]
    BadTime,
    /// Creating the directory or file failed.
    #[error("creating recording {path}: {source}")]
    Create {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Writing the WAV failed.
    #[error("writing recording {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: hound::Error,
    },
    /// Reading or rewriting a file for repair failed.
    #[error("repairing {path}: {source}")]
    RepairIo {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The file is not a WAV this module can repair.
    #[error("repairing {path}: {reason}")]
    NotRepairable {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: &'static str,
    },
}

/// Timeline tuning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimelineConfig {
    /// Audio newer than the caller's clock minus this is held back (default 200 ms; must cover
    /// the transport's bot lead of ~100 ms plus jitter).
    pub holdback_ms: u32,
    /// Ring size (default 3 s). A frame further ahead than this forces older audio out.
    pub capacity_ms: u32,
}

impl Default for TimelineConfig {
    fn default() -> Self {
        Self { holdback_ms: 200, capacity_ms: 3000 }
    }
}

/// Counters of audio that did not land where it was scheduled.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TimelineStats {
    /// Caller samples dropped because their time was already written.
    pub caller_late_samples: u64,
    /// Bot samples dropped because their time was already written.
    pub bot_late_samples: u64,
    /// Bot samples removed by `clear_bot_from` (never played).
    pub bot_cleared_samples: u64,
    /// Samples rejected for a timestamp more than 10 minutes ahead.
    pub rejected_samples: u64,
    /// Times a frame far ahead forced older audio out before the hold-back expired.
    pub forced_releases: u64,
}

/// Which track a sample belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Track {
    Caller = 0,
    Bot = 1,
}

/// Places caller and bot samples by call time in a fixed ring and releases final audio as
/// interleaved stereo (left caller, right bot) to a sink.
pub struct Timeline {
    /// Interleaved L/R frames; frame position p lives at slot p % cap.
    ring: Box<[i16]>,
    cap: u64,
    holdback: u64,
    /// Frames released so far; everything before is final.
    released: u64,
    caller_end: u64,
    bot_end: u64,
    stats: TimelineStats,
}

impl std::fmt::Debug for Timeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timeline")
            .field("capacity_frames", &self.cap)
            .field("released", &self.released)
            .field("caller_end", &self.caller_end)
            .field("bot_end", &self.bot_end)
            .field("stats", &self.stats)
            .finish()
    }
}

impl Timeline {
    /// An empty timeline starting at call time 0.
    pub fn new(config: TimelineConfig) -> Self {
        let cap = (u64::from(config.capacity_ms.max(100)) * SAMPLES_PER_MS).max(1);
        Self {
            ring: vec![0; cap as usize * 2].into_boxed_slice(),
            cap,
            holdback: u64::from(config.holdback_ms) * SAMPLES_PER_MS,
            released: 0,
            caller_end: 0,
            bot_end: 0,
            stats: TimelineStats::default(),
        }
    }

    /// Places caller audio that starts `ts_ms` after stream start (Twilio's media timestamp),
    /// then releases everything older than the caller's clock minus the hold-back.
    pub fn caller<E>(
        &mut self,
        ts_ms: u64,
        pcm: &[i16],
        sink: &mut impl FnMut(&[i16]) -> Result<(), E>,
    ) -> Result<(), E> {
        self.place(Track::Caller, ts_ms.saturating_mul(SAMPLES_PER_MS), pcm, sink)?;
        let due = self.caller_end.saturating_sub(self.holdback);
        self.release_to(due, sink)
    }

    /// Places bot audio scheduled to play `play_ms` after stream start.
    pub fn bot<E>(
        &mut self,
        play_ms: u64,
        pcm: &[i16],
        sink: &mut impl FnMut(&[i16]) -> Result<(), E>,
    ) -> Result<(), E> {
        self.place(Track::Bot, play_ms.saturating_mul(SAMPLES_PER_MS), pcm, sink)
    }

    /// Drops bot audio scheduled at or after `t_ms` that has not been released (Twilio `clear`).
    /// Returns the length in samples of the bot span cleared.
    pub fn clear_bot_from(&mut self, t_ms: u64) -> u64 {
        let from = t_ms.saturating_mul(SAMPLES_PER_MS).max(self.released);
        if from >= self.bot_end {
            return 0;
        }
        for p in from..self.bot_end {
            let slot = self.slot(p, Track::Bot);
            self.ring[slot] = 0;
        }
        let dropped = self.bot_end - from;
        self.bot_end = from;
        self.stats.bot_cleared_samples += dropped;
        dropped
    }

    /// Releases everything still held. With `end_ms`, bot audio scheduled at or after the end of
    /// the call (never heard) is dropped first.
    pub fn finish<E>(&mut self, end_ms: Option<u64>, sink: &mut impl FnMut(&[i16]) -> Result<(), E>) -> Result<(), E> {
        if let Some(t) = end_ms {
            self.clear_bot_from(t);
        }
        let end = self.caller_end.max(self.bot_end);
        self.release_to(end, sink)
    }

    /// Frames released so far.
    pub fn released_frames(&self) -> u64 {
        self.released
    }

    /// Frames placed but not yet released (bounded by the ring size).
    pub fn held_frames(&self) -> u64 {
        self.caller_end.max(self.bot_end).saturating_sub(self.released)
    }

    /// Ring size in frames.
    pub fn capacity_frames(&self) -> u64 {
        self.cap
    }

    /// Counters of late, cleared and rejected audio.
    pub fn stats(&self) -> TimelineStats {
        self.stats
    }

    fn slot(&self, pos: u64, track: Track) -> usize {
        (pos % self.cap) as usize * 2 + track as usize
    }

    fn place<E>(
        &mut self,
        track: Track,
        start: u64,
        pcm: &[i16],
        sink: &mut impl FnMut(&[i16]) -> Result<(), E>,
    ) -> Result<(), E> {
        let end_now = self.caller_end.max(self.bot_end).max(self.released);
        if start > end_now.saturating_add(MAX_JUMP_FRAMES) {
            self.stats.rejected_samples += pcm.len() as u64;
            return Ok(());
        }
        // Pieces of half the ring, so a forced release never overtakes the piece being placed.
        let piece = (self.cap / 2).max(1) as usize;
        for (i, chunk) in pcm.chunks(piece).enumerate() {
            self.place_piece(track, start + (i * piece) as u64, chunk, sink)?;
        }
        Ok(())
    }

    fn place_piece<E>(
        &mut self,
        track: Track,
        start: u64,
        pcm: &[i16],
        sink: &mut impl FnMut(&[i16]) -> Result<(), E>,
    ) -> Result<(), E> {
        let end = start + pcm.len() as u64;
        let late = self.released.saturating_sub(start).min(pcm.len() as u64);
        match track {
            Track::Caller => self.stats.caller_late_samples += late,
            Track::Bot => self.stats.bot_late_samples += late,
        }
        if late == pcm.len() as u64 {
            return Ok(());
        }
        if end > self.released + self.cap {
            self.stats.forced_releases += 1;
            self.release_to(end - self.cap, sink)?;
        }
        for (k, &s) in pcm.iter().enumerate().skip(late as usize) {
            let slot = self.slot(start + k as u64, track);
            self.ring[slot] = s;
        }
        match track {
            Track::Caller => self.caller_end = self.caller_end.max(end),
            Track::Bot => self.bot_end = self.bot_end.max(end),
        }
        Ok(())
    }

    /// Hands frames up to `target` to the sink (in at most two slices per wrap) and clears them.
    fn release_to<E>(&mut self, target: u64, sink: &mut impl FnMut(&[i16]) -> Result<(), E>) -> Result<(), E> {
        while self.released < target {
            let at = self.released % self.cap;
            let run = (target - self.released).min(self.cap - at);
            let range = at as usize * 2..(at + run) as usize * 2;
            sink(&self.ring[range.clone()])?;
            self.ring[range].fill(0);
            self.released += run;
        }
        Ok(())
    }
}

/// What a finished recording holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recording {
    /// The WAV file.
    pub path: PathBuf,
    /// Stereo frames written (8000 per second).
    pub frames: u64,
    /// Late, cleared and rejected audio.
    pub stats: TimelineStats,
}

/// Streams one call's stereo recording to `{dir}/{call_sid}_{YYYYMMDDTHHMMSSZ}.wav`.
pub struct CallRecorder {
    timeline: Timeline,
    writer: hound::WavWriter<BufWriter<File>>,
    /// A second handle on the file, to fsync after hound has finalised it.
    sync_handle: File,
    path: PathBuf,
    frames_written: u64,
    flushed_at: u64,
}

impl std::fmt::Debug for CallRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallRecorder").field("path", &self.path).field("frames_written", &self.frames_written).finish()
    }
}

impl CallRecorder {
    /// Creates the directory if needed and a new file named by call sid and UTC start time.
    pub fn create(dir: &Path, call_sid: &str, started: SystemTime) -> Result<Self, RecordError> {
        Self::create_with(dir, call_sid, started, TimelineConfig::default())
    }

    /// [`create`](Self::create) with explicit timeline tuning.
    pub fn create_with(
        dir: &Path,
        call_sid: &str,
        started: SystemTime,
        config: TimelineConfig,
    ) -> Result<Self, RecordError> {
        let path = dir.join(file_name(call_sid, started)?);
        let create_err = |path: &Path, source| RecordError::Create { path: path.to_path_buf(), source };
        fs::create_dir_all(dir).map_err(|e| create_err(dir, e))?;
        // create_new: never overwrite another call's recording.
        let file =
            OpenOptions::new().write(true).read(true).create_new(true).open(&path).map_err(|e| create_err(&path, e))?;
        let sync_handle = file.try_clone().map_err(|e| create_err(&path, e))?;
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: RECORD_RATE,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let writer = hound::WavWriter::new(BufWriter::new(file), spec)
            .map_err(|source| RecordError::Write { path: path.clone(), source })?;
        Ok(Self { timeline: Timeline::new(config), writer, sync_handle, path, frames_written: 0, flushed_at: 0 })
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Counters of late, cleared and rejected audio so far.
    pub fn stats(&self) -> TimelineStats {
        self.timeline.stats()
    }

    /// Caller audio at its media timestamp (ms since stream start).
    pub fn caller(&mut self, ts_ms: u64, pcm: &[i16]) -> Result<(), RecordError> {
        self.run(|t, mut sink| t.caller(ts_ms, pcm, &mut sink))
    }

    /// Bot audio at its playout time (ms since stream start).
    pub fn bot(&mut self, play_ms: u64, pcm: &[i16]) -> Result<(), RecordError> {
        self.run(|t, mut sink| t.bot(play_ms, pcm, &mut sink))
    }

    /// Drops unplayed bot audio scheduled at or after `t_ms` (Twilio `clear`); returns the
    /// length in samples of the bot span cleared.
    pub fn clear_bot_from(&mut self, t_ms: u64) -> u64 {
        self.timeline.clear_bot_from(t_ms)
    }

    /// Writes everything held, finalises the header and syncs the file. `end_ms` (the call's end
    /// on the same clock) drops bot audio that was queued but never played.
    pub fn finish(mut self, end_ms: Option<u64>) -> Result<Recording, RecordError> {
        self.run(|t, mut sink| t.finish(end_ms, &mut sink))?;
        let path = self.path.clone();
        let write_err = |source| RecordError::Write { path: path.clone(), source };
        let frames = self.frames_written;
        let stats = self.timeline.stats();
        self.writer.finalize().map_err(write_err)?;
        self.sync_handle.sync_data().map_err(|e| write_err(e.into()))?;
        Ok(Recording { path: self.path, frames, stats })
    }

    /// Runs a timeline operation with a sink that appends released audio to the WAV.
    fn run(
        &mut self,
        op: impl FnOnce(&mut Timeline, &mut WavSink<'_>) -> Result<(), hound::Error>,
    ) -> Result<(), RecordError> {
        let Self { timeline, writer, frames_written, .. } = self;
        let mut sink = |interleaved: &[i16]| {
            for &s in interleaved {
                writer.write_sample(s)?;
            }
            *frames_written += interleaved.len() as u64 / 2;
            Ok(())
        };
        let r = op(timeline, &mut sink);
        self.after_write(r)
    }

    /// Maps a sink error and rewrites the header once a second of audio has been written.
    fn after_write(&mut self, r: Result<(), hound::Error>) -> Result<(), RecordError> {
        let write_err = |source| RecordError::Write { path: self.path.clone(), source };
        r.map_err(write_err)?;
        if self.frames_written - self.flushed_at >= FLUSH_EVERY_FRAMES {
            self.writer.flush().map_err(write_err)?;
            self.flushed_at = self.frames_written;
        }
        Ok(())
    }
}

/// The sink `CallRecorder` hands to its timeline.
type WavSink<'a> = dyn FnMut(&[i16]) -> Result<(), hound::Error> + 'a;

/// `{call_sid}_{YYYYMMDDTHHMMSSZ}.wav` for a call that started at `started` (UTC).
pub fn file_name(call_sid: &str, started: SystemTime) -> Result<String, RecordError> {
    if !crate::call::ids::is_call_sid(call_sid) {
        return Err(RecordError::BadCallSid(call_sid.to_string()));
    }
    let secs = started.duration_since(UNIX_EPOCH).map_err(|_| RecordError::BadTime)?.as_secs();
    Ok(format!("{call_sid}_{}.wav", utc_stamp(secs)))
}

/// `YYYYMMDDTHHMMSSZ` for Unix seconds.
fn utc_stamp(unix_secs: u64) -> String {
    let (days, rem) = (unix_secs / 86_400, unix_secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    let (hh, mm, ss) = (rem / 3600, rem % 3600 / 60, rem % 60);
    format!("{y:04}{m:02}{d:02}T{hh:02}{mm:02}{ss:02}Z")
}

/// Gregorian (year, month, day) of a day count since 1970-01-01 (proleptic calendar, 400-year
/// eras of 146 097 days starting on 0000-03-01).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468; // days since 0000-03-01
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, 0..146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of era
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year from March 1
    let mp = (5 * doy + 2) / 153; // month from March, 0..11
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// What [`repair`] found and fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepairReport {
    /// Data bytes the old header claimed.
    pub header_data_bytes: u32,
    /// Data bytes now declared (whole frames present in the file).
    pub data_bytes: u32,
    /// Trailing bytes of a partial frame that were cut off.
    pub truncated_bytes: u64,
}

impl RepairReport {
    /// Stereo frames in the repaired file.
    pub fn frames(&self) -> u64 {
        u64::from(self.data_bytes) / BLOCK_ALIGN
    }
}

/// Fixes the RIFF and data sizes of a recording that was not finalised (e.g. after a crash),
/// from the file length; a trailing partial frame is cut off. Harmless on a finalised file.
pub fn repair(path: &Path) -> Result<RepairReport, RecordError> {
    let io_err = |source| RecordError::RepairIo { path: path.to_path_buf(), source };
    let not = |reason| RecordError::NotRepairable { path: path.to_path_buf(), reason };
    let mut file = OpenOptions::new().read(true).write(true).open(path).map_err(io_err)?;
    let mut head = [0u8; 512];
    let head_len = read_up_to(&mut file, &mut head).map_err(io_err)?;
    let layout = parse_header(&head[..head_len]).map_err(not)?;
    let file_len = file.metadata().map_err(io_err)?.len();
    let payload = file_len.checked_sub(layout.data_offset).ok_or_else(|| not("file ends inside the header"))?;
    let whole = payload / layout.block_align * layout.block_align;
    let data_bytes = u32::try_from(whole)
        .ok()
        .filter(|&d| u64::from(d) + layout.data_offset - 8 <= u64::from(u32::MAX))
        .ok_or_else(|| not("data exceeds the 4 GiB WAV limit"))?;
    let riff_size = (layout.data_offset - 8 + whole) as u32;
    file.set_len(layout.data_offset + whole).map_err(io_err)?;
    write_u32_at(&mut file, 4, riff_size).map_err(io_err)?;
    write_u32_at(&mut file, layout.data_offset - 4, data_bytes).map_err(io_err)?;
    file.sync_data().map_err(io_err)?;
    Ok(RepairReport { header_data_bytes: layout.header_data_bytes, data_bytes, truncated_bytes: payload - whole })
}

/// Where the samples start and how big a frame is.
struct WavLayout {
    data_offset: u64,
    block_align: u64,
    header_data_bytes: u32,
}

fn parse_header(head: &[u8]) -> Result<WavLayout, &'static str> {
    if head.len() < 12 || &head[0..4] != b"RIFF" || &head[8..12] != b"WAVE" {
        return Err("not a RIFF/WAVE file");
    }
    let mut pos = 12usize;
    let mut block_align = None;
    while pos + 8 <= head.len() {
        let id = &head[pos..pos + 4];
        let size = le_u32(&head[pos + 4..pos + 8]);
        let body = pos + 8;
        if id == b"data" {
            let block_align = block_align.ok_or("data chunk before fmt chunk")?;
            return Ok(WavLayout { data_offset: body as u64, block_align, header_data_bytes: size });
        }
        if id == b"fmt " {
            let fmt = head.get(body..body + 16).ok_or("fmt chunk truncated")?;
            let align = u16::from_le_bytes([fmt[12], fmt[13]]);
            if align == 0 {
                return Err("fmt chunk has block align 0");
            }
            block_align = Some(u64::from(align));
        }
        // Chunks are padded to even sizes.
        pos = body.saturating_add(size as usize).saturating_add(size as usize & 1);
    }
    Err("no data chunk in the first 512 bytes")
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

fn write_u32_at(file: &mut File, at: u64, value: u32) -> io::Result<()> {
    file.seek(SeekFrom::Start(at))?;
    file.write_all(&value.to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::time::Duration;

    /// 20 ms at 8 kHz.
    const FRAME: usize = 160;

    /// A sink that appends released audio to `out`.
    fn collect(out: &mut Vec<i16>) -> impl FnMut(&[i16]) -> Result<(), Infallible> + '_ {
        move |s| {
            out.extend_from_slice(s);
            Ok(())
        }
    }

    fn left(stereo: &[i16]) -> Vec<i16> {
        stereo.iter().step_by(2).copied().collect()
    }

    fn right(stereo: &[i16]) -> Vec<i16> {
        stereo.iter().skip(1).step_by(2).copied().collect()
    }

    /// Samples [from_ms, to_ms) of a track.
    fn span(track: &[i16], from_ms: usize, to_ms: usize) -> &[i16] {
        &track[from_ms * 8..to_ms * 8]
    }

    #[derive(Clone, Copy)]
    enum Ev {
        Caller(u64, i16),
        Bot(u64, i16),
        Clear(u64),
    }

    fn play(config: TimelineConfig, events: &[Ev], end_ms: Option<u64>) -> (Vec<i16>, Timeline) {
        let mut t = Timeline::new(config);
        let mut out = Vec::new();
        let mut sink = collect(&mut out);
        for ev in events {
            match *ev {
                Ev::Caller(ts, v) => t.caller(ts, &[v; FRAME], &mut sink).unwrap(),
                Ev::Bot(ts, v) => t.bot(ts, &[v; FRAME], &mut sink).unwrap(),
                Ev::Clear(ts) => {
                    t.clear_bot_from(ts);
                }
            }
            assert!(t.held_frames() <= t.capacity_frames());
        }
        t.finish(end_ms, &mut sink).unwrap();
        drop(sink);
        (out, t)
    }

    #[test]
    fn places_by_timestamp_with_silence_in_gaps() {
        let mut events = Vec::new();
        for k in 0..50u64 {
            if !(10..15).contains(&k) {
                events.push(Ev::Caller(k * 20, k as i16 + 1));
            }
            if k == 20 {
                // Bot audio scheduled ahead of the caller's clock, as the transport paces it.
                for j in 0..10u64 {
                    events.push(Ev::Bot(500 + j * 20, 1000 + j as i16));
                }
            }
        }
        let (out, t) = play(TimelineConfig::default(), &events, None);
        let (l, r) = (left(&out), right(&out));
        assert_eq!(l.len(), 1000 * 8);
        for k in 0..50usize {
            let want = if (10..15).contains(&k) { 0 } else { k as i16 + 1 };
            assert!(span(&l, k * 20, k * 20 + 20).iter().all(|&s| s == want), "caller frame {k}");
        }
        assert!(span(&r, 0, 500).iter().all(|&s| s == 0));
        for j in 0..10usize {
            let want = 1000 + j as i16;
            assert!(span(&r, 500 + j * 20, 520 + j * 20).iter().all(|&s| s == want));
        }
        assert!(span(&r, 700, 1000).iter().all(|&s| s == 0));
        assert_eq!(t.stats(), TimelineStats::default());
    }

    /// A 10 s call: caller frames every 20 ms, the bot speaking 2–6 s, scheduled 100 ms ahead.
    fn realtime_call() -> Vec<Ev> {
        let mut events = Vec::new();
        for i in 0..500u64 {
            events.push(Ev::Caller(i * 20, (i % 100) as i16 + 1));
            let play = i * 20 + 100;
            if (2000..6000).contains(&play) {
                events.push(Ev::Bot(play, -((i % 100) as i16) - 1));
            }
        }
        events
    }

    #[test]
    fn stall_then_burst_does_not_shift_either_track() {
        let ideal = realtime_call();
        // The caller's media stalls for 1.2 s at 3 s and then arrives in one burst, while the
        // bot keeps being paced in real time.
        let mut stalled = Vec::new();
        let mut held = Vec::new();
        for ev in &ideal {
            match *ev {
                Ev::Caller(ts, _) if (3000..4200).contains(&ts) => held.push(*ev),
                Ev::Caller(..) => {
                    stalled.append(&mut held);
                    stalled.push(*ev);
                }
                _ => stalled.push(*ev),
            }
        }
        let (want, _) = play(TimelineConfig::default(), &ideal, None);
        let (got, t) = play(TimelineConfig::default(), &stalled, None);
        assert_eq!(got.len(), want.len());
        assert!(got == want, "stall-then-burst changed the recording");
        assert_eq!(t.stats(), TimelineStats::default());
    }

    #[test]
    fn late_frames_are_dropped_and_counted() {
        let mut events: Vec<Ev> = (0..50u64).map(|k| Ev::Caller(k * 20, 7)).collect();
        // Released up to 1000 − 200 ms by now: these land (partly) in written time.
        events.push(Ev::Caller(100, 99));
        events.push(Ev::Bot(0, 5));
        events.push(Ev::Bot(790, 6)); // 10 ms late, 10 ms on time
        let (out, t) = play(TimelineConfig::default(), &events, None);
        let (l, r) = (left(&out), right(&out));
        assert!(span(&l, 100, 120).iter().all(|&s| s == 7));
        assert!(span(&r, 0, 20).iter().all(|&s| s == 0));
        assert!(span(&r, 790, 800).iter().all(|&s| s == 0));
        assert!(span(&r, 800, 810).iter().all(|&s| s == 6));
        let stats = t.stats();
        assert_eq!(stats.caller_late_samples, 160);
        assert_eq!(stats.bot_late_samples, 160 + 80);
    }

    #[test]
    fn clear_drops_only_unplayed_bot_audio() {
        let mut events: Vec<Ev> = (0..50u64).map(|k| Ev::Caller(k * 20, 1)).collect();
        events.extend((0..25u64).map(|j| Ev::Bot(900 + j * 20, 2))); // 900..1400 ms queued
        events.push(Ev::Clear(1100));
        events.push(Ev::Bot(1200, 3)); // the next reply after the clear
        events.push(Ev::Bot(1220, 3));
        events.extend((50..75u64).map(|k| Ev::Caller(k * 20, 1))); // written up to 1300 ms
        events.extend((0..5u64).map(|j| Ev::Bot(1400 + j * 20, 4)));
        events.push(Ev::Clear(500)); // only the unwritten part (from 1300 ms) can go
        events.extend((75..100u64).map(|k| Ev::Caller(k * 20, 1)));
        let (out, t) = play(TimelineConfig::default(), &events, None);
        let r = right(&out);
        assert!(span(&r, 900, 1100).iter().all(|&s| s == 2));
        assert!(span(&r, 1100, 1200).iter().all(|&s| s == 0));
        assert!(span(&r, 1200, 1240).iter().all(|&s| s == 3));
        assert!(span(&r, 1240, 2000).iter().all(|&s| s == 0));
        // Spans cleared: 1100..1400 and 1300..1500 ms.
        assert_eq!(t.stats().bot_cleared_samples, (300 + 200) * 8);
    }

    #[test]
    fn far_ahead_audio_forces_release_but_keeps_its_place() {
        let config = TimelineConfig { holdback_ms: 200, capacity_ms: 1000 };
        let mut t = Timeline::new(config);
        let mut out = Vec::new();
        let mut sink = collect(&mut out);
        t.caller(0, &[1; FRAME], &mut sink).unwrap();
        t.bot(2500, &[2; FRAME], &mut sink).unwrap(); // beyond the 1 s ring
        let long: Vec<i16> = vec![3; 8 * 2500]; // 2.5 s in one call, longer than the ring
        t.bot(3000, &long, &mut sink).unwrap();
        assert!(t.held_frames() <= t.capacity_frames());
        t.finish(None, &mut sink).unwrap();
        drop(sink);
        let r = right(&out);
        assert_eq!(r.len(), 5500 * 8);
        assert!(span(&r, 0, 2500).iter().all(|&s| s == 0));
        assert!(span(&r, 2500, 2520).iter().all(|&s| s == 2));
        assert!(span(&r, 2520, 3000).iter().all(|&s| s == 0));
        assert!(span(&r, 3000, 5500).iter().all(|&s| s == 3));
        assert!(span(&left(&out), 0, 20).iter().all(|&s| s == 1));
        assert!(t.stats().forced_releases >= 1);
        assert_eq!(t.stats().bot_late_samples, 0);
    }

    #[test]
    fn long_calls_keep_memory_bounded() {
        let mut t = Timeline::new(TimelineConfig::default());
        let cap = t.capacity_frames();
        let mut released = 0u64;
        let mut sink = |s: &[i16]| -> Result<(), Infallible> {
            released += s.len() as u64 / 2;
            Ok(())
        };
        let frame = [5i16; FRAME];
        for i in 0..180_000u64 {
            // One hour: caller every 20 ms, bot talking half the time, 100 ms ahead.
            t.caller(i * 20, &frame, &mut sink).unwrap();
            if i % 100 < 50 {
                t.bot(i * 20 + 100, &frame, &mut sink).unwrap();
            }
            assert!(t.held_frames() <= 8 * 300);
        }
        t.finish(None, &mut sink).unwrap();
        assert_eq!(t.capacity_frames(), cap);
        assert_eq!(released, 3600 * 8000);
    }

    #[test]
    fn bogus_timestamps_are_rejected_without_overflow() {
        let mut t = Timeline::new(TimelineConfig::default());
        let mut out = Vec::new();
        let mut sink = collect(&mut out);
        t.caller(u64::MAX, &[1; FRAME], &mut sink).unwrap();
        t.bot(u64::MAX / 4, &[1; FRAME], &mut sink).unwrap();
        t.caller(11 * 60 * 1000, &[1; FRAME], &mut sink).unwrap();
        t.finish(None, &mut sink).unwrap();
        drop(sink);
        assert_eq!(t.stats().rejected_samples, 3 * 160);
        assert_eq!(t.clear_bot_from(u64::MAX), 0);
        assert!(out.is_empty());
    }

    #[test]
    fn finish_drops_bot_audio_queued_past_the_end() {
        let mut events: Vec<Ev> = (0..50u64).map(|k| Ev::Caller(k * 20, 1)).collect();
        events.extend((0..10u64).map(|j| Ev::Bot(960 + j * 20, 2))); // 960..1160 ms
        let (out, t) = play(TimelineConfig::default(), &events, Some(1000));
        let r = right(&out);
        assert_eq!(r.len(), 1000 * 8);
        assert!(span(&r, 960, 1000).iter().all(|&s| s == 2));
        assert_eq!(t.stats().bot_cleared_samples, 160 * 8);
    }

    fn started() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    /// Feeds the events to a recorder; returns it unfinished.
    fn record(dir: &Path, events: &[Ev]) -> CallRecorder {
        let mut rec = CallRecorder::create(dir, "CA0123456789abcdef", started()).unwrap();
        for ev in events {
            match *ev {
                Ev::Caller(ts, v) => rec.caller(ts, &[v; FRAME]).unwrap(),
                Ev::Bot(ts, v) => rec.bot(ts, &[v; FRAME]).unwrap(),
                Ev::Clear(ts) => {
                    rec.clear_bot_from(ts);
                }
            }
        }
        rec
    }

    fn read_wav(path: &Path) -> (hound::WavSpec, Vec<i16>) {
        let mut r = hound::WavReader::open(path).unwrap();
        let spec = r.spec();
        (spec, r.samples::<i16>().map(Result::unwrap).collect())
    }

    #[test]
    fn writes_a_stereo_8k_wav_named_by_sid_and_utc_time() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("recordings");
        let events = realtime_call();
        let rec = record(&sub, &events);
        let summary = rec.finish(Some(10_000)).unwrap();
        assert_eq!(summary.path, sub.join("CA0123456789abcdef_20231114T221320Z.wav"));
        let (spec, samples) = read_wav(&summary.path);
        assert_eq!((spec.channels, spec.sample_rate, spec.bits_per_sample), (2, 8000, 16));
        let (want, _) = play(TimelineConfig::default(), &events, Some(10_000));
        assert!(samples == want, "file differs from the timeline");
        assert_eq!(summary.frames, 10 * 8000);
        // A second recorder for the same sid and second must not overwrite the first.
        let again = CallRecorder::create(&sub, "CA0123456789abcdef", started());
        assert!(matches!(again, Err(RecordError::Create { .. })));
    }

    #[test]
    fn a_copy_taken_mid_call_is_readable_and_at_most_about_a_second_behind() {
        let dir = tempfile::tempdir().unwrap();
        let events = realtime_call();
        let rec = record(dir.path(), &events[..events.len() * 7 / 10]);
        let released_s = rec.timeline.released_frames() as f64 / 8000.0;
        let copy = dir.path().join("copy.wav");
        fs::copy(rec.path(), &copy).unwrap();
        let (_, samples) = read_wav(&copy); // header as last rewritten
        let in_header_s = samples.len() as f64 / 2.0 / 8000.0;
        assert!(
            released_s - in_header_s <= 1.0 && in_header_s > 0.0,
            "header lags {released_s} s of released audio by more than a second ({in_header_s} s)"
        );
        rec.finish(None).unwrap();
    }

    #[test]
    fn repair_recovers_a_crashed_recording() {
        let dir = tempfile::tempdir().unwrap();
        let events = realtime_call();
        let rec = record(dir.path(), &events[..events.len() * 6 / 10]);
        let path = rec.path().to_path_buf();
        let released = rec.timeline.released_frames();
        std::mem::forget(rec); // a crash: no finalize, buffered bytes lost
                               // A torn last write: half a frame.
        OpenOptions::new().append(true).open(&path).unwrap().write_all(&[1, 2, 3]).unwrap();
        let report = repair(&path).unwrap();
        assert_eq!(report.truncated_bytes, 3);
        assert!(report.frames() >= u64::from(report.header_data_bytes) / 4);
        assert!(released - report.frames() <= 8000, "lost more than a second");
        let (spec, samples) = read_wav(&path);
        assert_eq!(spec.channels, 2);
        assert_eq!(samples.len() as u64, report.frames() * 2);
        let (want, _) = play(TimelineConfig::default(), &events, None);
        assert!(samples[..] == want[..samples.len()], "repaired audio differs");
        // Repairing again changes nothing.
        let again = repair(&path).unwrap();
        assert_eq!(again.data_bytes, report.data_bytes);
        assert_eq!(again.header_data_bytes, report.data_bytes);
        assert_eq!(again.truncated_bytes, 0);
    }

    #[test]
    fn repair_leaves_finished_files_alone_and_rejects_others() {
        let dir = tempfile::tempdir().unwrap();
        let summary = record(dir.path(), &realtime_call()).finish(None).unwrap();
        let before = fs::read(&summary.path).unwrap();
        let report = repair(&summary.path).unwrap();
        assert_eq!(report.header_data_bytes, report.data_bytes);
        assert_eq!(fs::read(&summary.path).unwrap(), before);
        let junk = dir.path().join("junk.wav");
        fs::write(&junk, b"not a wave file at all").unwrap();
        assert!(matches!(repair(&junk), Err(RecordError::NotRepairable { .. })));
        assert!(matches!(repair(&dir.path().join("missing.wav")), Err(RecordError::RepairIo { .. })));
    }

    #[test]
    fn file_names_use_utc_and_safe_sids() {
        let at = |s| UNIX_EPOCH + Duration::from_secs(s);
        for (secs, stamp) in [
            (0, "19700101T000000Z"),
            (951_782_400, "20000229T000000Z"),
            (1_709_164_800, "20240229T000000Z"),
            (1_735_689_599, "20241231T235959Z"),
            (4_102_444_800, "21000101T000000Z"),
        ] {
            assert_eq!(file_name("CA1", at(secs)).unwrap(), format!("CA1_{stamp}.wav"));
        }
        for bad in ["", "../etc", "a b", "CA/1", &"x".repeat(65)] {
            assert!(matches!(file_name(bad, at(0)), Err(RecordError::BadCallSid(_))));
        }
        assert!(matches!(file_name("CA1", UNIX_EPOCH - Duration::from_secs(1)), Err(RecordError::BadTime)));
    }

    #[test]
    fn recorder_can_move_to_a_blocking_thread() {
        fn is_send<T: Send>() {}
        is_send::<CallRecorder>();
        is_send::<Timeline>();
    }
}
