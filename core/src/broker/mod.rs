//! The broker: request processors over the store, long polling, consumer/producer tracking,
//! topic and offset metadata, and registration with the name servers.
//!
//! [`BrokerController::start`] binds the listener first (a port of 0 picks a free one, and
//! the address the broker advertises follows it), opens and recovers the store, loads
//! metadata, then registers with every name server and keeps doing so every
//! `registerNameServerPeriod`. [`BrokerController::shutdown`] unregisters, stops accepting,
//! lets in-flight requests finish (parked pulls are answered at once), persists offsets and
//! shuts the store down (flush, checkpoint, abort file removed).

mod admin;
pub mod clients;
pub mod ha;
mod pull;
mod send;
pub mod topics;

use crate::config::broker::{BrokerConfig, BrokerRole};
use crate::protocol::body::{self, RegisterBrokerBody, TopicConfigSerializeWrapper};
use crate::protocol::code::{request, response};
use crate::protocol::{header::ext, RemotingCommand};
use crate::remoting::{not_supported, BoxFuture, Connection, Processor, RemotingClient, Server, ServerConfig};
use crate::rt::disk::Disk;
use crate::rt::net::TcpListener;
use crate::rt::sync::Notify;
use crate::store::{MessageStore, StoreError};
use clients::ClientManager;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use topics::{GroupManager, OffsetManager, TopicManager};

/// (consumer group, topic, queue id).
pub(crate) type GroupQueue = (String, String, i32);
/// A count of slave cuts, and per (group, topic, queue) the furthest next offset handed out.
pub(crate) type HandedOut = (u64, std::collections::BTreeMap<GroupQueue, u64>);

/// Parked long-polling pulls, one wake-up per queue. A pull that finds nothing registers
/// for its queue *before* re-checking the queue's end, so an arrival between the read and
/// the wait is never missed.
#[derive(Default)]
pub struct PullHold {
    queues: Mutex<HashMap<(String, i32), Arc<Notify>>>,
    shutdown: Notify,
    stopping: AtomicBool,
    /// Per (group, topic, queue) on a queue with a recovered (or, on a slave, cut) end: the
    /// furthest next offset this broker has handed the group since boot, or on a slave since
    /// its last cut (whose count is kept beside). See `Broker::past_recovered_end`.
    handed_out: Mutex<HandedOut>,
}

impl PullHold {
    fn notify(&self, topic: &str, queue_id: i32) {
        // Nothing parked anywhere (the common case under load): no key is built.
        let q = self.queues.lock().unwrap();
        if q.is_empty() {
            return;
        }
        if let Some(n) = q.get(&(topic.to_string(), queue_id)) {
            n.notify_waiters();
        }
    }

    fn notifier(&self, topic: &str, queue_id: i32) -> Arc<Notify> {
        self.queues.lock().unwrap().entry((topic.to_string(), queue_id)).or_default().clone()
    }
}

/// Put/get counters sampled every second for the TPS figures of GET_BROKER_RUNTIME_INFO.
#[derive(Default)]
pub struct Stats {
    pub put_total: AtomicU64,
    pub get_total: AtomicU64,
    samples: Mutex<VecDeque<(u64, u64, u64)>>,
}

impl Stats {
    fn sample(&self, now_ms: u64) {
        let mut s = self.samples.lock().unwrap();
        s.push_back((now_ms, self.put_total.load(Ordering::Relaxed), self.get_total.load(Ordering::Relaxed)));
        while s.len() > 601 {
            s.pop_front();
        }
    }

    /// "tps10s tps60s tps600s" for puts (`get = false`) or gets.
    fn tps(&self, get: bool) -> String {
        let s = self.samples.lock().unwrap();
        let pick = |e: &(u64, u64, u64)| if get { e.2 } else { e.1 };
        let rate = |secs: usize| -> f64 {
            let Some(last) = s.back() else { return 0.0 };
            let first = s.get(s.len().saturating_sub(secs + 1)).unwrap_or(last);
            let dt = last.0.saturating_sub(first.0) as f64 / 1000.0;
            if dt <= 0.0 {
                0.0
            } else {
                (pick(last) - pick(first)) as f64 / dt
            }
        };
        format!("{:.2} {:.2} {:.2}", rate(10), rate(60), rate(600))
    }
}

