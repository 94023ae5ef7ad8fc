//! Master/slave replication: RocketMQ's HA service.
//!
//! A slave connects to its master's HA listener (`haListenPort`, listenPort + 1 by default)
//! and reports its commitlog end as an 8-byte big-endian offset; the master streams raw
//! commitlog bytes from there in frames of `i64 start offset, i32 size, bytes` (at most
//! `haTransferBatchSize`; an empty frame is a heartbeat), and the slave appends them verbatim,
//! so both logs are byte-identical, builds its own consume queues and index, and reports its
//! new end after every frame. An empty slave is started at the master's last segment, as
//! RocketMQ does.
//!
//! One addition to RocketMQ's stream, for a master that lost power: bytes a slave copied
//! before the loss may be gone from the master, which then writes different records at the
//! same offsets. The master keeps an epoch list (`config/haEpoch.json`: a new epoch starts at
//! the log end of every boot after a recovery that was not clean) and opens each connection
//! with it (a frame with start offset -1). The slave keeps the list of the master it copied
//! from; the last epoch both lists share, up to where either side leaves it, is the part both
//! logs agree on, and the slave cuts its log there before reporting. So a slave never serves
//! or keeps bytes its master no longer has.
//!
//! A SYNC_MASTER that did not stop cleanly (a crash, a power loss) first takes back from its
//! slave the tail it may have lost: a send it answered SEND_OK was on the slave, so the slave
//! holds everything the master acked. Its first epoch frame then ends with 8 more bytes, the
//! master's log end; the slave answers with the log bytes it holds past that (same frames,
//! records whole) and an empty frame, the master appends them verbatim, and only then opens
//! its new epoch and takes sends again. No slave within `haReclaimTimeout`: it opens the
//! epoch without them (a slave that comes later cuts that tail, as above).
//!
//! SYNC_MASTER: a send is answered once a slave has confirmed its bytes; with no slave
//! connected (or one more than `haSlaveFallbehindMax` behind) it is SLAVE_NOT_AVAILABLE at
//! once, and past `slaveTimeout` FLUSH_SLAVE_TIMEOUT — both mean stored, not replicated.
//! After one such timeout, sends answer SLAVE_NOT_AVAILABLE at once until the slave has
//! confirmed what that send waited for (a cut-off slave does not make every send wait).

use crate::config::broker::{BrokerConfig, BrokerRole};
use crate::remoting::write_all;
use crate::rt::net::{AsyncReadExt, TcpListener, TcpStream};
use crate::rt::sync::{watch, Mutex as AsyncMutex, Notify};
use crate::store::{meta, MessageStore, PutStatus, StoreError};
use bytes::{Buf, BufMut, BytesMut};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const EPOCH_FILE: &str = "haEpoch.json";
const HEADER: usize = 12;
const EPOCH_FRAME: i64 = -1;
/// A slave's first frame of a give-back: its brokerId (8 bytes), so a master waiting for
/// several slaves counts each once, however often one reconnects.
const SLAVE_ID_FRAME: i64 = -2;
/// A frame larger than this is garbage, not a batch.
const MAX_FRAME: usize = 64 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Epoch {
    pub epoch: u64,
    pub start_offset: u64,
}

/// Where a slave's log and its master's agree: the end of the last epoch both lists hold,
/// as far as both logs reach. 0 when they share nothing (the slave starts over).
pub fn consistent_point(master: &[Epoch], master_end: u64, slave: &[Epoch], slave_end: u64) -> u64 {
    for (i, e) in slave.iter().enumerate().rev() {
        if let Some(j) = master.iter().position(|m| m == e) {
            let slave_to = slave.get(i + 1).map_or(slave_end, |n| n.start_offset).min(slave_end);
            let master_to = master.get(j + 1).map_or(master_end, |n| n.start_offset).min(master_end);
            return slave_to.min(master_to);
        }
    }
    0
}

