//! The producer: routes from the name servers, master write queues only, random start then
//! round robin, SYNC/ASYNC/ONEWAY sends, retries on another broker, optional latency fault
//! avoidance (RocketMQ's `MQFaultStrategy`), a unique key per message.

use super::{ClientConfig, ClientError, Instance};
use crate::broker::topics::DEFAULT_TOPIC;
use crate::protocol::body::{HeartbeatData, MessageQueue, ProducerData, TopicRouteData};
use crate::protocol::code::{perm, request, response};
use crate::protocol::header::SendMessageHeader;
use crate::protocol::message::{properties_to_string, PROPERTY_KEYS, PROPERTY_TAGS, PROPERTY_UNIQ_KEY, PROPERTY_WAIT};
use crate::protocol::RemotingCommand;
use crate::rt::time::Instant;
use bytes::Bytes;
use rand::Rng;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A message to send.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Message {
    pub topic: String,
    pub body: Bytes,
    pub tags: Option<String>,
    pub keys: Vec<String>,
    pub flag: i32,
    /// User properties, sent after the system ones.
    pub properties: BTreeMap<String, String>,
    /// `WAIT` (default true): whether a SYNC_FLUSH broker answers only once it is durable.
    pub wait_store_ok: bool,
}

impl Message {
    pub fn new(topic: &str, body: impl Into<Bytes>) -> Self {
        Message { topic: topic.to_string(), body: body.into(), wait_store_ok: true, ..Default::default() }
    }

    pub fn with_tags(mut self, tags: &str) -> Self {
        self.tags = Some(tags.to_string());
        self
    }

