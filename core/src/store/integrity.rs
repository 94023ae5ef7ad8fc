//! A full consistency check of a store, for tests and the simulation checker: walks the
//! commitlog from its first record and holds every record against the consume queues.
//!
//! Checked: every record passes its CRC and sits at the offset it claims; each consumable
//! record is the consume-queue entry at its queue offset; each queue is dense (no holes between
//! its min and max offset) and its offsets grow with the log; and no entry points past the log.

use super::consume_queue::Entry;
use super::record;
use super::{MessageStore, StoreError};
use std::collections::BTreeMap;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IntegrityReport {
    pub records: u64,
    pub log_end: u64,
    /// (topic, queue id) → number of entries checked.
    pub queues: BTreeMap<(String, i32), u64>,
}

impl MessageStore {
    /// Returns a report, or a description of the first inconsistency found.
    pub async fn check_integrity(&self) -> Result<IntegrityReport, String> {
        let err = |e: StoreError| e.to_string();
        let cl = &self.inner.commitlog;
        let start = cl.min_offset();
        let mut report = IntegrityReport::default();
        let mut next_in_queue: BTreeMap<(String, i32), u64> = BTreeMap::new();
        let mut problem: Option<String> = None;
        let (end, reason) = cl
            .scan(start, async |m| {
                report.records += 1;
                if !record::is_consumable(m.inner.sys_flag) {
                    return Ok(());
                }
                let key = (m.inner.topic.clone(), m.inner.queue_id);
                let q = m.queue_offset as u64;
                let cq = self.queue(&key.0, key.1);
                if let Some(prev) = next_in_queue.get(&key) {
                    if q != *prev && problem.is_none() {
                        problem = Some(format!(
                            "{}-{}: record at {} has queue offset {q}, expected {prev}",
                            key.0, key.1, m.phys_offset
                        ));
                    }
                }
                next_in_queue.insert(key.clone(), q + 1);
                let want = Entry {
                    phys_offset: m.phys_offset,
                    size: m.total_size,
                    tags_code: record::tags_code(m.property(record::PROPERTY_TAGS)),
                };
                let got = cq.entry(q).await?;
                if got != Some(want) && q >= cq.min_offset() && problem.is_none() {
                    problem = Some(format!("{}-{} offset {q}: queue has {got:?}, log has {want:?}", key.0, key.1));
                }
                *report.queues.entry(key).or_default() += 1;
                Ok(())
            })
            .await
            .map_err(err)?;
        if let Some(p) = problem {
            return Err(p);
        }
        if end != cl.write_pos() {
            return Err(format!("log scan stops at {end} ({reason:?}) but the store end is {}", cl.write_pos()));
        }
        for ((topic, qid), next) in &next_in_queue {
            let max = self.max_offset(topic, *qid);
            if max != *next {
                return Err(format!("{topic}-{qid}: queue max offset {max}, log says {next}"));
            }
        }
        for (topic, qid) in self.queue_ids() {
            let cq = self.queue(&topic, qid);
            if cq.max_phys_end().await.map_err(err)? > end {
                return Err(format!("{topic}-{qid}: an entry points past the log end {end}"));
            }
        }
        report.log_end = end;
        Ok(report)
    }
}