/// Replication state of one broker (master or slave).
pub struct Ha {
    cfg: BrokerConfig,
    store: MessageStore,
    epochs: Mutex<Vec<Epoch>>,
    /// Master: the highest commitlog offset a slave has confirmed. Raised only under the
    /// `waits` lock, so a wait that finds it short under that lock is sure to be woken.
    acked: AtomicU64,
    /// Master: sends waiting for a slave to confirm up to an offset; each confirmation
    /// wakes exactly the ones it covers. No timer per send: one task (`expire_waits`) takes
    /// out and wakes those whose `slaveTimeout` ran out.
    waits: Mutex<Waits>,
    /// Master: a wait began with none pending (wakes `expire_waits`).
    first_waiter: Notify,
    /// Master: an offset a send waited `slaveTimeout` for in vain (0: none). Until a slave
    /// confirms it, sends answer SLAVE_NOT_AVAILABLE at once instead of each waiting too.
    stuck_at: AtomicU64,
    /// Master: slaves connected and reporting.
    slaves: AtomicUsize,
    /// Master: wakes the transfer loops when the log grows.
    grown: Notify,
    /// Slave: the master's HA address (configured, or learnt from the name server).
    master: Mutex<Option<String>>,
    /// Slave: attached to its master right now.
    linked: AtomicBool,
    /// Master: still to take back from a slave the tail a crash may have cost it.
    reclaiming: AtomicBool,
    /// Master: one connection at a time takes back; the deadline waits for it.
    reclaim: AsyncMutex<()>,
    /// Master: the slave ids the name servers knew for this broker when it came back (none
    /// known: the first slave's give-back ends the reclaim).
    expected_slaves: Mutex<std::collections::BTreeSet<u64>>,
    /// Master: the slaves that gave back their tail during this reclaim, by brokerId.
    given_back: Mutex<std::collections::BTreeSet<u64>>,
    stop: watch::Sender<bool>,
}

impl Ha {
    /// Loads the epoch list; a master opens a new epoch after a recovery that was not clean
    /// (a SYNC_MASTER once it has taken back what its slave holds past its end).
    pub async fn open(cfg: &BrokerConfig, store: &MessageStore) -> Result<Arc<Ha>, StoreError> {
        let path = epoch_path(cfg);
        let mut epochs: Vec<Epoch> = meta::load(store.disk(), &path).await?.unwrap_or_default();
        let unclean = !store.recovered_cleanly() && !epochs.is_empty();
        let reclaiming = cfg.broker_role == BrokerRole::SyncMaster && unclean && cfg.ha_reclaim_timeout_ms > 0;
        if cfg.broker_role != BrokerRole::Slave && (epochs.is_empty() || unclean && !reclaiming) {
            let start = if epochs.is_empty() { store.min_phys() } else { store.max_phys() };
            push_epoch(&mut epochs, start);
            meta::persist(store.disk(), &path, &epochs).await?;
        }
        if reclaiming {
            tracing::info!(
                end = store.max_phys(),
                "HA: not stopped cleanly; taking sends once a slave gave back what it holds past this end"
            );
        }
        let (stop, _) = watch::channel(false);
        Ok(Arc::new(Ha {
            cfg: cfg.clone(),
            store: store.clone(),
            epochs: Mutex::new(epochs),
            acked: AtomicU64::new(0),
            waits: Mutex::new(Default::default()),
            first_waiter: Notify::new(),
            stuck_at: AtomicU64::new(0),
            slaves: AtomicUsize::new(0),
            grown: Notify::new(),
            master: Mutex::new(cfg.ha_master_address.clone()),
            linked: AtomicBool::new(false),
            reclaiming: AtomicBool::new(reclaiming),
            reclaim: AsyncMutex::new(()),
            expected_slaves: Default::default(),
            given_back: Default::default(),
            stop,
        }))
    }

    /// Master: still waiting for a slave to give back the tail it may have lost (sends are
    /// refused meanwhile).
    pub fn reclaiming(&self) -> bool {
        self.reclaiming.load(Ordering::Acquire)
    }

    /// Master, reclaiming: the slaves the name servers know for this broker. Each must give
    /// back what it holds past this log's end before sends are taken: a SYNC_MASTER answers
    /// SEND_OK once any one slave has the bytes, so the slave that reaches the master first
    /// may be one that had fallen behind, and the tail only another holds would be dropped
    /// by that other when it attaches to the new epoch. Slaves are told apart by the brokerId
    /// each sends first in its give-back; `haReclaimTimeout` bounds the wait for one that is
    /// gone.
    pub fn expect_slaves(&self, ids: std::collections::BTreeSet<u64>) {
        if self.reclaiming() && ids.len() > 1 {
            tracing::info!(slaves = ?ids, "HA: taking back from every slave the name servers know");
        }
        *self.expected_slaves.lock().unwrap() = ids;
    }

    /// Master: notes that slave `id` gave back; true once every expected slave has.
    fn all_given_back(&self, id: u64) -> bool {
        let mut given = self.given_back.lock().unwrap();
        given.insert(id);
        let expected = self.expected_slaves.lock().unwrap();
        let missing: Vec<u64> = expected.difference(&given).copied().collect();
        if !missing.is_empty() {
            tracing::info!(slave = id, ?missing, "HA: a slave gave back its tail; waiting for the others");
        }
        missing.is_empty()
    }

