//! Scenario files: an outage drill in TOML — the cluster, the workload, faults at times (or a
//! nemesis that draws them from the seed) and what the checker must find.
//!
//! ```toml
//! description = "broker-a crashes for 20 s while broker-b keeps serving"
//! [cluster]
//! conf = "conf/2m-noslave"          # or [[cluster.broker]] entries
//! [workload]
//! messages = 400
//! rate = 20
//! [[fault]]
//! at = "10s"
//! kind = "crash"
//! target = "broker-a"
//! duration = "20s"
//! [expect]
//! lost = 0
//! duplicated = "<= 5"
//! ```
//!
//! Unknown keys and bad values are errors naming the file, the line and the key.

use serde::de::{self, Deserializer};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// A duration written as "10s", "250ms", "2m" or "1.5s".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

impl Dur {
    pub fn parse(s: &str) -> Result<Dur, String> {
        let s = s.trim();
        let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: f64 = num.parse().map_err(|_| format!("'{s}' is not a duration (e.g. \"10s\", \"250ms\", \"2m\")"))?;
        let ms = match unit.trim() {
            "ms" => n,
            "s" => n * 1000.0,
            "m" | "min" => n * 60_000.0,
            "h" => n * 3_600_000.0,
            _ => return Err(format!("'{s}' has no known unit (ms, s, m, h)")),
        };
        Ok(Dur(Duration::from_millis(ms.round() as u64)))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
        let s = String::deserialize(d)?;
        Dur::parse(&s).map_err(de::Error::custom)
    }
}

/// A bound on a checker count: `5` (at most 5), `"<= 5"`, `"== 0"`, `">= 1"`, `"any"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    AtMost(u64),
    Exactly(u64),
    AtLeast(u64),
    Any,
}

impl Bound {
    pub fn holds(self, n: u64) -> bool {
        match self {
            Bound::AtMost(m) => n <= m,
            Bound::Exactly(m) => n == m,
            Bound::AtLeast(m) => n >= m,
            Bound::Any => true,
        }
    }

    fn parse(s: &str) -> Result<Bound, String> {
        let s = s.trim();
        if s == "any" {
            return Ok(Bound::Any);
        }
        let (ctor, rest): (fn(u64) -> Bound, &str) = if let Some(r) = s.strip_prefix("<=") {
            (Bound::AtMost, r)
        } else if let Some(r) = s.strip_prefix(">=") {
            (Bound::AtLeast, r)
        } else if let Some(r) = s.strip_prefix("==") {
            (Bound::Exactly, r)
        } else {
            (Bound::AtMost, s)
        };
        rest.trim()
            .parse()
            .map(ctor)
            .map_err(|_| format!("'{s}' is not a bound (5, \"<= 5\", \"== 0\", \">= 1\", \"any\")"))
    }
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bound::AtMost(n) => write!(f, "<= {n}"),
            Bound::Exactly(n) => write!(f, "== {n}"),
            Bound::AtLeast(n) => write!(f, ">= {n}"),
            Bound::Any => write!(f, "any"),
        }
    }
}

