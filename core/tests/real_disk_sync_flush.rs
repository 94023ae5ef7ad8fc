//! The real disk's SYNC_FLUSH write path: appends to a commitlog segment are held in the
//! process and reach the file with one `pwrite` when the next sync runs (`real::Tail`).
//! What must hold: a reader sees every appended byte at once, from memory or from the file;
//! a sync leaves the bytes in the file in write order; warm-up zeros written ahead on a
//! blocking thread never land on data; a process crash loses only appends no sync covered;
//! a replica's appends are handed to the OS before they are confirmed.

mod common;

use common::{message, small_config};
use keel_core::rt::disk::Disk;
use keel_core::store::{FlushDiskType, GetStatus, MessageStore, PutStatus, StoreConfig};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::path::Path;

fn file_bytes(path: &Path, range: std::ops::Range<usize>) -> Vec<u8> {
    std::fs::read(path).unwrap()[range].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_are_read_from_memory_until_a_sync_writes_them_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seg");
    let seg = Disk::Real.open_segment(&path, 64 * 1024).await.unwrap();
    seg.set_write_pattern(false, true);
    seg.write_at(0, b"first record|").await.unwrap();
    seg.write_at(13, b"second record").await.unwrap();
    assert_eq!(&seg.read_at(0, 26).await.unwrap()[..], b"first record|second record");
    assert_eq!(file_bytes(&path, 0..26), vec![0u8; 26], "held in the process until a sync");
    // A read that straddles held bytes and bytes never written.
    assert_eq!(&seg.read_at(20, 10).await.unwrap()[..], b"record\0\0\0\0");

    seg.sync(0, 26).await.unwrap();
    assert_eq!(file_bytes(&path, 0..26), b"first record|second record");
    assert_eq!(&seg.read_at(0, 26).await.unwrap()[..], b"first record|second record");

    // An append, then a write that is not one (recovery zeroing a torn tail): the held
    // append reaches the file first, so the later write wins where they overlap.
    seg.write_at(26, b"third").await.unwrap();
    seg.write_at(6, b"RECORD").await.unwrap();
    assert_eq!(file_bytes(&path, 0..31), b"first RECORD|second recordthird");
    let mut small = [0u8; 5];
    seg.read_into(26, &mut small).await.unwrap();
    assert_eq!(&small, b"third");

    // A replica's append is handed to the OS at once, with what was held before it.
    seg.write_at(31, b"|fourth").await.unwrap();
    seg.write_through(38, b"|slave").await.unwrap();
    assert_eq!(file_bytes(&path, 26..44), b"third|fourth|slave");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_past_the_spill_size_reach_the_file_without_a_sync() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seg");
    let seg = Disk::Real.open_segment(&path, 8 << 20).await.unwrap();
    seg.set_write_pattern(false, true);
    let chunk = vec![7u8; 64 * 1024];
    let mut at = 0u64;
    while at < (5 << 20) {
        seg.write_at(at, &chunk).await.unwrap();
        at += chunk.len() as u64;
    }
    let on_disk = std::fs::read(&path).unwrap();
    let in_file = on_disk.iter().take(at as usize).take_while(|b| **b == 7).count();
    assert!(in_file >= 4 << 20, "a sync stuck on the disk must not let the held bytes grow: {in_file} in the file");
    assert!(seg.read_at(0, at as usize).await.unwrap().iter().all(|b| *b == 7));
}

fn sync_store(root: &Path) -> StoreConfig {
    StoreConfig {
        flush_disk_type: FlushDiskType::SyncFlush,
        // Segments of 1 MiB: the warm-up zeros of each are written on a blocking thread
        // while the appends and syncs go on.
        mapped_file_size_commit_log: 1 << 20,
        warm_mapped_file_enable: Some(true),
        ..small_config(root)
    }
}

/// Many writers and a reader at once, across segments, with warm-up zeros being written
/// beside the appends: every read sees what was put, the files hold exactly what was read,
/// and after a process crash every answered put is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sync_flush_puts_reads_and_warm_up_agree_with_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = sync_store(&dir.path().join("store"));
    let store = MessageStore::open(cfg.clone(), Disk::Real).await.unwrap();
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut rng = SmallRng::seed_from_u64(w);
                let mut puts = Vec::new();
                for i in 0..150 {
                    let body: Vec<u8> = (0..rng.gen_range(1..3000)).map(|_| rng.gen()).collect();
                    let m = message("T", w as i32 % 4, &body, Some("TagA"), None, &format!("U{w}-{i}"));
                    let r = store.put(&m).await.unwrap();
                    assert_eq!(r.status, PutStatus::PutOk);
                    puts.push((r, body));
                }
                puts
            })
        })
        .collect();
    // A reader following the queues while they grow: whatever it gets is a whole, checked
    // record (the store verifies each record's CRC before serving it).
    let reader = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut next = [0u64; 4];
            let mut read = 0;
            while read < 16 * 150 {
                for (q, at) in next.iter_mut().enumerate() {
                    let got = store.get_message("T", q as i32, *at, 32, 1 << 20, None).await.unwrap();
                    assert_eq!(got.corrupt_skipped, 0, "a reader saw a record that was not whole");
                    if got.status == GetStatus::Found {
                        read += got.messages.len();
                        *at = got.next_begin_offset;
                    }
                }
                tokio::task::yield_now().await;
            }
        })
    };
    let mut puts = Vec::new();
    for w in writers {
        puts.extend(w.await.unwrap());
    }
    reader.await.unwrap();
    assert!(store.commitlog_max_offset() > 3 << 20, "the log crossed several segments");
    for (r, body) in &puts {
        let m = store.lookup(r.phys_offset).await.unwrap();
        assert_eq!(&m.inner.body[..], &body[..]);
    }
    // The files hold what the store served: read each record's bytes from the file.
    let seg_dir = dir.path().join("store/commitlog");
    for (r, _) in &puts {
        let base = r.phys_offset - r.phys_offset % (1 << 20);
        let file = std::fs::read(seg_dir.join(format!("{base:020}"))).unwrap();
        let at = (r.phys_offset - base) as usize;
        let (served, _) = store.lookup_raw(r.phys_offset).await.unwrap();
        assert_eq!(file[at..at + r.size], served[..], "commitlog {} differs in the file", r.phys_offset);
    }
    store.abandon().await;
    drop(store);
    let store = MessageStore::open(cfg, Disk::Real).await.unwrap();
    for (r, body) in &puts {
        let m = store.lookup(r.phys_offset).await.unwrap();
        assert_eq!(&m.inner.body[..], &body[..], "an answered put was lost in a process crash");
    }
    store.shutdown().await.unwrap();
}
