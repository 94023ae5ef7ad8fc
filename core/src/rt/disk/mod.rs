//! The disk seam: every byte the store persists goes through [`Disk`] and [`Segment`].
//!
//! Two implementations sit behind one enum so the store is not generic over its disk:
//! [`real`] maps preallocated segment files with `memmap2` and syncs with `msync`; [`sim`]
//! keeps per-node files in memory with "written" and "durable" bytes apart, and injects the
//! fault model (crash, power loss with a torn page, stalls, slow ops, ENOSPC/EIO, bit flips).
//!
//! Durability contract, identical for both: bytes written with [`Segment::write_at`] or
//! [`Disk::write_file`] survive a process crash, except the appends to a segment set
//! `synced_often` (SYNC_FLUSH's commitlog) since its last sync, which the process still holds;
//! only bytes covered by a completed [`Segment::sync`] (or `write_file(.., sync = true)`)
//! survive a power loss. `rename` is durable when it returns.

pub mod real;
pub mod sim;

use bytes::Bytes;
use std::io;
use std::path::{Path, PathBuf};

pub use sim::{SimDisk, SimFault};

/// A handle to the storage of one node. Cheap to clone.
#[derive(Clone)]
pub enum Disk {
    Real,
    Sim(SimDisk),
}

/// A fixed-size, preallocated file written at positions: a commitlog segment, a consume-queue
/// file or an index file. Cheap to clone; clones share the file.
#[derive(Clone)]
pub enum Segment {
    Real(std::sync::Arc<real::RealSegment>),
    Sim(sim::SimSegment),
}

/// An exclusive lock on a store directory, released on drop.
pub enum DirLock {
    Real(real::RealLock),
    Sim(sim::SimLock),
}

/// The message RocketMQ operators know, naming the directory.
pub(crate) fn lock_failed(dir: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::WouldBlock,
        format!("Lock failed, MQ already started: store directory {} is in use by another broker", dir.display()),
    )
}

impl Disk {
    pub async fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        match self {
            Disk::Real => real::create_dir_all(path),
            Disk::Sim(d) => d.create_dir_all(path).await,
        }
    }

    /// Names of the entries of `dir`, sorted; empty when `dir` does not exist.
    pub async fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        match self {
            Disk::Real => real::list(dir),
            Disk::Sim(d) => d.list(dir).await,
        }
    }

    pub async fn exists(&self, path: &Path) -> io::Result<bool> {
        match self {
            Disk::Real => Ok(path.exists()),
            Disk::Sim(d) => d.exists(path).await,
        }
    }

    /// Opens the segment at `path`, creating and preallocating it with `size` bytes if it does
    /// not exist. An existing file of another size is an error (RocketMQ refuses to load it).
    pub async fn open_segment(&self, path: &Path, size: u64) -> io::Result<Segment> {
        match self {
            Disk::Real => real::open_segment(path, size).map(|s| Segment::Real(std::sync::Arc::new(s))),
            Disk::Sim(d) => d.open_segment(path, size).await.map(Segment::Sim),
        }
    }

    /// [`open_segment`](Self::open_segment) and [`Segment::set_write_pattern`] in the
    /// background, for a segment that will be written soon: on the real disk on a blocking
    /// thread, which also faults in the first pages the writer will touch (together 5-85 ms
    /// measured on this VM's cold memory); in simulation as a task.
    pub fn open_segment_ahead(
        &self,
        path: PathBuf,
        size: u64,
        warm: bool,
        synced_often: bool,
    ) -> crate::rt::task::JoinHandle<io::Result<Segment>> {
        match self {
            Disk::Real => tokio::runtime::Handle::current().spawn_blocking(move || {
                let seg = real::open_segment(&path, size)?;
                seg.set_write_pattern(warm, synced_often);
                seg.populate_start();
                Ok(Segment::Real(std::sync::Arc::new(seg)))
            }),
            Disk::Sim(d) => {
                let d = d.clone();
                crate::rt::spawn(async move { d.open_segment(&path, size).await.map(Segment::Sim) })
            }
        }
    }

    /// The whole content of a small file, or `None` if it does not exist.
    pub async fn read_file(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        match self {
            Disk::Real => real::read_file(path),
            Disk::Sim(d) => d.read_file(path).await,
        }
    }

    /// Creates or replaces a small file; with `sync` it is durable when this returns.
    pub async fn write_file(&self, path: &Path, data: &[u8], sync: bool) -> io::Result<()> {
        match self {
            Disk::Real => real::write_file(path, data, sync),
            Disk::Sim(d) => d.write_file(path, data, sync).await,
        }
    }

    /// Atomically renames `from` to `to` (replacing it) and makes the rename durable.
    pub async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        match self {
            Disk::Real => real::rename(from, to),
            Disk::Sim(d) => d.rename(from, to).await,
        }
    }

    /// Removes a file; removing a missing file is not an error.
    pub async fn remove_file(&self, path: &Path) -> io::Result<()> {
        match self {
            Disk::Real => real::remove_file(path),
            Disk::Sim(d) => d.remove_file(path).await,
        }
    }

    /// Removes a directory and everything under it; a missing directory is not an error.
    pub async fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        match self {
            Disk::Real => real::remove_dir_all(path),
            Disk::Sim(d) => d.remove_dir_all(path).await,
        }
    }

    /// Last modification time of a file in ms since the epoch.
    pub async fn modified_ms(&self, path: &Path) -> io::Result<u64> {
        match self {
            Disk::Real => real::modified_ms(path),
            Disk::Sim(d) => d.modified_ms(path).await,
        }
    }

    /// Fraction (0..=1) of the file system holding `path` that is in use.
    pub async fn usage_ratio(&self, path: &Path) -> io::Result<f64> {
        match self {
            Disk::Real => real::usage_ratio(path),
            Disk::Sim(d) => d.usage_ratio().await,
        }
    }

    /// Takes the exclusive lock of a store directory; a second holder fails at once with
    /// "Lock failed, MQ already started" naming the directory.
    pub async fn lock_dir(&self, dir: &Path) -> io::Result<DirLock> {
        match self {
            Disk::Real => real::lock_dir(dir).map(DirLock::Real),
            Disk::Sim(d) => d.lock_dir(dir).await.map(DirLock::Sim),
        }
    }
}

