//! Moonshine base (English) on ONNX Runtime: the encoder, the merged decoder with its KV cache,
//! and greedy decoding with the guards a phone line needs.
//!
//! Model I/O (read from the sessions): the encoder takes `input_values` f32 [1, samples] — raw
//! 16 kHz mono on the ±1.0 scale, no features — and returns `last_hidden_state` [1, frames, 416]
//! (~41 frames a second). The merged decoder takes `input_ids` i64 [1, n], `encoder_hidden_states`,
//! `past_key_values.{layer}.{decoder,encoder}.{key,value}` f32 [1, 8, len, 52] for each of its 8
//! layers and `use_cache_branch` bool [1]; it returns `logits` [1, n, 32768] and the matching
//! `present.*`. The first step feeds `<s>` with empty caches and `use_cache_branch = false`, which
//! computes the cross-attention (encoder) cache; every later step feeds the last token, the
//! growing self-attention cache and that first encoder cache, with `use_cache_branch = true`.
//!
//! Guards: at most [`TOKENS_PER_SEC`] tokens per second of audio (speech runs at about three or
//! four), and a run that starts repeating the same tokens over and over is cut back to one copy —
//! both stop the runaway loops sequence-to-sequence models fall into on odd audio.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ort::environment::Environment;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::{RunOptions, Session, SessionInputValue};
use ort::value::{DynValue, Tensor};

use super::cancel::CancelToken;
use super::onnx_graph;
use super::tokenizer::{Tokenizer, TokenizerError, BOS, EOS};
use crate::audio::models::{ort_environment_at, sha256_file, ModelError};

pub const ENCODER_FILE: &str = "encoder_model.ort";
pub const DECODER_FILE: &str = "decoder_model_merged.ort";
pub const TOKENIZER_FILE: &str = "tokenizer.bin";
/// The encoder's input rate.
pub const SAMPLE_RATE: u32 = 16_000;
/// Token budget per second of audio (fast speech is ~5).
pub const TOKENS_PER_SEC: f64 = 6.5;
/// Token budget for any clip, however short ("okay, thank you" in 0.6 s).
const MIN_TOKENS: usize = 8;
/// Shorter input is padded with silence: the encoder's convolutions need ~0.1 s, and the model
/// was trained on whole utterances.
const MIN_SAMPLES: usize = SAMPLE_RATE as usize * 3 / 10;
/// Moonshine's documented limit for one segment.
pub const MAX_SECS: f64 = 64.0;

/// sha256 of each file, as in `models/stt.SHA256SUMS` (a unit test keeps them in step).
const PINNED: [(&str, &str); 3] = [
    (ENCODER_FILE, "9d1a19e044cbf89a207723d1adb667de89a5671a1e3e611b8ebe721b2c31219c"),
    (DECODER_FILE, "370e0c1f161d68dc1c2264c1a82024fb123380da3b73f47f05531d1e8d3308c3"),
    (TOKENIZER_FILE, "04670d78994d030185c3dd843c60591788fed0a56cc6750747bd326825f13ca9"),
];

const FIX: &str = "run `bash models/fetch-stt.sh` from the repository root, or point the local STT model \
directory at the files";

