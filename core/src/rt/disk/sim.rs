//! Simulated disk: one per node, in memory, keeping written and durable bytes apart.
//!
//! Fault zones: `crash` (written bytes survive, handles of the dead process stop working,
//! locks are released), `power_loss` (only durable bytes survive, optionally one torn page per
//! file), `SimFault::Stall` (every call waits until a time), `SimFault::Slow` (every call takes
//! longer), `SimFault::SlowSync` (every sync takes longer), `SimFault::Full` (new space — a
//! new segment or file — fails with ENOSPC; writes into preallocated segments still succeed,
//! as on a real disk), `SimFault::Eio` (every call fails), and `flip_bits` (corrupts a range
//! in both written and durable bytes). `sync_count` counts syncs, to observe group commit.
//! Waiting uses runtime time, so under madsim a stall costs no real time.

use super::{check_range, lock_failed};
use bytes::Bytes;
use rand::Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const PAGE: usize = 4096;

/// A fault that applies to every call until cleared.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SimFault {
    /// Every call waits until this runtime instant before proceeding.
    Stall(crate::rt::time::Instant),
    /// Every call takes this much longer.
    Slow(Duration),
    /// Every sync takes this much longer (an fsync stuck behind the device).
    SlowSync(Duration),
    /// No free space: creating a segment or writing a file fails with ENOSPC. Writes into
    /// space already allocated (a preallocated segment) still succeed, as on a real disk.
    Full,
    /// Every call fails with EIO.
    Eio,
}

#[derive(Default)]
struct SimFile {
    written: Vec<u8>,
    durable: Vec<u8>,
    /// Declared size for segments (reads past `written` see zeros); 0 for plain files.
    size: u64,
    modified_ms: u64,
    /// A segment synced after every group of appends (SYNC_FLUSH): as on the real disk, its
    /// appends since the last sync are held by the process, not yet handed to the OS.
    held_by_process: bool,
    /// Those appends: where they start and the bytes they wrote over, which is what a crash
    /// leaves there.
    tail: Option<(usize, Vec<u8>)>,
}

impl SimFile {
    /// Where the held appends end, if any.
    fn tail_end(&self) -> Option<usize> {
        self.tail.as_ref().map(|(start, before)| start + before.len())
    }

    /// Notes a write to a process-held segment before it lands in `written`.
    fn hold(&mut self, pos: usize, len: usize) {
        if !self.held_by_process {
            return;
        }
        let end = pos + len;
        let before = |w: &Vec<u8>| (pos..end).map(|i| w.get(i).copied().unwrap_or(0)).collect::<Vec<u8>>();
        match self.tail_end() {
            None => self.tail = Some((pos, before(&self.written))),
            Some(e) if e == pos => {
                let more = before(&self.written);
                self.tail.as_mut().unwrap().1.extend(more);
            }
            // Not an append: the real disk writes out what it holds, then this write.
            Some(_) => self.tail = None,
        }
        if self.tail.as_ref().is_some_and(|(_, b)| b.len() >= super::TAIL_SPILL) {
            self.tail = None;
        }
    }
}

#[derive(Default)]
struct State {
    files: BTreeMap<PathBuf, Arc<Mutex<SimFile>>>,
    dirs: BTreeSet<PathBuf>,
    locks: BTreeSet<PathBuf>,
    /// Bumped by crash/power loss: handles from an older generation belong to a dead process.
    generation: u64,
    faults: Vec<SimFault>,
    capacity_bytes: u64,
    syncs: u64,
}

/// The in-memory disk of one simulated node. Clones share it.
#[derive(Clone)]
pub struct SimDisk {
    state: Arc<Mutex<State>>,
}

#[derive(Clone)]
pub struct SimSegment {
    disk: SimDisk,
    path: PathBuf,
    file: Arc<Mutex<SimFile>>,
    size: u64,
    generation: u64,
}

pub struct SimLock {
    disk: SimDisk,
    dir: PathBuf,
    generation: u64,
}

impl Drop for SimLock {
    fn drop(&mut self) {
        let mut st = self.disk.state.lock().unwrap();
        if st.generation == self.generation {
            st.locks.remove(&self.dir);
        }
    }
}

fn eio(what: &str) -> io::Error {
    io::Error::other(format!("simulated EIO: {what}"))
}

fn enospc() -> io::Error {
    io::Error::new(io::ErrorKind::StorageFull, "simulated ENOSPC: no space left on device")
}

impl Default for SimDisk {
    fn default() -> Self {
        Self::new()
    }
}

impl SimDisk {
    pub fn new() -> Self {
        let state = State { capacity_bytes: 64 << 30, ..State::default() };
        SimDisk { state: Arc::new(Mutex::new(state)) }
    }

