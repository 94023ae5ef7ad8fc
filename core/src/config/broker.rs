//! `broker.properties`: RocketMQ's keys and defaults. The store's keys go to
//! [`StoreConfig`]; the broker's own are kept here. Unlike RocketMQ, which ignores unknown
//! keys and bad values silently, an unknown key is a warning naming the closest known key, and
//! a bad value is an error naming the file, line and key.

use super::{closest, parse_properties};
use crate::store::config::{StoreConfig, STORE_KEYS};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BrokerRole {
    AsyncMaster,
    SyncMaster,
    Slave,
}

#[derive(Clone, Debug)]
pub struct BrokerConfig {
    pub broker_cluster_name: String,
    pub broker_name: String,
    pub broker_id: u64,
    pub broker_role: BrokerRole,
    /// `;`-separated name server addresses.
    pub namesrv_addr: Option<String>,
    pub listen_port: u16,
    pub broker_ip1: String,
    pub auto_create_topic_enable: bool,
    pub auto_create_subscription_group: bool,
    pub default_topic_queue_nums: u32,
    pub broker_permission: u32,
    pub long_polling_enable: bool,
    pub short_polling_time_mills: u64,
    pub register_name_server_period_ms: u64,
    pub flush_consumer_offset_interval_ms: u64,
    pub client_channel_max_idle_time_ms: u64,
    /// HA listener port (0 = listenPort + 1, RocketMQ's default).
    pub ha_listen_port: u16,
    /// A slave's master HA address; empty = learn it from the name server.
    pub ha_master_address: Option<String>,
    pub ha_send_heartbeat_interval_ms: u64,
    pub ha_housekeeping_interval_ms: u64,
    pub ha_transfer_batch_size: usize,
    pub ha_slave_fallbehind_max: u64,
    /// How long a SYNC_MASTER send waits for its slave before FLUSH_SLAVE_TIMEOUT.
    pub slave_timeout_ms: u64,
    /// Keel: how long a SYNC_MASTER that did not stop cleanly waits for a slave to give back
    /// the log tail it lost, before it takes sends again (`haReclaimTimeout`).
    pub ha_reclaim_timeout_ms: u64,
    pub slave_read_enable: bool,
    /// A consumer more than this share of the machine's memory behind the log's end is told
    /// to read from a slave (`suggestWhichBrokerId`), when slave reads are on.
    pub access_message_in_memory_max_ratio: u64,
    /// The machine's physical memory in bytes (the binary reads it at start).
    pub total_physical_memory: u64,
    pub store: StoreConfig,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            broker_cluster_name: "DefaultCluster".into(),
            broker_name: "broker-a".into(),
            broker_id: 0,
            broker_role: BrokerRole::AsyncMaster,
            namesrv_addr: None,
            listen_port: 10911,
            broker_ip1: "127.0.0.1".into(),
            auto_create_topic_enable: true,
            auto_create_subscription_group: true,
            default_topic_queue_nums: 8,
            broker_permission: 6,
            long_polling_enable: true,
            short_polling_time_mills: 1000,
            register_name_server_period_ms: 30_000,
            flush_consumer_offset_interval_ms: 5_000,
            client_channel_max_idle_time_ms: 120_000,
            ha_listen_port: 0,
            ha_master_address: None,
            ha_send_heartbeat_interval_ms: 5_000,
            ha_housekeeping_interval_ms: 20_000,
            ha_transfer_batch_size: 32 * 1024,
            ha_slave_fallbehind_max: 256 * 1024 * 1024,
            slave_timeout_ms: 3_000,
            ha_reclaim_timeout_ms: 15_000,
            slave_read_enable: false,
            access_message_in_memory_max_ratio: 40,
            total_physical_memory: 8 << 30,
            store: StoreConfig::default(),
        }
    }
}

/// RocketMQ broker keys accepted and shown by `-p` that later parts of Keel act on.
const BROKER_KEYS: &[&str] = &[
    "brokerClusterName",
    "brokerName",
    "brokerId",
    "brokerRole",
    "namesrvAddr",
    "listenPort",
    "brokerIP1",
    "autoCreateTopicEnable",
    "autoCreateSubscriptionGroup",
    "defaultTopicQueueNums",
    "brokerPermission",
    "longPollingEnable",
    "shortPollingTimeMills",
    "registerNameServerPeriod",
    "flushConsumerOffsetInterval",
    "clientChannelMaxIdleTimeSeconds",
    "haListenPort",
    "haMasterAddress",
    "haSendHeartbeatInterval",
    "haHousekeepingInterval",
    "haTransferBatchSize",
    "haSlaveFallbehindMax",
    "slaveTimeout",
    "haReclaimTimeout",
    "slaveReadEnable",
    "accessMessageInMemoryMaxRatio",
];

