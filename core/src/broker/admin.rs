//! Client management (HEART_BEAT, UNREGISTER_CLIENT, consumer lists, offsets) and admin
//! requests (topics, offsets, messages by id and key, statistics).

use super::topics::{retry_topic, validate_topic, DEFAULT_TOPIC};
use super::Broker;
use crate::protocol::body::{
    self, ConsumerListBody, HeartbeatData, KvTable, MessageQueue, OffsetWrapper, TopicConfigSerializeWrapper,
    TopicOffset,
};
use crate::protocol::code::response;
use crate::protocol::{HeaderError, RemotingCommand};
use crate::remoting::Connection;
use crate::store::meta::{SubscriptionGroupConfig, TopicConfig};
use crate::store::MessageStore;
use bytes::BytesMut;
use std::collections::BTreeMap;
use std::sync::Arc;

fn header_error(req: &RemotingCommand, e: HeaderError) -> RemotingCommand {
    req.error(response::SYSTEM_ERROR, e.to_string())
}

impl Broker {
    pub(super) fn heartbeat(self: &Arc<Self>, conn: &Connection, req: &RemotingCommand) -> RemotingCommand {
        let hb: HeartbeatData = match body::decode(&req.body) {
            Ok(h) => h,
            Err(e) => return req.error(response::SYSTEM_ERROR, format!("bad heartbeat body: {e}")),
        };
        let now = crate::rt::instant();
        for c in &hb.consumer_data_set {
            if let Some((gc, _)) = self.groups.find_or_create(&c.group_name, self.cfg.auto_create_subscription_group) {
                if gc.retry_queue_nums > 0 {
                    self.ensure_topic(TopicConfig {
                        topic_name: retry_topic(&c.group_name),
                        read_queue_nums: gc.retry_queue_nums,
                        write_queue_nums: gc.retry_queue_nums,
                        ..Default::default()
                    });
                }
            }
            if self.clients.register_consumer(&hb.client_id, conn, c, now) {
                tracing::info!(group = %c.group_name, client = %hb.client_id, "consumer registered");
                self.notify_consumer_ids_changed(&c.group_name);
            }
        }
        for p in &hb.producer_data_set {
            self.clients.register_producer(&p.group_name, &hb.client_id, conn, now);
        }
        req.response(response::SUCCESS, None)
    }

    pub(super) fn unregister_client(&self, req: &RemotingCommand) -> RemotingCommand {
        let Some(client) = req.get("clientID") else { return header_error(req, HeaderError::Missing("clientID")) };
        for g in self.clients.unregister(client, req.get("producerGroup"), req.get("consumerGroup")) {
            tracing::info!(group = %g, client, "consumer unregistered");
            self.notify_consumer_ids_changed(&g);
        }
        req.response(response::SUCCESS, None)
    }

    pub(super) fn consumer_list(&self, req: &RemotingCommand) -> RemotingCommand {
        let Some(group) = req.get("consumerGroup") else {
            return header_error(req, HeaderError::Missing("consumerGroup"));
        };
        match self.clients.consumer_group(group) {
            Some(g) if !g.clients.is_empty() => {
                let list = ConsumerListBody { consumer_id_list: g.clients.keys().cloned().collect() };
                req.response(response::SUCCESS, None).with_body(body::encode(&list))
            }
            _ => req.error(response::SYSTEM_ERROR, format!("no consumer for this group, {group}")),
        }
    }

    pub(super) fn query_consumer_offset(&self, req: &RemotingCommand) -> RemotingCommand {
        let parsed =
            (|| Ok((req.req::<String>("consumerGroup")?, req.req::<String>("topic")?, req.req::<i32>("queueId")?)))();
        let (group, topic, qid) = match parsed {
            Ok(p) => p,
            Err(e) => return header_error(req, e),
        };
        let offset = match self.offsets.query(&group, &topic, qid) {
            Some(o) => o,
            // A queue whose first message is still there starts at 0 (RocketMQ: min offset
            // ≤ 0 and the message still in page cache).
            None if self.store.min_offset(&topic, qid) == 0 => 0,
            None => {
                return req.error(
                    response::QUERY_NOT_FOUND,
                    "Not found, V3_0_6_SNAPSHOT maybe this group consumer boot first",
                )
            }
        };
        let mut resp = req.response(response::SUCCESS, None);
        resp.set("offset", offset);
        resp
    }