    /// Total capacity used for `usage_ratio` (default 64 GiB).
    pub fn set_capacity(&self, bytes: u64) {
        self.state.lock().unwrap().capacity_bytes = bytes;
    }

    /// Bytes allocated by all files (what `usage_ratio` divides by the capacity).
    pub fn used_bytes(&self) -> u64 {
        Self::used(&self.state.lock().unwrap())
    }

    pub fn add_fault(&self, fault: SimFault) {
        self.state.lock().unwrap().faults.push(fault);
    }

    /// Removes one fault added before (the others stay).
    pub fn remove_fault(&self, fault: SimFault) {
        let mut st = self.state.lock().unwrap();
        if let Some(i) = st.faults.iter().position(|f| *f == fault) {
            st.faults.remove(i);
        }
    }

    pub fn clear_faults(&self) {
        self.state.lock().unwrap().faults.clear();
    }

    /// The process died: its handles and locks are gone; every byte it handed the OS stays,
    /// and the appends a SYNC_FLUSH segment still held in the process are gone.
    pub fn crash(&self) {
        let mut st = self.state.lock().unwrap();
        st.generation += 1;
        st.locks.clear();
        for file in st.files.values() {
            let mut f = file.lock().unwrap();
            if let Some((start, before)) = f.tail.take() {
                f.written[start..start + before.len()].copy_from_slice(&before);
            }
        }
    }

    /// Where the bytes a process crash would lose start in a file, if any (the appends a
    /// SYNC_FLUSH segment holds since its last sync).
    pub fn crash_loses_from(&self, path: &Path) -> Option<usize> {
        let st = self.state.lock().unwrap();
        let f = st.files.get(path)?.lock().unwrap();
        f.tail.as_ref().map(|(start, _)| *start)
    }

    /// The machine lost power: a crash, and every byte not made durable is lost. With
    /// `tear`, each file that had unsynced bytes keeps a random prefix of its first unsynced
    /// page, as a disk that wrote part of a page would.
    pub fn power_loss(&self, rng: &mut impl Rng, tear: bool) {
        self.crash();
        let st = self.state.lock().unwrap();
        for file in st.files.values() {
            let mut f = file.lock().unwrap();
            let first_diff = f.written.iter().zip(f.durable.iter()).position(|(a, b)| a != b);
            let first_diff = first_diff.or((f.written.len() > f.durable.len()).then_some(f.durable.len()));
            let mut kept = f.durable.clone();
            if let (true, Some(at)) = (tear, first_diff) {
                let page_end = ((at / PAGE) + 1) * PAGE;
                let torn_end = rng.gen_range(at..=page_end.min(f.written.len()));
                if kept.len() < torn_end {
                    kept.resize(torn_end, 0);
                }
                kept[at..torn_end].copy_from_slice(&f.written[at..torn_end]);
            }
            f.durable = kept.clone();
            f.written = kept;
        }
    }

    /// Flips one random bit in each of `count` random bytes of `range` of a file, in both its
    /// written and durable bytes (media corruption). Returns the positions flipped.
    pub fn flip_bits(
        &self,
        path: &Path,
        range: std::ops::Range<usize>,
        count: usize,
        rng: &mut impl Rng,
    ) -> Vec<usize> {
        let st = self.state.lock().unwrap();
        let Some(file) = st.files.get(path) else { return Vec::new() };
        let mut guard = file.lock().unwrap();
        let f = &mut *guard;
        let mut flipped = Vec::with_capacity(count);
        for _ in 0..count {
            let at = rng.gen_range(range.clone());
            let bit = 1u8 << rng.gen_range(0..8);
            for buf in [&mut f.written, &mut f.durable] {
                if at < buf.len() {
                    buf[at] ^= bit;
                }
            }
            flipped.push(at);
        }
        flipped
    }

    /// Every file with the number of bytes written to it, in path order (for a harness that
    /// picks where to flip bits or asks what a power loss would keep).
    /// Frees every file's bytes, for the end of a simulated run: tasks the runtime leaks at
    /// its end keep their handles, so only emptied files stay alive with them.
    pub fn wipe(&self) {
        let mut st = self.state.lock().unwrap();
        for f in st.files.values() {
            let mut f = f.lock().unwrap();
            f.written = Vec::new();
            f.durable = Vec::new();
        }
        st.files.clear();
    }

    pub fn files(&self) -> Vec<(PathBuf, usize)> {
        let st = self.state.lock().unwrap();
        st.files.iter().map(|(p, f)| (p.clone(), f.lock().unwrap().written.len())).collect()
    }

