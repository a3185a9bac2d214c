//! Per-frame cost of the audio DSP (one 20 ms frame = 160 samples at 8 kHz), preceded by a check
//! that the inbound hot path (μ-law decode → RNNoise → recorder placement, plus the resamplers
//! and outbound encode) allocates nothing per frame once built.
//!
//! Run: `cargo bench --bench audio_dsp`. `cargo test --benches` runs the allocation check and
//! each benchmark once. Before criterion starts, a table of thread CPU time per frame is printed:
//! criterion measures wall time, which other processes inflate on a busy 2-core machine, while
//! the budget (≤ 100 µs per frame per call) is CPU time.

use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use criterion::{criterion_group, Criterion};
use switchboard::audio::denoise::Denoiser;
use switchboard::audio::mulaw;
use switchboard::audio::record::{Timeline, TimelineConfig};
use switchboard::audio::resample::StreamResampler;

/// Counts allocations made while `COUNTING` is set (this binary is single-threaded until
/// criterion starts).
struct CountingAlloc;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// 20 ms at 8 kHz.
const FRAME: usize = 160;

/// The committed espeak-ng fixture with fixed-seed uniform noise (±1024) added, as μ-law:
/// real speech, so RNNoise never takes its silent-frame shortcut.
fn caller_mulaw() -> Vec<u8> {
    let wav = include_bytes!("../tests/fixtures/dsp/speech_8k.wav");
    let mut reader = hound::WavReader::new(std::io::Cursor::new(&wav[..])).expect("fixture");
    let clean: Vec<i16> = reader.samples::<i16>().map(|s| s.expect("sample")).collect();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let pcm: Vec<i16> = clean
        .iter()
        .map(|&s| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let noise = ((state >> 40) as i32 - (1 << 23)) >> 13; // uniform ±1024
            (i32::from(s) + noise).clamp(-32768, 32767) as i16
        })
        .collect();
    mulaw::encode_vec(&pcm[..pcm.len() / FRAME * FRAME])
}

/// Everything one call's inbound path owns, built once.
struct InboundPath {
    denoiser: Denoiser,
    timeline: Timeline,
    decoded: [i16; FRAME],
    denoised: [i16; FRAME],
    released: u64,
}

impl InboundPath {
    fn new() -> Self {
        Self {
            denoiser: Denoiser::new(8000).expect("denoiser"),
            timeline: Timeline::new(TimelineConfig::default()),
            decoded: [0; FRAME],
            denoised: [0; FRAME],
            released: 0,
        }
    }

    /// One caller frame at `ts_ms`: decode, denoise, place (the file write is another thread's).
    fn frame(&mut self, codes: &[u8], ts_ms: u64) {
        mulaw::decode_into(codes, &mut self.decoded).expect("decode");
        let n = self.denoiser.process(&self.decoded, &mut self.denoised).expect("denoise");
        let released = &mut self.released;
        let mut sink = |s: &[i16]| -> Result<(), Infallible> {
            *released += s.len() as u64;
            Ok(())
        };
        let _ = self.timeline.caller(ts_ms, &self.denoised[..n], &mut sink);
        // The bot track, paced 100 ms ahead, as the transport would feed it.
        let _ = self.timeline.bot(ts_ms + 100, &self.decoded, &mut sink);
    }
}

