//! Audio model costs: Silero per window (single and batched across streams), the Smart Turn
//! front end, resampling of a turn segment, and Smart Turn inference (single and batched).
//!
//! Before the benchmarks, an allocation check drives one call's VAD stream (on the shared
//! batching engine) and turn analyzer for 10 s of 20 ms frames and fails if the calling
//! thread allocates after warm-up: the per-frame path must not allocate.
//!
//! Needs the models: `bash models/fetch.sh`. Run: `cargo bench --bench audio_models`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use switchboard::audio::features::{self, WhisperFeatures, N_FEATURES};
use switchboard::audio::models::ModelPaths;
use switchboard::audio::resample::{ResamplerKind, SegmentResampler};
use switchboard::audio::turn::{SmartTurnModel, TurnParams, TurnSegmenter};
use switchboard::audio::vad::{SileroModel, SileroVad, VadEngine, VadEngineConfig, VadParams, VadRate};

/// Counts allocations per thread, so engine threads don't count against the call's thread.
struct CountingAlloc;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: delegates to the system allocator; the counter is a const-initialised
// thread-local without a destructor, so touching it cannot allocate or recurse.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

fn models() -> ModelPaths {
    let paths = ModelPaths::in_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../models"));
    paths.check().expect("run `bash models/fetch.sh` first");
    paths
}

/// 8 kHz speech from the fixtures.
fn speech_8k() -> Vec<i16> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/audio/dialog_8k.wav");
    let mut reader = hound::WavReader::open(path).expect("fixture");
    reader.samples::<i16>().map(|s| s.expect("sample")).collect()
}

fn check_no_allocation_per_frame(paths: &ModelPaths, audio: &[i16]) {
    let engine = VadEngine::start(paths, VadEngineConfig::default()).expect("engine");
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let params = VadParams::default();
    let mut stream = engine.stream(VadRate::Hz8000, params);
    let mut turn = TurnSegmenter::new(8000, TurnParams::default(), params.start_secs);
    let frames: Vec<&[i16]> = audio.chunks_exact(160).collect();
    let (warm, measured) = frames.split_at(50);
    let mut run = |frames: &[&[i16]]| {
        rt.block_on(async {
            for frame in frames {
                turn.append(frame);
                let window = stream.push_frame(frame).await.expect("window");
                black_box(window);
            }
        })
    };
    run(warm);
    let before = allocations();
    run(&measured[..500]);
    let allocated = allocations() - before;
    println!("allocation check: {allocated} allocations in 500 frames (VAD stream + turn analyzer)");
    assert_eq!(allocated, 0, "the per-frame call path allocated");
}

fn bench_silero(c: &mut Criterion, paths: &ModelPaths, audio: &[i16]) {
    let mut model = SileroModel::open(paths).expect("silero");
    let window: Vec<f32> = audio[8000..8288].iter().map(|&s| f32::from(s) / 32768.0).collect();
    let mut group = c.benchmark_group("silero_8k");
    for n in [1usize, 8, 64] {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("batch_per_run", n), &n, |b, &n| {
            b.iter(|| {
                model
                    .run_batch(
                        VadRate::Hz8000,
                        n,
                        |_, input, s0, s1| {
                            input.copy_from_slice(&window);
                            s0.fill(0.0);
                            s1.fill(0.0);
                        },
                        |_, p, _, _| {
                            black_box(p);
                        },
                    )
                    .expect("run")
            })
        });
    }
    group.finish();

    bench_engine(c, paths, audio);

    let mut vad = SileroVad::open(paths, VadRate::Hz8000, VadParams::default()).expect("vad");
    let mut frames = audio.chunks_exact(160).cycle();
    c.bench_function("vad_8k/per_20ms_frame_single_stream", |b| {
        b.iter(|| black_box(vad.push_frame(frames.next().expect("cycle")).expect("frame")))
    });
}

/// The call path at scale: N calls' streams on the shared engine, one 20 ms frame each per
/// iteration (submitted together, then awaited), as the engine batches them.
fn bench_engine(c: &mut Criterion, paths: &ModelPaths, audio: &[i16]) {
    let engine = VadEngine::start(paths, VadEngineConfig::default()).expect("engine");
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let mut group = c.benchmark_group("vad_engine_8k_per_frame");
    for n in [1usize, 64] {
        let mut streams: Vec<_> = (0..n).map(|_| engine.stream(VadRate::Hz8000, VadParams::default())).collect();
        let mut frames = audio.chunks_exact(160).cycle();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("streams", n), &n, |b, _| {
            b.iter(|| {
                let frame = frames.next().expect("cycle");
                rt.block_on(async {
                    let mut queued = 0;
                    for s in streams.iter_mut() {
                        queued += usize::from(s.submit(frame).expect("submit"));
                    }
                    if queued > 0 {
                        for s in streams.iter_mut() {
                            black_box(s.result().await.expect("window"));
                        }
                    }
                })
            })
        });
    }
    group.finish();
    let stats = engine.stats();
    println!(
        "vad engine: {} windows in {} runs (mean batch {:.1})",
        stats.windows,
        stats.runs,
        stats.windows as f64 / stats.runs.max(1) as f64
    );
}

fn bench_smart_turn(c: &mut Criterion, paths: &ModelPaths, audio: &[i16]) {
    let segment: Vec<f32> = audio[..64_000].iter().map(|&s| f32::from(s) / 32768.0).collect();
    let mut resampler = SegmentResampler::new().expect("resampler");
    let kind = resampler.kind();
    let mut rubato = SegmentResampler::rubato().expect("rubato");
    let mut audio_16k = Vec::new();
    let mut group = c.benchmark_group("turn_segment_8s_8k_to_16k");
    if kind == ResamplerKind::Soxr {
        group.bench_function("libsoxr_hq", |b| b.iter(|| resampler.process(&segment, &mut audio_16k).expect("soxr")));
    }
    group.bench_function("rubato_sinc256", |b| b.iter(|| rubato.process(&segment, &mut audio_16k).expect("rubato")));
    group.finish();

    rubato.process(&segment, &mut audio_16k).expect("rubato");
    let mut window = Vec::new();
    features::fit_to_window(&audio_16k, &mut window);
    let mut fe = WhisperFeatures::new();
    let mut feats = vec![0.0f32; N_FEATURES];
    c.bench_function("whisper_features/8s_window", |b| {
        b.iter(|| fe.compute(black_box(&window), &mut feats).expect("features"))
    });

    let mut model = SmartTurnModel::open(paths, 1).expect("smart turn");
    let mut group = c.benchmark_group("smart_turn_inference_1_thread");
    group.sample_size(10).measurement_time(Duration::from_secs(8));
    let mut probs = [0.0f32; 4];
    for n in [1usize, 4] {
        let batch: Vec<f32> = feats.iter().copied().cycle().take(n * N_FEATURES).collect();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("batch", n), &n, |b, _| {
            b.iter(|| model.predict_features(&batch, &mut probs).expect("inference"))
        });
    }
    group.finish();
}

fn main() {
    let paths = models();
    let audio = speech_8k();
    check_no_allocation_per_frame(&paths, &audio);
    let mut c = Criterion::default()
        .configure_from_args()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    bench_silero(&mut c, &paths, &audio);
    bench_smart_turn(&mut c, &paths, &audio);
    c.final_summary();
}
