//! The real binaries of a 2m-2s-sync cluster on 127.0.0.1 (the shipped conf/2m-2s-sync files,
//! with free ports): a master is killed with SIGKILL mid-stream, and consumers finish its
//! queues from its slave with no acked message lost.

use keel_core::client::{
    Admin, ClientConfig, ConsumeFromWhere, ConsumeResult, Message, Producer, PushConsumer, SendStatus,
};
use keel_core::protocol::code::{request, response};
use keel_core::protocol::RemotingCommand;
use keel_core::store::meta::TopicConfig;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOPIC: &str = "TopicKill";
const NODES: [&str; 4] = ["broker-a", "broker-a-s", "broker-b", "broker-b-s"];

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(bin: &str, args: &[&str], dir: &Path, name: &str) -> Proc {
    let log = dir.join(format!("{name}.log"));
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(bin)
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "info")
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
    Proc { name: name.to_string(), child, log }
}

/// Every process's log, for a failure message.
fn logs(procs: &[Proc]) -> String {
    procs
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            format!("--- {} (last lines)\n{}", p.name, tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

async fn wait_for<F, Fut>(what: &str, procs: &[Proc], limit: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}\n{}", logs(procs));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_sync_master_consumers_finish_from_its_slave_with_nothing_acked_lost() {
    let dir = tempfile::tempdir().unwrap();
    let ns_port = free_port();
    let nsaddr = format!("127.0.0.1:{ns_port}");
    std::fs::write(dir.path().join("namesrv.properties"), format!("listenPort={ns_port}\n")).unwrap();
    let mut procs = vec![spawn(env!("CARGO_BIN_EXE_namesrv"), &["-c", "namesrv.properties"], dir.path(), "namesrv")];

    // The shipped files, with free ports instead of 109x1 (HA ports set apart too).
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf/2m-2s-sync");
    let mut addrs = Vec::new();
    for node in NODES {
        let text = std::fs::read_to_string(conf.join(format!("{node}.properties"))).unwrap();
        let port = free_port();
        let mut out: Vec<String> = text.lines().filter(|l| !l.starts_with("listenPort=")).map(String::from).collect();
        out.push(format!("listenPort={port}"));
        out.push(format!("haListenPort={}", free_port()));
        std::fs::write(dir.path().join(format!("{node}.properties")), out.join("\n")).unwrap();
        addrs.push(format!("127.0.0.1:{port}"));
        let file = format!("{node}.properties");
        procs.push(spawn(env!("CARGO_BIN_EXE_broker"), &["-c", &file, "-n", &nsaddr], dir.path(), node));
    }
    let admin = Admin::new(ClientConfig::new(&nsaddr));
    wait_for("4 brokers registered", &procs, Duration::from_secs(30), || async {
        admin
            .cluster_info()
            .await
            .is_ok_and(|c| c.broker_addr_table.values().map(|b| b.broker_addrs.len()).sum::<usize>() == 4)
    })
    .await;
    let tc = TopicConfig { topic_name: TOPIC.into(), read_queue_nums: 4, write_queue_nums: 4, ..Default::default() };
    for master in [&addrs[0], &addrs[2]] {
        admin.create_topic(master, &tc).await.unwrap();
    }
    // Slaves copy topics from their masters every 10 s: wait until broker-a-s has it.
    let slave_a = addrs[1].clone();
    wait_for("broker-a-s to copy the topic", &procs, Duration::from_secs(30), || async {
        let cmd = RemotingCommand::request(request::GET_ALL_TOPIC_CONFIG, Default::default());
        admin
            .broker(&slave_a, cmd)
            .await
            .is_ok_and(|r| r.code == response::SUCCESS && String::from_utf8_lossy(&r.body).contains(TOPIC))
    })
    .await;

    let producer = Producer::start("PG", ClientConfig::new(&nsaddr)).await.unwrap();
    // A SYNC_MASTER answers SLAVE_NOT_AVAILABLE until its slave's HA link is up, which the
    // topic copy above does not wait for: probe until both masters answer SEND_OK.
    let in_sync: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    wait_for("both masters to answer SEND_OK (their slaves attached)", &procs, Duration::from_secs(30), || async {
        let r = producer.send(&Message::new(TOPIC, "probe")).await;
        let mut brokers = in_sync.lock().unwrap();
        if let Some(r) = r.ok().filter(|r| r.status == SendStatus::SendOk) {
            brokers.insert(r.queue.broker_name);
        }
        brokers.len() == 2
    })
    .await;
    let acked: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let send = |from: usize, to: usize| {
        let (p, acked) = (producer.clone(), acked.clone());
        async move {
            for i in from..to {
                let body = format!("m-{i}");
                if let Ok(r) = p.send(&Message::new(TOPIC, body.clone())).await {
                    if r.status == SendStatus::SendOk {
                        acked.lock().unwrap().insert(body);
                    }
                }
            }
        }
    };
    send(0, 400).await;
    assert_eq!(acked.lock().unwrap().len(), 400, "a 2m-2s-sync cluster acks every send\n{}", logs(&procs));

    let seen: Arc<Mutex<Vec<(String, String, Instant)>>> = Arc::default();
    let s2 = seen.clone();
    let mut ccfg = ClientConfig::new(&nsaddr);
    ccfg.poll_name_server_interval = Duration::from_secs(1);
    let consumer = PushConsumer::builder("CG", ccfg)
        .subscribe(TOPIC, "*")
        .consume_from(ConsumeFromWhere::FirstOffset)
        .pull_batch_size(4)
        .start(Arc::new(move |msgs, mq| {
            let now = Instant::now();
            let mut s = s2.lock().unwrap();
            for m in msgs {
                s.push((String::from_utf8_lossy(&m.inner.body).into_owned(), mq.broker_name.clone(), now));
            }
            // Slow enough that broker-a's backlog outlives its master.
            std::thread::sleep(Duration::from_millis(20));
            ConsumeResult::Success
        }))
        .await
        .unwrap();
    // More sends go on while the master dies.
    let more = tokio::spawn(send(400, 800));
    wait_for("100 deliveries", &procs, Duration::from_secs(30), || async { seen.lock().unwrap().len() >= 100 }).await;
    let killed_at = Instant::now();
    procs[1].child.kill().unwrap(); // SIGKILL
    procs[1].child.wait().unwrap();
    more.await.unwrap();

    let acked = acked.lock().unwrap().clone();
    wait_for("every acked message delivered", &procs, Duration::from_secs(90), || async {
        let s = seen.lock().unwrap();
        let got: BTreeSet<&String> = s.iter().map(|(b, _, _)| b).collect();
        acked.iter().all(|a| got.contains(a))
    })
    .await;
    let s = seen.lock().unwrap().clone();
    let from_a_after = s.iter().filter(|(_, b, t)| b == "broker-a" && *t > killed_at).count();
    assert!(from_a_after > 0, "no broker-a message was consumed after its master died (from the slave)");
    eprintln!(
        "acked {} delivered {} (broker-a after the kill: {from_a_after}, redelivered {})",
        acked.len(),
        s.len(),
        s.len() - s.iter().map(|(b, _, _)| b).collect::<BTreeSet<_>>().len()
    );
    consumer.shutdown().await;
    producer.shutdown().await;
}
