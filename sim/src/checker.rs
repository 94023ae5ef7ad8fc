//! The history of a run and the checker that judges it, in Jepsen's vocabulary.
//!
//! The history is every client-visible event with its simulated time: a send invoked, its
//! answer (status, queue, offset) or failure, a delivery, a committed offset, and the
//! harness's own notes (faults, boots). It renders as the delivery log — canonical text, no
//! wall times or ports — and the checker turns it into counts:
//!
//! - `lost`: SEND_OK, never delivered, and not explained by a power loss of unsynced bytes;
//! - `lost_unsynced`: SEND_OK, never delivered, and its bytes were not durable when its
//!   broker lost power (the loss the ASYNC_FLUSH mode allows), listed one by one;
//! - `lost_unreplicated`: SEND_OK, never delivered, and only its master held it (its slave
//!   had not copied it yet) when the master was killed for good (the loss ASYNC_MASTER
//!   allows), listed one by one;
//! - `lost_corrupt`: SEND_OK, never delivered, and a bit flip hit its commitlog record (the
//!   store never serves a record that fails its CRC), listed one by one;
//! - `recovered`: an indeterminate send (failed, timed out, no answer, or a non-OK status)
//!   that was delivered; `indeterminate`: one that was not;
//! - `duplicated`: delivered more than once, split by cause: `duplicated_retry` (the
//!   producer's retry stored it twice: two positions) and `duplicated_redelivery` (one
//!   position delivered again: an uncommitted offset at a crash or rebalance);
//! - `unexpected`: a delivery never sent or with a corrupt body (always 0);
//! - `inconsistent`: one queue offset seen with two bodies (always 0), unless all but one of
//!   them were lost with an unsynced tail (the offset was legitimately given out again);
//! - `order`: a send answered before another started got the later offset, or a consumer
//!   moved back in a queue to something never delivered before (skipped, then delivered);
//! - `offsets_back`: a committed offset lower than one committed before for that queue;
//! - `late`: delivered, but later than the liveness bound after the last fault healed.

use crate::scenario::{Bound, Expect};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Harness notes: boots, faults, heals.
    Note(String),
    Invoke {
        id: String,
    },
    Ok {
        id: String,
        status: String,
        broker: String,
        queue: i32,
        offset: i64,
    },
    Fail {
        id: String,
        timeout: bool,
        error: String,
    },
    Deliver {
        id: Option<String>,
        broker: String,
        queue: i32,
        offset: i64,
        valid: bool,
    },
    Commit {
        broker: String,
        queue: i32,
        offset: i64,
    },
}

#[derive(Clone, Debug)]
pub struct Record {
    pub t_ms: u64,
    pub node: String,
    pub event: Event,
}

/// Everything a run saw.
#[derive(Clone, Debug, Default)]
pub struct History {
    pub records: Vec<Record>,
    /// Acked messages whose bytes were not durable when their broker lost power, with why.
    pub unsynced: BTreeMap<String, String>,
    /// Stored copies, acked or not, that were in a broker's unsynced tail when it lost
    /// power: (broker, queue, queue offset, id). Their offsets may be given out again.
    pub lost_copies: BTreeSet<(String, i32, i64, String)>,
    /// Acked messages not yet on any slave when their master was killed for good, with why.
    pub unreplicated: BTreeMap<String, String>,
    /// Acked messages whose commitlog record was corrupted on the media (a bit flip), with
    /// where: the store refuses to serve them, so they are lost, and reported apart.
    pub corrupt: BTreeMap<String, String>,
    /// [start, end) of every fault, ms.
    pub fault_windows: Vec<(u64, u64)>,
    /// When the last fault healed, ms.
    pub healed_ms: u64,
}

impl History {
    /// Whether this copy of `id` at (broker, queue, offset) was lost with an unsynced tail,
    /// so its offset may have been given out again.
    fn copy_lost(&self, broker: &str, queue: i32, offset: i64, id: &str) -> bool {
        self.unsynced.contains_key(id)
            || self.lost_copies.contains(&(broker.to_string(), queue, offset, id.to_string()))
    }
}

fn ts(ms: u64) -> String {
    format!("{:>4}.{:03}", ms / 1000, ms % 1000)
}

