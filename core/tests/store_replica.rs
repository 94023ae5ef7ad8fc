//! The store side of replication on the simulated disk: a replica built from a master's raw
//! log bytes is byte-identical and serves the same queues; after the master parts ways (it
//! lost its tail and wrote other records at the same offsets), the replica cuts its log at
//! the parting point and follows the master's new bytes.

mod common;

use keel_core::rt::disk::{Disk, SimDisk};
use keel_core::store::{GetStatus, MessageStore};

async fn open(root: &str) -> MessageStore {
    let mut cfg = common::small_config(root);
    cfg.mapped_file_size_commit_log = 64 * 1024;
    MessageStore::open(cfg, Disk::Sim(SimDisk::new())).await.unwrap()
}

async fn put(store: &MessageStore, from: usize, n: usize, tag: &str) {
    for i in from..from + n {
        let body = format!("{tag}-{i}");
        let m = common::message("T", (i % 3) as i32, body.as_bytes(), None, None, &format!("{tag}{i}"));
        store.put(&m).await.unwrap();
    }
}

/// Copies the master's log from the replica's end up to `to`, in 1000-byte pieces (records
/// are cut anywhere, as 32 KiB frames cut them).
async fn copy(master: &MessageStore, replica: &MessageStore, to: u64) {
    let mut at = if replica.max_phys() == 0 { master.min_phys() } else { replica.max_phys() };
    while at < to {
        let data = master.read_log(at, 1000.min((to - at) as usize)).await.unwrap();
        assert!(!data.is_empty());
        replica.append_replica(at, &data).await.unwrap();
        at += data.len() as u64;
    }
}

async fn bodies(store: &MessageStore) -> Vec<String> {
    let mut out = Vec::new();
    for q in 0..3 {
        let r = store.get_message("T", q, 0, 1000, usize::MAX, None).await.unwrap();
        assert!(matches!(r.status, GetStatus::Found | GetStatus::NoMessageInQueue), "{:?}", r.status);
        for m in r.messages {
            let rec = keel_core::store::record::check_record(&m.record, false).unwrap();
            out.push(String::from_utf8_lossy(&rec.inner.body).into_owned());
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn a_replica_is_byte_identical_and_cuts_where_its_master_parted() {
    let master = open("/m").await;
    let replica = open("/r").await;
    put(&master, 0, 600, "a").await; // more than one 64 KiB segment
    copy(&master, &replica, master.max_phys()).await;
    assert_eq!(replica.max_phys(), master.max_phys());
    let n = master.max_phys() - master.min_phys();
    let (a, b) = (master.read_log(0, n as usize).await.unwrap(), replica.read_log(0, n as usize).await.unwrap());
    assert!(a == b, "segment bytes differ");
    assert_eq!(bodies(&replica).await, bodies(&master).await);
    assert_eq!(bodies(&replica).await.len(), 600);

    // A second master that shares the first 400 records, then wrote others (what a master
    // that lost power after record 400 does).
    let parted = open("/m2").await;
    let mut cut = 0;
    for i in 0..400i32 {
        let r = master.get_message("T", i % 3, (i / 3) as u64, 1, usize::MAX, None).await.unwrap();
        cut = cut.max(r.messages[0].phys_offset + r.messages[0].record.len() as u64);
    }
    copy(&master, &parted, cut).await;
    put(&parted, 400, 50, "b").await;
    assert!(parted.max_phys() < master.max_phys(), "the test needs the parted log to be shorter");

    assert_eq!((replica.cut_generation(), replica.cut_end("T", 0)), (0, None));
    let dropped = replica.truncate_replica(cut).await.unwrap();
    assert_eq!(dropped, master.max_phys() - cut);
    for q in 0..3 {
        assert_eq!(replica.max_offset("T", q), (400 + 2 - q as u64) / 3, "queue {q} after the cut");
        // Where a consumer that read past the cut on this slave is moved back to.
        assert_eq!(replica.cut_end("T", q), Some(replica.max_offset("T", q)), "queue {q}'s cut end");
    }
    assert_eq!(replica.cut_generation(), 1);
    copy(&parted, &replica, parted.max_phys()).await;
    let got = bodies(&replica).await;
    assert_eq!(got, bodies(&parted).await);
    assert_eq!(got.iter().filter(|b| b.starts_with("b-")).count(), 50);
    assert_eq!(got.len(), 450);
}
