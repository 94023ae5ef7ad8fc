//! Store benchmarks: append throughput/latency per flush mode, size and writer count, with a
//! raw sequential-write baseline; crash recovery time.

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Args;
use hdrhistogram::Histogram;
use keel_core::rt::disk::Disk;
use keel_core::store::record::{hex_upper, properties_to_string, record_len, MessageInner};
use keel_core::store::{FlushDiskType, MessageStore, PutStatus, StoreConfig};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct StoreArgs {
    /// Directory for the store files (on the disk being measured; removed afterwards).
    #[arg(long, default_value = "target/bench-store")]
    dir: PathBuf,
    /// Seconds each configuration appends for.
    #[arg(long, default_value_t = 4.0)]
    seconds: f64,
    /// Message body sizes in bytes.
    #[arg(long, value_delimiter = ',', default_value = "128,1024")]
    sizes: Vec<usize>,
    /// Concurrent writer counts.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    writers: Vec<usize>,
    /// Flush modes: async, sync.
    #[arg(long, value_delimiter = ',', default_value = "async,sync")]
    flush: Vec<String>,
    /// Tokio worker threads (0 = current-thread runtime); by default the broker's.
    #[arg(long, default_value_t = keel::default_workers())]
    threads: usize,
    /// Commitlog segment size in MiB (mappedFileSizeCommitLog; smaller means more segment
    /// crossings per run).
    #[arg(long, default_value_t = 1024)]
    segment_mib: u64,
    /// Extra store properties (`key=value`, repeatable), as in broker.properties, e.g.
    /// `--set warmMapedFileEnable=false` or `--set messageIndexEnable=false`.
    #[arg(long)]
    set: Vec<String>,
}

#[derive(Args)]
pub struct RecoveryArgs {
    #[arg(long, default_value = "target/bench-recovery")]
    dir: PathBuf,
    /// Log size to write before the crash, in MiB.
    #[arg(long, default_value_t = 1024)]
    log_mib: u64,
    /// Message body size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
}

fn runtime(threads: usize) -> Result<tokio::runtime::Runtime> {
    let rt = if threads == 0 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()?
    };
    Ok(rt)
}

/// Nanoseconds from 1 ns to 60 s, 3 significant digits.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds")
}

/// Message `n` of a run: 8 queues, a tag and a unique key, as a producer sends them. Built
/// cheaply (the hosts parsed once), so the put is what the run measures: perf put the old
/// construction (address parsing, hex of a concatenation) at ~14 % of a writer's CPU.
fn message(body: &Bytes, n: u64) -> MessageInner {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
    // The same key `hex_upper` makes of 7F 00 00 01 and n's 8 big-endian bytes (not by
    // `format!`, whose hex formatting was 3 % of the writer's CPU, counted against the store).
    let mut raw = [0u8; 12];
    raw[..4].copy_from_slice(&[0x7F, 0, 0, 1]);
    raw[4..].copy_from_slice(&n.to_be_bytes());
    let uniq = hex_upper(&raw);
    MessageInner::new(
        "BenchmarkTest",
        (n % 8) as i32,
        body.clone(),
        properties_to_string([("UNIQ_KEY", uniq.as_str()), ("WAIT", "true"), ("TAGS", "TagA")]),
        SocketAddr::new(LOCAL, 50000),
        SocketAddr::new(LOCAL, 10911),
    )
}

struct Outcome {
    msgs: u64,
    bytes: u64,
    elapsed: Duration,
    hist: Histogram<u64>,
    timeouts: u64,
    syncs: u64,
    sync_nanos: u64,
    /// Bytes the process sent (or will send) to the disk meanwhile, from `/proc/self/io`.
    disk_bytes: Option<u64>,
    /// Latency (ns) of each put that opened a new commitlog segment (the first record there).
    crossings: Vec<u64>,
    /// The part of `elapsed` after the last put: the final flush (or the baseline's fdatasync).
    final_flush: Duration,
    /// Puts whose records another put appended (the store's combining appender).
    combined: u64,
}

