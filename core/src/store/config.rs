//! The store's part of `broker.properties` (RocketMQ's MessageStoreConfig): same keys, same
//! defaults. A bad value is an error naming the key; unknown keys are the caller's business.

use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushDiskType {
    AsyncFlush,
    SyncFlush,
}

#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub store_path_root_dir: PathBuf,
    /// Defaults to `<root>/commitlog`.
    pub store_path_commit_log: Option<PathBuf>,
    pub mapped_file_size_commit_log: u64,
    pub mapped_file_size_consume_queue: u64,
    pub flush_disk_type: FlushDiskType,
    pub flush_interval_commit_log_ms: u64,
    pub flush_commit_log_least_pages: u64,
    pub flush_commit_log_thorough_interval_ms: u64,
    pub flush_interval_consume_queue_ms: u64,
    pub sync_flush_timeout_ms: u64,
    pub max_message_size: usize,
    pub file_reserved_time_hours: u64,
    pub delete_when: String,
    pub disk_max_used_space_ratio: u64,
    pub clean_resource_interval_ms: u64,
    pub max_hash_slot_num: u64,
    pub max_index_num: u64,
    pub message_index_enable: bool,
    /// Append a whole-record CRC property (RocketMQ 5.x; on by default in Keel so a flipped
    /// bit anywhere in a record is caught, not only in the body).
    pub enabled_append_prop_crc: bool,
    /// Reject records that lack the CRC property on read and recovery.
    pub force_verify_prop_crc: bool,
    /// warmMapedFileEnable; unset means on under SYNC_FLUSH, off under ASYNC_FLUSH (see
    /// BENCHMARKS.md: it shortens each sync and costs write bandwidth).
    pub warm_mapped_file_enable: Option<bool>,
    /// `brokerIP1:listenPort`, written into every record's STOREHOST.
    pub store_host: std::net::SocketAddr,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            store_path_root_dir: PathBuf::from("store"),
            store_path_commit_log: None,
            mapped_file_size_commit_log: 1024 * 1024 * 1024,
            mapped_file_size_consume_queue: 300_000 * 20,
            flush_disk_type: FlushDiskType::AsyncFlush,
            flush_interval_commit_log_ms: 500,
            flush_commit_log_least_pages: 4,
            flush_commit_log_thorough_interval_ms: 10_000,
            flush_interval_consume_queue_ms: 1000,
            sync_flush_timeout_ms: 5000,
            max_message_size: 4 * 1024 * 1024,
            file_reserved_time_hours: 72,
            delete_when: "04".to_string(),
            disk_max_used_space_ratio: 75,
            clean_resource_interval_ms: 10_000,
            max_hash_slot_num: 5_000_000,
            max_index_num: 20_000_000,
            message_index_enable: true,
            enabled_append_prop_crc: true,
            force_verify_prop_crc: true,
            warm_mapped_file_enable: None,
            store_host: "127.0.0.1:10911".parse().unwrap(),
        }
    }
}

/// Keys this struct understands, for unknown-key suggestions.
pub const STORE_KEYS: &[&str] = &[
    "storePathRootDir",
    "storePathCommitLog",
    "mappedFileSizeCommitLog",
    "mappedFileSizeConsumeQueue",
    "flushDiskType",
    "flushIntervalCommitLog",
    "flushCommitLogLeastPages",
    "flushCommitLogThoroughInterval",
    "flushIntervalConsumeQueue",
    "syncFlushTimeout",
    "maxMessageSize",
    "fileReservedTime",
    "deleteWhen",
    "diskMaxUsedSpaceRatio",
    "cleanResourceInterval",
    "maxHashSlotNum",
    "maxIndexNum",
    "messageIndexEnable",
    "enabledAppendPropCRC",
    "forceVerifyPropCRC",
    "warmMapedFileEnable",
];

fn num<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, String> {
    value.trim().parse().map_err(|_| format!("{key}: '{value}' is not a valid number"))
}

fn boolean(key: &str, value: &str) -> Result<bool, String> {
    match value.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("{key}: '{value}' is not true or false")),
    }
}

