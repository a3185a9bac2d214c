//! Persona plugin costs: a call's instance from the `InstancePre` (goal ≤ 50 µs), one hook
//! round-trip (goal ≤ 5 µs; also through the blocking pool as the engine runs it), cold start
//! with and without the compiled-code cache, and a reload of a changed persona.
//!
//! Builds the plugins first (`plugins/build.sh`). `cargo bench --bench plugins`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use switchboard::call::{CallInfo, Direction};
use switchboard::metrics::Metrics;
use switchboard::persona::Persona;
use switchboard::persona::{PluginHost, PluginHostConfig, PluginInstance, Routes, Runtime, RuntimeConfig};

fn built(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let plugins = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins");
        let status = std::process::Command::new("bash").arg(plugins.join("build.sh")).status().expect("build.sh");
        assert!(status.success(), "plugins/build.sh failed");
        plugins.join("target/personas")
    });
    dir.join(format!("{name}.wasm"))
}

fn call() -> CallInfo {
    CallInfo {
        call_sid: "CA00000000000000000000000000000001".into(),
        stream_sid: "MZ00000000000000000000000000000001".into(),
        account_sid: "AC00000000000000000000000000000001".into(),
        direction: Direction::Inbound,
        from: "+15550002222".into(),
        to: "+15550001111".into(),
        persona: None,
        parameters: BTreeMap::new(),
    }
}

fn runtime(cache: Option<PathBuf>) -> Runtime {
    let config = RuntimeConfig { max_instances: 64, cache_dir: cache, ..Default::default() };
    Runtime::new(&config, Arc::new(Metrics::new())).expect("runtime")
}

fn instances_and_hooks(c: &mut Criterion) {
    let bytes = std::fs::read(built("receptionist")).unwrap();
    let rt = runtime(None);
    let compiled = rt.load(&bytes).unwrap();
    let grants = Routes::empty(rt.max_memory()).grants("receptionist");
    let mut group = c.benchmark_group("plugin");
    group.bench_function("instantiate per call (Store + WASI ctx + InstancePre::instantiate)", |b| {
        b.iter(|| black_box(PluginInstance::new(&rt, &compiled, grants.clone(), "CA1").unwrap()))
    });
    let mut instance = PluginInstance::new(&rt, &compiled, grants.clone(), "CA1").unwrap();
    instance.on_call_start(&call()).unwrap();
    group.bench_function("hook round-trip (on-idle -> prompt action)", |b| {
        b.iter(|| black_box(instance.on_idle(black_box(1)).unwrap()))
    });
    group.bench_function("instantiate + on-call-start (a call's first hook)", |b| {
        b.iter(|| {
            let mut i = PluginInstance::new(&rt, &compiled, grants.clone(), "CA1").unwrap();
            black_box(i.on_call_start(&call()).unwrap())
        })
    });
    group.finish();
}

fn hook_via_blocking_pool(c: &mut Criterion) {
    let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(built("receptionist"), dir.path().join("receptionist.wasm")).unwrap();
    std::fs::write(dir.path().join("routes.toml"), "default = \"receptionist\"\n").unwrap();
    let mut config = PluginHostConfig::new(dir.path());
    config.watch = false;
    config.reload_on_sighup = false;
    let host = tokio.block_on(async { PluginHost::start(config, Arc::new(Metrics::new())).unwrap() });
    let call = call();
    let mut persona = host.persona(&call);
    tokio.block_on(persona.setup(&call));
    assert!(persona.is_live());
    c.bench_function("plugin/hook via WasmPersona (spawn_blocking round-trip)", |b| {
        b.iter(|| black_box(tokio.block_on(persona.on_idle(1))))
    });
}

fn cold_start(c: &mut Criterion) {
    let bytes = std::fs::read(built("support-desk")).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("plugin cold start (support-desk)");
    group.sample_size(10).measurement_time(Duration::from_secs(10));
    let uncached = runtime(None);
    group.bench_function("compile, no cache", |b| b.iter(|| black_box(uncached.load(&bytes).unwrap())));
    let cached = runtime(Some(cache.path().to_path_buf()));
    cached.load(&bytes).unwrap();
    group.bench_function("from the compiled cache", |b| b.iter(|| black_box(cached.load(&bytes).unwrap())));
    group.finish();
}

fn reload(c: &mut Criterion) {
    let versions = [std::fs::read(built("receptionist")).unwrap(), std::fs::read(built("support-desk")).unwrap()];
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("front.wasm"), &versions[0]).unwrap();
    std::fs::write(dir.path().join("routes.toml"), "default = \"front\"\n").unwrap();
    let mut config = PluginHostConfig::new(dir.path());
    config.watch = false;
    config.reload_on_sighup = false;
    let host = PluginHost::start(config.clone(), Arc::new(Metrics::new())).unwrap();
    let mut group = c.benchmark_group("plugin reload");
    group.sample_size(20);
    let mut next = 1;
    group.bench_function("a changed persona (cache warm after the first round)", |b| {
        b.iter_batched(
            || {
                std::fs::write(dir.path().join("front.wasm"), &versions[next]).unwrap();
                next = 1 - next;
            },
            |()| black_box(host.reload()),
            BatchSize::PerIteration,
        )
    });
    group.bench_function("nothing changed", |b| b.iter(|| black_box(host.reload())));
    // A restart: a new host over the same directory and cache.
    group.bench_function("host start over a warm cache", |b| {
        b.iter(|| black_box(PluginHost::start(config.clone(), Arc::new(Metrics::new())).unwrap()))
    });
    group.finish();
}

criterion_group!(benches, instances_and_hooks, hook_via_blocking_pool, cold_start, reload);
criterion_main!(benches);
