//! Master/slave replication on real tokio over 127.0.0.1: a SYNC_MASTER answers
//! SLAVE_NOT_AVAILABLE without a slave, SEND_OK once its slave (which finds the master's HA
//! address through the name server) confirms; the slave's commitlog is byte-identical and it
//! builds its own consume queues. With slave reads on, consumers read from the slave while
//! the master is gone, commit offsets there, and go back to the master without receiving
//! anything twice.

mod common;

use keel_core::broker::BrokerController;
use keel_core::client::{ClientConfig, ConsumeFromWhere, ConsumeResult, Message, Producer, PushConsumer, SendStatus};
use keel_core::config::broker::{BrokerConfig, BrokerRole};
use keel_core::namesrv::{NameServer, NamesrvConfig};
use keel_core::rt::disk::Disk;
use keel_core::store::meta::TopicConfig;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn broker_config(role: BrokerRole, id: u64, namesrv: &str, root: &Path) -> BrokerConfig {
    let mut cfg = BrokerConfig {
        broker_name: "broker-a".into(),
        broker_id: id,
        broker_role: role,
        namesrv_addr: Some(namesrv.into()),
        listen_port: 0,
        ..Default::default()
    };
    cfg.store = common::small_config(root);
    cfg.store.mapped_file_size_commit_log = 1024 * 1024;
    cfg
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(20), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_master_waits_for_its_slave_whose_log_is_byte_identical() {
    common::init_logs();
    let ns =
        NameServer::start(NamesrvConfig { listen_addr: "127.0.0.1:0".into(), ..Default::default() }).await.unwrap();
    let nsaddr = ns.local_addr().to_string();
    let (dir_m, dir_s) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let master = BrokerController::start(broker_config(BrokerRole::SyncMaster, 0, &nsaddr, dir_m.path()), Disk::Real)
        .await
        .unwrap();
    let producer = Producer::start("PG", ClientConfig::new(&nsaddr)).await.unwrap();
    let admin = keel_core::client::Admin::new(ClientConfig::new(&nsaddr));
    let tc =
        TopicConfig { topic_name: "TopicHA".into(), read_queue_nums: 4, write_queue_nums: 4, ..Default::default() };
    admin.create_topic(master.addr(), &tc).await.unwrap();

    // No slave yet: stored, not replicated.
    let r = producer.send(&Message::new("TopicHA", "alone")).await.unwrap();
    assert_eq!(r.status, SendStatus::SlaveNotAvailable);

    let slave =
        BrokerController::start(broker_config(BrokerRole::Slave, 1, &nsaddr, dir_s.path()), Disk::Real).await.unwrap();
    let ha = master.broker.ha.clone();
    wait_until("the slave to attach", || ha.slaves_connected() == 1).await;

    for i in 0..200 {
        let r = producer.send(&Message::new("TopicHA", format!("body-{i}"))).await.unwrap();
        assert_eq!(r.status, SendStatus::SendOk, "message {i}");
    }
    let (m, s) = (master.broker.store.clone(), slave.broker.store.clone());
    // SEND_OK means the slave had confirmed the bytes.
    assert!(ha.acked() >= m.max_phys(), "acked {} < master end {}", ha.acked(), m.max_phys());
    assert_eq!(s.max_phys(), m.max_phys());
    let from = s.min_phys();
    let (a, b) = (m.read_log(from, 1 << 20).await.unwrap(), s.read_log(from, 1 << 20).await.unwrap());
    assert_eq!(a.len(), b.len());
    assert!(a == b, "slave commitlog differs from the master's");
    // The slave dispatched every record into its own consume queues.
    let sum = |st: &keel_core::store::MessageStore| (0..4).map(|q| st.max_offset("TopicHA", q)).sum::<u64>();
    wait_until("the slave's queues", || sum(&s) == sum(&m)).await;
    assert_eq!(sum(&m), 201);

    // The slave goes away: the master stops promising replication.
    slave.shutdown().await.unwrap();
    wait_until("the master to see the slave gone", || ha.slaves_connected() == 0).await;
    let r = producer.send(&Message::new("TopicHA", "alone again")).await.unwrap();
    assert_eq!(r.status, SendStatus::SlaveNotAvailable);
    producer.shutdown().await;
    master.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_read_from_the_slave_while_the_master_is_gone_and_return_without_duplicates() {
    common::init_logs();
    let ns =
        NameServer::start(NamesrvConfig { listen_addr: "127.0.0.1:0".into(), ..Default::default() }).await.unwrap();
    let nsaddr = ns.local_addr().to_string();
    let (dir_m, dir_s) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cfg = |role, id, dir: &Path| {
        let mut c = broker_config(role, id, &nsaddr, dir);
        c.slave_read_enable = true;
        c.register_name_server_period_ms = 1_000;
        c
    };
    let master = BrokerController::start(cfg(BrokerRole::SyncMaster, 0, dir_m.path()), Disk::Real).await.unwrap();
    let admin = keel_core::client::Admin::new(ClientConfig::new(&nsaddr));
    let tc =
        TopicConfig { topic_name: "TopicSR".into(), read_queue_nums: 4, write_queue_nums: 4, ..Default::default() };
    admin.create_topic(master.addr(), &tc).await.unwrap();
    let slave = BrokerController::start(cfg(BrokerRole::Slave, 1, dir_s.path()), Disk::Real).await.unwrap();
    let ha = master.broker.ha.clone();
    wait_until("the slave to attach", || ha.slaves_connected() == 1).await;
    // The slave copies the master's topics (3 s after start, then every 10 s).
    let sb = slave.broker.clone();
    wait_until("the slave to learn the topic", || sb.topics.get("TopicSR").is_some()).await;

    let producer = Producer::start("PG", ClientConfig::new(&nsaddr)).await.unwrap();
    for i in 0..100 {
        let r = producer.send(&Message::new("TopicSR", format!("first-{i}"))).await.unwrap();
        assert_eq!(r.status, SendStatus::SendOk, "message {i}");
    }
    // The master leaves (and unregisters): only its slave is left in the route.
    master.shutdown().await.unwrap();

    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut ccfg = ClientConfig::new(&nsaddr);
    ccfg.poll_name_server_interval = Duration::from_millis(500);
    ccfg.persist_consumer_offset_interval = Duration::from_millis(500);
    let s2 = seen.clone();
    let consumer = PushConsumer::builder("CG", ccfg)
        .subscribe("TopicSR", "*")
        .consume_from(ConsumeFromWhere::FirstOffset)
        .start(Arc::new(move |msgs, _| {
            s2.lock().unwrap().extend(msgs.iter().map(|m| String::from_utf8_lossy(&m.inner.body).into_owned()));
            ConsumeResult::Success
        }))
        .await
        .unwrap();
    wait_until("100 messages from the slave", || seen.lock().unwrap().len() >= 100).await;
    // Offsets were committed to the slave.
    let committed =
        |b: &keel_core::broker::Broker| (0..4).map(|q| b.offsets.query("CG", "TopicSR", q).unwrap_or(0)).sum::<i64>();
    wait_until("offsets committed on the slave", || committed(&sb) == 100).await;

    // The master comes back (on a new port; the slave follows it there).
    let master = BrokerController::start(cfg(BrokerRole::SyncMaster, 0, dir_m.path()), Disk::Real).await.unwrap();
    let ha = master.broker.ha.clone();
    wait_until("the slave to attach again", || ha.slaves_connected() == 1).await;
    for i in 0..100 {
        let r = producer.send(&Message::new("TopicSR", format!("second-{i}"))).await.unwrap();
        assert_eq!(r.status, SendStatus::SendOk, "message {i}");
    }
    wait_until("all 200 messages", || seen.lock().unwrap().len() >= 200).await;
    // Back on the master. Pulls parked on the slave before it returned may still take a few
    // messages (each answer sends the consumer back): send until the master serves one.
    let mb = master.broker.clone();
    let mut total = 200;
    let start = std::time::Instant::now();
    while mb.stats.get_total.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        assert!(start.elapsed() < Duration::from_secs(30), "the consumer never went back to the master");
        let r = producer.send(&Message::new("TopicSR", format!("third-{total}"))).await.unwrap();
        assert_eq!(r.status, SendStatus::SendOk);
        total += 1;
        wait_until("the extra message", || seen.lock().unwrap().len() >= total).await;
    }
    // The master takes the commits.
    wait_until("offsets committed on the master", || committed(&mb) == total as i64).await;
    consumer.shutdown().await;
    let seen = seen.lock().unwrap().clone();
    let unique: std::collections::BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), total, "lost messages");
    assert_eq!(seen.len(), total, "{} messages delivered twice", seen.len() - unique.len());
    producer.shutdown().await;
    master.shutdown().await.unwrap();
    slave.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_sends_a_consumer_far_behind_to_its_slave_and_a_slave_without_slave_reads_refuses_pulls() {
    use keel_core::protocol::code::{pull_flag, request, response};
    use keel_core::protocol::header::PullMessageHeader;
    use keel_core::protocol::RemotingCommand;
    common::init_logs();
    let ns =
        NameServer::start(NamesrvConfig { listen_addr: "127.0.0.1:0".into(), ..Default::default() }).await.unwrap();
    let nsaddr = ns.local_addr().to_string();
    let (dir_m, dir_s) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut mcfg = broker_config(BrokerRole::AsyncMaster, 0, &nsaddr, dir_m.path());
    mcfg.slave_read_enable = true;
    // "Far behind" is 40 % of the machine's memory: here, of 10 000 bytes.
    mcfg.total_physical_memory = 10_000;
    let master = BrokerController::start(mcfg, Disk::Real).await.unwrap();
    let slave =
        BrokerController::start(broker_config(BrokerRole::Slave, 1, &nsaddr, dir_s.path()), Disk::Real).await.unwrap();
    let admin = keel_core::client::Admin::new(ClientConfig::new(&nsaddr));
    let tc =
        TopicConfig { topic_name: "TopicFar".into(), read_queue_nums: 1, write_queue_nums: 1, ..Default::default() };
    admin.create_topic(master.addr(), &tc).await.unwrap();
    let producer = Producer::start("PG", ClientConfig::new(&nsaddr)).await.unwrap();
    for i in 0..40 {
        let r = producer.send(&Message::new("TopicFar", format!("{i:0>200}"))).await.unwrap();
        assert_eq!(r.status, SendStatus::SendOk);
    }
    let pull = |offset: i64| {
        let h = PullMessageHeader {
            consumer_group: "CG".into(),
            topic: "TopicFar".into(),
            queue_id: 0,
            queue_offset: offset,
            max_msg_nums: 1,
            sys_flag: pull_flag::SUBSCRIPTION,
            commit_offset: 0,
            suspend_timeout_millis: 0,
            subscription: Some("*".into()),
            sub_version: 0,
            expression_type: Some("TAG".into()),
        };
        RemotingCommand::request(request::PULL_MESSAGE, h.encode())
    };
    // ~10 KB behind the end (> 4 000 bytes): read from the slave (whichBrokerWhenConsumeSlowly).
    let r = admin.broker(master.addr(), pull(0)).await.unwrap();
    assert_eq!(r.code, response::SUCCESS);
    assert_eq!(r.get("suggestWhichBrokerId"), Some("1"));
    // The last message: close to the end, stay on the master.
    let r = admin.broker(master.addr(), pull(39)).await.unwrap();
    assert_eq!(r.code, response::SUCCESS);
    assert_eq!(r.get("suggestWhichBrokerId"), Some("0"));
    // This slave has slaveReadEnable=false: it serves no pulls.
    match admin.broker(slave.addr(), pull(0)).await {
        Err(keel_core::client::ClientError::Broker { code, .. }) => assert_eq!(code, response::SYSTEM_BUSY),
        other => panic!("a slave without slaveReadEnable answered a pull: {other:?}"),
    }
    producer.shutdown().await;
    slave.shutdown().await.unwrap();
    master.shutdown().await.unwrap();
}
