//! The message store: CommitLog + ConsumeQueues + index, with flush, recovery and retention.
//!
//! Write path (numbered as in ARCHITECTURE.md): (1) check limits, encode and CRC the record
//! outside any lock; (2) under the put lock assign the queue offset and store timestamp,
//! append to the commitlog, publish the new end; (3) dispatch: write the consume-queue entry
//! and index keys (the same code recovery uses to rebuild them from the log); (4) under
//! SYNC_FLUSH wait until the group-commit flusher has synced past the record, or answer
//! FLUSH_DISK_TIMEOUT after `syncFlushTimeout` (stored, durability unknown).

pub mod checkpoint;
pub mod commitlog;
pub mod config;
pub mod consume_queue;
pub mod index;
mod integrity;
pub mod meta;
pub mod record;
mod recovery;
mod replica;
mod service;

pub use integrity::IntegrityReport;
pub use service::CleanReport;

use crate::rt::disk::{DirLock, Disk};
use crate::rt::sync::{watch, Notify};
use bytes::Bytes;
use commitlog::CommitLog;
pub use config::{FlushDiskType, StoreConfig};
use consume_queue::{ConsumeQueue, Entry};
use index::IndexService;
use record::{DispatchInfo, MessageExt, MessageInner, RecordError};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("message too large: {size} bytes, maxMessageSize is {max}")]
    MessageTooLarge { size: usize, max: usize },
    #[error("message properties too long: {0} bytes, the limit is 32767")]
    PropertiesTooLarge(usize),
    #[error("topic name too long: {0} bytes, the limit is 127")]
    TopicTooLong(usize),
    #[error("corrupt record at commitlog offset {offset}: {reason}")]
    CorruptRecord { offset: u64, reason: RecordError },
    #[error("store is corrupt: {0}")]
    Corrupt(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("disk is full (usage above the warning level); refusing writes")]
    DiskFull,
    #[error("the store is shut down")]
    ShutDown,
}

impl StoreError {
    /// Whether the store ran out of space (ENOSPC or the disk-full guard).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::DiskFull)
            || matches!(self, StoreError::Io(e) if e.kind() == std::io::ErrorKind::StorageFull)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutStatus {
    PutOk,
    /// Stored, but not known to be durable within `syncFlushTimeout`.
    FlushDiskTimeout,
    /// SYNC_MASTER: stored, but no slave confirmed it within `slaveTimeout`.
    FlushSlaveTimeout,
    /// SYNC_MASTER: stored, but no slave is connected (or it is too far behind).
    SlaveNotAvailable,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PutResult {
    pub status: PutStatus,
    pub phys_offset: u64,
    pub size: usize,
    pub queue_offset: u64,
    pub store_timestamp: i64,
    /// offsetMsgId: store host + physical offset.
    pub msg_id: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GetStatus {
    Found,
    NoMatchedMessage,
    MessageWasRemoving,
    OffsetFoundNull,
    OffsetOverflowBadly,
    OffsetOverflowOne,
    OffsetTooSmall,
    NoMatchedLogicQueue,
    NoMessageInQueue,
}

/// One message as served: its raw record (the pull body format) and where it sits.
#[derive(Clone, Debug)]
pub struct StoredMessage {
    pub record: Bytes,
    pub queue_offset: u64,
    pub phys_offset: u64,
    pub tags_code: i64,
}

#[derive(Clone, Debug)]
pub struct GetResult {
    pub status: GetStatus,
    pub messages: Vec<StoredMessage>,
    pub next_begin_offset: u64,
    pub min_offset: u64,
    pub max_offset: u64,
    /// Records that failed their checks and were skipped (never served).
    pub corrupt_skipped: usize,
}

/// Most consume-queue entries one read looks at when a filter rejects them.
const MAX_FILTER_SCAN: usize = 16_000;
/// Above this disk use writes are refused (RocketMQ's diskSpaceWarningLevelRatio).
const DISK_WARNING_RATIO: f64 = 0.90;

/// Puts waiting for the one appending to append their records too (see `MessageStore::append`).
#[derive(Default)]
pub(crate) struct AppendQueue {
    jobs: VecDeque<AppendJob>,
    /// A put is appending (it holds, or waits for, the put lock) and will take queued jobs.
    combining: bool,
}

/// One put's encoded records and their dispatch views, waiting in the [`AppendQueue`].
struct AppendJob {
    recs: Vec<Vec<u8>>,
    infos: Vec<DispatchInfo>,
    /// Where the outcome goes (`None`: the combining put's own job).
    done: Option<crate::rt::sync::oneshot::Sender<Appended>>,
}

enum Appended {
    Done(Result<Vec<DispatchInfo>, StoreError>),
    /// The put that combined stopped: the waiting put takes over, with its own job first.
    YourTurn(AppendJob),
}

/// Most queued puts one combining put appends before handing the turn on.
const COMBINE_BUDGET: usize = 32;

/// Ends a combining turn however it ends: unless the queue was found empty, the jobs taken
/// and not yet appended go back to the front of the queue and the oldest queued put takes
/// over (also when the combining put is dropped mid-way, so nothing queued is stranded).
struct Turn<'a> {
    queue: &'a std::sync::Mutex<AppendQueue>,
    taken: VecDeque<AppendJob>,
    handed_over: bool,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if self.handed_over {
            return;
        }
        let mut q = self.queue.lock().unwrap();
        while let Some(job) = self.taken.pop_back() {
            q.jobs.push_front(job);
        }
        hand_on(&mut q);
    }
}

/// Gives the combining turn to the oldest queued put, or ends it if none is queued.
fn hand_on(q: &mut AppendQueue) {
    loop {
        match q.jobs.pop_front() {
            None => {
                q.combining = false;
                return;
            }
            Some(mut job) => match job.done.take() {
                Some(done) => match done.send(Appended::YourTurn(job)) {
                    Ok(()) => return,
                    // Its put is gone: its records are not appended, and the next one is asked.
                    Err(_) => continue,
                },
                // Only a combining put's own job has no sender, and it is never queued.
                None => continue,
            },
        }
    }
}

/// A queued put's wait for its outcome. A put dropped after the turn was handed to it, before
/// it took it up, hands the turn on as it goes: otherwise the queue would wait for a
/// combining put that no longer exists, and every later put with it.
struct Waiting<'a> {
    queue: &'a std::sync::Mutex<AppendQueue>,
    rx: Option<crate::rt::sync::oneshot::Receiver<Appended>>,
}

