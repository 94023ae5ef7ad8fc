//! The cluster in madsim: every name server, broker, producer and consumer is a node with its
//! own IP, booted through the binaries' code path (`BrokerConfig::from_properties`, then
//! `BrokerController::start` on the node's simulated disk). Faults are applied at their
//! times, then everything heals, consumers drain, and the checker judges the history.

use crate::checker::{check, Event, History, Report};
use crate::scenario::{FaultKind, Scenario};
use keel_core::broker::BrokerController;
use keel_core::client::{
    Admin, ClientConfig, ClientError, CommitHook, ConsumeFromWhere, ConsumeResult, Listener, Message, Producer,
    PushConsumer, SendStatus,
};
use keel_core::config::broker::{BrokerConfig, BrokerRole};
use keel_core::namesrv::{NameServer, NamesrvConfig};
use keel_core::protocol::message::decode_offset_msg_id;
use keel_core::remoting::RemotingError;
use keel_core::rt::disk::{Disk, SimDisk, SimFault};
use keel_core::store::meta::TopicConfig;
use madsim::net::NetSim;
use madsim::runtime::{Handle, NodeHandle};
use madsim::time::{sleep, sleep_until, Instant};
use rand::Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The result of one run.
pub struct Outcome {
    pub history: History,
    pub report: Report,
    pub violations: Vec<String>,
    /// The delivery log (canonical text).
    pub log: String,
    /// Simulated time the run took, ms.
    pub sim_ms: u64,
}

/// What every node shares with the harness: the clock origin and the history.
struct Shared {
    start: Instant,
    history: Mutex<History>,
    /// Last commit recorded per (consumer, broker, queue): only changes are logged.
    last_commit: Mutex<BTreeMap<(String, String, i32), i64>>,
    /// Commitlog position of each acked message: id -> physical offset.
    positions: Mutex<BTreeMap<String, i64>>,
    /// Every copy a consumer was given. A copy need not come from an answered send (an
    /// attempt the producer retried elsewhere stores one too).
    seen: Mutex<Vec<StoredCopy>>,
    /// Brokers whose boot failed (restarted at heal).
    boot_failed: Mutex<BTreeSet<String>>,
    losses: Mutex<Vec<PowerLoss>>,
    /// Masters killed for good.
    gone: Mutex<Vec<Gone>>,
    /// Commitlog records hit by a bit flip: (broker name, node, physical offset, when).
    corrupt: Mutex<Vec<(String, String, u64, u64)>>,
}

/// One stored copy of a message: where it sits and since when it is known to exist (its
/// send's invoke, or its delivery).
struct StoredCopy {
    id: String,
    broker: String,
    queue: i32,
    offset: i64,
    phys: i64,
    known_ms: u64,
}

/// A master killed for good: how far its slaves had copied its commitlog by then.
struct Gone {
    broker: String,
    node: String,
    at_ms: u64,
    slaves: Vec<String>,
    replicated_to: u64,
}

/// A broker's power loss, or a crash of a SYNC_FLUSH broker that still held appends since
/// its last sync: from which commitlog offset its bytes were gone.
struct PowerLoss {
    broker: String,
    node: String,
    at_ms: u64,
    restart_ms: Option<u64>,
    lost_from: u64,
    /// A process crash: only unsynced, so never answered, appends went; no acked loss is
    /// explained by it.
    crash: bool,
}