/// Everything the processors share.
pub struct Broker {
    pub cfg: BrokerConfig,
    pub store: MessageStore,
    pub addr: String,
    pub topics: TopicManager,
    pub groups: GroupManager,
    pub offsets: OffsetManager,
    pub clients: ClientManager,
    pub hold: PullHold,
    pub stats: Stats,
    pub ha: Arc<ha::Ha>,
    namesrv: RemotingClient,
    namesrv_addrs: Mutex<Vec<String>>,
    /// Slave: its master's broker address, from the name server's answer to registering.
    master_addr: Mutex<Option<String>>,
    boot_ms: u64,
    shutting_down: AtomicBool,
    /// Set once committed offsets were checked against the queues' recovered ends, before
    /// the first put of this boot (see `Broker::settle_offsets`).
    offsets_settled: crate::rt::sync::OnceCell<()>,
}

impl Broker {
    fn disk(&self) -> &Disk {
        self.store.disk()
    }

    pub fn is_slave(&self) -> bool {
        self.cfg.broker_role == BrokerRole::Slave
    }

    pub fn namesrv_addrs(&self) -> Vec<String> {
        self.namesrv_addrs.lock().unwrap().clone()
    }

    /// Registers with every name server at once; logs (does not fail on) the ones that do
    /// not answer.
    pub async fn register_all(self: &Arc<Self>) {
        let snap = self.topics.snapshot();
        let wrapper = TopicConfigSerializeWrapper {
            topic_config_table: snap.topic_config_table,
            data_version: snap.data_version,
        };
        let body =
            body::encode(&RegisterBrokerBody { topic_config_serialize_wrapper: wrapper, filter_server_list: vec![] });
        let mut header = crate::namesrv::broker_header(
            &self.cfg.broker_cluster_name,
            &self.cfg.broker_name,
            &self.addr,
            self.cfg.broker_id,
        );
        header.insert("haServerAddr", format!("{}:{}", self.cfg.broker_ip1, self.cfg.ha_port()));
        header.insert("compressed", "false");
        header.insert("bodyCrc32", ((crc32fast::hash(&body) & 0x7FFF_FFFF) as i64).to_string());
        let req = RemotingCommand::request(request::REGISTER_BROKER, header).with_body(body);
        let calls = self.namesrv_addrs().into_iter().map(|addr| {
            let req = req.clone();
            let client = self.namesrv.clone();
            async move {
                match client.invoke(&addr, req, Duration::from_secs(6)).await {
                    Ok(r) if r.code == response::SUCCESS => {
                        // A slave learns where its master's HA listener is.
                        if let Some(ha) = r.get("haServerAddr").filter(|a| !a.is_empty()) {
                            self.ha.learn_master(ha);
                        }
                        if let Some(m) = r.get("masterAddr").filter(|a| !a.is_empty() && self.is_slave()) {
                            *self.master_addr.lock().unwrap() = Some(m.to_string());
                        }
                    }
                    Ok(r) => {
                        tracing::warn!(namesrv = %addr, code = r.code, remark = ?r.remark, "register broker refused")
                    }
                    Err(e) => tracing::warn!(namesrv = %addr, error = %e, "register broker failed"),
                }
            }
        });
        futures_util::future::join_all(calls).await;
    }

