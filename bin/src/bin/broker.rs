//! `broker`: RocketMQ's `mqbroker` flags (`-c file`, `-n addrs`, `-p`, `-m`). Opens (and if
//! needed recovers) the store and keeps its flush, checkpoint and retention services running
//! until Ctrl-C or SIGTERM, then shuts down cleanly. The remoting server arrives with the
//! network layer; until then this is the store half of a broker.

use anyhow::{Context, Result};
use clap::Parser;
use keel_core::config::broker::BrokerConfig;
use keel_core::rt::disk::Disk;
use keel_core::store::MessageStore;
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
            // RocketMQ's default store root is ~/store.
            if let Some(home) = std::env::var_os("HOME") {
                cfg.store.store_path_root_dir = PathBuf::from(home).join("store");
            }
            (cfg, Vec::new())
        }
    };
    for w in warnings {
        tracing::warn!("{w}");
    }
    if let Some(n) = &args.namesrv {
        cfg.namesrv_addr = Some(n.clone());
    }
    Ok(cfg)
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
    let cfg = load(&args)?;
    if args.print || args.important {
        for (k, v) in cfg.describe(args.important) {
            println!("{k}={v}");
        }
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let store = MessageStore::open(cfg.store.clone(), Disk::Real)
            .await
            .with_context(|| format!("opening store {}", cfg.store.store_path_root_dir.display()))?;
        tracing::info!(
            store = %cfg.store.store_path_root_dir.display(),
            commitlog_max_offset = store.commitlog_max_offset(),
            "The broker[{}, {}:{}] store ready; remoting is not built yet",
            cfg.broker_name, cfg.broker_ip1, cfg.listen_port
        );
        shutdown_signal().await;
        tracing::info!("shutting down: flushing the store");
        store.shutdown().await?;
        Ok(())
    })
}
