//! Disk faults and operator mistakes: a full disk, a failing disk, a sync that takes too long,
//! group commit under concurrency, a second store on a locked directory, retention.

mod common;

use common::{message, open_sim, small_config, sync_config};
use keel_core::rt::disk::{Disk, SimDisk, SimFault};
use keel_core::rt::time::{Duration, Instant};
use keel_core::store::{GetStatus, MessageStore, PutStatus};

#[tokio::test(start_paused = true)]
async fn a_full_disk_refuses_the_put_clearly_and_loses_nothing() {
    let disk = SimDisk::new();
    let store = open_sim(&disk, small_config("/s")).await;
    let mut ok = 0;
    for i in 0..50 {
        store.put(&message("T", 0, &[1u8; 1000], None, None, &format!("U{i}"))).await.unwrap();
        ok += 1;
    }
    disk.add_fault(SimFault::Full);
    // Keep writing until a new segment is needed: that is where ENOSPC surfaces.
    let err = loop {
        match store.put(&message("T", 0, &[2u8; 1000], None, None, "X")).await {
            Ok(_) => ok += 1,
            Err(e) => break e,
        }
    };
    assert!(err.is_disk_full(), "{err}");
    assert!(err.to_string().contains("no space left"), "{err}");
    let end = store.commitlog_max_offset();
    disk.clear_faults();
    let r = store.put(&message("T", 0, b"after", None, None, "after")).await.unwrap();
    assert_eq!(r.queue_offset, ok, "no queue offset was burnt by the failed put");
    assert_eq!(r.phys_offset, end, "the refused put burnt no log space");
    store.check_integrity().await.unwrap();
    assert_eq!(store.max_offset("T", 0), ok + 1);
}