    pub fn with_keys(mut self, keys: &[&str]) -> Self {
        self.keys = keys.iter().map(|k| k.to_string()).collect();
        self
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendStatus {
    SendOk,
    FlushDiskTimeout,
    FlushSlaveTimeout,
    SlaveNotAvailable,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SendResult {
    pub status: SendStatus,
    /// The producer's unique key (UNIQ_KEY).
    pub msg_id: String,
    /// The broker's offsetMsgId (store host + commitlog offset).
    pub offset_msg_id: String,
    pub queue: MessageQueue,
    pub queue_offset: u64,
}

/// Latency fault avoidance: a broker whose last send was slow or failed is skipped for a
/// while (RocketMQ 4.9.8's table).
#[derive(Default)]
struct FaultTable {
    until: Mutex<BTreeMap<String, Instant>>,
}

const LATENCY_MS: [u64; 7] = [50, 100, 550, 1000, 2000, 3000, 15000];
const ISOLATE_MS: [u64; 7] = [0, 0, 30_000, 60_000, 120_000, 180_000, 600_000];

impl FaultTable {
    fn record(&self, broker: &str, latency: Duration, isolate: bool) {
        let ms = if isolate { 30_000 } else { latency.as_millis() as u64 };
        let i = LATENCY_MS.iter().rposition(|l| ms >= *l);
        let pause = i.map_or(0, |i| ISOLATE_MS[i]);
        let mut t = self.until.lock().unwrap();
        if pause == 0 {
            t.remove(broker);
        } else {
            t.insert(broker.to_string(), crate::rt::instant() + Duration::from_millis(pause));
        }
    }

    fn available(&self, broker: &str) -> bool {
        self.until.lock().unwrap().get(broker).is_none_or(|u| crate::rt::instant() >= *u)
    }
}

/// Write queues of one topic, as the producer picks from them.
#[derive(Clone, Debug)]
struct PublishInfo {
    queues: Vec<MessageQueue>,
}

impl PublishInfo {
    /// Masters' writable queues; for a topic that does not exist yet, TBW102's route capped
    /// to `default_queues` (the broker creates the topic on first send).
    fn from_route(topic: &str, route: &TopicRouteData, cap: Option<u32>) -> PublishInfo {
        let mut qds = route.queue_datas.clone();
        qds.sort_by(|a, b| a.broker_name.cmp(&b.broker_name));
        let mut queues = Vec::new();
        for qd in qds.iter().filter(|q| perm::writeable(q.perm)) {
            let has_master =
                route.broker_datas.iter().any(|b| b.broker_name == qd.broker_name && b.master_addr().is_some());
            if !has_master {
                continue;
            }
            let n = cap.map_or(qd.write_queue_nums, |c| qd.write_queue_nums.min(c));
            for q in 0..n as i32 {
                queues.push(MessageQueue {
                    topic: topic.to_string(),
                    broker_name: qd.broker_name.clone(),
                    queue_id: q,
                });
            }
        }
        PublishInfo { queues }
    }
}

pub struct Producer {
    group: String,
    instance: Arc<Instance>,
    publish: Mutex<BTreeMap<String, Arc<PublishInfo>>>,
    index: AtomicUsize,
    faults: FaultTable,
    unique: UniqueKey,
    /// Attempts after the first for a SYNC send (RocketMQ: 2).
    pub retry_times_when_send_failed: u32,
    /// Budget for one send, all attempts included (RocketMQ: 3000 ms).
    pub send_timeout: Duration,
    pub send_latency_fault_enable: bool,
    /// Queues per broker of a topic the broker will auto-create (RocketMQ: 4).
    pub default_topic_queue_nums: u32,
    closed: AtomicBool,
    tasks: Mutex<Vec<crate::rt::task::JoinHandle<()>>>,
}

impl Producer {
    /// Starts a producer: routes refresh every 30 s, heartbeats to masters every 30 s.
    pub async fn start(group: &str, cfg: ClientConfig) -> Result<Arc<Producer>, ClientError> {
        let instance = Instance::new(cfg);
        let mut rng = crate::rt::rng();
        let p = Arc::new(Producer {
            group: group.to_string(),
            unique: UniqueKey::new(&instance.cfg.client_ip, rng.gen()),
            instance,
            publish: Mutex::new(BTreeMap::new()),
            index: AtomicUsize::new(rng.gen_range(0..1 << 16)),
            faults: FaultTable::default(),
            retry_times_when_send_failed: 2,
            send_timeout: Duration::from_secs(3),
            send_latency_fault_enable: false,
            default_topic_queue_nums: 4,
            closed: AtomicBool::new(false),
            tasks: Mutex::new(Vec::new()),
        });
        let weak = Arc::downgrade(&p);
        let every = p.instance.cfg.poll_name_server_interval.min(p.instance.cfg.heartbeat_broker_interval);
        let task = crate::rt::spawn(async move {
            let mut tick = crate::rt::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(p) = weak.upgrade() else { return };
                p.refresh_routes().await;
                p.heartbeat().await;
            }
        });
        p.tasks.lock().unwrap().push(task);
        Ok(p)
    }

    /// Sets retries, timeout and fault avoidance before use (builder style on an `Arc`).
    pub fn configure(self: Arc<Self>, f: impl FnOnce(&mut Producer)) -> Arc<Self> {
        match Arc::try_unwrap(self) {
            Ok(mut p) => {
                f(&mut p);
                Arc::new(p)
            }
            Err(arc) => arc,
        }
    }

    pub fn client_id(&self) -> &str {
        &self.instance.client_id
    }

    async fn heartbeat(&self) {
        let hb = HeartbeatData {
            client_id: self.instance.client_id.clone(),
            producer_data_set: vec![ProducerData { group_name: self.group.clone() }],
            consumer_data_set: vec![],
        };
        self.instance.heartbeat(&hb, true).await;
    }

    async fn refresh_routes(&self) {
        let topics: Vec<String> = self.publish.lock().unwrap().keys().cloned().collect();
        for t in topics {
            if let Ok(Some(route)) = self.instance.update_route(&t).await {
                let info = Arc::new(PublishInfo::from_route(&t, &route, None));
                if !info.queues.is_empty() {
                    self.publish.lock().unwrap().insert(t, info);
                }
            }
        }
    }

    /// The topic's write queues: cached, else asked of the name servers (and after the
    /// first route arrives, a heartbeat goes to the new brokers, as RocketMQ's client does).
    async fn publish_info(&self, topic: &str, refresh: bool) -> Result<Arc<PublishInfo>, ClientError> {
        if !refresh {
            if let Some(i) = self.publish.lock().unwrap().get(topic) {
                return Ok(i.clone());
            }
        }
        let info = Arc::new(match self.instance.update_route(topic).await? {
            Some(route) => PublishInfo::from_route(topic, &route, None),
            // Caching TBW102's route also teaches the instance those brokers' addresses.
            None => match self.instance.update_route(DEFAULT_TOPIC).await? {
                Some(route) => PublishInfo::from_route(topic, &route, Some(self.default_topic_queue_nums)),
                None => return Err(ClientError::NoRoute(topic.to_string())),
            },
        });
        if info.queues.is_empty() {
            return Err(ClientError::NoRoute(topic.to_string()));
        }
        let known = self.publish.lock().unwrap().insert(topic.to_string(), info.clone()).is_some();
        if !known {
            self.heartbeat().await;
        }
        Ok(info)
    }

    /// Random start, then round robin; skips the broker that just failed (and, with fault
    /// avoidance on, brokers in their pause) while another is left.
    fn select_queue(&self, info: &PublishInfo, last_failed: Option<&str>) -> MessageQueue {
        let n = info.queues.len();
        for _ in 0..n {
            let i = self.index.fetch_add(1, Ordering::Relaxed) % n;
            let q = &info.queues[i];
            let ok_broker = last_failed != Some(q.broker_name.as_str());
            let ok_fault = !self.send_latency_fault_enable || self.faults.available(&q.broker_name);
            if ok_broker && ok_fault {
                return q.clone();
            }
        }
        info.queues[self.index.fetch_add(1, Ordering::Relaxed) % n].clone()
    }

    fn request_for(&self, msg: &Message, mq: &MessageQueue, uniq: &str, born_ms: u64) -> RemotingCommand {
        let mut props: Vec<(&str, &str)> = Vec::with_capacity(4 + msg.properties.len());
        props.push((PROPERTY_UNIQ_KEY, uniq));
        if let Some(t) = &msg.tags {
            props.push((PROPERTY_TAGS, t));
        }
        let keys = msg.keys.join(" ");
        if !keys.is_empty() {
            props.push((PROPERTY_KEYS, &keys));
        }
        props.push((PROPERTY_WAIT, if msg.wait_store_ok { "true" } else { "false" }));
        props.extend(msg.properties.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let h = SendMessageHeader {
            producer_group: self.group.clone(),
            topic: msg.topic.clone(),
            default_topic: DEFAULT_TOPIC.into(),
            default_topic_queue_nums: self.default_topic_queue_nums as i32,
            queue_id: mq.queue_id,
            sys_flag: 0,
            born_timestamp: born_ms as i64,
            flag: msg.flag,
            properties: properties_to_string(props),
            reconsume_times: 0,
            unit_mode: false,
            batch: false,
            max_reconsume_times: None,
        };
        RemotingCommand::request(request::SEND_MESSAGE_V2, h.into_v2()).with_body(msg.body.clone())
    }

    /// Sends and waits for the broker's answer, retrying on another broker up to
    /// `retry_times_when_send_failed` times within `send_timeout`.
    pub async fn send(&self, msg: &Message) -> Result<SendResult, ClientError> {
        self.send_with_retries(msg, self.retry_times_when_send_failed).await
    }

    /// ASYNC send: the send runs on its own task; `callback` gets the result.
    pub fn send_async(
        self: &Arc<Self>,
        msg: Message,
        callback: impl FnOnce(Result<SendResult, ClientError>) + Send + 'static,
    ) {
        let p = self.clone();
        crate::rt::spawn(async move { callback(p.send(&msg).await) });
    }

    /// ONEWAY: one attempt, no answer awaited.
    pub async fn send_oneway(&self, msg: &Message) -> Result<(), ClientError> {
        let info = self.publish_info(&msg.topic, false).await?;
        let mq = self.select_queue(&info, None);
        let addr = self.addr_of(&mq.broker_name).await?;
        let now = crate::rt::now_ms();
        let cmd = self.request_for(msg, &mq, &self.unique.next(now), now);
        Ok(self.instance.remoting.invoke_oneway(&addr, cmd).await?)
    }

    async fn addr_of(&self, broker: &str) -> Result<String, ClientError> {
        if let Some(a) = self.instance.master_addr(broker) {
            return Ok(a);
        }
        self.instance.update_route(DEFAULT_TOPIC).await?;
        self.instance
            .master_addr(broker)
            .ok_or_else(|| ClientError::Other(format!("no master address for broker {broker}")))
    }

    async fn send_with_retries(&self, msg: &Message, retries: u32) -> Result<SendResult, ClientError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(ClientError::Other("producer is shut down".into()));
        }
        let start = crate::rt::instant();
        let born_ms = crate::rt::now_ms();
        let uniq = self.unique.next(born_ms);
        let mut info = self.publish_info(&msg.topic, false).await?;
        let mut last_failed: Option<String> = None;
        let mut last_err = ClientError::Other("no attempt made".into());
        for attempt in 0..=retries {
            // The budget covers the route lookup too, as RocketMQ's sendDefaultImpl counts it.
            let left = self.send_timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                break;
            }
            if attempt > 0 {
                if let Ok(i) = self.publish_info(&msg.topic, true).await {
                    info = i;
                }
            }
            let mq = self.select_queue(&info, last_failed.as_deref());
            let addr = match self.addr_of(&mq.broker_name).await {
                Ok(a) => a,
                Err(e) => {
                    last_err = e;
                    last_failed = Some(mq.broker_name.clone());
                    continue;
                }
            };
            // Latencies are only kept for fault avoidance (RocketMQ's updateFaultItem).
            let sent_at = self.send_latency_fault_enable.then(crate::rt::instant);
            let born = if attempt == 0 { born_ms } else { crate::rt::now_ms() };
            let cmd = self.request_for(msg, &mq, &uniq, born);
            match self.instance.remoting.invoke(&addr, cmd, left).await {
                Ok(r) => {
                    if let Some(t) = sent_at {
                        self.faults.record(&mq.broker_name, t.elapsed(), false);
                    }
                    let status = match r.code {
                        response::SUCCESS => SendStatus::SendOk,
                        response::FLUSH_DISK_TIMEOUT => SendStatus::FlushDiskTimeout,
                        response::FLUSH_SLAVE_TIMEOUT => SendStatus::FlushSlaveTimeout,
                        response::SLAVE_NOT_AVAILABLE => SendStatus::SlaveNotAvailable,
                        c @ (response::TOPIC_NOT_EXIST
                        | response::SERVICE_NOT_AVAILABLE
                        | response::SYSTEM_ERROR
                        | response::NO_PERMISSION
                        | response::NO_BUYER_ID
                        | response::NOT_IN_CURRENT_UNIT) => {
                            tracing::debug!(broker = %mq.broker_name, code = c, remark = ?r.remark, "send failed; retrying");
                            last_err = ClientError::from_response(&r);
                            last_failed = Some(mq.broker_name.clone());
                            continue;
                        }
                        _ => return Err(ClientError::from_response(&r)),
                    };
                    let queue_id = r.get("queueId").and_then(|q| q.parse().ok()).unwrap_or(mq.queue_id);
                    return Ok(SendResult {
                        status,
                        msg_id: uniq,
                        offset_msg_id: r.get("msgId").unwrap_or_default().to_string(),
                        queue: MessageQueue { queue_id, ..mq },
                        queue_offset: r.get("queueOffset").and_then(|q| q.parse().ok()).unwrap_or(0),
                    });
                }
                Err(e) => {
                    if let Some(t) = sent_at {
                        self.faults.record(&mq.broker_name, t.elapsed(), true);
                    }
                    tracing::debug!(broker = %mq.broker_name, error = %e, "send failed; retrying");
                    last_err = e.into();
                    last_failed = Some(mq.broker_name.clone());
                }
            }
        }
        Err(last_err)
    }