    /// The slaves of this broker (same cluster and name, id > 0) the name servers have
    /// registered, all that any of them knows; none when none answers.
    async fn registered_slaves(&self) -> std::collections::BTreeSet<u64> {
        let calls = self.namesrv_addrs().into_iter().map(|addr| async move {
            let req = RemotingCommand::request(request::GET_BROKER_CLUSTER_INFO, Default::default());
            let info = match self.namesrv.invoke(&addr, req, Duration::from_secs(3)).await {
                Ok(r) if r.code == response::SUCCESS => {
                    body::decode::<body::ClusterInfo>(&r.body).map_err(|e| format!("bad body: {e}"))
                }
                Ok(r) => Err(format!("refused with code {}", r.code)),
                Err(e) => Err(e.to_string()),
            };
            match info {
                Ok(info) => info
                    .broker_addr_table
                    .get(&self.cfg.broker_name)
                    .filter(|b| b.cluster == self.cfg.broker_cluster_name)
                    .map_or_else(std::collections::BTreeSet::new, |b| {
                        b.broker_addrs.keys().copied().filter(|id| *id != 0).collect()
                    }),
                Err(e) => {
                    tracing::warn!(namesrv = %addr, error = %e, "cluster info for the take-back failed");
                    Default::default()
                }
            }
        });
        futures_util::future::join_all(calls).await.into_iter().flatten().collect()
    }

    /// Slave: copies topics, subscription groups and consumer offsets from its master.
    async fn sync_from_master(self: &Arc<Self>) {
        let Some(master) = self.master_addr.lock().unwrap().clone() else { return };
        if let Some(t) = self.fetch_from_master(&master, request::GET_ALL_TOPIC_CONFIG).await {
            if self.topics.replace_from_master(t) {
                tracing::info!(master = %master, "slave: took the master's topic config");
                if let Err(e) = self.topics.persist(self.disk()).await {
                    tracing::error!(error = %e, "persisting topics failed");
                }
            }
        }
        if let Some(t) = self.fetch_from_master(&master, request::GET_ALL_CONSUMER_OFFSET).await {
            self.offsets.put_all(t);
        }
        if let Some(t) = self.fetch_from_master(&master, request::GET_ALL_SUBSCRIPTIONGROUP_CONFIG).await {
            if self.groups.replace_from_master(t) {
                if let Err(e) = self.groups.persist(self.disk()).await {
                    tracing::error!(error = %e, "persisting subscription groups failed");
                }
            }
        }
    }

    /// One table from the master (`code`: a GET_ALL_* request), decoded; None (logged) if
    /// the master did not answer, refused, or sent a body that does not decode.
    async fn fetch_from_master<T: serde::de::DeserializeOwned>(&self, master: &str, code: i32) -> Option<T> {
        let req = RemotingCommand::request(code, Default::default());
        match self.namesrv.invoke(master, req, Duration::from_secs(3)).await {
            Ok(r) if r.code == response::SUCCESS => {
                body::decode(&r.body).map_err(|e| tracing::warn!(master, code, error = %e, "slave sync: bad body")).ok()
            }
            Ok(r) => {
                tracing::warn!(master, code, answer = r.code, remark = ?r.remark, "slave sync refused");
                None
            }
            Err(e) => {
                tracing::debug!(master, code, error = %e, "slave sync failed");
                None
            }
        }
    }

    async fn unregister_all(&self) {
        let header = crate::namesrv::broker_header(
            &self.cfg.broker_cluster_name,
            &self.cfg.broker_name,
            &self.addr,
            self.cfg.broker_id,
        );
        let req = RemotingCommand::request(request::UNREGISTER_BROKER, header);
        let calls = self.namesrv_addrs().into_iter().map(|addr| {
            let (req, client) = (req.clone(), self.namesrv.clone());
            async move {
                if let Err(e) = client.invoke(&addr, req, Duration::from_secs(3)).await {
                    tracing::warn!(namesrv = %addr, error = %e, "unregister broker failed");
                }
            }
        });
        futures_util::future::join_all(calls).await;
    }

    /// Topics changed on a send (auto-create): written out and registered behind the answer.
    fn topics_changed(self: &Arc<Self>) {
        let b = self.clone();
        crate::rt::spawn(async move { b.persist_and_register_topics().await });
    }

    /// Persists topics and tells the name servers, after a topic was created or changed.
    async fn persist_and_register_topics(self: &Arc<Self>) {
        if let Err(e) = self.topics.persist(self.disk()).await {
            tracing::error!(error = %e, "persisting topics.json failed");
        }
        self.register_all().await;
    }