impl<'de> Deserialize<'de> for Bound {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Bound, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Bound;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a count bound: 5, \"<= 5\", \"== 0\", \">= 1\" or \"any\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Bound, E> {
                u64::try_from(v).map(Bound::AtMost).map_err(|_| E::custom("a bound cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Bound, E> {
                Bound::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// Process crash; restarted after `duration` (written bytes survive).
    Crash,
    /// The machine is gone for good: killed, never restarted, its disk never read again.
    Kill,
    /// Power loss; restarted after `duration` (only synced bytes survive, last page torn).
    PowerLoss,
    /// The whole process stalls for `duration`.
    Pause,
    /// Graceful shutdown (ctrl-c); started again after `duration`.
    Stop,
    /// `groups` cannot reach each other for `duration`.
    Partition,
    /// Messages from `target` to `to` are held for `duration` (one way).
    Clog,
    /// `target` can reach no one and no one reaches it, for `duration`.
    Isolate,
    /// Every link gets `latency` more delay for `duration`.
    Latency,
    /// Every packet is lost with probability `rate` (TCP retransmits: it arrives late).
    Loss,
    /// Every disk call of `target` waits until `duration` has passed.
    DiskStall,
    /// Every disk call of `target` takes `latency` longer, for `duration`.
    DiskSlow,
    /// Every sync of `target`'s disk takes `latency` longer, for `duration` (a device slow to
    /// flush while writes into the page cache stay fast).
    DiskSlowSync,
    /// `target`'s disk has no free space, for `duration`.
    DiskFull,
    /// Every disk call of `target` fails with EIO, for `duration`.
    DiskEio,
    /// `count` random bits of `target`'s newest commitlog bytes are flipped (media corruption).
    BitFlip,
}

impl FaultKind {
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Crash => "crash",
            FaultKind::Kill => "kill",
            FaultKind::PowerLoss => "power_loss",
            FaultKind::Pause => "pause",
            FaultKind::Stop => "stop",
            FaultKind::Partition => "partition",
            FaultKind::Clog => "clog",
            FaultKind::Isolate => "isolate",
            FaultKind::Latency => "latency",
            FaultKind::Loss => "loss",
            FaultKind::DiskStall => "disk_stall",
            FaultKind::DiskSlow => "disk_slow",
            FaultKind::DiskSlowSync => "disk_slow_sync",
            FaultKind::DiskFull => "disk_full",
            FaultKind::DiskEio => "disk_eio",
            FaultKind::BitFlip => "bit_flip",
        }
    }

    /// Faults that act on one node's disk (the target must be a broker).
    pub fn is_disk(self) -> bool {
        matches!(
            self,
            FaultKind::DiskStall
                | FaultKind::DiskSlow
                | FaultKind::DiskSlowSync
                | FaultKind::DiskFull
                | FaultKind::DiskEio
                | FaultKind::BitFlip
        )
    }

