//! Typed custom headers for the requests whose fields Keel reads in more than one place.

use super::code::request;
use super::{ExtFields, HeaderError, RemotingCommand};

/// SEND_MESSAGE (full names) and SEND_MESSAGE_V2 / SEND_BATCH_MESSAGE (one-letter names).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct SendMessageHeader {
    pub producer_group: String,
    pub topic: String,
    pub default_topic: String,
    pub default_topic_queue_nums: i32,
    pub queue_id: i32,
    pub sys_flag: i32,
    pub born_timestamp: i64,
    pub flag: i32,
    pub properties: String,
    pub reconsume_times: i32,
    pub unit_mode: bool,
    pub batch: bool,
    pub max_reconsume_times: Option<i32>,
}

/// (full name, V2 letter) pairs, in `SendMessageRequestHeaderV2` order.
const FIELDS: [(&str, &str); 13] = [
    ("producerGroup", "a"),
    ("topic", "b"),
    ("defaultTopic", "c"),
    ("defaultTopicQueueNums", "d"),
    ("queueId", "e"),
    ("sysFlag", "f"),
    ("bornTimestamp", "g"),
    ("flag", "h"),
    ("properties", "i"),
    ("reconsumeTimes", "j"),
    ("unitMode", "k"),
    ("maxReconsumeTimes", "l"),
    ("batch", "m"),
];

impl SendMessageHeader {
    pub fn decode(cmd: &RemotingCommand) -> Result<Self, HeaderError> {
        let v2 = cmd.code != request::SEND_MESSAGE;
        let key = |i: usize| if v2 { FIELDS[i].1 } else { FIELDS[i].0 };
        let req_str = |i: usize| cmd.ext.get(key(i)).cloned().ok_or(HeaderError::Missing(FIELDS[i].0));
        let num = |i: usize, required: bool| -> Result<Option<i64>, HeaderError> {
            match cmd.ext.get(key(i)) {
                None if required => Err(HeaderError::Missing(FIELDS[i].0)),
                None => Ok(None),
                Some(s) if s == "null" && !required => Ok(None),
                Some(s) => s.trim().parse().map(Some).map_err(|_| HeaderError::Bad(FIELDS[i].0, s.clone())),
            }
        };
        let boolean = |i: usize| cmd.ext.get(key(i)).is_some_and(|s| s == "true");
        Ok(SendMessageHeader {
            producer_group: req_str(0)?,
            topic: req_str(1)?,
            default_topic: req_str(2)?,
            default_topic_queue_nums: num(3, true)?.unwrap_or(4) as i32,
            queue_id: num(4, true)?.unwrap_or(-1) as i32,
            sys_flag: num(5, true)?.unwrap_or(0) as i32,
            born_timestamp: num(6, true)?.unwrap_or(0),
            flag: num(7, true)?.unwrap_or(0) as i32,
            properties: cmd.ext.get(key(8)).cloned().unwrap_or_default(),
            reconsume_times: num(9, false)?.unwrap_or(0) as i32,
            unit_mode: boolean(10),
            max_reconsume_times: num(11, false)?.map(|v| v as i32),
            batch: boolean(12) || cmd.code == request::SEND_BATCH_MESSAGE,
        })
    }

    /// The header as SEND_MESSAGE_V2 fields.
    pub fn to_v2(&self) -> ExtFields {
        self.clone().into_v2()
    }

    /// [`Self::to_v2`], moving the strings instead of copying them.
    pub fn into_v2(self) -> ExtFields {
        let mut e = ExtFields::with_capacity(FIELDS.len());
        let mut put = |i: usize, v: String| {
            e.insert(FIELDS[i].1, v);
        };
        put(0, self.producer_group);
        put(1, self.topic);
        put(2, self.default_topic);
        put(3, self.default_topic_queue_nums.to_string());
        put(4, self.queue_id.to_string());
        put(5, self.sys_flag.to_string());
        put(6, self.born_timestamp.to_string());
        put(7, self.flag.to_string());
        put(8, self.properties);
        put(9, self.reconsume_times.to_string());
        put(10, self.unit_mode.to_string());
        if let Some(m) = self.max_reconsume_times {
            put(11, m.to_string());
        }
        put(12, self.batch.to_string());
        e
    }
}

/// PULL_MESSAGE.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct PullMessageHeader {
    pub consumer_group: String,
    pub topic: String,
    pub queue_id: i32,
    pub queue_offset: i64,
    pub max_msg_nums: i32,
    pub sys_flag: i32,
    pub commit_offset: i64,
    pub suspend_timeout_millis: i64,
    pub subscription: Option<String>,
    pub sub_version: i64,
    pub expression_type: Option<String>,
}

impl PullMessageHeader {
    pub fn decode(cmd: &RemotingCommand) -> Result<Self, HeaderError> {
        Ok(PullMessageHeader {
            consumer_group: cmd.req("consumerGroup")?,
            topic: cmd.req("topic")?,
            queue_id: cmd.req("queueId")?,
            queue_offset: cmd.req("queueOffset")?,
            max_msg_nums: cmd.req("maxMsgNums")?,
            sys_flag: cmd.req("sysFlag")?,
            commit_offset: cmd.req("commitOffset")?,
            suspend_timeout_millis: cmd.req("suspendTimeoutMillis")?,
            subscription: cmd.opt("subscription")?,
            sub_version: cmd.req("subVersion")?,
            expression_type: cmd.opt("expressionType")?,
        })
    }

    pub fn encode(&self) -> ExtFields {
        let mut e = ExtFields::with_capacity(11);
        e.insert("consumerGroup", self.consumer_group.clone());
        e.insert("topic", self.topic.clone());
        e.insert("queueId", self.queue_id.to_string());
        e.insert("queueOffset", self.queue_offset.to_string());
        e.insert("maxMsgNums", self.max_msg_nums.to_string());
        e.insert("sysFlag", self.sys_flag.to_string());
        e.insert("commitOffset", self.commit_offset.to_string());
        e.insert("suspendTimeoutMillis", self.suspend_timeout_millis.to_string());
        if let Some(s) = &self.subscription {
            e.insert("subscription", s.clone());
        }
        e.insert("subVersion", self.sub_version.to_string());
        e.insert("expressionType", self.expression_type.clone().unwrap_or_else(|| "TAG".into()));
        e
    }
}

/// Builds an [`ExtFields`] from pairs.
pub fn ext<const N: usize>(pairs: [(&'static str, String); N]) -> ExtFields {
    pairs.into_iter().collect()
}