impl History {
    pub fn push(&mut self, t_ms: u64, node: &str, event: Event) {
        self.records.push(Record { t_ms, node: node.to_string(), event });
    }

    /// The delivery log: one line per event, by simulated time. Events of one node within
    /// the same millisecond keep their order; across nodes they are sorted by node name, so
    /// the log is canonical (tasks woken in the same instant may run in either order
    /// without changing what happened).
    pub fn render(&self) -> String {
        let mut lines: Vec<(u64, &str, usize, String)> =
            self.records.iter().enumerate().map(|(i, r)| (r.t_ms, r.node.as_str(), i, Self::line(r))).collect();
        lines.sort_by(|a, b| (a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)));
        // Within one node and millisecond, order by text too: sends answered in the same
        // instant by different tasks are not ordered by anything real.
        let mut out = String::new();
        let mut i = 0;
        while i < lines.len() {
            let j =
                (i..lines.len()).find(|&j| lines[j].0 != lines[i].0 || lines[j].1 != lines[i].1).unwrap_or(lines.len());
            let mut group: Vec<&(u64, &str, usize, String)> = lines[i..j].iter().collect();
            // Deliveries keep their order (it is what the consumer saw); answers are sorted.
            if group.iter().all(|l| !l.3.starts_with("deliver")) {
                group.sort_by(|a, b| a.3.cmp(&b.3));
            }
            for l in group {
                let _ = writeln!(out, "{} {:<11} {}", ts(l.0), l.1, l.3);
            }
            i = j;
        }
        out
    }

    fn line(r: &Record) -> String {
        match &r.event {
            Event::Note(s) => s.clone(),
            Event::Invoke { id } => format!("invoke {id}"),
            Event::Ok { id, status, broker, queue, offset } => format!("ok {id} {status} {broker}:{queue}@{offset}"),
            Event::Fail { id, timeout: true, .. } => format!("timeout {id}"),
            Event::Fail { id, error, .. } => format!("fail {id} {error}"),
            Event::Deliver { id, broker, queue, offset, valid } => format!(
                "deliver {} {broker}:{queue}@{offset}{}",
                id.as_deref().unwrap_or("?"),
                if *valid { "" } else { " CORRUPT" }
            ),
            Event::Commit { broker, queue, offset } => format!("commit {broker}:{queue} {offset}"),
        }
    }
}

/// The checker's findings.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub counts: BTreeMap<&'static str, u64>,
    /// Per category, the first few cases, for the failure message.
    pub details: BTreeMap<&'static str, Vec<String>>,
}

/// Counts whose default bound is 0 (a scenario can relax them); the rest are informational
/// unless the scenario bounds them. `unexpected` and `inconsistent` are always 0.
const STRICT: [&str; 4] = ["lost", "order", "offsets_back", "late"];
const ALWAYS_ZERO: [&str; 2] = ["unexpected", "inconsistent"];
pub const ORDER: [&str; 19] = [
    "sent",
    "acked",
    "delivered",
    "lost",
    "lost_unsynced",
    "lost_unreplicated",
    "lost_corrupt",
    "recovered",
    "indeterminate",
    "duplicated",
    "duplicated_retry",
    "duplicated_redelivery",
    "unexpected",
    "inconsistent",
    "order",
    "offsets_back",
    "late",
    "ok_during_faults",
    "commits",
];

const DETAIL_MAX: usize = 8;

impl Report {
    fn add(&mut self, key: &'static str, detail: impl FnOnce() -> String) {
        *self.counts.entry(key).or_default() += 1;
        let d = self.details.entry(key).or_default();
        if d.len() < DETAIL_MAX {
            d.push(detail());
        }
    }

    pub fn get(&self, key: &str) -> u64 {
        self.counts.get(key).copied().unwrap_or(0)
    }