/// Allocation check: run warm-up frames, then count allocations over 500 frames (10 s).
fn check_no_allocation_per_frame() {
    let codes = caller_mulaw();
    let frames: Vec<&[u8]> = codes.chunks_exact(FRAME).collect();
    let mut path = InboundPath::new();
    let mut up16 = StreamResampler::new(8000, 16000, FRAME).expect("resampler");
    let mut down16 = StreamResampler::new(16000, 8000, 2 * FRAME).expect("resampler");
    let mut up48 = StreamResampler::new(8000, 48000, FRAME).expect("resampler");
    let mut down48 = StreamResampler::new(48000, 8000, 6 * FRAME).expect("resampler");
    let (mut f8, mut f16, mut f48, mut back) =
        (vec![0f32; FRAME], vec![0f32; 2 * FRAME], vec![0f32; 6 * FRAME], vec![0f32; FRAME]);
    let mut encoded = [0u8; FRAME];
    let mut run = |i: usize| {
        let codes = frames[i % frames.len()];
        path.frame(codes, i as u64 * 20);
        for (f, &s) in f8.iter_mut().zip(path.denoised.iter()) {
            *f = f32::from(s);
        }
        up16.process(&f8, &mut f16).expect("8k->16k");
        down16.process(&f16, &mut back).expect("16k->8k");
        up48.process(&f8, &mut f48).expect("8k->48k");
        down48.process(&f48, &mut back).expect("48k->8k");
        mulaw::encode_into(&path.denoised, &mut encoded).expect("encode");
    };
    for i in 0..50 {
        run(i);
    }
    COUNTING.store(true, Ordering::SeqCst);
    for i in 50..550 {
        run(i);
    }
    COUNTING.store(false, Ordering::SeqCst);
    let n = ALLOCATIONS.load(Ordering::SeqCst);
    assert_eq!(n, 0, "{n} allocations in 500 frames of the hot path");
    eprintln!("allocation check: 0 allocations in 500 frames of the inbound path");
}

/// CPU time of the calling thread in nanoseconds.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant the OS supports.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Mean thread CPU µs per call of `f` over `iters` calls (after a tenth as warm-up).
fn cpu_us(iters: u32, mut f: impl FnMut(u32)) -> f64 {
    for i in 0..iters / 10 {
        f(i);
    }
    let start = thread_cpu_ns();
    for i in 0..iters {
        f(i);
    }
    (thread_cpu_ns() - start) as f64 / 1000.0 / f64::from(iters)
}

/// Prints thread CPU time per 20 ms frame for each stage.
fn print_cpu_table() {
    let codes = caller_mulaw();
    let frames: Vec<&[u8]> = codes.chunks_exact(FRAME).collect();
    let pick = |i: u32| frames[i as usize % frames.len()];
    let mut pcm = [0i16; FRAME];
    let mut out_codes = [0u8; FRAME];
    let mut rows = vec![
        (
            "mulaw decode",
            cpu_us(200_000, |i| {
                let _ = black_box(mulaw::decode_into(pick(i), &mut pcm));
            }),
        ),
        (
            "mulaw encode",
            cpu_us(200_000, |_| {
                let _ = black_box(mulaw::encode_into(&pcm, &mut out_codes));
            }),
        ),
    ];
    for (from, to) in [(8000u32, 16000u32), (16000, 8000), (8000, 48000), (48000, 8000)] {
        let n = (from / 50) as usize;
        let mut r = StreamResampler::new(from, to, n).expect("resampler");
        let input: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() * 8000.0).collect();
        let mut out = vec![0f32; r.output_len()];
        let name = match (from, to) {
            (8000, 16000) => "resample 8k->16k",
            (16000, 8000) => "resample 16k->8k",
            (8000, 48000) => "resample 8k->48k",
            _ => "resample 48k->8k",
        };
        rows.push((
            name,
            cpu_us(50_000, |_| {
                let _ = black_box(r.process(&input, &mut out));
            }),
        ));
    }
    let pcm_frames: Vec<Vec<i16>> = frames.iter().map(|f| mulaw::decode_vec(f)).collect();
    let mut d = Denoiser::new(8000).expect("denoiser");
    let mut den = [0i16; FRAME];
    rows.push((
        "denoise (RNNoise, 8k)",
        cpu_us(3000, |i| {
            let _ = black_box(d.process(&pcm_frames[i as usize % pcm_frames.len()], &mut den));
        }),
    ));
    let mut t = Timeline::new(TimelineConfig::default());
    let mut sink = |s: &[i16]| -> Result<(), Infallible> {
        black_box(s);
        Ok(())
    };
    let mut ts = 0u64;
    rows.push((
        "record placement",
        cpu_us(200_000, |_| {
            ts += 20; // a running clock: warm-up and measured calls stay in order
            let _ = t.caller(ts, &pcm, &mut sink);
            let _ = t.bot(ts + 100, &pcm, &mut sink);
        }),
    ));
    let mut path = InboundPath::new();
    let mut clock = 0u64;
    rows.push((
        "inbound: decode+denoise+place",
        cpu_us(3000, |i| {
            clock += 20;
            path.frame(pick(i), clock);
        }),
    ));
    eprintln!("thread CPU time per 20 ms frame (8 kHz):");
    for (name, us) in rows {
        eprintln!("  {name:<32} {us:>9.3} µs");
    }
}