    /// Tells every consumer of `group` that its members changed (oneway).
    fn notify_consumer_ids_changed(&self, group: &str) {
        let Some(g) = self.clients.consumer_group(group) else { return };
        if self.groups.get(group).is_some_and(|c| !c.notify_consumer_ids_changed_enable) {
            return;
        }
        for c in g.clients.values() {
            let req = RemotingCommand::request(
                request::NOTIFY_CONSUMER_IDS_CHANGED,
                ext([("consumerGroup", group.to_string())]),
            );
            c.conn.send_oneway(req);
        }
    }

    async fn dispatch(self: Arc<Self>, conn: Connection, req: RemotingCommand) -> Option<RemotingCommand> {
        let oneway = req.is_oneway();
        let resp = match req.code {
            request::SEND_MESSAGE | request::SEND_MESSAGE_V2 => self.send_message(&conn, &req).await,
            request::SEND_BATCH_MESSAGE => self.send_batch(&conn, &req).await,
            request::PULL_MESSAGE => self.pull_message(&conn, &req).await,
            request::CONSUMER_SEND_MSG_BACK => self.send_back(&conn, &req).await,
            request::HEART_BEAT => self.heartbeat(&conn, &req),
            request::UNREGISTER_CLIENT => self.unregister_client(&req),
            request::GET_CONSUMER_LIST_BY_GROUP => self.consumer_list(&req),
            request::QUERY_CONSUMER_OFFSET => self.query_consumer_offset(&req),
            request::UPDATE_CONSUMER_OFFSET => self.update_consumer_offset(&req),
            request::UPDATE_AND_CREATE_TOPIC => self.update_topic(&req).await,
            request::GET_ALL_TOPIC_CONFIG => self.all_topic_config(&req),
            request::GET_MAX_OFFSET => self.queue_offset(&req, MessageStore::max_offset),
            request::GET_MIN_OFFSET => self.queue_offset(&req, MessageStore::min_offset),
            request::SEARCH_OFFSET_BY_TIMESTAMP => self.search_offset(&req).await,
            request::GET_EARLIEST_MSG_STORETIME => self.earliest_store_time(&req).await,
            request::VIEW_MESSAGE_BY_ID => self.view_message(&req).await,
            request::QUERY_MESSAGE => self.query_message(&req).await,
            request::GET_BROKER_RUNTIME_INFO => self.runtime_info(&req).await,
            request::GET_CONSUME_STATS => self.consume_stats(&req),
            request::GET_TOPIC_STATS_INFO => self.topic_stats(&req).await,
            request::GET_ALL_CONSUMER_OFFSET => {
                let snap = self.offsets.snapshot();
                req.response(response::SUCCESS, None).with_body(body::encode(&snap))
            }
            request::GET_ALL_SUBSCRIPTIONGROUP_CONFIG => {
                let snap = self.groups.snapshot();
                req.response(response::SUCCESS, None).with_body(body::encode(&snap))
            }
            request::UPDATE_AND_CREATE_SUBSCRIPTIONGROUP => self.update_group(&req).await,
            _ => not_supported(&req),
        };
        (!oneway).then_some(resp)
    }
}

impl Processor for Broker {
    fn process(self: Arc<Self>, conn: Connection, req: RemotingCommand) -> BoxFuture<Option<RemotingCommand>> {
        Box::pin(self.dispatch(conn, req))
    }

    fn on_close(&self, conn: &Connection) {
        for g in self.clients.evict(Some(conn.id), None) {
            self.notify_consumer_ids_changed(&g);
        }
    }
}

pub fn split_addrs(addrs: &str) -> Vec<String> {
    addrs.split(';').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot listen on {0}: {1}")]
    Listen(String, std::io::Error),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Config(String),
}

/// A running broker.
pub struct BrokerController {
    pub broker: Arc<Broker>,
    server: Server,
    tasks: Vec<crate::rt::task::JoinHandle<()>>,
}

