//! Tidy: everything under `core/src` except `core/src/rt` reaches time, tasks, network,
//! threads, randomness and disk only through `core::rt`. A banned path outside `rt` fails the
//! build's tests with the file and line.

use std::path::{Path, PathBuf};

const BANNED: &[(&str, &str)] = &[
    ("tokio::", "use crate::rt (time, tasks, sync, net) instead of tokio directly"),
    ("std::fs", "use the disk seam crate::rt::disk"),
    ("std::thread", "no threads in core; spawn tasks through crate::rt"),
    ("std::net::TcpStream", "use the network through crate::rt"),
    ("std::net::TcpListener", "use the network through crate::rt"),
    ("std::net::UdpSocket", "use the network through crate::rt"),
    ("SystemTime", "use crate::rt::now_ms"),
    ("Instant::now", "use crate::rt::instant / crate::rt::time"),
    ("thread_rng", "use crate::rt::rng (seeded)"),
    ("memmap2", "mapped files live in crate::rt::disk::real"),
    ("libc::", "system calls live in crate::rt"),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn core_touches_the_outside_world_only_through_rt() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let rt = src.join("rt");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    assert!(files.len() > 5, "found the sources");
    let mut violations = Vec::new();
    for file in files.iter().filter(|f| !f.starts_with(&rt)) {
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for (banned, why) in BANNED {
                if code.contains(banned) {
                    violations.push(format!("{}:{}: `{banned}`: {why}", file.display(), n + 1));
                }
            }
        }
    }
    assert!(violations.is_empty(), "outside-world access outside core::rt:\n{}", violations.join("\n"));
}

#[test]
fn the_tidy_check_catches_a_banned_call() {
    let line = "    let t = std::time::SystemTime::now();";
    assert!(BANNED.iter().any(|(b, _)| line.contains(b)));
}

/// tokio's `select!` picks among ready branches with a thread-local RNG that madsim does not
/// seed, so an unbiased select makes simulation runs diverge; every one in core is `biased;`.
#[test]
fn every_select_in_core_is_biased() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut violations = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (n, line) in lines.iter().enumerate() {
            if line.contains("select! {") && lines.get(n + 1).is_none_or(|l| l.trim() != "biased;") {
                violations.push(format!("{}:{}", file.display(), n + 1));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "select! without `biased;` (non-deterministic under madsim):\n{}",
        violations.join("\n")
    );
}
