//! TCP through the seam: tokio's sockets in production, madsim's simulated ones under
//! `--cfg madsim`. Only the calls both provide are re-exported.

use std::time::{Duration, Instant};
pub use tokio::io::{AsyncReadExt, AsyncWriteExt};
pub use tokio::net::{TcpListener, TcpStream};

/// Resolves "host:port" (an IP literal or a name) to a socket address.
pub async fn resolve(addr: &str) -> std::io::Result<std::net::SocketAddr> {
    if let Ok(a) = addr.parse() {
        return Ok(a);
    }
    tokio::net::lookup_host(addr)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, format!("cannot resolve {addr}")))
}

/// Polling a socket for a while before sleeping on it, as the kernel's haltpoll governor polls
/// before it halts a CPU.
///
/// On this VM (a Firecracker guest, its `guest_halt_poll_ns` 0) a CPU with nothing to run
/// halts at once, and a packet for a task asleep on it costs the sender's `sendto` and the
/// receiver's wake-up 30–60 µs each (BENCHMARKS.md, "Busy polling"). A connection task
/// that expects its peer back soon (a client with requests out, a server that just answered)
/// can instead keep polling, yielding to the runtime's other tasks and the machine's other
/// threads between looks. The window adapts per connection: a look that finds nothing for
/// the whole window halves it (down to off), a sleep that ended sooner than the longest
/// window opens it again. It never spins while the machine has more runnable threads than
/// CPUs, where polling would take the CPU from the peer it waits for. Off under madsim,
/// where time is virtual and waiting is free.
#[derive(Debug)]
pub struct BusyPoll {
    max: Duration,
    window: Duration,
    asleep_since: Option<Instant>,
}

/// The longest polling window: `KEEL_BUSY_POLL_US` (0 turns polling off), else
/// [`BUSY_POLL_DEFAULT`]; always zero under madsim.
pub fn busy_poll_max() -> Duration {
    if cfg!(madsim) {
        return Duration::ZERO;
    }
    static MAX: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *MAX.get_or_init(|| match std::env::var("KEEL_BUSY_POLL_US") {
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(us) => Duration::from_micros(us),
            Err(_) => {
                tracing::warn!(value = %v, "KEEL_BUSY_POLL_US is not a number of microseconds; using the default");
                BUSY_POLL_DEFAULT
            }
        },
        Err(_) => BUSY_POLL_DEFAULT,
    })
}

/// Long enough to cover a SYNC_FLUSH group sync and its answer (~300 µs here).
pub const BUSY_POLL_DEFAULT: Duration = Duration::from_micros(400);

impl BusyPoll {
    pub fn new(max: Duration) -> Self {
        BusyPoll { max, window: max, asleep_since: None }
    }

    /// The current window (zero: no polling).
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Calls `look` until it finds something, for at most the current window, yielding
    /// between looks. `None` when the window ran out (or is closed, or the CPUs are busy).
    pub async fn spin<T>(&mut self, look: impl FnMut() -> Option<T>) -> Option<T> {
        self.spin_unless(cpus_contended, look).await
    }

    async fn spin_unless<T>(&mut self, contended: fn() -> bool, mut look: impl FnMut() -> Option<T>) -> Option<T> {
        if self.window.is_zero() || contended() {
            return None;
        }
        let start = Instant::now();
        loop {
            crate::rt::task::yield_now().await;
            if let Some(found) = look() {
                return Some(found);
            }
            if start.elapsed() >= self.window {
                self.missed();
                return None;
            }
            if contended() {
                return None;
            }
            std::thread::yield_now();
        }
    }

    /// The window ran out with nothing found: halve it, and close it below an eighth.
    fn missed(&mut self) {
        self.window /= 2;
        if self.window < self.max / 8 {
            self.window = Duration::ZERO;
        }
    }

    /// Call before sleeping on the socket, and [`woke`](Self::woke) when it brought data.
    pub fn sleeping(&mut self) {
        if !self.max.is_zero() {
            self.asleep_since = Some(Instant::now());
        }
    }

