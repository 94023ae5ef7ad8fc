//! JSON bodies in RocketMQ's shapes (field names as fastjson writes them). Output is standard
//! JSON; input goes through [`crate::json`] first, so fastjson's unquoted integer keys and
//! MessageQueue-object keys are read too.

use crate::store::meta::{DataVersion, TopicConfig};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Parses a body tolerantly (fastjson's integer and object map keys are quoted first).
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("body is not UTF-8: {e}"))?;
    let fixed = crate::json::quote_object_keys(&crate::json::quote_numeric_keys(text)).into_owned();
    serde_json::from_str(&fixed).map_err(|e| e.to_string())
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("bodies serialize")
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TopicConfigSerializeWrapper {
    pub topic_config_table: BTreeMap<String, TopicConfig>,
    pub data_version: DataVersion,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RegisterBrokerBody {
    pub topic_config_serialize_wrapper: TopicConfigSerializeWrapper,
    pub filter_server_list: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct QueueData {
    pub broker_name: String,
    pub read_queue_nums: u32,
    pub write_queue_nums: u32,
    pub perm: u32,
    pub topic_sys_flag: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct BrokerData {
    pub cluster: String,
    pub broker_name: String,
    pub broker_addrs: BTreeMap<u64, String>,
    pub enable_acting_master: bool,
}

impl BrokerData {
    pub fn master_addr(&self) -> Option<&str> {
        self.broker_addrs.get(&0).map(|s| s.as_str())
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TopicRouteData {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_topic_conf: Option<String>,
    pub queue_datas: Vec<QueueData>,
    pub broker_datas: Vec<BrokerData>,
    pub filter_server_table: BTreeMap<String, Vec<String>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ClusterInfo {
    pub broker_addr_table: BTreeMap<String, BrokerData>,
    pub cluster_addr_table: BTreeMap<String, BTreeSet<String>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TopicList {
    pub topic_list: BTreeSet<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HeartbeatData {
    #[serde(rename = "clientID")]
    pub client_id: String,
    pub producer_data_set: Vec<ProducerData>,
    pub consumer_data_set: Vec<ConsumerData>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProducerData {
    pub group_name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ConsumerData {
    pub group_name: String,
    pub consume_type: String,
    pub message_model: String,
    pub consume_from_where: String,
    pub subscription_data_set: Vec<SubscriptionData>,
    pub unit_mode: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SubscriptionData {
    pub class_filter_mode: bool,
    pub topic: String,
    pub sub_string: String,
    pub tags_set: BTreeSet<String>,
    pub code_set: BTreeSet<i32>,
    pub sub_version: i64,
    pub expression_type: String,
}

impl Default for SubscriptionData {
    fn default() -> Self {
        SubscriptionData {
            class_filter_mode: false,
            topic: String::new(),
            sub_string: "*".into(),
            tags_set: BTreeSet::new(),
            code_set: BTreeSet::new(),
            sub_version: 0,
            expression_type: "TAG".into(),
        }
    }
}

impl SubscriptionData {
    /// Parses a TAG expression (`*`, empty, or `TagA || TagB`) as RocketMQ's
    /// `FilterAPI.buildSubscriptionData` does.
    pub fn build(topic: &str, expression: &str, sub_version: i64) -> SubscriptionData {
        let expr = expression.trim();
        let mut s = SubscriptionData { topic: topic.to_string(), sub_version, ..Default::default() };
        if expr.is_empty() || expr == "*" {
            s.sub_string = "*".into();
        } else {
            s.sub_string = expr.to_string();
            for tag in expr.split("||").map(str::trim).filter(|t| !t.is_empty()) {
                s.tags_set.insert(tag.to_string());
                s.code_set.insert(crate::store::record::java_hash(tag));
            }
        }
        s
    }

    pub fn is_all(&self) -> bool {
        self.sub_string == "*" || self.sub_string.is_empty() || self.tags_set.is_empty()
    }

    /// Broker side: whether a consume-queue tag code may match.
    pub fn matches_code(&self, code: i64) -> bool {
        self.is_all() || self.code_set.contains(&(code as i32))
    }

    /// Client side: whether a message's tag matches exactly.
    pub fn matches_tag(&self, tag: Option<&str>) -> bool {
        self.is_all() || tag.is_some_and(|t| self.tags_set.contains(t))
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ConsumerListBody {
    pub consumer_id_list: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct KvTable {
    pub table: BTreeMap<String, String>,
}

/// A queue of a topic on one broker. Orders as RocketMQ sorts queues for rebalance.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MessageQueue {
    pub topic: String,
    pub broker_name: String,
    pub queue_id: i32,
}

impl std::fmt::Display for MessageQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}#{}", self.topic, self.broker_name, self.queue_id)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TopicOffset {
    pub min_offset: i64,
    pub max_offset: i64,
    pub last_update_timestamp: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OffsetWrapper {
    pub broker_offset: i64,
    pub consumer_offset: i64,
    pub last_timestamp: i64,
}

/// Writes `{"offsetTable":{<MessageQueue JSON>:<value>,…}<extra>}` the way fastjson does,
/// with the queue objects themselves as keys (GET_TOPIC_STATS_INFO, GET_CONSUME_STATS).
pub fn encode_queue_map<V: Serialize>(table: &BTreeMap<MessageQueue, V>, extra: &str) -> Vec<u8> {
    let mut out = b"{\"offsetTable\":{".to_vec();
    for (i, (mq, v)) in table.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&encode(mq));
        out.push(b':');
        out.extend_from_slice(&encode(v));
    }
    out.push(b'}');
    out.extend_from_slice(extra.as_bytes());
    out.push(b'}');
    out
}

/// Reads the `offsetTable` written by [`encode_queue_map`] (or by RocketMQ).
pub fn decode_queue_map<V: DeserializeOwned>(body: &[u8]) -> Result<BTreeMap<MessageQueue, V>, String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Wrapper<V> {
        offset_table: BTreeMap<String, V>,
    }
    let w: Wrapper<V> = decode(body)?;
    w.offset_table
        .into_iter()
        .map(|(k, v)| serde_json::from_str::<MessageQueue>(&k).map(|mq| (mq, v)).map_err(|e| e.to_string()))
        .collect()
}