/// RocketMQ keys Keel accepts and has nothing to do for (thread pools and the like sized for
/// the JVM): no warning, no effect.
const ACCEPTED_KEYS: &[&str] = &[
    "sendMessageThreadPoolNums",
    "pullMessageThreadPoolNums",
    "useReentrantLockWhenPutMessage",
    "rocketmqHome",
    "serverWorkerThreads",
    "serverSelectorThreads",
    "clientWorkerThreads",
    "forceRegister",
    "compressedRegister",
    "traceTopicEnable",
    "aclEnable",
];

fn parse_bool(key: &str, value: &str) -> Result<bool, String> {
    match value.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("{key}: '{value}' is not true or false")),
    }
}

fn parse_num(key: &str, value: &str, min: u64, max: u64) -> Result<u64, String> {
    match value.trim().parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!("{key}: '{value}' is not a number in {min}..={max}")),
    }
}

/// A bad value: where it is and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

impl BrokerConfig {
    /// Applies one key; `Ok(false)` for an unknown key.
    pub fn set(&mut self, key: &str, value: &str) -> Result<bool, String> {
        let v = value.trim();
        match key {
            "brokerClusterName" => self.broker_cluster_name = v.into(),
            "brokerName" => self.broker_name = v.into(),
            "brokerId" => self.broker_id = v.parse().map_err(|_| format!("{key}: '{value}' is not a number"))?,
            "brokerRole" => {
                self.broker_role = match v {
                    "ASYNC_MASTER" => BrokerRole::AsyncMaster,
                    "SYNC_MASTER" => BrokerRole::SyncMaster,
                    "SLAVE" => BrokerRole::Slave,
                    _ => return Err(format!("{key}: '{value}' is not ASYNC_MASTER, SYNC_MASTER or SLAVE")),
                }
            }
            "namesrvAddr" => self.namesrv_addr = Some(v.into()),
            "listenPort" => self.listen_port = v.parse().map_err(|_| format!("{key}: '{value}' is not a port"))?,
            "brokerIP1" => self.broker_ip1 = v.into(),
            "autoCreateTopicEnable" => self.auto_create_topic_enable = parse_bool(key, value)?,
            "autoCreateSubscriptionGroup" => self.auto_create_subscription_group = parse_bool(key, value)?,
            "longPollingEnable" => self.long_polling_enable = parse_bool(key, value)?,
            "defaultTopicQueueNums" => self.default_topic_queue_nums = parse_num(key, value, 1, 1024)? as u32,
            "brokerPermission" => self.broker_permission = parse_num(key, value, 0, 7)? as u32,
            "shortPollingTimeMills" => self.short_polling_time_mills = parse_num(key, value, 1, u32::MAX as u64)?,
            // RocketMQ clamps the period to 10..60 s.
            "registerNameServerPeriod" => {
                self.register_name_server_period_ms = parse_num(key, value, 0, u64::MAX)?.clamp(10_000, 60_000)
            }
            "flushConsumerOffsetInterval" => {
                self.flush_consumer_offset_interval_ms = parse_num(key, value, 1, u32::MAX as u64)?
            }
            "clientChannelMaxIdleTimeSeconds" => {
                self.client_channel_max_idle_time_ms = parse_num(key, value, 1, u32::MAX as u64)? * 1000
            }
            "haListenPort" => self.ha_listen_port = v.parse().map_err(|_| format!("{key}: '{value}' is not a port"))?,
            "haMasterAddress" => self.ha_master_address = Some(v.to_string()).filter(|a| !a.is_empty()),
            "haSendHeartbeatInterval" => self.ha_send_heartbeat_interval_ms = parse_num(key, value, 100, 3_600_000)?,
            "haHousekeepingInterval" => self.ha_housekeeping_interval_ms = parse_num(key, value, 1_000, 3_600_000)?,
            "haTransferBatchSize" => self.ha_transfer_batch_size = parse_num(key, value, 1024, 64 << 20)? as usize,
            "haSlaveFallbehindMax" => self.ha_slave_fallbehind_max = parse_num(key, value, 0, u64::MAX)?,
            "slaveTimeout" => self.slave_timeout_ms = parse_num(key, value, 1, 3_600_000)?,
            "haReclaimTimeout" => self.ha_reclaim_timeout_ms = parse_num(key, value, 0, 3_600_000)?,
            "slaveReadEnable" => self.slave_read_enable = parse_bool(key, value)?,
            "accessMessageInMemoryMaxRatio" => self.access_message_in_memory_max_ratio = parse_num(key, value, 0, 100)?,
            k if ACCEPTED_KEYS.contains(&k) => {}
            _ => return self.store.set(key, value),
        }
        Ok(true)
    }

