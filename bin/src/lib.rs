//! Shared by Keel's binaries: the tokio runtime they run on.

/// The runtime for a server or tool process. `KEEL_WORKER_THREADS` sets the worker count
/// (0 = a single-threaded runtime); the default is what BENCHMARKS.md measured best on a
/// 2-core machine.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let workers: usize =
        std::env::var("KEEL_WORKER_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_WORKERS);
    if workers == 0 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build()
    }
}

pub const DEFAULT_WORKERS: usize = 2;