impl Outcome {
    fn line(&self, label: &str) -> String {
        let s = self.elapsed.as_secs_f64();
        let q = |p: f64| self.hist.value_at_quantile(p) as f64 / 1000.0;
        format!(
            "{label:<34} {:>10.0} msgs/s {:>8.1} MB/s  p50 {:>8.1} µs  p99 {:>8.1} µs  p999 {:>8.1} µs  max {:>9.1} µs{}",
            self.msgs as f64 / s,
            self.bytes as f64 / s / 1e6,
            q(0.5),
            q(0.99),
            q(0.999),
            self.hist.max() as f64 / 1000.0,
            if self.timeouts > 0 { format!("  ({} FLUSH_DISK_TIMEOUT)", self.timeouts) } else { String::new() }
        ) + &if self.syncs > 0 && self.msgs > 0 {
            format!("  [{} syncs, {:.1} msgs/sync, {:.0} µs/sync]", self.syncs, self.msgs as f64 / self.syncs as f64, self.sync_nanos as f64 / self.syncs as f64 / 1000.0)
        } else {
            String::new()
        } + &if self.combined > 0 {
            format!("  [{:.0} % appended by another put]", 100.0 * self.combined as f64 / self.msgs.max(1) as f64)
        } else {
            String::new()
        } + &match self.disk_bytes {
            Some(d) if self.msgs > 0 => format!("  [disk writes {:.1}x the log bytes]", d as f64 / self.bytes as f64),
            _ => String::new(),
        } + &if self.crossings.is_empty() {
            String::new()
        } else {
            let us: Vec<String> = self.crossings.iter().map(|n| format!("{:.0}", *n as f64 / 1000.0)).collect();
            format!("  [puts opening a segment: {} µs]", us.join(", "))
        } + &if self.msgs > 0 {
            format!("  [final flush {:.0} ms]", self.final_flush.as_secs_f64() * 1000.0)
        } else {
            String::new()
        }
    }
}

struct Run<'a> {
    dir: &'a Path,
    flush: FlushDiskType,
    size: usize,
    writers: usize,
    secs: f64,
    segment: u64,
    set: &'a [String],
}

async fn append_run(run: Run<'_>) -> Result<Outcome> {
    let Run { dir, flush, size, writers, secs, segment, set } = run;
    let _ = std::fs::remove_dir_all(dir);
    let mut cfg = StoreConfig {
        store_path_root_dir: dir.to_path_buf(),
        flush_disk_type: flush,
        mapped_file_size_commit_log: segment,
        ..StoreConfig::default()
    };
    for kv in set {
        let (k, v) = kv.split_once('=').with_context(|| format!("--set '{kv}': expected key=value"))?;
        match cfg.set(k.trim(), v) {
            Ok(true) => {}
            Ok(false) => anyhow::bail!("--set '{kv}': '{}' is not a store property", k.trim()),
            Err(e) => anyhow::bail!("--set '{kv}': {e}"),
        }
    }
    let store = MessageStore::open(cfg, Disk::Real).await.context("open store")?;
    let body = Bytes::from(vec![b'x'; size]);
    let rec_len = record_len(&message(&body, 0), store.config().enabled_append_prop_crc) as u64;
    let counter = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let disk_before = disk_write_bytes();
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let (store, body, counter) = (store.clone(), body.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = latency_histogram();
            let mut timeouts = 0;
            let mut crossings = Vec::new();
            loop {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let msg = message(&body, n);
                let t = Instant::now();
                let r = store.put(&msg).await.expect("put");
                let done = Instant::now();
                let nanos = (done - t).as_nanos() as u64;
                hist.saturating_record(nanos);
                timeouts += u64::from(r.status != PutStatus::PutOk);
                if r.phys_offset > 0 && r.phys_offset % segment == 0 {
                    crossings.push(nanos);
                }
                if done >= deadline {
                    break;
                }
            }
            (hist, timeouts, crossings)
        }));
    }
    let mut hist = latency_histogram();
    let mut timeouts = 0;
    let mut crossings = Vec::new();
    for t in tasks {
        let (h, to, c) = t.await?;
        hist.add(h).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        timeouts += to;
        crossings.extend(c);
    }
    // Durable at the end in both modes, like the baseline's final fdatasync.
    let (syncs, sync_nanos) = store.flush_stats();
    let combined = store.combined_appends();
    let appended = started.elapsed();
    store.flush_all().await?;
    let elapsed = started.elapsed();
    let final_flush = elapsed - appended;
    store.shutdown().await?;
    let disk_bytes = disk_write_bytes().zip(disk_before).map(|(a, b)| a - b);
    std::fs::remove_dir_all(dir)?;
    let msgs = hist.len();
    Ok(Outcome {
        msgs,
        bytes: msgs * rec_len,
        elapsed,
        hist,
        timeouts,
        syncs,
        sync_nanos,
        disk_bytes,
        crossings,
        final_flush,
        combined,
    })
}