impl BrokerController {
    /// Binds `brokerIP1:listenPort` (0 = any free port), opens the store and starts serving.
    pub async fn start(mut cfg: BrokerConfig, disk: Disk) -> Result<BrokerController, BrokerError> {
        let bind = cfg.broker_addr();
        let any_port = cfg.listen_port == 0;
        let listener = TcpListener::bind(&bind).await.map_err(|e| BrokerError::Listen(bind.clone(), e))?;
        cfg.listen_port = listener.local_addr().map_err(|e| BrokerError::Listen(bind.clone(), e))?.port();
        cfg.finish().map_err(BrokerError::Config)?;
        let store = MessageStore::open(cfg.store.clone(), disk.clone()).await?;
        let topics = TopicManager::load(&disk, &cfg).await?;
        let groups = GroupManager::load(&disk, &cfg).await?;
        let offsets = OffsetManager::load(&disk, &cfg).await?;
        let ha_listener = match cfg.broker_role {
            BrokerRole::Slave => None,
            _ => {
                // listenPort 0 (tests): the HA listener takes any free port too.
                let port = if any_port && cfg.ha_listen_port == 0 { 0 } else { cfg.ha_port() };
                let at = format!("{}:{port}", cfg.broker_ip1);
                let l = TcpListener::bind(&at).await.map_err(|e| BrokerError::Listen(at.clone(), e))?;
                cfg.ha_listen_port = l.local_addr().map_err(|e| BrokerError::Listen(at, e))?.port();
                Some(l)
            }
        };
        let ha = ha::Ha::open(&cfg, &store).await?;
        let broker = Arc::new(Broker {
            ha: ha.clone(),
            addr: cfg.broker_addr(),
            namesrv_addrs: Mutex::new(split_addrs(cfg.namesrv_addr.as_deref().unwrap_or(""))),
            master_addr: Mutex::new(None),
            cfg,
            store,
            topics,
            groups,
            offsets,
            clients: ClientManager::default(),
            hold: PullHold::default(),
            stats: Stats::default(),
            namesrv: RemotingClient::new(),
            boot_ms: crate::rt::now_ms(),
            shutting_down: AtomicBool::new(false),
            offsets_settled: Default::default(),
        });
        let weak = Arc::downgrade(&broker);
        broker.store.set_arrival_listener(Arc::new(move |topic, queue_id, _max| {
            if let Some(b) = weak.upgrade() {
                b.hold.notify(topic, queue_id);
                b.ha.wake();
            }
        }));
        if let Err(e) = broker.topics.persist(&disk).await {
            tracing::warn!(error = %e, "persisting topics.json failed");
        }
        let server = Server::serve(
            listener,
            broker.clone(),
            ServerConfig {
                idle_timeout: Duration::from_millis(broker.cfg.client_channel_max_idle_time_ms),
                ..Default::default()
            },
        )
        .map_err(|e| BrokerError::Listen(bind.clone(), e))?;
        broker.register_all().await;
        let mut tasks = vec![
            crate::rt::spawn(periodic(broker.clone(), broker.cfg.register_name_server_period_ms, |b| {
                Box::pin(async move { b.register_all().await })
            })),
            crate::rt::spawn(periodic(broker.clone(), broker.cfg.flush_consumer_offset_interval_ms, |b| {
                Box::pin(async move {
                    if let Err(e) = b.offsets.persist(b.disk(), false).await {
                        tracing::error!(error = %e, "persisting consumer offsets failed");
                    }
                })
            })),
            crate::rt::spawn(periodic(broker.clone(), 10_000, |b| {
                Box::pin(async move {
                    let idle = Duration::from_millis(b.cfg.client_channel_max_idle_time_ms);
                    for g in b.clients.evict(None, Some((crate::rt::instant(), idle))) {
                        b.notify_consumer_ids_changed(&g);
                    }
                })
            })),
            crate::rt::spawn(periodic(broker.clone(), 1_000, |b| {
                Box::pin(async move { b.stats.sample(crate::rt::now_ms()) })
            })),
        ];
        if broker.is_slave() {
            // RocketMQ's SlaveSynchronize: topics, subscription groups and consumer offsets
            // from the master 3 s after start, then every 10 s.
            tasks.push(crate::rt::spawn(periodic_from(broker.clone(), 3_000, 10_000, |b| {
                Box::pin(async move { b.sync_from_master().await })
            })));
            // A slave that booted before its master learns the master's HA address from the
            // name server's answer: ask every 2 s until it knows (not only every 30 s).
            tasks.push(crate::rt::spawn(periodic(broker.clone(), 2_000, |b| {
                Box::pin(async move {
                    if !b.ha.knows_master() {
                        b.register_all().await;
                    }
                })
            })));
        }
        match ha_listener {
            Some(l) => {
                if ha.reclaiming() {
                    ha.expect_slaves(broker.registered_slaves().await);
                }
                tasks.push(crate::rt::spawn(ha.clone().reclaim_deadline()));
                if broker.cfg.broker_role == BrokerRole::SyncMaster {
                    tasks.push(crate::rt::spawn(ha.clone().expire_waits()));
                }
                tasks.push(crate::rt::spawn(ha.clone().serve(l)));
            }
            None => tasks.push(crate::rt::spawn(ha.clone().follow())),
        }
        tracing::info!(
            "The broker[{}, {}] boot success. serializeType=JSON and name server is {}",
            broker.cfg.broker_name,
            broker.addr,
            broker.namesrv_addrs().join(";")
        );
        Ok(BrokerController { broker, server, tasks })
    }

