//! Helpers shared by the store tests: small configs and message builders.
#![allow(dead_code)]

use bytes::Bytes;
use keel_core::rt::disk::{Disk, SimDisk};
use keel_core::store::record::{properties_to_string, MessageInner};
use keel_core::store::{FlushDiskType, MessageStore, StoreConfig};
use std::path::PathBuf;

/// A config with tiny files so tests cross segment, queue-file and index-file boundaries.
pub fn small_config(root: impl Into<PathBuf>) -> StoreConfig {
    StoreConfig {
        store_path_root_dir: root.into(),
        mapped_file_size_commit_log: 64 * 1024,
        mapped_file_size_consume_queue: 20 * 64,
        max_hash_slot_num: 64,
        max_index_num: 256,
        max_message_size: 32 * 1024,
        // Only explicit flushes make data durable unless a test says otherwise.
        flush_interval_commit_log_ms: 3_600_000,
        flush_commit_log_thorough_interval_ms: 3_600_000,
        flush_interval_consume_queue_ms: 3_600_000,
        clean_resource_interval_ms: 3_600_000,
        ..StoreConfig::default()
    }
}

pub fn sync_config(root: impl Into<PathBuf>) -> StoreConfig {
    StoreConfig { flush_disk_type: FlushDiskType::SyncFlush, ..small_config(root) }
}

pub fn message(
    topic: &str,
    queue_id: i32,
    body: &[u8],
    tags: Option<&str>,
    keys: Option<&str>,
    uniq: &str,
) -> MessageInner {
    let mut props: Vec<(&str, &str)> = vec![("UNIQ_KEY", uniq), ("WAIT", "true")];
    if let Some(t) = tags {
        props.push(("TAGS", t));
    }
    if let Some(k) = keys {
        props.push(("KEYS", k));
    }
    let mut m = MessageInner::new(
        topic,
        queue_id,
        Bytes::copy_from_slice(body),
        properties_to_string(props),
        "10.0.0.7:50000".parse().unwrap(),
        "127.0.0.1:10911".parse().unwrap(),
    );
    m.born_timestamp = 1_700_000_000_000;
    m
}

/// Shows the store's logs in a test's output when `RUST_LOG` is set.
pub fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

pub async fn open_sim(disk: &SimDisk, cfg: StoreConfig) -> MessageStore {
    init_logs();
    MessageStore::open(cfg, Disk::Sim(disk.clone())).await.expect("store opens")
}