    pub(super) fn update_consumer_offset(&self, req: &RemotingCommand) -> RemotingCommand {
        let parsed = (|| {
            Ok((
                req.req::<String>("consumerGroup")?,
                req.req::<String>("topic")?,
                req.req::<i32>("queueId")?,
                req.req::<i64>("commitOffset")?,
            ))
        })();
        match parsed {
            Ok((group, topic, qid, offset)) => {
                let offset = self.committable(&group, &topic, qid, offset);
                self.offsets.commit(&group, &topic, qid, offset);
                req.response(response::SUCCESS, None)
            }
            Err(e) => header_error(req, e),
        }
    }

    pub(super) async fn update_topic(self: &Arc<Self>, req: &RemotingCommand) -> RemotingCommand {
        if self.is_slave() {
            return req.error(
                response::SYSTEM_ERROR,
                "Can't modify topic or subscription group from slave broker, please execute it from master broker.",
            );
        }
        let parsed = (|| {
            Ok::<_, HeaderError>(TopicConfig {
                topic_name: req.req("topic")?,
                read_queue_nums: req.req("readQueueNums")?,
                write_queue_nums: req.req("writeQueueNums")?,
                perm: req.req("perm")?,
                topic_filter_type: req.opt("topicFilterType")?.unwrap_or_else(|| "SINGLE_TAG".into()),
                topic_sys_flag: req.opt("topicSysFlag")?.unwrap_or(0),
                order: req.opt("order")?.unwrap_or(false),
            })
        })();
        let tc = match parsed {
            Ok(tc) => tc,
            Err(e) => return header_error(req, e),
        };
        if let Err(e) = validate_topic(&tc.topic_name) {
            return req.error(response::SYSTEM_ERROR, e);
        }
        if tc.topic_name == DEFAULT_TOPIC {
            return req
                .error(response::SYSTEM_ERROR, format!("The topic[{}] is conflict with system topic.", tc.topic_name));
        }
        if tc.read_queue_nums == 0 && tc.write_queue_nums == 0
            || tc.read_queue_nums > 1024
            || tc.write_queue_nums > 1024
        {
            return req.error(response::INVALID_PARAMETER, "queue numbers must be within 0..=1024 and not both 0");
        }
        tracing::info!(topic = %tc.topic_name, read = tc.read_queue_nums, write = tc.write_queue_nums, perm = tc.perm, "update or create topic");
        if self.topics.put(tc) {
            // As RocketMQ's updateAndCreateTopic: written out and registered with the name
            // servers before the answer, so a client that asks for the route right after
            // finds it (not the default route, whose queues this topic may not have).
            self.persist_and_register_topics().await;
        }
        req.response(response::SUCCESS, None)
    }

    pub(super) async fn update_group(self: &Arc<Self>, req: &RemotingCommand) -> RemotingCommand {
        match body::decode::<SubscriptionGroupConfig>(&req.body) {
            Ok(g) if !g.group_name.is_empty() => {
                self.groups.put(g);
                if let Err(e) = self.groups.persist(self.disk()).await {
                    return req.error(response::SYSTEM_ERROR, e.to_string());
                }
                req.response(response::SUCCESS, None)
            }
            Ok(_) => req.error(response::SYSTEM_ERROR, "groupName is empty"),
            Err(e) => req.error(response::SYSTEM_ERROR, format!("bad subscription group body: {e}")),
        }
    }

    pub(super) fn all_topic_config(&self, req: &RemotingCommand) -> RemotingCommand {
        let snap = self.topics.snapshot();
        let w = TopicConfigSerializeWrapper {
            topic_config_table: snap.topic_config_table,
            data_version: snap.data_version,
        };
        req.response(response::SUCCESS, None).with_body(body::encode(&w))
    }

    fn topic_queue(req: &RemotingCommand) -> Result<(String, i32), HeaderError> {
        Ok((req.req("topic")?, req.req("queueId")?))
    }

