//! Process and runtime figures read at scrape time: the standard `process_*` metrics every
//! Prometheus client library exports (CPU, resident memory, threads, open files, start time), so
//! the usual dashboards work, plus the Tokio runtime's live task count — the first thing to watch
//! for a leak, since every call is a handful of tasks.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

/// The `process_*` family (Linux `/proc`; elsewhere it reports nothing).
#[derive(Debug, Default)]
pub struct ProcessCollector;

/// Tokio's live tasks, as `switchboard_runtime_alive_tasks` (nothing outside a runtime).
#[derive(Debug, Default)]
pub struct RuntimeCollector;

/// One reading of `/proc/self`.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub threads: u64,
    pub open_fds: u64,
    pub max_fds: Option<u64>,
    pub start_time_seconds: f64,
}

impl ProcessStats {
    /// Reads the current process's figures; `None` where `/proc` isn't there.
    pub fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let boot_time = std::fs::read_to_string("/proc/stat").ok().and_then(|s| parse_boot_time(&s))?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        let max_fds = std::fs::read_to_string("/proc/self/limits").ok().and_then(|s| parse_max_open_files(&s));
        // SAFETY: sysconf only reads configuration values.
        let (ticks, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
        parse_stat(&stat, ticks.max(1) as f64, page.max(1) as u64, boot_time, open_fds, max_fds)
    }
}

/// Fields of `/proc/self/stat` after the `(comm)` field, which may itself hold spaces and ')'.
fn parse_stat(
    stat: &str,
    ticks: f64,
    page: u64,
    boot_time: f64,
    open_fds: u64,
    max_fds: Option<u64>,
) -> Option<ProcessStats> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): field n is f[n - 3].
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let cpu = (field(14)? + field(15)?) as f64 / ticks;
    Some(ProcessStats {
        cpu_seconds: cpu,
        resident_bytes: field(24)? * page,
        virtual_bytes: field(23)?,
        threads: field(20)?,
        open_fds,
        max_fds,
        start_time_seconds: boot_time + field(22)? as f64 / ticks,
    })
}

fn parse_boot_time(proc_stat: &str) -> Option<f64> {
    proc_stat.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse().ok())
}

fn parse_max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn gauge<T>(encoder: &mut DescriptorEncoder, name: &str, help: &str, unit: Option<&Unit>, v: T) -> std::fmt::Result
where
    ConstGauge<T>: EncodeMetric,
{
    let g = ConstGauge::new(v);
    g.encode(encoder.encode_descriptor(name, help, unit, g.metric_type())?)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let Some(p) = ProcessStats::read() else { return Ok(()) };
        let cpu = ConstCounter::new(p.cpu_seconds);
        let help = "Total user and system CPU time spent in seconds.";
        cpu.encode(encoder.encode_descriptor("process_cpu", help, Some(&Unit::Seconds), cpu.metric_type())?)?;
        let e = &mut encoder;
        gauge(
            e,
            "process_resident_memory",
            "Resident memory size in bytes.",
            Some(&Unit::Bytes),
            p.resident_bytes as i64,
        )?;
        gauge(
            e,
            "process_virtual_memory",
            "Virtual memory size in bytes.",
            Some(&Unit::Bytes),
            p.virtual_bytes as i64,
        )?;
        gauge(e, "process_threads", "Number of OS threads in the process.", None, p.threads as i64)?;
        gauge(e, "process_open_fds", "Number of open file descriptors.", None, p.open_fds as i64)?;
        if let Some(max) = p.max_fds {
            gauge(e, "process_max_fds", "Maximum number of open file descriptors.", None, max as i64)?;
        }
        let help = "Start time of the process since unix epoch in seconds.";
        gauge(e, "process_start_time", help, Some(&Unit::Seconds), p.start_time_seconds)
    }
}

impl Collector for RuntimeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let Ok(handle) = tokio::runtime::Handle::try_current() else { return Ok(()) };
        let help = "Tasks alive in the Tokio runtime (each call runs a handful; steady growth is a leak).";
        gauge(&mut encoder, "runtime_alive_tasks", help, None, handle.metrics().num_alive_tasks() as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_a_command_name_with_spaces_and_parentheses() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime
        // stime cutime cstime priority nice num_threads itrealvalue starttime vsize rss ...
        let stat = "4242 (sw (a) b) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0 1000 \
                    123456789 300 18446744073709551615";
        let p = parse_stat(stat, 100.0, 4096, 1_700_000_000.0, 12, Some(1024)).unwrap();
        assert_eq!(p.cpu_seconds, 3.0);
        assert_eq!(p.threads, 7);
        assert_eq!(p.virtual_bytes, 123_456_789);
        assert_eq!(p.resident_bytes, 300 * 4096);
        assert_eq!(p.start_time_seconds, 1_700_000_010.0);
        assert_eq!((p.open_fds, p.max_fds), (12, Some(1024)));
        assert!(parse_stat("garbage", 100.0, 4096, 0.0, 0, None).is_none());
    }

    #[test]
    fn boot_time_and_fd_limit_come_from_their_files() {
        assert_eq!(parse_boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 5\n"), Some(1_700_000_000.0));
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1048576              1048576              files\n";
        assert_eq!(parse_max_open_files(limits), Some(1_048_576));
    }

    #[test]
    fn this_process_reads_sensibly() {
        let p = ProcessStats::read().expect("/proc on Linux");
        assert!(p.threads >= 1 && p.open_fds >= 3 && p.resident_bytes > 1 << 20, "{p:?}");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        assert!(p.start_time_seconds <= now + 1.0 && p.start_time_seconds > now - 86_400.0 * 365.0, "{p:?}");
    }
}
