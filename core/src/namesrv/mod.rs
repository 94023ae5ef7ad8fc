//! The name server: brokers register their topics here and clients ask it for routes.
//! Several name servers run side by side and never talk to each other; every broker
//! registers with all of them, so each converges on its own.
//!
//! Liveness as RocketMQ's `RouteInfoManager`: a broker expires `broker_expire` (120 s) after
//! its last registration, checked every `scan_interval` (10 s), or at once when the
//! connection it registered over closes.

use crate::protocol::body::{self, BrokerData, ClusterInfo, QueueData, RegisterBrokerBody, TopicList, TopicRouteData};
use crate::protocol::code::{request, response};
use crate::protocol::{header::ext, RemotingCommand};
use crate::remoting::{not_supported, BoxFuture, Connection, Processor, Server, ServerConfig};
use crate::rt::time::Instant;
use crate::store::meta::DataVersion;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct NamesrvConfig {
    pub listen_addr: String,
    pub scan_interval: Duration,
    pub broker_expire: Duration,
}

impl Default for NamesrvConfig {
    fn default() -> Self {
        NamesrvConfig {
            listen_addr: "127.0.0.1:9876".into(),
            scan_interval: Duration::from_secs(10),
            broker_expire: Duration::from_secs(120),
        }
    }
}

impl NamesrvConfig {
    /// Applies one `namesrv.properties` key; `Ok(false)` for an unknown key.
    pub fn set(&mut self, key: &str, value: &str) -> Result<bool, String> {
        let v = value.trim();
        let ms = |v: &str| {
            v.parse::<u64>().map(Duration::from_millis).map_err(|_| format!("{key}: '{value}' is not a number"))
        };
        match key {
            "listenPort" => {
                let port: u16 = v.parse().map_err(|_| format!("{key}: '{value}' is not a port"))?;
                let host = self.listen_addr.rsplit_once(':').map(|(h, _)| h.to_string()).unwrap_or("127.0.0.1".into());
                self.listen_addr = format!("{host}:{port}");
            }
            "bindAddress" | "listenAddr" => {
                let port = self.listen_addr.rsplit_once(':').map(|(_, p)| p.to_string()).unwrap_or("9876".into());
                self.listen_addr = format!("{v}:{port}");
            }
            "scanNotActiveBrokerInterval" => self.scan_interval = ms(v)?,
            "brokerChannelExpiredTime" => self.broker_expire = ms(v)?,
            // Accepted for compatibility; Keel keeps no KV store or HTTP address service.
            "kvConfigPath"
            | "configStorePath"
            | "orderMessageEnable"
            | "rocketmqHome"
            | "productEnvName"
            | "clusterTest"
            | "serverWorkerThreads"
            | "serverCallbackExecutorThreads"
            | "serverSelectorThreads"
            | "defaultThreadPoolNums" => {}
            _ => return Ok(false),
        }
        Ok(true)
    }

    pub const KEYS: &'static [&'static str] =
        &["listenPort", "bindAddress", "scanNotActiveBrokerInterval", "brokerChannelExpiredTime", "kvConfigPath"];
}

#[derive(Clone, Debug)]
struct LiveBroker {
    last_update: Instant,
    data_version: DataVersion,
    conn: Option<u64>,
    ha_server_addr: String,
    cluster: String,
    broker_name: String,
}

/// The route tables. All maps are ordered, so every answer is deterministic.
#[derive(Default)]
pub struct RouteInfo {
    topic_queues: BTreeMap<String, BTreeMap<String, QueueData>>,
    brokers: BTreeMap<String, BrokerData>,
    clusters: BTreeMap<String, BTreeSet<String>>,
    live: BTreeMap<String, LiveBroker>,
}

/// What a registering broker is told: its HA server and (for a slave) its master.
#[derive(Debug, Default, PartialEq)]
pub struct RegisterResult {
    pub ha_server_addr: Option<String>,
    pub master_addr: Option<String>,
}

pub struct Registration<'a> {
    pub cluster: &'a str,
    pub broker_name: &'a str,
    pub broker_addr: &'a str,
    pub broker_id: u64,
    pub ha_server_addr: &'a str,
    pub body: &'a RegisterBrokerBody,
    pub conn: Option<u64>,
}

