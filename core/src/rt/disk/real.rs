//! Real disk: `std::fs` plus `memmap2`. Segments are preallocated with `posix_fallocate` so a
//! full disk shows up as ENOSPC when a segment is created, never as SIGBUS on a mapped write;
//! `sync` is `msync(MS_SYNC)` of the range, which on Linux is fdatasync of those pages; on a
//! log written through the mapping it first drops the range's page-table entries, so the
//! write-back has no TLB shootdown per page (`unmap_pages`), and the write-back of such a
//! log starts behind the writer, window by window, without waiting (`start_write_back`).
//! Appends are copied into the mapping, except on a segment synced after every group of
//! appends (SYNC_FLUSH), where they wait in memory for the next sync's one `pwrite` (`Tail`).
//! Reads always go through the mapping, with the bytes still held copied over them.

use super::{check_range, lock_failed, TAIL_SPILL};
use bytes::Bytes;
use memmap2::MmapRaw;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

pub struct RealSegment {
    path: PathBuf,
    map: MmapRaw,
    size: u64,
    /// Bytes from the start already prefaulted (or being prefaulted) for writing.
    populated: AtomicU64,
    /// Bytes from the start whose write-back has been started (see `start_write_back`).
    written_back: AtomicU64,
    /// Also write the prefaulted window out (see `populate_ahead`).
    warm: AtomicBool,
    /// Synced after every group of appends (SYNC_FLUSH): appends collect in `tail` and reach
    /// the file with one `pwrite` per sync, instead of through the mapping (see `Tail`).
    synced_often: AtomicBool,
    /// An append-only log written through the mapping (a commitlog segment under
    /// ASYNC_FLUSH, or a slave's): each sync first drops the mapping's page-table entries for
    /// the whole pages it covers (see `sync`).
    log: AtomicBool,
    /// SYNC_FLUSH appends not yet written to the file.
    tail: Mutex<Tail>,
    /// Lowest position held in `tail` (`u64::MAX`: none): a read below it is in the file.
    tail_from: AtomicU64,
    /// Told when a window of warm-up zeros is written (see `Tail::zeroing`).
    zeroed: Condvar,
    /// One sync at a time: a sync takes `tail` out, writes it, then syncs.
    syncing: Mutex<()>,
    file: File,
}

/// Under SYNC_FLUSH every group of appends is synced. Writing them through the mapping made
/// each sync write-protect the pages it cleaned, with a TLB shootdown across the vCPUs, and
/// the next group's first write to each page fault again: with 64 writers of 1 KiB records a
/// group's writes took 53-66 µs and its msync 159-210 µs, against 12-16 µs for one `pwrite`
/// of the same bytes and 122-163 µs for the sync (a C program on this VM). So appends are
/// copied here and written by the sync; reads of bytes still here are served from here.
/// A process crash loses what is here, which no sync has covered yet: under SYNC_FLUSH no
/// put has been answered for it.
#[derive(Default)]
struct Tail {
    /// File position of `bytes[0]`.
    start: u64,
    bytes: Vec<u8>,
    /// Bytes a sync took out and is writing; still served to readers until written.
    writing: Option<(u64, Arc<Vec<u8>>)>,
    /// The buffer to take over once `bytes` is taken.
    spare: Vec<u8>,
    /// Warm-up zeros being written (start, end): data must not be written under them.
    zeroing: Option<(u64, u64)>,
    /// End of the highest data write begun: warm-up zeros go only above it.
    data_end: u64,
}

impl Tail {
    fn end(&self) -> u64 {
        self.start + self.bytes.len() as u64
    }

    /// Lowest position still held here, or `u64::MAX`.
    fn from(&self) -> u64 {
        let mut from = if self.bytes.is_empty() { u64::MAX } else { self.start };
        if let Some((w, _)) = &self.writing {
            from = from.min(*w);
        }
        from
    }