impl Shared {
    /// Marks the acked messages whose loss a fault explains: stored at or past the unsynced
    /// point of their broker's incarnation that lost power (the loss ASYNC_FLUSH allows), past
    /// what the slaves held when their master was killed for good (the loss ASYNC_MASTER
    /// allows), or in a record a bit flip hit. Each with why.
    fn mark_explained_losses(&self) {
        let losses = self.losses.lock().unwrap();
        let gone = self.gone.lock().unwrap();
        let corrupt = self.corrupt.lock().unwrap();
        let positions = self.positions.lock().unwrap();
        let mut h = self.history.lock().unwrap();
        let invoked: BTreeMap<&str, u64> = h
            .records
            .iter()
            .filter_map(|r| match &r.event {
                Event::Invoke { id } => Some((id.as_str(), r.t_ms)),
                _ => None,
            })
            .collect();
        let secs = |ms: u64| format!("{}.{:03}s", ms / 1000, ms % 1000);
        let (mut unsynced, mut unreplicated, mut hit) = (Vec::new(), Vec::new(), Vec::new());
        for r in &h.records {
            let Event::Ok { id, status, broker, .. } = &r.event else { continue };
            let Some(&phys) = positions.get(id).filter(|_| status == "SEND_OK") else { continue };
            let p = phys as u64;
            let sent = invoked.get(id.as_str()).copied().unwrap_or(0);
            for l in losses.iter().filter(|l| &l.broker == broker && !l.crash) {
                let same_incarnation = sent < l.at_ms && l.restart_ms.is_none_or(|t| r.t_ms < t);
                if same_incarnation && p >= l.lost_from {
                    let why = format!("not synced at {}'s power loss at {} (commitlog {phys})", l.node, secs(l.at_ms));
                    unsynced.push((id.clone(), why));
                }
            }
            for g in gone.iter().filter(|g| &g.broker == broker && sent < g.at_ms && p >= g.replicated_to) {
                let slaves = if g.slaves.is_empty() { "no slave".to_string() } else { g.slaves.join(", ") };
                let why = format!(
                    "not on {slaves} (copied up to commitlog {}) when {} was killed at {} (commitlog {phys})",
                    g.replicated_to,
                    g.node,
                    secs(g.at_ms)
                );
                unreplicated.push((id.clone(), why));
            }
            for (_, node, _, t) in corrupt.iter().filter(|(b, _, at, _)| b == broker && p == *at) {
                hit.push((
                    id.clone(),
                    format!("its record on {node} was corrupted at {} (commitlog {phys})", secs(*t)),
                ));
            }
        }
        // Any stored copy in an unsynced tail, answered SEND_OK or not (SLAVE_NOT_AVAILABLE,
        // FLUSH_SLAVE_TIMEOUT, an attempt the producer retried elsewhere): its queue offset
        // may be given out again after the power loss.
        let seen = self.seen.lock().unwrap();
        let answered = h.records.iter().filter_map(|r| match &r.event {
            Event::Ok { id, broker, queue, offset, .. } => positions.get(id).map(|&phys| StoredCopy {
                id: id.clone(),
                broker: broker.clone(),
                queue: *queue,
                offset: *offset,
                phys,
                known_ms: invoked.get(id.as_str()).copied().unwrap_or(0),
            }),
            _ => None,
        });
        // `stored_before` says whether a copy came from the incarnation that lost power: an
        // answered one if it was sent before the loss; a delivered one if it was delivered
        // before the broker came back (an answer read before the loss may arrive after it).
        let in_lost_tail = |c: &StoredCopy, stored_before: &dyn Fn(&PowerLoss) -> bool| {
            losses.iter().any(|l| l.broker == c.broker && stored_before(l) && c.phys as u64 >= l.lost_from)
        };
        let key = |c: &StoredCopy| (c.broker.clone(), c.queue, c.offset, c.id.clone());
        let lost_copies: Vec<_> = answered
            .filter(|c| in_lost_tail(c, &|l| c.known_ms < l.at_ms))
            .map(|c| key(&c))
            .chain(seen.iter().filter(|c| in_lost_tail(c, &|l| l.restart_ms.is_none_or(|t| c.known_ms < t))).map(key))
            .collect();
        h.unsynced.extend(unsynced);
        h.lost_copies.extend(lost_copies);
        h.unreplicated.extend(unreplicated);
        h.corrupt.extend(hit);
    }
}

impl Shared {
    fn now_ms(&self) -> u64 {
        Instant::now().duration_since(self.start).as_millis() as u64
    }
    fn push(&self, node: &str, event: Event) {
        let t = self.now_ms();
        self.history.lock().unwrap().push(t, node, event);
    }
    fn note(&self, node: &str, text: impl Into<String>) {
        self.push(node, Event::Note(text.into()));
    }
}

/// The segment files under `dir` (named by their start offset): (start, path, bytes written).
fn segments(disk: &SimDisk, dir: &std::path::Path) -> Vec<(u64, std::path::PathBuf, usize)> {
    disk.files()
        .into_iter()
        .filter(|(p, _)| p.starts_with(dir))
        .filter_map(|(p, written)| {
            let base = p.file_name()?.to_str()?.parse::<u64>().ok()?;
            Some((base, p, written))
        })
        .collect()
}

/// Starts of the records a commitlog segment file holds before `upto` (walking the size
/// fields from 0), and where the walk stopped: past `upto`, or at a zero or negative size.
fn record_starts(disk: &SimDisk, path: &std::path::Path, upto: usize) -> (Vec<usize>, usize) {
    let mut starts = Vec::new();
    let mut pos = 0usize;
    while pos < upto {
        let b = disk.peek(path, pos..pos + 4).unwrap_or_default();
        let size = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        if size <= 0 {
            break;
        }
        starts.push(pos);
        pos += size as usize;
    }
    (starts, pos)
}

/// Body of message `id`: "id:crc32:payload", the payload derived from the id.
pub fn body(id: &str, size: usize) -> Vec<u8> {
    let mut x = crc32fast::hash(id.as_bytes()) | 1;
    let payload: String = (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (b'a' + (x % 26) as u8) as char
        })
        .collect();
    format!("{id}:{:08x}:{payload}", crc32fast::hash(payload.as_bytes())).into_bytes()
}

/// The id of a delivered body and whether its checksum holds.
pub fn parse_body(b: &[u8]) -> (Option<String>, bool) {
    let Ok(s) = std::str::from_utf8(b) else { return (None, false) };
    let mut parts = s.splitn(3, ':');
    let (Some(id), Some(crc), Some(payload)) = (parts.next(), parts.next(), parts.next()) else {
        return (None, false);
    };
    let valid = u32::from_str_radix(crc, 16).is_ok_and(|c| c == crc32fast::hash(payload.as_bytes()));
    (Some(id.to_string()), valid)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Namesrv,
    Broker,
    Producer,
    Consumer,
}

struct SimNode {
    name: String,
    role: Role,
    handle: NodeHandle,
    /// Brokers: their disk and config.
    disk: Option<SimDisk>,
    broker: Option<BrokerConfig>,
}

/// One fault as it will be applied.
#[derive(Clone, Debug)]
struct Planned {
    at: Duration,
    kind: FaultKind,
    target: Option<String>,
    to: Option<String>,
    groups: Vec<Vec<String>>,
    /// None: until the heal.
    duration: Option<Duration>,
    latency: Duration,
    rate: f64,
    count: u32,
}

