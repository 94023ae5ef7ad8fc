//! Topic and subscription-group configuration, kept in `config/topics.json` and
//! `config/subscriptionGroup.json`, and consumer offsets in `config/consumerOffset.json`.

use crate::config::broker::BrokerConfig;
use crate::protocol::code::perm;
use crate::rt::disk::Disk;
use crate::store::meta::{
    self, ConsumerOffsetTable, SubscriptionGroupConfig, SubscriptionGroupTable, TopicConfig, TopicConfigTable,
};
use crate::store::StoreError;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

pub const DEFAULT_TOPIC: &str = "TBW102";
pub const SELF_TEST_TOPIC: &str = "SELF_TEST_TOPIC";
pub const OFFSET_MOVED_EVENT: &str = "OFFSET_MOVED_EVENT";
pub const RETRY_PREFIX: &str = "%RETRY%";
pub const DLQ_PREFIX: &str = "%DLQ%";

/// RocketMQ's `TopicValidator`: `^[%|a-zA-Z0-9_-]+$`, at most 127 characters.
pub fn validate_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("The specified topic is blank.".into());
    }
    if topic.len() > 127 {
        return Err(format!("The specified topic is longer than topic max length 127: {topic}"));
    }
    if !topic.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'%' || b == b'|' || b == b'_' || b == b'-') {
        return Err(format!(
            "The specified topic[{topic}] contains illegal characters, allowing only ^[%|a-zA-Z0-9_-]+$"
        ));
    }
    Ok(())
}

pub fn retry_topic(group: &str) -> String {
    format!("{RETRY_PREFIX}{group}")
}

pub fn dlq_topic(group: &str) -> String {
    format!("{DLQ_PREFIX}{group}")
}

pub struct TopicManager {
    table: Mutex<TopicConfigTable>,
    path: PathBuf,
}

impl TopicManager {
    pub async fn load(disk: &Disk, cfg: &BrokerConfig) -> Result<TopicManager, StoreError> {
        let path = meta::config_dir(&cfg.store.store_path_root_dir).join(meta::TOPICS_FILE);
        let mut table: TopicConfigTable = meta::load(disk, &path).await?.unwrap_or_default();
        let mut system = |name: &str, queues: u32, p: u32| {
            table.topic_config_table.entry(name.to_string()).or_insert_with(|| TopicConfig {
                topic_name: name.to_string(),
                read_queue_nums: queues,
                write_queue_nums: queues,
                perm: p,
                ..Default::default()
            });
        };
        system(SELF_TEST_TOPIC, 1, perm::READ | perm::WRITE);
        if cfg.auto_create_topic_enable {
            system(DEFAULT_TOPIC, cfg.default_topic_queue_nums, perm::READ | perm::WRITE | perm::INHERIT);
        }
        // A topic named after the cluster and one after the broker (RocketMQ uses them to
        // route admin sends); only readable/writable per brokerPermission.
        system(&cfg.broker_cluster_name, 16, perm::READ | perm::WRITE);
        system(&cfg.broker_name, 1, perm::READ | perm::WRITE);
        system(OFFSET_MOVED_EVENT, 1, perm::READ | perm::WRITE);
        Ok(TopicManager { table: Mutex::new(table), path })
    }

    pub fn get(&self, topic: &str) -> Option<TopicConfig> {
        self.table.lock().unwrap().topic_config_table.get(topic).cloned()
    }

    /// Creates or replaces a topic; true when anything changed.
    pub fn put(&self, tc: TopicConfig) -> bool {
        let mut t = self.table.lock().unwrap();
        if t.topic_config_table.get(&tc.topic_name) == Some(&tc) {
            return false;
        }
        t.topic_config_table.insert(tc.topic_name.clone(), tc);
        t.data_version.next_version(crate::rt::now_ms() as i64);
        true
    }

    /// A slave takes its master's table whole when its version differs; true if it did.
    pub fn replace_from_master(&self, master: TopicConfigTable) -> bool {
        let mut t = self.table.lock().unwrap();
        if t.data_version == master.data_version {
            return false;
        }
        *t = master;
        true
    }

    /// A snapshot of every topic and the version, for registration and GET_ALL_TOPIC_CONFIG.
    pub fn snapshot(&self) -> TopicConfigTable {
        self.table.lock().unwrap().clone()
    }

    pub async fn persist(&self, disk: &Disk) -> Result<(), StoreError> {
        let snap = self.snapshot();
        meta::persist(disk, &self.path, &snap).await
    }
}

pub struct GroupManager {
    table: Mutex<SubscriptionGroupTable>,
    path: PathBuf,
}

impl GroupManager {
    pub async fn load(disk: &Disk, cfg: &BrokerConfig) -> Result<GroupManager, StoreError> {
        let path = meta::config_dir(&cfg.store.store_path_root_dir).join(meta::SUBSCRIPTION_GROUP_FILE);
        let table = meta::load(disk, &path).await?.unwrap_or_default();
        Ok(GroupManager { table: Mutex::new(table), path })
    }

    pub fn get(&self, group: &str) -> Option<SubscriptionGroupConfig> {
        self.table.lock().unwrap().subscription_group_table.get(group).cloned()
    }