impl Waiting<'_> {
    async fn outcome(mut self) -> Result<Appended, crate::rt::sync::oneshot::error::RecvError> {
        let r = self.rx.as_mut().expect("waited once").await;
        self.rx = None;
        r
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(Ok(Appended::YourTurn(_))) = self.rx.as_mut().map(|rx| rx.try_recv()) {
            hand_on(&mut self.queue.lock().unwrap());
        }
    }
}

pub(crate) struct PutState {
    /// Next queue offset per topic and queue id; assignment never depends on dispatch.
    offsets: HashMap<String, HashMap<i32, u64>>,
    shut_down: bool,
}

/// An end offset per (topic, queue id).
type QueueEnds = BTreeMap<(String, i32), u64>;

pub(crate) struct Inner {
    cfg: StoreConfig,
    disk: Disk,
    root: PathBuf,
    commitlog: CommitLog,
    queues: RwLock<QueueTable>,
    index: crate::rt::sync::Mutex<IndexService>,
    put: crate::rt::sync::Mutex<PutState>,
    /// Puts waiting for the combining put (see `MessageStore::append`).
    appends: std::sync::Mutex<AppendQueue>,
    /// Commitlog offset up to which consume queues and index are built.
    dispatched: AtomicU64,
    flushed_tx: watch::Sender<u64>,
    flush_wakeup: Notify,
    /// SYNC_FLUSH puts appended since the flusher last took its target (group commit).
    sync_pending: std::sync::atomic::AtomicUsize,
    shutdown_tx: watch::Sender<bool>,
    disk_full: AtomicBool,
    last_store_ts: AtomicU64,
    /// Commitlog syncs done by the flusher and the time they took.
    flush_count: AtomicU64,
    flush_nanos: AtomicU64,
    /// Puts whose records another put appended (see `MessageStore::append`).
    combined: AtomicU64,
    lock: std::sync::Mutex<Option<DirLock>>,
    /// One checkpoint at a time: they share `checkpoint.tmp`.
    checkpoint_lock: crate::rt::sync::Mutex<()>,
    tasks: std::sync::Mutex<Vec<crate::rt::task::JoinHandle<()>>>,
    /// Told of every new consume-queue entry (long polling wakes on it).
    arrival: std::sync::OnceLock<ArrivalListener>,
    /// After a recovery that was not clean: each queue's end as recovered. Offsets past it
    /// may have been handed out before the crash and lost with an unsynced tail.
    recovered_ends: std::sync::Mutex<Option<QueueEnds>>,
    /// A slave that cut its log where it parted from its master's: how many cuts so far, and
    /// each cut queue's lowest end after a cut. Offsets past it were given to records its
    /// master lost, and the master gives them to new ones.
    cut_ends: std::sync::Mutex<(u64, QueueEnds)>,
}