impl Segment {
    pub fn size(&self) -> u64 {
        match self {
            Segment::Real(s) => s.size(),
            Segment::Sim(s) => s.size(),
        }
    }

    pub fn path(&self) -> PathBuf {
        match self {
            Segment::Real(s) => s.path().to_path_buf(),
            Segment::Sim(s) => s.path().to_path_buf(),
        }
    }

    /// Writes `data` at `pos`. The caller guarantees no reader is reading that range.
    pub async fn write_at(&self, pos: u64, data: &[u8]) -> io::Result<()> {
        match self {
            Segment::Real(s) => real::RealSegment::write_at(s, pos, data),
            Segment::Sim(s) => s.write_at(pos, data).await,
        }
    }

    /// [`write_at`](Self::write_at) that hands the bytes to the OS before it returns, also on
    /// a `synced_often` segment (with what it held before them): for bytes that must survive
    /// a process crash at once, as a slave's, which it confirms to its master.
    pub async fn write_through(&self, pos: u64, data: &[u8]) -> io::Result<()> {
        match self {
            Segment::Real(s) => real::RealSegment::write_through(s, pos, data),
            Segment::Sim(s) => s.write_through(pos, data).await,
        }
    }

    /// `len` bytes at `pos`. On the real disk this is a zero-copy view of the mapping, but
    /// for bytes a `synced_often` segment still holds, which are copied.
    pub async fn read_at(&self, pos: u64, len: usize) -> io::Result<Bytes> {
        match self {
            Segment::Real(s) => real::RealSegment::read_at(s, pos, len),
            Segment::Sim(s) => s.read_at(pos, len).await,
        }
    }

    /// How the disk takes the appends. `warm` (real disk only) writes space out ahead of them
    /// (RocketMQ's warmMapedFileEnable): costs write bandwidth, makes each later sync an
    /// overwrite. `synced_often` (SYNC_FLUSH) holds appends in the process until the next
    /// sync writes them with one `pwrite`, instead of writing them through the mapping (see
    /// `real::Tail`): a process crash loses them, as it loses them in the simulation. It also
    /// marks the segment as an append-only log, whose syncs on the real disk first unmap the
    /// whole pages they cover (`real::RealSegment::unmap_pages`).
    pub fn set_write_pattern(&self, warm: bool, synced_often: bool) {
        match self {
            Segment::Real(s) => s.set_write_pattern(warm, synced_often),
            Segment::Sim(s) => s.set_write_pattern(synced_often),
        }
    }

    /// Copies `buf.len()` bytes at `pos` into `buf` (small reads without an allocation).
    pub async fn read_into(&self, pos: u64, buf: &mut [u8]) -> io::Result<()> {
        match self {
            Segment::Real(s) => s.read_into(pos, buf),
            Segment::Sim(s) => {
                let b = s.read_at(pos, buf.len()).await?;
                buf.copy_from_slice(&b);
                Ok(())
            }
        }
    }

    /// Makes `from..to` durable. On the real disk the msync runs inline on the calling
    /// task's thread: for SYNC_FLUSH's short group syncs a hop to the blocking pool costs
    /// more per sync than it frees (measured). Long syncs use [`sync_aside`](Self::sync_aside).
    pub async fn sync(&self, from: u64, to: u64) -> io::Result<()> {
        match self {
            Segment::Real(s) => s.sync(from, to),
            Segment::Sim(s) => s.sync(from, to).await,
        }
    }

    /// [`sync`](Self::sync) for syncs that may take long (ASYNC_FLUSH's periodic flush, the
    /// queue and index checkpoints): on the real disk on a blocking thread, not a runtime
    /// worker. A worker blocked in a sync of hundreds of MB holds every task queued on it:
    /// `bench store` showed ASYNC_FLUSH puts of 180-480 ms, each ending the moment a periodic
    /// msync on its worker did.
    pub async fn sync_aside(&self, from: u64, to: u64) -> io::Result<()> {
        match self {
            Segment::Real(s) => {
                let s = s.clone();
                tokio::runtime::Handle::current()
                    .spawn_blocking(move || s.sync(from, to))
                    .await
                    .unwrap_or_else(|e| Err(io::Error::other(format!("sync task failed: {e}"))))
            }
            Segment::Sim(s) => s.sync(from, to).await,
        }
    }
}

/// A segment's appends held in the process past this many bytes are written out at once.
pub(crate) const TAIL_SPILL: usize = 4 << 20;

/// Bounds check shared by both implementations; a violation is a store bug, not an I/O error.
pub(crate) fn check_range(path: &Path, size: u64, pos: u64, len: u64) {
    assert!(
        pos.checked_add(len).is_some_and(|end| end <= size),
        "segment {} access {}+{} past its size {}",
        path.display(),
        pos,
        len,
        size
    );
}
