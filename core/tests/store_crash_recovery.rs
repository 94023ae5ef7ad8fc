//! Crash recovery, as a property over random histories on the simulated disk, and the
//! process-crash case on the real disk.
//!
//! Each case, from its seed: random messages to random queues with random sync points, then
//! a process crash or a power loss (sometimes tearing a page), then recovery; several rounds,
//! then a clean restart. After every recovery: every put that returned as durable is present
//! and intact (after a process crash, every put that returned at all); nothing corrupt is
//! readable; consume queues agree with the log; queue offsets are dense and monotonic, and
//! what survived is a prefix of what was written.
//!
//! `KEEL_SEED=<n> KEEL_CASES=<k>` replays cases n..n+k.

mod common;

use common::{message, open_sim, small_config};
use keel_core::rt::disk::{Disk, SimDisk};
use keel_core::store::{FlushDiskType, GetStatus, MessageStore, PutStatus, StoreConfig};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;

#[derive(Clone, Debug)]
struct Sent {
    topic: String,
    queue_id: i32,
    queue_offset: u64,
    phys_offset: u64,
    body: Vec<u8>,
    /// Its KEYS value (its UNIQ_KEY is the same with `U` for `k`).
    key: String,
    durable: bool,
}

fn seeds() -> (u64, u64) {
    let base = std::env::var("KEEL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x6b65_656c);
    let cases = std::env::var("KEEL_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(400);
    (base, cases)
}

fn case_config(rng: &mut SmallRng) -> StoreConfig {
    let mut cfg = small_config("/store");
    cfg.mapped_file_size_commit_log = [8 * 1024, 16 * 1024, 64 * 1024][rng.gen_range(0..3)];
    cfg.mapped_file_size_consume_queue = 20 * rng.gen_range(4..40);
    cfg.max_message_size = 4 * 1024;
    if rng.gen_bool(0.5) {
        cfg.flush_disk_type = FlushDiskType::SyncFlush;
    }
    cfg
}

/// Writes a random batch; returns what was acknowledged, in order.
async fn write_round(store: &MessageStore, rng: &mut SmallRng, round: usize, sent: &mut Vec<Sent>) {
    let sync = store.config().flush_disk_type == FlushDiskType::SyncFlush;
    let n = rng.gen_range(1..120);
    for i in 0..n {
        let topic = ["A", "B", "C"][rng.gen_range(0..3)];
        let queue_id = rng.gen_range(0..3);
        let len = rng.gen_range(0..1500);
        let body: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        let tags = ["TagA", "TagB"][rng.gen_range(0..2)];
        let key = format!("k{round}-{i}");
        let m = message(topic, queue_id, &body, Some(tags), Some(&key), &format!("U{round}-{i}"));
        let r = store.put(&m).await.expect("put succeeds on a healthy disk");
        sent.push(Sent {
            topic: topic.to_string(),
            queue_id,
            queue_offset: r.queue_offset,
            phys_offset: r.phys_offset,
            body,
            key,
            durable: sync && r.status == PutStatus::PutOk,
        });
        if rng.gen_bool(0.03) {
            store.flush_all().await.unwrap();
            sent.iter_mut().for_each(|s| s.durable = true);
        }
    }
}

/// Checks the recovered store against what was sent; returns the survivors.
async fn check_recovered(store: &MessageStore, sent: &[Sent], all_must_survive: bool, seed: u64) -> Vec<Sent> {
    if std::env::var_os("KEEL_DEBUG").is_some() {
        for s in sent.iter() {
            eprintln!(
                "DEBUG sent {}-{} q={} phys={} durable={}",
                s.topic, s.queue_id, s.queue_offset, s.phys_offset, s.durable
            );
        }
    }
    store.check_integrity().await.unwrap_or_else(|e| panic!("seed {seed}: integrity: {e}"));
    let mut survivors = Vec::new();
    let mut lost_at = None;
    for (i, s) in sent.iter().enumerate() {
        let got = store.get_message(&s.topic, s.queue_id, s.queue_offset, 1, 1 << 20, None).await.unwrap_or_else(|e| {
            panic!("seed {seed}: reading put #{i} ({}-{} offset {}): {e}", s.topic, s.queue_id, s.queue_offset)
        });
        assert_eq!(got.corrupt_skipped, 0, "seed {seed}: a corrupt record reached a reader");
        let present = got.status == GetStatus::Found && got.messages[0].phys_offset == s.phys_offset;
        if present {
            let m = store.lookup(s.phys_offset).await.unwrap();
            assert_eq!(&m.inner.body[..], &s.body[..], "seed {seed}: body of put #{i} changed");
            assert_eq!(m.queue_offset as u64, s.queue_offset, "seed {seed}: queue offset of put #{i} changed");
            assert!(lost_at.is_none(), "seed {seed}: put #{i} survived but earlier put #{lost_at:?} did not");
            // The index was rebuilt from the log wherever the checkpoint did not vouch for it.
            for key in [s.key.clone(), s.key.replacen('k', "U", 1)] {
                let found = store.query_by_key(&s.topic, &key, 4, 0, i64::MAX).await.unwrap();
                assert!(
                    found.iter().any(|m| m.phys_offset as u64 == s.phys_offset),
                    "seed {seed}: put #{i} not found by key {key}"
                );
            }
            survivors.push(s.clone());
        } else {
            assert!(
                !s.durable,
                "seed {seed}: durable put #{i} ({}-{} offset {}) was lost",
                s.topic, s.queue_id, s.queue_offset
            );
            assert!(!all_must_survive, "seed {seed}: put #{i} lost in a process crash");
            lost_at.get_or_insert(i);
        }
    }
    // Dense offsets: each queue holds exactly its survivors, from 0 up.
    let mut per_queue: BTreeMap<(String, i32), u64> = BTreeMap::new();
    for s in &survivors {
        let n = per_queue.entry((s.topic.clone(), s.queue_id)).or_default();
        assert_eq!(*n, s.queue_offset, "seed {seed}: offsets not dense in {}-{}", s.topic, s.queue_id);
        *n += 1;
    }
    for ((topic, qid), n) in per_queue {
        assert_eq!(store.max_offset(&topic, qid), n, "seed {seed}: {topic}-{qid} max offset");
    }
    survivors
}

async fn run_case(seed: u64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let cfg = case_config(&mut rng);
    let disk = SimDisk::new();
    let mut store = open_sim(&disk, cfg.clone()).await;
    let mut sent = Vec::new();
    for round in 0..rng.gen_range(1..4) {
        write_round(&store, &mut rng, round, &mut sent).await;
        store.abandon().await;
        let power_loss = rng.gen_bool(0.6);
        if power_loss {
            let tear = rng.gen_bool(0.5);
            disk.power_loss(&mut rng, tear);
        } else {
            disk.crash();
        }
        store = open_sim(&disk, cfg.clone()).await;
        sent = check_recovered(&store, &sent, !power_loss, seed).await;
    }
    store.shutdown().await.unwrap();
    let store = open_sim(&disk, cfg).await;
    let after = check_recovered(&store, &sent, true, seed).await;
    assert_eq!(after.len(), sent.len(), "seed {seed}: clean restart lost messages");
    store.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn crash_or_power_loss_at_random_points_loses_no_durable_put() {
    let (base, cases) = seeds();
    eprintln!("crash property: seeds {base}..{} (KEEL_SEED / KEEL_CASES to replay)", base + cases);
    for seed in base..base + cases {
        run_case(seed).await;
    }
}

#[tokio::test(start_paused = true)]
async fn same_seed_gives_the_same_recovered_log() {
    async fn final_log(seed: u64) -> Vec<u8> {
        let mut rng = SmallRng::seed_from_u64(seed);
        let cfg = case_config(&mut rng);
        let disk = SimDisk::new();
        let store = open_sim(&disk, cfg.clone()).await;
        let mut sent = Vec::new();
        write_round(&store, &mut rng, 0, &mut sent).await;
        store.abandon().await;
        disk.power_loss(&mut rng, true);
        let store = open_sim(&disk, cfg.clone()).await;
        let mut log = Vec::new();
        for s in &sent {
            if let Ok(m) = store.lookup(s.phys_offset).await {
                log.extend_from_slice(&m.inner.body);
                log.extend_from_slice(&m.queue_offset.to_be_bytes());
            }
        }
        log
    }
    for seed in [1, 2, 3] {
        assert_eq!(final_log(seed).await, final_log(seed).await, "seed {seed} replays differently");
    }
}

#[tokio::test(start_paused = true)]
async fn a_torn_tail_is_truncated_and_logged_not_served() {
    let disk = SimDisk::new();
    let cfg = small_config("/store");
    let store = open_sim(&disk, cfg.clone()).await;
    for i in 0..10 {
        store.put(&message("T", 0, &[i as u8; 500], None, None, &format!("U{i}"))).await.unwrap();
    }
    store.flush_all().await.unwrap();
    let durable_end = store.commitlog_max_offset();
    for i in 10..20 {
        store.put(&message("T", 0, &[i as u8; 500], None, None, &format!("U{i}"))).await.unwrap();
    }
    store.abandon().await;
    // Corrupt a record after the durable point; everything from it on must go.
    let seg = std::path::Path::new("/store/commitlog/00000000000000000000");
    let mut rng = SmallRng::seed_from_u64(7);
    let at = durable_end as usize + 3 * 530 + 100;
    disk.flip_bits(seg, at..at + 1, 1, &mut rng);
    disk.crash();
    let store = open_sim(&disk, cfg).await;
    store.check_integrity().await.unwrap();
    let max = store.max_offset("T", 0);
    assert!((10..20).contains(&max), "kept the valid prefix only: {max}");
    let got = store.get_message("T", 0, 0, 32, 1 << 20, None).await.unwrap();
    assert_eq!(got.messages.len() as u64, max);
    // New writes continue densely after the cut.
    let r = store.put(&message("T", 0, b"after", None, None, "U-after")).await.unwrap();
    assert_eq!(r.queue_offset, max);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_disk_process_crash_recovers_every_put() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path().join("store"));
    cfg.mapped_file_size_commit_log = 256 * 1024;
    let store = MessageStore::open(cfg.clone(), Disk::Real).await.unwrap();
    let mut rng = SmallRng::seed_from_u64(42);
    let mut sent = Vec::new();
    write_round(&store, &mut rng, 0, &mut sent).await;
    write_round(&store, &mut rng, 1, &mut sent).await;
    let end = store.commitlog_max_offset();
    store.abandon().await;
    drop(store);
    // A half-written record after the end, as a crash mid-append leaves it, and a queue entry
    // pointing at it.
    let seg_path = dir.path().join("store/commitlog/00000000000000000000");
    write_at(&seg_path, end, &[0, 0, 2, 0, 0xDA, 0xA3, 0x20, 0xA7, 1, 2, 3]);
    let store = MessageStore::open(cfg.clone(), Disk::Real).await.unwrap();
    let survivors = check_recovered(&store, &sent, true, 42).await;
    assert_eq!(survivors.len(), sent.len());
    assert_eq!(store.commitlog_max_offset(), end);
    store.shutdown().await.unwrap();
    let store = MessageStore::open(cfg, Disk::Real).await.unwrap();
    assert_eq!(check_recovered(&store, &sent, true, 42).await.len(), sent.len());
    store.shutdown().await.unwrap();
}

fn write_at(path: &std::path::Path, pos: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(data, pos).unwrap();
}

/// The next commitlog segment is opened ahead of need (RocketMQ's AllocateMappedFileService),
/// so the put that crosses into it does not wait for its preallocation. Its file is not part
/// of the log: recovery keeps it as the next segment while it holds nothing, and removes
/// whatever lies beyond the recovered end.
#[tokio::test(start_paused = true)]
async fn a_segment_opened_ahead_stays_out_of_the_log_until_needed() {
    let disk = SimDisk::new();
    let cfg = small_config("/s");
    let size = cfg.mapped_file_size_commit_log;
    let file = |n: u64| cfg.commit_log_dir().join(format!("{:020}", n * size));
    let store = open_sim(&disk, cfg.clone()).await;
    store.put(&message("T", 0, b"first", None, None, "U0")).await.unwrap();
    store.shutdown().await.unwrap();
    assert!(disk.exists(&file(1)).await.unwrap(), "the next segment was opened ahead");

    // A clean restart keeps it waiting, outside the log.
    let store = open_sim(&disk, cfg.clone()).await;
    assert!(store.recovered_cleanly());
    assert_eq!(store.file_counts().await.0, 1);
    assert!(disk.exists(&file(1)).await.unwrap());

    // Fill most of the first segment durably, then write into the third without syncing.
    let mut durable = 1;
    while store.commitlog_max_offset() < size - 3000 {
        store.put(&message("T", 0, &[1u8; 900], None, None, &format!("U{durable}"))).await.unwrap();
        durable += 1;
    }
    store.flush_all().await.unwrap();
    let mut n = durable;
    while store.commitlog_max_offset() < 2 * size + 1000 {
        store.put(&message("T", 0, &[2u8; 900], None, None, &format!("U{n}"))).await.unwrap();
        n += 1;
    }
    assert_eq!(store.file_counts().await.0, 3);
    store.abandon().await;
    disk.power_loss(&mut SmallRng::seed_from_u64(3), false);

    // The log ends in the first segment. The second, empty again, waits as the next one; the
    // third and the one opened ahead of it are gone.
    let store = open_sim(&disk, cfg.clone()).await;
    assert_eq!(store.max_offset("T", 0), durable);
    assert_eq!(store.file_counts().await.0, 1);
    assert!(disk.exists(&file(1)).await.unwrap());
    assert!(!disk.exists(&file(2)).await.unwrap());
    assert!(!disk.exists(&file(3)).await.unwrap());

    // Writing goes on into it, and everything reads back.
    while store.commitlog_max_offset() < size + 1000 {
        store.put(&message("T", 0, &[3u8; 900], None, None, &format!("V{n}"))).await.unwrap();
        n += 1;
    }
    assert_eq!(store.file_counts().await.0, 2);
    store.check_integrity().await.unwrap();
    let total = store.max_offset("T", 0);
    let got = store.get_message("T", 0, 0, total as usize, 1 << 30, None).await.unwrap();
    assert_eq!(got.messages.len() as u64, total);
    store.shutdown().await.unwrap();
}

/// The periodic checkpoint syncs full index files and an idle one, but not the one being
/// filled while entries keep coming: the checkpoint then vouches for the index only below
/// that file, and a power loss rebuilds it from the log, so every key is still found.
#[tokio::test(start_paused = true)]
async fn a_power_loss_under_load_rebuilds_the_index_file_being_filled() {
    use keel_core::store::checkpoint::Checkpoint;
    use std::time::Duration;
    let root = "/idx";
    let cfg = StoreConfig { flush_interval_consume_queue_ms: 100, ..common::sync_config(root) };
    let disk = SimDisk::new();
    let store = open_sim(&disk, cfg.clone()).await;
    let ckpt_path = std::path::Path::new(root).join("checkpoint");
    let load_ckpt = || async { Checkpoint::load(&Disk::Sim(disk.clone()), &ckpt_path).await.unwrap().unwrap() };
    let mut sent = Vec::new();
    // 256 entries per index file, two per message (KEYS and UNIQ_KEY): several full files.
    for round in 0..8 {
        for i in 0..60 {
            let key = format!("k{round}-{i}");
            let r = store.put(&message("T", i % 2, b"x", None, Some(&key), &format!("U{round}-{i}"))).await.unwrap();
            assert_eq!(r.status, PutStatus::PutOk);
            sent.push((key, r.phys_offset));
        }
        // A checkpoint runs while the last file keeps taking entries (virtual time).
        tokio::time::sleep(Duration::from_millis(110)).await;
    }
    let busy = load_ckpt().await;
    let end = store.commitlog_max_offset();
    assert!(
        busy.index_safe_offset > 0 && busy.index_safe_offset < end,
        "under load the index is vouched for only below the file being filled: {} of {end}",
        busy.index_safe_offset
    );
    store.abandon().await;
    disk.power_loss(&mut SmallRng::seed_from_u64(1), false);
    let store = open_sim(&disk, cfg.clone()).await;
    for (key, phys) in &sent {
        for k in [key.clone(), key.replacen('k', "U", 1)] {
            let found = store.query_by_key("T", &k, 4, 0, i64::MAX).await.unwrap();
            assert!(found.iter().any(|m| m.phys_offset as u64 == *phys), "key {k} lost in the power loss");
        }
    }

    // Entries again, then idle for two periods: the first sees the file changed since it
    // last looked, the second sees it quiet and syncs it, and the checkpoint vouches for the
    // whole index.
    for i in 0..60 {
        store.put(&message("T", 0, b"y", None, Some(&format!("again-{i}")), &format!("A{i}"))).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(110)).await;
    assert!(load_ckpt().await.index_safe_offset < store.commitlog_max_offset());
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(load_ckpt().await.index_safe_offset, store.commitlog_max_offset(), "an idle index was not synced");
    store.shutdown().await.unwrap();
}