    /// The scenario's bound for one count.
    pub fn bound(expect: &Expect, key: &str) -> Bound {
        let set = match key {
            "lost" => expect.lost,
            "lost_unsynced" => expect.lost_unsynced,
            "lost_unreplicated" => expect.lost_unreplicated,
            "lost_corrupt" => expect.lost_corrupt,
            "recovered" => expect.recovered,
            "indeterminate" => expect.indeterminate,
            "duplicated" => expect.duplicated,
            "duplicated_retry" => expect.duplicated_retry,
            "duplicated_redelivery" => expect.duplicated_redelivery,
            "order" => expect.order,
            "offsets_back" => expect.offsets_back,
            "late" => expect.late,
            "ok_during_faults" => expect.ok_during_faults,
            _ => None,
        };
        if ALWAYS_ZERO.contains(&key) {
            return Bound::Exactly(0);
        }
        set.unwrap_or(if STRICT.contains(&key) { Bound::Exactly(0) } else { Bound::Any })
    }

    /// Checks that failed: "lost = 3 (expected == 0): p1-4 ..., ...".
    pub fn violations(&self, expect: &Expect) -> Vec<String> {
        ORDER
            .iter()
            .filter_map(|k| {
                let n = self.get(k);
                let b = Self::bound(expect, k);
                (!b.holds(n)).then(|| {
                    let d = self.details.get(k).map(|d| d.join("; ")).unwrap_or_default();
                    format!("{k} = {n} (expected {b}){}{d}", if d.is_empty() { "" } else { ": " })
                })
            })
            .collect()
    }

    /// The checker's table.
    pub fn table(&self, expect: &Expect) -> String {
        let mut out = String::from("| check | count | expected | |\n| --- | ---: | --- | --- |\n");
        for k in ORDER {
            let n = self.get(k);
            let b = Self::bound(expect, k);
            let mark = if b == Bound::Any {
                ""
            } else if b.holds(n) {
                "ok"
            } else {
                "FAIL"
            };
            let _ = writeln!(out, "| {k} | {n} | {b} | {mark} |");
        }
        for (k, d) in &self.details {
            if !d.is_empty() {
                let _ = writeln!(out, "{k}: {}", d.join("; "));
            }
        }
        out
    }
}

type Pos = (String, i32, i64);