    /// Stops background work and tells the brokers this producer left its group.
    pub async fn shutdown(&self) {
        self.closed.store(true, Ordering::Release);
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
        self.instance.unregister(Some(&self.group), None).await;
        self.instance.remoting.close_all();
    }
}

/// RocketMQ-style unique message keys: 16 bytes as 32 uppercase hex digits — the client
/// IP, a per-producer random prefix, milliseconds, and a counter.
struct UniqueKey {
    prefix: [u8; 8],
    counter: AtomicU32,
}

impl UniqueKey {
    fn new(ip: &str, random: u32) -> Self {
        let ip: std::net::Ipv4Addr = ip.parse().unwrap_or(std::net::Ipv4Addr::LOCALHOST);
        let mut prefix = [0u8; 8];
        prefix[..4].copy_from_slice(&ip.octets());
        prefix[4..].copy_from_slice(&random.to_be_bytes());
        UniqueKey { prefix, counter: AtomicU32::new(0) }
    }

    fn next(&self, now_ms: u64) -> String {
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&self.prefix);
        raw[8..12].copy_from_slice(&(now_ms as u32).to_be_bytes());
        raw[12..].copy_from_slice(&self.counter.fetch_add(1, Ordering::Relaxed).to_be_bytes());
        crate::store::record::hex_upper(&raw)
    }
}