    /// Copies what is held here of `pos..pos + out.len()` over `out`.
    fn overlay(&self, pos: u64, out: &mut [u8]) {
        let mut put = |start: u64, bytes: &[u8]| {
            let (lo, hi) = (pos.max(start), (pos + out.len() as u64).min(start + bytes.len() as u64));
            if lo < hi {
                out[(lo - pos) as usize..(hi - pos) as usize]
                    .copy_from_slice(&bytes[(lo - start) as usize..(hi - start) as usize]);
            }
        };
        if let Some((w, bytes)) = &self.writing {
            put(*w, bytes);
        }
        put(self.start, &self.bytes);
    }
}

/// Warm-up zeros are written in pieces of this size, each checked against the data written.
const ZERO_PIECE: u64 = 256 << 10;
const PAGE: u64 = 4096;

/// The kernel zero-fills a page of a fresh mapping on its first write; on this VM that is a
/// fifth of an append's cost (measured with perf). Writes prefault the next window on a
/// blocking thread so the zeroing runs beside the append path instead of inside it.
const POPULATE_WINDOW: u64 = 4 << 20;

// SAFETY: the mapping is written only through `write_at`, and the store guarantees that a
// range is never written while a reader may read it (appends go past the published end;
// recovery repairs happen before any reader exists).
unsafe impl Sync for RealSegment {}
unsafe impl Send for RealSegment {}

pub fn open_segment(path: &Path, size: u64) -> io::Result<RealSegment> {
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
    let len = file.metadata()?.len();
    if len == 0 {
        preallocate(&file, size).inspect_err(|_| {
            let _ = fs::remove_file(path);
        })?;
    } else if len != size {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("segment {} is {} bytes, expected {}", path.display(), len, size),
        ));
    }
    let map = MmapRaw::map_raw(&file)?;
    Ok(RealSegment {
        path: path.to_path_buf(),
        map,
        size,
        populated: AtomicU64::new(0),
        written_back: AtomicU64::new(0),
        warm: Default::default(),
        synced_often: Default::default(),
        log: Default::default(),
        tail: Default::default(),
        tail_from: AtomicU64::new(u64::MAX),
        zeroed: Condvar::new(),
        syncing: Mutex::new(()),
        file,
    })
}

fn preallocate(file: &File, size: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscall on an owned, open descriptor.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, size as libc::off_t) };
    match rc {
        0 => Ok(()),
        libc::EOPNOTSUPP | libc::EINVAL => file.set_len(size),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

struct MapView {
    seg: Arc<RealSegment>,
    pos: usize,
    len: usize,
}

impl AsRef<[u8]> for MapView {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: bounds checked at creation; the range was published before the view was made
        // and is not rewritten while views of it exist (see `RealSegment`'s Sync note).
        unsafe { std::slice::from_raw_parts(self.seg.map.as_ptr().add(self.pos), self.len) }
    }
}

impl RealSegment {
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write_at(this: &Arc<Self>, pos: u64, data: &[u8]) -> io::Result<()> {
        check_range(&this.path, this.size, pos, data.len() as u64);
        if this.synced_often.load(Ordering::Relaxed) {
            this.write_to_tail(pos, data)?;
        } else {
            // SAFETY: in bounds (checked above); see the Sync note for aliasing.
            unsafe {
                std::ptr::copy_nonoverlapping(data.as_ptr(), this.map.as_mut_ptr().add(pos as usize), data.len())
            };
        }
        Self::populate_ahead(this, pos + data.len() as u64);
        Ok(())
    }

    pub fn write_through(this: &Arc<Self>, pos: u64, data: &[u8]) -> io::Result<()> {
        check_range(&this.path, this.size, pos, data.len() as u64);
        if !this.synced_often.load(Ordering::Relaxed) {
            return Self::write_at(this, pos, data);
        }
        {
            let _one = this.syncing.lock().unwrap();
            this.write_out_tail()?;
            this.write_data(pos, data)?;
        }
        Self::populate_ahead(this, pos + data.len() as u64);
        Ok(())
    }