    /// Faults that need a target node.
    pub fn needs_target(self) -> bool {
        !matches!(self, FaultKind::Partition | FaultKind::Latency | FaultKind::Loss)
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    pub at: Dur,
    pub kind: FaultKind,
    pub target: Option<Spanned<String>>,
    /// Clog: the receiving end.
    pub to: Option<Spanned<String>>,
    /// Partition: the sides.
    #[serde(default)]
    pub groups: Vec<Vec<Spanned<String>>>,
    /// How long the fault lasts (then healed, restarted or resumed). Absent: until the heal
    /// after the workload (`kill` never ends).
    pub duration: Option<Dur>,
    pub latency: Option<Dur>,
    pub rate: Option<f64>,
    pub count: Option<u32>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nemesis {
    /// Fault kinds to draw from.
    pub kinds: Vec<FaultKind>,
    /// Nodes the faults may hit (default: every broker).
    #[serde(default)]
    pub targets: Vec<Spanned<String>>,
    /// How many faults (the budget).
    pub count: u32,
    /// Faults start in [from, until).
    pub from: Dur,
    pub until: Dur,
    #[serde(default = "default_min_fault")]
    pub min_duration: Dur,
    #[serde(default = "default_max_fault")]
    pub max_duration: Dur,
}

fn default_min_fault() -> Dur {
    Dur(Duration::from_secs(1))
}
fn default_max_fault() -> Dur {
    Dur(Duration::from_secs(15))
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSpec {
    /// Node name and brokerName.
    pub name: String,
    #[serde(default = "default_role")]
    pub role: String,
    #[serde(default = "default_flush")]
    pub flush: String,
    #[serde(default)]
    pub id: u64,
    /// Any other broker.properties keys.
    #[serde(default)]
    pub properties: BTreeMap<String, toml::Value>,
}

fn default_role() -> String {
    "ASYNC_MASTER".into()
}
fn default_flush() -> String {
    "ASYNC_FLUSH".into()
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// A directory of broker `.properties` files (relative to the workspace root), each one
    /// broker node named after its file.
    pub conf: Option<String>,
    #[serde(default, rename = "broker")]
    pub brokers: Vec<BrokerSpec>,
    #[serde(default = "one")]
    pub namesrvs: u32,
    /// broker.properties keys applied to every broker (after its own file).
    #[serde(default)]
    pub properties: BTreeMap<String, toml::Value>,
}

fn one() -> u32 {
    1
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    #[serde(default = "default_topic")]
    pub topic: String,
    /// Write/read queues per broker.
    #[serde(default = "default_queues")]
    pub queues: u32,
    #[serde(default = "one")]
    pub producers: u32,
    #[serde(default = "one")]
    pub consumers: u32,
    #[serde(default = "default_group")]
    pub group: String,
    /// Messages per producer.
    pub messages: u64,
    /// Sends started per second per producer.
    pub rate: u32,
    /// Body bytes.
    #[serde(default = "default_body")]
    pub body: usize,
    /// Producers start after this (the cluster boots first).
    #[serde(default = "default_start")]
    pub start: Dur,
    #[serde(default = "default_send_timeout")]
    pub send_timeout: Dur,
    /// retryTimesWhenSendFailed.
    #[serde(default = "default_retries")]
    pub retries: u32,
}

fn default_topic() -> String {
    "SimTopic".into()
}
fn default_queues() -> u32 {
    4
}
fn default_group() -> String {
    "sim_consumer".into()
}
fn default_body() -> usize {
    48
}
fn default_start() -> Dur {
    Dur(Duration::from_secs(2))
}
fn default_send_timeout() -> Dur {
    Dur(Duration::from_secs(3))
}
fn default_retries() -> u32 {
    2
}

/// What the checker must find; a count without a bound here must be 0, except the
/// informational ones (`recovered`, `indeterminate`, `lost_unsynced`, `lost_corrupt`,
/// `duplicated`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub lost: Option<Bound>,
    pub lost_unsynced: Option<Bound>,
    /// Acked messages only a master held, not yet on its slave, when the master was killed
    /// for good (the loss ASYNC_MASTER allows).
    pub lost_unreplicated: Option<Bound>,
    /// Acked messages whose record a bit flip corrupted (never served, so never delivered).
    pub lost_corrupt: Option<Bound>,
    pub recovered: Option<Bound>,
    pub indeterminate: Option<Bound>,
    pub duplicated: Option<Bound>,
    pub duplicated_retry: Option<Bound>,
    pub duplicated_redelivery: Option<Bound>,
    pub order: Option<Bound>,
    pub offsets_back: Option<Bound>,
    pub late: Option<Bound>,
    /// SEND_OK answers to sends started while a fault was active (the rest of the cluster
    /// kept serving).
    pub ok_during_faults: Option<Bound>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    description: String,
    #[serde(default = "default_seeds")]
    seeds: u64,
    #[serde(default = "one64")]
    snapshot_seed: u64,
    /// Seeds that once found a bug: run with the others (unless one seed is asked for).
    #[serde(default)]
    regression_seeds: Vec<u64>,
    /// After the last fault heals, every acked message must be delivered within this.
    #[serde(default = "default_liveness")]
    liveness: Dur,
    cluster: ClusterSpec,
    workload: Workload,
    #[serde(default, rename = "fault")]
    faults: Vec<FaultSpec>,
    nemesis: Option<Nemesis>,
    #[serde(default)]
    expect: Expect,
}

fn default_seeds() -> u64 {
    3
}
fn one64() -> u64 {
    1
}
fn default_liveness() -> Dur {
    Dur(Duration::from_secs(60))
}

/// One broker node as the harness boots it: its name and broker.properties text.
#[derive(Clone, Debug)]
pub struct BrokerNode {
    pub name: String,
    /// Where the properties came from (a file path, or the scenario for inline brokers).
    pub source: String,
    pub properties: String,
}

#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: String,
    pub path: PathBuf,
    pub description: String,
    pub seeds: u64,
    pub snapshot_seed: u64,
    /// Seeds that once found a bug, run besides `seeds`.
    pub regression_seeds: Vec<u64>,
    pub liveness: Dur,
    pub namesrvs: u32,
    pub brokers: Vec<BrokerNode>,
    pub workload: Workload,
    pub faults: Vec<FaultSpec>,
    pub nemesis: Option<Nemesis>,
    pub expect: Expect,
}

/// An error in a scenario file, naming the file and (where known) line and key.
#[derive(Debug)]
pub struct ScenarioError(pub String);

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ScenarioError {}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|b| *b == b'\n').count() + 1
}