impl StoreConfig {
    pub fn commit_log_dir(&self) -> PathBuf {
        self.store_path_commit_log.clone().unwrap_or_else(|| self.store_path_root_dir.join("commitlog"))
    }

    /// Applies one key. `Ok(false)` if the key is not a store key; `Err` names the key and
    /// says what is wrong with the value.
    pub fn set(&mut self, key: &str, value: &str) -> Result<bool, String> {
        match key {
            "storePathRootDir" => self.store_path_root_dir = PathBuf::from(value.trim()),
            "storePathCommitLog" => self.store_path_commit_log = Some(PathBuf::from(value.trim())),
            "mappedFileSizeCommitLog" => {
                let v: u64 = num(key, value)?;
                if v < 4096 {
                    return Err(format!("{key}: {v} is too small (at least 4096)"));
                }
                self.mapped_file_size_commit_log = v;
            }
            "mappedFileSizeConsumeQueue" => {
                let v: u64 = num(key, value)?;
                // RocketMQ rounds up to whole 20-byte entries.
                self.mapped_file_size_consume_queue = v.div_ceil(20).max(1) * 20;
            }
            "flushDiskType" => {
                self.flush_disk_type = match value.trim() {
                    "ASYNC_FLUSH" => FlushDiskType::AsyncFlush,
                    "SYNC_FLUSH" => FlushDiskType::SyncFlush,
                    _ => return Err(format!("{key}: '{value}' is not ASYNC_FLUSH or SYNC_FLUSH")),
                }
            }
            "flushIntervalCommitLog" => self.flush_interval_commit_log_ms = num(key, value)?,
            "flushCommitLogLeastPages" => self.flush_commit_log_least_pages = num(key, value)?,
            "flushCommitLogThoroughInterval" => self.flush_commit_log_thorough_interval_ms = num(key, value)?,
            "flushIntervalConsumeQueue" => self.flush_interval_consume_queue_ms = num(key, value)?,
            "syncFlushTimeout" => self.sync_flush_timeout_ms = num(key, value)?,
            "maxMessageSize" => self.max_message_size = num(key, value)?,
            "fileReservedTime" => self.file_reserved_time_hours = num(key, value)?,
            "deleteWhen" => {
                for h in value.split(';').map(str::trim).filter(|h| !h.is_empty()) {
                    match h.parse::<u32>() {
                        Ok(0..=23) => {}
                        _ => return Err(format!("{key}: '{h}' is not an hour 00-23")),
                    }
                }
                self.delete_when = value.trim().to_string();
            }
            "diskMaxUsedSpaceRatio" => {
                let v: u64 = num(key, value)?;
                if !(10..=95).contains(&v) {
                    return Err(format!("{key}: {v} must be between 10 and 95"));
                }
                self.disk_max_used_space_ratio = v;
            }
            "cleanResourceInterval" => self.clean_resource_interval_ms = num(key, value)?,
            "maxHashSlotNum" => self.max_hash_slot_num = num::<u64>(key, value)?.max(1),
            "maxIndexNum" => self.max_index_num = num::<u64>(key, value)?.max(2),
            "messageIndexEnable" => self.message_index_enable = boolean(key, value)?,
            "enabledAppendPropCRC" => self.enabled_append_prop_crc = boolean(key, value)?,
            "forceVerifyPropCRC" => self.force_verify_prop_crc = boolean(key, value)?,
            "warmMapedFileEnable" => self.warm_mapped_file_enable = Some(boolean(key, value)?),
            _ => return Ok(false),
        }
        Ok(true)
    }

    pub fn warm_mapped_file(&self) -> bool {
        self.warm_mapped_file_enable.unwrap_or(self.flush_disk_type == FlushDiskType::SyncFlush)
    }

    /// Hours of the day (UTC) at which expired files are deleted.
    pub fn delete_hours(&self) -> Vec<u32> {
        self.delete_when.split(';').filter_map(|h| h.trim().parse().ok()).collect()
    }
}
