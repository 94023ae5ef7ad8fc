//! `bench replication`: send throughput and latency of a single master, two masters without
//! slaves, 2m-2s-async and 2m-2s-sync (the shipped conf files, as broker processes), in one
//! run; the replication lag of broker-a's slave sampled during the 2m-2s runs; and, on
//! 2m-2s-sync, how long a consumer takes to resume broker-a's queues from the slave after its
//! master is killed with SIGKILL.

use super::net::{cpu_us, print_percentiles, produce, sibling, wait_port, Outcome, Proc, ProduceArgs};
use anyhow::{Context, Result};
use clap::Args;
use hdrhistogram::Histogram;
use keel_core::client::{Admin, ClientConfig, ConsumeFromWhere, ConsumeResult, PushConsumer};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Args, Clone)]
pub struct ReplicationArgs {
    /// Seconds per configuration and sender count.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Synchronous senders per run: one sender shows latency, 32 a load below capacity, 256
    /// the cluster at capacity (where RocketMQ's "sync about 10 % slower" is a throughput
    /// claim to compare against).
    #[arg(long, value_delimiter = ',', default_value = "1,32,256")]
    threads: Vec<usize>,
    /// Where the brokers keep their stores (removed afterwards).
    #[arg(long, default_value = "target/bench-replication")]
    dir: PathBuf,
    /// Setups to run, in this order (repeats allowed, e.g. to alternate sync and async):
    /// single, 2m-noslave, 2m-2s-async, 2m-2s-sync.
    #[arg(long, value_delimiter = ',', default_value = "single,2m-noslave,2m-2s-async,2m-2s-sync")]
    setups: Vec<String>,
    /// Runs the setups this many times, every other round in reverse order (A B, B A, ...),
    /// so that drift in the machine's speed over the run favours neither; with both 2m-2s
    /// setups, a summary of sync against async follows the table.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Skip the consumer resume measurement.
    #[arg(long)]
    no_resume: bool,
    /// Worker threads of each broker process (KEEL_WORKER_THREADS; default: the broker's).
    #[arg(long)]
    broker_threads: Option<usize>,
    /// Worker threads of each slave process only (overrides --broker-threads for slaves).
    #[arg(long)]
    slave_threads: Option<usize>,
}

/// (label, conf directory, broker files)
const SETUPS: [(&str, &str, &[&str]); 4] = [
    ("single", "conf/2m-2s-async", &["broker-a"]),
    ("2m-noslave", "conf/2m-noslave", &["broker-a", "broker-b"]),
    ("2m-2s-async", "conf/2m-2s-async", &["broker-a", "broker-a-s", "broker-b", "broker-b-s"]),
    ("2m-2s-sync", "conf/2m-2s-sync", &["broker-a", "broker-a-s", "broker-b", "broker-b-s"]),
];

const NAMESRV: &str = "127.0.0.1:9876";

struct Cluster {
    procs: Vec<(String, String, Proc)>,
    _ns: Proc,
}

/// Starts the name server and the named brokers of a conf set, stores under `dir`.
async fn start(
    conf: &Path,
    nodes: &[&str],
    dir: &Path,
    threads: Option<usize>,
    slave_threads: Option<usize>,
) -> Result<Cluster> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let ns = Proc(Command::new(sibling("namesrv")?).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?);
    wait_port(NAMESRV).await?;
    let mut procs = Vec::new();
    for node in nodes {
        let text = std::fs::read_to_string(conf.join(format!("{node}.properties")))
            .with_context(|| format!("reading {}/{node}.properties", conf.display()))?;
        let mut lines: Vec<String> =
            text.lines().filter(|l| !l.starts_with("storePathRootDir=")).map(String::from).collect();
        lines.push(format!("storePathRootDir={}", dir.join(node).display()));
        let port = text.lines().find_map(|l| l.strip_prefix("listenPort=")).context("listenPort")?.trim().to_string();
        let file = dir.join(format!("{node}.properties"));
        std::fs::write(&file, lines.join("\n"))?;
        let mut cmd = Command::new(sibling("broker")?);
        cmd.args(["-c", file.to_str().unwrap()]).stdout(Stdio::null()).stderr(Stdio::null());
        let threads = if node.ends_with("-s") { slave_threads.or(threads) } else { threads };
        if let Some(t) = threads {
            cmd.env("KEEL_WORKER_THREADS", t.to_string());
        }
        let child = cmd.spawn()?;
        let addr = format!("127.0.0.1:{port}");
        procs.push((node.to_string(), addr.clone(), Proc(child)));
        wait_port(&addr).await?;
    }
    // Slaves attach and everyone registers.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    Ok(Cluster { procs, _ns: ns })
}

/// One line of the summary table.
struct Row {
    label: String,
    threads: usize,
    o: Outcome,
    lag: Option<Histogram<u64>>,
    cpu: Option<CpuPerSend>,
}

/// CPU time (user + system) per SEND_OK, in µs, summed by role.
struct CpuPerSend {
    client: f64,
    masters: f64,
    slaves: f64,
}