impl Planned {
    fn describe(&self) -> String {
        let mut s = format!("fault {}", self.kind.name());
        if let Some(t) = &self.target {
            s += &format!(" {t}");
        }
        if let Some(t) = &self.to {
            s += &format!(" -> {t}");
        }
        if !self.groups.is_empty() {
            let g: Vec<String> = self.groups.iter().map(|g| format!("[{}]", g.join(" "))).collect();
            s += &format!(" {}", g.join(" | "));
        }
        if matches!(self.kind, FaultKind::Latency | FaultKind::DiskSlow | FaultKind::DiskSlowSync) {
            s += &format!(" +{}ms", self.latency.as_millis());
        }
        if self.kind == FaultKind::Loss {
            s += &format!(" {:.2}", self.rate);
        }
        match self.duration {
            Some(d) => s + &format!(" for {}ms", d.as_millis()),
            None => s + " until heal",
        }
    }
}

/// How to undo an applied fault.
enum Undo {
    Restart(String),
    Resume(String),
    Links(Vec<(String, String)>),
    Unisolate(String),
    NetConfig,
    Disk(String, SimFault),
    Nothing,
}

struct Cluster {
    sc: Scenario,
    shared: Arc<Shared>,
    nodes: Vec<SimNode>,
    /// Nodes under a node-level fault (crash, power loss, stop, pause): no second one.
    busy: BTreeSet<String>,
    /// When everything heals (a stall without a duration lasts until then).
    heal_at: Duration,
}

fn ip_of(role: Role, i: usize) -> IpAddr {
    let net = match role {
        Role::Namesrv => 0,
        Role::Broker => 1,
        Role::Producer => 2,
        Role::Consumer => 3,
    };
    IpAddr::V4(Ipv4Addr::new(10, 0, net, i as u8 + 1))
}

/// Starts a node's process again, as an operator does: whatever is left of the old one (a
/// stop still draining, or a process that ended) dies first, and the OS frees its sockets.
/// madsim's `restart` alone keeps the old incarnation's bound ports (its `kill` frees them),
/// so a broker restarted while its stop hung on a stalled disk could never bind again.
fn restart_process(id: madsim::task::NodeId) {
    let handle = Handle::current();
    handle.kill(id);
    handle.restart(id);
}

/// A client node's config: its IP in the client id, its name as the instance (stable
/// across restarts and seeds), its own simulated disk.
fn client_config(namesrv: &str, ip: IpAddr, node: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new(namesrv);
    cfg.client_ip = ip.to_string();
    cfg.instance_name = Some(node.to_string());
    cfg.disk = Disk::Sim(SimDisk::new());
    cfg
}

fn is_timeout(e: &ClientError) -> bool {
    matches!(e, ClientError::Remoting(RemotingError::Timeout(..)))
}

impl Cluster {
    fn node(&self, name: &str) -> &SimNode {
        self.nodes.iter().find(|n| n.name == name).expect("scenario names were checked")
    }

    fn build(sc: Scenario) -> Cluster {
        let handle = Handle::current();
        let shared = Arc::new(Shared {
            start: Instant::now(),
            history: Mutex::new(History::default()),
            last_commit: Mutex::new(BTreeMap::new()),
            positions: Mutex::new(BTreeMap::new()),
            seen: Mutex::new(Vec::new()),
            boot_failed: Mutex::new(BTreeSet::new()),
            losses: Mutex::new(Vec::new()),
            gone: Mutex::new(Vec::new()),
            corrupt: Mutex::new(Vec::new()),
        });
        let mut nodes = Vec::new();
        let ns_list: Vec<String> =
            (0..sc.namesrvs as usize).map(|i| format!("{}:9876", ip_of(Role::Namesrv, i))).collect();
        let ns_addr = ns_list.join(";");

        for (i, addr) in ns_list.iter().enumerate() {
            let name = format!("namesrv-{}", i + 1);
            let (sh, n, addr) = (shared.clone(), name.clone(), addr.clone());
            let h = handle
                .create_node()
                .name(&name)
                .ip(ip_of(Role::Namesrv, i))
                .init(move || {
                    let (sh, n, addr) = (sh.clone(), n.clone(), addr.clone());
                    async move {
                        let cfg = NamesrvConfig { listen_addr: addr, ..Default::default() };
                        match NameServer::start(cfg).await {
                            Ok(ns) => {
                                sh.note(&n, "boot");
                                let _ = madsim::signal::ctrl_c().await;
                                ns.shutdown().await;
                                sh.note(&n, "stopped");
                            }
                            Err(e) => sh.note(&n, format!("boot failed: {e}")),
                        }
                    }
                })
                .build();
            nodes.push(SimNode { name, role: Role::Namesrv, handle: h, disk: None, broker: None });
        }

        for (i, b) in sc.brokers.iter().enumerate() {
            let ip = ip_of(Role::Broker, i);
            let (mut cfg, _) = BrokerConfig::from_properties(&b.properties, &b.source).expect("checked at load");
            cfg.namesrv_addr = Some(ns_addr.clone());
            cfg.broker_ip1 = ip.to_string();
            let disk = SimDisk::new();
            let (sh, n, c, d) = (shared.clone(), b.name.clone(), cfg.clone(), disk.clone());
            let h = handle
                .create_node()
                .name(&b.name)
                .ip(ip)
                .init(move || {
                    let (sh, n, c, d) = (sh.clone(), n.clone(), c.clone(), d.clone());
                    async move {
                        match BrokerController::start(c, Disk::Sim(d)).await {
                            Ok(b) => {
                                sh.boot_failed.lock().unwrap().remove(&n);
                                sh.note(&n, "boot");
                                let _ = madsim::signal::ctrl_c().await;
                                match b.shutdown().await {
                                    Ok(()) => sh.note(&n, "stopped cleanly"),
                                    Err(e) => sh.note(&n, format!("stopped: {e}")),
                                }
                            }
                            Err(e) => {
                                sh.boot_failed.lock().unwrap().insert(n.clone());
                                sh.note(&n, format!("boot failed: {e}"));
                            }
                        }
                    }
                })
                .build();
            nodes.push(SimNode {
                name: b.name.clone(),
                role: Role::Broker,
                handle: h,
                disk: Some(disk),
                broker: Some(cfg),
            });
        }

        Cluster { sc, shared, nodes, busy: BTreeSet::new(), heal_at: Duration::ZERO }
    }