#[tokio::test(start_paused = true)]
async fn a_failing_disk_fails_puts_and_the_store_recovers_after() {
    let disk = SimDisk::new();
    let cfg = small_config("/s");
    let store = open_sim(&disk, cfg.clone()).await;
    store.put(&message("T", 0, b"one", None, None, "U1")).await.unwrap();
    disk.add_fault(SimFault::Eio);
    let err = store.put(&message("T", 0, b"two", None, None, "U2")).await.unwrap_err();
    assert!(err.to_string().contains("EIO"), "{err}");
    disk.clear_faults();
    store.put(&message("T", 0, b"three", None, None, "U3")).await.unwrap();
    store.abandon().await;
    disk.crash();
    let store = open_sim(&disk, cfg).await;
    let got = store.get_message("T", 0, 0, 10, 1 << 20, None).await.unwrap();
    let bodies: Vec<Vec<u8>> = got.messages.iter().map(|m| m.record.to_vec()).collect();
    assert_eq!(bodies.len(), 2, "the failed put left nothing behind");
    store.check_integrity().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_sync_slower_than_sync_flush_timeout_answers_flush_disk_timeout() {
    let disk = SimDisk::new();
    let store = open_sim(&disk, sync_config("/s")).await;
    let r = store.put(&message("T", 0, b"fast", None, None, "U1")).await.unwrap();
    assert_eq!(r.status, PutStatus::PutOk);
    disk.add_fault(SimFault::SlowSync(Duration::from_secs(8)));
    let started = Instant::now();
    let r = store.put(&message("T", 0, b"slow", None, None, "U2")).await.unwrap();
    assert_eq!(r.status, PutStatus::FlushDiskTimeout);
    assert_eq!(started.elapsed(), Duration::from_millis(5000), "answers at syncFlushTimeout");
    // Stored all the same: readable now, durable once the sync completes.
    let got = store.get_message("T", 0, 1, 1, 1024, None).await.unwrap();
    assert_eq!(got.status, GetStatus::Found);
    disk.clear_faults();
    let r = store.put(&message("T", 0, b"again", None, None, "U3")).await.unwrap();
    assert_eq!(r.status, PutStatus::PutOk);
}

/// Under SYNC_FLUSH a segment's appends are held by the process until the next sync hands
/// them to the OS (as the real disk does): a crash keeps what a sync took, and loses the
/// appends that came while that sync hung, none of which was answered.
#[tokio::test(start_paused = true)]
async fn a_crash_under_sync_flush_loses_only_appends_no_sync_took() {
    let disk = SimDisk::new();
    let cfg = sync_config("/s");
    let store = open_sim(&disk, cfg.clone()).await;
    let r = store.put(&message("T", 0, b"synced", None, None, "U1")).await.unwrap();
    assert_eq!(r.status, PutStatus::PutOk);
    disk.add_fault(SimFault::SlowSync(Duration::from_secs(60)));
    let put = |body: &'static [u8], uniq: &'static str| {
        let store = store.clone();
        tokio::spawn(async move { store.put(&message("T", 0, body, None, None, uniq)).await })
    };
    let taken = put(b"taken by the hung sync", "U2");
    tokio::time::sleep(Duration::from_millis(10)).await;
    let held = put(b"held by the process", "U3");
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(store.max_offset("T", 0), 3, "all three are stored and readable");
    let segment = cfg.commit_log_dir().join("00000000000000000000");
    let held_from = disk.crash_loses_from(&segment).expect("appends since the sync began are held");
    store.abandon().await;
    taken.abort();
    held.abort();
    disk.crash();
    disk.clear_faults();
    let store = open_sim(&disk, cfg).await;
    assert_eq!(store.max_offset("T", 0), 2, "the held append is gone, the one the sync took is not");
    assert_eq!(store.commitlog_max_offset(), held_from as u64);
    let got = store.get_message("T", 0, 0, 8, 1 << 20, None).await.unwrap();
    let bodies: Vec<_> = got.messages.iter().map(|m| m.phys_offset).collect();
    assert_eq!(bodies.len(), 2);
    store.check_integrity().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_put_without_wait_does_not_wait_for_the_sync() {
    let disk = SimDisk::new();
    let store = open_sim(&disk, sync_config("/s")).await;
    disk.add_fault(SimFault::SlowSync(Duration::from_secs(8)));
    let mut m = message("T", 0, b"nowait", None, None, "U1");
    m.properties = keel_core::store::record::properties_to_string([("WAIT", "false")]);
    let started = Instant::now();
    assert_eq!(store.put(&m).await.unwrap().status, PutStatus::PutOk);
    assert_eq!(started.elapsed(), Duration::ZERO);
}

/// `writers` tasks each put `puts` durable messages, taking `turns(writer)` turns of the
/// scheduler after each answer before the next put.
async fn put_from_writers(store: &MessageStore, writers: i32, puts: usize, turns: fn(i32) -> i32) {
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..puts {
                let r = store.put(&message("T", w % 4, b"gc", None, None, &format!("U{w}-{i}"))).await.unwrap();
                assert_eq!(r.status, PutStatus::PutOk);
                for _ in 0..turns(w) {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn concurrent_sync_puts_share_syncs() {
    let disk = SimDisk::new();
    let store = open_sim(&disk, sync_config("/s")).await;
    // Each sync takes 1 ms of simulated time, so puts arriving meanwhile must wait for the next.
    disk.add_fault(SimFault::SlowSync(Duration::from_millis(1)));
    let before = disk.sync_count();
    put_from_writers(&store, 64, 10, |_| 0).await;
    let syncs = disk.sync_count() - before;
    assert!(syncs * 8 <= 640, "640 durable puts took {syncs} syncs: group commit is not grouping");
    assert!(store.commitlog_flushed_offset() >= store.commitlog_max_offset());
}

/// Writers answered by one sync take a while to put again (over the network, a round trip):
/// the next sync waits for them instead of carrying only the writers that were already
/// waiting, which would split the writers into two halves taking turns.
#[tokio::test(start_paused = true)]
async fn a_sync_waits_for_the_writers_of_the_last_group() {
    let disk = SimDisk::new();
    let store = open_sim(&disk, sync_config("/s")).await;
    let before = disk.sync_count();
    // The round trip, longer for some writers than for others: turns of the scheduler (no
    // time passes, so the 1 ms hold never runs out here).
    put_from_writers(&store, 16, 20, |w| (w + 1) * 3).await;
    let syncs = disk.sync_count() - before;
    // 320 puts by 16 writers: whole groups are 20 syncs (syncing as soon as a put waits took
    // 137 here).
    assert!(syncs <= 24, "320 durable puts by 16 writers took {syncs} syncs: groups are split");
}

#[tokio::test(start_paused = true)]
async fn a_second_store_on_the_same_directory_fails_with_the_lock_message() {
    let disk = SimDisk::new();
    let _first = open_sim(&disk, small_config("/data/store")).await;
    let err = MessageStore::open(small_config("/data/store"), Disk::Sim(disk.clone())).await.err().unwrap();
    let text = err.to_string();
    assert!(text.contains("Lock failed, MQ already started") && text.contains("/data/store"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_store_on_a_real_directory_fails_with_the_lock_message() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let first = MessageStore::open(small_config(&root), Disk::Real).await.unwrap();
    let err = MessageStore::open(small_config(&root), Disk::Real).await.err().unwrap();
    let text = err.to_string();
    assert!(text.contains("Lock failed, MQ already started") && text.contains(&root.display().to_string()), "{text}");
    first.shutdown().await.unwrap();
    // Released on shutdown: the directory can be opened again.
    MessageStore::open(small_config(&root), Disk::Real).await.unwrap().shutdown().await.unwrap();
}

const HOUR_MS: u64 = 3_600_000;

#[tokio::test(start_paused = true)]
async fn retention_removes_expired_segments_only_at_delete_when_or_when_disk_is_short() {
    let disk = SimDisk::new();
    let mut cfg = small_config("/s");
    cfg.file_reserved_time_hours = 48;
    cfg.delete_when = "04".into();
    let store = open_sim(&disk, cfg).await;
    for i in 0..300 {
        store.put(&message("T", i % 2, &[3u8; 900], None, Some("k"), &format!("U{i}"))).await.unwrap();
    }
    let (segments, cq_files, _) = store.file_counts().await;
    assert!(segments >= 4);
    let now = keel_core::rt::now_ms();
    let day = now - now % (24 * HOUR_MS);
    // Expired, but not the deletion hour and plenty of space: nothing goes.
    let noon_later = day + 3 * 24 * HOUR_MS + 12 * HOUR_MS;
    assert!(store.clean_expired(noon_later).await.unwrap().commitlog_segments.is_empty());
    // Not yet expired at the deletion hour: nothing goes.
    assert!(store.clean_expired(day + 24 * HOUR_MS + 4 * HOUR_MS).await.unwrap().commitlog_segments.is_empty());
    // Expired at 04: every segment but the one being written goes, and the queue files that
    // only pointed into them.
    let report = store.clean_expired(day + 3 * 24 * HOUR_MS + 4 * HOUR_MS).await.unwrap();
    assert_eq!(report.commitlog_segments.len(), segments - 1);
    assert!(report.consume_queue_files > 0);
    let (segments_after, cq_after, _) = store.file_counts().await;
    assert_eq!(segments_after, 1);
    assert!(cq_after < cq_files);
    let min = store.min_offset("T", 0);
    assert!(min > 0);
    let old = store.get_message("T", 0, 0, 1, 1024, None).await.unwrap();
    assert_eq!((old.status, old.next_begin_offset), (GetStatus::OffsetTooSmall, min));
    let fresh = store.get_message("T", 0, min, 1, 1 << 20, None).await.unwrap();
    assert_eq!(fresh.status, GetStatus::Found);
    store.check_integrity().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn retention_frees_space_early_and_refuses_writes_when_the_disk_is_nearly_full() {
    let disk = SimDisk::new();
    let mut cfg = small_config("/s");
    cfg.delete_when = "04".into();
    let store = open_sim(&disk, cfg).await;
    for i in 0..300 {
        store.put(&message("T", 0, &[3u8; 900], None, None, &format!("U{i}"))).await.unwrap();
    }
    let now = keel_core::rt::now_ms();
    let noon = now - now % (24 * HOUR_MS) + 12 * HOUR_MS;
    // Above diskMaxUsedSpaceRatio (75 %): expired files go outside the deletion hour.
    disk.set_capacity(disk.used_bytes() * 100 / 80);
    let used_before = store.file_counts().await.0;
    let r = store.clean_expired(noon + 100 * HOUR_MS).await.unwrap();
    assert!(!r.commitlog_segments.is_empty(), "space short: expired segments removed early");
    assert!(store.file_counts().await.0 < used_before);
    // Above 90 %: writes are refused with a clear error until space is back.
    for i in 0..150 {
        store.put(&message("T", 0, &[4u8; 900], None, None, &format!("V{i}"))).await.unwrap();
    }
    disk.set_capacity(disk.used_bytes() * 100 / 95);
    let r = store.clean_expired(noon).await.unwrap();
    assert!(!r.commitlog_segments.is_empty(), "above 85 %: removed regardless of age");
    let err = store.put(&message("T", 0, b"x", None, None, "W")).await.unwrap_err();
    assert!(err.is_disk_full() && err.to_string().contains("disk is full"), "{err}");
    disk.set_capacity(1 << 40);
    store.clean_expired(noon).await.unwrap();
    store.put(&message("T", 0, b"x", None, None, "W")).await.unwrap();
}

/// Puts that meet while one is appending (every disk call slowed, so appends overlap) are
/// appended by that one (combining): each caller still gets its own record's place, and the
/// queues stay dense.
#[tokio::test(start_paused = true)]
async fn puts_appended_by_another_put_each_get_their_own_place() {
    let disk = SimDisk::new();
    let store = open_sim(&disk, small_config("/s")).await;
    disk.add_fault(SimFault::Slow(Duration::from_micros(50)));
    let mut tasks = Vec::new();
    for w in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut placed = Vec::new();
            for i in 0..20 {
                let key = format!("W{w}-{i}");
                let r = store.put(&message("T", w % 4, key.as_bytes(), None, None, &key)).await.unwrap();
                placed.push((w % 4, r.queue_offset, r.phys_offset, key));
            }
            placed
        }));
    }
    let mut placed = Vec::new();
    for t in tasks {
        placed.extend(t.await.unwrap());
    }
    disk.clear_faults();
    assert!(store.combined_appends() > 0, "no put was appended by another: the puts never met");
    for (queue, offset, phys, key) in &placed {
        let got = store.get_message("T", *queue, *offset, 1, 1 << 20, None).await.unwrap();
        assert_eq!(got.status, GetStatus::Found);
        let m = &got.messages[0];
        assert_eq!(m.phys_offset, *phys, "{key}: answered with another record's place");
        assert!(m.record.windows(key.len()).any(|w| w == key.as_bytes()), "{key}: its queue offset holds another body");
    }
    for q in 0..4 {
        assert_eq!(store.max_offset("T", q), 80, "queue {q} is dense: 4 writers x 20 puts");
    }
    store.check_integrity().await.unwrap();
}

/// A put that is appending for others and is dropped mid-way (its connection closed) hands
/// the queued puts on instead of leaving them waiting for ever.
#[tokio::test(start_paused = true)]
async fn a_combining_put_dropped_mid_append_hands_the_queued_puts_on() {
    let disk = SimDisk::new();
    let store = open_sim(&disk, small_config("/s")).await;
    disk.add_fault(SimFault::Stall(Instant::now() + Duration::from_secs(10)));
    let first = {
        let store = store.clone();
        tokio::spawn(async move { store.put(&message("T", 0, b"first", None, None, "U0")).await })
    };
    tokio::task::yield_now().await;
    let queued: Vec<_> = (1..4)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.put(&message("T", 0, b"queued", None, None, &format!("U{i}"))).await })
        })
        .collect();
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
    first.abort();
    let _ = first.await;
    for q in queued {
        let r = tokio::time::timeout(Duration::from_secs(60), q).await;
        let r = r.expect("a queued put was left waiting after the combining put was dropped").unwrap();
        assert_eq!(r.unwrap().status, PutStatus::PutOk);
    }
    disk.clear_faults();
    assert_eq!(store.max_offset("T", 0), 3, "the three queued puts are in the log, the dropped one is not");
    store.check_integrity().await.unwrap();
}