impl Cluster {
    /// CPU time used so far by this process, then by each broker (in `procs` order); `None`
    /// where `/proc` does not say.
    fn cpu_us(&self) -> Option<Vec<u64>> {
        std::iter::once(std::process::id()).chain(self.procs.iter().map(|p| p.2 .0.id())).map(cpu_us).collect()
    }

    /// CPU used since `before` (from [`Cluster::cpu_us`]) per send; a broker whose name ends
    /// in "-s" is a slave, the others masters.
    fn cpu_per_send(&self, before: &[u64], sends: u64) -> Option<CpuPerSend> {
        let after = self.cpu_us()?;
        let per_send = |i: usize| after[i].saturating_sub(before[i]) as f64 / sends.max(1) as f64;
        let mut cpu = CpuPerSend { client: per_send(0), masters: 0.0, slaves: 0.0 };
        for (i, (name, ..)) in self.procs.iter().enumerate() {
            if name.ends_with("-s") {
                cpu.slaves += per_send(i + 1);
            } else {
                cpu.masters += per_send(i + 1);
            }
        }
        Some(cpu)
    }
}

async fn served(admin: &Admin, addr: &str) -> Option<u64> {
    admin.runtime_info(addr).await.ok()?.get("msgGetTotalTodayNow")?.parse().ok()
}

async fn max_offset(admin: &Admin, addr: &str) -> Option<u64> {
    admin.runtime_info(addr).await.ok()?.get("commitLogMaxOffset")?.parse().ok()
}

/// Samples broker-a's master end minus its slave's end every 20 ms until `stop`.
async fn sample_lag(master: String, slave: String, stop: Arc<AtomicBool>) -> Histogram<u64> {
    let admin = Admin::new(ClientConfig::new(NAMESRV));
    let mut h = Histogram::<u64>::new_with_bounds(1, 1 << 40, 3).unwrap();
    while !stop.load(Ordering::Relaxed) {
        let (m, s) = tokio::join!(max_offset(&admin, &master), max_offset(&admin, &slave));
        if let (Some(m), Some(s)) = (m, s) {
            let _ = h.record(m.saturating_sub(s).max(1));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    admin.shutdown().await;
    h
}

pub async fn run(a: &ReplicationArgs) -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut rows: Vec<Row> = Vec::new();
    let mut resume = None;
    let order: Vec<&String> = (0..a.rounds.max(1))
        .flat_map(|r| {
            let mut round: Vec<&String> = a.setups.iter().collect();
            if r % 2 == 1 {
                round.reverse();
            }
            round
        })
        .collect();
    for name in order {
        let Some(&(label, conf, nodes)) = SETUPS.iter().find(|s| s.0 == name) else {
            anyhow::bail!("unknown setup {name}: single, 2m-noslave, 2m-2s-async or 2m-2s-sync");
        };
        let c = start(&root.join(conf), nodes, &a.dir, a.broker_threads, a.slave_threads).await?;
        println!("== {label}");
        for &threads in &a.threads {
            let args = ProduceArgs {
                namesrv: NAMESRV.into(),
                topic: "BenchmarkTest".into(),
                size: a.size,
                threads,
                seconds: a.seconds,
                r#async: false,
                report: a.seconds,
            };
            let stop = Arc::new(AtomicBool::new(false));
            let lag = (nodes.len() == 4).then(|| {
                let (m, s) = (c.procs[0].1.clone(), c.procs[1].1.clone());
                tokio::spawn(sample_lag(m, s, stop.clone()))
            });
            let cpu0 = c.cpu_us();
            let o = produce(&args).await?;
            let cpu = cpu0.and_then(|before| c.cpu_per_send(&before, o.ops));
            stop.store(true, Ordering::Relaxed);
            let lag = match lag {
                Some(t) => Some(t.await?),
                None => None,
            };
            print_percentiles(&format!("{label:<14} {} B x{threads:<3}", a.size), &o);
            if let Some(cpu) = &cpu {
                println!(
                    "               CPU per send: client {:.1} µs, masters {:.1} µs, slaves {:.1} µs",
                    cpu.client, cpu.masters, cpu.slaves
                );
            }
            rows.push(Row { label: label.to_string(), threads, o, lag, cpu });
        }
        if label == "2m-2s-sync" && !a.no_resume && resume.is_none() {
            resume = Some(resume_from_slave(c).await?);
        } else {
            drop(c);
        }
    }
    let _ = std::fs::remove_dir_all(&a.dir);
    println!();
    println!("| setup | senders | SEND_OK/s | p50 µs | p99 µs | p99.9 µs | max µs | not SEND_OK | % of 2m-noslave | slave lag p50 / p99 / max (bytes) | CPU µs per send: client / masters / slaves |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for Row { label, threads, o, lag, cpu } in &rows {
        let of_base = rows
            .iter()
            .find(|r| r.label == "2m-noslave" && r.threads == *threads)
            .map_or("–".to_string(), |b| format!("{:.0}%", 100.0 * o.rate() / b.o.rate()));
        let cpu =
            cpu.as_ref().map_or("–".to_string(), |c| format!("{:.1} / {:.1} / {:.1}", c.client, c.masters, c.slaves));
        let lag = lag.as_ref().map_or("–".to_string(), |h| {
            format!("{} / {} / {}", h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.max())
        });
        println!(
            "| {label} | {threads} | {:.0} | {} | {} | {} | {} | {} | {of_base} | {lag} | {cpu} |",
            o.rate(),
            o.p50_us,
            o.p99_us,
            o.p999_us,
            o.max_us,
            o.failed,
        );
    }
    sync_against_async(&rows, &a.threads);
    if let Some((first, resumed)) = resume {
        println!();
        println!(
            "consumer resume from broker-a's slave after SIGKILL of its master: the slave served its first pull {:.1} ms after the kill ({} broker-a messages consumed in the following 5 s)",
            first.as_secs_f64() * 1000.0,
            resumed
        );
    }
    Ok(())
}

/// For each sender count: 2m-2s-sync's SEND_OK/s against 2m-2s-async's over every run of
/// each, and the ratio of the i-th sync run to the i-th async run (neighbours in time when
/// the setups alternate).
fn sync_against_async(rows: &[Row], threads: &[usize]) {
    let rates = |label: &str, t: usize| -> Vec<f64> {
        rows.iter().filter(|r| r.label == label && r.threads == t).map(|r| r.o.rate()).collect()
    };
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let mut header = true;
    for &t in threads {
        let (sync, asy) = (rates("2m-2s-sync", t), rates("2m-2s-async", t));
        if sync.is_empty() || asy.is_empty() {
            continue;
        }
        if header {
            println!();
            println!("| senders | 2m-2s-sync runs | mean | 2m-2s-async runs | mean | sync / async (means) | pairwise: mean, sd, min–max |");
            println!("|---|---|---|---|---|---|---|");
            header = false;
        }
        let list = |v: &[f64]| v.iter().map(|x| format!("{:.1}k", x / 1000.0)).collect::<Vec<_>>().join(", ");
        let pairs: Vec<f64> = sync.iter().zip(&asy).map(|(s, a)| s / a).collect();
        let m = mean(&pairs);
        let sd = if pairs.len() > 1 {
            (pairs.iter().map(|p| (p - m).powi(2)).sum::<f64>() / (pairs.len() - 1) as f64).sqrt()
        } else {
            0.0
        };
        let (lo, hi) = pairs.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| (lo.min(*p), hi.max(*p)));
        println!(
            "| {t} | {} | {:.1}k | {} | {:.1}k | **{:.1} %** | {:.1} %, {:.1} %, {:.0}–{:.0} % ({} pairs) |",
            list(&sync),
            mean(&sync) / 1000.0,
            list(&asy),
            mean(&asy) / 1000.0,
            100.0 * mean(&sync) / mean(&asy),
            100.0 * m,
            100.0 * sd,
            100.0 * lo,
            100.0 * hi,
            pairs.len()
        );
    }
}