    pub fn addr(&self) -> &str {
        &self.broker.addr
    }

    /// The configuration in effect, with the ports that port 0 picked filled in.
    pub fn config(&self) -> &BrokerConfig {
        &self.broker.cfg
    }

    /// Graceful shutdown: unregister, stop accepting, finish in-flight requests (parked
    /// pulls answered now), persist offsets, flush and checkpoint the store.
    pub async fn shutdown(self) -> Result<(), StoreError> {
        let b = &self.broker;
        b.shutting_down.store(true, Ordering::Release);
        b.ha.shutdown();
        stop_tasks(self.tasks).await;
        b.unregister_all().await;
        b.hold.stopping.store(true, Ordering::Release);
        b.hold.shutdown.notify_waiters();
        self.server.shutdown(Duration::from_secs(10)).await;
        b.namesrv.close_all();
        b.offsets.persist(b.disk(), true).await?;
        b.groups.persist(b.disk()).await?;
        b.topics.persist(b.disk()).await?;
        b.store.shutdown().await?;
        tracing::info!(broker = %b.cfg.broker_name, "broker shut down cleanly");
        Ok(())
    }

    /// Stops the broker the way a killed process does: no unregister, no flush, no
    /// checkpoint; connections drop and the store is abandoned as is.
    pub async fn crash(self) {
        self.broker.ha.shutdown();
        stop_tasks(self.tasks).await;
        self.broker.hold.stopping.store(true, Ordering::Release);
        self.broker.hold.shutdown.notify_waiters();
        self.server.abort().await;
        self.broker.namesrv.close_all();
        self.broker.store.abandon().await;
    }
}

/// Aborts the broker's own tasks and waits until they are gone, so what they own (the HA
/// listener among them) is released when shutdown returns.
async fn stop_tasks(tasks: Vec<crate::rt::task::JoinHandle<()>>) {
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        let _ = t.await;
    }
}

async fn periodic(b: Arc<Broker>, every_ms: u64, f: fn(Arc<Broker>) -> BoxFuture<()>) {
    periodic_from(b, every_ms, every_ms, f).await
}

/// `f` first after `first_ms`, then every `every_ms`, until shutdown.
async fn periodic_from(b: Arc<Broker>, first_ms: u64, every_ms: u64, f: fn(Arc<Broker>) -> BoxFuture<()>) {
    crate::rt::time::sleep(Duration::from_millis(first_ms)).await;
    let mut tick = crate::rt::time::interval(Duration::from_millis(every_ms.max(1)));
    loop {
        tick.tick().await;
        if b.shutting_down.load(Ordering::Acquire) {
            return;
        }
        f(b.clone()).await;
    }
}