fn bench_mulaw(c: &mut Criterion) {
    let codes = caller_mulaw();
    let frame: [u8; FRAME] = codes[8000..8000 + FRAME].try_into().expect("frame");
    let pcm = mulaw::decode_vec(&frame);
    let mut out_pcm = [0i16; FRAME];
    let mut out_codes = [0u8; FRAME];
    c.bench_function("mulaw_decode_20ms", |b| b.iter(|| mulaw::decode_into(black_box(&frame), &mut out_pcm)));
    c.bench_function("mulaw_encode_20ms", |b| b.iter(|| mulaw::encode_into(black_box(&pcm), &mut out_codes)));
}

fn bench_resample(c: &mut Criterion) {
    let mut group = c.benchmark_group("resample_20ms");
    for (from, to) in [(8000u32, 16000u32), (16000, 8000), (8000, 48000), (48000, 8000), (16000, 48000), (48000, 16000)]
    {
        let n = (from / 50) as usize;
        let mut r = StreamResampler::new(from, to, n).expect("resampler");
        let input: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() * 8000.0).collect();
        let mut out = vec![0f32; r.output_len()];
        group.bench_function(format!("{}k_to_{}k", from / 1000, to / 1000), |b| {
            b.iter(|| r.process(black_box(&input), &mut out))
        });
    }
    group.finish();
}

fn bench_denoise(c: &mut Criterion) {
    let codes = caller_mulaw();
    let pcm = mulaw::decode_vec(&codes);
    let frames: Vec<&[i16]> = pcm.chunks_exact(FRAME).collect();
    let mut d = Denoiser::new(8000).expect("denoiser");
    let mut out = [0i16; FRAME];
    let mut i = 0;
    c.bench_function("denoise_8k_20ms", |b| {
        b.iter(|| {
            i += 1;
            d.process(black_box(frames[i % frames.len()]), &mut out)
        })
    });
}

fn bench_record(c: &mut Criterion) {
    let mut t = Timeline::new(TimelineConfig::default());
    let caller = [300i16; FRAME];
    let bot = [-300i16; FRAME];
    let mut released = 0u64;
    let mut ts = 0u64;
    c.bench_function("record_placement_20ms", |b| {
        b.iter(|| {
            let mut sink = |s: &[i16]| -> Result<(), Infallible> {
                released += black_box(s.len()) as u64;
                Ok(())
            };
            let _ = t.caller(ts, black_box(&caller), &mut sink);
            let _ = t.bot(ts + 100, black_box(&bot), &mut sink);
            ts += 20;
        })
    });
}

fn bench_inbound(c: &mut Criterion) {
    let codes = caller_mulaw();
    let frames: Vec<&[u8]> = codes.chunks_exact(FRAME).collect();
    let mut path = InboundPath::new();
    let mut i = 0u64;
    c.bench_function("inbound_dsp_20ms_decode_denoise_place", |b| {
        b.iter(|| {
            path.frame(black_box(frames[i as usize % frames.len()]), i * 20);
            i += 1;
        })
    });
}

criterion_group!(benches, bench_mulaw, bench_resample, bench_denoise, bench_record, bench_inbound);

fn main() {
    check_no_allocation_per_frame();
    print_cpu_table();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
