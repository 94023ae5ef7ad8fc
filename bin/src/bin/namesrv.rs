//! `namesrv`: RocketMQ's `mqnamesrv` flags (`-c file`, `-p`). Listens on 127.0.0.1:9876
//! unless `listenPort` / `bindAddress` say otherwise.

use anyhow::{bail, Context, Result};
use clap::Parser;
use keel_core::config::{closest, parse_properties};
use keel_core::namesrv::{NameServer, NamesrvConfig};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "namesrv", about = "Keel name server (RocketMQ-compatible)")]
struct Args {
    /// namesrv.properties file.
    #[arg(short = 'c', long = "configFile")]
    config: Option<PathBuf>,
    /// Print every config item and exit.
    #[arg(short = 'p', long = "printConfigItem")]
    print: bool,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let args = Args::parse();
    let mut cfg = NamesrvConfig::default();
    if let Some(path) = &args.config {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        for e in parse_properties(&text) {
            match cfg.set(&e.key, &e.value) {
                Ok(true) => {}
                Ok(false) => {
                    let hint = closest(&e.key, NamesrvConfig::KEYS.iter().copied())
                        .map(|k| format!(" (did you mean {k}?)"))
                        .unwrap_or_default();
                    tracing::warn!("{}:{}: unknown key {}{hint}; ignored", path.display(), e.line, e.key);
                }
                Err(m) => bail!("{}:{}: {m}", path.display(), e.line),
            }
        }
    }
    if args.print {
        println!("listenAddr={}", cfg.listen_addr);
        println!("scanNotActiveBrokerInterval={}", cfg.scan_interval.as_millis());
        println!("brokerChannelExpiredTime={}", cfg.broker_expire.as_millis());
        return Ok(());
    }
    let rt = keel::runtime()?;
    rt.block_on(async {
        let ns = NameServer::start(cfg.clone()).await.with_context(|| format!("listening on {}", cfg.listen_addr))?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        ns.shutdown().await;
        Ok(())
    })
}
