//! Real disk: `std::fs` plus `memmap2`. Segments are preallocated with `posix_fallocate` so a
//! full disk shows up as ENOSPC when a segment is created, never as SIGBUS on a mapped write;
//! `sync` is `msync(MS_SYNC)` of the range, which on Linux is fdatasync of those pages.

use super::{check_range, lock_failed};
use bytes::Bytes;
use memmap2::MmapRaw;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

pub struct RealSegment {
    path: PathBuf,
    map: MmapRaw,
    size: u64,
    /// Bytes from the start already prefaulted (or being prefaulted) for writing.
    populated: AtomicU64,
    /// Also write the prefaulted window out (see `populate_ahead`).
    warm: AtomicBool,
    /// Prefault 4 KiB pages, not readahead's large folios (see `populate_ahead`).
    small_pages: AtomicBool,
    file: File,
}

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
        warm: Default::default(),
        small_pages: Default::default(),
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
        // SAFETY: in bounds (checked above); see the Sync note for aliasing.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), this.map.as_mut_ptr().add(pos as usize), data.len()) };
        Self::populate_ahead(this, pos + data.len() as u64);
        Ok(())
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
        rt.spawn_blocking(move || seg.populate(from, to));
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
        // Synced often (SYNC_FLUSH): fault the window in with readahead off, so its page
        // cache is 4 KiB pages. Readahead builds large folios, and a write through the
        // mapping dirties a whole folio: each group sync then wrote back up to a MiB for a
        // few KiB of records (measured: 5 GB reached the disk for 83 MB appended, and a
        // sync took 330-360 µs instead of 220-250 µs). Bulk flushes (ASYNC_FLUSH) keep the
        // large folios, which write back with less CPU.
        let small_pages = self.small_pages.load(Ordering::Relaxed);
        if small_pages {
            let _ = self.map.advise_range(memmap2::Advice::Random, at, len);
        }
        let _ = self.map.advise_range(memmap2::Advice::PopulateWrite, at, len);
        if small_pages {
            let _ = self.map.advise_range(memmap2::Advice::Normal, at, len);
        }
        if !self.warm.load(Ordering::Relaxed) {
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

    pub fn set_write_pattern(&self, warm: bool, small_pages: bool) {
        self.warm.store(warm, Ordering::Relaxed);
        self.small_pages.store(small_pages, Ordering::Relaxed);
    }

    pub fn read_into(&self, pos: u64, buf: &mut [u8]) -> io::Result<()> {
        check_range(&self.path, self.size, pos, buf.len() as u64);
        // SAFETY: in bounds; see the Sync note for aliasing.
        unsafe { std::ptr::copy_nonoverlapping(self.map.as_ptr().add(pos as usize), buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    pub fn read_at(this: &Arc<Self>, pos: u64, len: usize) -> io::Result<Bytes> {
        check_range(&this.path, this.size, pos, len as u64);
        Ok(Bytes::from_owner(MapView { seg: this.clone(), pos: pos as usize, len }))
    }

    pub fn sync(&self, from: u64, to: u64) -> io::Result<()> {
        if to <= from {
            return Ok(());
        }
        check_range(&self.path, self.size, from, to - from);
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
