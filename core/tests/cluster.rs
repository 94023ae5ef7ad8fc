//! A name server and two masters on real tokio over 127.0.0.1, in one process: producers,
//! a consumer group, rebalance, a broker restart, route expiry, the store lock.

mod common;

use keel_core::broker::BrokerController;
use keel_core::client::{
    Admin, ClientConfig, ConsumeFromWhere, ConsumeResult, Message, Producer, PushConsumer, SendStatus,
};
use keel_core::config::broker::BrokerConfig;
use keel_core::namesrv::{NameServer, NamesrvConfig};
use keel_core::protocol::body::{MessageQueue, RegisterBrokerBody};
use keel_core::protocol::code::{request, response};
use keel_core::protocol::RemotingCommand;
use keel_core::remoting::RemotingClient;
use keel_core::rt::disk::Disk;
use keel_core::store::meta::TopicConfig;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn broker_config(name: &str, namesrv: &str, root: &Path, port: u16) -> BrokerConfig {
    let mut cfg = BrokerConfig {
        broker_name: name.into(),
        namesrv_addr: Some(namesrv.into()),
        listen_port: port,
        ..Default::default()
    };
    cfg.store = common::small_config(root);
    cfg.store.mapped_file_size_commit_log = 4 * 1024 * 1024;
    cfg.store.mapped_file_size_consume_queue = 20 * 30_000;
    cfg.store.flush_interval_commit_log_ms = 500;
    cfg
}