    /// The written bytes of `range` in a file (zeros past its end); `None` for no such file.
    pub fn peek(&self, path: &Path, range: std::ops::Range<usize>) -> Option<Vec<u8>> {
        let st = self.state.lock().unwrap();
        let f = st.files.get(path)?.lock().unwrap();
        let mut out = vec![0u8; range.len()];
        let end = range.end.min(f.written.len());
        if range.start < end {
            out[..end - range.start].copy_from_slice(&f.written[range.start..end]);
        }
        Some(out)
    }

    /// Whether `range` of a file would survive a power loss now: it was synced and not
    /// written since.
    pub fn is_durable(&self, path: &Path, range: std::ops::Range<usize>) -> bool {
        let st = self.state.lock().unwrap();
        let Some(f) = st.files.get(path) else { return false };
        let f = f.lock().unwrap();
        range.end <= f.durable.len() && range.end <= f.written.len() && f.durable[range.clone()] == f.written[range]
    }

    /// Applies the active faults to one call: waits out stalls and slowness, then fails it if
    /// the disk is broken or (for writes) full.
    async fn gate(&self, write: bool) -> io::Result<()> {
        self.gate_op(write, false).await
    }

    async fn gate_op(&self, write: bool, sync: bool) -> io::Result<()> {
        let faults = self.state.lock().unwrap().faults.clone();
        for fault in faults {
            match fault {
                SimFault::Stall(until) => crate::rt::time::sleep_until(until).await,
                SimFault::Slow(d) => crate::rt::time::sleep(d).await,
                SimFault::SlowSync(d) if sync => crate::rt::time::sleep(d).await,
                SimFault::SlowSync(_) => {}
                SimFault::Eio => return Err(eio("disk failed")),
                SimFault::Full if write => return Err(enospc()),
                SimFault::Full => {}
            }
        }
        Ok(())
    }

    fn check_space(st: &State, extra: u64) -> io::Result<()> {
        if Self::used(st) + extra > st.capacity_bytes {
            return Err(enospc());
        }
        Ok(())
    }

    fn used(st: &State) -> u64 {
        st.files
            .values()
            .map(|f| {
                let f = f.lock().unwrap();
                f.size.max(f.written.len() as u64)
            })
            .sum()
    }

    pub async fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.gate(false).await?;
        let mut st = self.state.lock().unwrap();
        for anc in path.ancestors() {
            st.dirs.insert(anc.to_path_buf());
        }
        Ok(())
    }

    pub async fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.gate(false).await?;
        let st = self.state.lock().unwrap();
        let children = st.files.keys().chain(st.dirs.iter()).filter(|p| p.parent() == Some(dir));
        let names: BTreeSet<String> =
            children.filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())).collect();
        Ok(names.into_iter().collect())
    }

    pub async fn exists(&self, path: &Path) -> io::Result<bool> {
        self.gate(false).await?;
        let st = self.state.lock().unwrap();
        Ok(st.files.contains_key(path) || st.dirs.contains(path))
    }

    pub async fn open_segment(&self, path: &Path, size: u64) -> io::Result<SimSegment> {
        self.gate(false).await?;
        let mut st = self.state.lock().unwrap();
        let file = match st.files.get(path) {
            Some(f) => {
                let existing = f.lock().unwrap().size;
                if existing != size {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("segment {} is {} bytes, expected {}", path.display(), existing, size),
                    ));
                }
                f.clone()
            }
            None => {
                if st.faults.contains(&SimFault::Full) {
                    return Err(enospc());
                }
                Self::check_space(&st, size)?;
                let f = Arc::new(Mutex::new(SimFile { size, modified_ms: crate::rt::now_ms(), ..SimFile::default() }));
                st.files.insert(path.to_path_buf(), f.clone());
                f
            }
        };
        Ok(SimSegment { disk: self.clone(), path: path.to_path_buf(), file, size, generation: st.generation })
    }

    pub async fn read_file(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        self.gate(false).await?;
        let st = self.state.lock().unwrap();
        Ok(st.files.get(path).map(|f| f.lock().unwrap().written.clone()))
    }

    pub async fn write_file(&self, path: &Path, data: &[u8], sync: bool) -> io::Result<()> {
        self.gate(true).await?;
        let mut st = self.state.lock().unwrap();
        Self::check_space(&st, data.len() as u64)?;
        let f = SimFile {
            written: data.to_vec(),
            durable: if sync { data.to_vec() } else { Vec::new() },
            size: 0,
            modified_ms: crate::rt::now_ms(),
            ..SimFile::default()
        };
        st.files.insert(path.to_path_buf(), Arc::new(Mutex::new(f)));
        Ok(())
    }

    pub async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.gate(true).await?;
        let mut st = self.state.lock().unwrap();
        let f = st
            .files
            .remove(from)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("rename: {} not found", from.display())))?;
        st.files.insert(to.to_path_buf(), f);
        Ok(())
    }

    pub async fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.gate(false).await?;
        self.state.lock().unwrap().files.remove(path);
        Ok(())
    }

    pub async fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        self.gate(false).await?;
        let mut st = self.state.lock().unwrap();
        st.files.retain(|p, _| !p.starts_with(path));
        st.dirs.retain(|p| !p.starts_with(path));
        Ok(())
    }

    pub async fn modified_ms(&self, path: &Path) -> io::Result<u64> {
        self.gate(false).await?;
        let st = self.state.lock().unwrap();
        let f =
            st.files.get(path).ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, path.display().to_string()))?;
        let t = f.lock().unwrap().modified_ms;
        Ok(t)
    }

    pub async fn usage_ratio(&self) -> io::Result<f64> {
        self.gate(false).await?;
        let st = self.state.lock().unwrap();
        Ok(Self::used(&st) as f64 / st.capacity_bytes.max(1) as f64)
    }

    pub async fn lock_dir(&self, dir: &Path) -> io::Result<SimLock> {
        self.gate(false).await?;
        let mut st = self.state.lock().unwrap();
        if !st.locks.insert(dir.to_path_buf()) {
            return Err(lock_failed(dir));
        }
        for anc in dir.ancestors() {
            st.dirs.insert(anc.to_path_buf());
        }
        Ok(SimLock { disk: self.clone(), dir: dir.to_path_buf(), generation: st.generation })
    }

    /// Segment syncs completed so far (group commit shows as far fewer syncs than puts).
    pub fn sync_count(&self) -> u64 {
        self.state.lock().unwrap().syncs
    }
}

