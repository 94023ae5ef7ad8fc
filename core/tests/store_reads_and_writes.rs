//! Store behaviour on the simulated disk: reads by queue offset with tag filtering, by
//! commitlog offset and by key; min/max offsets; search by time; segment roll-over; limits.

mod common;

use common::{message, open_sim, small_config};
use keel_core::rt::disk::SimDisk;
use keel_core::store::record::{java_hash, tags_code};
use keel_core::store::{GetStatus, PutStatus, StoreError};

#[tokio::test(start_paused = true)]
async fn messages_are_read_back_in_queue_order_across_segments() {
    let disk = SimDisk::new();
    let store = open_sim(&disk, small_config("/s")).await;
    let mut puts = Vec::new();
    for i in 0..400u32 {
        let body = vec![(i % 251) as u8; 300 + (i as usize * 7) % 500];
        let r = store
            .put(&message("TopicTest", (i % 3) as i32, &body, Some("TagA"), None, &format!("U{i}")))
            .await
            .unwrap();
        assert_eq!(r.status, PutStatus::PutOk);
        puts.push((i, r, body));
    }
    assert!(store.commitlog_max_offset() > 3 * 64 * 1024, "the log rolled over several segments");
    for q in 0..3 {
        let expected: Vec<_> = puts.iter().filter(|(i, _, _)| i % 3 == q).collect();
        assert_eq!(store.max_offset("TopicTest", q as i32), expected.len() as u64);
        let mut offset = 0;
        let mut seen = 0;
        loop {
            let got = store.get_message("TopicTest", q as i32, offset, 32, 1 << 20, None).await.unwrap();
            if got.status != GetStatus::Found {
                assert_eq!(got.status, GetStatus::OffsetOverflowOne);
                break;
            }
            for m in &got.messages {
                let (_, put, body) = expected[m.queue_offset as usize];
                assert_eq!(m.phys_offset, put.phys_offset);
                let ext = store.lookup(m.phys_offset).await.unwrap();
                assert_eq!(&ext.inner.body[..], &body[..]);
                seen += 1;
            }
            offset = got.next_begin_offset;
        }
        assert_eq!(seen, expected.len());
    }
    store.check_integrity().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn tag_filter_by_hash_skips_other_tags() {
    let disk = SimDisk::new();
    let store = open_sim(&disk, small_config("/s")).await;
    for i in 0..60 {
        let tag = ["TagA", "TagB", "TagC"][i % 3];
        store.put(&message("T", 0, format!("m{i}").as_bytes(), Some(tag), None, &format!("U{i}"))).await.unwrap();
    }
    let wanted = [tags_code(Some("TagA")), tags_code(Some("TagC"))];
    let filter = |code: i64| wanted.contains(&code);
    let got = store.get_message("T", 0, 0, 100, 1 << 20, Some(&filter)).await.unwrap();
    assert_eq!(got.status, GetStatus::Found);
    assert_eq!(got.messages.len(), 40);
    assert!(got.messages.iter().all(|m| m.tags_code != java_hash("TagB") as i64));
    assert_eq!(got.next_begin_offset, 60);
    let none = |code: i64| code == tags_code(Some("TagZ"));
    let got = store.get_message("T", 0, 0, 100, 1 << 20, Some(&none)).await.unwrap();
    assert_eq!((got.status, got.next_begin_offset), (GetStatus::NoMatchedMessage, 60));
}

#[tokio::test(start_paused = true)]
async fn offset_statuses_follow_rocketmq() {
    let disk = SimDisk::new();
    let store = open_sim(&disk, small_config("/s")).await;
    let missing = store.get_message("T", 0, 0, 1, 1024, None).await.unwrap();
    assert_eq!(missing.status, GetStatus::NoMatchedLogicQueue);
    for i in 0..5 {
        store.put(&message("T", 0, b"x", None, None, &format!("U{i}"))).await.unwrap();
    }
    let at_end = store.get_message("T", 0, 5, 1, 1024, None).await.unwrap();
    assert_eq!((at_end.status, at_end.next_begin_offset), (GetStatus::OffsetOverflowOne, 5));
    let past = store.get_message("T", 0, 9, 1, 1024, None).await.unwrap();
    assert_eq!((past.status, past.next_begin_offset), (GetStatus::OffsetOverflowBadly, 0));
    let limited = store.get_message("T", 0, 0, 10, 1, None).await.unwrap();
    assert_eq!(limited.messages.len(), 1, "max bytes stops after the first message");
    assert_eq!((store.min_offset("T", 0), store.max_offset("T", 0)), (0, 5));
}

#[tokio::test(start_paused = true)]
async fn query_by_key_and_unique_key_checks_every_candidate() {
    let disk = SimDisk::new();
    let store = open_sim(&disk, small_config("/s")).await;
    // 256 index entries per file and 64 slots: collisions and several index files.
    for i in 0..300 {
        let keys = format!("order-{} batch-{}", i, i % 10);
        store
            .put(&message("T", i % 2, format!("b{i}").as_bytes(), None, Some(&keys), &format!("UNIQ{i:05}")))
            .await
            .unwrap();
    }
    store.put(&message("Other", 0, b"o", None, Some("order-7"), "UNIQ-other")).await.unwrap();
    let (_, _, index_files) = store.file_counts().await;
    assert!(index_files > 1, "index rolled over to {index_files} files");
    let by_uniq = store.query_by_key("T", "UNIQ00123", 10, 0, i64::MAX).await.unwrap();
    assert_eq!(by_uniq.len(), 1);
    assert_eq!(&by_uniq[0].inner.body[..], b"b123");
    let by_key = store.query_by_key("T", "order-7", 10, 0, i64::MAX).await.unwrap();
    assert_eq!(by_key.len(), 1, "the other topic's order-7 is not returned");
    let batch = store.query_by_key("T", "batch-3", 100, 0, i64::MAX).await.unwrap();
    assert_eq!(batch.len(), 30);
    assert!(batch.windows(2).all(|w| w[0].phys_offset > w[1].phys_offset), "newest first");
    assert!(store.query_by_key("T", "nope", 10, 0, i64::MAX).await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn search_by_store_time_finds_the_first_message_at_or_after() {
    let disk = SimDisk::new();
    let store = open_sim(&disk, small_config("/s")).await;
    let mut stamps = Vec::new();
    for i in 0..200 {
        let r = store.put(&message("T", 0, b"t", None, None, &format!("U{i}"))).await.unwrap();
        stamps.push(r.store_timestamp);
    }
    for (i, ts) in stamps.iter().enumerate() {
        let found = store.search_offset_by_time("T", 0, *ts).await.unwrap() as usize;
        assert!(found <= i && stamps[found] == *ts && (found == 0 || stamps[found - 1] < *ts));
    }
    assert_eq!(store.search_offset_by_time("T", 0, stamps[199] + 1).await.unwrap(), 200);
    assert_eq!(store.search_offset_by_time("T", 0, 0).await.unwrap(), 0);
}

#[tokio::test(start_paused = true)]
async fn oversized_messages_and_properties_are_refused_and_nothing_is_written() {
    let disk = SimDisk::new();
    let store = open_sim(&disk, small_config("/s")).await;
    store.put(&message("T", 0, b"ok", None, None, "U0")).await.unwrap();
    let end = store.commitlog_max_offset();
    let big = store.put(&message("T", 0, &vec![0u8; 40 * 1024], None, None, "U1")).await;
    assert!(matches!(big, Err(StoreError::MessageTooLarge { .. })), "{big:?}");
    assert!(big.unwrap_err().to_string().contains("maxMessageSize"));
    let mut m = message("T", 0, b"x", None, None, "U2");
    m.properties.push_str(&"k\u{1}".repeat(17_000));
    assert!(matches!(store.put(&m).await, Err(StoreError::PropertiesTooLarge(_))));
    let long_topic = "t".repeat(128);
    assert!(matches!(
        store.put(&message(&long_topic, 0, b"x", None, None, "U3")).await,
        Err(StoreError::TopicTooLong(128))
    ));
    assert_eq!(store.commitlog_max_offset(), end);
    assert_eq!(store.max_offset("T", 0), 1);
    store.check_integrity().await.unwrap();
}