impl RouteInfo {
    pub fn register(&mut self, r: Registration<'_>, now: Instant) -> RegisterResult {
        self.clusters.entry(r.cluster.to_string()).or_default().insert(r.broker_name.to_string());
        let bd = self.brokers.entry(r.broker_name.to_string()).or_insert_with(|| BrokerData {
            cluster: r.cluster.to_string(),
            broker_name: r.broker_name.to_string(),
            ..Default::default()
        });
        // The same address under another id (a slave turned master) is replaced.
        bd.broker_addrs.retain(|id, addr| !(addr == r.broker_addr && *id != r.broker_id));
        let first = bd.broker_addrs.insert(r.broker_id, r.broker_addr.to_string()).is_none();
        let wrapper = &r.body.topic_config_serialize_wrapper;
        let changed = self.live.get(r.broker_addr).is_none_or(|l| l.data_version != wrapper.data_version);
        if r.broker_id == 0 && (first || changed) {
            for tc in wrapper.topic_config_table.values() {
                let qd = QueueData {
                    broker_name: r.broker_name.to_string(),
                    read_queue_nums: tc.read_queue_nums,
                    write_queue_nums: tc.write_queue_nums,
                    perm: tc.perm,
                    topic_sys_flag: tc.topic_sys_flag,
                };
                self.topic_queues.entry(tc.topic_name.clone()).or_default().insert(r.broker_name.to_string(), qd);
            }
            // Topics this master no longer has lose its queues.
            for (topic, queues) in self.topic_queues.iter_mut() {
                if !wrapper.topic_config_table.contains_key(topic) {
                    queues.remove(r.broker_name);
                }
            }
            self.topic_queues.retain(|_, q| !q.is_empty());
        }
        if let Some(old) = self.live.get(r.broker_addr) {
            if old.broker_name != r.broker_name {
                tracing::info!(addr = r.broker_addr, "address re-registered under another broker name");
            }
        } else {
            tracing::info!(
                cluster = r.cluster,
                broker = r.broker_name,
                id = r.broker_id,
                addr = r.broker_addr,
                "new broker registered"
            );
        }
        self.live.insert(
            r.broker_addr.to_string(),
            LiveBroker {
                last_update: now,
                data_version: wrapper.data_version.clone(),
                conn: r.conn,
                ha_server_addr: r.ha_server_addr.to_string(),
                cluster: r.cluster.to_string(),
                broker_name: r.broker_name.to_string(),
            },
        );
        let mut res = RegisterResult::default();
        if r.broker_id != 0 {
            if let Some(master) = self.brokers.get(r.broker_name).and_then(|b| b.master_addr()) {
                if let Some(l) = self.live.get(master) {
                    res.ha_server_addr = Some(l.ha_server_addr.clone());
                    res.master_addr = Some(master.to_string());
                }
            }
        }
        res
    }

    /// Removes one broker address; a broker name left with no address leaves its cluster and
    /// every topic (topics left with no queues vanish).
    pub fn unregister(&mut self, cluster: &str, broker_name: &str, broker_addr: &str, broker_id: u64) {
        self.live.remove(broker_addr);
        let Some(bd) = self.brokers.get_mut(broker_name) else { return };
        if bd.broker_addrs.get(&broker_id).is_some_and(|a| a == broker_addr) {
            bd.broker_addrs.remove(&broker_id);
        }
        tracing::info!(cluster, broker = broker_name, id = broker_id, addr = broker_addr, "broker unregistered");
        if bd.broker_addrs.is_empty() {
            self.brokers.remove(broker_name);
            if let Some(c) = self.clusters.get_mut(cluster) {
                c.remove(broker_name);
                if c.is_empty() {
                    self.clusters.remove(cluster);
                }
            }
            for queues in self.topic_queues.values_mut() {
                queues.remove(broker_name);
            }
            self.topic_queues.retain(|_, q| !q.is_empty());
        }
    }

    fn remove_where(&mut self, pred: impl Fn(&LiveBroker) -> bool, why: &str) {
        let gone: Vec<(String, LiveBroker)> =
            self.live.iter().filter(|(_, l)| pred(l)).map(|(a, l)| (a.clone(), l.clone())).collect();
        for (addr, l) in gone {
            let id = self
                .brokers
                .get(&l.broker_name)
                .and_then(|b| b.broker_addrs.iter().find(|(_, a)| **a == addr).map(|(id, _)| *id));
            tracing::warn!(addr = %addr, broker = %l.broker_name, "removing broker: {why}");
            match id {
                Some(id) => self.unregister(&l.cluster, &l.broker_name, &addr, id),
                None => {
                    self.live.remove(&addr);
                }
            }
        }
    }