    /// Master: stops waiting for a slave after `haReclaimTimeout`.
    pub async fn reclaim_deadline(self: Arc<Self>) {
        if !self.reclaiming() {
            return;
        }
        let mut stop = self.stop.subscribe();
        crate::rt::select! {
            biased;
            _ = stop.changed() => return,
            _ = crate::rt::time::sleep(Duration::from_millis(self.cfg.ha_reclaim_timeout_ms)) => {}
        }
        let _one = self.reclaim.lock().await;
        if self.reclaiming() {
            tracing::warn!(
                end = self.store.max_phys(),
                "HA: no slave gave back its log within {} ms; going on without it",
                self.cfg.ha_reclaim_timeout_ms
            );
            self.end_reclaim().await;
        }
    }

    /// Opens the epoch that follows the taken-back tail and takes sends again.
    async fn end_reclaim(&self) {
        let epochs = {
            let mut epochs = self.epochs.lock().unwrap();
            push_epoch(&mut epochs, self.store.max_phys());
            epochs.clone()
        };
        if let Err(e) = meta::persist(self.store.disk(), &epoch_path(&self.cfg), &epochs).await {
            tracing::error!(error = %e, "HA: persisting the new epoch failed");
        }
        self.reclaiming.store(false, Ordering::Release);
    }

    pub fn epochs(&self) -> Vec<Epoch> {
        self.epochs.lock().unwrap().clone()
    }

    /// The log grew (called for every stored record).
    pub fn wake(&self) {
        self.grown.notify_waiters();
    }

    /// A slave learns (from REGISTER_BROKER's answer) where its master's HA listener is.
    pub fn learn_master(&self, addr: &str) {
        if self.cfg.broker_role == BrokerRole::Slave && self.cfg.ha_master_address.is_none() {
            *self.master.lock().unwrap() = Some(addr.to_string());
        }
    }

    /// Slave: whether it knows where its master's HA listener is.
    pub fn knows_master(&self) -> bool {
        self.master.lock().unwrap().is_some()
    }

    /// Slave: whether it is attached to its master (so the master is up).
    pub fn master_linked(&self) -> bool {
        self.linked.load(Ordering::Acquire)
    }

    pub fn slaves_connected(&self) -> usize {
        self.slaves.load(Ordering::Acquire)
    }