/// `write_bytes` of `/proc/self/io`: what this process has caused to be written to storage
/// (counted as pages are dirtied, so a write through a mapping counts the whole page or
/// folio it dirties). `None` where the kernel does not say.
fn disk_write_bytes() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines().find_map(|l| l.strip_prefix("write_bytes: ")).and_then(|v| v.trim().parse().ok())
}

/// The SYNC_FLUSH ceiling a disk sets for `writers` in a closed loop, one sync at a time,
/// each group all of them: a round is `writers` appends at the ASYNC_FLUSH pace
/// (`async_rate` msgs/s), then one sync of `sync_us`. Returns (the round's appends in µs,
/// the ceiling in msgs/s).
pub(crate) fn sync_ceiling(writers: usize, async_rate: f64, sync_us: f64) -> (f64, f64) {
    let appends = writers as f64 / async_rate * 1e6;
    (appends, writers as f64 / (sync_us + appends) * 1e6)
}

/// The disk's own cost of one group commit, for SYNC_FLUSH runs: `pwrite` of `group` bytes
/// then `fdatasync`, at sequential positions for `secs`, into a file written whole and synced
/// beforehand and still in the page cache (no extent changes, no reads, nothing else dirty:
/// the best case a group sync can meet here). Filled in 1 MiB writes: filled a page at a
/// time instead (4 KiB folios, as the store keeps them) it measured no faster (two pairs:
/// 1 KiB x64 groups 251-253 µs against 175-198 µs). Returns, for each of `gaps` in turn, the
/// mean and median µs per sync over `secs` of syncs each followed by that busy gap.
///
/// A gap stands for the time a store spends appending the next group: on this VM a sync that
/// follows an idle disk takes longer than one that follows the last (2026-12-03, `bench
/// cluster`'s groups: 99-134 µs back to back, 141-167 µs after a round's sends).
pub(crate) fn bare_group_sync(dir: &Path, group: u64, secs: f64, gaps: &[Duration]) -> Result<Vec<(f64, f64)>> {
    use std::os::unix::fs::FileExt;
    std::fs::create_dir_all(dir)?;
    let path = dir.join("bare-group-sync");
    let size: u64 = 64 << 20;
    let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?;
    let chunk = vec![0u8; 1 << 20];
    for at in (0..size).step_by(chunk.len()) {
        f.write_all_at(&chunk, at)?;
    }
    f.sync_all()?;
    let data = vec![b'g'; group as usize];
    let mut at = 0u64;
    let mut out = Vec::with_capacity(gaps.len());
    for &gap in gaps {
        let mut took = Vec::new();
        let started = Instant::now();
        while started.elapsed().as_secs_f64() < secs {
            if at + group > size {
                at = 0;
            }
            let t = Instant::now();
            f.write_all_at(&data, at)?;
            f.sync_data()?;
            took.push(t.elapsed().as_secs_f64() * 1e6);
            at += group;
            let idle = Instant::now();
            while idle.elapsed() < gap {
                std::hint::spin_loop();
            }
        }
        took.sort_by(f64::total_cmp);
        let mean = took.iter().sum::<f64>() / took.len().max(1) as f64;
        out.push((mean, took.get(took.len() / 2).copied().unwrap_or(0.0)));
    }
    std::fs::remove_file(&path)?;
    Ok(out)
}

