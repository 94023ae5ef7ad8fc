//! The one seam between Keel's logic and the outside world: time, tasks, network,
//! randomness and disk. Everything under `core/` reaches those only through this module, so
//! the same code runs on tokio in production and inside madsim (built with `--cfg madsim`),
//! where time is virtual, the network is simulated and the disk is [`disk::SimDisk`].

pub mod disk;
pub mod net;
pub mod watch;

pub use tokio::{select, spawn, task, time};

/// tokio's synchronisation primitives, except `watch`: ours wakes receivers in a fixed order
/// (see [`watch`](self::sync::watch)).
pub mod sync {
    pub use super::watch;
    pub use tokio::sync::*;
}

/// Wall-clock milliseconds since the Unix epoch. Virtual under madsim, which overrides
/// `clock_gettime`; the only place in `core/` allowed to read the system clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A fresh seeded generator. Under madsim the seed comes from the simulation's seed, so a run
/// replays exactly; in production it comes from the OS.
pub fn rng() -> rand::rngs::SmallRng {
    use rand::SeedableRng;
    rand::rngs::SmallRng::seed_from_u64(madsim::rand::random::<u64>())
}

/// Runs a unit test's future on a current-thread runtime whose clock is paused: it jumps to
/// the next timer whenever every task waits, so timeouts are tested without waiting.
#[cfg(test)]
pub fn block_on_paused<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap().block_on(f)
}

/// Monotonic instant for measuring elapsed time (virtual under madsim).
pub fn instant() -> time::Instant {
    time::Instant::now()
}