fn value_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Scenario {
    /// Reads a scenario; `root` is the workspace root that `cluster.conf` is relative to.
    pub fn load(path: &Path, root: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ScenarioError(format!("{}: cannot read: {e}", path.display())))?;
        Scenario::parse(&text, path, root)
    }

    pub fn parse(text: &str, path: &Path, root: &Path) -> Result<Scenario, ScenarioError> {
        let file_name = path.display().to_string();
        // toml's message gives the line and column and quotes the offending line with its key.
        let f: File =
            toml::from_str(text).map_err(|e| ScenarioError(format!("{file_name}: {}", e.to_string().trim_end())))?;
        let at = |span: std::ops::Range<usize>| format!("{file_name}: line {}", line_of(text, span.start));
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();

        let mut brokers = Vec::new();
        if let Some(conf) = &f.cluster.conf {
            let dir = root.join(conf);
            let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
                .map_err(|e| ScenarioError(format!("{file_name}: cluster.conf: cannot read {}: {e}", dir.display())))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "properties"))
                .collect();
            files.sort();
            if files.is_empty() {
                return Err(ScenarioError(format!(
                    "{file_name}: cluster.conf: no .properties files in {}",
                    dir.display()
                )));
            }
            for p in files {
                let properties = std::fs::read_to_string(&p)
                    .map_err(|e| ScenarioError(format!("{file_name}: cluster.conf: {}: {e}", p.display())))?;
                let name = p.file_stem().unwrap().to_string_lossy().into_owned();
                brokers.push(BrokerNode {
                    name,
                    source: format!("{conf}/{}", p.file_name().unwrap().to_string_lossy()),
                    properties,
                });
            }
        }
        for b in &f.cluster.brokers {
            let mut props = format!(
                "brokerClusterName=DefaultCluster\nbrokerName={}\nbrokerId={}\nbrokerRole={}\nflushDiskType={}\n",
                b.name, b.id, b.role, b.flush
            );
            for (k, v) in &b.properties {
                props.push_str(&format!("{k}={}\n", value_text(v)));
            }
            brokers.push(BrokerNode {
                name: b.name.clone(),
                source: format!("{file_name} [[cluster.broker]] {}", b.name),
                properties: props,
            });
        }
        if brokers.is_empty() {
            return Err(ScenarioError(format!(
                "{file_name}: cluster: no brokers (set conf or add [[cluster.broker]])"
            )));
        }
        for b in &mut brokers {
            for (k, v) in &f.cluster.properties {
                b.properties.push_str(&format!("\n{k}={}\n", value_text(v)));
            }
            // Every key and value must be one the broker takes, as it would at boot.
            let (_, warnings) = keel_core::config::broker::BrokerConfig::from_properties(&b.properties, &b.source)
                .map_err(|e| ScenarioError(format!("{file_name}: broker {}: {e}", b.name)))?;
            if let Some(w) = warnings.first() {
                return Err(ScenarioError(format!("{file_name}: broker {}: {w}", b.name)));
            }
        }

        let mut nodes: Vec<String> = (1..=f.cluster.namesrvs).map(|i| format!("namesrv-{i}")).collect();
        nodes.extend(brokers.iter().map(|b| b.name.clone()));
        nodes.extend((1..=f.workload.producers).map(|i| format!("producer-{i}")));
        nodes.extend((1..=f.workload.consumers).map(|i| format!("consumer-{i}")));
        let broker_names: Vec<&str> = brokers.iter().map(|b| b.name.as_str()).collect();
        let check_node = |s: &Spanned<String>, key: &str, broker_only: bool| -> Result<(), ScenarioError> {
            let ok =
                if broker_only { broker_names.contains(&s.get_ref().as_str()) } else { nodes.contains(s.get_ref()) };
            if ok {
                Ok(())
            } else {
                let pool = if broker_only { broker_names.join(", ") } else { nodes.join(", ") };
                Err(ScenarioError(format!(
                    "{}: {key} = \"{}\" is not a {} (known: {pool})",
                    at(s.span()),
                    s.get_ref(),
                    if broker_only { "broker" } else { "node" }
                )))
            }
        };
        for (i, fs) in f.faults.iter().enumerate() {
            let key = format!("fault[{i}] ({})", fs.kind.name());
            match (&fs.target, fs.kind.needs_target()) {
                (Some(t), true) => check_node(t, &format!("{key}.target"), fs.kind.is_disk())?,
                (None, true) => return Err(ScenarioError(format!("{file_name}: {key}: target is required"))),
                (Some(t), false) => {
                    return Err(ScenarioError(format!(
                        "{}: {key}.target: {} takes no target",
                        at(t.span()),
                        fs.kind.name()
                    )))
                }
                (None, false) => {}
            }
            match fs.kind {
                FaultKind::Clog => match &fs.to {
                    Some(t) => check_node(t, &format!("{key}.to"), false)?,
                    None => return Err(ScenarioError(format!("{file_name}: {key}: clog needs `to`"))),
                },
                FaultKind::Partition => {
                    if fs.groups.len() < 2 {
                        return Err(ScenarioError(format!(
                            "{file_name}: {key}.groups: a partition needs at least two groups"
                        )));
                    }
                    for g in &fs.groups {
                        for n in g {
                            check_node(n, &format!("{key}.groups"), false)?;
                        }
                    }
                }
                FaultKind::Latency | FaultKind::DiskSlow | FaultKind::DiskSlowSync if fs.latency.is_none() => {
                    return Err(ScenarioError(format!("{file_name}: {key}: latency is required")))
                }
                FaultKind::Loss if !fs.rate.is_some_and(|r| (0.0..1.0).contains(&r)) => {
                    return Err(ScenarioError(format!("{file_name}: {key}.rate: a loss rate in [0, 1) is required")))
                }
                _ => {}
            }
        }
        if let Some(n) = &f.nemesis {
            for t in &n.targets {
                check_node(t, "nemesis.targets", false)?;
            }
            if n.until <= n.from || n.min_duration > n.max_duration || n.kinds.is_empty() {
                return Err(ScenarioError(format!(
                    "{file_name}: nemesis: needs from < until, min_duration <= max_duration and at least one kind"
                )));
            }
            if let Some(k) = n.kinds.iter().find(|k| matches!(k, FaultKind::Partition | FaultKind::Clog)) {
                return Err(ScenarioError(format!(
                    "{file_name}: nemesis.kinds: {} is not drawn by the nemesis (use isolate)",
                    k.name()
                )));
            }
        }
        let w = &f.workload;
        if w.rate == 0 || w.messages == 0 || w.queues == 0 {
            return Err(ScenarioError(format!("{file_name}: workload: messages, rate and queues must be > 0")));
        }
        Ok(Scenario {
            name,
            path: path.to_path_buf(),
            description: f.description,
            seeds: f.seeds,
            snapshot_seed: f.snapshot_seed,
            regression_seeds: f.regression_seeds,
            liveness: f.liveness,
            namesrvs: f.cluster.namesrvs,
            brokers,
            workload: f.workload,
            faults: f.faults,
            nemesis: f.nemesis,
            expect: f.expect,
        })
    }

    /// When producers have started every send (the faults' "end of the workload").
    pub fn workload_end(&self) -> Duration {
        let w = &self.workload;
        w.start.0 + Duration::from_millis(w.messages * 1000 / w.rate as u64)
    }
}