    /// Master: the highest offset a slave has confirmed.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Acquire)
    }

    /// A slave confirmed the log up to `r`: the confirmed offset only moves forward, and the
    /// sends it covers are answered.
    fn confirm(&self, r: u64) {
        if r <= self.acked.load(Ordering::Acquire) {
            return;
        }
        let covered: Vec<Waiter> = {
            let mut w = self.waits.lock().unwrap();
            if r <= self.acked.load(Ordering::Relaxed) {
                return;
            }
            self.acked.store(r, Ordering::Release);
            let n = w.list.partition_point(|x| x.end <= r);
            w.list.drain(..n).collect()
        };
        for w in covered {
            w.waker.wake();
        }
    }

    /// Stops the listener and every connection.
    pub fn shutdown(&self) {
        self.stop.send_replace(true);
    }

    /// SYNC_MASTER: waits until a slave holds the log up to `end`.
    pub async fn wait_replicated(&self, end: u64) -> PutStatus {
        let acked = self.acked();
        let behind = self.store.max_phys().saturating_sub(acked);
        let stuck = self.stuck_at.load(Ordering::Acquire);
        if self.slaves_connected() == 0 || behind > self.cfg.ha_slave_fallbehind_max || stuck > acked {
            return PutStatus::SlaveNotAvailable;
        }
        let deadline = crate::rt::instant() + Duration::from_millis(self.cfg.slave_timeout_ms);
        Replication { ha: self, end, deadline, ticket: None }.await
    }

    /// Master: wakes the sends whose `slaveTimeout` ran out, sleeping until the earliest
    /// deadline (once per `slaveTimeout` under steady confirmations, not once per send).
    pub async fn expire_waits(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        loop {
            let next = self.waits.lock().unwrap().list.iter().map(|w| w.deadline).min();
            let Some(deadline) = next else {
                crate::rt::select! {
                    biased;
                    _ = stop.changed() => return,
                    _ = self.first_waiter.notified() => continue,
                }
            };
            crate::rt::select! {
                biased;
                _ = stop.changed() => return,
                _ = crate::rt::time::sleep_until(deadline) => {}
            }
            let now = crate::rt::instant();
            let mut expired = Vec::new();
            self.waits.lock().unwrap().list.retain_mut(|x| {
                if x.deadline > now {
                    return true;
                }
                // Until a slave confirms this, sends answer SLAVE_NOT_AVAILABLE at once.
                self.stuck_at.fetch_max(x.end, Ordering::AcqRel);
                expired.push(std::mem::replace(&mut x.waker, std::task::Waker::noop().clone()));
                false
            });
            for waker in expired {
                waker.wake();
            }
        }
    }

    /// Master: accepts slaves on the HA port until shutdown.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let mut stop = self.stop.subscribe();
        loop {
            let accepted = crate::rt::select! {
                biased;
                _ = stop.changed() => return,
                r = listener.accept() => r,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let ha = self.clone();
                    crate::rt::spawn(async move {
                        let reason = ha.clone().transfer(stream).await;
                        tracing::info!(slave = %peer, "HA connection closed: {reason}");
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "HA accept failed");
                    crate::rt::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Master side of one slave connection. Returns why it ended.
    async fn transfer(self: Arc<Self>, mut stream: TcpStream) -> String {
        if self.reclaiming() {
            let _one = self.reclaim.lock().await;
            if self.reclaiming() {
                match self.take_back(&mut stream).await {
                    Err(e) => return e,
                    Ok(id) => {
                        if self.all_given_back(id) {
                            self.end_reclaim().await;
                        }
                    }
                }
            }
        }
        let mut stop = self.stop.subscribe();
        let mut out = epoch_frame(&self.epochs(), None);
        if let Err(e) = write_all(&mut stream, &out).await {
            return format!("write failed: {e}");
        }
        let mut rbuf = BytesMut::with_capacity(64);
        let mut next: Option<u64> = None;
        let mut counted = false;
        let heartbeat = Duration::from_millis(self.cfg.ha_send_heartbeat_interval_ms);
        let housekeeping = Duration::from_millis(self.cfg.ha_housekeeping_interval_ms);
        let mut last_read = crate::rt::instant();
        let mut last_write = crate::rt::instant();
        let reason = loop {
            // The last complete report counts.
            let mut report = None;
            while rbuf.len() >= 8 {
                report = Some(rbuf.get_u64());
            }
            if let Some(r) = report {
                self.confirm(r);
                if next.is_none() {
                    let max = self.store.max_phys();
                    if r > max {
                        break format!("slave reports {r}, past this master's end {max}");
                    }
                    let start = if r == 0 { max - max % self.store.segment_size() } else { r };
                    if start < self.store.min_phys() && start < max {
                        break format!("slave needs {start}, before this master's first offset");
                    }
                    tracing::info!(slave_end = r, start, "HA: slave attached");
                    next = Some(start);
                    self.slaves.fetch_add(1, Ordering::AcqRel);
                    counted = true;
                }
            }
            if let Some(n) = next {
                match self.store.read_log(n, self.cfg.ha_transfer_batch_size).await {
                    Ok(data) if !data.is_empty() => {
                        if let Err(e) = send_frame(&mut stream, &mut out, n, &data).await {
                            break e;
                        }
                        next = Some(n + data.len() as u64);
                        last_write = crate::rt::instant();
                        // Take the slave's reports between batches.
                        match read_ready(&mut stream, &mut rbuf) {
                            Ok(true) => last_read = crate::rt::instant(),
                            Ok(false) => {}
                            Err(e) => break e,
                        }
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => break format!("reading the log at {n}: {e}"),
                }
            }
            let mut grown = std::pin::pin!(self.grown.notified());
            grown.as_mut().enable();
            if next.is_some_and(|n| self.store.max_phys() > n) {
                continue;
            }
            let tick = heartbeat.min(housekeeping) / 2;
            crate::rt::select! {
                biased;
                _ = stop.changed() => break "broker shutting down".to_string(),
                r = stream.read_buf(&mut rbuf) => match r {
                    Ok(0) => break "closed by slave".to_string(),
                    Ok(_) => last_read = crate::rt::instant(),
                    Err(e) => break format!("read failed: {e}"),
                },
                _ = &mut grown, if next.is_some() => {}
                _ = crate::rt::time::sleep(tick) => {
                    if last_read.elapsed() >= housekeeping {
                        break format!("no report for {} ms", housekeeping.as_millis());
                    }
                    if let Some(n) = next.filter(|_| last_write.elapsed() >= heartbeat) {
                        if let Err(e) = send_frame(&mut stream, &mut out, n, &[]).await {
                            break e;
                        }
                        last_write = crate::rt::instant();
                    }
                }
            }
        };
        if counted {
            self.slaves.fetch_sub(1, Ordering::AcqRel);
        }
        reason
    }

    /// Master, not stopped cleanly: asks the slave for what it holds past this log's end and
    /// appends it verbatim. Returns the slave's brokerId.
    async fn take_back(&self, stream: &mut TcpStream) -> Result<u64, String> {
        let from = self.store.max_phys();
        let frame = epoch_frame(&self.epochs(), Some(from));
        write_all(stream, &frame).await.map_err(|e| format!("write failed: {e}"))?;
        let wait = Duration::from_millis(self.cfg.ha_housekeeping_interval_ms);
        let mut stop = self.stop.subscribe();
        let mut rbuf = BytesMut::with_capacity(64 * 1024);
        let mut slave = None;
        loop {
            while let Some((start, body)) = next_frame(&mut rbuf)? {
                let end = self.store.max_phys();
                if start == SLAVE_ID_FRAME {
                    let id = <[u8; 8]>::try_from(&body[..]).map_err(|_| "bad slave id frame".to_string())?;
                    slave = Some(u64::from_be_bytes(id));
                    continue;
                }
                let Some(slave) = slave else {
                    return Err("slave gave back bytes before its id".to_string());
                };
                if body.is_empty() {
                    self.store.raise_recovered_ends();
                    tracing::info!(
                        slave,
                        from,
                        to = end,
                        bytes = end - from,
                        "HA: took back the log tail from the slave"
                    );
                    return Ok(slave);
                }
                if start != end as i64 {
                    return Err(format!("slave gave back bytes at {start}, this log ends at {end}"));
                }
                self.store.append_replica(end, &body).await.map_err(|e| format!("append at {end} failed: {e}"))?;
            }
            crate::rt::select! {
                biased;
                _ = stop.changed() => return Err("broker shutting down".to_string()),
                r = crate::rt::time::timeout(wait, stream.read_buf(&mut rbuf)) => match r {
                    Ok(Ok(0)) => return Err("closed by slave while giving back".to_string()),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(format!("read failed: {e}")),
                    Err(_) => return Err(format!("slave gave nothing back for {} ms", wait.as_millis())),
                },
            }
        }
    }

    /// Slave: keeps a connection to the master, reconnecting every second, until shutdown.
    pub async fn follow(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        loop {
            let master = self.master.lock().unwrap().clone();
            if let Some(addr) = master.clone() {
                match crate::rt::net::resolve(&addr).await {
                    Ok(sa) => match TcpStream::connect(sa).await {
                        Ok(stream) => {
                            let _ = stream.set_nodelay(true);
                            let reason = self.clone().replicate(stream).await;
                            self.linked.store(false, Ordering::Release);
                            tracing::info!(master = %addr, "HA: connection to master closed: {reason}");
                        }
                        Err(e) => tracing::debug!(master = %addr, error = %e, "HA: connect to master failed"),
                    },
                    Err(e) => tracing::warn!(master = %addr, error = %e, "HA: bad master address"),
                }
            }
            // Reconnect every second (RocketMQ waits 5 s): a master that restarts after a crash
            // takes sends once its slave is back.
            let pause = Duration::from_secs(1);
            crate::rt::select! {
                biased;
                _ = stop.changed() => return,
                _ = crate::rt::time::sleep(pause) => {}
            }
        }
    }

    /// Slave side of one connection. Returns why it ended.
    async fn replicate(self: Arc<Self>, mut stream: TcpStream) -> String {
        let mut stop = self.stop.subscribe();
        let mut rbuf = BytesMut::with_capacity(64 * 1024);
        let heartbeat = Duration::from_millis(self.cfg.ha_send_heartbeat_interval_ms);
        let housekeeping = Duration::from_millis(self.cfg.ha_housekeeping_interval_ms);
        let mut attached = false;
        let mut reported = u64::MAX;
        let mut last_read = crate::rt::instant();
        let mut last_report = crate::rt::instant();
        loop {
            // Apply every complete frame.
            loop {
                let (start, body) = match next_frame(&mut rbuf) {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => return e,
                };
                if start == EPOCH_FRAME {
                    let (epochs, give_back) = parse_epochs(&body);
                    if let Err(e) = self.attach(epochs).await {
                        return format!("attaching failed: {e}");
                    }
                    attached = true;
                    reported = u64::MAX;
                    self.linked.store(give_back.is_none(), Ordering::Release);
                    if let Some(from) = give_back {
                        if let Err(e) = self.give_back(&mut stream, from).await {
                            return e;
                        }
                        // The master opens its next epoch and sends it.
                        attached = false;
                    }
                    continue;
                }
                if !attached {
                    return "master sent log bytes before its epochs".to_string();
                }
                if !body.is_empty() {
                    if let Err(e) = self.store.append_replica_raw(start as u64, &body).await {
                        return format!("append at {start} failed: {e}");
                    }
                }
            }
            // Confirm first (the master's senders wait on it), then build queues and index.
            let end = self.store.max_phys();
            if attached && (end != reported || last_report.elapsed() >= heartbeat) {
                if let Err(e) = write_all(&mut stream, &end.to_be_bytes()).await {
                    return format!("write failed: {e}");
                }
                reported = end;
                last_report = crate::rt::instant();
            }
            if let Err(e) = self.store.dispatch_replica().await {
                return format!("dispatching replicated records failed: {e}");
            }
            let tick = heartbeat.min(housekeeping) / 2;
            crate::rt::select! {
                biased;
                _ = stop.changed() => return "broker shutting down".to_string(),
                r = stream.read_buf(&mut rbuf) => match r {
                    Ok(0) => return "closed by master".to_string(),
                    Ok(_) => last_read = crate::rt::instant(),
                    Err(e) => return format!("read failed: {e}"),
                },
                _ = crate::rt::time::sleep(tick) => {
                    if last_read.elapsed() >= housekeeping {
                        return format!("nothing from the master for {} ms", housekeeping.as_millis());
                    }
                }
            }
        }
    }

    /// Slave: the master's epochs arrived; cut whatever the master no longer has, then take
    /// its list as ours.
    async fn attach(&self, master: Vec<Epoch>) -> Result<(), StoreError> {
        let mine = self.epochs();
        let end = self.store.max_phys();
        let has_log = end > self.store.min_phys();
        if has_log {
            // The master's end is its business: a report past it closes the connection there.
            let keep = consistent_point(&master, u64::MAX, &mine, end);
            if keep < end {
                let cut = self.store.truncate_replica(keep).await?;
                tracing::warn!(from = keep, bytes = cut, "HA: dropped the log tail the master does not have");
            }
        }
        if mine != master {
            meta::persist(self.store.disk(), &epoch_path(&self.cfg), &master).await?;
            *self.epochs.lock().unwrap() = master;
        }
        Ok(())
    }

    /// Slave: the master lost its tail past `from`; sends it the whole records this log holds
    /// from there, then an empty frame.
    async fn give_back(&self, stream: &mut TcpStream, from: u64) -> Result<(), String> {
        let end = self.store.complete_phys();
        let mut at = from;
        let mut out = BytesMut::new();
        out.put_i64(SLAVE_ID_FRAME);
        out.put_i32(8);
        out.put_u64(self.cfg.broker_id);
        write_all(stream, &out).await.map_err(|e| format!("write failed: {e}"))?;
        while at < end {
            let data = self
                .store
                .read_log(at, self.cfg.ha_transfer_batch_size)
                .await
                .map_err(|e| format!("reading the log at {at}: {e}"))?;
            let data = data.slice(..data.len().min((end - at) as usize));
            if data.is_empty() {
                break;
            }
            send_frame(stream, &mut out, at, &data).await?;
            at += data.len() as u64;
        }
        send_frame(stream, &mut out, at, &[]).await?;
        if at > from {
            tracing::info!(from, to = at, "HA: gave the master back the log tail it lost");
        }
        Ok(())
    }
}

/// Sends waiting for a slave's confirmation, in order of (end, ticket).
#[derive(Default)]
struct Waits {
    /// Sorted; appends come in log order, so a new wait nearly always goes last.
    list: std::collections::VecDeque<Waiter>,
    next_ticket: u64,
}

impl Waits {
    fn find(&self, end: u64, ticket: u64) -> Option<usize> {
        let i = self.list.partition_point(|x| (x.end, x.ticket) < (end, ticket));
        (self.list.get(i).is_some_and(|x| x.ticket == ticket)).then_some(i)
    }
}

/// A send waiting for a slave's confirmation.
struct Waiter {
    end: u64,
    ticket: u64,
    waker: std::task::Waker,
    deadline: crate::rt::time::Instant,
}

/// Resolves once a slave confirmed `end` (PUT_OK) or once `expire_waits` took it out at
/// `deadline` (FLUSH_SLAVE_TIMEOUT). In `Ha::waits` while pending; dropped early, it leaves.
struct Replication<'a> {
    ha: &'a Ha,
    end: u64,
    deadline: crate::rt::time::Instant,
    /// Set while registered in `Ha::waits`.
    ticket: Option<u64>,
}

impl std::future::Future for Replication<'_> {
    type Output = PutStatus;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<PutStatus> {
        use std::task::Poll;
        let this = self.get_mut();
        let ha = this.ha;
        if ha.acked.load(Ordering::Acquire) >= this.end {
            this.ticket = None; // a confirmation that covers `end` took our entry out
            return Poll::Ready(PutStatus::PutOk);
        }
        let mut w = ha.waits.lock().unwrap();
        // Checked again under the lock `confirm` raises it under: none slips between.
        if ha.acked.load(Ordering::Relaxed) >= this.end {
            this.ticket = None;
            return Poll::Ready(PutStatus::PutOk);
        }
        match this.ticket {
            Some(t) => match w.find(this.end, t) {
                Some(i) => {
                    if !w.list[i].waker.will_wake(cx.waker()) {
                        w.list[i].waker = cx.waker().clone();
                    }
                }
                None => {
                    // Not confirmed, yet out of the list: `expire_waits` took it out.
                    this.ticket = None;
                    return Poll::Ready(PutStatus::FlushSlaveTimeout);
                }
            },
            None => {
                let ticket = w.next_ticket;
                w.next_ticket += 1;
                let first = w.list.is_empty();
                // After every wait of the same end: the new ticket is the highest.
                let at = w.list.partition_point(|x| x.end <= this.end);
                w.list.insert(at, Waiter { end: this.end, ticket, waker: cx.waker().clone(), deadline: this.deadline });
                this.ticket = Some(ticket);
                drop(w);
                if first {
                    ha.first_waiter.notify_one();
                }
            }
        }
        Poll::Pending
    }
}

impl Drop for Replication<'_> {
    fn drop(&mut self) {
        if let Some(t) = self.ticket.take() {
            let mut w = self.ha.waits.lock().unwrap();
            if let Some(i) = w.find(self.end, t) {
                w.list.remove(i);
            }
        }
    }
}

