//! `broker`: RocketMQ's `mqbroker` flags (`-c file`, `-n addrs`, `-p`, `-m`). With no name
//! server configured (no `-n`, no `namesrvAddr`) it also runs a name server in-process on
//! 127.0.0.1:9876 — a standalone broker, the README's one command. Ctrl-C or SIGTERM shuts
//! down gracefully: unregister, stop accepting, finish in-flight requests, flush, checkpoint.

use anyhow::{Context, Result};
use clap::Parser;
use keel_core::broker::BrokerController;
use keel_core::config::broker::BrokerConfig;
use keel_core::namesrv::{NameServer, NamesrvConfig};
use keel_core::rt::disk::Disk;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "broker", about = "Keel broker (RocketMQ-compatible)")]
struct Args {
    /// broker.properties file.
    #[arg(short = 'c', long = "configFile")]
    config: Option<PathBuf>,
    /// Name server addresses, "host:9876;host2:9876" (overrides namesrvAddr).
    #[arg(short = 'n', long = "namesrvAddr")]
    namesrv: Option<String>,
    /// Print every config item and exit.
    #[arg(short = 'p', long = "printConfigItem")]
    print: bool,
    /// Print the important config items and exit.
    #[arg(short = 'm', long = "printImportantConfig")]
    important: bool,
}

fn load(args: &Args) -> Result<BrokerConfig> {
    let (mut cfg, warnings) = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            BrokerConfig::from_properties(&text, &path.display().to_string())?
        }
        None => {
            let mut cfg = BrokerConfig::default();
            // Standalone: the store lives in ./store.
            cfg.store.store_path_root_dir = PathBuf::from("store");
            (cfg, Vec::new())
        }
    };
    for w in warnings {
        tracing::warn!("{w}");
    }
    if let Some(n) = &args.namesrv {
        cfg.namesrv_addr = Some(n.clone());
    }
    if let Some(bytes) = physical_memory() {
        cfg.total_physical_memory = bytes;
    }
    Ok(cfg)
}

/// MemTotal from /proc/meminfo (a consumer further behind than a share of it is sent to a
/// slave, as RocketMQ does).
fn physical_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let args = Args::parse();
    let mut cfg = load(&args)?;
    if args.print || args.important {
        for (k, v) in cfg.describe(args.important) {
            println!("{k}={v}");
        }
        return Ok(());
    }
    let rt = keel::runtime()?;
    rt.block_on(async {
        let embedded = match &cfg.namesrv_addr {
            Some(_) => None,
            None => {
                let ns =
                    NameServer::start(NamesrvConfig::default()).await.context("starting the embedded name server")?;
                cfg.namesrv_addr = Some(ns.local_addr().to_string());
                Some(ns)
            }
        };
        let store_dir = cfg.store.store_path_root_dir.clone();
        let broker = BrokerController::start(cfg, Disk::Real)
            .await
            .with_context(|| format!("starting the broker (store {})", store_dir.display()))?;
        shutdown_signal().await;
        tracing::info!("shutting down");
        broker.shutdown().await?;
        if let Some(ns) = embedded {
            ns.shutdown().await;
        }
        Ok(())
    })
}
