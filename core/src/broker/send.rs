//! SEND_MESSAGE(_V2), SEND_BATCH_MESSAGE and CONSUMER_SEND_MSG_BACK.

use super::topics::{dlq_topic, retry_topic, validate_topic, DEFAULT_TOPIC, DLQ_PREFIX, RETRY_PREFIX};
use super::Broker;
use crate::protocol::code::{perm, response};
use crate::protocol::header::SendMessageHeader;
use crate::protocol::message::{
    decode_batch, rewrite_properties, PROPERTY_CLUSTER, PROPERTY_DELAY, PROPERTY_ORIGIN_MESSAGE_ID,
    PROPERTY_RETRY_TOPIC,
};
use crate::protocol::RemotingCommand;
use crate::remoting::Connection;
use crate::store::meta::TopicConfig;
use crate::store::record::{self, MessageInner};
use crate::store::{PutResult, PutStatus, StoreError};
use rand::Rng;
use std::sync::atomic::Ordering;
use std::sync::Arc;

fn service_not_available(req: &RemotingCommand, why: &str) -> RemotingCommand {
    req.error(response::SERVICE_NOT_AVAILABLE, format!("service not available now: {why}"))
}

impl Broker {
    /// Decodes the send header, then RocketMQ's `msgCheck`: broker permission, topic name,
    /// topic existence (creating it from `defaultTopic` when allowed), queue id. Returns the
    /// header and the queue id to store in.
    fn check_send(self: &Arc<Self>, req: &RemotingCommand) -> Result<(SendMessageHeader, i32), RemotingCommand> {
        let header = SendMessageHeader::decode(req).map_err(|e| req.error(response::SYSTEM_ERROR, e.to_string()))?;
        let h = &header;
        if self.is_slave() {
            return Err(service_not_available(req, "messages are not accepted by a SLAVE broker"));
        }
        if self.ha.reclaiming() {
            return Err(service_not_available(
                req,
                "this master did not stop cleanly and is taking back from its slave the log tail it lost",
            ));
        }
        if !perm::writeable(self.cfg.broker_permission) {
            return Err(req.error(
                response::NO_PERMISSION,
                format!("the broker[{}] sending message is forbidden", self.cfg.broker_name),
            ));
        }
        if let Err(e) = validate_topic(&h.topic) {
            return Err(req.error(response::SYSTEM_ERROR, e));
        }
        if h.topic == DEFAULT_TOPIC {
            return Err(
                req.error(response::SYSTEM_ERROR, format!("the topic[{}] is conflict with system topic.", h.topic))
            );
        }
        let tc = match self.topics.get(&h.topic) {
            Some(tc) => tc,
            None => match self.auto_create_topic(h) {
                Some(tc) => tc,
                None => {
                    return Err(req.error(
                        response::TOPIC_NOT_EXIST,
                        format!(
                        "topic[{}] not exist, apply first please! https://rocketmq.apache.org/docs/bestPractice/06FAQ",
                        h.topic
                    ),
                    ))
                }
            },
        };
        if !perm::writeable(tc.perm) {
            return Err(
                req.error(response::NO_PERMISSION, format!("the topic[{}] sending message is forbidden", h.topic))
            );
        }
        let max = tc.read_queue_nums.max(tc.write_queue_nums) as i32;
        let queue_id =
            if h.queue_id < 0 { crate::rt::rng().gen_range(0..tc.write_queue_nums.max(1) as i32) } else { h.queue_id };
        if queue_id >= max {
            return Err(req.error(
                response::SYSTEM_ERROR,
                format!(
                    "request queueId[{queue_id}] is illegal, {tc:?} Producer: {}",
                    req.get("a").unwrap_or_default()
                ),
            ));
        }
        Ok((header, queue_id))
    }