/// Why the model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum MoonshineError {
    #[error("Moonshine {file} not found in {dir}: {FIX}")]
    Missing { file: &'static str, dir: PathBuf },
    #[error("Moonshine {file} in {dir} is not the pinned file (sha256 {actual}, expected {expected}): {FIX}")]
    Corrupt { file: &'static str, dir: PathBuf, expected: &'static str, actual: String },
    #[error("reading Moonshine {file} in {dir}: {source}")]
    Io { file: &'static str, dir: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Runtime(#[from] ModelError),
    #[error("loading Moonshine {file}: {message}")]
    Load { file: &'static str, message: String },
    #[error("Moonshine tokenizer: {0}")]
    Tokenizer(#[from] TokenizerError),
    #[error("Moonshine {file} does not have the expected inputs and outputs: {message}")]
    Layout { file: &'static str, message: String },
    #[error("Moonshine inference failed: {0}")]
    Inference(String),
    #[error("audio of {secs:.1} s is longer than Moonshine's {MAX_SECS} s limit; split it first")]
    TooLong { secs: f64 },
}

impl From<ort::Error> for MoonshineError {
    fn from(e: ort::Error) -> Self {
        MoonshineError::Inference(e.to_string())
    }
}

/// Where the model is and how to run it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoonshineOptions {
    /// Holds [`ENCODER_FILE`], [`DECODER_FILE`] and [`TOKENIZER_FILE`].
    pub model_dir: PathBuf,
    pub ort_dylib: PathBuf,
    /// Check the files' sha256 against the pinned values while loading (~0.2 s).
    pub verify_checksums: bool,
    /// ONNX Runtime intra-op threads per session.
    pub intra_threads: usize,
}

/// Why decoding stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    EndOfText,
    /// The token budget for the audio's length ran out.
    TokenLimit,
    /// The output started looping; the repeats were dropped.
    Repetition,
}

/// One transcription.
#[derive(Debug, Clone, PartialEq)]
pub struct Recognized {
    pub text: String,
    /// Text tokens decoded after the forced prefix (after dropping repeats).
    pub tokens: usize,
    /// Their ids (a draft for the next transcription of this audio and more).
    pub ids: Vec<i64>,
    /// How many of the forced tokens were fed (trailing punctuation is left to the model).
    pub forced: usize,
    /// Decoder passes it took (one per token without a draft).
    pub decoder_runs: usize,
    /// Mean probability the model gave its chosen tokens (end of text included).
    pub confidence: f32,
    pub stop: Stop,
}

/// The decoder's cache inputs and outputs, in one order.
#[derive(Debug)]
struct CacheLayout {
    heads: usize,
    head_dim: usize,
    /// `past_key_values.{l}.{decoder.key, decoder.value, encoder.key, encoder.value}`.
    past: Vec<String>,
    /// The matching `present.*` outputs.
    present: Vec<String>,
}

const CACHE_PARTS: [&str; 4] = ["decoder.key", "decoder.value", "encoder.key", "encoder.value"];

impl CacheLayout {
    fn read(decoder: &Session) -> Result<Self, MoonshineError> {
        let layout_err = |message: String| MoonshineError::Layout { file: DECODER_FILE, message };
        let inputs: Vec<&str> = decoder.inputs().iter().map(|i| i.name()).collect();
        let outputs: Vec<&str> = decoder.outputs().iter().map(|o| o.name()).collect();
        for needed in ["input_ids", "encoder_hidden_states", "use_cache_branch"] {
            if !inputs.contains(&needed) {
                return Err(layout_err(format!("no input {needed}")));
            }
        }
        if !outputs.contains(&"logits") {
            return Err(layout_err("no output logits".into()));
        }
        let layers =
            (0..).take_while(|l| inputs.contains(&format!("past_key_values.{l}.decoder.key").as_str())).count();
        if layers == 0 {
            return Err(layout_err("no past_key_values inputs".into()));
        }
        let mut past = Vec::with_capacity(layers * 4);
        let mut present = Vec::with_capacity(layers * 4);
        for layer in 0..layers {
            for part in CACHE_PARTS {
                let (p, q) = (format!("past_key_values.{layer}.{part}"), format!("present.{layer}.{part}"));
                if !inputs.contains(&p.as_str()) || !outputs.contains(&q.as_str()) {
                    return Err(layout_err(format!("missing {p} or {q}")));
                }
                past.push(p);
                present.push(q);
            }
        }
        // [batch, heads, length, head_dim]: heads and head_dim are fixed in the graph.
        let first = decoder.inputs().iter().find(|i| i.name() == past[0]).map(|i| i.dtype().clone());
        let dims = first.as_ref().and_then(|t| t.tensor_shape()).map(|s| s.to_vec()).unwrap_or_default();
        let (heads, head_dim) = match dims.as_slice() {
            [_, h, _, d] if *h > 0 && *d > 0 => (*h as usize, *d as usize),
            _ => return Err(layout_err(format!("unexpected cache shape {dims:?}"))),
        };
        Ok(Self { heads, head_dim, past, present })
    }
}

/// A loaded model. `transcribe` needs `&mut self`: give each worker thread its own.
pub struct MoonshineModel {
    encoder: Session,
    decoder: Session,
    tokenizer: Tokenizer,
    cache: CacheLayout,
}

impl std::fmt::Debug for MoonshineModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MoonshineModel").field("layers", &(self.cache.past.len() / 4)).finish_non_exhaustive()
    }
}

