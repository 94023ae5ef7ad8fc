//! Every `.properties` file under `conf/` parses with no unknown keys and a valid combination,
//! and each multi-broker set runs on one machine: distinct ports (HA ports included) and
//! store directories; 2m-2s sets pair every master with a slave of the same brokerName.

use keel_core::config::broker::{BrokerConfig, BrokerRole};
use std::collections::BTreeSet;
use std::path::Path;

fn load(f: &Path) -> BrokerConfig {
    let text = std::fs::read_to_string(f).unwrap();
    let (cfg, warnings) = BrokerConfig::from_properties(&text, &f.display().to_string()).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(cfg.broker_ip1, "127.0.0.1", "{} advertises loopback only", f.display());
    cfg
}

#[test]
fn shipped_broker_configs_parse_cleanly() {
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf");
    load(&conf.join("broker.conf"));
    for (set, brokers, master_role) in [
        ("2m-noslave", 2, BrokerRole::AsyncMaster),
        ("2m-2s-async", 4, BrokerRole::AsyncMaster),
        ("2m-2s-sync", 4, BrokerRole::SyncMaster),
    ] {
        let mut files: Vec<_> = std::fs::read_dir(conf.join(set)).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        assert_eq!(files.len(), brokers, "{set}");
        let cfgs: Vec<BrokerConfig> = files.iter().map(|f| load(f)).collect();
        let mut ports = BTreeSet::new();
        let mut stores = BTreeSet::new();
        for c in &cfgs {
            assert!(ports.insert(c.listen_port), "{set}: port {} twice", c.listen_port);
            if c.broker_role != BrokerRole::Slave {
                assert!(ports.insert(c.ha_port()), "{set}: HA port {} taken", c.ha_port());
                assert_eq!(c.broker_role, master_role, "{set}");
            }
            assert!(stores.insert(c.store.store_path_root_dir.clone()), "{set}: one store shared");
        }
        let names: BTreeSet<&str> = cfgs.iter().map(|c| c.broker_name.as_str()).collect();
        for n in names {
            let ids: BTreeSet<u64> = cfgs.iter().filter(|c| c.broker_name == n).map(|c| c.broker_id).collect();
            let want: BTreeSet<u64> = if brokers == 4 { [0, 1].into() } else { [0].into() };
            assert_eq!(ids, want, "{set}: {n}");
        }
    }
}