/// Called with (topic, queue id, new max offset) after each consume-queue entry is written.
pub type ArrivalListener = Arc<dyn Fn(&str, i32, u64) + Send + Sync>;

/// A handle to an open store. Cheap to clone.
#[derive(Clone)]
pub struct MessageStore {
    inner: Arc<Inner>,
}

/// Consume queues by topic, then queue id; looked up by `&str` so the put path allocates no key.
#[derive(Default)]
pub(crate) struct QueueTable(BTreeMap<String, BTreeMap<i32, Arc<ConsumeQueue>>>);

impl QueueTable {
    fn get(&self, topic: &str, queue_id: i32) -> Option<&Arc<ConsumeQueue>> {
        self.0.get(topic).and_then(|q| q.get(&queue_id))
    }

    pub(crate) fn insert(&mut self, cq: Arc<ConsumeQueue>) {
        self.0.entry(cq.topic.clone()).or_default().insert(cq.queue_id, cq);
    }

    /// Every queue, sorted by topic and queue id.
    pub(crate) fn all(&self) -> Vec<Arc<ConsumeQueue>> {
        self.0.values().flat_map(|q| q.values().cloned()).collect()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

/// The key a message is indexed under.
fn index_key(topic: &str, key: &str) -> String {
    format!("{topic}#{key}")
}

impl MessageStore {
    /// Opens (and if needed recovers) the store at `cfg.store_path_root_dir`, then starts the
    /// flush, checkpoint and retention services. Fails at once if another store holds the
    /// directory.
    pub async fn open(cfg: StoreConfig, disk: Disk) -> Result<MessageStore, StoreError> {
        recovery::open(cfg, disk).await
    }

    pub fn config(&self) -> &StoreConfig {
        &self.inner.cfg
    }

    /// Checks a message against the store's limits. Nothing is written for a refused message.
    pub fn check_message(&self, msg: &MessageInner) -> Result<usize, StoreError> {
        if msg.topic.len() > record::MAX_TOPIC_LEN {
            return Err(StoreError::TopicTooLong(msg.topic.len()));
        }
        let props = record::properties_len(msg, self.inner.cfg.enabled_append_prop_crc);
        if props > record::MAX_PROPERTIES_LEN {
            return Err(StoreError::PropertiesTooLarge(props));
        }
        let size = record::record_len(msg, self.inner.cfg.enabled_append_prop_crc);
        let seg_limit = self.inner.commitlog.segment_size() as usize - record::BLANK_LEN;
        let max = self.inner.cfg.max_message_size.min(seg_limit);
        if msg.body.len() > self.inner.cfg.max_message_size || size > max {
            return Err(StoreError::MessageTooLarge { size, max });
        }
        Ok(size)
    }

    /// Appends one message. Returns once it is stored (and, under SYNC_FLUSH unless its
    /// properties say `WAIT=false`, once it is durable or `syncFlushTimeout` passed).
    pub async fn put(&self, msg: &MessageInner) -> Result<PutResult, StoreError> {
        let wait = record::property(&msg.properties, record::PROPERTY_WAIT) != Some("false");
        self.put_opts(msg, wait).await
    }

    /// [`MessageStore::put`] with the wait-for-durability choice made by the caller (the
    /// broker drops the `WAIT` property before storing, as RocketMQ does).
    pub async fn put_opts(&self, msg: &MessageInner, wait: bool) -> Result<PutResult, StoreError> {
        let mut v = self.put_batch(std::slice::from_ref(msg), wait).await?;
        Ok(v.pop().expect("one result per message"))
    }

    /// Appends messages with consecutive positions in the log (and, per queue, consecutive
    /// queue offsets): nothing else is appended between them. All are checked first; a
    /// refused one refuses the batch with nothing written.
    pub async fn put_batch(&self, msgs: &[MessageInner], wait: bool) -> Result<Vec<PutResult>, StoreError> {
        let inner = &self.inner;
        let mut recs = Vec::with_capacity(msgs.len());
        for msg in msgs {
            self.check_message(msg)?;
            let mut rec = Vec::new();
            record::encode(msg, &mut rec, inner.cfg.enabled_append_prop_crc);
            recs.push(rec);
        }
        if inner.disk_full.load(Ordering::Relaxed) {
            return Err(StoreError::DiskFull);
        }
        // The dispatch view is read from the message here, outside the lock; the append
        // fills in where the record landed.
        let infos = msgs.iter().zip(&recs).map(|(m, r)| DispatchInfo::new(m, 0, 0, r.len() as i32, 0)).collect();
        let infos = self.append(recs, infos).await?;
        let end = infos.last().map_or(0, |i| i.phys_offset as u64 + i.size as u64);
        let wait = wait && inner.cfg.flush_disk_type == FlushDiskType::SyncFlush;
        let status = if wait { self.wait_durable(end).await } else { PutStatus::PutOk };
        Ok(infos
            .into_iter()
            .map(|info| PutResult {
                status,
                phys_offset: info.phys_offset as u64,
                size: info.size as usize,
                queue_offset: info.queue_offset as u64,
                store_timestamp: info.store_timestamp,
                msg_id: record::offset_msg_id(&inner.cfg.store_host, info.phys_offset),
            })
            .collect())
    }

    /// Sets the listener told of each new consume-queue entry. Only the first call counts.
    pub fn set_arrival_listener(&self, l: ArrivalListener) {
        let _ = self.inner.arrival.set(l);
    }

    /// Steps (2) and (3) of the write path: appends one caller's records (consecutive in
    /// the log) under the put lock, by flat combining. A put that finds another appending
    /// queues its records and waits; the one appending takes the queued records too, in
    /// arrival order, before it lets the lock go. With a plain lock every contended put was
    /// a hand-over of the lock to a task that then had to be woken and scheduled, often on
    /// the other worker thread, while the lock sat idle; here the appends run back to back
    /// and the wake-ups of the waiting puts happen beside them. One put combines at most
    /// `COMBINE_BUDGET` others, then hands the turn to the oldest waiting put, so no caller
    /// waits on others' appends without bound.
    async fn append(&self, recs: Vec<Vec<u8>>, infos: Vec<DispatchInfo>) -> Result<Vec<DispatchInfo>, StoreError> {
        let inner = &self.inner;
        let mut mine = AppendJob { recs, infos, done: None };
        let waiting = {
            let mut q = inner.appends.lock().unwrap();
            if q.combining {
                let (tx, rx) = crate::rt::sync::oneshot::channel();
                mine.done = Some(tx);
                q.jobs.push_back(mine);
                Err(rx)
            } else {
                q.combining = true;
                Ok(mine)
            }
        };
        let turn = match waiting {
            Ok(mine) => mine,
            Err(rx) => match (Waiting { queue: &inner.appends, rx: Some(rx) }).outcome().await {
                Ok(Appended::Done(r)) => return self.arrived(r),
                Ok(Appended::YourTurn(job)) => job,
                // The put combining it was dropped while appending it: it may or may not be
                // in the log, as when a put is dropped mid-append.
                Err(_) => {
                    return Err(StoreError::Io(std::io::Error::other(
                        "the put appending this message was cancelled; it may or may not be stored",
                    )))
                }
            },
        };
        let r = self.combine(turn).await;
        self.arrived(r)
    }

    /// Tells the arrival listener of the consumable records appended (outside the lock).
    fn arrived(&self, r: Result<Vec<DispatchInfo>, StoreError>) -> Result<Vec<DispatchInfo>, StoreError> {
        if let (Ok(infos), Some(l)) = (&r, self.inner.arrival.get()) {
            for i in infos.iter().filter(|i| record::is_consumable(i.sys_flag)) {
                l(&i.topic, i.queue_id, i.queue_offset as u64 + 1);
            }
        }
        r
    }

    /// The combining turn: this put's records, then those queued meanwhile (see `append`).
    async fn combine(&self, mine: AppendJob) -> Result<Vec<DispatchInfo>, StoreError> {
        let inner = &self.inner;
        let mut turn = Turn { queue: &inner.appends, taken: VecDeque::new(), handed_over: false };
        let mut st = inner.put.lock().await;
        let result = self.append_locked(&mut st, mine.recs, mine.infos).await;
        let mut served = 0;
        loop {
            {
                let mut q = inner.appends.lock().unwrap();
                if q.jobs.is_empty() {
                    q.combining = false;
                    turn.handed_over = true;
                    break;
                }
                if served >= COMBINE_BUDGET {
                    break;
                }
                // `taken` is empty here: the queue gets its buffer back for the next arrivals.
                std::mem::swap(&mut turn.taken, &mut q.jobs);
            }
            while let Some(job) = turn.taken.pop_front() {
                let r = self.append_locked(&mut st, job.recs, job.infos).await;
                if let Some(done) = job.done {
                    let _ = done.send(Appended::Done(r));
                }
                served += 1;
                inner.combined.fetch_add(1, Ordering::Relaxed);
            }
        }
        drop(st);
        drop(turn);
        result
    }

    /// Appends one caller's records (consecutive in the log); the caller holds the put lock.
    async fn append_locked(
        &self,
        st: &mut PutState,
        mut recs: Vec<Vec<u8>>,
        mut infos: Vec<DispatchInfo>,
    ) -> Result<Vec<DispatchInfo>, StoreError> {
        let inner = &self.inner;
        if st.shut_down {
            return Err(StoreError::ShutDown);
        }
        for (info, rec) in infos.iter_mut().zip(recs.iter_mut()) {
            let queue_offset = st.offsets.get(&info.topic).and_then(|q| q.get(&info.queue_id)).copied().unwrap_or(0);
            // Store time never goes backwards within one log, even if the clock does.
            let now = crate::rt::now_ms().max(inner.last_store_ts.load(Ordering::Relaxed));
            let phys = inner.commitlog.append(rec, queue_offset as i64, now as i64).await?;
            // The topic's name is copied only the first time it is seen.
            match st.offsets.get_mut(info.topic.as_str()) {
                Some(q) => {
                    q.insert(info.queue_id, queue_offset + 1);
                }
                None => {
                    st.offsets.entry(info.topic.clone()).or_default().insert(info.queue_id, queue_offset + 1);
                }
            }
            inner.last_store_ts.store(now, Ordering::Relaxed);
            info.queue_offset = queue_offset as i64;
            info.phys_offset = phys as i64;
            info.store_timestamp = now as i64;
            // A dispatch that failed earlier (disk error on a queue file) is caught up from the
            // log first, so consume queues stay in log order.
            if inner.dispatched.load(Ordering::Acquire) < phys {
                self.catch_up_dispatch(phys).await?;
            }
            self.dispatch(info, 0).await?;
            inner.dispatched.store(phys + rec.len() as u64, Ordering::Release);
        }
        Ok(infos)
    }

    async fn wait_durable(&self, end: u64) -> PutStatus {
        let inner = &self.inner;
        inner.sync_pending.fetch_add(1, Ordering::AcqRel);
        inner.flush_wakeup.notify_one();
        let mut rx = inner.flushed_tx.subscribe();
        let timeout = Duration::from_millis(inner.cfg.sync_flush_timeout_ms);
        let durable = crate::rt::time::timeout(timeout, rx.wait_for(|f| *f >= end)).await.is_ok_and(|r| r.is_ok());
        match durable {
            true => PutStatus::PutOk,
            false => {
                tracing::warn!(offset = end, "sync flush did not finish within syncFlushTimeout");
                PutStatus::FlushDiskTimeout
            }
        }
    }

    /// Re-reads the log from the dispatched offset up to `to` and dispatches it.
    async fn catch_up_dispatch(&self, to: u64) -> Result<(), StoreError> {
        let inner = &self.inner;
        let mut pos = inner.dispatched.load(Ordering::Acquire);
        while pos < to {
            let head = inner.commitlog.read(pos, 8).await?;
            let total = i32::from_be_bytes(head[..4].try_into().unwrap());
            if u32::from_be_bytes(head[4..8].try_into().unwrap()) == record::BLANK_MAGIC {
                pos += total as u64;
                continue;
            }
            let m = inner.commitlog.read_record(pos, Some(total.max(0) as usize)).await?;
            self.dispatch(&m.dispatch_info(), 0).await?;
            pos += total as u64;
            inner.dispatched.store(pos, Ordering::Release);
        }
        Ok(())
    }

    pub(crate) fn queue(&self, topic: &str, queue_id: i32) -> Arc<ConsumeQueue> {
        let existing = self.inner.queues.read().unwrap().get(topic, queue_id).cloned();
        if let Some(q) = existing {
            return q;
        }
        let mut queues = self.inner.queues.write().unwrap();
        if let Some(q) = queues.get(topic, queue_id) {
            return q.clone();
        }
        let dir = self.inner.root.join("consumequeue").join(topic).join(queue_id.to_string());
        let cq = Arc::new(ConsumeQueue::new(
            &self.inner.disk,
            dir,
            topic,
            queue_id,
            self.inner.cfg.mapped_file_size_consume_queue,
        ));
        queues.insert(cq.clone());
        cq
    }

    fn existing_queue(&self, topic: &str, queue_id: i32) -> Option<Arc<ConsumeQueue>> {
        self.inner.queues.read().unwrap().get(topic, queue_id).cloned()
    }

    /// The dispatcher: builds the consume-queue entry and index keys of one record. Used for
    /// every append and, identically, to rebuild from the log in recovery. An entry already
    /// present and equal is skipped; a different one (a torn queue page) is cut and rewritten.
    pub(crate) async fn dispatch(&self, d: &DispatchInfo, index_from: u64) -> Result<(), StoreError> {
        if record::is_consumable(d.sys_flag) {
            let cq = self.queue(&d.topic, d.queue_id);
            let entry = Entry { phys_offset: d.phys_offset, size: d.size, tags_code: d.tags_code };
            let q = d.queue_offset as u64;
            let mut present = q < cq.max_offset();
            if present && q >= cq.min_offset() && cq.entry(q).await? != Some(entry) {
                tracing::warn!(topic = %d.topic, queue = d.queue_id, offset = q,
                    "consume queue entry disagrees with the commitlog; rewriting from here");
                cq.truncate_to(q).await?;
                present = false;
            }
            if !present {
                cq.put(q, entry).await?;
            }
        }
        if self.inner.cfg.message_index_enable
            && d.phys_offset as u64 >= index_from
            && d.sys_flag & record::SYSFLAG_TX_MASK != record::SYSFLAG_TX_ROLLBACK
        {
            let mut index = self.inner.index.lock().await;
            if let Some(u) = &d.uniq_key {
                index.put(index::topic_key_hash(&d.topic, u), d.phys_offset, d.store_timestamp).await?;
            }
            for k in d.keys.iter().flat_map(|k| k.split(' ')).filter(|k| !k.is_empty()) {
                index.put(index::topic_key_hash(&d.topic, k), d.phys_offset, d.store_timestamp).await?;
            }
        }
        Ok(())
    }

    /// Reads up to `max_count` messages (and about `max_bytes`) from a queue starting at
    /// `offset`, keeping those whose tag code passes `filter`. Every record is checked before
    /// it is served; a corrupt one is skipped and logged with its offsets.
    pub async fn get_message(
        &self,
        topic: &str,
        queue_id: i32,
        offset: u64,
        max_count: usize,
        max_bytes: usize,
        filter: Option<&(dyn Fn(i64) -> bool + Sync)>,
    ) -> Result<GetResult, StoreError> {
        let mut res = GetResult {
            status: GetStatus::NoMessageInQueue,
            messages: Vec::new(),
            next_begin_offset: 0,
            min_offset: 0,
            max_offset: 0,
            corrupt_skipped: 0,
        };
        let Some(cq) = self.existing_queue(topic, queue_id) else {
            res.status = GetStatus::NoMatchedLogicQueue;
            return Ok(res);
        };
        let (min, max) = (cq.min_offset(), cq.max_offset());
        res.min_offset = min;
        res.max_offset = max;
        res.next_begin_offset = offset;
        if max == 0 {
            res.next_begin_offset = 0;
            return Ok(res);
        }
        if offset < min {
            res.status = GetStatus::OffsetTooSmall;
            res.next_begin_offset = min;
            return Ok(res);
        }
        if offset == max {
            res.status = GetStatus::OffsetOverflowOne;
            return Ok(res);
        }
        if offset > max {
            res.status = GetStatus::OffsetOverflowBadly;
            res.next_begin_offset = if min == 0 { min } else { max };
            return Ok(res);
        }
        self.read_queue(&cq, offset, max_count, max_bytes, filter, &mut res).await?;
        Ok(res)
    }

    async fn read_queue(
        &self,
        cq: &ConsumeQueue,
        offset: u64,
        max_count: usize,
        max_bytes: usize,
        filter: Option<&(dyn Fn(i64) -> bool + Sync)>,
        res: &mut GetResult,
    ) -> Result<(), StoreError> {
        let log_min = self.inner.commitlog.min_offset();
        let mut next = offset;
        let mut bytes = 0usize;
        let mut scanned = 0usize;
        res.status = GetStatus::NoMatchedMessage;
        'outer: while res.messages.len() < max_count && scanned < MAX_FILTER_SCAN {
            let batch = cq.entries(next, 256.min(MAX_FILTER_SCAN - scanned)).await?;
            if batch.is_empty() {
                if res.messages.is_empty() && next < cq.min_offset() {
                    res.status = GetStatus::OffsetFoundNull;
                    next = cq.min_offset();
                }
                break;
            }
            for e in batch {
                if res.messages.len() >= max_count || (bytes > 0 && bytes + e.size.max(0) as usize > max_bytes) {
                    break 'outer;
                }
                scanned += 1;
                let this = next;
                next += 1;
                if e.is_filler() || filter.is_some_and(|f| !f(e.tags_code)) {
                    continue;
                }
                if (e.phys_offset as u64) < log_min {
                    res.status = GetStatus::MessageWasRemoving;
                    continue;
                }
                match self.inner.commitlog.read_checked(e.phys_offset as u64, Some(e.size as usize)).await {
                    Ok((record, m)) => {
                        bytes += e.size as usize;
                        res.messages.push(StoredMessage {
                            record,
                            queue_offset: this,
                            phys_offset: m.phys_offset as u64,
                            tags_code: e.tags_code,
                        });
                    }
                    Err(StoreError::CorruptRecord { offset: phys, reason }) => {
                        tracing::error!(topic = %cq.topic, queue = cq.queue_id, queue_offset = this, phys, %reason,
                            "corrupt record skipped; it is never served");
                        res.corrupt_skipped += 1;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        if !res.messages.is_empty() {
            res.status = GetStatus::Found;
        }
        res.next_begin_offset = next;
        Ok(())
    }

    /// The record at a commitlog offset (offsetMsgId lookups), checked.
    pub async fn lookup(&self, phys_offset: u64) -> Result<MessageExt, StoreError> {
        self.inner.commitlog.read_record(phys_offset, None).await
    }

    /// The raw record at a commitlog offset (VIEW_MESSAGE_BY_ID's body) and its decoded form,
    /// checked.
    pub async fn lookup_raw(&self, phys_offset: u64) -> Result<(Bytes, MessageExt), StoreError> {
        self.inner.commitlog.read_checked(phys_offset, None).await
    }

    /// Messages of `topic` whose UNIQ_KEY or one of whose KEYS is `key`, stored within
    /// `[begin_ms, end_ms]`, newest first, at most `max`.
    pub async fn query_by_key(
        &self,
        topic: &str,
        key: &str,
        max: usize,
        begin_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<MessageExt>, StoreError> {
        let candidates =
            self.inner.index.lock().await.query(&index_key(topic, key), max * 2 + 8, begin_ms, end_ms).await?;
        let mut out = Vec::new();
        for phys in candidates {
            let Ok(m) = self.lookup(phys as u64).await else { continue };
            let keys_match = m.property(record::PROPERTY_KEYS).is_some_and(|ks| ks.split(' ').any(|k| k == key));
            if m.inner.topic == topic && (m.property(record::PROPERTY_UNIQ_KEY) == Some(key) || keys_match) {
                out.push(m);
                if out.len() >= max {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Whether the last open found a clean shutdown (nothing was lost or cut).
    pub fn recovered_cleanly(&self) -> bool {
        self.inner.recovered_ends.lock().unwrap().is_none()
    }

    /// After a recovery that was not clean, the queue's end as recovered (offsets past it may
    /// have been given to messages lost with an unsynced tail, and are being given again).
    pub fn recovered_end(&self, topic: &str, queue_id: i32) -> Option<u64> {
        let ends = self.inner.recovered_ends.lock().unwrap();
        Some(ends.as_ref()?.get(&(topic.to_string(), queue_id)).copied().unwrap_or(0))
    }

    /// On a slave that cut its log: the queue's end after the cut, if the cut dropped any of
    /// its entries (see `cut_ends`).
    pub fn cut_end(&self, topic: &str, queue_id: i32) -> Option<u64> {
        let cut = self.inner.cut_ends.lock().unwrap();
        if cut.1.is_empty() {
            return None; // asked on every pull: no key built while nothing was cut
        }
        cut.1.get(&(topic.to_string(), queue_id)).copied()
    }

    /// How many times this store (a slave) has cut queue entries; 0 if never.
    pub fn cut_generation(&self) -> u64 {
        self.inner.cut_ends.lock().unwrap().0
    }

    /// The recovered ends become the queues' current ends: a master took back from its slave
    /// the tail it lost, so offsets up to here name the same messages as before the crash.
    pub fn raise_recovered_ends(&self) {
        let mut ends = self.inner.recovered_ends.lock().unwrap();
        if let Some(ends) = ends.as_mut() {
            for q in self.inner.queues.read().unwrap().all() {
                let e = ends.entry((q.topic.clone(), q.queue_id)).or_default();
                *e = (*e).max(q.max_offset());
            }
        }
    }

    pub fn max_offset(&self, topic: &str, queue_id: i32) -> u64 {
        self.existing_queue(topic, queue_id).map_or(0, |q| q.max_offset())
    }

    pub fn min_offset(&self, topic: &str, queue_id: i32) -> u64 {
        self.existing_queue(topic, queue_id).map_or(0, |q| q.min_offset())
    }

    /// The first queue offset whose message was stored at or after `timestamp_ms`; the max
    /// offset if none was.
    pub async fn search_offset_by_time(
        &self,
        topic: &str,
        queue_id: i32,
        timestamp_ms: i64,
    ) -> Result<u64, StoreError> {
        let Some(cq) = self.existing_queue(topic, queue_id) else { return Ok(0) };
        let (mut lo, mut hi) = (cq.min_offset(), cq.max_offset());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let ts = match cq.entry(mid).await? {
                Some(e) if !e.is_filler() => self.store_time_of(e.phys_offset as u64, e.size as usize).await?,
                _ => i64::MIN,
            };
            if ts >= timestamp_ms {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Ok(lo)
    }

    async fn store_time_of(&self, phys: u64, size: usize) -> Result<i64, StoreError> {
        match self.inner.commitlog.read_record(phys, Some(size)).await {
            Ok(m) => Ok(m.store_timestamp),
            Err(StoreError::NotFound(_)) | Err(StoreError::CorruptRecord { .. }) => Ok(i64::MIN),
            Err(e) => Err(e),
        }
    }

    pub fn commitlog_min_offset(&self) -> u64 {
        self.inner.commitlog.min_offset()
    }

    pub fn commitlog_max_offset(&self) -> u64 {
        self.inner.commitlog.write_pos()
    }

    /// (syncs, total ns spent in them) by the commitlog flusher since open.
    pub fn flush_stats(&self) -> (u64, u64) {
        (self.inner.flush_count.load(Ordering::Relaxed), self.inner.flush_nanos.load(Ordering::Relaxed))
    }

    /// Puts since open whose records another put appended while it held the put lock.
    pub fn combined_appends(&self) -> u64 {
        self.inner.combined.load(Ordering::Relaxed)
    }

    /// Store time of the newest message in a queue, 0 when it has none.
    pub async fn last_store_time(&self, topic: &str, queue_id: i32) -> i64 {
        let Some(cq) = self.existing_queue(topic, queue_id) else { return 0 };
        let max = cq.max_offset();
        if max == 0 || max <= cq.min_offset() {
            return 0;
        }
        match cq.entry(max - 1).await {
            Ok(Some(e)) if !e.is_filler() => {
                self.store_time_of(e.phys_offset as u64, e.size as usize).await.unwrap_or(0).max(0)
            }
            _ => 0,
        }
    }

    /// Store time of the oldest message still in the log, 0 when it is empty.
    pub async fn earliest_message_time(&self) -> i64 {
        let min = self.commitlog_min_offset();
        if min >= self.commitlog_max_offset() {
            return 0;
        }
        self.lookup(min).await.map(|m| m.store_timestamp).unwrap_or(0)
    }

    pub fn disk(&self) -> &Disk {
        &self.inner.disk
    }

    pub fn commitlog_flushed_offset(&self) -> u64 {
        self.inner.commitlog.flushed()
    }

    /// Every (topic, queue id) with a consume queue, sorted.
    pub fn queue_ids(&self) -> Vec<(String, i32)> {
        self.inner.queues.read().unwrap().all().iter().map(|q| (q.topic.clone(), q.queue_id)).collect()
    }

    /// Number of files per kind, for retention checks and status output.
    pub async fn file_counts(&self) -> (usize, usize, usize) {
        let cl = self.inner.commitlog.segment_bases().len();
        let cq = self.inner.queues.read().unwrap().all().iter().map(|q| q.file_count()).sum();
        let idx = self.inner.index.lock().await.file_count();
        (cl, cq, idx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rt::sync::oneshot;

    fn job() -> (AppendJob, oneshot::Receiver<Appended>) {
        let (tx, rx) = oneshot::channel();
        (AppendJob { recs: Vec::new(), infos: Vec::new(), done: Some(tx) }, rx)
    }

    /// The turn was handed to a queued put that is dropped before it takes it up (its
    /// request was cancelled): the turn goes on to the next queued put, and with none left
    /// the combining ends, so later puts do not wait for a combiner that does not exist.
    #[test]
    fn a_turn_handed_to_a_dropped_put_goes_on() {
        let queue = std::sync::Mutex::new(AppendQueue::default());
        let (first, first_rx) = job();
        let (second, mut second_rx) = job();
        {
            let mut q = queue.lock().unwrap();
            q.combining = true;
            q.jobs.extend([first, second]);
            hand_on(&mut q);
        }
        drop(Waiting { queue: &queue, rx: Some(first_rx) });
        assert!(
            matches!(second_rx.try_recv(), Ok(Appended::YourTurn(_))),
            "the next queued put was not given the turn"
        );
        let mut q = queue.lock().unwrap();
        assert!(q.combining, "the second put holds the turn");
        hand_on(&mut q);
        assert!(!q.combining, "with nobody queued the turn ends");
    }
}