fn builder(env: &Environment, level: GraphOptimizationLevel, threads: usize) -> Result<SessionBuilder, ort::Error> {
    Ok(Session::builder(env)?
        .with_optimization_level(level)?
        .with_intra_threads(threads.max(1))?
        .with_inter_threads(1)?
        .with_intra_op_spinning(false)?)
}

/// Distinct temp names for parallel loads in one process.
static CONVERSIONS: AtomicU64 = AtomicU64::new(0);

/// Removes the temporary ONNX file however loading ends.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl MoonshineModel {
    /// Loads and checks the three files; takes a few seconds (the decoder is converted so its
    /// weights are unpacked once, see [`onnx_graph`]).
    pub fn load(options: &MoonshineOptions) -> Result<Self, MoonshineError> {
        let dir = &options.model_dir;
        for (file, expected) in PINNED {
            let path = dir.join(file);
            if !path.is_file() {
                return Err(MoonshineError::Missing { file, dir: dir.clone() });
            }
            if options.verify_checksums {
                let actual =
                    sha256_file(&path).map_err(|source| MoonshineError::Io { file, dir: dir.clone(), source })?;
                if actual != expected {
                    return Err(MoonshineError::Corrupt { file, dir: dir.clone(), expected, actual });
                }
            }
        }
        let env = ort_environment_at(&options.ort_dylib, options.verify_checksums)?;
        let threads = options.intra_threads;
        let load_err = |file: &'static str| move |e: ort::Error| MoonshineError::Load { file, message: e.to_string() };
        let encoder = builder(&env, GraphOptimizationLevel::All, threads)
            .and_then(|mut b| b.commit_from_file(dir.join(ENCODER_FILE)))
            .map_err(load_err(ENCODER_FILE))?;
        let decoder_onnx = Self::foldable_decoder(&env, &dir.join(DECODER_FILE))?;
        let decoder = builder(&env, GraphOptimizationLevel::All, threads)
            .and_then(|mut b| b.commit_from_memory(&decoder_onnx))
            .map_err(load_err(DECODER_FILE))?;
        drop(decoder_onnx);
        let tokenizer = Tokenizer::load(&dir.join(TOKENIZER_FILE))?;
        let cache = CacheLayout::read(&decoder)?;
        Ok(Self { encoder, decoder, tokenizer, cache })
    }

    /// The decoder as ONNX that ONNX Runtime will constant-fold: loaded once without
    /// optimisation, saved as ONNX (a temporary file), its branch graphs named.
    fn foldable_decoder(env: &Environment, path: &Path) -> Result<Vec<u8>, MoonshineError> {
        let load_err = |message: String| MoonshineError::Load { file: DECODER_FILE, message };
        let n = CONVERSIONS.fetch_add(1, Ordering::Relaxed);
        let temp =
            TempFile(std::env::temp_dir().join(format!("switchboard-moonshine-{}-{n}.onnx", std::process::id())));
        builder(env, GraphOptimizationLevel::Disable, 1)
            .and_then(|b| Ok(b.with_optimized_model_path(&temp.0)?))
            .and_then(|mut b| b.commit_from_file(path))
            .map_err(|e| load_err(e.to_string()))?;
        let onnx = std::fs::read(&temp.0).map_err(|e| load_err(format!("reading {}: {e}", temp.0.display())))?;
        let (onnx, named) = onnx_graph::name_unnamed_graphs(&onnx).map_err(|e| load_err(e.to_string()))?;
        tracing::debug!(named, bytes = onnx.len(), "Moonshine decoder converted for constant folding");
        Ok(onnx)
    }

    /// Transcribes 16 kHz mono audio (±1.0). `forced` are tokens already reported for the start
    /// of this audio: fed as given (in the first pass), so the model continues after them with
    /// their context instead of reading the audio again; only what follows is returned. Their
    /// trailing punctuation is dropped first: a clause cut at a pause ends in "." that the model
    /// should be free to revise into "," or nothing. `draft` is a guess at the tokens after
    /// `forced` (an earlier transcription of the start of this audio): the decoder checks all of
    /// it in the same pass and keeps the part it agrees with, which gives the same text as
    /// decoding token by token with fewer passes. `None` when `cancel` was set before the end.
    pub fn transcribe(
        &mut self,
        audio: &[f32],
        forced: &[i64],
        draft: &[i64],
        cancel: &CancelToken,
    ) -> Result<Option<Recognized>, MoonshineError> {
        match self.decode(audio, forced, draft, cancel) {
            Err(_) | Ok(None) if cancel.is_cancelled() => Ok(None),
            result => result,
        }
    }

    fn encode(&mut self, audio: &[f32], run: &RunOptions) -> Result<Tensor<f32>, MoonshineError> {
        let mut input = audio.to_vec();
        if input.len() < MIN_SAMPLES {
            input.resize(MIN_SAMPLES, 0.0);
        }
        let samples = input.len();
        let input = Tensor::from_array(([1usize, samples], input))?;
        let outputs = self.encoder.run_with_options(ort::inputs!["input_values" => input], run)?;
        let (shape, data) = outputs["last_hidden_state"].try_extract_tensor::<f32>()?;
        let shape: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
        Ok(Tensor::from_array((shape, data.to_vec()))?)
    }

    fn decode(
        &mut self,
        audio: &[f32],
        forced: &[i64],
        draft: &[i64],
        cancel: &CancelToken,
    ) -> Result<Option<Recognized>, MoonshineError> {
        let secs = audio.len() as f64 / f64::from(SAMPLE_RATE);
        if secs > MAX_SECS {
            return Err(MoonshineError::TooLong { secs });
        }
        let run = cancel.run_options()?;
        let encoded = self.encode(audio, &run)?;
        let mut forced: Vec<i64> = forced.iter().copied().filter(|&t| t != EOS && t != BOS).collect();
        while forced.last().is_some_and(|&t| self.tokenizer.is_punctuation(t)) {
            forced.pop();
        }
        // The budget covers the prefix too, but always leaves room for new words.
        let max_tokens = token_budget(secs).max(forced.len() + MIN_TOKENS);
        let given = forced.len();
        let (heads, head_dim) = (self.cache.heads, self.cache.head_dim);
        let mut cache: Vec<DynValue> = (0..self.cache.past.len())
            .map(|_| Tensor::<f32>::from_array(([1usize, heads, 0, head_dim], Vec::new())).map(|t| t.into_dyn()))
            .collect::<Result<_, _>>()?;
        let usable_draft = draft.iter().take(max_tokens - given).take_while(|&&t| t != EOS && t != BOS).copied();
        // Fed on this step: the last token decided (or <s> and the forced prefix), then any
        // draft tokens to check.
        let mut feed: Vec<i64> = std::iter::once(BOS).chain(forced).chain(usable_draft).collect();
        let mut tokens: Vec<i64> = Vec::with_capacity(max_tokens);
        let (mut prob_sum, mut decided) = (0.0f64, 0usize);
        let mut cached = 0; // positions in the self-attention cache
        let mut stop = Stop::TokenLimit;
        let mut decoder_runs = 0;
        for step in 0..=max_tokens {
            if cancel.is_cancelled() {
                return Ok(None);
            }
            let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = Vec::with_capacity(cache.len() + 3);
            inputs.push(("input_ids".into(), Tensor::from_array(([1usize, feed.len()], feed.clone()))?.into()));
            inputs.push(("encoder_hidden_states".into(), (&encoded).into()));
            for (name, value) in self.cache.past.iter().zip(&cache) {
                inputs.push((name.as_str().into(), value.into()));
            }
            inputs.push(("use_cache_branch".into(), Tensor::from_array(([1usize], vec![step > 0]))?.into()));
            let mut outputs = self.decoder.run_with_options(inputs, &run)?;
            decoder_runs += 1;
            // One prediction per fed position: position i predicts what follows feed[..=i].
            let predictions: Vec<(i64, f32)> = {
                let (_, logits) = outputs["logits"].try_extract_tensor::<f32>()?;
                let vocab = logits.len() / feed.len().max(1);
                logits.chunks(vocab.max(1)).map(best_token).collect()
            };
            // The forced prefix (first step only) is taken as given, whatever the model predicts.
            let given_now = if step == 0 { given } else { 0 };
            tokens.extend_from_slice(&feed[1..=given_now]);
            let (checked, checks) = (&feed[1 + given_now..], &predictions[given_now..]);
            let agreed = checked.iter().zip(checks).take_while(|(d, (p, _))| *d == p).count();
            for (&token, &(_, prob)) in checked[..agreed].iter().zip(checks) {
                tokens.push(token);
                prob_sum += f64::from(prob);
                decided += 1;
            }
            let agreed = given_now + agreed;
            let (next, prob) = predictions.get(agreed).copied().unwrap_or((EOS, 0.0));
            prob_sum += f64::from(prob);
            decided += 1;
            // Rejected draft positions leave the self-attention cache.
            let keep = cached + agreed + 1;
            for (i, name) in self.cache.present.iter().enumerate() {
                let part = i % 4;
                // The encoder half of the cache is computed on the first step only.
                if step == 0 || part < 2 {
                    let value = outputs
                        .remove(name)
                        .ok_or_else(|| MoonshineError::Inference(format!("the decoder returned no {name}")))?;
                    cache[i] = if part < 2 { keep_positions(value, keep)? } else { value };
                }
            }
            cached = keep;
            if let Some(drop) = repetition_loop(&tokens) {
                tokens.truncate(tokens.len() - drop.min(tokens.len() - given));
                stop = Stop::Repetition;
                break;
            }
            if next == EOS {
                stop = Stop::EndOfText;
                break;
            }
            if tokens.len() >= max_tokens {
                break; // the budget's last step only checks for the end of text
            }
            tokens.push(next);
            feed = vec![next];
            if let Some(drop) = repetition_loop(&tokens) {
                tokens.truncate(tokens.len() - drop.min(tokens.len() - given));
                stop = Stop::Repetition;
                break;
            }
        }
        let ids = tokens.split_off(given);
        // Punctuation the model puts where the reported text already has some is not repeated.
        let words = ids.iter().position(|&t| !self.tokenizer.is_punctuation(t)).unwrap_or(ids.len());
        Ok(Some(Recognized {
            text: self.tokenizer.decode(&ids[words..]),
            tokens: ids.len(),
            ids,
            forced: given,
            decoder_runs,
            confidence: (prob_sum / decided.max(1) as f64) as f32,
            stop,
        }))
    }
}

