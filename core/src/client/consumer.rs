//! The push consumer: long-polling pulls per assigned queue feed a listener; CLUSTERING
//! groups share queues by AllocateMessageQueueAveragely (rebalanced every 20 s and when a
//! broker says the group changed), BROADCASTING consumers each take every queue.
//!
//! Each assigned queue has one task that pulls, hands the messages to the listener and then
//! pulls again from the next offset, so the offset it holds is always "consumed up to here":
//! what it commits (with each pull, every 5 s, when the queue is taken away and at shutdown)
//! never runs ahead of the listener.

use super::{ClientConfig, ClientError, Instance};
use crate::broker::topics::retry_topic;
use crate::protocol::body::{self, ConsumerData, ConsumerListBody, HeartbeatData, MessageQueue, SubscriptionData};
use crate::protocol::code::{perm, pull_flag, request, response};
use crate::protocol::header::{ext, PullMessageHeader};
use crate::protocol::message::{decode_records, MessageExt, PROPERTY_RETRY_TOPIC, PROPERTY_TAGS};
use crate::protocol::RemotingCommand;
use crate::remoting::RemotingError;
use crate::rt::sync::{Mutex as AsyncMutex, Notify};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageModel {
    Clustering,
    Broadcasting,
}

impl MessageModel {
    fn name(self) -> &'static str {
        match self {
            MessageModel::Clustering => "CLUSTERING",
            MessageModel::Broadcasting => "BROADCASTING",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsumeFromWhere {
    LastOffset,
    FirstOffset,
    /// Store time in ms since the epoch.
    Timestamp(i64),
}

impl ConsumeFromWhere {
    fn name(self) -> &'static str {
        match self {
            ConsumeFromWhere::LastOffset => "CONSUME_FROM_LAST_OFFSET",
            ConsumeFromWhere::FirstOffset => "CONSUME_FROM_FIRST_OFFSET",
            ConsumeFromWhere::Timestamp(_) => "CONSUME_FROM_TIMESTAMP",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsumeResult {
    Success,
    /// Redeliver later: the messages go back to the broker's retry topic.
    ReconsumeLater,
}

/// Gets each pulled batch (after tag filtering), in queue order.
pub type Listener = Arc<dyn Fn(&[MessageExt], &MessageQueue) -> ConsumeResult + Send + Sync>;

/// Told each offset the consumer commits to a broker (after the broker took it: an answered
/// UPDATE_CONSUMER_OFFSET, a oneway one that left, or a pull that carried it).
pub type CommitHook = Arc<dyn Fn(&MessageQueue, i64) + Send + Sync>;

pub struct PushConsumerBuilder {
    group: String,
    cfg: ClientConfig,
    subs: BTreeMap<String, String>,
    model: MessageModel,
    from: ConsumeFromWhere,
    pull_batch_size: i32,
    suspend: Duration,
    rebalance_interval: Duration,
    on_commit: Option<CommitHook>,
}

impl PushConsumerBuilder {
    pub fn subscribe(mut self, topic: &str, expression: &str) -> Self {
        self.subs.insert(topic.to_string(), expression.to_string());
        self
    }
    pub fn message_model(mut self, m: MessageModel) -> Self {
        self.model = m;
        self
    }
    pub fn consume_from(mut self, f: ConsumeFromWhere) -> Self {
        self.from = f;
        self
    }
    pub fn pull_batch_size(mut self, n: i32) -> Self {
        self.pull_batch_size = n;
        self
    }
    pub fn rebalance_interval(mut self, d: Duration) -> Self {
        self.rebalance_interval = d;
        self
    }
    pub fn on_commit(mut self, hook: CommitHook) -> Self {
        self.on_commit = Some(hook);
        self
    }

    /// Starts consuming: routes, heartbeat, first rebalance, then the background loops.
    pub async fn start(self, listener: Listener) -> Result<Arc<PushConsumer>, ClientError> {
        let instance = Instance::new(self.cfg);
        let version = crate::rt::now_ms() as i64;
        let mut subs: BTreeMap<String, SubscriptionData> =
            self.subs.iter().map(|(t, e)| (t.clone(), SubscriptionData::build(t, e, version))).collect();
        if self.model == MessageModel::Clustering {
            let rt = retry_topic(&self.group);
            subs.insert(rt.clone(), SubscriptionData::build(&rt, "*", version));
        }
        let c = Arc::new(PushConsumer {
            group: self.group,
            instance,
            model: self.model,
            from: self.from,
            listener,
            subs,
            pull_batch_size: self.pull_batch_size,
            suspend: self.suspend,
            assigned: AsyncMutex::new(BTreeMap::new()),
            rebalance_now: Notify::new(),
            closed: AtomicBool::new(false),
            tasks: Mutex::new(Vec::new()),
            on_commit: self.on_commit,
        });
        let weak = Arc::downgrade(&c);
        c.instance.remoting.set_request_handler(Arc::new(move |_addr, req| {
            if req.code == request::NOTIFY_CONSUMER_IDS_CHANGED {
                if let Some(c) = weak.upgrade() {
                    c.rebalance_now.notify_one();
                }
                return None;
            }
            Some(crate::remoting::not_supported(&req))
        }));
        c.refresh_routes().await;
        c.heartbeat().await;
        c.rebalance().await;
        let mut tasks = Vec::new();
        let w = Arc::downgrade(&c);
        let every = self.rebalance_interval;
        tasks.push(crate::rt::spawn(async move {
            loop {
                let Some(c) = w.upgrade() else { return };
                crate::rt::select! {
                    biased;
                    _ = c.rebalance_now.notified() => {}
                    _ = crate::rt::time::sleep(every) => {}
                }
                c.rebalance().await;
            }
        }));
        let w = Arc::downgrade(&c);
        let every = c.instance.cfg.poll_name_server_interval.min(c.instance.cfg.heartbeat_broker_interval);
        tasks.push(crate::rt::spawn(async move {
            let mut tick = crate::rt::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(c) = w.upgrade() else { return };
                c.refresh_routes().await;
                c.heartbeat().await;
            }
        }));
        let w = Arc::downgrade(&c);
        let every = c.instance.cfg.persist_consumer_offset_interval;
        tasks.push(crate::rt::spawn(async move {
            let mut tick = crate::rt::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(c) = w.upgrade() else { return };
                c.persist_offsets(false).await;
            }
        }));
        *c.tasks.lock().unwrap() = tasks;
        Ok(c)
    }
}

struct QueueState {
    /// Next offset to pull; everything before it was consumed.
    offset: AtomicI64,
    /// Last offset committed to the broker (or written locally).
    committed: AtomicI64,
    /// The broker id (in the queue's broker group) the last pull answer suggested.
    suggested: AtomicU64,
    stop: Notify,
    stopped: AtomicBool,
}

struct Assigned {
    state: Arc<QueueState>,
    task: crate::rt::task::JoinHandle<()>,
}

pub struct PushConsumer {
    group: String,
    instance: Arc<Instance>,
    model: MessageModel,
    from: ConsumeFromWhere,
    listener: Listener,
    subs: BTreeMap<String, SubscriptionData>,
    pull_batch_size: i32,
    suspend: Duration,
    assigned: AsyncMutex<BTreeMap<MessageQueue, Assigned>>,
    rebalance_now: Notify,
    closed: AtomicBool,
    tasks: Mutex<Vec<crate::rt::task::JoinHandle<()>>>,
    on_commit: Option<CommitHook>,
}

impl PushConsumer {
    pub fn builder(group: &str, cfg: ClientConfig) -> PushConsumerBuilder {
        PushConsumerBuilder {
            group: group.to_string(),
            cfg,
            subs: BTreeMap::new(),
            model: MessageModel::Clustering,
            from: ConsumeFromWhere::LastOffset,
            pull_batch_size: 32,
            suspend: Duration::from_secs(15),
            rebalance_interval: Duration::from_secs(20),
            on_commit: None,
        }
    }

    pub fn client_id(&self) -> &str {
        &self.instance.client_id
    }

    /// The queues this consumer holds now.
    pub async fn assignment(&self) -> Vec<MessageQueue> {
        self.assigned.lock().await.keys().cloned().collect()
    }

    async fn refresh_routes(&self) {
        for t in self.subs.keys() {
            if let Err(e) = self.instance.update_route(t).await {
                tracing::debug!(topic = %t, error = %e, "route refresh failed");
            }
        }
    }

    async fn heartbeat(&self) {
        let hb = HeartbeatData {
            client_id: self.instance.client_id.clone(),
            producer_data_set: vec![],
            consumer_data_set: vec![ConsumerData {
                group_name: self.group.clone(),
                consume_type: "CONSUME_PASSIVELY".into(),
                message_model: self.model.name().into(),
                consume_from_where: self.from.name().into(),
                subscription_data_set: self.subs.values().cloned().collect(),
                unit_mode: false,
            }],
        };
        self.instance.heartbeat(&hb, false).await;
    }

    fn queues_of(&self, topic: &str) -> Option<Vec<MessageQueue>> {
        let route = self.instance.cached_route(topic)?;
        let mut mqs = Vec::new();
        for qd in route.queue_datas.iter().filter(|q| perm::readable(q.perm)) {
            for q in 0..qd.read_queue_nums as i32 {
                mqs.push(MessageQueue { topic: topic.to_string(), broker_name: qd.broker_name.clone(), queue_id: q });
            }
        }
        mqs.sort();
        Some(mqs)
    }

    /// The group's members as a broker of `topic` sees them.
    async fn consumer_ids(&self, topic: &str) -> Option<Vec<String>> {
        let route = self.instance.cached_route(topic)?;
        for b in &route.broker_datas {
            for addr in b.broker_addrs.values() {
                let cmd = RemotingCommand::request(
                    request::GET_CONSUMER_LIST_BY_GROUP,
                    ext([("consumerGroup", self.group.clone())]),
                );
                if let Ok(r) = self.instance.remoting.invoke(addr, cmd, self.instance.cfg.api_timeout).await {
                    if r.code == response::SUCCESS {
                        if let Ok(list) = body::decode::<ConsumerListBody>(&r.body) {
                            let mut ids = list.consumer_id_list;
                            ids.sort();
                            return Some(ids);
                        }
                    }
                }
            }
        }
        None
    }

    /// Recomputes this consumer's queues for every subscribed topic and starts or stops
    /// their pull tasks. A queue taken away is stopped and its offset committed before the
    /// rebalance moves on.
    pub async fn rebalance(self: &Arc<Self>) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        let mut assigned = self.assigned.lock().await;
        for topic in self.subs.keys() {
            let Some(all) = self.queues_of(topic) else { continue };
            let mine: Vec<MessageQueue> = match self.model {
                MessageModel::Broadcasting => all,
                MessageModel::Clustering => {
                    let Some(ids) = self.consumer_ids(topic).await else { continue };
                    let Some(me) = ids.iter().position(|i| *i == self.instance.client_id) else {
                        tracing::debug!(group = %self.group, "not yet in the consumer list; waiting");
                        continue;
                    };
                    allocate_averagely(&all, ids.len(), me)
                }
            };
            let gone: Vec<MessageQueue> =
                assigned.keys().filter(|q| &q.topic == topic && !mine.contains(q)).cloned().collect();
            for mq in gone {
                if let Some(a) = assigned.remove(&mq) {
                    self.stop_queue(&mq, a).await;
                }
            }
            for mq in mine {
                if assigned.contains_key(&mq) {
                    continue;
                }
                let Some(offset) = self.start_offset(&mq).await else { continue };
                tracing::info!(group = %self.group, client = %self.instance.client_id, queue = %mq, offset, "queue assigned");
                let state = Arc::new(QueueState {
                    offset: AtomicI64::new(offset),
                    committed: AtomicI64::new(offset),
                    suggested: AtomicU64::new(0),
                    stop: Notify::new(),
                    stopped: AtomicBool::new(false),
                });
                let task = crate::rt::spawn(pull_loop(self.clone(), mq.clone(), state.clone()));
                assigned.insert(mq, Assigned { state, task });
            }
        }
    }

    async fn stop_queue(&self, mq: &MessageQueue, a: Assigned) {
        a.state.stopped.store(true, Ordering::Release);
        a.state.stop.notify_one();
        let _ = a.task.await;
        self.commit(mq, &a.state, true).await;
        tracing::info!(group = %self.group, client = %self.instance.client_id, queue = %mq,
            offset = a.state.offset.load(Ordering::Acquire), "queue released");
    }

    async fn broker_call(&self, mq: &MessageQueue, cmd: RemotingCommand) -> Result<RemotingCommand, ClientError> {
        let (addr, _) = self
            .instance
            .broker_in_subscribe(&mq.broker_name, 0)
            .ok_or_else(|| ClientError::Other(format!("no broker for {}", mq.broker_name)))?;
        Ok(self.instance.remoting.invoke(&addr, cmd, self.instance.cfg.api_timeout).await?)
    }

    /// Where a newly assigned queue starts: the committed offset, else per consumeFromWhere.
    async fn start_offset(&self, mq: &MessageQueue) -> Option<i64> {
        let stored = match self.model {
            MessageModel::Clustering => {
                let cmd = RemotingCommand::request(
                    request::QUERY_CONSUMER_OFFSET,
                    ext([
                        ("consumerGroup", self.group.clone()),
                        ("topic", mq.topic.clone()),
                        ("queueId", mq.queue_id.to_string()),
                    ]),
                );
                match self.broker_call(mq, cmd).await {
                    Ok(r) if r.code == response::SUCCESS => r.get("offset").and_then(|o| o.parse::<i64>().ok()),
                    Ok(r) if r.code == response::QUERY_NOT_FOUND => None,
                    Ok(r) => {
                        tracing::warn!(queue = %mq, code = r.code, remark = ?r.remark, "query consumer offset failed");
                        return None;
                    }
                    Err(e) => {
                        tracing::debug!(queue = %mq, error = %e, "query consumer offset failed");
                        return None;
                    }
                }
            }
            MessageModel::Broadcasting => self.local_offsets().await.get(&mq.to_string()).copied(),
        };
        if let Some(o) = stored.filter(|o| *o >= 0) {
            return Some(o);
        }
        let q = |code, extra: Option<(&'static str, String)>| {
            let mut e = ext([("topic", mq.topic.clone()), ("queueId", mq.queue_id.to_string())]);
            if let Some((k, v)) = extra {
                e.insert(k, v);
            }
            RemotingCommand::request(code, e)
        };
        let cmd = match self.from {
            ConsumeFromWhere::FirstOffset => return Some(0),
            _ if mq.topic.starts_with(crate::broker::topics::RETRY_PREFIX) => return Some(0),
            ConsumeFromWhere::LastOffset => q(request::GET_MAX_OFFSET, None),
            ConsumeFromWhere::Timestamp(ts) => {
                q(request::SEARCH_OFFSET_BY_TIMESTAMP, Some(("timestamp", ts.to_string())))
            }
        };
        match self.broker_call(mq, cmd).await {
            Ok(r) if r.code == response::SUCCESS => r.get("offset").and_then(|o| o.parse().ok()),
            _ => None,
        }
    }

    fn local_offsets_path(&self) -> std::path::PathBuf {
        self.instance.cfg.offset_store_dir.join(&self.instance.client_id).join(&self.group).join("offsets.json")
    }

    async fn local_offsets(&self) -> BTreeMap<String, i64> {
        match self.instance.cfg.disk.read_file(&self.local_offsets_path()).await {
            Ok(Some(b)) => serde_json::from_slice(&b).unwrap_or_default(),
            _ => BTreeMap::new(),
        }
    }

    /// Commits one queue's consumed offset (CLUSTERING: to its master, answered when `sync`,
    /// oneway otherwise; BROADCASTING: to the local file by [`Self::persist_offsets`]).
    async fn commit(&self, mq: &MessageQueue, st: &QueueState, sync: bool) {
        let offset = st.offset.load(Ordering::Acquire);
        if self.model == MessageModel::Broadcasting {
            if sync {
                self.persist_local(&[(mq.clone(), offset)]).await;
            }
            return;
        }
        if offset == st.committed.load(Ordering::Acquire) && !sync {
            return;
        }
        let cmd = RemotingCommand::request(
            request::UPDATE_CONSUMER_OFFSET,
            ext([
                ("consumerGroup", self.group.clone()),
                ("topic", mq.topic.clone()),
                ("queueId", mq.queue_id.to_string()),
                ("commitOffset", offset.to_string()),
            ]),
        );
        let ok = if sync {
            matches!(self.broker_call(mq, cmd).await, Ok(r) if r.code == response::SUCCESS)
        } else {
            match self.instance.broker_in_subscribe(&mq.broker_name, 0) {
                Some((addr, _)) => self.instance.remoting.invoke_oneway(&addr, cmd).await.is_ok(),
                None => false,
            }
        };
        if ok {
            st.committed.store(offset, Ordering::Release);
            self.committed(mq, offset);
        }
    }

    fn committed(&self, mq: &MessageQueue, offset: i64) {
        if let Some(hook) = &self.on_commit {
            hook(mq, offset);
        }
    }

    async fn persist_local(&self, updates: &[(MessageQueue, i64)]) {
        let mut all = self.local_offsets().await;
        for (mq, o) in updates {
            all.insert(mq.to_string(), *o);
        }
        let path = self.local_offsets_path();
        let disk = &self.instance.cfg.disk;
        if let Some(dir) = path.parent() {
            let _ = disk.create_dir_all(dir).await;
        }
        let json = serde_json::to_vec_pretty(&all).expect("offsets serialize");
        if let Err(e) = disk.write_file(&path, &json, true).await {
            tracing::warn!(path = %path.display(), error = %e, "writing local offsets failed");
        }
    }

    async fn persist_offsets(&self, sync: bool) {
        let assigned = self.assigned.lock().await;
        if self.model == MessageModel::Broadcasting {
            let all: Vec<(MessageQueue, i64)> =
                assigned.iter().map(|(mq, a)| (mq.clone(), a.state.offset.load(Ordering::Acquire))).collect();
            if !all.is_empty() {
                self.persist_local(&all).await;
            }
            return;
        }
        for (mq, a) in assigned.iter() {
            self.commit(mq, &a.state, sync).await;
        }
    }

    /// Stops pulling, lets the listener finish, commits every offset (answered), and
    /// unregisters from the brokers, which tells the rest of the group at once.
    pub async fn shutdown(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
        let mut assigned = self.assigned.lock().await;
        let all = std::mem::take(&mut *assigned);
        drop(assigned);
        for (mq, a) in all {
            self.stop_queue(&mq, a).await;
        }
        self.instance.unregister(None, Some(&self.group)).await;
        self.instance.remoting.close_all();
    }

    /// Sends failed messages back to the broker's retry topic; false if any could not be.
    async fn send_back(&self, mq: &MessageQueue, msgs: &[MessageExt]) -> bool {
        for m in msgs {
            let cmd = RemotingCommand::request(
                request::CONSUMER_SEND_MSG_BACK,
                ext([
                    ("offset", m.phys_offset.to_string()),
                    ("group", self.group.clone()),
                    ("delayLevel", "0".into()),
                    ("originMsgId", m.offset_msg_id()),
                    ("originTopic", m.inner.topic.clone()),
                    ("unitMode", "false".into()),
                    ("maxReconsumeTimes", "16".into()),
                ]),
            );
            match self.broker_call(mq, cmd).await {
                Ok(r) if r.code == response::SUCCESS => {}
                _ => return false,
            }
        }
        true
    }
}

/// RocketMQ's AllocateMessageQueueAveragely: `all` and the member list sorted, `me` this
/// consumer's index among `n`.
pub fn allocate_averagely(all: &[MessageQueue], n: usize, me: usize) -> Vec<MessageQueue> {
    let q = all.len();
    if n == 0 || me >= n || q == 0 {
        return Vec::new();
    }
    let m = q % n;
    let avg = if q <= n {
        1
    } else if m > 0 && me < m {
        q / n + 1
    } else {
        q / n
    };
    let start = if m > 0 && me < m { me * avg } else { me * avg + m };
    let take = avg.min(q.saturating_sub(start));
    all.iter().skip(start).take(take).cloned().collect()
}

async fn pull_loop(c: Arc<PushConsumer>, mq: MessageQueue, st: Arc<QueueState>) {
    let Some(sub) = c.subs.get(&mq.topic).cloned() else { return };
    let retry_delay = Duration::from_secs(3);
    // Waits `d` unless told to stop; true when stopped.
    let pause = |d: Duration| {
        let st = st.clone();
        async move {
            crate::rt::select! {
                biased;
                _ = st.stop.notified() => true,
                _ = crate::rt::time::sleep(d) => st.stopped.load(Ordering::Acquire),
            }
        }
    };
    // An address whose pull just failed, and until when another of the group is preferred
    // (the route may still list a master that died until the next route refresh).
    let mut avoid: Option<(String, crate::rt::time::Instant)> = None;
    // Whether the last pull failed and this one went straight to another broker of the group
    // (once: with every broker of the group down, pulls pause between tries).
    let mut failed_over = false;
    // The first pull of an assignment commits nothing: its offset was just read from the
    // broker, and the queue's previous holder may have committed past it since (as
    // RocketMQ's client, whose offset table has no entry for the queue until then).
    let mut answered_once = false;
    while !st.stopped.load(Ordering::Acquire) {
        if avoid.as_ref().is_some_and(|(_, until)| crate::rt::instant() >= *until) {
            avoid = None;
        }
        // The suggested broker of the group, else any (the slave while the master is gone).
        let suggested = st.suggested.load(Ordering::Acquire);
        let Some((addr, slave)) =
            c.instance.broker_avoiding(&mq.broker_name, suggested, avoid.as_ref().map(|(a, _)| a.as_str()))
        else {
            if pause(retry_delay).await {
                return;
            }
            continue;
        };
        let offset = st.offset.load(Ordering::Acquire);
        let clustering = c.model == MessageModel::Clustering;
        let mut flag = pull_flag::SUSPEND | pull_flag::SUBSCRIPTION;
        // A slave does not store offsets that come with pulls.
        if clustering && offset > 0 && !slave && answered_once {
            flag |= pull_flag::COMMIT_OFFSET;
        }
        let h = PullMessageHeader {
            consumer_group: c.group.clone(),
            topic: mq.topic.clone(),
            queue_id: mq.queue_id,
            queue_offset: offset,
            max_msg_nums: c.pull_batch_size,
            sys_flag: flag,
            commit_offset: if flag & pull_flag::COMMIT_OFFSET != 0 { offset } else { 0 },
            suspend_timeout_millis: c.suspend.as_millis() as i64,
            subscription: Some(sub.sub_string.clone()),
            sub_version: sub.sub_version,
            expression_type: Some("TAG".into()),
        };
        let cmd = RemotingCommand::request(request::PULL_MESSAGE, h.encode());
        let resp = crate::rt::select! {
            biased;
            _ = st.stop.notified() => return,
            r = c.instance.remoting.invoke(&addr, cmd, c.suspend + Duration::from_secs(15)) => r,
        };
        if flag & pull_flag::COMMIT_OFFSET != 0 && resp.is_ok() {
            st.committed.fetch_max(offset, Ordering::AcqRel);
            c.committed(&mq, offset);
        }
        let r = match resp {
            Ok(r) => {
                failed_over = false;
                answered_once = true;
                r
            }
            Err(e) => {
                tracing::debug!(queue = %mq, error = %e, "pull failed");
                // Another broker of the group (the slave of a master that died) is tried at
                // once; the same one only after the usual pause.
                let other =
                    c.instance.broker_avoiding(&mq.broker_name, suggested, Some(&addr)).is_some_and(|(a, _)| a != addr);
                avoid = Some((addr, crate::rt::instant() + c.instance.cfg.poll_name_server_interval));
                if other && !failed_over && !matches!(e, RemotingError::Timeout(..)) {
                    failed_over = true;
                    continue;
                }
                if pause(retry_delay).await {
                    return;
                }
                continue;
            }
        };
        let next: Option<i64> = r.get("nextBeginOffset").and_then(|o| o.parse().ok());
        if let Some(id) = r.get("suggestWhichBrokerId").and_then(|o| o.parse().ok()) {
            st.suggested.store(id, Ordering::Release);
        }
        match r.code {
            response::SUCCESS => {
                let msgs = match decode_records(&r.body) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::error!(queue = %mq, error = %e, "pulled a corrupt batch; retrying");
                        if pause(retry_delay).await {
                            return;
                        }
                        continue;
                    }
                };
                let mut msgs: Vec<MessageExt> =
                    msgs.into_iter().filter(|m| sub.matches_tag(m.property(PROPERTY_TAGS))).collect();
                for m in &mut msgs {
                    if let Some(orig) = m.property(PROPERTY_RETRY_TOPIC).map(String::from) {
                        m.inner.topic = orig;
                    }
                }
                while !msgs.is_empty() {
                    match (c.listener)(&msgs, &mq) {
                        ConsumeResult::Success => break,
                        ConsumeResult::ReconsumeLater if clustering && c.send_back(&mq, &msgs).await => break,
                        ConsumeResult::ReconsumeLater if !clustering => break,
                        ConsumeResult::ReconsumeLater => {
                            if pause(Duration::from_secs(1)).await {
                                return;
                            }
                        }
                    }
                }
                if let Some(n) = next {
                    st.offset.store(n, Ordering::Release);
                }
            }
            response::PULL_NOT_FOUND | response::PULL_RETRY_IMMEDIATELY => {
                if let Some(n) = next {
                    st.offset.store(n, Ordering::Release);
                }
            }
            response::PULL_OFFSET_MOVED => {
                if let Some(n) = next {
                    tracing::warn!(queue = %mq, from = offset, to = n, "offset moved");
                    st.offset.store(n, Ordering::Release);
                    c.commit(&mq, &st, false).await;
                }
            }
            code => {
                tracing::debug!(queue = %mq, code, remark = ?r.remark, "pull refused");
                if pause(retry_delay).await {
                    return;
                }
            }
        }
    }
}