    /// Producer and consumer nodes (after the topic exists, as an operator would start them).
    fn add_clients(&mut self) {
        let handle = Handle::current();
        let shared = self.shared.clone();
        let ns_addr = self.namesrv_addr();
        let nodes = &mut self.nodes;
        let w = self.sc.workload.clone();
        for i in 0..w.producers as usize {
            let name = format!("producer-{}", i + 1);
            let ip = ip_of(Role::Producer, i);
            let next = Arc::new(AtomicU64::new(0));
            let (sh, n, ns, w) = (shared.clone(), name.clone(), ns_addr.clone(), w.clone());
            let h = handle
                .create_node()
                .name(&name)
                .ip(ip)
                .init(move || {
                    let (sh, n, ns, w, next) = (sh.clone(), n.clone(), ns.clone(), w.clone(), next.clone());
                    async move {
                        let cfg = client_config(&ns, ip, &n);
                        let p = match Producer::start("sim_producer", cfg).await {
                            Ok(p) => p,
                            Err(e) => return sh.note(&n, format!("start failed: {e}")),
                        };
                        let p = p.configure(|p| {
                            p.retry_times_when_send_failed = w.retries;
                            p.send_timeout = w.send_timeout.0;
                        });
                        sleep_until(sh.start + w.start.0).await;
                        let short = n.replace("producer-", "p");
                        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / w.rate as u64));
                        loop {
                            tick.tick().await;
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= w.messages {
                                break;
                            }
                            let id = format!("{short}-{i}");
                            let msg = Message::new(&w.topic, body(&id, w.body)).with_keys(&[&id]);
                            sh.push(&n, Event::Invoke { id: id.clone() });
                            let (p, sh, n) = (p.clone(), sh.clone(), n.clone());
                            tokio::spawn(async move {
                                let ev = match p.send(&msg).await {
                                    Ok(r) => {
                                        if let Some((_, phys)) = decode_offset_msg_id(&r.offset_msg_id) {
                                            sh.positions.lock().unwrap().insert(id.clone(), phys);
                                        }
                                        let status = match r.status {
                                            SendStatus::SendOk => "SEND_OK",
                                            SendStatus::FlushDiskTimeout => "FLUSH_DISK_TIMEOUT",
                                            SendStatus::FlushSlaveTimeout => "FLUSH_SLAVE_TIMEOUT",
                                            SendStatus::SlaveNotAvailable => "SLAVE_NOT_AVAILABLE",
                                        };
                                        Event::Ok {
                                            id,
                                            status: status.into(),
                                            broker: r.queue.broker_name,
                                            queue: r.queue.queue_id,
                                            offset: r.queue_offset as i64,
                                        }
                                    }
                                    Err(e) => Event::Fail { id, timeout: is_timeout(&e), error: canonical_error(&e) },
                                };
                                sh.push(&n, ev);
                            });
                        }
                        std::future::pending::<()>().await;
                    }
                })
                .build();
            nodes.push(SimNode { name, role: Role::Producer, handle: h, disk: None, broker: None });
        }

        for i in 0..w.consumers as usize {
            let name = format!("consumer-{}", i + 1);
            let ip = ip_of(Role::Consumer, i);
            let (sh, n, ns, w) = (shared.clone(), name.clone(), ns_addr.clone(), w.clone());
            let h = handle
                .create_node()
                .name(&name)
                .ip(ip)
                .init(move || {
                    let (sh, n, ns, w) = (sh.clone(), n.clone(), ns.clone(), w.clone());
                    async move {
                        let cfg = client_config(&ns, ip, &n);
                        let (s1, n1) = (sh.clone(), n.clone());
                        let listener: Listener = Arc::new(move |msgs, mq| {
                            for m in msgs {
                                let (id, valid) = parse_body(&m.inner.body);
                                if let Some(id) = id.as_ref().filter(|_| valid) {
                                    s1.seen.lock().unwrap().push(StoredCopy {
                                        id: id.clone(),
                                        broker: mq.broker_name.clone(),
                                        queue: mq.queue_id,
                                        offset: m.queue_offset,
                                        phys: m.phys_offset,
                                        known_ms: s1.now_ms(),
                                    });
                                }
                                s1.push(
                                    &n1,
                                    Event::Deliver {
                                        id,
                                        broker: mq.broker_name.clone(),
                                        queue: mq.queue_id,
                                        offset: m.queue_offset,
                                        valid,
                                    },
                                );
                            }
                            ConsumeResult::Success
                        });
                        let (s2, n2) = (sh.clone(), n.clone());
                        let topic = w.topic.clone();
                        let hook: CommitHook = Arc::new(move |mq, offset| {
                            if mq.topic != topic {
                                return; // the group's retry topic: nothing is sent back in this workload
                            }
                            let key = (n2.clone(), mq.broker_name.clone(), mq.queue_id);
                            if s2.last_commit.lock().unwrap().insert(key, offset) != Some(offset) {
                                s2.push(
                                    &n2,
                                    Event::Commit { broker: mq.broker_name.clone(), queue: mq.queue_id, offset },
                                );
                            }
                        });
                        loop {
                            let started = PushConsumer::builder(&w.group, cfg.clone())
                                .subscribe(&w.topic, "*")
                                .consume_from(ConsumeFromWhere::FirstOffset)
                                .on_commit(hook.clone())
                                .start(listener.clone())
                                .await;
                            match started {
                                Ok(c) => {
                                    sh.note(&n, "boot");
                                    let _ = madsim::signal::ctrl_c().await;
                                    c.shutdown().await;
                                    return sh.note(&n, "stopped");
                                }
                                Err(e) => {
                                    sh.note(&n, format!("start failed: {e}"));
                                    sleep(Duration::from_secs(1)).await;
                                }
                            }
                        }
                    }
                })
                .build();
            nodes.push(SimNode { name, role: Role::Consumer, handle: h, disk: None, broker: None });
        }
    }

    fn namesrv_addr(&self) -> String {
        let ns: Vec<String> =
            (0..self.sc.namesrvs as usize).map(|i| format!("{}:9876", ip_of(Role::Namesrv, i))).collect();
        ns.join(";")
    }

    /// Creates the workload topic on every master (from a setup node), as an operator would.
    async fn create_topic(&self) {
        let handle = Handle::current();
        let ns = self.namesrv_addr();
        let masters: Vec<String> = self
            .nodes
            .iter()
            .filter_map(|n| n.broker.as_ref().filter(|c| c.broker_id == 0).map(|c| c.broker_addr()))
            .collect();
        let w = self.sc.workload.clone();
        let sh = self.shared.clone();
        let admin = handle.create_node().name("admin").ip(IpAddr::V4(Ipv4Addr::new(10, 0, 9, 1))).build();
        admin
            .spawn(async move {
                let a = Admin::new(ClientConfig::new(&ns));
                let tc = TopicConfig {
                    topic_name: w.topic.clone(),
                    read_queue_nums: w.queues,
                    write_queue_nums: w.queues,
                    ..Default::default()
                };
                for m in masters {
                    for _ in 0..10 {
                        if a.create_topic(&m, &tc).await.is_ok() {
                            break;
                        }
                        sleep(Duration::from_millis(200)).await;
                    }
                }
                sh.note(
                    "admin",
                    format!("topic {} created with {} queues per broker", tc.topic_name, tc.write_queue_nums),
                );
                a.shutdown().await;
            })
            .await
            .expect("setup node");
    }

    fn id(&self, name: &str) -> madsim::task::NodeId {
        self.node(name).handle.id()
    }

    /// Applies one fault now; returns how to undo it (None: skipped).
    fn apply(&mut self, f: &Planned) -> Option<Undo> {
        let handle = Handle::current();
        let net = NetSim::current();
        let target = f.target.clone().unwrap_or_default();
        let node_level = matches!(
            f.kind,
            FaultKind::Crash | FaultKind::Kill | FaultKind::PowerLoss | FaultKind::Stop | FaultKind::Pause
        );
        if node_level && !self.busy.insert(target.clone()) {
            self.shared.note("nemesis", format!("{} skipped: {target} is already down", f.describe()));
            return None;
        }
        self.shared.note("nemesis", f.describe());
        Some(match f.kind {
            FaultKind::Crash => {
                handle.kill(self.id(&target));
                self.process_crash(&target);
                Undo::Restart(target)
            }
            FaultKind::Kill => {
                self.note_gone(&target);
                handle.kill(self.id(&target));
                self.process_crash(&target);
                // Never undone: the node stays down (and busy) to the end.
                Undo::Nothing
            }
            FaultKind::PowerLoss => {
                handle.kill(self.id(&target));
                self.power_loss(&target);
                Undo::Restart(target)
            }
            FaultKind::Stop => {
                handle.send_ctrl_c(self.id(&target));
                Undo::Restart(target)
            }
            FaultKind::Pause => {
                handle.pause(self.id(&target));
                Undo::Resume(target)
            }
            FaultKind::Isolate => {
                net.clog_node(self.id(&target));
                Undo::Unisolate(target)
            }
            FaultKind::Clog => {
                let to = f.to.clone().unwrap_or_default();
                net.clog_link(self.id(&target), self.id(&to));
                Undo::Links(vec![(target, to)])
            }
            FaultKind::Partition => {
                let mut links = Vec::new();
                for (i, a) in f.groups.iter().enumerate() {
                    for b in f.groups.iter().skip(i + 1) {
                        for x in a {
                            for y in b {
                                net.clog_link(self.id(x), self.id(y));
                                net.clog_link(self.id(y), self.id(x));
                                links.push((x.clone(), y.clone()));
                                links.push((y.clone(), x.clone()));
                            }
                        }
                    }
                }
                Undo::Links(links)
            }
            FaultKind::Latency => {
                let l = f.latency;
                net.update_config(|c| c.send_latency = l..l * 2);
                Undo::NetConfig
            }
            FaultKind::Loss => {
                let r = f.rate;
                net.update_config(|c| c.packet_loss_rate = r);
                Undo::NetConfig
            }
            FaultKind::DiskStall
            | FaultKind::DiskSlow
            | FaultKind::DiskSlowSync
            | FaultKind::DiskFull
            | FaultKind::DiskEio => {
                let disk = self.node(&target).disk.clone().expect("disk faults target brokers");
                let fault = match f.kind {
                    FaultKind::DiskStall => {
                        SimFault::Stall(self.shared.start + f.duration.map_or(self.heal_at, |d| f.at + d))
                    }
                    FaultKind::DiskSlow => SimFault::Slow(f.latency),
                    FaultKind::DiskSlowSync => SimFault::SlowSync(f.latency),
                    FaultKind::DiskFull => SimFault::Full,
                    _ => SimFault::Eio,
                };
                disk.add_fault(fault);
                Undo::Disk(target, fault)
            }
            FaultKind::BitFlip => {
                let n = self.node(&target);
                let (disk, cfg) = (n.disk.clone().unwrap(), n.broker.clone().unwrap());
                let newest = segments(&disk, &cfg.store.commit_log_dir()).into_iter().rfind(|(_, _, len)| *len > 0);
                if let Some((base, path, len)) = newest {
                    // Record starts first: a flip may hit a size field.
                    let (starts, pos) = record_starts(&disk, &path, len);
                    let mut rng = keel_core::rt::rng();
                    let count = f.count.max(1) as usize;
                    let flipped = disk.flip_bits(&path, len.saturating_sub(64 * 1024)..len, count, &mut rng);
                    let now = self.shared.now_ms();
                    let mut hit = BTreeSet::new();
                    for at in flipped {
                        let i = starts.partition_point(|s| *s <= at);
                        if i > 0 && at < pos {
                            hit.insert(base + starts[i - 1] as u64);
                        }
                    }
                    let list: Vec<String> = hit.iter().map(u64::to_string).collect();
                    self.shared
                        .note("nemesis", format!("{target}: bit flips in commitlog records {}", list.join(", ")));
                    let broker = cfg.broker_name.clone();
                    let mut corrupt = self.shared.corrupt.lock().unwrap();
                    corrupt.extend(hit.into_iter().map(|p| (broker.clone(), target.clone(), p, now)));
                }
                Undo::Nothing
            }
        })
    }

    /// A master killed for good: note how far its slaves had copied its log (the end of the
    /// last whole record each holds); acked messages past that are the loss ASYNC_MASTER
    /// allows, reported message by message once the run is over.
    fn note_gone(&self, target: &str) {
        let Some(cfg) = self.node(target).broker.as_ref().filter(|c| c.broker_role != BrokerRole::Slave) else {
            return;
        };
        let mut slaves = Vec::new();
        let mut replicated_to = 0u64;
        for n in &self.nodes {
            let (Some(sc), Some(disk)) = (&n.broker, &n.disk) else { continue };
            if sc.broker_name != cfg.broker_name || sc.broker_role != BrokerRole::Slave {
                continue;
            }
            slaves.push(n.name.clone());
            for (base, path, written) in segments(disk, &sc.store.commit_log_dir()) {
                let (starts, end) = record_starts(disk, &path, written);
                let whole = if end <= written { end } else { starts.last().copied().unwrap_or(0) };
                if whole > 0 {
                    replicated_to = replicated_to.max(base + whole as u64);
                }
            }
        }
        let t = self.shared.now_ms();
        self.shared
            .note("nemesis", format!("{target} is gone for good; its slaves hold its commitlog up to {replicated_to}"));
        self.shared.gone.lock().unwrap().push(Gone {
            broker: cfg.broker_name.clone(),
            node: target.to_string(),
            at_ms: t,
            slaves,
            replicated_to,
        });
    }

    /// A node's process died (killed): on a SYNC_FLUSH broker the appends it held since its
    /// last sync are gone with it (`SimDisk::crash`). Where they started is noted like a
    /// power loss's unsynced point, so stored copies there free their queue offsets; none of
    /// them was answered SEND_OK.
    fn process_crash(&self, target: &str) {
        let node = self.node(target);
        let Some(disk) = &node.disk else { return };
        if let Some(cfg) = &node.broker {
            let held = segments(disk, &cfg.store.commit_log_dir())
                .into_iter()
                .filter_map(|(base, path, _)| disk.crash_loses_from(&path).map(|p| base + p as u64))
                .min();
            if let Some(lost_from) = held {
                self.shared.losses.lock().unwrap().push(PowerLoss {
                    broker: cfg.broker_name.clone(),
                    node: target.to_string(),
                    at_ms: self.shared.now_ms(),
                    restart_ms: None,
                    lost_from,
                    crash: true,
                });
                self.shared
                    .note("nemesis", format!("{target}: commitlog appends from {lost_from} not yet synced, lost"));
            }
        }
        disk.crash();
    }

    /// Power loss on a broker: before the unsynced bytes go, note where the commitlog stops
    /// being durable (at a record boundary). Acked messages from there on are the loss that
    /// ASYNC_FLUSH allows; they are reported message by message once the run is over (an
    /// answer still in flight at the loss arrives after it).
    fn power_loss(&self, target: &str) {
        let node = self.node(target);
        let Some(disk) = &node.disk else { return };
        if let Some(cfg) = &node.broker {
            let mut lost_from = u64::MAX;
            for (base, path, written) in segments(disk, &cfg.store.commit_log_dir()) {
                // The first byte a power loss would take.
                let mut lo = 0usize;
                let mut hi = written;
                if disk.is_durable(&path, 0..written) {
                    continue;
                }
                while lo < hi {
                    let mid = lo + (hi - lo) / 2;
                    if disk.is_durable(&path, 0..mid + 1) {
                        lo = mid + 1;
                    } else {
                        hi = mid;
                    }
                }
                // Back to the start of the record that byte belongs to.
                let (starts, end) = record_starts(disk, &path, lo);
                let pos = if end <= lo { end } else { starts.last().copied().unwrap_or(0) };
                lost_from = base + pos as u64;
                break;
            }
            let t = self.shared.now_ms();
            self.shared.losses.lock().unwrap().push(PowerLoss {
                broker: cfg.broker_name.clone(),
                node: target.to_string(),
                at_ms: t,
                restart_ms: None,
                lost_from,
                crash: false,
            });
            let what = if lost_from == u64::MAX {
                "everything was synced".to_string()
            } else {
                format!("commitlog unsynced from {lost_from}")
            };
            self.shared.note("nemesis", format!("{target}: {what}"));
        }
        let mut rng = keel_core::rt::rng();
        disk.power_loss(&mut rng, true);
    }

    fn undo(&mut self, u: Undo) {
        let handle = Handle::current();
        let net = NetSim::current();
        match u {
            Undo::Restart(n) => {
                self.busy.remove(&n);
                // A stop still draining dies here: a crash like any other.
                handle.kill(self.id(&n));
                self.process_crash(&n);
                let now = self.shared.now_ms();
                for l in self.shared.losses.lock().unwrap().iter_mut().filter(|l| l.node == n && l.restart_ms.is_none())
                {
                    l.restart_ms = Some(now);
                }
                self.shared.note("nemesis", format!("restart {n}"));
                restart_process(self.id(&n));
            }
            Undo::Resume(n) => {
                self.busy.remove(&n);
                self.shared.note("nemesis", format!("resume {n}"));
                handle.resume(self.id(&n));
            }
            Undo::Links(links) => {
                for (a, b) in &links {
                    net.unclog_link(self.id(a), self.id(b));
                }
                self.shared.note("nemesis", "heal links");
            }
            Undo::Unisolate(n) => {
                net.unclog_node(self.id(&n));
                self.shared.note("nemesis", format!("heal {n}"));
            }
            Undo::NetConfig => {
                let d = madsim::net::Config::default();
                net.update_config(|c| *c = d);
                self.shared.note("nemesis", "network back to normal");
            }
            Undo::Disk(n, fault) => {
                if let Some(d) = &self.node(&n).disk {
                    d.remove_fault(fault);
                }
                self.shared.note("nemesis", format!("disk fault on {n} over"));
            }
            Undo::Nothing => {}
        }
    }

    /// The faults of the run: the scenario's, plus what the nemesis draws from the seed.
    fn plan(&self) -> Vec<Planned> {
        let mut plan: Vec<Planned> = self
            .sc
            .faults
            .iter()
            .map(|f| Planned {
                at: f.at.0,
                kind: f.kind,
                target: f.target.as_ref().map(|t| t.get_ref().clone()),
                to: f.to.as_ref().map(|t| t.get_ref().clone()),
                groups: f.groups.iter().map(|g| g.iter().map(|s| s.get_ref().clone()).collect()).collect(),
                duration: f.duration.map(|d| d.0),
                latency: f.latency.map_or(Duration::ZERO, |d| d.0),
                rate: f.rate.unwrap_or(0.0),
                count: f.count.unwrap_or(1),
            })
            .collect();
        if let Some(n) = &self.sc.nemesis {
            let mut rng = keel_core::rt::rng();
            let brokers: Vec<String> =
                self.nodes.iter().filter(|x| x.role == Role::Broker).map(|x| x.name.clone()).collect();
            let targets: Vec<String> = if n.targets.is_empty() {
                brokers.clone()
            } else {
                n.targets.iter().map(|t| t.get_ref().clone()).collect()
            };
            for _ in 0..n.count {
                let kind = n.kinds[rng.gen_range(0..n.kinds.len())];
                let pool: Vec<&String> = targets.iter().filter(|t| !kind.is_disk() || brokers.contains(t)).collect();
                let target =
                    (kind.needs_target() && !pool.is_empty()).then(|| pool[rng.gen_range(0..pool.len())].clone());
                if kind.needs_target() && target.is_none() {
                    continue;
                }
                let at =
                    Duration::from_millis(rng.gen_range(n.from.0.as_millis() as u64..n.until.0.as_millis() as u64));
                let d = rng.gen_range(n.min_duration.0.as_millis() as u64..=n.max_duration.0.as_millis() as u64);
                plan.push(Planned {
                    at,
                    kind,
                    target,
                    to: None,
                    groups: Vec::new(),
                    duration: Some(Duration::from_millis(d)),
                    latency: Duration::from_millis(rng.gen_range(20..400)),
                    rate: rng.gen_range(0.05..0.3),
                    count: 1,
                });
            }
        }
        plan.sort_by_key(|p| p.at);
        plan
    }

    /// Every SEND_OK message that can still be delivered has been, and every send is in.
    fn drained(&self) -> bool {
        self.shared.mark_explained_losses();
        let h = self.shared.history.lock().unwrap();
        let mut open: BTreeSet<&str> = BTreeSet::new();
        let mut delivered: BTreeSet<&str> = BTreeSet::new();
        let mut invoked = 0u64;
        // Sends still waiting for their answer: one to a broker paused until the heal is
        // answered after it (SEND_OK included), and must be delivered like any other.
        let mut waiting: BTreeSet<&str> = BTreeSet::new();
        for r in &h.records {
            match &r.event {
                Event::Invoke { id } => {
                    invoked += 1;
                    waiting.insert(id);
                }
                Event::Fail { id, .. } => {
                    waiting.remove(id.as_str());
                }
                Event::Ok { id, status, .. } => {
                    waiting.remove(id.as_str());
                    if status == "SEND_OK"
                        && !h.unsynced.contains_key(id)
                        && !h.unreplicated.contains_key(id)
                        && !h.corrupt.contains_key(id)
                    {
                        open.insert(id);
                    }
                }
                Event::Deliver { id: Some(id), .. } => {
                    delivered.insert(id);
                }
                _ => {}
            }
        }
        let w = &self.sc.workload;
        invoked >= w.messages * w.producers as u64 && waiting.is_empty() && open.iter().all(|id| delivered.contains(id))
    }
}

