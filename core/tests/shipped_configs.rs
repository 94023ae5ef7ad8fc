//! Every `.properties` file under `conf/` parses with no unknown keys and a valid combination.

use keel_core::config::broker::BrokerConfig;
use std::path::Path;

#[test]
fn shipped_broker_configs_parse_cleanly() {
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf");
    let mut files = vec![conf.join("broker.conf")];
    for e in std::fs::read_dir(conf.join("2m-noslave")).unwrap() {
        files.push(e.unwrap().path());
    }
    files.sort();
    let mut ports = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let (cfg, warnings) = BrokerConfig::from_properties(&text, &f.display().to_string()).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(cfg.broker_ip1, "127.0.0.1", "{} advertises loopback only", f.display());
        if f.starts_with(conf.join("2m-noslave")) {
            ports.push(cfg.listen_port);
        }
    }
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 2, "the 2m-noslave brokers use different ports");
}