/// Writes one `i64 start, i32 size, bytes` frame (empty: a heartbeat, or the end of a
/// give-back), built in `out`.
async fn send_frame(stream: &mut TcpStream, out: &mut BytesMut, start: u64, data: &[u8]) -> Result<(), String> {
    out.clear();
    out.put_u64(start);
    out.put_i32(data.len() as i32);
    out.extend_from_slice(data);
    write_all(stream, out).await.map_err(|e| format!("write failed: {e}"))
}

fn push_epoch(epochs: &mut Vec<Epoch>, start_offset: u64) {
    let e = Epoch { epoch: epochs.last().map_or(1, |e| e.epoch + 1), start_offset };
    tracing::info!(epoch = e.epoch, start = e.start_offset, "HA: new epoch");
    epochs.push(e);
}

/// The frame that opens a connection: the master's epochs, and when it asks for its lost tail
/// back, the offset to give back from.
fn epoch_frame(epochs: &[Epoch], give_back_from: Option<u64>) -> BytesMut {
    let mut out = BytesMut::new();
    out.put_i64(EPOCH_FRAME);
    out.put_i32((epochs.len() * 16 + give_back_from.map_or(0, |_| 8)) as i32);
    for e in epochs {
        out.put_u64(e.epoch);
        out.put_u64(e.start_offset);
    }
    if let Some(from) = give_back_from {
        out.put_u64(from);
    }
    out
}