/// The first `keep` positions of a [1, heads, positions, head_dim] cache tensor.
fn keep_positions(value: DynValue, keep: usize) -> Result<DynValue, MoonshineError> {
    let (shape, data) = value.try_extract_tensor::<f32>()?;
    let dims: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
    let [batch, heads, positions, head_dim] = dims[..] else {
        return Err(MoonshineError::Inference(format!("unexpected cache shape {dims:?}")));
    };
    if positions <= keep {
        return Ok(value);
    }
    let mut kept = Vec::with_capacity(batch * heads * keep * head_dim);
    for block in data.chunks(positions * head_dim) {
        kept.extend_from_slice(&block[..keep * head_dim]);
    }
    Ok(Tensor::from_array(([batch, heads, keep, head_dim], kept))?.into_dyn())
}

/// Tokens allowed for `secs` of audio.
pub fn token_budget(secs: f64) -> usize {
    ((secs * TOKENS_PER_SEC).ceil() as usize).max(MIN_TOKENS)
}

/// The most likely token and its softmax probability.
fn best_token(logits: &[f32]) -> (i64, f32) {
    let (mut best, mut max) = (EOS as usize, f32::NEG_INFINITY);
    for (i, &l) in logits.iter().enumerate() {
        if l > max {
            (best, max) = (i, l);
        }
    }
    if !max.is_finite() {
        return (EOS, 0.0); // NaN or infinite logits: end here rather than emit garbage
    }
    let sum: f32 = logits.iter().map(|&l| (l - max).exp()).sum();
    (best as i64, 1.0 / sum)
}