    /// Creates an unknown topic from its `defaultTopic` (which must exist and be
    /// inheritable), or a retry topic; registers the change at once.
    fn auto_create_topic(self: &Arc<Self>, h: &SendMessageHeader) -> Option<TopicConfig> {
        let tc = if h.topic.starts_with(RETRY_PREFIX) {
            TopicConfig { topic_name: h.topic.clone(), read_queue_nums: 1, write_queue_nums: 1, ..Default::default() }
        } else {
            let def = self.topics.get(&h.default_topic)?;
            if !perm::inherited(def.perm) {
                tracing::warn!(topic = %h.topic, default = %h.default_topic, "default topic is not inheritable; not creating");
                return None;
            }
            let queues = (h.default_topic_queue_nums.max(1) as u32).min(def.write_queue_nums);
            TopicConfig {
                topic_name: h.topic.clone(),
                read_queue_nums: queues,
                write_queue_nums: queues,
                perm: def.perm & !perm::INHERIT,
                ..Default::default()
            }
        };
        tracing::info!(topic = %tc.topic_name, queues = tc.write_queue_nums, "auto-created topic");
        self.ensure_topic(tc)
    }

    /// Creates a topic if absent; returns the topic as configured afterwards.
    pub(super) fn ensure_topic(self: &Arc<Self>, tc: TopicConfig) -> Option<TopicConfig> {
        if let Some(existing) = self.topics.get(&tc.topic_name) {
            return Some(existing);
        }
        let name = tc.topic_name.clone();
        if self.topics.put(tc) {
            self.topics_changed();
        }
        self.topics.get(&name)
    }

    /// A `%RETRY%group` topic past its group's reconsume limit goes to `%DLQ%group`.
    fn redirect_retry(
        self: &Arc<Self>,
        topic: &str,
        queue_id: i32,
        reconsume_times: i32,
        max_reconsume: Option<i32>,
        version: i32,
    ) -> (String, i32) {
        let Some(group) = topic.strip_prefix(RETRY_PREFIX) else { return (topic.to_string(), queue_id) };
        let Some((gc, _)) = self.groups.find_or_create(group, self.cfg.auto_create_subscription_group) else {
            return (topic.to_string(), queue_id);
        };
        let max = match max_reconsume {
            Some(m) if version >= 121 => m,
            _ => gc.retry_max_times as i32,
        };
        if reconsume_times < max {
            return (topic.to_string(), queue_id);
        }
        let dlq = dlq_topic(group);
        self.ensure_topic(TopicConfig {
            topic_name: dlq.clone(),
            read_queue_nums: 1,
            write_queue_nums: 1,
            ..Default::default()
        });
        (dlq, 0)
    }

    pub(super) async fn send_message(self: &Arc<Self>, conn: &Connection, req: &RemotingCommand) -> RemotingCommand {
        let (h, queue_id) = match self.check_send(req) {
            Ok(x) => x,
            Err(resp) => return resp,
        };
        self.settle_offsets().await;
        let (topic, queue_id) =
            self.redirect_retry(&h.topic, queue_id, h.reconsume_times, h.max_reconsume_times, req.version);
        let wait = record::property(&h.properties, record::PROPERTY_WAIT) != Some("false");
        let properties = rewrite_properties(
            &h.properties,
            &[record::PROPERTY_WAIT],
            &[(PROPERTY_CLUSTER, &self.cfg.broker_cluster_name)],
        );
        let msg = MessageInner {
            topic,
            queue_id,
            flag: h.flag,
            body: req.body.clone(),
            properties,
            sys_flag: h.sys_flag,
            born_timestamp: h.born_timestamp,
            born_host: conn.peer,
            store_host: self.cfg.store.store_host,
            reconsume_times: h.reconsume_times,
            prepared_tx_offset: 0,
        };
        let result = self.store.put_opts(&msg, wait).await.map(|r| vec![r]);
        let result = self.replicate(result, wait).await;
        self.put_response(req, queue_id, result)
    }