    /// Parses properties text. Returns the config and one warning per unknown key.
    pub fn from_properties(text: &str, file: &str) -> Result<(BrokerConfig, Vec<String>), ConfigError> {
        let mut cfg = BrokerConfig::default();
        let mut warnings = Vec::new();
        for e in parse_properties(text) {
            match cfg.set(&e.key, &e.value) {
                Ok(true) => {}
                Ok(false) => {
                    let known = BROKER_KEYS.iter().chain(STORE_KEYS.iter()).copied();
                    let hint = closest(&e.key, known).map(|k| format!(" (did you mean {k}?)")).unwrap_or_default();
                    warnings.push(format!("{file}:{}: unknown key {}{hint}; ignored", e.line, e.key));
                }
                Err(message) => return Err(ConfigError { file: file.into(), line: e.line, message }),
            }
        }
        cfg.finish().map_err(|message| ConfigError { file: file.into(), line: 0, message })?;
        Ok((cfg, warnings))
    }

    /// Derives what follows from the keys (the store host) and checks the combination.
    pub fn finish(&mut self) -> Result<(), String> {
        self.store.store_host = format!("{}:{}", self.broker_ip1, self.listen_port)
            .parse()
            .map_err(|_| format!("brokerIP1: '{}' is not an IP address", self.broker_ip1))?;
        match (self.broker_role, self.broker_id) {
            (BrokerRole::Slave, 0) => return Err("brokerId: a SLAVE needs a brokerId above 0".into()),
            (BrokerRole::AsyncMaster | BrokerRole::SyncMaster, id) if id != 0 => {
                tracing::warn!(broker_id = id, "a master's brokerId is forced to 0");
                self.broker_id = 0;
            }
            _ => {}
        }
        Ok(())
    }

    /// The HA listener's port: `haListenPort`, or listenPort + 1.
    pub fn ha_port(&self) -> u16 {
        if self.ha_listen_port != 0 {
            self.ha_listen_port
        } else {
            self.listen_port.wrapping_add(1)
        }
    }

    /// "ip:port" clients reach this broker at.
    pub fn broker_addr(&self) -> String {
        format!("{}:{}", self.broker_ip1, self.listen_port)
    }

