//! Shared by Keel's binaries: the tokio runtime they run on.

/// Worker threads of a broker or name server by default: one per two CPUs, and on a machine
/// of one or two CPUs none, a single-threaded runtime (0), with disk syncs and prefaults on
/// its blocking threads as always. Measured on the 2-vCPU machine (BENCHMARKS.md, "One
/// thread per server process"): with two workers every setup of `bench replication` (four
/// brokers, a name server and the client on two CPUs) ran 10-20 % slower than with one
/// thread, the workers waking each other across the processes; a lone broker under `bench
/// cluster` ran as fast either way. Machines of more CPUs were not measured.
pub fn default_workers() -> usize {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    if cpus / 2 <= 1 {
        0
    } else {
        cpus / 2
    }
}

/// The runtime for a server process. `KEEL_WORKER_THREADS` sets the worker count
/// (0 = a single-threaded runtime); unset, [`default_workers`].
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    runtime_with(default_workers())
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