fn parse_epochs(body: &[u8]) -> (Vec<Epoch>, Option<u64>) {
    let chunks = body.chunks_exact(16);
    let rest = chunks.remainder();
    let give_back = (rest.len() == 8).then(|| u64::from_be_bytes(rest.try_into().unwrap()));
    let epochs = chunks
        .map(|c| Epoch {
            epoch: u64::from_be_bytes(c[..8].try_into().unwrap()),
            start_offset: u64::from_be_bytes(c[8..].try_into().unwrap()),
        })
        .collect();
    (epochs, give_back)
}

/// Splits one whole `i64 start, i32 size, bytes` frame off the buffer, if it holds one.
fn next_frame(buf: &mut BytesMut) -> Result<Option<(i64, BytesMut)>, String> {
    if buf.len() < HEADER {
        return Ok(None);
    }
    let start = i64::from_be_bytes(buf[..8].try_into().unwrap());
    let size = i32::from_be_bytes(buf[8..12].try_into().unwrap());
    if size < 0 || size as usize > MAX_FRAME {
        return Err(format!("bad frame size {size}"));
    }
    if buf.len() < HEADER + size as usize {
        return Ok(None);
    }
    buf.advance(HEADER);
    Ok(Some((start, buf.split_to(size as usize))))
}

fn epoch_path(cfg: &BrokerConfig) -> PathBuf {
    meta::config_dir(&cfg.store.store_path_root_dir).join(EPOCH_FILE)
}

