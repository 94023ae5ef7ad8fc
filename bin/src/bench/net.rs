//! Network benchmarks: `produce` and `consume` against a running cluster (RocketMQ's
//! benchmark lines), `echo` (a raw loopback request/response baseline) and `cluster`, which
//! runs the whole matrix in one go — a broker process per flush mode, an echo server
//! process, the same frame bytes at the same concurrency — and prints the table that
//! BENCHMARKS.md records.

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Args;
use hdrhistogram::Histogram;
use keel_core::client::{Admin, ClientConfig, ConsumeResult, Message, Producer, PushConsumer, SendStatus};
use keel_core::protocol::header::SendMessageHeader;
use keel_core::protocol::RemotingCommand;
use keel_core::rt::net::{busy_poll_max, BusyPoll};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

#[derive(Args, Clone)]
pub struct ProduceArgs {
    #[arg(short = 'n', long, default_value = "127.0.0.1:9876")]
    pub namesrv: String,
    #[arg(short = 't', long, default_value = "BenchmarkTest")]
    pub topic: String,
    /// Message body size in bytes.
    #[arg(short = 's', long, default_value_t = 128)]
    pub size: usize,
    /// Concurrent senders (each waits for its answer before the next send).
    #[arg(short = 'w', long, default_value_t = 32)]
    pub threads: usize,
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// ASYNC sends: each sender keeps up to 64 sends in flight.
    #[arg(long)]
    pub r#async: bool,
    /// Seconds between benchmark lines.
    #[arg(long, default_value_t = 2.0)]
    pub report: f64,
}

#[derive(Args, Clone)]
pub struct ConsumeArgs {
    #[arg(short = 'n', long, default_value = "127.0.0.1:9876")]
    namesrv: String,
    #[arg(short = 't', long, default_value = "BenchmarkTest")]
    topic: String,
    #[arg(short = 'g', long, default_value = "benchmark_consumer")]
    group: String,
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
}

#[derive(Args, Clone)]
pub struct EchoArgs {
    /// Address of an echo server; none: start one in this process.
    #[arg(long)]
    pub addr: Option<String>,
    #[arg(short = 's', long, default_value_t = 128)]
    pub size: usize,
    #[arg(short = 'w', long, default_value_t = 32)]
    pub threads: usize,
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
}