impl SimSegment {
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn enter(&self, write: bool) -> io::Result<()> {
        self.enter_op(write, false).await
    }

    async fn enter_op(&self, write: bool, sync: bool) -> io::Result<()> {
        self.disk.gate_op(write, sync).await?;
        if self.disk.state.lock().unwrap().generation != self.generation {
            return Err(eio("handle belongs to a crashed process"));
        }
        Ok(())
    }

    pub async fn write_at(&self, pos: u64, data: &[u8]) -> io::Result<()> {
        check_range(&self.path, self.size, pos, data.len() as u64);
        self.enter(false).await?;
        let mut f = self.file.lock().unwrap();
        let end = pos as usize + data.len();
        f.hold(pos as usize, data.len());
        if f.written.len() < end {
            f.written.resize(end, 0);
        }
        f.written[pos as usize..end].copy_from_slice(data);
        f.modified_ms = crate::rt::now_ms();
        Ok(())
    }

    /// See `Segment::set_write_pattern`: only `synced_often` matters here.
    pub fn set_write_pattern(&self, synced_often: bool) {
        let mut f = self.file.lock().unwrap();
        f.held_by_process = synced_often;
        if !synced_often {
            f.tail = None;
        }
    }

    /// `write_at`, handing what this segment held, and these bytes, to the OS at once.
    pub async fn write_through(&self, pos: u64, data: &[u8]) -> io::Result<()> {
        self.write_at(pos, data).await?;
        self.file.lock().unwrap().tail = None;
        Ok(())
    }

    pub async fn read_at(&self, pos: u64, len: usize) -> io::Result<Bytes> {
        check_range(&self.path, self.size, pos, len as u64);
        self.enter(false).await?;
        let f = self.file.lock().unwrap();
        let mut out = vec![0u8; len];
        let start = (pos as usize).min(f.written.len());
        let end = (pos as usize + len).min(f.written.len());
        out[..end - start].copy_from_slice(&f.written[start..end]);
        Ok(Bytes::from(out))
    }

    /// Process-held appends (SYNC_FLUSH) are handed to the OS first, as the real disk
    /// writes them out before it syncs.
    pub async fn sync(&self, from: u64, to: u64) -> io::Result<()> {
        if self.disk.state.lock().unwrap().generation == self.generation {
            self.file.lock().unwrap().tail = None;
        }
        if to <= from {
            return Ok(());
        }
        check_range(&self.path, self.size, from, to - from);
        self.enter_op(false, true).await?;
        self.disk.state.lock().unwrap().syncs += 1;
        let mut f = self.file.lock().unwrap();
        // Whole pages become durable, as msync works on pages.
        let start = (from as usize / PAGE) * PAGE;
        let end = (to as usize).div_ceil(PAGE) * PAGE;
        let end = end.min(f.written.len());
        if start >= end {
            return Ok(());
        }
        if f.durable.len() < end {
            f.durable.resize(end, 0);
        }
        let SimFile { written, durable, .. } = &mut *f;
        durable[start..end].copy_from_slice(&written[start..end]);
        Ok(())
    }
}