fn canonical_error(e: &ClientError) -> String {
    // No addresses or ports in the log: only the kind of failure and the broker's code.
    match e {
        ClientError::Remoting(RemotingError::Timeout(..)) => "timeout".into(),
        ClientError::Remoting(RemotingError::Connect(..)) => "connect-failed".into(),
        ClientError::Remoting(RemotingError::Closed(..)) => "connection-closed".into(),
        ClientError::Broker { code, .. } => format!("broker-code-{code}"),
        ClientError::NoRoute(_) => "no-route".into(),
        ClientError::NoNameServer => "no-name-server".into(),
        ClientError::Other(s) => s.split(':').next().unwrap_or("other").replace(' ', "-"),
    }
}

/// Runs a scenario in the current madsim runtime.
pub async fn run(sc: Scenario) -> Outcome {
    let liveness = sc.liveness.0;
    let workload_end = sc.workload_end();
    let mut c = Cluster::build(sc);
    let start = c.shared.start;
    sleep(Duration::from_millis(500)).await;
    c.create_topic().await;
    c.add_clients();

    let plan = c.plan();
    let mut heal_at = workload_end;
    for f in &plan {
        heal_at = heal_at.max(f.at + f.duration.unwrap_or(Duration::ZERO));
    }
    c.heal_at = heal_at;
    // Faults start in order; each is undone at its end, or at the heal.
    let mut pending: Vec<(Duration, Undo)> = Vec::new();
    let mut windows = Vec::new();
    for f in &plan {
        loop {
            pending.sort_by_key(|(t, _)| *t);
            match pending.first() {
                Some((t, _)) if *t <= f.at => {
                    sleep_until(start + *t).await;
                    let (_, u) = pending.remove(0);
                    c.undo(u);
                }
                _ => break,
            }
        }
        sleep_until(start + f.at).await;
        if let Some(u) = c.apply(f) {
            let end = f.duration.map_or(heal_at, |d| f.at + d);
            windows.push((f.at.as_millis() as u64, end.as_millis() as u64));
            pending.push((end, u));
        }
    }
    pending.sort_by_key(|(t, _)| *t);
    for (t, u) in pending.drain(..) {
        sleep_until(start + t).await;
        c.undo(u);
    }
    sleep_until(start + heal_at).await;
    // Heal: brokers whose boot failed (a disk fault at boot) are started again.
    let failed: Vec<String> = c.shared.boot_failed.lock().unwrap().iter().cloned().collect();
    for n in failed {
        c.shared.note("nemesis", format!("restart {n} (its boot failed)"));
        restart_process(c.id(&n));
    }
    let healed = c.shared.now_ms();
    c.shared.note("nemesis", "healed");
    {
        let mut h = c.shared.history.lock().unwrap();
        h.healed_ms = healed;
        h.fault_windows = windows;
    }
    // Drain: wait until every acked message is delivered, or twice the liveness bound.
    let deadline = start + Duration::from_millis(healed) + liveness * 2;
    while !c.drained() && Instant::now() < deadline {
        sleep(Duration::from_millis(250)).await;
    }
    // A little longer, so late redeliveries show up.
    sleep(Duration::from_secs(2)).await;
    let sim_ms = c.shared.now_ms();
    c.shared.note("nemesis", "end");
    c.shared.mark_explained_losses();
    let history = c.shared.history.lock().unwrap().clone();
    let report = check(&history, liveness.as_millis() as u64);
    let violations = report.violations(&c.sc.expect);
    let log = history.render();
    // madsim frees a task only when it runs again or ends, and its runtime cancels nothing
    // when it is dropped: tasks still waiting at the end (a broker's accept loop, a parked
    // pull) would stay in memory with everything they hold, ~2.3 MB per run, which a sweep
    // of thousands of seeds ran out of memory on. Killing every node wakes its tasks, and
    // the pause lets the executor drop them. Disks are wiped too (a client may hold one).
    let handle = Handle::current();
    for n in &c.nodes {
        handle.kill(n.handle.id());
    }
    sleep(Duration::from_millis(1)).await;
    for n in &c.nodes {
        if let Some(d) = &n.disk {
            d.wipe();
        }
    }
    Outcome { history, report, violations, log, sim_ms }
}