#[derive(Args, Clone)]
pub struct ClusterArgs {
    /// Seconds per configuration.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    #[arg(long, value_delimiter = ',', default_value = "128,1024")]
    sizes: Vec<usize>,
    #[arg(long, value_delimiter = ',', default_value = "1,32")]
    threads: Vec<usize>,
    #[arg(long, value_delimiter = ',', default_value = "ASYNC_FLUSH,SYNC_FLUSH")]
    flush: Vec<String>,
    /// Where the broker keeps its store (removed afterwards).
    #[arg(long, default_value = "target/bench-broker")]
    dir: PathBuf,
    /// Broker worker threads (KEEL_WORKER_THREADS; 0 = one thread; default: the broker's).
    #[arg(long)]
    broker_threads: Option<usize>,
    /// Extra broker.properties lines (`key=value`, repeatable), e.g. `--set warmMapedFileEnable=false`.
    #[arg(long = "set")]
    set: Vec<String>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

/// What one run measured.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub ops: u64,
    pub failed: u64,
    pub secs: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Outcome {
    pub fn rate(&self) -> f64 {
        self.ops as f64 / self.secs
    }
    fn of(h: &Histogram<u64>, ops: u64, failed: u64, secs: f64) -> Outcome {
        Outcome {
            ops,
            failed,
            secs,
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

fn body_of(size: usize) -> Bytes {
    Bytes::from((0..size).map(|i| b'a' + (i % 26) as u8).collect::<Vec<u8>>())
}

/// Runs senders against the cluster for `seconds`, printing RocketMQ's line every `report`.
pub async fn produce(a: &ProduceArgs) -> Result<Outcome> {
    let producer = Producer::start("benchmark_producer", ClientConfig::new(&a.namesrv)).await?;
    // Warm up: the route, the connection, topic auto-creation.
    producer.send(&Message::new(&a.topic, body_of(a.size))).await.context("first send")?;
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(Mutex::new(histogram()));
    let window = Arc::new(Mutex::new((0u64, 0u64, 0u64))); // (count, total us, max us)
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..a.threads {
        let (p, stop, ok, failed, hist, window) =
            (producer.clone(), stop.clone(), ok.clone(), failed.clone(), hist.clone(), window.clone());
        let msg = Message::new(&a.topic, body_of(a.size));
        let inflight = if a.r#async { 64 } else { 1 };
        tasks.push(tokio::spawn(async move {
            let mut local = histogram();
            // Only SEND_OK counts: a stored-but-not-replicated or not-flushed answer is a
            // failure here.
            let timed = |p: Arc<Producer>, m: Message| async move {
                let t = Instant::now();
                let r = p.send(&m).await;
                r.ok().filter(|r| r.status == SendStatus::SendOk).map(|_| t.elapsed().as_micros() as u64)
            };
            if inflight == 1 {
                // A synchronous sender: send, wait, send again, on this one task.
                while !stop.load(Ordering::Relaxed) {
                    let us = timed(p.clone(), msg.clone()).await;
                    record(us, &mut local, &ok, &failed, &window);
                }
            } else {
                let mut set = tokio::task::JoinSet::new();
                while !stop.load(Ordering::Relaxed) {
                    while set.len() >= inflight {
                        if let Some(Ok(us)) = set.join_next().await {
                            record(us, &mut local, &ok, &failed, &window);
                        }
                    }
                    set.spawn(timed(p.clone(), msg.clone()));
                }
                while let Some(Ok(us)) = set.join_next().await {
                    record(us, &mut local, &ok, &failed, &window);
                }
            }
            hist.lock().unwrap().add(&local).expect("same bounds");
        }));
    }
    let end = start + Duration::from_secs_f64(a.seconds);
    let mut last = Instant::now();
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs_f64(a.report).min(end.saturating_duration_since(Instant::now()))).await;
        let (n, total, max) = std::mem::take(&mut *window.lock().unwrap());
        let dt = last.elapsed().as_secs_f64();
        last = Instant::now();
        println!(
            "Send TPS: {:.0} Max RT(ms): {:.3} Average RT(ms): {:7.3} Send Failed: {} Response Failed: 0",
            n as f64 / dt,
            max as f64 / 1000.0,
            if n > 0 { total as f64 / n as f64 / 1000.0 } else { 0.0 },
            failed.load(Ordering::Relaxed)
        );
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    let secs = start.elapsed().as_secs_f64();
    producer.shutdown().await;
    let h = hist.lock().unwrap();
    Ok(Outcome::of(&h, ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed), secs))
}

fn record(
    us: Option<u64>,
    h: &mut Histogram<u64>,
    ok: &AtomicU64,
    failed: &AtomicU64,
    window: &Mutex<(u64, u64, u64)>,
) {
    match us {
        Some(us) => {
            ok.fetch_add(1, Ordering::Relaxed);
            let _ = h.record(us.max(1));
            let mut w = window.lock().unwrap();
            w.0 += 1;
            w.1 += us;
            w.2 = w.2.max(us);
        }
        None => {
            failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

pub fn print_percentiles(label: &str, o: &Outcome) {
    println!(
        "{label}: {:.0} msgs/s  p50 {} us  p99 {} us  p99.9 {} us  max {} us  ({} ok, {} failed in {:.1} s)",
        o.rate(),
        o.p50_us,
        o.p99_us,
        o.p999_us,
        o.max_us,
        o.ops,
        o.failed,
        o.secs
    );
}

pub async fn consume(a: &ConsumeArgs) -> Result<()> {
    let count = Arc::new(AtomicU64::new(0));
    let b2c = Arc::new(Mutex::new((0u64, 0i64, 0i64, 0i64, 0i64)));
    let (c2, b2) = (count.clone(), b2c.clone());
    let consumer = PushConsumer::builder(&a.group, ClientConfig::new(&a.namesrv))
        .subscribe(&a.topic, "*")
        .start(Arc::new(move |msgs, _| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
            let mut w = b2.lock().unwrap();
            for m in msgs {
                let born = now - m.inner.born_timestamp;
                let store = now - m.store_timestamp;
                w.0 += 1;
                w.1 += born;
                w.2 += store;
                w.3 = w.3.max(born);
                w.4 = w.4.max(store);
            }
            c2.fetch_add(msgs.len() as u64, Ordering::Relaxed);
            ConsumeResult::Success
        }))
        .await?;
    let start = Instant::now();
    let mut last = Instant::now();
    while start.elapsed().as_secs_f64() < a.seconds {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (n, born, store, mb, ms) = std::mem::take(&mut *b2c.lock().unwrap());
        let dt = last.elapsed().as_secs_f64();
        last = Instant::now();
        let avg = |t: i64| if n > 0 { t as f64 / n as f64 } else { 0.0 };
        println!(
            "Consume TPS: {:.0} AVG(B2C) RT(ms): {:7.3} AVG(S2C) RT(ms): {:7.3} MAX(B2C) RT(ms): {} MAX(S2C) RT(ms): {}",
            n as f64 / dt, avg(born), avg(store), mb, ms
        );
    }
    println!("consumed {} messages in {:.1} s", count.load(Ordering::Relaxed), start.elapsed().as_secs_f64());
    consumer.shutdown().await;
    Ok(())
}

/// Echo server: answers every frame with the same bytes.
pub async fn echo_server(bind: &str) -> Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut poll = BusyPoll::new(busy_poll_max());
                loop {
                    match read_polled(&mut s, &mut buf, &mut poll).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// A read that polls the socket within `poll`'s window before it sleeps, as Keel's
/// connections do (`keel_core::rt::net::BusyPoll`), so the echo baseline waits for its peer
/// the same way the client and broker measured against it do.
async fn read_polled(s: &mut tokio::net::TcpStream, buf: &mut [u8], poll: &mut BusyPoll) -> std::io::Result<usize> {
    loop {
        let found = poll
            .spin(|| match s.try_read(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
                r => Some(r),
            })
            .await;
        if let Some(r) = found {
            return r;
        }
        poll.sleeping();
        s.readable().await?;
        match s.try_read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            r => {
                poll.woke();
                return r;
            }
        }
    }
}

/// The bytes a producer sends for one message of `size` (a SEND_MESSAGE_V2 frame).
fn send_frame(size: usize) -> Vec<u8> {
    let h = SendMessageHeader {
        producer_group: "benchmark_producer".into(),
        topic: "BenchmarkTest".into(),
        default_topic: "TBW102".into(),
        default_topic_queue_nums: 4,
        properties: "UNIQ_KEY\u{1}7F00000177C59629002D089400000000\u{2}WAIT\u{1}true\u{2}".into(),
        ..Default::default()
    };
    RemotingCommand::request(310, h.to_v2()).with_body(body_of(size)).to_bytes().to_vec()
}

/// `threads` connections, each writing the frame and reading it back, for `seconds`.
pub async fn echo(addr: &str, size: usize, threads: usize, seconds: f64) -> Result<Outcome> {
    let frame = Arc::new(send_frame(size));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..threads {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let (frame, stop) = (frame.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = histogram();
            let mut buf = vec![0u8; frame.len()];
            let mut poll = BusyPoll::new(busy_poll_max());
            let mut n = 0u64;
            'run: while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                if s.write_all(&frame).await.is_err() {
                    break;
                }
                let mut got = 0;
                while got < buf.len() {
                    match read_polled(&mut s, &mut buf[got..], &mut poll).await {
                        Ok(0) | Err(_) => break 'run,
                        Ok(k) => got += k,
                    }
                }
                let _ = h.record(t.elapsed().as_micros().max(1) as u64);
                n += 1;
            }
            (h, n)
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut h = histogram();
    let mut n = 0;
    for t in tasks {
        let (th, tn) = t.await?;
        h.add(&th).expect("same bounds");
        n += tn;
    }
    Ok(Outcome::of(&h, n, 0, start.elapsed().as_secs_f64()))
}

pub fn sibling(name: &str) -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let p = me.with_file_name(name);
    if !p.exists() {
        bail!("{} not found next to the bench binary; build it with `cargo build --release -p keel`", p.display());
    }
    Ok(p)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// CPU time (user + system) a process has used, in µs, from `/proc/<pid>/stat`.
pub fn cpu_us(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // In USER_HZ ticks, which Linux fixes at 100 for /proc.
    Some(ticks * 10_000)
}

pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        terminate(self.0.id());
        let _ = self.0.wait();
    }
}

fn terminate(pid: u32) {
    let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).stderr(Stdio::null()).status();
}

pub async fn wait_port(addr: &str) -> Result<()> {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!("{addr} did not come up")
}

/// The broker's commitlog sync count, total sync time (µs) and log end so far.
async fn sync_totals(admin: &Admin) -> Option<(u64, u64, u64)> {
    let info = admin.runtime_info("127.0.0.1:10911").await.ok()?;
    let num = |k: &str| info.get(k)?.parse().ok();
    Some((num("flushCount")?, num("flushTotalMicros")?, num("commitLogMaxOffset")?))
}

/// Prints the bare disk's group sync (`pwrite` + `fdatasync` of `group` bytes into a
/// pre-written file on the broker's disk) and the SYNC_FLUSH ceiling it sets for `senders`
/// in a closed loop: whole groups, one sync at a time, each round `senders` sends at the
/// ASYNC_FLUSH pace and then one sync. The bare sync is measured back to back, and after a
/// busy gap as long as those sends, during which the disk idles as it does in such a round.
async fn ceiling(dir: &std::path::Path, group: u64, senders: usize, async_rate: f64, sync_rate: f64) -> Result<()> {
    let sends = crate::store::sync_ceiling(senders, async_rate, 0.0).0;
    let gaps = [Duration::ZERO, Duration::from_secs_f64(sends / 1e6)];
    let dir = dir.to_path_buf();
    let bare =
        tokio::task::spawn_blocking(move || crate::store::bare_group_sync(&dir, group.max(1), 1.0, &gaps)).await??;
    let ((mean, p50), (gapped, _)) = (bare[0], bare[1]);
    let (_, most) = crate::store::sync_ceiling(senders, async_rate, mean);
    println!(
        "           bare group sync of {group} B: {mean:.0} µs mean, {p50:.0} µs p50; {senders} ASYNC_FLUSH sends take {sends:.0} µs, so the ceiling is {most:.0} msgs/s ({:.0}% of ASYNC_FLUSH); reached {:.0}% of it",
        100.0 * most / async_rate,
        100.0 * sync_rate / most
    );
    let (_, most) = crate::store::sync_ceiling(senders, async_rate, gapped);
    println!(
        "           the bare sync after {sends:.0} µs of sends: {gapped:.0} µs mean, so at most {most:.0} msgs/s ({:.0}% of ASYNC_FLUSH); reached {:.0}% of it",
        100.0 * most / async_rate,
        100.0 * sync_rate / most
    );
    Ok(())
}

/// The whole matrix, one broker process per flush mode, with the echo baseline measured in
/// between at each size and concurrency.
pub async fn cluster(a: &ClusterArgs) -> Result<()> {
    let broker_bin = sibling("broker")?;
    let bench_bin = std::env::current_exe()?;
    let echo_proc = Proc(
        Command::new(&bench_bin).args(["echo-server", "--bind", "127.0.0.1:19999"]).stdout(Stdio::null()).spawn()?,
    );
    wait_port("127.0.0.1:19999").await?;
    let mut rows: Vec<(String, usize, usize, Outcome, Outcome)> = Vec::new();
    for flush in &a.flush {
        let _ = std::fs::remove_dir_all(&a.dir);
        std::fs::create_dir_all(&a.dir)?;
        let conf = a.dir.join("broker.properties");
        std::fs::write(
            &conf,
            format!(
                "brokerName=bench\nlistenPort=10911\nnamesrvAddr=127.0.0.1:9876\nflushDiskType={flush}\nstorePathRootDir={}\n",
                a.dir.join("store").display()
            ) + &a.set.iter().map(|kv| format!("{kv}\n")).collect::<String>(),
        )?;
        let ns = Proc(Command::new(sibling("namesrv")?).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?);
        wait_port("127.0.0.1:9876").await?;
        let mut cmd = Command::new(&broker_bin);
        cmd.args(["-c", conf.to_str().unwrap()]).stdout(Stdio::null()).stderr(Stdio::null());
        if let Some(t) = a.broker_threads {
            cmd.env("KEEL_WORKER_THREADS", t.to_string());
        }
        let broker = Proc(cmd.spawn()?);
        wait_port("127.0.0.1:10911").await?;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let idle_rss = rss_kib(broker.0.id()).unwrap_or(0);
        println!("== {flush}: broker idle RSS {} KiB", idle_rss);
        let admin = Admin::new(ClientConfig::new("127.0.0.1:9876"));
        for &size in &a.sizes {
            for &threads in &a.threads {
                let echo_o = echo("127.0.0.1:19999", size, threads, a.seconds.min(3.0)).await?;
                print_percentiles(&format!("echo     {size:>5} B x{threads:<3}"), &echo_o);
                let args = ProduceArgs {
                    namesrv: "127.0.0.1:9876".into(),
                    topic: "BenchmarkTest".into(),
                    size,
                    threads,
                    seconds: a.seconds,
                    r#async: false,
                    report: a.seconds,
                };
                let before = sync_totals(&admin).await;
                let cpu0 = (cpu_us(std::process::id()), cpu_us(broker.0.id()));
                let o = produce(&args).await?;
                let cpu1 = (cpu_us(std::process::id()), cpu_us(broker.0.id()));
                print_percentiles(&format!("produce  {size:>5} B x{threads:<3}"), &o);
                if let ((Some(c0), Some(b0)), (Some(c1), Some(b1))) = (cpu0, cpu1) {
                    let per = |d: u64| d as f64 / o.ops.max(1) as f64;
                    println!("           CPU per send: client {:.1} µs, broker {:.1} µs", per(c1 - c0), per(b1 - b0));
                }
                if let (Some((c0, us0, end0)), Some((c1, us1, end1))) = (before, sync_totals(&admin).await) {
                    if c1 > c0 {
                        let syncs = (c1 - c0) as f64;
                        println!(
                            "           commitlog syncs: {} ({:.1} msgs/sync, {:.0} µs/sync)",
                            c1 - c0,
                            o.ops as f64 / syncs,
                            (us1 - us0) as f64 / syncs
                        );
                        let async_rate = rows
                            .iter()
                            .find(|(f, s, t, _, _)| f == "ASYNC_FLUSH" && *s == size && *t == threads)
                            .map(|r| r.3.rate());
                        if let (true, Some(rate)) = (flush == "SYNC_FLUSH", async_rate) {
                            ceiling(&a.dir, (end1 - end0) / (c1 - c0), threads, rate, o.rate()).await?;
                        }
                    }
                }
                rows.push((flush.clone(), size, threads, o, echo_o));
            }
        }
        let busy_rss = rss_kib(broker.0.id()).unwrap_or(0);
        println!("== {flush}: broker RSS after the runs {} KiB", busy_rss);
        drop(broker);
        drop(ns);
        let _ = std::fs::remove_dir_all(&a.dir);
    }
    drop(echo_proc);
    println!();
    println!("| flush | size | senders | msgs/s | p50 µs | p99 µs | echo msgs/s | echo p50 µs | % of echo |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (flush, size, threads, o, e) in &rows {
        println!(
            "| {flush} | {size} B | {threads} | {:.0} | {} | {} | {:.0} | {} | {:.0}% |",
            o.rate(),
            o.p50_us,
            o.p99_us,
            e.rate(),
            e.p50_us,
            100.0 * o.rate() / e.rate()
        );
    }
    std::io::stdout().flush()?;
    Ok(())
}