/// Polls `cond` every 50 ms until it holds or `limit` passes; the condition, not the delay,
/// is what the test waits for.
async fn wait_until<F, Fut>(what: &str, limit: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while !cond().await {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

type Deliveries = Arc<Mutex<Vec<(String, String, Option<String>, MessageQueue)>>>;

async fn consumer(namesrv: &str, deliveries: &Deliveries, who: &str) -> Arc<PushConsumer> {
    let d = deliveries.clone();
    let who = who.to_string();
    PushConsumer::builder("CG", ClientConfig::new(namesrv))
        .subscribe("TopicTest", "TagA || TagB")
        .consume_from(ConsumeFromWhere::FirstOffset)
        .start(Arc::new(move |msgs, mq| {
            let mut d = d.lock().unwrap();
            for m in msgs {
                let key = m.property("UNIQ_KEY").unwrap_or_default().to_string();
                d.push((key, who.clone(), m.property("TAGS").map(String::from), mq.clone()));
            }
            ConsumeResult::Success
        }))
        .await
        .unwrap()
}

/// Sends `n` messages from 16 concurrent senders; returns (uniq key, tag) of the acked ones.
async fn send_many(p: &Arc<Producer>, from: usize, n: usize) -> Vec<(String, String)> {
    let tags = ["TagA", "TagB", "TagC"];
    let per = n.div_ceil(16);
    let mut handles = Vec::new();
    for s in 0..16 {
        let p = p.clone();
        handles.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in (from + s * per)..(from + ((s + 1) * per).min(n)) {
                let tag = tags[i % 3];
                let msg = Message::new("TopicTest", format!("body-{i}")).with_tags(tag).with_keys(&[&format!("k{i}")]);
                let r = p.send(&msg).await.expect("send");
                assert_eq!(r.status, SendStatus::SendOk);
                acked.push((r.msg_id, tag.to_string()));
            }
            acked
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    all
}

/// Every acked TagA/TagB message delivered exactly once; no TagC delivered.
fn check_exactly_once(acked: &[(String, String)], deliveries: &Deliveries) {
    let d = deliveries.lock().unwrap();
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (k, _, tag, _) in d.iter() {
        assert_ne!(tag.as_deref(), Some("TagC"), "TagC was filtered out by the subscription");
        *seen.entry(k.as_str()).or_default() += 1;
    }
    let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "duplicates: {:?}", &dups[..dups.len().min(5)]);
    let lost: Vec<_> = acked.iter().filter(|(k, t)| t != "TagC" && !seen.contains_key(k.as_str())).collect();
    assert!(lost.is_empty(), "{} acked messages never delivered, e.g. {:?}", lost.len(), &lost[..lost.len().min(5)]);
    let expected = acked.iter().filter(|(_, t)| t != "TagC").count();
    assert_eq!(seen.len(), expected, "deliveries of messages never acked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_masters_one_group_rebalance_and_restart() {
    common::init_logs();
    let ns =
        NameServer::start(NamesrvConfig { listen_addr: "127.0.0.1:0".into(), ..Default::default() }).await.unwrap();
    let nsaddr = ns.local_addr().to_string();
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let a = BrokerController::start(broker_config("broker-a", &nsaddr, dir_a.path(), 0), Disk::Real).await.unwrap();
    let b = BrokerController::start(broker_config("broker-b", &nsaddr, dir_b.path(), 0), Disk::Real).await.unwrap();
    let b_addr = b.addr().to_string();
    let b_port: u16 = b_addr.rsplit(':').next().unwrap().parse().unwrap();

    let admin = Admin::new(ClientConfig::new(&nsaddr));
    for addr in [a.addr(), b.addr()] {
        let tc = TopicConfig {
            topic_name: "TopicTest".into(),
            read_queue_nums: 8,
            write_queue_nums: 8,
            ..Default::default()
        };
        admin.create_topic(addr, &tc).await.unwrap();
    }
    wait_until("the topic on both brokers in the route", Duration::from_secs(10), || async {
        admin.topic_route("TopicTest").await.is_ok_and(|r| r.queue_datas.len() == 2)
    })
    .await;
    let info = admin.cluster_info().await.unwrap();
    assert_eq!(
        info.cluster_addr_table["DefaultCluster"],
        BTreeSet::from(["broker-a".to_string(), "broker-b".to_string()])
    );

    let deliveries: Deliveries = Arc::default();
    let c1 = consumer(&nsaddr, &deliveries, "c1").await;
    let c2 = consumer(&nsaddr, &deliveries, "c2").await;
    let topic_queues = |v: Vec<MessageQueue>| v.into_iter().filter(|q| q.topic == "TopicTest").count();
    wait_until("the group to split 16 queues 8/8", Duration::from_secs(20), || async {
        topic_queues(c1.assignment().await) == 8 && topic_queues(c2.assignment().await) == 8
    })
    .await;

    let producer = Producer::start("PG", ClientConfig::new(&nsaddr)).await.unwrap();
    let mut acked = send_many(&producer, 0, 10_000).await;
    assert_eq!(acked.len(), 10_000);
    let expected = |acked: &Vec<(String, String)>| acked.iter().filter(|(_, t)| t != "TagC").count();
    let want = expected(&acked);
    wait_until("every TagA/TagB message delivered", Duration::from_secs(60), || async {
        deliveries.lock().unwrap().len() >= want
    })
    .await;
    check_exactly_once(&acked, &deliveries);
    {
        let d = deliveries.lock().unwrap();
        let by: BTreeSet<&str> = d.iter().map(|(_, who, _, _)| who.as_str()).collect();
        assert_eq!(by.len(), 2, "both consumers consumed");
        // Messages went to both brokers.
        let brokers: BTreeSet<&str> = d.iter().map(|(_, _, _, q)| q.broker_name.as_str()).collect();
        assert_eq!(brokers.len(), 2);
    }

    // Stop one consumer: the other takes all 16 queues and nothing is lost or repeated.
    c2.shutdown().await;
    wait_until("c1 to own all 16 queues", Duration::from_secs(20), || async {
        topic_queues(c1.assignment().await) == 16
    })
    .await;
    acked.extend(send_many(&producer, 10_000, 2_000).await);
    let want = expected(&acked);
    wait_until("deliveries after the rebalance", Duration::from_secs(30), || async {
        deliveries.lock().unwrap().len() >= want
    })
    .await;
    check_exactly_once(&acked, &deliveries);

    // Restart broker-b: committed offsets survive, consumers resume from them.
    let committed_before: i64 = {
        let mut sum = 0;
        for q in 0..8 {
            let mq = MessageQueue { topic: "TopicTest".into(), broker_name: "broker-b".into(), queue_id: q };
            wait_until("offsets committed on broker-b", Duration::from_secs(15), || async {
                let max = admin.topic_stats(&b_addr, "TopicTest").await.unwrap()[&mq].max_offset;
                admin.query_consumer_offset(&b_addr, "CG", &mq).await.is_ok_and(|o| o == max)
            })
            .await;
            sum += admin.query_consumer_offset(&b_addr, "CG", &mq).await.unwrap();
        }
        sum
    };
    assert!(committed_before > 0);
    // The restart binds the same ports, the HA port included: listenPort + 1 would be
    // whatever port happened to be free then, maybe not.
    let mut again = broker_config("broker-b", &nsaddr, dir_b.path(), b_port);
    again.ha_listen_port = b.config().ha_listen_port;
    b.shutdown().await.unwrap();
    let b = BrokerController::start(again, Disk::Real).await.unwrap();
    let mut committed_after = 0;
    for q in 0..8 {
        let mq = MessageQueue { topic: "TopicTest".into(), broker_name: "broker-b".into(), queue_id: q };
        committed_after += admin.query_consumer_offset(&b_addr, "CG", &mq).await.unwrap();
    }
    assert_eq!(committed_after, committed_before, "offsets persisted across the restart");
    acked.extend(send_many(&producer, 12_000, 1_000).await);
    let want = expected(&acked);
    wait_until("deliveries after the broker restart", Duration::from_secs(60), || async {
        deliveries.lock().unwrap().len() >= want
    })
    .await;
    check_exactly_once(&acked, &deliveries);

    c1.shutdown().await;
    producer.shutdown().await;
    admin.shutdown().await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    ns.shutdown().await;
}

#[tokio::test]
async fn a_broker_that_stops_registering_disappears_from_routes() {
    let ns = NameServer::start(NamesrvConfig {
        listen_addr: "127.0.0.1:0".into(),
        scan_interval: Duration::from_millis(100),
        broker_expire: Duration::from_millis(600),
    })
    .await
    .unwrap();
    let nsaddr = ns.local_addr().to_string();
    // A broker that registers once and then stays silent on an open connection.
    let client = RemotingClient::new();
    let mut body = RegisterBrokerBody::default();
    body.topic_config_serialize_wrapper.topic_config_table.insert(
        "Silent".into(),
        TopicConfig { topic_name: "Silent".into(), read_queue_nums: 4, write_queue_nums: 4, ..Default::default() },
    );
    let header = keel_core::namesrv::broker_header("DefaultCluster", "broker-s", "127.0.0.1:1", 0);
    let reg =
        RemotingCommand::request(request::REGISTER_BROKER, header).with_body(keel_core::protocol::body::encode(&body));
    let r = client.invoke(&nsaddr, reg, Duration::from_secs(3)).await.unwrap();
    assert_eq!(r.code, response::SUCCESS);
    let admin = Admin::new(ClientConfig::new(&nsaddr));
    assert_eq!(admin.topic_route("Silent").await.unwrap().queue_datas[0].write_queue_nums, 4);
    wait_until("the silent broker to expire", Duration::from_secs(10), || async {
        admin.topic_route("Silent").await.is_err()
    })
    .await;
    assert!(admin.cluster_info().await.unwrap().broker_addr_table.is_empty());

    // A broker whose connection closes is removed at once.
    let client2 = RemotingClient::new();
    let header = keel_core::namesrv::broker_header("DefaultCluster", "broker-c", "127.0.0.1:2", 0);
    let reg =
        RemotingCommand::request(request::REGISTER_BROKER, header).with_body(keel_core::protocol::body::encode(&body));
    client2.invoke(&nsaddr, reg, Duration::from_secs(3)).await.unwrap();
    assert!(admin.topic_route("Silent").await.is_ok());
    client2.close_all();
    wait_until("the closed broker to be removed", Duration::from_millis(500), || async {
        admin.topic_route("Silent").await.is_err()
    })
    .await;
    ns.shutdown().await;
}

#[tokio::test]
async fn a_second_broker_on_the_same_store_fails_with_the_lock_message() {
    let dir = tempfile::tempdir().unwrap();
    let first =
        BrokerController::start(broker_config("broker-a", "127.0.0.1:1", dir.path(), 0), Disk::Real).await.unwrap();
    let err = match BrokerController::start(broker_config("broker-a", "127.0.0.1:1", dir.path(), 0), Disk::Real).await {
        Ok(_) => panic!("a second broker opened a store in use"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("Lock failed, MQ already started"), "{err}");
    assert!(err.contains(&dir.path().display().to_string()), "{err}");
    first.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_topic_is_in_the_route_when_the_create_answers() {
    let ns =
        NameServer::start(NamesrvConfig { listen_addr: "127.0.0.1:0".into(), ..Default::default() }).await.unwrap();
    let nsaddr = ns.local_addr().to_string();
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerController::start(broker_config("broker-a", &nsaddr, dir.path(), 0), Disk::Real).await.unwrap();
    let admin = Admin::new(ClientConfig::new(&nsaddr));
    // A new topic, then new queue numbers for it, over and over. Right after each answer the
    // name server routes what was asked, so a producer does not fall back to the default
    // route (4 queues here) and send to queues the topic does not have.
    for queues in [1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 3] {
        let tc = TopicConfig {
            topic_name: "TopicNow".into(),
            read_queue_nums: queues,
            write_queue_nums: queues,
            ..Default::default()
        };
        admin.create_topic(broker.addr(), &tc).await.unwrap();
        let route = admin.topic_route("TopicNow").await.unwrap();
        assert_eq!(route.queue_datas.len(), 1);
        assert_eq!(route.queue_datas[0].write_queue_nums, queues);
    }
    let producer = Producer::start("PG", ClientConfig::new(&nsaddr)).await.unwrap();
    for i in 0..6 {
        let r = producer.send(&Message::new("TopicNow", format!("m{i}"))).await.unwrap();
        assert_eq!(r.status, SendStatus::SendOk);
        assert!(r.queue.queue_id < 3, "sent to queue {}", r.queue.queue_id);
    }
    producer.shutdown().await;
    broker.shutdown().await.unwrap();
    ns.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasting_async_and_oneway_sends_and_name_server_fail_over() {
    let ns =
        NameServer::start(NamesrvConfig { listen_addr: "127.0.0.1:0".into(), ..Default::default() }).await.unwrap();
    // A dead name server first in the list: clients must rotate past it.
    let nsaddr = format!("127.0.0.1:1;{}", ns.local_addr());
    let dir = tempfile::tempdir().unwrap();
    let broker =
        BrokerController::start(broker_config("broker-a", &ns.local_addr().to_string(), dir.path(), 0), Disk::Real)
            .await
            .unwrap();
    let admin = Admin::new(ClientConfig::new(&nsaddr));
    let tc = TopicConfig { topic_name: "Bcast".into(), read_queue_nums: 4, write_queue_nums: 4, ..Default::default() };
    admin.create_topic(broker.addr(), &tc).await.unwrap();
    wait_until("the topic in the route", Duration::from_secs(10), || async {
        admin.topic_route("Bcast").await.is_ok()
    })
    .await;

    let offsets = tempfile::tempdir().unwrap();
    let mut consumers = Vec::new();
    let mut seen: Vec<Arc<Mutex<Vec<String>>>> = Vec::new();
    for _ in 0..2 {
        let got: Arc<Mutex<Vec<String>>> = Arc::default();
        let g = got.clone();
        let mut cfg = ClientConfig::new(&nsaddr);
        cfg.offset_store_dir = offsets.path().to_path_buf();
        let c = PushConsumer::builder("BG", cfg)
            .subscribe("Bcast", "*")
            .message_model(keel_core::client::MessageModel::Broadcasting)
            .consume_from(ConsumeFromWhere::FirstOffset)
            .start(Arc::new(move |msgs, _| {
                g.lock().unwrap().extend(msgs.iter().map(|m| String::from_utf8_lossy(&m.inner.body).to_string()));
                ConsumeResult::Success
            }))
            .await
            .unwrap();
        assert_eq!(c.assignment().await.len(), 4, "a broadcasting consumer takes every queue");
        consumers.push(c);
        seen.push(got);
    }
    let producer = Producer::start("PG", ClientConfig::new(&nsaddr)).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..100 {
        let tx = tx.clone();
        producer.send_async(Message::new("Bcast", format!("async-{i}")), move |r| {
            let _ = tx.send(r.map(|r| r.status));
        });
    }
    for _ in 0..100 {
        assert_eq!(rx.recv().await.unwrap().unwrap(), SendStatus::SendOk);
    }
    for i in 0..20 {
        producer.send_oneway(&Message::new("Bcast", format!("oneway-{i}"))).await.unwrap();
    }
    for got in &seen {
        wait_until("every consumer to get all 120 messages", Duration::from_secs(30), || async {
            got.lock().unwrap().len() >= 120
        })
        .await;
        let set: BTreeSet<String> = got.lock().unwrap().iter().cloned().collect();
        assert_eq!(set.len(), 120);
        assert!(set.contains("async-99") && set.contains("oneway-19"));
    }
    for c in &consumers {
        c.shutdown().await;
    }
    // Broadcasting offsets live on the client's disk, one file per consumer.
    let files = walk(offsets.path());
    assert_eq!(files.iter().filter(|f| f.ends_with("offsets.json")).count(), 2, "{files:?}");
    producer.shutdown().await;
    broker.shutdown().await.unwrap();
    ns.shutdown().await;
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}

/// A name server and broker-a on a simulated disk whose log never becomes durable (a power
/// loss takes every message), with a one-queue topic in the route. `cfg` is the broker's
/// config with the ports it took, for restarts.
struct LostTail {
    ns: NameServer,
    nsaddr: String,
    disk: keel_core::rt::disk::SimDisk,
    broker: BrokerController,
    cfg: BrokerConfig,
    admin: Admin,
}

async fn lost_tail_broker(topic: &str, tweak: impl FnOnce(&mut BrokerConfig)) -> LostTail {
    common::init_logs();
    let ns =
        NameServer::start(NamesrvConfig { listen_addr: "127.0.0.1:0".into(), ..Default::default() }).await.unwrap();
    let nsaddr = ns.local_addr().to_string();
    let disk = keel_core::rt::disk::SimDisk::new();
    let mut cfg = broker_config("broker-a", &nsaddr, Path::new("/s"), 0);
    cfg.store.flush_interval_commit_log_ms = 3_600_000; // the log never becomes durable
    tweak(&mut cfg);
    let broker = BrokerController::start(cfg, Disk::Sim(disk.clone())).await.unwrap();
    let cfg = broker.config().clone();
    let admin = Admin::new(ClientConfig::new(&nsaddr));
    let tc = TopicConfig { topic_name: topic.into(), read_queue_nums: 1, write_queue_nums: 1, ..Default::default() };
    admin.create_topic(broker.addr(), &tc).await.unwrap();
    wait_until("the topic in the route", Duration::from_secs(10), || async { admin.topic_route(topic).await.is_ok() })
        .await;
    LostTail { ns, nsaddr, disk, broker, cfg, admin }
}

/// An ASYNC_FLUSH master loses power after it wrote a consumer's offsets but before the log
/// they count was synced. Before a new message takes one of the lost offsets, the committed
/// offset is moved back to the queue's recovered end and written out, so a consumer resuming
/// from it after a later clean restart reads the new messages instead of skipping them. A
/// commit past the end at an offset the broker never handed out is kept at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_committed_past_a_lost_tail_move_back_before_new_messages_take_those_offsets() {
    let LostTail { ns, nsaddr, disk, broker: a, cfg, admin } =
        lost_tail_broker("Lost", |cfg| cfg.flush_consumer_offset_interval_ms = 100).await;
    let producer = Producer::start("PG", ClientConfig::new(&nsaddr)).await.unwrap();
    for i in 0..5 {
        producer.send(&Message::new("Lost", format!("old {i}"))).await.unwrap();
    }
    let mq = MessageQueue { topic: "Lost".into(), broker_name: "broker-a".into(), queue_id: 0 };
    let commit = |offset: i64| {
        let ext = keel_core::protocol::ExtFields::from([
            ("consumerGroup".to_string(), "CG".to_string()),
            ("topic".to_string(), "Lost".to_string()),
            ("queueId".to_string(), "0".to_string()),
            ("commitOffset".to_string(), offset.to_string()),
        ]);
        RemotingCommand::request(request::UPDATE_CONSUMER_OFFSET, ext)
    };
    assert_eq!(admin.broker(a.addr(), commit(5)).await.unwrap().code, response::SUCCESS);
    let offsets_file = keel_core::store::meta::config_dir(Path::new("/s")).join("consumerOffset.json");
    wait_until("the committed offset written out", Duration::from_secs(10), || async {
        let file = disk.read_file(&offsets_file).await.unwrap().unwrap_or_default();
        String::from_utf8_lossy(&file).contains("Lost@CG")
    })
    .await;
    a.crash().await;
    disk.power_loss(&mut <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(1), false);

    let a = BrokerController::start(cfg.clone(), Disk::Sim(disk.clone())).await.unwrap();
    assert_eq!(admin.query_consumer_offset(a.addr(), "CG", &mq).await.unwrap(), 5, "nothing moves before a put");
    for i in 0..2u64 {
        let r = producer.send(&Message::new("Lost", format!("new {i}"))).await.unwrap();
        assert_eq!(r.queue_offset, i, "the lost offsets are given again");
    }
    assert_eq!(admin.query_consumer_offset(a.addr(), "CG", &mq).await.unwrap(), 0, "moved back before the put");
    // A consumer that read the lost messages commits their end: kept at the recovered end.
    assert_eq!(admin.broker(a.addr(), commit(5)).await.unwrap().code, response::SUCCESS);
    assert_eq!(admin.query_consumer_offset(a.addr(), "CG", &mq).await.unwrap(), 0);

    a.shutdown().await.unwrap();
    let a = BrokerController::start(cfg, Disk::Sim(disk.clone())).await.unwrap();
    assert_eq!(admin.query_consumer_offset(a.addr(), "CG", &mq).await.unwrap(), 0, "the move back was written");
    let stats = admin.topic_stats(a.addr(), "Lost").await.unwrap();
    assert_eq!(stats[&mq].max_offset, 2, "the new messages are there to read from it");
    producer.shutdown().await;
    a.shutdown().await.unwrap();
    ns.shutdown().await;
}

/// BROADCASTING after a power loss that cost the log its tail: every client of the group reads
/// every queue at offsets of its own (kept on its disk), so a client coming back past the
/// recovered end must be moved back even when another client of the group has since been
/// handed offsets that far; otherwise it skips the new messages that took the lost offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcasting_client_past_a_lost_tail_is_moved_back_though_another_read_that_far() {
    let LostTail { ns, nsaddr, disk, broker: a, cfg, admin: _admin } = lost_tail_broker("LostB", |_| {}).await;
    let offsets = tempfile::tempdir().unwrap();
    let consumer = |name: &str, got: Arc<Mutex<Vec<String>>>| {
        let mut c = ClientConfig::new(&nsaddr);
        c.offset_store_dir = offsets.path().to_path_buf();
        c.instance_name = Some(name.to_string());
        PushConsumer::builder("BLG", c)
            .subscribe("LostB", "*")
            .message_model(keel_core::client::MessageModel::Broadcasting)
            .consume_from(ConsumeFromWhere::FirstOffset)
            .start(Arc::new(move |msgs, _| {
                got.lock().unwrap().extend(msgs.iter().map(|m| String::from_utf8_lossy(&m.inner.body).to_string()));
                ConsumeResult::Success
            }))
    };
    let producer = Producer::start("PG", ClientConfig::new(&nsaddr)).await.unwrap();
    for i in 0..5 {
        producer.send(&Message::new("LostB", format!("old {i}"))).await.unwrap();
    }
    // B reads the five messages the power loss will take, and keeps offset 5 on its disk.
    let got_b: Arc<Mutex<Vec<String>>> = Arc::default();
    let b = consumer("B", got_b.clone()).await.unwrap();
    wait_until("B to read the old messages", Duration::from_secs(30), || async { got_b.lock().unwrap().len() >= 5 })
        .await;
    b.shutdown().await;
    a.crash().await;
    disk.power_loss(&mut <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(1), false);

    let a = BrokerController::start(cfg, Disk::Sim(disk.clone())).await.unwrap();
    for i in 0..5u64 {
        let r = producer.send(&Message::new("LostB", format!("new {i}"))).await.unwrap();
        assert_eq!(r.queue_offset, i, "the lost offsets are given again");
    }
    // A, new to the group, reads the new messages: the broker hands the group offsets to 5.
    let got_a: Arc<Mutex<Vec<String>>> = Arc::default();
    let a_client = consumer("A", got_a.clone()).await.unwrap();
    wait_until("A to read the new messages", Duration::from_secs(30), || async { got_a.lock().unwrap().len() >= 5 })
        .await;
    // B comes back at offset 5, which the broker never handed B since the crash.
    got_b.lock().unwrap().clear();
    let b = consumer("B", got_b.clone()).await.unwrap();
    wait_until("B to be moved back and read the new messages", Duration::from_secs(30), || async {
        got_b.lock().unwrap().len() >= 5
    })
    .await;
    let want: Vec<String> = (0..5).map(|i| format!("new {i}")).collect();
    assert_eq!(*got_b.lock().unwrap(), want);
    assert_eq!(*got_a.lock().unwrap(), want);
    b.shutdown().await;
    a_client.shutdown().await;
    producer.shutdown().await;
    a.shutdown().await.unwrap();
    ns.shutdown().await;
}