    pub(super) async fn send_batch(self: &Arc<Self>, conn: &Connection, req: &RemotingCommand) -> RemotingCommand {
        let (h, queue_id) = match self.check_send(req) {
            Ok(x) => x,
            Err(resp) => return resp,
        };
        if h.topic.starts_with(RETRY_PREFIX) || h.topic.starts_with(DLQ_PREFIX) {
            return req.error(response::MESSAGE_ILLEGAL, "batch request does not support retry group");
        }
        let inner = match decode_batch(&req.body) {
            Ok(v) if !v.is_empty() => v,
            Ok(_) => return req.error(response::MESSAGE_ILLEGAL, "empty batch"),
            Err(e) => return req.error(response::MESSAGE_ILLEGAL, format!("malformed batch body: {e}")),
        };
        let wait = record::property(&h.properties, record::PROPERTY_WAIT) != Some("false");
        self.settle_offsets().await;
        let mut msgs = Vec::with_capacity(inner.len());
        for (flag, body, props) in inner {
            if record::property(&props, PROPERTY_DELAY).is_some() {
                return req.error(response::MESSAGE_ILLEGAL, "batch messages cannot be delayed");
            }
            let mut add: Vec<(&str, &str)> = record::properties(&h.properties)
                .filter(|(k, _)| *k != record::PROPERTY_WAIT && record::property(&props, k).is_none())
                .collect();
            add.push((PROPERTY_CLUSTER, &self.cfg.broker_cluster_name));
            let properties = rewrite_properties(&props, &[record::PROPERTY_WAIT], &add);
            msgs.push(MessageInner {
                topic: h.topic.clone(),
                queue_id,
                flag,
                body,
                properties,
                sys_flag: h.sys_flag,
                born_timestamp: h.born_timestamp,
                born_host: conn.peer,
                store_host: self.cfg.store.store_host,
                reconsume_times: h.reconsume_times,
                prepared_tx_offset: 0,
            });
        }
        let result = self.store.put_batch(&msgs, wait).await;
        let result = self.replicate(result, wait).await;
        self.put_response(req, queue_id, result)
    }

    /// SYNC_MASTER: a stored put waits for a slave (RocketMQ's handleHA, after the flush);
    /// the slave's answer replaces a PUT_OK.
    async fn replicate(
        &self,
        result: Result<Vec<PutResult>, StoreError>,
        wait: bool,
    ) -> Result<Vec<PutResult>, StoreError> {
        let mut results = result?;
        if self.cfg.broker_role != crate::config::broker::BrokerRole::SyncMaster || !wait {
            return Ok(results);
        }
        let Some(last) = results.last() else { return Ok(results) };
        let end = last.phys_offset + last.size as u64;
        let status = self.ha.wait_replicated(end).await;
        if status != PutStatus::PutOk {
            for r in results.iter_mut().filter(|r| r.status == PutStatus::PutOk) {
                r.status = status;
            }
        }
        Ok(results)
    }

    fn put_response(
        &self,
        req: &RemotingCommand,
        queue_id: i32,
        result: Result<Vec<PutResult>, StoreError>,
    ) -> RemotingCommand {
        match result {
            Ok(results) => {
                self.stats.put_total.fetch_add(results.len() as u64, Ordering::Relaxed);
                let first = &results[0];
                let code = match first.status {
                    PutStatus::PutOk => response::SUCCESS,
                    PutStatus::FlushDiskTimeout => response::FLUSH_DISK_TIMEOUT,
                    PutStatus::FlushSlaveTimeout => response::FLUSH_SLAVE_TIMEOUT,
                    PutStatus::SlaveNotAvailable => response::SLAVE_NOT_AVAILABLE,
                };
                let mut resp = req.response(code, None);
                let ids: Vec<&str> = results.iter().map(|r| r.msg_id.as_str()).collect();
                resp.set("msgId", ids.join(","));
                resp.set("queueId", queue_id);
                resp.set("queueOffset", first.queue_offset);
                resp.set("MSG_REGION", "DefaultRegion");
                resp.set("TRACE_ON", "true");
                resp
            }
            Err(e) => {
                let code = match &e {
                    StoreError::MessageTooLarge { .. }
                    | StoreError::PropertiesTooLarge(_)
                    | StoreError::TopicTooLong(_) => response::MESSAGE_ILLEGAL,
                    e if e.is_disk_full() => response::SERVICE_NOT_AVAILABLE,
                    StoreError::ShutDown => response::SERVICE_NOT_AVAILABLE,
                    _ => response::SYSTEM_ERROR,
                };
                if code == response::SYSTEM_ERROR {
                    tracing::error!(error = %e, "put failed");
                }
                req.error(code, e.to_string())
            }
        }
    }

