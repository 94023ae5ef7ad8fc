//! rocketmq-client-rust 1.0 — an independent RocketMQ client — against Keel's name server
//! and broker: it sends to a topic that does not exist yet (so the broker auto-creates it
//! from TBW102), then a push consumer of its own consumes everything it sent.
#![recursion_limit = "512"]

use keel_core::broker::BrokerController;
use keel_core::config::broker::BrokerConfig;
use keel_core::namesrv::{NameServer, NamesrvConfig};
use keel_core::rt::disk::Disk;
use rocketmq_client_rust::{
    ClientResult, ClientRuntime, ClientRuntimeConfig, ConsumeConcurrentlyContext, ConsumeConcurrentlyStatus,
    DefaultMQProducer, DefaultMQPushConsumer, MQPushConsumer, MessageListenerConcurrently,
};
use rocketmq_model::common::consumer::consume_from_where::ConsumeFromWhere;
use rocketmq_model::common::message::message_ext::MessageExt;
use rocketmq_model::common::message::message_single::Message;
use rocketmq_runtime::{RuntimeConfig, RuntimeOwner};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Collect(Arc<Mutex<Vec<(String, String)>>>);

impl MessageListenerConcurrently for Collect {
    fn consume_message(&self, msgs: &[&MessageExt], _: &ConsumeConcurrentlyContext) -> ClientResult<ConsumeConcurrentlyStatus> {
        let mut got = self.0.lock().unwrap();
        for m in msgs {
            let body = String::from_utf8_lossy(m.body().as_deref().unwrap_or_default()).to_string();
            let tags = m.tags().map(|t| t.to_string()).unwrap_or_default();
            got.push((body, tags));
        }
        Ok(ConsumeConcurrentlyStatus::ConsumeSuccess)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rocketmq_client_rust_sends_and_consumes_through_keel() {
    let ns = NameServer::start(NamesrvConfig { listen_addr: "127.0.0.1:0".into(), ..Default::default() }).await.unwrap();
    let nsaddr = ns.local_addr().to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = BrokerConfig { listen_port: 0, namesrv_addr: Some(nsaddr.clone()), ..Default::default() };
    cfg.store.store_path_root_dir = dir.path().to_path_buf();
    cfg.store.mapped_file_size_commit_log = 16 * 1024 * 1024;
    cfg.store.mapped_file_size_consume_queue = 20 * 10_000;
    let broker = BrokerController::start(cfg, Disk::Real).await.unwrap();

    let owner = RuntimeOwner::plan(RuntimeConfig { thread_name: "interop".into(), ..Default::default() })
        .unwrap()
        .build()
        .unwrap();
    let telemetry = rocketmq_observability::install_global(&rocketmq_observability::TelemetryBootstrapConfig::default()).unwrap();
    let runtime: Arc<ClientRuntime> =
        ClientRuntime::try_new(owner.root_context().component("client"), ClientRuntimeConfig::default(), telemetry.handle())
            .unwrap();

    let topic = "InteropTopic";
    let mut producer = DefaultMQProducer::builder(runtime.clone())
        .producer_group("interop_producer".to_string())
        .name_server_addr(nsaddr.clone())
        .build();
    producer.start().await.unwrap();
    let mut sent = BTreeSet::new();
    for i in 0..50 {
        let tag = if i % 2 == 0 { "TagA" } else { "TagB" };
        let body = format!("interop-{i}");
        let msg = Message::builder().topic(topic).tags(tag).body_slice(body.as_bytes()).build_unchecked();
        let r = producer.send_with_timeout(msg, 3000).await.expect("send through Keel");
        assert!(format!("{r:?}").contains("SendOk"), "{r:?}");
        sent.insert((body, tag.to_string()));
    }
    producer.shutdown().await;

    let got = Arc::new(Mutex::new(Vec::new()));
    let mut consumer = DefaultMQPushConsumer::builder(runtime.clone())
        .consumer_group("interop_consumer".to_string())
        .name_server_addr(nsaddr.clone())
        .consume_from_where(ConsumeFromWhere::ConsumeFromFirstOffset)
        .build();
    consumer.subscribe(topic, "*").await.unwrap();
    consumer.register_message_listener_concurrently(Collect(got.clone()));
    consumer.start().await.unwrap();
    let start = Instant::now();
    while got.lock().unwrap().len() < sent.len() {
        assert!(start.elapsed() < Duration::from_secs(60), "consumed {} of {}", got.lock().unwrap().len(), sent.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let received: BTreeSet<(String, String)> = got.lock().unwrap().iter().cloned().collect();
    assert_eq!(received, sent, "every message the client sent came back to its consumer");
    consumer.shutdown().await;
    let _ = runtime.shutdown().await;
    let _ = owner.shutdown_tasks().await;
    let _ = owner.shutdown_background();
    let _ = telemetry.shutdown();
    broker.shutdown().await.unwrap();
    ns.shutdown().await;
}