    /// Appends go to the tail; anything else (recovery zeroing a torn tail) writes the tail
    /// out first and then goes to the file, so writes reach it in order.
    fn write_to_tail(&self, pos: u64, data: &[u8]) -> io::Result<()> {
        let mut tail = self.tail.lock().unwrap();
        let behind_writing = tail.writing.as_ref().is_none_or(|(w, b)| pos >= w + b.len() as u64);
        if tail.bytes.is_empty() && behind_writing {
            tail.start = pos;
        }
        if pos == tail.end() && behind_writing {
            tail.bytes.extend_from_slice(data);
            self.tail_from.store(tail.from(), Ordering::Release);
            // Written at once past TAIL_SPILL: a sync stuck on a stalled disk must not let
            // memory grow without bound.
            if tail.bytes.len() >= TAIL_SPILL {
                drop(tail);
                let _one = self.syncing.lock().unwrap();
                self.write_out_tail()?;
            }
            return Ok(());
        }
        drop(tail);
        let _one = self.syncing.lock().unwrap();
        self.write_out_tail()?;
        self.write_data(pos, data)
    }

    /// Writes the tail to the file (caller holds `syncing`). Readers are served the bytes
    /// from memory until the write is done; a failed write puts them back.
    fn write_out_tail(&self) -> io::Result<()> {
        let (start, bytes) = {
            let mut tail = self.tail.lock().unwrap();
            if tail.bytes.is_empty() {
                return Ok(());
            }
            let spare = std::mem::take(&mut tail.spare);
            let bytes = Arc::new(std::mem::replace(&mut tail.bytes, spare));
            let start = tail.start;
            tail.writing = Some((start, bytes.clone()));
            (start, bytes)
        };
        let written = self.write_data(start, &bytes);
        let mut tail = self.tail.lock().unwrap();
        tail.writing = None;
        let mut bytes = Arc::try_unwrap(bytes).unwrap_or_else(|b| (*b).clone());
        if written.is_ok() {
            bytes.clear();
            tail.spare = bytes;
        } else {
            // Not in the file: back in front of what came since, for the next sync.
            bytes.extend_from_slice(&tail.bytes);
            tail.bytes = bytes;
            tail.start = start;
        }
        self.tail_from.store(tail.from(), Ordering::Release);
        written
    }

    /// `pwrite` of data, never under warm-up zeros being written, and keeping later zeros off it.
    fn write_data(&self, pos: u64, data: &[u8]) -> io::Result<()> {
        let end = pos + data.len() as u64;
        {
            let mut tail = self.tail.lock().unwrap();
            while tail.zeroing.is_some_and(|(s, e)| s < end && pos < e) {
                tail = self.zeroed.wait(tail).unwrap();
            }
            tail.data_end = tail.data_end.max(end);
        }
        self.file.write_all_at(data, pos)
    }

    fn populate_ahead(this: &Arc<Self>, written_end: u64) {
        let have = this.populated.load(Ordering::Relaxed);
        if written_end + POPULATE_WINDOW <= have || have >= this.size {
            return;
        }
        let from = have.max(written_end);
        let to = (from + 2 * POPULATE_WINDOW).min(this.size);
        if this.populated.compare_exchange(have, to, Ordering::Relaxed, Ordering::Relaxed).is_err() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let seg = this.clone();
        let write_back = this.log.load(Ordering::Relaxed) && !this.synced_often.load(Ordering::Relaxed);
        rt.spawn_blocking(move || {
            // The window first: the writer needs it soon, while the write-back can wait on a
            // congested disk.
            seg.populate(from, to);
            if write_back {
                seg.start_write_back(written_end / PAGE * PAGE);
            }
        });
    }

