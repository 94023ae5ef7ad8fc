//! Shared by Keel's binaries: the tokio runtime they run on.

/// Broker and name server worker threads by default. On the 2-core machine BENCHMARKS.md
/// measured, 1 worker gives the best ASYNC_FLUSH throughput but 2 keep serving while the
/// flusher's `msync` holds a thread, which SYNC_FLUSH needs.
pub const DEFAULT_WORKERS: usize = 2;

/// The runtime for a server process. `KEEL_WORKER_THREADS` sets the worker count
/// (0 = a single-threaded runtime).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    runtime_with(DEFAULT_WORKERS)
}

/// [`runtime`] with another default (the benchmark client measured best single-threaded).
pub fn runtime_with(default_workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let workers: usize =
        std::env::var("KEEL_WORKER_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(default_workers);
    if workers == 0 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build()
    }
}

/// mimalloc instead of glibc's malloc: the send path allocates per message (headers, frames),
/// and glibc's `_int_malloc`/`_int_free` were a quarter of the benchmark client's CPU (perf).
/// Built without transparent huge pages (`no_thp`): with them an idle broker held 8 MB of
/// 2 MiB pages (RSS 14.4 MB instead of 6.7 MB).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
