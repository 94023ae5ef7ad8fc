//! `mqadmin`: RocketMQ's admin tool, the commands operators use most, with RocketMQ's
//! column layouts; `--json` prints the same data as JSON. The name server comes from `-n`
//! or `NAMESRV_ADDR`.

use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use keel_core::client::{Admin, ClientConfig, Message, Producer};
use keel_core::protocol::body::MessageQueue;
use keel_core::protocol::code::{pull_flag, request, response};
use keel_core::protocol::header::{ext, PullMessageHeader};
use keel_core::protocol::message::{decode_offset_msg_id, decode_records, MessageExt};
use keel_core::protocol::RemotingCommand;
use keel_core::store::meta::TopicConfig;
use serde_json::json;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "mqadmin", about = "Keel admin tool (RocketMQ's mqadmin commands)")]
struct Cli {
    /// Name server address list, "host:9876;host2:9876" (default: $NAMESRV_ADDR).
    #[arg(short = 'n', long = "namesrvAddr", global = true)]
    namesrv: Option<String>,
    /// Print JSON instead of RocketMQ's tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// List the brokers of every cluster.
    #[command(name = "clusterList")]
    ClusterList,
    /// List every topic the name servers know.
    #[command(name = "topicList")]
    TopicList,
    /// Create or update a topic on one broker (-b) or every master of a cluster (-c).
    #[command(name = "updateTopic")]
    UpdateTopic {
        #[arg(short = 't')]
        topic: String,
        #[arg(short = 'b')]
        broker: Option<String>,
        #[arg(short = 'c')]
        cluster: Option<String>,
        #[arg(short = 'r', default_value_t = 8)]
        read: u32,
        #[arg(short = 'w', default_value_t = 8)]
        write: u32,
        #[arg(short = 'p', default_value_t = 6)]
        perm: u32,
        #[arg(short = 'o', default_value_t = false)]
        order: bool,
    },
    /// Print a topic's route.
    #[command(name = "topicRoute")]
    TopicRoute {
        #[arg(short = 't')]
        topic: String,
    },
    /// Min and max offsets of every queue of a topic.
    #[command(name = "topicStatus")]
    TopicStatus {
        #[arg(short = 't')]
        topic: String,
    },
    /// A consumer group's progress per queue.
    #[command(name = "consumerProgress")]
    ConsumerProgress {
        #[arg(short = 'g')]
        group: String,
    },
    /// A broker's runtime figures.
    #[command(name = "brokerStatus")]
    BrokerStatus {
        #[arg(short = 'b')]
        broker: Option<String>,
        #[arg(short = 'c')]
        cluster: Option<String>,
    },
    /// A message by its offsetMsgId.
    #[command(name = "queryMsgById")]
    QueryMsgById {
        #[arg(short = 'i')]
        id: String,
    },
    /// Send one message.
    #[command(name = "sendMessage")]
    SendMessage {
        #[arg(short = 't')]
        topic: String,
        #[arg(short = 'p')]
        body: String,
        #[arg(short = 'k')]
        keys: Option<String>,
        #[arg(short = 'c')]
        tags: Option<String>,
    },
    /// Read messages of a topic from the given offset (default: each queue's min).
    #[command(name = "consumeMessage")]
    ConsumeMessage {
        #[arg(short = 't')]
        topic: String,
        #[arg(short = 'g', default_value = "TOOLS_CONSUMER")]
        group: String,
        #[arg(short = 'o')]
        offset: Option<i64>,
        #[arg(short = 'c', default_value_t = 128)]
        count: usize,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "error".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let namesrv = cli
        .namesrv
        .clone()
        .or_else(|| std::env::var("NAMESRV_ADDR").ok())
        .ok_or_else(|| anyhow!("no name server: pass -n host:9876 or set NAMESRV_ADDR"))?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(run(cli, namesrv))
}

async fn masters(admin: &Admin, broker: &Option<String>, cluster: &Option<String>) -> Result<Vec<(String, String)>> {
    if let Some(b) = broker {
        return Ok(vec![(b.clone(), b.clone())]);
    }
    let info = admin.cluster_info().await?;
    let Some(c) = cluster else { bail!("give -b broker address or -c cluster name") };
    let names = info.cluster_addr_table.get(c).ok_or_else(|| anyhow!("cluster {c} not found"))?;
    Ok(names
        .iter()
        .filter_map(|n| info.broker_addr_table.get(n).and_then(|b| b.master_addr()).map(|a| (n.clone(), a.to_string())))
        .collect())
}

fn print_message(m: &MessageExt, json_out: bool) {
    let body = String::from_utf8_lossy(&m.inner.body).to_string();
    if json_out {
        println!(
            "{}",
            json!({"offsetMsgId": m.offset_msg_id(), "topic": m.inner.topic, "tags": m.property("TAGS"), "keys": m.property("KEYS"),
                "queueId": m.inner.queue_id, "queueOffset": m.queue_offset, "commitLogOffset": m.phys_offset,
                "reconsumeTimes": m.inner.reconsume_times, "bornTimestamp": m.inner.born_timestamp,
                "storeTimestamp": m.store_timestamp, "bornHost": m.inner.born_host.to_string(),
                "storeHost": m.inner.store_host.to_string(), "sysFlag": m.inner.sys_flag,
                "properties": m.inner.properties.replace(['\u{1}'], "=").replace('\u{2}', ";"), "body": body})
        );
        return;
    }
    let rows = [
        ("OffsetID:", m.offset_msg_id()),
        ("Topic:", m.inner.topic.clone()),
        ("Tags:", format!("[{}]", m.property("TAGS").unwrap_or("null"))),
        ("Keys:", format!("[{}]", m.property("KEYS").unwrap_or("null"))),
        ("Queue ID:", m.inner.queue_id.to_string()),
        ("Queue Offset:", m.queue_offset.to_string()),
        ("CommitLog Offset:", m.phys_offset.to_string()),
        ("Reconsume Times:", m.inner.reconsume_times.to_string()),
        ("Born Timestamp:", m.inner.born_timestamp.to_string()),
        ("Store Timestamp:", m.store_timestamp.to_string()),
        ("Born Host:", m.inner.born_host.to_string()),
        ("Store Host:", m.inner.store_host.to_string()),
        ("System Flag:", m.inner.sys_flag.to_string()),
        ("Properties:", m.inner.properties.replace('\u{1}', "=").replace('\u{2}', ", ")),
        ("Message Body:", body),
    ];
    for (k, v) in rows {
        println!("{k:<20}{v}");
    }
}

async fn run(cli: Cli, namesrv: String) -> Result<()> {
    let cfg = ClientConfig::new(&namesrv);
    let admin = Admin::new(cfg.clone());
    let j = cli.json;
    match cli.cmd {
        Cmd::ClusterList => {
            let info = admin.cluster_info().await?;
            let mut out = Vec::new();
            if !j {
                println!(
                    "{:<22}  {:<22}  {:<4}  {:<22} {:<16} {:>19} {:>19} {:>10} {:>5} {:>6}",
                    "#Cluster Name",
                    "#Broker Name",
                    "#BID",
                    "#Addr",
                    "#Version",
                    "#InTPS(LOAD)",
                    "#OutTPS(LOAD)",
                    "#PCWait(ms)",
                    "#Hour",
                    "#SPACE"
                );
            }
            for (cluster, names) in &info.cluster_addr_table {
                for name in names {
                    let Some(bd) = info.broker_addr_table.get(name) else { continue };
                    for (id, addr) in &bd.broker_addrs {
                        let rt = admin.runtime_info(addr).await.unwrap_or_default();
                        let get = |k: &str| rt.get(k).cloned().unwrap_or_default();
                        let first = |k: &str| get(k).split(' ').next().unwrap_or("0").parse::<f64>().unwrap_or(0.0);
                        let earliest: i64 = get("earliestMessageTimeStamp").parse().unwrap_or(0);
                        let now =
                            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
                        let hours = if earliest > 0 {
                            format!("{:.2}", (now - earliest) as f64 / 3_600_000.0)
                        } else {
                            "0.00".into()
                        };
                        let space = get("commitLogDiskRatio").parse::<f64>().unwrap_or(0.0);
                        if j {
                            out.push(json!({"cluster": cluster, "brokerName": name, "brokerId": id, "addr": addr,
                                "version": get("brokerVersionDesc"), "inTps": first("putTps"), "outTps": first("getTransferedTps"),
                                "pageCacheWaitMs": get("pageCacheLockTimeMills"), "hours": hours, "space": space}));
                        } else {
                            println!(
                                "{:<22}  {:<22}  {:<4}  {:<22} {:<16} {:>19} {:>19} {:>10} {:>5} {:>6}",
                                cluster,
                                name,
                                id,
                                addr,
                                get("brokerVersionDesc"),
                                format!("{:.2}(0,0ms)", first("putTps")),
                                format!("{:.2}(0,0ms)", first("getTransferedTps")),
                                get("pageCacheLockTimeMills"),
                                hours,
                                format!("{:.4}", space)
                            );
                        }
                    }
                }
            }
            if j {
                println!("{}", serde_json::to_string_pretty(&out)?);
            }
        }
        Cmd::TopicList => {
            let list = admin.topic_list().await?;
            if j {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for t in list.topic_list {
                    println!("{t}");
                }
            }
        }
        Cmd::UpdateTopic { topic, broker, cluster, read, write, perm, order } => {
            let tc = TopicConfig {
                topic_name: topic,
                read_queue_nums: read,
                write_queue_nums: write,
                perm,
                order,
                ..Default::default()
            };
            for (_, addr) in masters(&admin, &broker, &cluster).await? {
                admin.create_topic(&addr, &tc).await?;
                if j {
                    println!("{}", json!({"broker": addr, "topicConfig": tc}));
                } else {
                    println!("create topic to {addr} success.");
                    println!("{tc:?}");
                }
            }
        }
        Cmd::TopicRoute { topic } => {
            let route = admin.topic_route(&topic).await?;
            println!("{}", serde_json::to_string_pretty(&route)?);
        }
        Cmd::TopicStatus { topic } => {
            let route = admin.topic_route(&topic).await?;
            let mut rows = Vec::new();
            for bd in &route.broker_datas {
                let Some(addr) = bd.master_addr() else { continue };
                rows.extend(admin.topic_stats(addr, &topic).await?);
            }
            if j {
                let v: Vec<_> = rows.iter().map(|(q, o)| json!({"brokerName": q.broker_name, "queueId": q.queue_id,
                    "minOffset": o.min_offset, "maxOffset": o.max_offset, "lastUpdateTimestamp": o.last_update_timestamp})).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "{:<32}  {:<4}  {:<20}  {:<20}    #Last Updated",
                    "#Broker Name", "#QID", "#Min Offset", "#Max Offset"
                );
                for (q, o) in rows {
                    println!(
                        "{:<32}  {:<4}  {:<20}  {:<20}    {}",
                        q.broker_name, q.queue_id, o.min_offset, o.max_offset, o.last_update_timestamp
                    );
                }
            }
        }
        Cmd::ConsumerProgress { group } => {
            let retry = format!("%RETRY%{group}");
            let route =
                admin.topic_route(&retry).await.map_err(|e| anyhow!("group {group} has no route for {retry}: {e}"))?;
            let mut rows: Vec<(MessageQueue, keel_core::protocol::body::OffsetWrapper)> = Vec::new();
            for bd in &route.broker_datas {
                let Some(addr) = bd.master_addr() else { continue };
                rows.extend(admin.consume_stats(addr, &group, None).await?);
            }
            let diff: i64 = rows.iter().map(|(_, w)| w.broker_offset - w.consumer_offset).sum();
            if j {
                let v: Vec<_> = rows.iter().map(|(q, w)| json!({"topic": q.topic, "brokerName": q.broker_name, "queueId": q.queue_id,
                    "brokerOffset": w.broker_offset, "consumerOffset": w.consumer_offset, "diff": w.broker_offset - w.consumer_offset})).collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({"queues": v, "consumeTps": 0.0, "diffTotal": diff}))?
                );
            } else {
                println!(
                    "{:<64}  {:<32}  {:<4}  {:<20}  {:<20}  {:<20} #LastTime",
                    "#Topic", "#Broker Name", "#QID", "#Broker Offset", "#Consumer Offset", "#Diff"
                );
                for (q, w) in &rows {
                    println!(
                        "{:<64}  {:<32}  {:<4}  {:<20}  {:<20}  {:<20} {}",
                        q.topic,
                        q.broker_name,
                        q.queue_id,
                        w.broker_offset,
                        w.consumer_offset,
                        w.broker_offset - w.consumer_offset,
                        w.last_timestamp
                    );
                }
                println!();
                println!("Consume TPS: {:.2}", 0.0);
                println!("Diff Total: {diff}");
            }
        }
        Cmd::BrokerStatus { broker, cluster } => {
            for (_, addr) in masters(&admin, &broker, &cluster).await? {
                let t = admin.runtime_info(&addr).await?;
                if j {
                    println!("{}", serde_json::to_string_pretty(&json!({"broker": addr, "table": t}))?);
                } else {
                    for (k, v) in t {
                        println!("{k:<32}: {v}");
                    }
                }
            }
        }
        Cmd::QueryMsgById { id } => {
            let (host, offset) = decode_offset_msg_id(&id).ok_or_else(|| anyhow!("{id} is not an offsetMsgId"))?;
            let m = admin.view_message(&host.to_string(), offset).await?;
            print_message(&m, j);
        }
        Cmd::SendMessage { topic, body, keys, tags } => {
            let p = Producer::start("TOOLS_PRODUCER", cfg).await?;
            let mut msg = Message::new(&topic, Bytes::from(body));
            msg.tags = tags;
            msg.keys = keys.map(|k| k.split(' ').map(String::from).collect()).unwrap_or_default();
            let r = p.send(&msg).await?;
            p.shutdown().await;
            if j {
                println!(
                    "{}",
                    json!({"brokerName": r.queue.broker_name, "queueId": r.queue.queue_id, "sendStatus": format!("{:?}", r.status), "msgId": r.msg_id, "offsetMsgId": r.offset_msg_id, "queueOffset": r.queue_offset})
                );
            } else {
                println!("{:<32}  {:<4}  {:<20}    #MsgId", "#Broker Name", "#QID", "#Send Result");
                println!(
                    "{:<32}  {:<4}  {:<20}    {}",
                    r.queue.broker_name,
                    r.queue.queue_id,
                    format!("{:?}", r.status).to_uppercase().replace("SENDOK", "SEND_OK"),
                    r.msg_id
                );
            }
        }
        Cmd::ConsumeMessage { topic, group, offset, count } => {
            let route = admin.topic_route(&topic).await?;
            let mut printed = 0;
            'queues: for qd in &route.queue_datas {
                let Some(addr) =
                    route.broker_datas.iter().find(|b| b.broker_name == qd.broker_name).and_then(|b| b.master_addr())
                else {
                    continue;
                };
                for q in 0..qd.read_queue_nums as i32 {
                    let min = RemotingCommand::request(
                        request::GET_MIN_OFFSET,
                        ext([("topic", topic.clone()), ("queueId", q.to_string())]),
                    );
                    let mut at: i64 = match offset {
                        Some(o) => o,
                        None => admin.broker(addr, min).await?.get("offset").and_then(|o| o.parse().ok()).unwrap_or(0),
                    };
                    loop {
                        let h = PullMessageHeader {
                            consumer_group: group.clone(),
                            topic: topic.clone(),
                            queue_id: q,
                            queue_offset: at,
                            max_msg_nums: 32,
                            sys_flag: pull_flag::SUBSCRIPTION,
                            subscription: Some("*".into()),
                            expression_type: Some("TAG".into()),
                            ..Default::default()
                        };
                        let r = admin
                            .instance
                            .remoting
                            .invoke(
                                addr,
                                RemotingCommand::request(request::PULL_MESSAGE, h.encode()),
                                Duration::from_secs(10),
                            )
                            .await?;
                        if r.code != response::SUCCESS {
                            break;
                        }
                        for m in decode_records(&r.body).map_err(|e| anyhow!(e))? {
                            if j {
                                print_message(&m, true);
                            } else {
                                println!(
                                    "MSGID: {} {} BODY: {}",
                                    m.offset_msg_id(),
                                    m.inner.topic,
                                    String::from_utf8_lossy(&m.inner.body)
                                );
                            }
                            printed += 1;
                            if printed >= count {
                                break 'queues;
                            }
                        }
                        at = r.get("nextBeginOffset").and_then(|o| o.parse().ok()).unwrap_or(at + 1);
                    }
                }
            }
            if !j {
                println!("Consume ok: {printed} messages");
            }
        }
    }
    admin.shutdown().await;
    Ok(())
}