    /// Drops brokers not heard from within `expire`.
    pub fn scan_expired(&mut self, now: Instant, expire: Duration) {
        self.remove_where(|l| now.duration_since(l.last_update) > expire, "registration expired");
    }

    /// Drops brokers registered over a connection that closed.
    pub fn connection_closed(&mut self, conn: u64) {
        self.remove_where(|l| l.conn == Some(conn), "its connection closed");
    }

    pub fn route(&self, topic: &str) -> Option<TopicRouteData> {
        let queues = self.topic_queues.get(topic)?;
        let mut route = TopicRouteData::default();
        for (name, qd) in queues {
            route.queue_datas.push(qd.clone());
            if let Some(bd) = self.brokers.get(name) {
                route.broker_datas.push(bd.clone());
            }
        }
        Some(route)
    }

    pub fn cluster_info(&self) -> ClusterInfo {
        ClusterInfo { broker_addr_table: self.brokers.clone(), cluster_addr_table: self.clusters.clone() }
    }

    pub fn topics(&self) -> TopicList {
        TopicList { topic_list: self.topic_queues.keys().cloned().collect() }
    }

    /// Topics with a queue on a broker of `cluster`.
    pub fn topics_of_cluster(&self, cluster: &str) -> TopicList {
        let names = self.clusters.get(cluster).cloned().unwrap_or_default();
        TopicList {
            topic_list: self
                .topic_queues
                .iter()
                .filter(|(_, q)| q.keys().any(|b| names.contains(b)))
                .map(|(t, _)| t.clone())
                .collect(),
        }
    }

    pub fn data_version(&self, broker_addr: &str) -> Option<&DataVersion> {
        self.live.get(broker_addr).map(|l| &l.data_version)
    }
}

/// The request processor around [`RouteInfo`].
pub struct NamesrvProcessor {
    pub routes: Mutex<RouteInfo>,
}

impl NamesrvProcessor {
    fn handle(&self, conn: &Connection, req: &RemotingCommand) -> RemotingCommand {
        match req.code {
            request::REGISTER_BROKER => self.register(conn, req),
            request::UNREGISTER_BROKER => {
                let parsed = (|| {
                    Ok::<_, crate::protocol::HeaderError>((
                        req.req::<String>("clusterName")?,
                        req.req::<String>("brokerName")?,
                        req.req::<String>("brokerAddr")?,
                        req.req::<u64>("brokerId")?,
                    ))
                })();
                match parsed {
                    Ok((c, n, a, id)) => {
                        self.routes.lock().unwrap().unregister(&c, &n, &a, id);
                        req.response(response::SUCCESS, None)
                    }
                    Err(e) => req.error(response::SYSTEM_ERROR, e.to_string()),
                }
            }
            request::GET_ROUTEINFO_BY_TOPIC => {
                let Some(topic) = req.get("topic") else {
                    return req.error(response::SYSTEM_ERROR, "the custom field <topic> is null");
                };
                match self.routes.lock().unwrap().route(topic) {
                    Some(route) => req.response(response::SUCCESS, None).with_body(body::encode(&route)),
                    None => req.error(
                        response::TOPIC_NOT_EXIST,
                        format!("No topic route info in name server for the topic: {topic}"),
                    ),
                }
            }
            request::GET_BROKER_CLUSTER_INFO => {
                let info = self.routes.lock().unwrap().cluster_info();
                req.response(response::SUCCESS, None).with_body(body::encode(&info))
            }
            request::GET_ALL_TOPIC_LIST_FROM_NAMESERVER => {
                let list = self.routes.lock().unwrap().topics();
                req.response(response::SUCCESS, None).with_body(body::encode(&list))
            }
            request::GET_TOPICS_BY_CLUSTER => {
                let cluster = req.get("cluster").unwrap_or_default();
                let list = self.routes.lock().unwrap().topics_of_cluster(cluster);
                req.response(response::SUCCESS, None).with_body(body::encode(&list))
            }
            request::QUERY_DATA_VERSION => {
                let addr = req.get("brokerAddr").unwrap_or_default();
                let sent: DataVersion = body::decode(&req.body).unwrap_or_default();
                let mut routes = self.routes.lock().unwrap();
                let changed = routes.data_version(addr) != Some(&sent);
                if let Some(l) = routes.live.get_mut(addr) {
                    l.last_update = crate::rt::instant();
                }
                let mut resp = req.response(response::SUCCESS, None);
                resp.set("changed", changed);
                resp
            }
            request::GET_KV_CONFIG => req.error(
                response::QUERY_NOT_FOUND,
                format!(
                    "No config item, Namespace: {} Key: {}",
                    req.get("namespace").unwrap_or_default(),
                    req.get("key").unwrap_or_default()
                ),
            ),
            _ => not_supported(req),
        }
    }