/// If `tokens` ends in a loop — one token 8 times, or a phrase of 2–16 tokens repeated until
/// the repeats span 12 tokens or more (at least 3 times) — how many tokens to drop to keep one copy.
fn repetition_loop(tokens: &[i64]) -> Option<usize> {
    for period in 1..=16usize {
        let repeats = if period == 1 { 8 } else { 12usize.div_ceil(period).max(3) };
        let span = period * repeats;
        if tokens.len() < span {
            continue;
        }
        let tail = &tokens[tokens.len() - span..];
        let unit = &tail[span - period..];
        if tail.chunks(period).all(|c| c == unit) {
            return Some(span - period);
        }
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn pinned_hashes_match_the_sums_file() {
        let sums = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/stt.SHA256SUMS"))
            .expect("models/stt.SHA256SUMS is committed");
        for (file, hash) in PINNED {
            assert!(sums.lines().any(|l| l == format!("{hash}  {file}")), "{file} not pinned as {hash}");
        }
    }

    #[test]
    fn token_budget_grows_with_audio() {
        assert_eq!(token_budget(0.2), MIN_TOKENS);
        assert_eq!(token_budget(2.0), 13);
        assert_eq!(token_budget(10.0), 65);
    }

    #[test]
    fn best_token_and_its_probability() {
        let (t, p) = best_token(&[0.0, 0.0, 0.0, 2.0_f32.ln() + 0.0]);
        assert_eq!(t, 3);
        assert!((p - 0.4).abs() < 1e-6, "{p}"); // e^ln2 / (3 + 2)
        assert_eq!(best_token(&[f32::NAN, f32::NAN]), (EOS, 0.0));
        assert_eq!(best_token(&[]), (EOS, 0.0));
    }

    #[test]
    fn loops_are_found_and_cut_to_one_copy() {
        assert_eq!(repetition_loop(&[5; 7]), None, "seven of one token can be speech (\"no no no ...\")");
        assert_eq!(repetition_loop(&[9, 5, 5, 5, 5, 5, 5, 5, 5]), Some(7));
        let phrase = [10, 11, 12, 13];
        let looped: Vec<i64> = [vec![1, 2], phrase.repeat(3)].concat();
        assert_eq!(repetition_loop(&looped), Some(8), "three copies of a 4-token phrase");
        assert_eq!(repetition_loop(&[1, 2, 10, 11, 12, 13, 10, 11, 12, 13]), None, "two copies are speech");
        assert_eq!(repetition_loop(&[7, 8, 7, 8, 7, 8, 7, 8, 7, 8]), None, "2-token phrase needs 6 copies");
        assert_eq!(repetition_loop(&[7, 8].repeat(6)), Some(10));
        assert_eq!(repetition_loop(&[]), None);
    }
}