    /// The group's config, created with defaults when `auto_create`; `(config, created)`.
    pub fn find_or_create(&self, group: &str, auto_create: bool) -> Option<(SubscriptionGroupConfig, bool)> {
        let mut t = self.table.lock().unwrap();
        if let Some(g) = t.subscription_group_table.get(group) {
            return Some((g.clone(), false));
        }
        if !auto_create {
            return None;
        }
        let g = SubscriptionGroupConfig { group_name: group.to_string(), ..Default::default() };
        t.subscription_group_table.insert(group.to_string(), g.clone());
        t.data_version.next_version(crate::rt::now_ms() as i64);
        Some((g, true))
    }

    pub fn put(&self, g: SubscriptionGroupConfig) {
        let mut t = self.table.lock().unwrap();
        t.subscription_group_table.insert(g.group_name.clone(), g);
        t.data_version.next_version(crate::rt::now_ms() as i64);
    }

    /// A slave takes its master's table whole when its version differs; true if it did.
    pub fn replace_from_master(&self, master: SubscriptionGroupTable) -> bool {
        let mut t = self.table.lock().unwrap();
        if t.data_version == master.data_version {
            return false;
        }
        *t = master;
        true
    }

    pub fn snapshot(&self) -> SubscriptionGroupTable {
        self.table.lock().unwrap().clone()
    }

    pub async fn persist(&self, disk: &Disk) -> Result<(), StoreError> {
        let snap = self.snapshot();
        meta::persist(disk, &self.path, &snap).await
    }
}

/// Committed consumer offsets: `topic@group` → queue → next offset to consume.
pub struct OffsetManager {
    table: Mutex<ConsumerOffsetTable>,
    dirty: std::sync::atomic::AtomicBool,
    path: PathBuf,
}

impl OffsetManager {
    pub async fn load(disk: &Disk, cfg: &BrokerConfig) -> Result<OffsetManager, StoreError> {
        let path = meta::config_dir(&cfg.store.store_path_root_dir).join(meta::CONSUMER_OFFSET_FILE);
        let table = meta::load(disk, &path).await?.unwrap_or_default();
        Ok(OffsetManager { table: Mutex::new(table), dirty: Default::default(), path })
    }

    fn key(topic: &str, group: &str) -> String {
        format!("{topic}@{group}")
    }

    pub fn commit(&self, group: &str, topic: &str, queue_id: i32, offset: i64) {
        let mut t = self.table.lock().unwrap();
        t.offset_table.entry(Self::key(topic, group)).or_default().insert(queue_id, offset);
        self.dirty.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Moves every committed offset past `end(topic, queue)` back to it; returns each move as
    /// (group, topic, queue, from, to).
    pub fn move_back_past(&self, end: impl Fn(&str, i32) -> Option<u64>) -> Vec<(String, String, i32, i64, i64)> {
        let mut moved = Vec::new();
        let mut t = self.table.lock().unwrap();
        for (key, queues) in t.offset_table.iter_mut() {
            let Some((topic, group)) = key.split_once('@') else { continue };
            for (&queue_id, offset) in queues.iter_mut() {
                if let Some(end) = end(topic, queue_id).map(|e| e as i64).filter(|e| *offset > *e) {
                    moved.push((group.to_string(), topic.to_string(), queue_id, *offset, end));
                    *offset = end;
                }
            }
        }
        if !moved.is_empty() {
            self.dirty.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        moved
    }

    /// A slave takes its master's offsets over its own, queue by queue (RocketMQ's putAll
    /// of whole `topic@group` entries would drop queues only the slave has seen committed).
    pub fn put_all(&self, master: ConsumerOffsetTable) {
        let mut t = self.table.lock().unwrap();
        for (key, queues) in master.offset_table {
            t.offset_table.entry(key).or_default().extend(queues);
        }
        self.dirty.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn query(&self, group: &str, topic: &str, queue_id: i32) -> Option<i64> {
        self.table.lock().unwrap().offset_table.get(&Self::key(topic, group)).and_then(|q| q.get(&queue_id)).copied()
    }

    /// Every (topic, queue → offset) committed by `group`.
    pub fn of_group(&self, group: &str) -> BTreeMap<String, BTreeMap<i32, i64>> {
        let suffix = format!("@{group}");
        self.table
            .lock()
            .unwrap()
            .offset_table
            .iter()
            .filter_map(|(k, v)| k.strip_suffix(&suffix).map(|t| (t.to_string(), v.clone())))
            .collect()
    }

    /// Groups with committed offsets on `topic`.
    pub fn groups_of_topic(&self, topic: &str) -> Vec<String> {
        let prefix = format!("{topic}@");
        self.table
            .lock()
            .unwrap()
            .offset_table
            .keys()
            .filter_map(|k| k.strip_prefix(&prefix).map(String::from))
            .collect()
    }

    pub fn snapshot(&self) -> ConsumerOffsetTable {
        self.table.lock().unwrap().clone()
    }

    /// Writes the offsets if anything changed since the last write (or `force`).
    pub async fn persist(&self, disk: &Disk, force: bool) -> Result<(), StoreError> {
        if !self.dirty.swap(false, std::sync::atomic::Ordering::Relaxed) && !force {
            return Ok(());
        }
        let snap = self.snapshot();
        meta::persist(disk, &self.path, &snap).await
    }
}