    pub(super) async fn send_back(self: &Arc<Self>, conn: &Connection, req: &RemotingCommand) -> RemotingCommand {
        let parsed = (|| {
            Ok::<_, crate::protocol::HeaderError>((
                req.req::<i64>("offset")?,
                req.req::<String>("group")?,
                req.req::<i32>("delayLevel")?,
                req.opt::<String>("originMsgId")?,
                req.opt::<i32>("maxReconsumeTimes")?,
            ))
        })();
        let (offset, group, delay_level, origin_id, max_reconsume) = match parsed {
            Ok(p) => p,
            Err(e) => return req.error(response::SYSTEM_ERROR, e.to_string()),
        };
        let Some((gc, _)) = self.groups.find_or_create(&group, self.cfg.auto_create_subscription_group) else {
            return req.error(response::SUBSCRIPTION_GROUP_NOT_EXIST, format!("subscription group not exist, {group}"));
        };
        if !perm::writeable(self.cfg.broker_permission) || self.is_slave() {
            return req.error(
                response::NO_PERMISSION,
                format!("the broker[{}] sending message is forbidden", self.cfg.broker_name),
            );
        }
        if gc.retry_queue_nums == 0 {
            return req.response(response::SUCCESS, None);
        }
        let orig = match self.store.lookup(offset.max(0) as u64).await {
            Ok(m) => m,
            Err(e) => {
                return req.error(response::SYSTEM_ERROR, format!("look message by offset failed, {offset}: {e}"))
            }
        };
        let retry_of = orig.property(PROPERTY_RETRY_TOPIC).unwrap_or(&orig.inner.topic).to_string();
        let reconsume = orig.inner.reconsume_times;
        let max = match max_reconsume {
            Some(m) if req.version >= 121 => m,
            _ => gc.retry_max_times as i32,
        };
        let (topic, queue_id, level) = if reconsume >= max || delay_level < 0 {
            let dlq = dlq_topic(&group);
            self.ensure_topic(TopicConfig {
                topic_name: dlq.clone(),
                read_queue_nums: 1,
                write_queue_nums: 1,
                ..Default::default()
            });
            (dlq, 0, 0)
        } else {
            let t = retry_topic(&group);
            self.ensure_topic(TopicConfig {
                topic_name: t.clone(),
                read_queue_nums: gc.retry_queue_nums,
                write_queue_nums: gc.retry_queue_nums,
                ..Default::default()
            });
            let q = crate::rt::rng().gen_range(0..gc.retry_queue_nums as i32);
            (t, q, if delay_level == 0 { 3 + reconsume } else { delay_level })
        };
        let origin = origin_id.unwrap_or_else(|| {
            orig.property(PROPERTY_ORIGIN_MESSAGE_ID).map(String::from).unwrap_or_else(|| orig.offset_msg_id())
        });
        let level = level.to_string();
        let mut add = vec![(PROPERTY_RETRY_TOPIC, retry_of.as_str()), (PROPERTY_ORIGIN_MESSAGE_ID, origin.as_str())];
        if level != "0" {
            add.push((PROPERTY_DELAY, level.as_str()));
        }
        let msg = MessageInner {
            topic,
            queue_id,
            flag: orig.inner.flag,
            body: orig.inner.body.clone(),
            properties: rewrite_properties(&orig.inner.properties, &[record::PROPERTY_CRC32], &add),
            sys_flag: orig.inner.sys_flag,
            born_timestamp: orig.inner.born_timestamp,
            born_host: conn.peer,
            store_host: self.cfg.store.store_host,
            reconsume_times: reconsume + 1,
            prepared_tx_offset: 0,
        };
        self.settle_offsets().await;
        match self.store.put_opts(&msg, true).await {
            Ok(_) => req.response(response::SUCCESS, None),
            Err(e) => req.error(response::SYSTEM_ERROR, e.to_string()),
        }
    }
}