/// The physical baseline: the same number of bytes, sequential 1 MiB writes, one fdatasync.
///
/// On a guest that hands freed memory back to its host (free page reporting), its speed
/// depends on what ran before: into page cache the host still backs it runs at memcpy speed
/// (1–2 GB/s on the VM BENCHMARKS.md was measured on), into memory the host must fault in
/// again at 150–300 MB/s, and which one a run meets depends on the sizes of the folios the
/// run before freed.
fn raw_sequential(dir: &Path, bytes: u64) -> Result<Outcome> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("raw");
    let chunk = vec![b'x'; 1 << 20];
    let started = Instant::now();
    let mut f = std::fs::File::create(&path)?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    let written = started.elapsed();
    f.sync_data()?;
    let elapsed = started.elapsed();
    std::fs::remove_file(&path)?;
    let mut hist = latency_histogram();
    hist.saturating_record(elapsed.as_nanos() as u64);
    Ok(Outcome {
        msgs: 0,
        bytes,
        elapsed,
        hist,
        timeouts: 0,
        syncs: 1,
        sync_nanos: 0,
        disk_bytes: None,
        crossings: Vec::new(),
        final_flush: elapsed - written,
        combined: 0,
    })
}

pub fn run_store(a: StoreArgs) -> Result<()> {
    let rt = runtime(a.threads)?;
    println!(
        "bench store: {} s per run, runtime {}, dir {}",
        a.seconds,
        if a.threads == 0 { "current-thread".to_string() } else { format!("{} workers", a.threads) },
        a.dir.display()
    );
    if !a.set.is_empty() {
        println!("store properties: {}", a.set.join(" "));
    }
    for &size in &a.sizes {
        let mut async_best = 0.0f64;
        // ASYNC_FLUSH msgs/s by writer count, for the SYNC_FLUSH runs' ceiling.
        let mut async_rate = std::collections::HashMap::new();
        for flush in &a.flush {
            let mode = match flush.as_str() {
                "async" => FlushDiskType::AsyncFlush,
                "sync" => FlushDiskType::SyncFlush,
                other => anyhow::bail!("--flush: '{other}' is not async or sync"),
            };
            for &w in &a.writers {
                let dir = a.dir.join("run");
                let run = Run {
                    dir: &dir,
                    flush: mode,
                    size,
                    writers: w,
                    secs: a.seconds,
                    segment: a.segment_mib << 20,
                    set: &a.set,
                };
                let o = rt.block_on(append_run(run))?;
                let mbps = o.bytes as f64 / o.elapsed.as_secs_f64() / 1e6;
                let label = format!("{}_FLUSH {size} B x{w} writers", flush.to_uppercase());
                println!("{}", o.line(&label));
                if mode == FlushDiskType::AsyncFlush {
                    async_best = async_best.max(mbps);
                    async_rate.insert(w, o.msgs as f64 / o.elapsed.as_secs_f64());
                    // Twice: what the first finds in memory depends on what the store run
                    // freed (see `raw_sequential`); the second reuses the first's pages. The
                    // store is held against the faster.
                    let rate = |o: &Outcome| o.bytes as f64 / o.elapsed.as_secs_f64() / 1e6;
                    let (first, second) = (raw_sequential(&a.dir, o.bytes)?, raw_sequential(&a.dir, o.bytes)?);
                    let raw_mbps = rate(&first).max(rate(&second));
                    let ms = |o: &Outcome| o.final_flush.as_secs_f64() * 1000.0;
                    println!(
                        "{:<34} {:>26.1} MB/s  (same {} bytes, runs {:.0} and {:.0} MB/s, fdatasync {:.0} and {:.0} ms; store reached {:.0}% of the faster)",
                        "  raw sequential + fdatasync",
                        raw_mbps,
                        o.bytes,
                        rate(&first),
                        rate(&second),
                        ms(&first),
                        ms(&second),
                        100.0 * mbps / raw_mbps
                    );
                } else {
                    if async_best > 0.0 {
                        println!(
                            "{:<34} {:>26.0}% of the best ASYNC_FLUSH run at this size",
                            "",
                            100.0 * mbps / async_best
                        );
                    }
                    if o.syncs > 0 && o.msgs > 0 {
                        let group = (o.bytes / o.syncs).max(1);
                        let rate = async_rate.get(&w).copied();
                        // The disk idles while a group appends: the sync after that gap too.
                        let appends = rate.map(|r| sync_ceiling(w, r, 0.0).0);
                        let gaps: Vec<Duration> = std::iter::once(Duration::ZERO)
                            .chain(appends.map(|us| Duration::from_secs_f64(us / 1e6)))
                            .collect();
                        let bare = bare_group_sync(&a.dir, group, 1.0, &gaps)?;
                        let (mean, p50) = bare[0];
                        println!(
                            "  bare group sync: pwrite + fdatasync of {group} B (one group's bytes) into a pre-written file: {mean:.0} µs mean, {p50:.0} µs p50; the store's group sync {:.0} µs",
                            o.sync_nanos as f64 / o.syncs as f64 / 1000.0
                        );
                        if let (Some(rate), Some(&(gapped, _))) = (rate, bare.get(1)) {
                            let (appends, ceiling) = sync_ceiling(w, rate, mean);
                            println!(
                                "  ceiling at this disk: {w} ASYNC_FLUSH puts take {appends:.0} µs, so {w} writers with whole groups and one bare sync at a time reach at most {ceiling:.0} msgs/s ({:.0}% of ASYNC_FLUSH x{w}); the store reached {:.0}% of that ceiling",
                                100.0 * ceiling / rate,
                                100.0 * (o.msgs as f64 / o.elapsed.as_secs_f64()) / ceiling
                            );
                            let (_, ceiling) = sync_ceiling(w, rate, gapped);
                            println!(
                                "  the bare sync after {appends:.0} µs of appending: {gapped:.0} µs mean, so at most {ceiling:.0} msgs/s ({:.0}% of ASYNC_FLUSH x{w}); the store reached {:.0}% of that",
                                100.0 * ceiling / rate,
                                100.0 * (o.msgs as f64 / o.elapsed.as_secs_f64()) / ceiling
                            );
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

pub fn run_recovery(a: RecoveryArgs) -> Result<()> {
    let rt = runtime(2)?;
    rt.block_on(async {
        let _ = std::fs::remove_dir_all(&a.dir);
        // No checkpoint during the write: the crash leaves recovery the whole log to scan and
        // the whole index to rebuild (the worst case).
        let cfg = StoreConfig {
            store_path_root_dir: a.dir.clone(),
            flush_interval_consume_queue_ms: 3_600_000,
            ..StoreConfig::default()
        };
        let store = MessageStore::open(cfg.clone(), Disk::Real).await?;
        let body = Bytes::from(vec![b'r'; a.size]);
        let target = a.log_mib << 20;
        let mut n = 0;
        let t = Instant::now();
        while store.commitlog_max_offset() < target {
            store.put(&message(&body, n)).await?;
            n += 1;
        }
        let log_bytes = store.commitlog_max_offset();
        println!("wrote {n} messages, {log_bytes} log bytes in {:.2} s", t.elapsed().as_secs_f64());
        store.abandon().await;
        drop(store);
        let t = Instant::now();
        let store = MessageStore::open(cfg.clone(), Disk::Real).await?;
        let crash = t.elapsed();
        assert_eq!(store.commitlog_max_offset(), log_bytes, "recovery kept the whole log");
        let queued: u64 = (0..8).map(|q| store.max_offset("BenchmarkTest", q)).sum();
        assert_eq!(queued, n, "every message is back in its consume queue");
        println!(
            "recovery after crash: {:.3} s ({:.0} MB/s scanned, CRC-checked, re-dispatched)",
            crash.as_secs_f64(),
            log_bytes as f64 / crash.as_secs_f64() / 1e6
        );
        store.shutdown().await?;
        let t = Instant::now();
        let store = MessageStore::open(cfg, Disk::Real).await?;
        println!("start after clean shutdown: {:.3} s", t.elapsed().as_secs_f64());
        store.shutdown().await?;
        std::fs::remove_dir_all(&a.dir)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::sync_ceiling;

    #[test]
    fn the_sync_ceiling_is_whole_rounds_of_appends_then_one_sync() {
        // 64 appends at 640k/s take 100 µs; with a 100 µs sync a round is 200 µs.
        let (appends, ceiling) = sync_ceiling(64, 640_000.0, 100.0);
        assert!((appends - 100.0).abs() < 1e-9);
        assert!((ceiling - 320_000.0).abs() < 1e-6);
    }

    #[test]
    fn unique_keys_are_what_the_broker_would_make() {
        for n in [0u64, 1, 0xABCDEF, u64::MAX] {
            let key = keel_core::store::record::hex_upper(&[&[0x7F, 0, 0, 1][..], &n.to_be_bytes()[..]].concat());
            assert_eq!(format!("7F000001{n:016X}"), key);
        }
    }
}