/// With the backlog the sends left, a consumer starts; once it has a message from broker-a,
/// broker-a's master is killed (SIGKILL); returns the time to the next broker-a message.
async fn resume_from_slave(mut c: Cluster) -> Result<(Duration, usize)> {
    let seen: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let s2 = seen.clone();
    let consumer = PushConsumer::builder("bench_resume", ClientConfig::new(NAMESRV))
        .subscribe("BenchmarkTest", "*")
        .consume_from(ConsumeFromWhere::FirstOffset)
        .start(Arc::new(move |msgs, mq| {
            let now = Instant::now();
            s2.lock().unwrap().extend(msgs.iter().map(|_| (now, mq.broker_name.clone())));
            ConsumeResult::Success
        }))
        .await?;
    let t0 = Instant::now();
    while !seen.lock().unwrap().iter().any(|(_, b)| b == "broker-a") {
        anyhow::ensure!(t0.elapsed() < Duration::from_secs(30), "no message from broker-a");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The slave's served-messages counter tells when the consumer's pulls reach it.
    let admin = Admin::new(ClientConfig::new(NAMESRV));
    let slave = c.procs[1].1.clone();
    let before = served(&admin, &slave).await.context("slave runtime info")?;
    let master = &mut c.procs[0].2 .0;
    master.kill()?; // SIGKILL
    master.wait()?;
    let killed = Instant::now();
    let first = loop {
        if served(&admin, &slave).await.is_some_and(|n| n > before) {
            break killed.elapsed();
        }
        anyhow::ensure!(killed.elapsed() < Duration::from_secs(60), "broker-a's queues did not resume from the slave");
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    let n = seen.lock().unwrap().iter().filter(|(t, b)| b == "broker-a" && *t > killed).count();
    consumer.shutdown().await;
    admin.shutdown().await;
    Ok((first, n))
}
