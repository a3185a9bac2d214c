//! Runs a browser test in `host/tests/browser/` with `node --test`: headless Chromium (Debian's
//! `chromium`) driven by playwright-core. Node's output goes into the test log as it comes; a
//! failing run fails the Rust test with that output.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

/// The npm package holding the browser tests.
pub fn tests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// The Chromium binary: `CHROMIUM` or Debian's.
pub fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// Why the browser tests can't run here, if they can't.
pub fn missing_prerequisites() -> Option<String> {
    let mut missing = Vec::new();
    if !chromium().is_file() {
        missing.push(format!("Chromium at {} (apt package `chromium`)", chromium().display()));
    }
    if !tests_dir().join("node_modules/playwright-core/package.json").is_file() {
        missing.push(format!("playwright-core in {}/node_modules (npm ci)", tests_dir().display()));
    }
    match std::process::Command::new("node").arg("--version").output() {
        Ok(out) => {
            let v = String::from_utf8_lossy(&out.stdout);
            let major: u32 =
                v.trim().trim_start_matches('v').split('.').next().and_then(|m| m.parse().ok()).unwrap_or(0);
            if major < 20 {
                missing.push(format!("Node.js 20 or newer (found {:?})", v.trim()));
            }
        }
        Err(_) => missing.push("Node.js 20 or newer (`node` on PATH)".into()),
    }
    (!missing.is_empty()).then(|| format!("browser tests need {}: run scripts/setup.sh", missing.join(", ")))
}

/// Runs `node --test <files>` in the browser test package with `env`, within `limit`. Panics
/// with node's output when it fails, times out or can't start.
pub async fn run_node_tests(files: &[&str], env: &[(&str, &str)], limit: Duration) -> String {
    if let Some(problem) = missing_prerequisites() {
        panic!("{problem}");
    }
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg("--test").arg("--test-reporter=spec");
    for file in files {
        let path: &Path = &tests_dir().join(file);
        assert!(path.is_file(), "no browser test {}", path.display());
        cmd.arg(path);
    }
    cmd.current_dir(tests_dir())
        .env("CHROMIUM", chromium())
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("starting node: {e}"));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    for (name, pipe) in
        [("node", Box::new(stdout) as Box<dyn tokio::io::AsyncRead + Unpin + Send>), ("node!", Box::new(stderr))]
    {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                // Into the test's captured output, shown on failure or with --nocapture.
                eprintln!("[{name}] {line}");
                let _ = tx.send(line);
            }
        });
    }
    drop(tx);
    let status = match tokio::time::timeout(limit, child.wait()).await {
        Ok(status) => status.unwrap_or_else(|e| panic!("waiting for node: {e}")),
        Err(_) => {
            let _ = child.kill().await;
            let mut out = Vec::new();
            while let Ok(line) = rx.try_recv() {
                out.push(line);
            }
            panic!("browser tests {files:?} timed out after {limit:?}; output:\n{}", out.join("\n"));
        }
    };
    let mut out = Vec::new();
    while let Some(line) = rx.recv().await {
        out.push(line);
    }
    let out = out.join("\n");
    assert!(status.success(), "browser tests {files:?} failed ({status}); output:\n{out}");
    out
}