    /// Starts the write-back of the log's whole pages below `to` not started yet, without
    /// waiting for it (`sync_file_range(SYNC_FILE_RANGE_WRITE)`); their page-table entries
    /// are dropped first, as before a sync (`unmap_pages`). Durability is unchanged: only a
    /// sync makes bytes durable. It keeps the disk busy while appends go on: with the
    /// periodic sync alone (every `flushIntervalCommitLog` after the last one ended) the
    /// page cache collected ~1 GB between syncs at 700 MB/s of 1 KiB appends, and the final
    /// flush of `bench store` took 0.6-0.9 s after 3 s of appending; started every few MiB
    /// as here, 0.08-0.42 s. Called with each prefault window, on its blocking thread.
    fn start_write_back(&self, to: u64) {
        let from = self.written_back.fetch_max(to, Ordering::Relaxed);
        if from >= to {
            return;
        }
        self.unmap_pages(from, to);
        use std::os::fd::AsRawFd;
        // SAFETY: plain syscall on an open descriptor owned by `self`.
        unsafe {
            libc::sync_file_range(self.file.as_raw_fd(), from as i64, (to - from) as i64, libc::SYNC_FILE_RANGE_WRITE);
        }
    }

    /// A segment opened ahead of need: faults in its first windows now, on the calling
    /// (blocking) thread, so the put that crosses into it finds them ready.
    pub fn populate_start(&self) {
        let to = (2 * POPULATE_WINDOW).min(self.size);
        self.populated.store(to, Ordering::Relaxed);
        self.populate(0, to);
    }

    fn populate(&self, from: u64, to: u64) {
        // Best effort: an old kernel without MADV_POPULATE_WRITE just faults on write.
        let (at, len) = (from as usize, (to - from) as usize);
        let warm = self.warm.load(Ordering::Relaxed);
        let synced_often = self.synced_often.load(Ordering::Relaxed);
        if synced_often && warm {
            // Appends reach the file by pwrite: the warm-up zeros ready the page cache.
            self.write_zeros(from, to);
        } else {
            // Readahead off, so the window comes in as 4 KiB pages. SYNC_FLUSH needs them
            // (see `write_zeros`); ASYNC_FLUSH's bulk write-back would take large folios, but
            // on a guest that hands freed memory back to its host (free page reporting)
            // they fill in far slower, likely because they land on memory the host must
            // fault in again while 4 KiB pages reuse what was freed lately. Measured (C,
            // 8 MiB windows): 0.65–1.0 GB/s against 0.14–0.65 GB/s after a recent free, 249
            // against 142 MB/s past what had been freed. A SYNC_FLUSH segment only reads the window in: its appends
            // come by `pwrite`, so the pages need not be dirtied.
            let populate = if synced_often { memmap2::Advice::PopulateRead } else { memmap2::Advice::PopulateWrite };
            let _ = self.map.advise_range(memmap2::Advice::Random, at, len);
            let _ = self.map.advise_range(populate, at, len);
            let _ = self.map.advise_range(memmap2::Advice::Normal, at, len);
        }
        if !warm {
            return;
        }
        // Warm the window on disk too: writing its zeros turns ext4's unwritten extents
        // into written ones now, so a later sync of real data is a plain overwrite
        // (measured: ~100 µs instead of ~180 µs per synced page here).
        use std::os::fd::AsRawFd;
        // SAFETY: plain syscall on an open descriptor owned by `self`.
        unsafe {
            libc::sync_file_range(self.file.as_raw_fd(), from as i64, (to - from) as i64, libc::SYNC_FILE_RANGE_WRITE);
        }
    }

    /// Warm-up zeros in `from..to`, piece by piece, each only above the data written so far
    /// (a sync waits for a piece under way that overlaps its bytes).
    fn write_zeros(&self, from: u64, to: u64) {
        let zeros = vec![0u8; ZERO_PIECE as usize];
        let mut at = from;
        while at < to {
            let piece_end = (at + ZERO_PIECE).min(to);
            let start = {
                let mut tail = self.tail.lock().unwrap();
                let start = at.max(tail.data_end);
                if start < piece_end {
                    tail.zeroing = Some((start, piece_end));
                }
                start
            };
            if start < piece_end {
                // Page by page: a longer write puts the range in large page-cache folios,
                // and a sync then writes back a whole folio for the few bytes appended to it
                // (measured: one writer's syncs wrote 337x the log bytes, against 34x).
                let mut page = start;
                while page < piece_end {
                    let next = ((page / PAGE) + 1) * PAGE;
                    let next = next.min(piece_end);
                    let _ = self.file.write_all_at(&zeros[..(next - page) as usize], page);
                    page = next;
                }
                self.tail.lock().unwrap().zeroing = None;
                self.zeroed.notify_all();
            }
            at = piece_end;
        }
    }