    /// GET_MAX_OFFSET / GET_MIN_OFFSET: `offset` of a queue, as `of` reads it from the store.
    pub(super) fn queue_offset(
        &self,
        req: &RemotingCommand,
        of: fn(&MessageStore, &str, i32) -> u64,
    ) -> RemotingCommand {
        match Self::topic_queue(req) {
            Ok((t, q)) => {
                let mut r = req.response(response::SUCCESS, None);
                r.set("offset", of(&self.store, &t, q));
                r
            }
            Err(e) => header_error(req, e),
        }
    }

    pub(super) async fn search_offset(&self, req: &RemotingCommand) -> RemotingCommand {
        let parsed = Self::topic_queue(req).and_then(|tq| Ok((tq, req.req::<i64>("timestamp")?)));
        match parsed {
            Ok(((t, q), ts)) => match self.store.search_offset_by_time(&t, q, ts).await {
                Ok(o) => {
                    let mut r = req.response(response::SUCCESS, None);
                    r.set("offset", o);
                    r
                }
                Err(e) => req.error(response::SYSTEM_ERROR, e.to_string()),
            },
            Err(e) => header_error(req, e),
        }
    }

    pub(super) async fn earliest_store_time(&self, req: &RemotingCommand) -> RemotingCommand {
        let (t, q) = match Self::topic_queue(req) {
            Ok(tq) => tq,
            Err(e) => return header_error(req, e),
        };
        let min = self.store.min_offset(&t, q);
        let time = match self.store.get_message(&t, q, min, 1, usize::MAX, None).await {
            Ok(g) => match g.messages.first() {
                Some(m) => self.store.lookup(m.phys_offset).await.map(|m| m.store_timestamp).unwrap_or(-1),
                None => -1,
            },
            Err(_) => -1,
        };
        let mut r = req.response(response::SUCCESS, None);
        r.set("timestamp", time);
        r
    }

    pub(super) async fn view_message(&self, req: &RemotingCommand) -> RemotingCommand {
        let offset: i64 = match req.req("offset") {
            Ok(o) => o,
            Err(e) => return header_error(req, e),
        };
        match self.store.lookup_raw(offset.max(0) as u64).await {
            Ok((raw, _)) => req.response(response::SUCCESS, None).with_body(raw),
            Err(e) => req.error(response::SYSTEM_ERROR, format!("can not find message by the offset, {offset}: {e}")),
        }
    }

    pub(super) async fn query_message(&self, req: &RemotingCommand) -> RemotingCommand {
        let parsed = (|| {
            Ok((
                req.req::<String>("topic")?,
                req.req::<String>("key")?,
                req.req::<i32>("maxNum")?,
                req.req::<i64>("beginTimestamp")?,
                req.req::<i64>("endTimestamp")?,
            ))
        })();
        let (topic, key, max, begin, end) = match parsed {
            Ok(p) => p,
            Err(e) => return header_error(req, e),
        };
        let found = match self.store.query_by_key(&topic, &key, max.clamp(1, 64) as usize, begin, end).await {
            Ok(f) => f,
            Err(e) => return req.error(response::SYSTEM_ERROR, e.to_string()),
        };
        if found.is_empty() {
            return req.error(response::QUERY_NOT_FOUND, "can not find message, maybe time range not correct");
        }
        let mut out = BytesMut::new();
        for m in &found {
            if let Ok((raw, _)) = self.store.lookup_raw(m.phys_offset as u64).await {
                out.extend_from_slice(&raw);
            }
        }
        let mut r = req.response(response::SUCCESS, None);
        r.set("indexLastUpdateTimestamp", found.iter().map(|m| m.store_timestamp).max().unwrap_or(0));
        r.set("indexLastUpdatePhyoffset", found.iter().map(|m| m.phys_offset).max().unwrap_or(0));
        r.with_body(out.freeze())
    }