    /// Every key and value, as `-p` prints them (`-m`: only the important ones).
    pub fn describe(&self, important_only: bool) -> Vec<(&'static str, String)> {
        let s = &self.store;
        let mut out = vec![
            ("brokerClusterName", self.broker_cluster_name.clone()),
            ("brokerName", self.broker_name.clone()),
            ("brokerId", self.broker_id.to_string()),
            (
                "brokerRole",
                format!("{:?}", self.broker_role)
                    .to_uppercase()
                    .replace("ASYNCMASTER", "ASYNC_MASTER")
                    .replace("SYNCMASTER", "SYNC_MASTER"),
            ),
            ("namesrvAddr", self.namesrv_addr.clone().unwrap_or_default()),
            ("listenPort", self.listen_port.to_string()),
            ("brokerIP1", self.broker_ip1.clone()),
            ("autoCreateTopicEnable", self.auto_create_topic_enable.to_string()),
            ("storePathRootDir", s.store_path_root_dir.display().to_string()),
            ("storePathCommitLog", s.commit_log_dir().display().to_string()),
            (
                "flushDiskType",
                if s.flush_disk_type == crate::store::FlushDiskType::SyncFlush { "SYNC_FLUSH" } else { "ASYNC_FLUSH" }
                    .into(),
            ),
        ];
        if !important_only {
            out.extend([
                ("autoCreateSubscriptionGroup", self.auto_create_subscription_group.to_string()),
                ("defaultTopicQueueNums", self.default_topic_queue_nums.to_string()),
                ("brokerPermission", self.broker_permission.to_string()),
                ("longPollingEnable", self.long_polling_enable.to_string()),
                ("shortPollingTimeMills", self.short_polling_time_mills.to_string()),
                ("registerNameServerPeriod", self.register_name_server_period_ms.to_string()),
                ("flushConsumerOffsetInterval", self.flush_consumer_offset_interval_ms.to_string()),
                ("clientChannelMaxIdleTimeSeconds", (self.client_channel_max_idle_time_ms / 1000).to_string()),
                ("haListenPort", self.ha_port().to_string()),
                ("haMasterAddress", self.ha_master_address.clone().unwrap_or_default()),
                ("haSendHeartbeatInterval", self.ha_send_heartbeat_interval_ms.to_string()),
                ("haHousekeepingInterval", self.ha_housekeeping_interval_ms.to_string()),
                ("haTransferBatchSize", self.ha_transfer_batch_size.to_string()),
                ("haSlaveFallbehindMax", self.ha_slave_fallbehind_max.to_string()),
                ("slaveTimeout", self.slave_timeout_ms.to_string()),
                ("haReclaimTimeout", self.ha_reclaim_timeout_ms.to_string()),
                ("slaveReadEnable", self.slave_read_enable.to_string()),
                ("accessMessageInMemoryMaxRatio", self.access_message_in_memory_max_ratio.to_string()),
                ("mappedFileSizeCommitLog", s.mapped_file_size_commit_log.to_string()),
                ("mappedFileSizeConsumeQueue", s.mapped_file_size_consume_queue.to_string()),
                ("flushIntervalCommitLog", s.flush_interval_commit_log_ms.to_string()),
                ("flushCommitLogLeastPages", s.flush_commit_log_least_pages.to_string()),
                ("flushCommitLogThoroughInterval", s.flush_commit_log_thorough_interval_ms.to_string()),
                ("flushIntervalConsumeQueue", s.flush_interval_consume_queue_ms.to_string()),
                ("syncFlushTimeout", s.sync_flush_timeout_ms.to_string()),
                ("maxMessageSize", s.max_message_size.to_string()),
                ("fileReservedTime", s.file_reserved_time_hours.to_string()),
                ("deleteWhen", s.delete_when.clone()),
                ("diskMaxUsedSpaceRatio", s.disk_max_used_space_ratio.to_string()),
                ("cleanResourceInterval", s.clean_resource_interval_ms.to_string()),
                ("maxHashSlotNum", s.max_hash_slot_num.to_string()),
                ("maxIndexNum", s.max_index_num.to_string()),
                ("messageIndexEnable", s.message_index_enable.to_string()),
                ("enabledAppendPropCRC", s.enabled_append_prop_crc.to_string()),
                ("forceVerifyPropCRC", s.force_verify_prop_crc.to_string()),
                ("warmMapedFileEnable", s.warm_mapped_file().to_string()),
            ]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rocketmq_broker_conf() {
        let text = "brokerClusterName = DefaultCluster\nbrokerName = broker-a\nbrokerId = 0\ndeleteWhen = 04\nfileReservedTime = 48\nbrokerRole = ASYNC_MASTER\nflushDiskType = SYNC_FLUSH\n";
        let (cfg, warnings) = BrokerConfig::from_properties(text, "broker.conf").unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(cfg.store.file_reserved_time_hours, 48);
        assert_eq!(cfg.store.flush_disk_type, crate::store::FlushDiskType::SyncFlush);
        assert!(cfg.store.warm_mapped_file());
    }

    #[test]
    fn unknown_keys_warn_with_a_suggestion_and_bad_values_name_file_line_and_key() {
        let (_, warnings) = BrokerConfig::from_properties("flushDiskTyp=SYNC_FLUSH\n", "b.properties").unwrap();
        assert_eq!(warnings, ["b.properties:1: unknown key flushDiskTyp (did you mean flushDiskType?); ignored"]);
        let err = BrokerConfig::from_properties("brokerName=a\nflushDiskType=FAST\n", "b.properties").unwrap_err();
        assert_eq!(err.to_string(), "b.properties:2: flushDiskType: 'FAST' is not ASYNC_FLUSH or SYNC_FLUSH");
        let err = BrokerConfig::from_properties("maxMessageSize=4M\n", "b.properties").unwrap_err();
        assert!(err.to_string().contains("b.properties:1: maxMessageSize"), "{err}");
    }
}