    /// The sleep ended with data: if it was shorter than the longest window, polling would
    /// have caught it, so the window opens again.
    pub fn woke(&mut self) {
        if let Some(since) = self.asleep_since.take() {
            self.woke_after(since.elapsed());
        }
    }

    fn woke_after(&mut self, slept: Duration) {
        if slept < self.max {
            self.window = self.max;
        }
    }
}

/// More runnable threads than CPUs (`/proc/loadavg`'s running count, read at most once a
/// millisecond per process).
fn cpus_contended() -> bool {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::OnceLock;
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    static CHECKED_US: AtomicU64 = AtomicU64::new(0);
    static CONTENDED: AtomicBool = AtomicBool::new(false);
    static CPUS: OnceLock<usize> = OnceLock::new();
    let now = EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64 + 1;
    let last = CHECKED_US.load(Ordering::Relaxed);
    if last != 0 && now - last < 1000 {
        return CONTENDED.load(Ordering::Relaxed);
    }
    CHECKED_US.store(now, Ordering::Relaxed);
    let cpus = *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let running = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().nth(3)?.split('/').next()?.parse::<usize>().ok());
    // Unknown (not Linux): assume the CPUs are shared.
    let contended = running.is_none_or(|r| r > cpus);
    CONTENDED.store(contended, Ordering::Relaxed);
    contended
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missed_window_halves_and_then_closes() {
        let mut p = BusyPoll::new(Duration::from_micros(400));
        let mut seen = vec![p.window().as_micros()];
        for _ in 0..5 {
            p.missed();
            seen.push(p.window().as_micros());
        }
        assert_eq!(seen, vec![400, 200, 100, 50, 0, 0]);
    }

    #[test]
    fn a_short_sleep_opens_the_window_and_a_long_one_does_not() {
        let mut p = BusyPoll::new(Duration::from_micros(400));
        for _ in 0..5 {
            p.missed();
        }
        assert!(p.window().is_zero());
        p.woke_after(Duration::from_micros(500));
        assert!(p.window().is_zero(), "a sleep longer than the window leaves it closed");
        p.woke_after(Duration::from_micros(120));
        assert_eq!(p.window(), Duration::from_micros(400), "polling would have caught this one");
    }

    #[test]
    fn spin_returns_what_a_look_finds_and_a_closed_window_looks_not_at_all() {
        crate::rt::block_on_paused(async {
            let mut looks = 0;
            let mut p = BusyPoll::new(Duration::from_secs(3600));
            let found = p
                .spin_unless(
                    || false,
                    || {
                        looks += 1;
                        (looks == 3).then_some("data")
                    },
                )
                .await;
            assert_eq!((found, looks), (Some("data"), 3));
            assert_eq!(p.window(), Duration::from_secs(3600), "a hit keeps the window");

            let mut p = BusyPoll::new(Duration::ZERO);
            assert_eq!(spin_noting_looks(&mut p, || false).await, (None, false));
        });
    }

    #[test]
    fn a_window_that_runs_out_is_halved_and_contention_stops_the_spin() {
        crate::rt::block_on_paused(async {
            let mut p = BusyPoll::new(Duration::from_micros(200));
            let found: Option<()> = p.spin_unless(|| false, || None).await;
            assert_eq!((found, p.window()), (None, Duration::from_micros(100)));

            let mut p = BusyPoll::new(Duration::from_secs(3600));
            assert_eq!(spin_noting_looks(&mut p, || true).await, (None, false));
            assert_eq!(p.window(), Duration::from_secs(3600));
        });
    }

    /// Spins with a look that would find something at once; returns what the spin found
    /// and whether it looked at all.
    async fn spin_noting_looks(p: &mut BusyPoll, contended: fn() -> bool) -> (Option<()>, bool) {
        let mut looked = false;
        let found = p
            .spin_unless(contended, || {
                looked = true;
                Some(())
            })
            .await;
        (found, looked)
    }

    #[test]
    fn woke_without_sleeping_changes_nothing() {
        let mut p = BusyPoll::new(Duration::from_micros(400));
        p.missed();
        p.woke();
        assert_eq!(p.window(), Duration::from_micros(200));
    }
}
