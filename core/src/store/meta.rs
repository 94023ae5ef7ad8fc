//! Broker metadata as RocketMQ keeps it: `config/topics.json`, `config/subscriptionGroup.json`
//! and `config/consumerOffset.json`, in RocketMQ's JSON shapes.
//!
//! Writes are atomic through the disk seam: the new content goes to `<file>.tmp` and is
//! synced, the old file is kept as `<file>.bak`, then the temp file is renamed over the
//! original. Loads fall back to `.bak` when the file is missing or unreadable, and read
//! RocketMQ's unquoted integer keys.

use super::StoreError;
use crate::rt::disk::Disk;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataVersion {
    pub timestamp: i64,
    pub counter: i64,
}

impl DataVersion {
    pub fn next_version(&mut self, now_ms: i64) {
        self.timestamp = now_ms;
        self.counter += 1;
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TopicConfig {
    pub topic_name: String,
    pub read_queue_nums: u32,
    pub write_queue_nums: u32,
    pub perm: u32,
    pub topic_filter_type: String,
    pub topic_sys_flag: u32,
    pub order: bool,
}

impl Default for TopicConfig {
    fn default() -> Self {
        TopicConfig {
            topic_name: String::new(),
            read_queue_nums: 16,
            write_queue_nums: 16,
            perm: 6,
            topic_filter_type: "SINGLE_TAG".to_string(),
            topic_sys_flag: 0,
            order: false,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TopicConfigTable {
    pub data_version: DataVersion,
    pub topic_config_table: BTreeMap<String, TopicConfig>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SubscriptionGroupConfig {
    pub group_name: String,
    pub consume_enable: bool,
    pub consume_from_min_enable: bool,
    pub consume_broadcast_enable: bool,
    pub retry_queue_nums: u32,
    pub retry_max_times: u32,
    pub broker_id: u64,
    pub which_broker_when_consume_slowly: u64,
    pub notify_consumer_ids_changed_enable: bool,
}

impl Default for SubscriptionGroupConfig {
    fn default() -> Self {
        SubscriptionGroupConfig {
            group_name: String::new(),
            consume_enable: true,
            consume_from_min_enable: true,
            consume_broadcast_enable: true,
            retry_queue_nums: 1,
            retry_max_times: 16,
            broker_id: 0,
            which_broker_when_consume_slowly: 1,
            notify_consumer_ids_changed_enable: true,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SubscriptionGroupTable {
    pub data_version: DataVersion,
    pub subscription_group_table: BTreeMap<String, SubscriptionGroupConfig>,
}

/// `topic@group` → queue id → next offset to consume.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ConsumerOffsetTable {
    pub data_version: DataVersion,
    pub offset_table: BTreeMap<String, BTreeMap<i32, i64>>,
}

pub const TOPICS_FILE: &str = "topics.json";
pub const SUBSCRIPTION_GROUP_FILE: &str = "subscriptionGroup.json";
pub const CONSUMER_OFFSET_FILE: &str = "consumerOffset.json";

/// The `config/` directory of a store root.
pub fn config_dir(store_root: &Path) -> PathBuf {
    store_root.join("config")
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Writes `value` as pretty JSON to `path` atomically, keeping the previous file as `.bak`.
pub async fn persist<T: Serialize>(disk: &Disk, path: &Path, value: &T) -> Result<(), StoreError> {
    let json = serde_json::to_vec_pretty(value).map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display())))?;
    if let Some(dir) = path.parent() {
        disk.create_dir_all(dir).await?;
    }
    let tmp = with_suffix(path, ".tmp");
    disk.write_file(&tmp, &json, true).await?;
    if let Some(old) = disk.read_file(path).await? {
        disk.write_file(&with_suffix(path, ".bak"), &old, true).await?;
    }
    disk.rename(&tmp, path).await?;
    Ok(())
}

/// Reads `path` (or its `.bak` when the file is missing or unreadable). `None` when neither
/// exists; an error naming the file when what exists cannot be parsed.
pub async fn load<T: DeserializeOwned>(disk: &Disk, path: &Path) -> Result<Option<T>, StoreError> {
    let parse = |bytes: &[u8]| -> Result<T, String> {
        let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
        if text.trim().is_empty() {
            return Err("empty file".to_string());
        }
        serde_json::from_str(&crate::json::quote_numeric_keys(text)).map_err(|e| e.to_string())
    };
    let main_err = match disk.read_file(path).await? {
        Some(b) => match parse(&b) {
            Ok(v) => return Ok(Some(v)),
            Err(e) => Some(e),
        },
        None => None,
    };
    let bak = with_suffix(path, ".bak");
    match disk.read_file(&bak).await? {
        Some(b) => match parse(&b) {
            Ok(v) => {
                tracing::warn!(file = %path.display(), error = ?main_err, "loaded metadata from .bak");
                Ok(Some(v))
            }
            Err(e) => {
                Err(StoreError::Corrupt(format!("{}: {}; .bak: {e}", path.display(), main_err.unwrap_or_default())))
            }
        },
        None => match main_err {
            Some(e) => Err(StoreError::Corrupt(format!("{}: {e}", path.display()))),
            None => Ok(None),
        },
    }
}