/// Reads what the socket already has without waiting: `Ok(true)` if anything came.
fn read_ready(stream: &mut TcpStream, buf: &mut BytesMut) -> Result<bool, String> {
    use futures_util::FutureExt;
    match stream.read_buf(buf).now_or_never() {
        Some(Ok(0)) => Err("closed by slave".to_string()),
        Some(Ok(_)) => Ok(true),
        Some(Err(e)) => Err(format!("read failed: {e}")),
        None => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(epoch: u64, start: u64) -> Epoch {
        Epoch { epoch, start_offset: start }
    }

    /// Waits resolve when a confirmation covers them, time out at `slaveTimeout` without a
    /// timer of their own, and leave no entry behind, answered or dropped.
    #[test]
    fn waits_end_at_their_confirmation_or_their_slave_timeout() {
        crate::rt::block_on_paused(waits_end_at_their_confirmation_or_their_slave_timeout_async());
    }

    async fn waits_end_at_their_confirmation_or_their_slave_timeout_async() {
        use futures_util::FutureExt;
        let dir = tempfile::tempdir().unwrap();
        let mut cfg =
            BrokerConfig { broker_role: BrokerRole::SyncMaster, slave_timeout_ms: 3_000, ..Default::default() };
        cfg.store.store_path_root_dir = dir.path().into();
        cfg.store.mapped_file_size_commit_log = 64 * 1024;
        let store = MessageStore::open(cfg.store.clone(), crate::rt::disk::Disk::Real).await.unwrap();
        let ha = Ha::open(&cfg, &store).await.unwrap();
        ha.slaves.store(1, Ordering::Release);
        let expiry = crate::rt::spawn(ha.clone().expire_waits());

        let mut a = Box::pin(ha.wait_replicated(100));
        let mut b = Box::pin(ha.wait_replicated(200));
        let mut c = Box::pin(ha.wait_replicated(300));
        let mut dropped = Box::pin(ha.wait_replicated(400));
        for w in [&mut a, &mut b, &mut c, &mut dropped] {
            assert!(w.as_mut().now_or_never().is_none());
        }
        assert_eq!(ha.waits.lock().unwrap().list.len(), 4);
        drop(dropped);
        assert_eq!(ha.waits.lock().unwrap().list.len(), 3, "a dropped wait leaves");

        ha.confirm(200);
        assert_eq!(a.await, PutStatus::PutOk);
        assert_eq!(b.await, PutStatus::PutOk);
        assert_eq!(ha.waits.lock().unwrap().list.len(), 1);

        let started = crate::rt::instant();
        let late = crate::rt::time::timeout(Duration::from_secs(10), c).await;
        assert_eq!(late.expect("the wait ends at slaveTimeout"), PutStatus::FlushSlaveTimeout);
        assert_eq!(started.elapsed(), Duration::from_millis(3_000));
        assert!(ha.waits.lock().unwrap().list.is_empty());
        // Until a slave confirms what that send waited for, sends do not wait at all.
        assert_eq!(ha.wait_replicated(500).await, PutStatus::SlaveNotAvailable);
        ha.confirm(300);
        let mut d = Box::pin(ha.wait_replicated(500));
        assert!(d.as_mut().now_or_never().is_none());
        ha.confirm(600);
        assert_eq!(d.await, PutStatus::PutOk);
        ha.shutdown();
        expiry.await.unwrap();
    }

    #[test]
    fn consistent_point_is_where_the_shared_epoch_ends() {
        // Same history: the shorter log's end.
        assert_eq!(consistent_point(&[e(1, 0)], 900, &[e(1, 0)], 500), 500);
        assert_eq!(consistent_point(&[e(1, 0)], 400, &[e(1, 0)], 500), 400);
        // The master lost power at 300 and went on with epoch 2: the slave's bytes past 300
        // came from the lost tail.
        assert_eq!(consistent_point(&[e(1, 0), e(2, 300)], 900, &[e(1, 0)], 500), 300);
        // The slave already follows epoch 2.
        assert_eq!(consistent_point(&[e(1, 0), e(2, 300)], 900, &[e(1, 0), e(2, 300)], 700), 700);
        // Two losses the slave missed.
        assert_eq!(consistent_point(&[e(1, 0), e(2, 300), e(3, 350)], 900, &[e(1, 0)], 500), 300);
        // Nothing shared: start over.
        assert_eq!(consistent_point(&[e(5, 0)], 900, &[e(1, 0)], 500), 0);
        assert_eq!(consistent_point(&[e(1, 0)], 900, &[], 500), 0);
    }
}