    fn register(&self, conn: &Connection, req: &RemotingCommand) -> RemotingCommand {
        let parsed = (|| {
            Ok::<_, crate::protocol::HeaderError>((
                req.req::<String>("clusterName")?,
                req.req::<String>("brokerName")?,
                req.req::<String>("brokerAddr")?,
                req.req::<u64>("brokerId")?,
                req.opt::<String>("haServerAddr")?.unwrap_or_default(),
                req.opt::<i64>("bodyCrc32")?.unwrap_or(0),
                req.opt::<bool>("compressed")?.unwrap_or(false),
            ))
        })();
        let (cluster, name, addr, id, ha, crc, compressed) = match parsed {
            Ok(p) => p,
            Err(e) => return req.error(response::SYSTEM_ERROR, e.to_string()),
        };
        if crc != 0 && (crc32fast::hash(&req.body) & 0x7FFF_FFFF) as i64 != crc {
            return req.error(response::SYSTEM_ERROR, "crc32 not match");
        }
        if compressed {
            return req.error(
                response::SYSTEM_ERROR,
                "compressed register bodies are not supported; set compressedRegister=false",
            );
        }
        let body: RegisterBrokerBody = if req.body.is_empty() {
            RegisterBrokerBody::default()
        } else {
            match body::decode(&req.body) {
                Ok(b) => b,
                Err(e) => return req.error(response::SYSTEM_ERROR, format!("bad register body: {e}")),
            }
        };
        let res = self.routes.lock().unwrap().register(
            Registration {
                cluster: &cluster,
                broker_name: &name,
                broker_addr: &addr,
                broker_id: id,
                ha_server_addr: &ha,
                body: &body,
                conn: Some(conn.id),
            },
            crate::rt::instant(),
        );
        let mut resp = req.response(response::SUCCESS, None);
        if let Some(h) = res.ha_server_addr {
            resp.set("haServerAddr", h);
        }
        if let Some(m) = res.master_addr {
            resp.set("masterAddr", m);
        }
        resp.with_body(body::encode(&body::KvTable::default()))
    }
}

impl Processor for NamesrvProcessor {
    fn process(self: Arc<Self>, conn: Connection, req: RemotingCommand) -> BoxFuture<Option<RemotingCommand>> {
        let resp = self.handle(&conn, &req);
        Box::pin(async move { (!req.is_oneway()).then_some(resp) })
    }

    fn on_close(&self, conn: &Connection) {
        self.routes.lock().unwrap().connection_closed(conn.id);
    }
}

/// A running name server.
pub struct NameServer {
    server: Server,
    pub processor: Arc<NamesrvProcessor>,
    scanner: crate::rt::task::JoinHandle<()>,
}

impl NameServer {
    pub async fn start(cfg: NamesrvConfig) -> std::io::Result<NameServer> {
        let processor = Arc::new(NamesrvProcessor { routes: Mutex::new(RouteInfo::default()) });
        let server = Server::bind(&cfg.listen_addr, processor.clone(), ServerConfig::default()).await?;
        let p = processor.clone();
        let scanner = crate::rt::spawn(async move {
            let mut tick = crate::rt::time::interval(cfg.scan_interval);
            tick.tick().await;
            loop {
                tick.tick().await;
                p.routes.lock().unwrap().scan_expired(crate::rt::instant(), cfg.broker_expire);
            }
        });
        tracing::info!(addr = %server.local_addr(), "The Name Server boot success. serializeType=JSON");
        Ok(NameServer { server, processor, scanner })
    }

    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.server.local_addr()
    }

    pub async fn shutdown(&self) {
        self.scanner.abort();
        self.server.shutdown(Duration::from_secs(5)).await;
    }
}

/// The UNREGISTER/REGISTER header a broker sends (shared with the broker's side).
pub fn broker_header(cluster: &str, name: &str, addr: &str, id: u64) -> crate::protocol::ExtFields {
    ext([
        ("clusterName", cluster.to_string()),
        ("brokerName", name.to_string()),
        ("brokerAddr", addr.to_string()),
        ("brokerId", id.to_string()),
    ])
}