    pub(super) async fn runtime_info(&self, req: &RemotingCommand) -> RemotingCommand {
        let mut t = BTreeMap::new();
        let usage = self.disk().usage_ratio(&self.cfg.store.commit_log_dir()).await.unwrap_or(0.0);
        let put = self.stats.put_total.load(std::sync::atomic::Ordering::Relaxed);
        let get = self.stats.get_total.load(std::sync::atomic::Ordering::Relaxed);
        let (syncs, nanos) = self.store.flush_stats();
        let mut put_kv = |k: &str, v: String| {
            t.insert(k.to_string(), v);
        };
        put_kv("brokerVersionDesc", "V4_9_8".into());
        put_kv("brokerVersion", crate::protocol::VERSION.to_string());
        put_kv("brokerRole", format!("{:?}", self.cfg.broker_role));
        put_kv("msgPutTotalTodayNow", put.to_string());
        put_kv("msgGetTotalTodayNow", get.to_string());
        put_kv("putTps", self.stats.tps(false));
        put_kv("getTransferedTps", self.stats.tps(true));
        put_kv("commitLogMinOffset", self.store.commitlog_min_offset().to_string());
        put_kv("commitLogMaxOffset", self.store.commitlog_max_offset().to_string());
        put_kv("commitLogDiskRatio", format!("{usage:.4}"));
        put_kv("earliestMessageTimeStamp", self.store.earliest_message_time().await.to_string());
        put_kv("dispatchBehindBytes", "0".into());
        put_kv("pageCacheLockTimeMills", "0".into());
        put_kv("sendThreadPoolQueueSize", "0".into());
        put_kv("sendThreadPoolQueueHeadWaitTimeMills", "0".into());
        put_kv("pullThreadPoolQueueSize", "0".into());
        put_kv("flushCount", syncs.to_string());
        put_kv("flushTotalMicros", (nanos / 1000).to_string());
        put_kv("bootTimestamp", self.boot_ms.to_string());
        put_kv("runtime", format!("{} ms", crate::rt::now_ms().saturating_sub(self.boot_ms)));
        req.response(response::SUCCESS, None).with_body(body::encode(&KvTable { table: t }))
    }

    pub(super) fn consume_stats(&self, req: &RemotingCommand) -> RemotingCommand {
        let Some(group) = req.get("consumerGroup") else {
            return header_error(req, HeaderError::Missing("consumerGroup"));
        };
        let topics: Vec<String> = match req.get("topic").filter(|t| !t.is_empty()) {
            Some(t) => vec![t.to_string()],
            None => {
                let mut ts: Vec<String> = self.offsets.of_group(group).into_keys().collect();
                if let Some(g) = self.clients.consumer_group(group) {
                    ts.extend(g.subscriptions.keys().cloned());
                }
                ts.sort();
                ts.dedup();
                ts
            }
        };
        let mut table = BTreeMap::new();
        for topic in topics {
            let Some(tc) = self.topics.get(&topic) else { continue };
            for q in 0..tc.read_queue_nums as i32 {
                let mq = MessageQueue { topic: topic.clone(), broker_name: self.cfg.broker_name.clone(), queue_id: q };
                let consumer = self.offsets.query(group, &topic, q).unwrap_or(0);
                let w = OffsetWrapper {
                    broker_offset: self.store.max_offset(&topic, q) as i64,
                    consumer_offset: consumer,
                    last_timestamp: 0,
                };
                table.insert(mq, w);
            }
        }
        req.response(response::SUCCESS, None).with_body(body::encode_queue_map(&table, ",\"consumeTps\":0.0"))
    }

    pub(super) async fn topic_stats(&self, req: &RemotingCommand) -> RemotingCommand {
        let Some(topic) = req.get("topic") else { return header_error(req, HeaderError::Missing("topic")) };
        let Some(tc) = self.topics.get(topic) else {
            return req.error(response::TOPIC_NOT_EXIST, format!("topic[{topic}] not exist"));
        };
        let mut table = BTreeMap::new();
        for q in 0..tc.write_queue_nums.max(tc.read_queue_nums) as i32 {
            let mq = MessageQueue { topic: topic.to_string(), broker_name: self.cfg.broker_name.clone(), queue_id: q };
            let off = TopicOffset {
                min_offset: self.store.min_offset(topic, q) as i64,
                max_offset: self.store.max_offset(topic, q) as i64,
                last_update_timestamp: self.store.last_store_time(topic, q).await,
            };
            table.insert(mq, off);
        }
        req.response(response::SUCCESS, None).with_body(body::encode_queue_map(&table, ""))
    }
}