    pub fn set_write_pattern(&self, warm: bool, synced_often: bool) {
        self.warm.store(warm, Ordering::Relaxed);
        self.synced_often.store(synced_often, Ordering::Relaxed);
        self.log.store(true, Ordering::Relaxed);
    }

    pub fn read_into(&self, pos: u64, buf: &mut [u8]) -> io::Result<()> {
        check_range(&self.path, self.size, pos, buf.len() as u64);
        let copy = |buf: &mut [u8]| {
            // SAFETY: in bounds; see the Sync note for aliasing.
            unsafe { std::ptr::copy_nonoverlapping(self.map.as_ptr().add(pos as usize), buf.as_mut_ptr(), buf.len()) }
        };
        // Bytes below `tail_from` were in the file before it rose past them. Others are read
        // under the lock, which keeps bytes in the tail until they are in the file.
        if pos + buf.len() as u64 <= self.tail_from.load(Ordering::Acquire) {
            copy(buf);
        } else {
            let tail = self.tail.lock().unwrap();
            copy(buf);
            tail.overlay(pos, buf);
        }
        Ok(())
    }

    pub fn read_at(this: &Arc<Self>, pos: u64, len: usize) -> io::Result<Bytes> {
        check_range(&this.path, this.size, pos, len as u64);
        if pos + len as u64 <= this.tail_from.load(Ordering::Acquire) {
            return Ok(Bytes::from_owner(MapView { seg: this.clone(), pos: pos as usize, len }));
        }
        let mut out = vec![0u8; len];
        this.read_into(pos, &mut out)?;
        Ok(Bytes::from(out))
    }

    /// Drops the mapping's page-table entries for the whole pages in `from..to`, so that the
    /// sync's write-back finds them unmapped. Write-back write-protects every page it cleans
    /// that a writable entry maps, and each of those is a TLB shootdown across the CPUs the
    /// process runs on: perf on `bench store` (ASYNC_FLUSH, 1 KiB, one writer) put 11 % of
    /// all CPU in those (`smp_call_function_many_cond` under `folio_mkclean`), and the
    /// periodic msync took 17.6 % of it; dropping the entries first is one flush for the
    /// range, and msync fell to 2.8 %. The pages stay in the page cache, dirty; a later read
    /// through the mapping faults them back in (read-only until written, so the next
    /// write-back need not flush them). Only whole pages: the writer is still filling the
    /// last one.
    fn unmap_pages(&self, from: u64, to: u64) {
        let (lo, hi) = (from / PAGE * PAGE, to / PAGE * PAGE);
        if lo < hi {
            // SAFETY: a shared file mapping, where MADV_DONTNEED drops page-table entries
            // only; the data is in the page cache (dirty pages stay dirty) and the mapping
            // stays valid, so readers holding views into it fault the pages back in.
            let _ = unsafe {
                self.map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, lo as usize, (hi - lo) as usize)
            };
        }
    }

    pub fn sync(&self, from: u64, to: u64) -> io::Result<()> {
        if self.synced_often.load(Ordering::Relaxed) {
            let _one = self.syncing.lock().unwrap();
            self.write_out_tail()?;
        }
        if to <= from {
            return Ok(());
        }
        check_range(&self.path, self.size, from, to - from);
        if self.log.load(Ordering::Relaxed) && !self.synced_often.load(Ordering::Relaxed) {
            self.unmap_pages(from, to);
        }
        // msync of the range is fdatasync of just those pages (vfs_fsync_range), whether they
        // were written through the mapping or by pwrite.
        self.map.flush_range(from as usize, (to - from) as usize)
    }
}

pub fn create_dir_all(path: &Path) -> io::Result<()> {
    fs::create_dir_all(path)
}

