//! The client library: a producer and a push consumer that speak RocketMQ's protocol to any
//! RocketMQ-compatible name server and broker (Keel's or Apache's).
//!
//! Each producer or consumer owns one [`Instance`] (RocketMQ's `MQClientInstance` with the
//! instance name `pid#random`): the connections, the name-server list with fail-over, the
//! route cache refreshed every `poll_name_server_interval`, and the heartbeat.

pub mod admin;
mod consumer;
mod producer;

pub use admin::Admin;
pub use consumer::{
    allocate_averagely, CommitHook, ConsumeFromWhere, ConsumeResult, Listener, MessageModel, PushConsumer,
    PushConsumerBuilder,
};
pub use producer::{Message, Producer, SendResult, SendStatus};

use crate::protocol::body::{self, HeartbeatData, TopicRouteData};
use crate::protocol::code::{request, response};
use crate::protocol::{header::ext, RemotingCommand};
use crate::remoting::{RemotingClient, RemotingError};
use crate::rt::disk::Disk;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ClientError {
    #[error("{0}")]
    Remoting(#[from] RemotingError),
    #[error("broker answered code {code}: {remark}")]
    Broker { code: i32, remark: String },
    #[error("no route info of this topic: {0}")]
    NoRoute(String),
    #[error("no name server address configured")]
    NoNameServer,
    #[error("{0}")]
    Other(String),
}

impl ClientError {
    pub(crate) fn from_response(r: &RemotingCommand) -> ClientError {
        ClientError::Broker { code: r.code, remark: r.remark.clone().unwrap_or_default() }
    }
}

#[derive(Clone)]
pub struct ClientConfig {
    /// `;`-separated name server addresses.
    pub namesrv_addr: String,
    /// The IP this client reports in its client id.
    pub client_ip: String,
    /// `None`: `pid#random`, so every producer and consumer in a process is its own client.
    pub instance_name: Option<String>,
    pub poll_name_server_interval: Duration,
    pub heartbeat_broker_interval: Duration,
    pub persist_consumer_offset_interval: Duration,
    /// Timeout of one request to a name server or broker (RocketMQ: 3 s).
    pub api_timeout: Duration,
    /// Where BROADCASTING consumers keep offsets (RocketMQ: `~/.rocketmq_offsets`).
    pub offset_store_dir: PathBuf,
    pub disk: Disk,
}

impl ClientConfig {
    pub fn new(namesrv_addr: &str) -> Self {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
        ClientConfig {
            namesrv_addr: namesrv_addr.to_string(),
            client_ip: "127.0.0.1".into(),
            instance_name: None,
            poll_name_server_interval: Duration::from_secs(30),
            heartbeat_broker_interval: Duration::from_secs(30),
            persist_consumer_offset_interval: Duration::from_secs(5),
            api_timeout: Duration::from_secs(3),
            offset_store_dir: home.join(".rocketmq_offsets"),
            disk: Disk::Real,
        }
    }
}

/// Connections, name servers, routes: what a producer or consumer shares with nothing else.
pub struct Instance {
    pub cfg: ClientConfig,
    pub client_id: String,
    pub remoting: RemotingClient,
    namesrv: Mutex<(Vec<String>, usize)>,
    routes: Mutex<BTreeMap<String, TopicRouteData>>,
}

impl Instance {
    pub fn new(cfg: ClientConfig) -> Arc<Instance> {
        use rand::Rng;
        let mut rng = crate::rt::rng();
        let instance =
            cfg.instance_name.clone().unwrap_or_else(|| format!("{}#{}", std::process::id(), rng.gen::<u32>()));
        let addrs = crate::broker::split_addrs(&cfg.namesrv_addr);
        let start = if addrs.is_empty() { 0 } else { rng.gen_range(0..addrs.len()) };
        Arc::new(Instance {
            client_id: format!("{}@{}", cfg.client_ip, instance),
            remoting: RemotingClient::new(),
            namesrv: Mutex::new((addrs, start)),
            routes: Mutex::new(BTreeMap::new()),
            cfg,
        })
    }

    /// A request to the current name server; after a failure, the next one in the list is
    /// tried (and kept) until one answers.
    pub async fn namesrv_invoke(&self, cmd: RemotingCommand) -> Result<RemotingCommand, ClientError> {
        let (addrs, start) = self.namesrv.lock().unwrap().clone();
        if addrs.is_empty() {
            return Err(ClientError::NoNameServer);
        }
        let mut last = None;
        for i in 0..addrs.len() {
            let idx = (start + i) % addrs.len();
            match self.remoting.invoke(&addrs[idx], cmd.clone(), self.cfg.api_timeout).await {
                Ok(r) => {
                    self.namesrv.lock().unwrap().1 = idx;
                    return Ok(r);
                }
                Err(e) => {
                    tracing::debug!(namesrv = %addrs[idx], error = %e, "name server failed; trying the next");
                    last = Some(e);
                }
            }
        }
        Err(last.expect("at least one address").into())
    }

    /// Asks the name servers for a topic's route. `Ok(None)`: the topic does not exist.
    pub async fn fetch_route(&self, topic: &str) -> Result<Option<TopicRouteData>, ClientError> {
        let cmd = RemotingCommand::request(request::GET_ROUTEINFO_BY_TOPIC, ext([("topic", topic.to_string())]));
        let r = self.namesrv_invoke(cmd).await?;
        match r.code {
            response::SUCCESS => body::decode(&r.body).map(Some).map_err(ClientError::Other),
            response::TOPIC_NOT_EXIST => Ok(None),
            _ => Err(ClientError::from_response(&r)),
        }
    }

    /// Fetches and caches a route; a topic the name servers no longer know is dropped.
    pub async fn update_route(&self, topic: &str) -> Result<Option<TopicRouteData>, ClientError> {
        let route = self.fetch_route(topic).await?;
        let mut routes = self.routes.lock().unwrap();
        match &route {
            Some(r) => {
                routes.insert(topic.to_string(), r.clone());
            }
            None => {
                routes.remove(topic);
            }
        }
        Ok(route)
    }

    pub fn cached_route(&self, topic: &str) -> Option<TopicRouteData> {
        self.routes.lock().unwrap().get(topic).cloned()
    }

    /// broker name → id → address, from every cached route.
    pub fn broker_table(&self) -> BTreeMap<String, BTreeMap<u64, String>> {
        let mut t: BTreeMap<String, BTreeMap<u64, String>> = BTreeMap::new();
        for r in self.routes.lock().unwrap().values() {
            for b in &r.broker_datas {
                t.entry(b.broker_name.clone()).or_default().extend(b.broker_addrs.clone());
            }
        }
        t
    }

    /// RocketMQ's `findBrokerAddressInSubscribe`: the address of broker `id` of the group,
    /// else of any broker of it (lowest id first); with whether it is a slave.
    pub fn broker_in_subscribe(&self, broker_name: &str, id: u64) -> Option<(String, bool)> {
        self.broker_avoiding(broker_name, id, None)
    }

    /// As `broker_in_subscribe`, but another broker of the group rather than `avoid` (an
    /// address that just failed) while there is one.
    pub fn broker_avoiding(&self, broker_name: &str, id: u64, avoid: Option<&str>) -> Option<(String, bool)> {
        let ids = self.broker_ids(broker_name);
        let ok = |a: &String| avoid != Some(a.as_str());
        ids.get(&id)
            .filter(|a| ok(a))
            .map(|a| (a.clone(), id != 0))
            .or_else(|| ids.iter().find(|(_, a)| ok(a)).map(|(i, a)| (a.clone(), *i != 0)))
            .or_else(|| ids.iter().next().map(|(i, a)| (a.clone(), *i != 0)))
    }

    /// Called for every send: copies the one address, not the table (as in the table, the
    /// last route that names the master wins).
    pub fn master_addr(&self, broker_name: &str) -> Option<String> {
        let routes = self.routes.lock().unwrap();
        let groups = routes.values().flat_map(|r| &r.broker_datas).filter(|b| b.broker_name == broker_name);
        groups.filter_map(|b| b.broker_addrs.get(&0)).next_back().cloned()
    }

    /// One broker group's addresses by brokerId, as in [`broker_table`](Self::broker_table).
    fn broker_ids(&self, broker_name: &str) -> BTreeMap<u64, String> {
        let mut ids = BTreeMap::new();
        for r in self.routes.lock().unwrap().values() {
            for b in r.broker_datas.iter().filter(|b| b.broker_name == broker_name) {
                ids.extend(b.broker_addrs.iter().map(|(id, a)| (*id, a.clone())));
            }
        }
        ids
    }

    /// Sends a heartbeat to every known broker (only masters when `masters_only`).
    pub async fn heartbeat(&self, data: &HeartbeatData, masters_only: bool) {
        let body = body::encode(data);
        let mut addrs: Vec<String> = Vec::new();
        for ids in self.broker_table().values() {
            for (id, addr) in ids {
                if *id == 0 || !masters_only {
                    addrs.push(addr.clone());
                }
            }
        }
        let calls = addrs.into_iter().map(|addr| {
            let cmd = RemotingCommand::request(request::HEART_BEAT, Default::default()).with_body(body.clone());
            async move {
                match self.remoting.invoke(&addr, cmd, self.cfg.api_timeout).await {
                    Ok(r) if r.code == response::SUCCESS => {}
                    Ok(r) => tracing::warn!(broker = %addr, code = r.code, remark = ?r.remark, "heartbeat refused"),
                    Err(e) => tracing::debug!(broker = %addr, error = %e, "heartbeat failed"),
                }
            }
        });
        futures_util::future::join_all(calls).await;
    }

    /// Tells every known broker this client is leaving its groups.
    pub async fn unregister(&self, producer_group: Option<&str>, consumer_group: Option<&str>) {
        let mut e = ext([("clientID", self.client_id.clone())]);
        if let Some(g) = producer_group {
            e.insert("producerGroup", g.to_string());
        }
        if let Some(g) = consumer_group {
            e.insert("consumerGroup", g.to_string());
        }
        let addrs: Vec<String> = self.broker_table().values().flat_map(|ids| ids.values().cloned()).collect();
        let calls = addrs.into_iter().map(|addr| {
            let cmd = RemotingCommand::request(request::UNREGISTER_CLIENT, e.clone());
            async move {
                let _ = self.remoting.invoke(&addr, cmd, self.cfg.api_timeout).await;
            }
        });
        futures_util::future::join_all(calls).await;
    }
}