/// Every scenario file in a directory, sorted by name.
pub fn scenario_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    v.sort();
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        Scenario::parse(text, Path::new("scenarios/x.toml"), Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap())
    }

    const OK: &str = r#"
description = "d"
[cluster]
[[cluster.broker]]
name = "broker-a"
flush = "SYNC_FLUSH"
[workload]
messages = 10
rate = 5
[[fault]]
at = "3s"
kind = "crash"
target = "broker-a"
duration = "1.5s"
[expect]
lost = 0
duplicated = "<= 5"
recovered = "any"
"#;

    #[test]
    fn parses_a_scenario() {
        let s = parse(OK).unwrap();
        assert_eq!(s.name, "x");
        assert_eq!(s.brokers.len(), 1);
        assert!(s.brokers[0].properties.contains("flushDiskType=SYNC_FLUSH"));
        assert_eq!(s.faults[0].duration, Some(Dur(Duration::from_millis(1500))));
        assert_eq!(s.expect.lost, Some(Bound::AtMost(0)));
        assert_eq!(s.expect.duplicated, Some(Bound::AtMost(5)));
        assert_eq!(s.expect.recovered, Some(Bound::Any));
        assert_eq!(s.workload_end(), Duration::from_secs(4));
    }

    #[test]
    fn conf_directory_gives_one_broker_per_file() {
        let s = parse(&OK.replace(
            "[cluster]\n[[cluster.broker]]\nname = \"broker-a\"\nflush = \"SYNC_FLUSH\"",
            "[cluster]\nconf = \"conf/2m-noslave\"",
        ))
        .unwrap();
        let names: Vec<&str> = s.brokers.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["broker-a", "broker-b"]);
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = parse(&OK.replace("rate = 5", "rate = 5\nrat = 3")).unwrap_err().0;
        assert!(e.starts_with("scenarios/x.toml: TOML parse error at line 10"), "{e}");
        assert!(e.contains("unknown field `rat`"), "{e}");
    }

    #[test]
    fn bad_values_name_file_line_and_key() {
        let e = parse(&OK.replace("at = \"3s\"", "at = \"3x\"")).unwrap_err().0;
        assert!(
            e.starts_with("scenarios/x.toml: TOML parse error at line 11")
                && e.contains("at = \"3x\"")
                && e.contains("no known unit"),
            "{e}"
        );
        let e = parse(&OK.replace("lost = 0", "lost = \"<= many\"")).unwrap_err().0;
        assert!(e.contains("line 16") && e.contains("lost = \"<= many\""), "{e}");
        let e = parse(&OK.replace("target = \"broker-a\"", "target = \"broker-z\"")).unwrap_err().0;
        assert!(
            e.starts_with("scenarios/x.toml: line 13")
                && e.contains("fault[0] (crash).target")
                && e.contains("broker-z")
                && e.contains("broker-a"),
            "{e}"
        );
        let e = parse(&OK.replace("flush = \"SYNC_FLUSH\"", "flush = \"SOMETIMES\"")).unwrap_err().0;
        assert!(e.contains("flushDiskType") && e.contains("SOMETIMES"), "{e}");
        let e = parse(&OK.replace("kind = \"crash\"", "kind = \"meteor\"")).unwrap_err().0;
        assert!(e.contains("line 12") && e.contains("meteor"), "{e}");
    }

    #[test]
    fn durations_and_bounds() {
        assert_eq!(Dur::parse("250ms").unwrap().0, Duration::from_millis(250));
        assert_eq!(Dur::parse("2m").unwrap().0, Duration::from_secs(120));
        assert!(Dur::parse("10").is_err());
        assert!(Bound::parse(">= 2").unwrap().holds(2) && !Bound::parse(">= 2").unwrap().holds(1));
        assert!(!Bound::parse("== 0").unwrap().holds(1));
    }
}
