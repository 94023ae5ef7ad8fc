//! Master/slave replication on real tokio over 127.0.0.1: a SYNC_MASTER answers
//! SLAVE_NOT_AVAILABLE without a slave, SEND_OK once its slave (which finds the master's HA
//! address through the name server) confirms; the slave's commitlog is byte-identical and it
//! builds its own consume queues.

mod common;

use keel_core::broker::BrokerController;
use keel_core::client::{ClientConfig, Message, Producer, SendStatus};
use keel_core::config::broker::{BrokerConfig, BrokerRole};
use keel_core::namesrv::{NameServer, NamesrvConfig};
use keel_core::rt::disk::Disk;
use keel_core::store::meta::TopicConfig;
use std::path::Path;
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