pub fn list(dir: &Path) -> io::Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names = Vec::new();
    for entry in entries {
        names.push(entry?.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

pub fn read_file(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(d) => Ok(Some(d)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn write_file(path: &Path, data: &[u8], sync: bool) -> io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(data)?;
    if sync {
        f.sync_data()?;
    }
    Ok(())
}

pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    fs::rename(from, to)?;
    if let Some(parent) = to.parent() {
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}

pub fn remove_file(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

pub fn remove_dir_all(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

pub fn modified_ms(path: &Path) -> io::Result<u64> {
    let t = fs::metadata(path)?.modified()?;
    Ok(t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0))
}

pub fn usage_ratio(path: &Path) -> io::Result<f64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statvfs fills the zeroed struct; `c` is a valid NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let total = st.f_blocks as f64;
    if total == 0.0 {
        return Ok(0.0);
    }
    Ok((total - st.f_bavail as f64) / total)
}

pub struct RealLock {
    _file: File,
}

pub fn lock_dir(dir: &Path) -> io::Result<RealLock> {
    fs::create_dir_all(dir)?;
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(dir.join("lock"))?;
    match file.try_lock() {
        Ok(()) => Ok(RealLock { _file: file }),
        Err(fs::TryLockError::WouldBlock) => Err(lock_failed(dir)),
        Err(fs::TryLockError::Error(e)) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Warm-up zeros run on a blocking thread beside the syncs; a piece that starts after
    /// data reached the file must skip it, or the zeros would overwrite records.
    #[test]
    fn warm_up_zeros_never_land_on_data_already_written() {
        let dir = tempfile::tempdir().unwrap();
        let seg = Arc::new(open_segment(&dir.path().join("seg"), 1 << 20).unwrap());
        seg.set_write_pattern(true, true);
        RealSegment::write_at(&seg, 0, &[0xAB; 5000]).unwrap();
        seg.sync(0, 5000).unwrap();
        seg.write_zeros(0, 64 * 1024);
        let file = std::fs::read(dir.path().join("seg")).unwrap();
        assert!(file[..5000].iter().all(|b| *b == 0xAB), "zeros written over data");
        // Held bytes not yet written may be zeroed: their sync writes them after.
        RealSegment::write_at(&seg, 5000, &[0xCD; 3000]).unwrap();
        seg.write_zeros(0, 64 * 1024);
        seg.sync(5000, 8000).unwrap();
        let file = std::fs::read(dir.path().join("seg")).unwrap();
        assert!(file[5000..8000].iter().all(|b| *b == 0xCD));
    }

    /// Whether the page at `addr` is mapped in this process's page tables (`/proc/self/pagemap`
    /// bit 63; readable without privileges, which only hides the frame numbers).
    fn page_mapped(addr: usize) -> bool {
        let mut entry = [0u8; 8];
        let f = File::open("/proc/self/pagemap").unwrap();
        f.read_exact_at(&mut entry, (addr / PAGE as usize * 8) as u64).unwrap();
        u64::from_le_bytes(entry) >> 63 == 1
    }

    /// A log's sync drops the page-table entries of the whole pages it covers before the
    /// write-back, so the write-back has none to write-protect; the bytes stay (in the file,
    /// in views taken before, and through the mapping), and the page still being filled
    /// stays mapped.
    #[test]
    fn a_log_sync_unmaps_its_whole_pages_and_keeps_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let seg = Arc::new(open_segment(&dir.path().join("seg"), 1 << 20).unwrap());
        seg.set_write_pattern(false, false);
        let data: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
        RealSegment::write_at(&seg, 0, &data).unwrap();
        let view = RealSegment::read_at(&seg, 0, data.len()).unwrap();
        let base = seg.map.as_ptr() as usize;
        let pages = data.len() / PAGE as usize; // 4 whole pages, the fifth partly written
        assert!((0..=pages).all(|p| page_mapped(base + p * PAGE as usize)), "written pages are mapped");

        seg.sync(0, data.len() as u64).unwrap();
        assert!((0..pages).all(|p| !page_mapped(base + p * PAGE as usize)), "whole pages still mapped after the sync");
        assert!(page_mapped(base + pages * PAGE as usize), "the page being filled was unmapped");
        assert_eq!(&view[..], &data[..], "a view taken before the sync changed");
        assert_eq!(&std::fs::read(dir.path().join("seg")).unwrap()[..data.len()], &data[..]);

        // Appending into the last page and reading through the mapping still work.
        RealSegment::write_at(&seg, data.len() as u64, &[0xEE; 100]).unwrap();
        let again = RealSegment::read_at(&seg, 0, data.len() + 100).unwrap();
        assert_eq!(&again[..data.len()], &data[..]);
        assert!(again[data.len()..].iter().all(|b| *b == 0xEE));

        // Not for files other than logs (an index's slots are rewritten in place).
        let other = Arc::new(open_segment(&dir.path().join("other"), 1 << 20).unwrap());
        RealSegment::write_at(&other, 0, &data).unwrap();
        other.sync(0, data.len() as u64).unwrap();
        assert!(page_mapped(other.map.as_ptr() as usize), "a non-log segment was unmapped");
    }

    /// Dirty pages of the file in `from..to`, from the page cache (`cachestat`, Linux 6.5);
    /// `None` where the kernel lacks it.
    fn dirty_pages(file: &File, from: u64, to: u64) -> Option<u64> {
        use std::os::fd::AsRawFd;
        #[repr(C)]
        struct Range {
            off: u64,
            len: u64,
        }
        #[repr(C)]
        #[derive(Default)]
        struct Stat {
            cache: u64,
            dirty: u64,
            writeback: u64,
            evicted: u64,
            recently_evicted: u64,
        }
        const SYS_CACHESTAT: libc::c_long = 451;
        let range = Range { off: from, len: to - from };
        let mut stat = Stat::default();
        // SAFETY: the kernel reads `range` and writes `stat`, both live for the call.
        let rc = unsafe { libc::syscall(SYS_CACHESTAT, file.as_raw_fd(), &range, &mut stat, 0) };
        (rc == 0).then_some(stat.dirty)
    }

    /// Appends to a log start the write-back of the whole pages behind them as the writer
    /// moves on (with each prefault window), unmapping them first; no sync is needed for
    /// the pages to leave the dirty state, and the bytes stay readable. Other segments are
    /// left to their syncs.
    #[test]
    fn appends_to_a_log_start_the_write_back_of_the_pages_behind_them() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().unwrap();
        let len = 3 * POPULATE_WINDOW + 1000;
        let data: Vec<u8> = (0..len as u32).map(|i| (i * 13 % 251) as u8).collect();
        let write = |name: &str, log: bool| {
            let seg = Arc::new(open_segment(&dir.path().join(name), 4 * POPULATE_WINDOW).unwrap());
            if log {
                seg.set_write_pattern(false, false);
            }
            rt.block_on(async {
                for (i, chunk) in data.chunks(1000).enumerate() {
                    RealSegment::write_at(&seg, (i * 1000) as u64, chunk).unwrap();
                }
            });
            seg
        };
        let log = write("log", true);
        let other = write("other", false);
        drop(rt); // waits for the blocking threads' prefaults and write-backs
        let Some(other_dirty) = dirty_pages(&other.file, 0, POPULATE_WINDOW) else {
            eprintln!("no cachestat on this kernel; skipping the page-cache checks");
            return;
        };
        assert_eq!(other_dirty, POPULATE_WINDOW / PAGE, "a non-log segment was written back without a sync");
        assert_eq!(dirty_pages(&log.file, 0, POPULATE_WINDOW), Some(0), "pages behind the writer still dirty");
        assert!(!page_mapped(log.map.as_ptr() as usize), "a written-back page is still mapped");
        assert_eq!(&RealSegment::read_at(&log, 0, len as usize).unwrap()[..], &data[..]);
        assert_eq!(&std::fs::read(dir.path().join("log")).unwrap()[..len as usize], &data[..]);
    }
}