/// Judges a history; `liveness_ms` bounds delivery after the last heal.
pub fn check(h: &History, liveness_ms: u64) -> Report {
    let mut r = Report::default();
    let mut invoked: BTreeMap<&str, (u64, &str)> = BTreeMap::new();
    let mut answered: BTreeMap<&str, (u64, &Event)> = BTreeMap::new();
    let mut delivered: BTreeMap<&str, Vec<(u64, Pos)>> = BTreeMap::new();
    let mut at_pos: BTreeMap<Pos, BTreeSet<&str>> = BTreeMap::new();
    let mut commits: BTreeMap<(&str, i32), i64> = BTreeMap::new();
    // Consumer side order: per (consumer, queue), the last offset delivered.
    let mut cursor: BTreeMap<(&str, &str, i32), i64> = BTreeMap::new();
    let mut ever: BTreeSet<Pos> = BTreeSet::new();

    for rec in &h.records {
        match &rec.event {
            Event::Invoke { id } => {
                invoked.insert(id, (rec.t_ms, &rec.node));
                *r.counts.entry("sent").or_default() += 1;
            }
            Event::Ok { id, .. } | Event::Fail { id, .. } => {
                answered.insert(id, (rec.t_ms, &rec.event));
            }
            Event::Deliver { id, broker, queue, offset, valid } => {
                let pos = (broker.clone(), *queue, *offset);
                let known = id.as_deref().filter(|i| *valid && invoked.contains_key(i));
                let Some(id) = known else {
                    r.add("unexpected", || {
                        format!("{} {broker}:{queue}@{offset} at {}", id.as_deref().unwrap_or("?"), ts(rec.t_ms))
                    });
                    continue;
                };
                let key = (rec.node.as_str(), broker.as_str(), *queue);
                if let Some(last) = cursor.get(&key) {
                    if *offset < *last && !ever.contains(&pos) {
                        r.add("order", || {
                            format!("{} went back from {broker}:{queue}@{last} to undelivered @{offset}", rec.node)
                        });
                    }
                }
                cursor.insert(key, *offset);
                ever.insert(pos.clone());
                delivered.entry(id).or_default().push((rec.t_ms, pos.clone()));
                at_pos.entry(pos).or_default().insert(id);
            }
            Event::Commit { broker, queue, offset } => {
                *r.counts.entry("commits").or_default() += 1;
                let prev = commits.entry((broker.as_str(), *queue)).or_insert(*offset);
                if *offset < *prev {
                    r.add("offsets_back", || {
                        format!("{broker}:{queue} {prev} -> {offset} by {} at {}", rec.node, ts(rec.t_ms))
                    });
                }
                *prev = (*prev).max(*offset);
            }
            Event::Note(_) => {}
        }
    }

    for (pos, ids) in &at_pos {
        // An offset whose first holder was in a lost unsynced tail is legitimately reused.
        if ids.iter().filter(|id| !h.copy_lost(&pos.0, pos.1, pos.2, id)).count() > 1 {
            r.add("inconsistent", || {
                format!("{}:{}@{} holds {}", pos.0, pos.1, pos.2, ids.iter().copied().collect::<Vec<_>>().join(", "))
            });
        }
    }

    // Producer-side order: per queue, a send answered before another was invoked must have
    // the lower offset.
    // (offset, invoked at, answered at, id) per queue.
    type Acks<'a> = Vec<(i64, u64, u64, &'a str)>;
    let mut per_queue: BTreeMap<(&str, i32), Acks> = BTreeMap::new();
    for (id, (t_ok, ev)) in &answered {
        if let Event::Ok { status, broker, queue, offset, .. } = ev {
            r.counts.entry("acked").or_default();
            if status == "SEND_OK" {
                *r.counts.get_mut("acked").unwrap() += 1;
            }
            if h.copy_lost(broker, *queue, *offset, id) {
                continue;
            }
            let t_inv = invoked.get(id).map_or(0, |x| x.0);
            per_queue.entry((broker, *queue)).or_default().push((*offset, t_inv, *t_ok, id));
        }
    }
    for ((broker, queue), mut v) in per_queue {
        v.sort();
        let mut min_ok_above: Option<(u64, &str, i64)> = None;
        for (offset, t_inv, t_ok, id) in v.into_iter().rev() {
            if let Some((ok, other, o)) = min_ok_above {
                if ok < t_inv {
                    r.add("order", || {
                        format!("{other} acked {broker}:{queue}@{o} before {id} was sent, which got @{offset}")
                    });
                }
            }
            if min_ok_above.is_none_or(|m| t_ok < m.0) {
                min_ok_above = Some((t_ok, id, offset));
            }
        }
    }

    let in_fault = |t: u64| h.fault_windows.iter().any(|(s, e)| t >= *s && t < *e);
    let no_deliveries = Vec::new();
    for (id, (t_inv, _)) in &invoked {
        let d = delivered.get(id).unwrap_or(&no_deliveries);
        let ack = answered.get(id);
        let send_ok = matches!(ack, Some((_, Event::Ok { status, .. })) if status == "SEND_OK");
        if !d.is_empty() {
            r.counts.entry("delivered").and_modify(|n| *n += 1).or_insert(1);
        }
        if send_ok && in_fault(*t_inv) {
            *r.counts.entry("ok_during_faults").or_default() += 1;
        }
        let describe = || match ack {
            Some((t, Event::Ok { status, broker, queue, offset, .. })) => {
                format!("{id} ({status} {broker}:{queue}@{offset} at {})", ts(*t).trim())
            }
            Some((t, Event::Fail { error, .. })) => format!("{id} (failed at {}: {error})", ts(*t).trim()),
            _ => format!("{id} (no answer)"),
        };
        match (send_ok, d.is_empty()) {
            (true, true) => {
                if let Some(why) = h.unsynced.get(*id) {
                    r.add("lost_unsynced", || format!("{} {why}", describe()))
                } else if let Some(why) = h.unreplicated.get(*id) {
                    r.add("lost_unreplicated", || format!("{} {why}", describe()))
                } else if let Some(why) = h.corrupt.get(*id) {
                    r.add("lost_corrupt", || format!("{} {why}", describe()))
                } else {
                    r.add("lost", describe)
                }
            }
            (false, false) => r.add("recovered", describe),
            (false, true) => r.add("indeterminate", describe),
            (true, false) => {}
        }
        if d.len() > 1 {
            let positions: BTreeSet<&Pos> = d.iter().map(|(_, p)| p).collect();
            let cause = if positions.len() > 1 { "duplicated_retry" } else { "duplicated_redelivery" };
            let what = || {
                let at: Vec<String> =
                    d.iter().map(|(t, p)| format!("{}:{}@{} at {}", p.0, p.1, p.2, ts(*t).trim())).collect();
                format!("{id} x{} ({})", d.len(), at.join(", "))
            };
            r.add("duplicated", what);
            r.add(cause, what);
        }
        if send_ok {
            if let Some(first) = d.iter().map(|(t, _)| *t).min() {
                let t_ok = ack.map_or(0, |a| a.0);
                let due = h.healed_ms.max(t_ok) + liveness_ms;
                if first > due {
                    r.add("late", || format!("{id} delivered at {} (due by {})", ts(first).trim(), ts(due).trim()));
                }
            }
        }
    }
    for k in ORDER {
        r.counts.entry(k).or_default();
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(h: &mut History, t: u64, id: &str, q: i32, o: i64) {
        h.push(t, "producer-1", Event::Invoke { id: id.into() });
        h.push(
            t + 1,
            "producer-1",
            Event::Ok { id: id.into(), status: "SEND_OK".into(), broker: "broker-a".into(), queue: q, offset: o },
        );
    }
    fn deliver(h: &mut History, t: u64, node: &str, id: &str, q: i32, o: i64) {
        h.push(
            t,
            node,
            Event::Deliver { id: Some(id.into()), broker: "broker-a".into(), queue: q, offset: o, valid: true },
        );
    }

    #[test]
    fn clean_history_has_no_findings() {
        let mut h = History::default();
        ok(&mut h, 10, "m1", 0, 0);
        ok(&mut h, 20, "m2", 0, 1);
        deliver(&mut h, 30, "consumer-1", "m1", 0, 0);
        deliver(&mut h, 31, "consumer-1", "m2", 0, 1);
        h.push(40, "consumer-1", Event::Commit { broker: "broker-a".into(), queue: 0, offset: 2 });
        let r = check(&h, 1000);
        assert!(r.violations(&Expect::default()).is_empty(), "{:?}", r.violations(&Expect::default()));
        assert_eq!((r.get("sent"), r.get("acked"), r.get("delivered")), (2, 2, 2));
    }

    /// Copies answered SLAVE_NOT_AVAILABLE (so not in `unsynced`, which holds SEND_OK ones)
    /// and delivered, then lost with their broker's unsynced tail: their offsets are given
    /// out again. Neither the second holder nor the order of answers is a finding then; the
    /// same history without the lost copies is.
    #[test]
    fn unacked_copies_lost_with_an_unsynced_tail_may_lose_their_offsets() {
        let mut h = History::default();
        for (t, id, o) in [(10, "m1", 5), (20, "m2", 6)] {
            h.push(t, "producer-1", Event::Invoke { id: id.into() });
            let status = "SLAVE_NOT_AVAILABLE".into();
            h.push(
                t + 2,
                "producer-1",
                Event::Ok { id: id.into(), status, broker: "broker-a".into(), queue: 0, offset: o },
            );
            deliver(&mut h, t + 3, "consumer-1", id, 0, o);
        }
        ok(&mut h, 30, "m3", 0, 5); // after the power loss: m1's offset again
        deliver(&mut h, 40, "consumer-1", "m3", 0, 5);
        let r = check(&h, 1000);
        assert_eq!((r.get("inconsistent"), r.get("order")), (1, 1));
        for (id, o) in [("m1", 5), ("m2", 6)] {
            h.lost_copies.insert(("broker-a".into(), 0, o, id.into()));
        }
        let r = check(&h, 1000);
        assert_eq!((r.get("inconsistent"), r.get("order")), (0, 0), "{:?}", r.violations(&Expect::default()));
    }

    #[test]
    fn finds_lost_duplicated_unexpected_inconsistent_and_order() {
        let mut h = History::default();
        ok(&mut h, 10, "m1", 0, 0);
        ok(&mut h, 20, "m2", 0, 1);
        ok(&mut h, 30, "m3", 0, 2);
        ok(&mut h, 35, "m4", 1, 0);
        h.push(40, "producer-1", Event::Invoke { id: "m5".into() });
        h.push(41, "producer-1", Event::Fail { id: "m5".into(), timeout: true, error: "t".into() });
        deliver(&mut h, 50, "consumer-1", "m2", 0, 1);
        deliver(&mut h, 51, "consumer-1", "m1", 0, 0); // back to an undelivered offset
        deliver(&mut h, 52, "consumer-2", "m2", 0, 1); // redelivery
        deliver(&mut h, 53, "consumer-2", "m5", 0, 1); // m5 recovered, but at m2's position
        deliver(&mut h, 54, "consumer-2", "zz", 0, 3); // never sent
        h.push(60, "consumer-1", Event::Commit { broker: "broker-a".into(), queue: 0, offset: 2 });
        h.push(61, "consumer-2", Event::Commit { broker: "broker-a".into(), queue: 0, offset: 1 });
        h.unsynced.insert("m4".into(), "unsynced".into());
        let r = check(&h, 1000);
        assert_eq!(r.get("lost"), 1, "m3");
        assert_eq!(r.get("lost_unsynced"), 1, "m4");
        assert_eq!(r.get("recovered"), 1);
        assert_eq!(r.get("duplicated_redelivery"), 1);
        assert_eq!(r.get("unexpected"), 1);
        assert_eq!(r.get("inconsistent"), 1);
        assert_eq!(r.get("order"), 1);
        assert_eq!(r.get("offsets_back"), 1);
        let v = r.violations(&Expect::default());
        assert!(v.iter().any(|s| s.starts_with("lost = 1") && s.contains("m3")), "{v:?}");
    }

    #[test]
    fn a_message_only_a_killed_master_held_is_lost_unreplicated() {
        let mut h = History::default();
        ok(&mut h, 10, "m1", 0, 0);
        ok(&mut h, 20, "m2", 0, 1);
        deliver(&mut h, 50, "consumer-1", "m1", 0, 0);
        h.unreplicated.insert("m2".into(), "not on broker-a-s".into());
        let r = check(&h, 1000);
        assert_eq!((r.get("lost"), r.get("lost_unreplicated")), (0, 1));
        let expect = Expect { lost_unreplicated: Some(Bound::Exactly(0)), ..Expect::default() };
        let v = r.violations(&expect);
        assert!(v.iter().any(|s| s.starts_with("lost_unreplicated = 1") && s.contains("broker-a-s")), "{v:?}");
    }

    #[test]
    fn a_corrupted_record_is_lost_corrupt_not_lost() {
        let mut h = History::default();
        ok(&mut h, 10, "m1", 0, 0);
        ok(&mut h, 20, "m2", 0, 1);
        ok(&mut h, 30, "m3", 0, 2);
        deliver(&mut h, 50, "consumer-1", "m1", 0, 0);
        deliver(&mut h, 51, "consumer-1", "m3", 0, 2);
        h.corrupt.insert("m2".into(), "bit flip".into());
        let r = check(&h, 1000);
        assert_eq!((r.get("lost"), r.get("lost_corrupt")), (0, 1));
        assert!(r.violations(&Expect::default()).is_empty());
        let expect = Expect { lost_corrupt: Some(Bound::Exactly(0)), ..Expect::default() };
        let v = r.violations(&expect);
        assert!(v.iter().any(|s| s.starts_with("lost_corrupt = 1") && s.contains("bit flip")), "{v:?}");
    }

    #[test]
    fn producer_order_and_liveness() {
        let mut h = History::default();
        ok(&mut h, 10, "m1", 0, 5); // answered at 11
        ok(&mut h, 20, "m2", 0, 4); // sent after m1's answer, yet a lower offset
        deliver(&mut h, 30, "consumer-1", "m2", 0, 4);
        deliver(&mut h, 5000, "consumer-1", "m1", 0, 5);
        h.healed_ms = 100;
        let r = check(&h, 1000);
        assert_eq!(r.get("order"), 1);
        assert_eq!(r.get("late"), 1);
    }

    #[test]
    fn retry_duplicates_are_told_from_redeliveries() {
        let mut h = History::default();
        ok(&mut h, 10, "m1", 0, 1);
        deliver(&mut h, 20, "consumer-1", "m1", 0, 0);
        deliver(&mut h, 21, "consumer-1", "m1", 0, 1);
        let r = check(&h, 1000);
        assert_eq!((r.get("duplicated_retry"), r.get("duplicated_redelivery")), (1, 0));
    }
}
