//! One copy of each active model for every backend: the model's serving image (see
//! `store::image`) kept as a file under the data directory, `pg_audience/<database oid>/`, and
//! memory-mapped read-only by every backend that serves audiences from it.
//!
//! - The stored model (`audience.model_data`) stays the source of truth; the file is a cache made
//!   from it. Its name carries the oid of `audience.models` (new after DROP/CREATE EXTENSION or a
//!   restore) and the model id (never reused), and its header repeats both: a file is never
//!   served for another model.
//! - Files are written to a temporary name, flushed to disk and renamed, so a crash or a full
//!   disk never leaves a partial file under the final name. A build writes the image of its new
//!   model under a temporary name and renames it when its transaction commits (removes it when it
//!   aborts); the first call that finds no image writes one from the stored model.
//! - Files of models that no longer exist are removed when a build replaces them and by a sweep
//!   whenever an image is written; a backend still mapping a removed file keeps reading it (the
//!   kernel frees it with the last mapping).
//! - When the file cannot be written (disk full, no permission), the backend serves from a private
//!   copy and warns once per model.
use crate::api::spi_util::query_rows;
use crate::error::{AudienceError, OrRaise};
use crate::score::hybrid::Scorer;
use crate::store::image::{read_image, write_image, ImageTexts, Layout, Served};
use crate::store::stored::Model;
use crate::util::buf::Mapping;
use pgrx::prelude::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Temporary files older than this are leftovers of a crashed writer.
const STALE_TMP_SECS: u64 = 3600;

fn data_dir() -> PathBuf {
    // SAFETY: DataDir is set at backend start and never changes afterwards.
    let dir = unsafe { std::ffi::CStr::from_ptr(pg_sys::DataDir) };
    PathBuf::from(dir.to_string_lossy().into_owned())
}

pub fn root() -> PathBuf {
    data_dir().join("pg_audience")
}

fn db_dir() -> PathBuf {
    // SAFETY: MyDatabaseId is set once the backend is connected to its database.
    root().join(unsafe { pg_sys::MyDatabaseId }.to_u32().to_string())
}

/// `[oid of audience.models, model_id]`: what an image file is named after and checked against.
pub fn tags(model_id: i64) -> [u64; 2] {
    let oid = Spi::get_one::<pg_sys::Oid>(
        "SELECT 'audience.models'::pg_catalog.regclass::pg_catalog.oid",
    )
    .or_raise("locating the model table")
    .map_or(0, |o| o.to_u32());
    [oid as u64, model_id as u64]
}

fn file_name(tags: [u64; 2]) -> String {
    format!("{}_{}.img", tags[0], tags[1])
}

pub fn path_of(tags: [u64; 2]) -> PathBuf {
    db_dir().join(file_name(tags))
}

/// Whether serving from shared files is on (`audience.shared_models`).
pub fn enabled() -> bool {
    crate::guc::SHARED_MODELS.get()
}

/// The image of the model, mapped from its file; None when there is no usable file (a damaged or
/// mismatching one is removed).
pub fn open(tags: [u64; 2]) -> Option<(Served, usize)> {
    let path = path_of(tags);
    let file = std::fs::File::open(&path).ok()?;
    let map = Arc::new(Mapping::of_file(&file).ok()?);
    let len = map.bytes().len();
    match read_image(map, tags) {
        Ok(s) => Some((s, len)),
        Err(e) => {
            pgrx::log!(
                "pg_audience: removing unusable model image {}: {e}",
                path.display()
            );
            let _ = std::fs::remove_file(&path);
            None
        }
    }
}

/// A writer into 8-byte aligned memory, for images kept in the backend when no file can be written.
struct Words {
    words: Vec<u64>,
    len: usize,
}

impl Write for Words {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let end = self.len + b.len();
        if end > self.words.len() * 8 {
            self.words
                .resize(end.div_ceil(8).max(self.words.len() * 2), 0);
        }
        // SAFETY: the buffer holds at least `end` bytes after the resize above.
        unsafe {
            std::ptr::copy_nonoverlapping(
                b.as_ptr(),
                (self.words.as_mut_ptr() as *mut u8).add(self.len),
                b.len(),
            )
        };
        self.len = end;
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn write_to_file(
    path: &Path,
    tags: [u64; 2],
    model: &Model,
    parts: &crate::score::hybrid::ScorerParts,
    check: impl FnMut() -> std::io::Result<()>,
) -> std::io::Result<()> {
    let (file, mut partial) = new_file(path)?;
    let mut w = std::io::BufWriter::with_capacity(
        1 << 20,
        Interruptible {
            inner: file,
            unchecked: 0,
            check,
        },
    );
    write_image(&mut w, tags, model, parts)?;
    let file = w.into_inner().map_err(|e| e.into_error())?.inner;
    file.sync_all()?;
    partial.0 = None;
    Ok(())
}

/// Writes the image through a shared mapping of the file, filled on `threads` threads: the first
/// touch of a large file's new pages is the cost of writing it on virtual machines whose host
/// takes freed memory back, and a mapping lets threads take those at once where `write` holds the
/// file's lock (the 20M-event shop's image, alternated builds on 2 cores, `client_min_messages =
/// debug1`: its file in 3.06 / 4.09 s as a stream, 2.47 / 1.86 s mapped). Its blocks are reserved
/// first (`fallocate`), so no
/// store into the mapping can fault for want of space; `Ok(None)` when the file system cannot
/// reserve them (the caller writes the image as a stream then). Each window's pages are handed
/// to the disk as soon as it is filled, so the final `fsync` finds little left to write; returns
/// its seconds.
fn write_mapped(
    path: &Path,
    tags: [u64; 2],
    model: &Model,
    parts: &crate::score::hybrid::ScorerParts,
    threads: usize,
    check: &(dyn Fn() -> std::io::Result<()> + Sync),
) -> std::io::Result<Option<f64>> {
    use std::os::fd::AsRawFd;
    let texts = ImageTexts::of(model, parts);
    let layout = Layout::of(tags, model, parts, &texts);
    let len = usize::try_from(layout.len()).map_err(std::io::Error::other)?;
    let (file, mut partial) = new_file(path)?;
    // SAFETY: fallocate on a descriptor this function opened for writing.
    if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) } != 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => Ok(None),
            _ => Err(e),
        };
    }
    // Windows of the file, every `threads`-th one to each thread, each mapped only while it is
    // filled: the backend's resident memory grows by a few windows, not by the image.
    let threads = threads.clamp(1, 64);
    let windows = len.div_ceil(WINDOW);
    let results = crate::util::par::par_map((0..threads).collect(), |t| {
        for w in (t..windows).step_by(threads) {
            let lo = w * WINDOW;
            let mut map = MappedMut::of(&file, lo, WINDOW.min(len - lo))?;
            layout.copy_range(lo, map.bytes_mut(), check)?;
            drop(map);
            // The window's pages on their way to the disk now, while the rest is filled: the
            // `sync_all` below then waits for little (a hint: its own result is ignored, the
            // `sync_all` reports any failure).
            // SAFETY: a range of a descriptor this function opened for writing.
            unsafe {
                libc::sync_file_range(
                    file.as_raw_fd(),
                    lo as libc::off64_t,
                    WINDOW.min(len - lo) as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                )
            };
        }
        Ok(())
    });
    results.into_iter().collect::<std::io::Result<()>>()?;
    let t_sync = std::time::Instant::now();
    file.sync_all()?;
    partial.0 = None;
    Ok(Some(t_sync.elapsed().as_secs_f64()))
}

/// A writable shared mapping of part of a file, unmapped when dropped.
struct MappedMut {
    ptr: *mut u8,
    len: usize,
}

/// Bytes of the image file mapped at a time by each thread of [`write_mapped`] (a multiple of the
/// page size).
const WINDOW: usize = 32 << 20;

impl MappedMut {
    /// Maps `len` bytes of `file` (open for reading and writing) from `offset` (a multiple of
    /// the page size; the file at least `offset + len` long).
    fn of(file: &std::fs::File, offset: usize, len: usize) -> std::io::Result<MappedMut> {
        use std::os::fd::AsRawFd;
        if len == 0 {
            return Err(std::io::Error::other("an empty image"));
        }
        // SAFETY: a fresh shared mapping of an open descriptor; checked for failure.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(MappedMut {
            ptr: ptr as *mut u8,
            len,
        })
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `len` bytes, readable and writable, alive until drop.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for MappedMut {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `of`.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

/// An empty file at `path` (its directory created), open for reading and writing, and the guard
/// that removes it on an error and when a cancel unwinds out of the writer (disarm it when done).
fn new_file(path: &Path) -> std::io::Result<(std::fs::File, RemoveOnDrop<'_>)> {
    let dir = path.parent().expect("image files live in a directory");
    std::fs::create_dir_all(dir)?;
    let partial = RemoveOnDrop(Some(path));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    Ok((file, partial))
}

struct RemoveOnDrop<'a>(Option<&'a Path>);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A writer that lets a cancel or statement_timeout stop a long write: it calls `check` every
/// [`CHECK_BYTES`] (an image of a large model takes seconds to write).
struct Interruptible<W, F> {
    inner: W,
    unchecked: usize,
    check: F,
}

const CHECK_BYTES: usize = 4 << 20;

impl<W: std::io::Write, F: FnMut() -> std::io::Result<()>> std::io::Write for Interruptible<W, F> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.unchecked += buf.len();
        if self.unchecked >= CHECK_BYTES {
            self.unchecked = 0;
            (self.check)()?;
        }
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

fn tmp_path(tags: [u64; 2]) -> PathBuf {
    db_dir().join(format!("{}.tmp.{}", file_name(tags), std::process::id()))
}

/// The parts the scorer precomputes, for the image of `model`.
fn parts_of(model: &Model, threads: usize) -> crate::score::hybrid::ScorerParts {
    Scorer::new(&model.ui, model.als.as_ref(), model.knn.as_ref())
        .with_days(&model.days, model.reference_day)
        .with_threads(threads)
        .parts(&Served::own_measures(model))
}

/// Writes the image of `model` (just read from the table) to its file and maps it; when the file
/// cannot be written, keeps the image in this backend's memory instead (returns false then).
pub fn publish(model: &Model, tags: [u64; 2]) -> (Served, usize, bool) {
    let parts = parts_of(model, crate::guc::threads());
    if enabled() {
        let (tmp, path) = (tmp_path(tags), path_of(tags));
        let check = || {
            pgrx::check_for_interrupts!();
            Ok(())
        };
        match write_to_file(&tmp, tags, model, &parts, check)
            .and_then(|_| std::fs::rename(&tmp, &path))
        {
            Ok(()) => {
                sync_dir(&db_dir());
                sweep(tags, false);
                if let Some((s, len)) = open(tags) {
                    return (s, len, true);
                }
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                warn_once(tags, &e);
            }
        }
    }
    let mut w = Words {
        words: Vec::new(),
        len: 0,
    };
    write_image(&mut w, tags, model, &parts).unwrap_or_else(|e| {
        AudienceError::internal(format!("building the model image in memory: {e}")).raise()
    });
    let map = Arc::new(Mapping::of_words(w.words, w.len));
    let len = map.bytes().len();
    let served = read_image(map, tags).unwrap_or_else(|e| {
        AudienceError::internal(format!("reading the model image back: {e}")).raise()
    });
    (served, len, false)
}

thread_local! {
    static WARNED: std::cell::RefCell<Vec<[u64; 2]>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn warn_once(tags: [u64; 2], e: &std::io::Error) {
    if WARNED.with(|w| w.borrow().contains(&tags)) {
        return;
    }
    WARNED.with(|w| w.borrow_mut().push(tags));
    AudienceError::new(PgSqlErrorCode::ERRCODE_IO_ERROR, format!("could not write the shared copy of model {}: {e}", tags[1]))
        .detail("This session serves audiences from a private copy of the model, which costs memory and time per session.")
        .hint(format!("Make room or fix permissions under {}; the next session tries again.", db_dir().display()))
        .warn();
}

/// The image a build writes for its new model: under a temporary name until the transaction
/// commits, when it is renamed (and the files of the models the build replaced are removed); an
/// abort removes it. [`Stage::write`] runs on a worker thread while the backend stores the
/// model's rows (it touches nothing of PostgreSQL's); failures only cost the first reader the
/// time to write the image.
pub struct Stage {
    tags: [u64; 2],
    tmp: PathBuf,
    path: PathBuf,
    threads: usize,
}

/// The stage of model `model_id`'s image, or None when serving from shared files is off.
pub fn stage(model_id: i64) -> Option<Stage> {
    if !enabled() {
        return None;
    }
    let tags = tags(model_id);
    let tmp = tmp_path(tags);
    // Registered first: a statement that fails after the worker wrote the file removes it too.
    let tmp_abort = tmp.clone();
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Abort, move || {
        let _ = std::fs::remove_file(&tmp_abort);
    });
    Some(Stage {
        tags,
        tmp,
        path: path_of(tags),
        threads: crate::guc::threads(),
    })
}

const STOPPED: &str = "the build stopped";

/// What [`Stage::write`] did: seconds for the scorer's parts and for the file, and of them the
/// closing `fsync`'s (written through a mapping), or the error.
pub type Staged = std::io::Result<(f64, f64, Option<f64>)>;

impl Stage {
    /// Writes the image of `model` to the temporary file; stops with an error as soon as `stop`
    /// is set (the backend's statement failed or was cancelled). Safe on any thread.
    pub fn write(&self, model: &Model, stop: &std::sync::atomic::AtomicBool) -> Staged {
        let t0 = std::time::Instant::now();
        let parts = parts_of(model, self.threads);
        let t_parts = t0.elapsed().as_secs_f64();
        let check = || {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Not ErrorKind::Interrupted: write_all retries those.
                Err(std::io::Error::other(STOPPED))
            } else {
                Ok(())
            }
        };
        let mapped = if self.threads > 1 {
            write_mapped(&self.tmp, self.tags, model, &parts, self.threads, &check)?
        } else {
            None
        };
        if mapped.is_none() {
            write_to_file(&self.tmp, self.tags, model, &parts, check)?;
        }
        Ok((t_parts, t0.elapsed().as_secs_f64() - t_parts, mapped))
    }

    /// On the backend's thread after [`Stage::write`]: renames the file when the transaction
    /// commits (removing the images of `replaced`), removes it when it aborts.
    pub fn finish(self, written: Staged, replaced: Vec<i64>) {
        let model_id = self.tags[1];
        match written {
            Ok((parts, file, sync)) => pgrx::debug1!(
                "audience: serving image of model {model_id}: parts in {parts:.2} s, file in {file:.2} s{}",
                sync.map_or(String::new(), |s| format!(" (its closing fsync {s:.3} s)"))
            ),
            Err(e) => {
                pgrx::debug1!("pg_audience: the build could not write the image of model {model_id}: {e}");
                return;
            }
        }
        sweep(self.tags, true);
        let old: Vec<PathBuf> = replaced
            .into_iter()
            .map(|id| path_of([self.tags[0], id as u64]))
            .collect();
        let (tmp, path, dir) = (self.tmp, self.path, db_dir());
        // Post-commit callbacks must not fail: plain file operations, errors ignored.
        pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Commit, move || {
            if std::fs::rename(&tmp, &path).is_ok() {
                sync_dir(&dir);
            }
            for p in &old {
                let _ = std::fs::remove_file(p);
            }
        });
    }
}

/// Removes image files no backend will open again: of other extension installs (another oid of
/// `audience.models`), of models that no longer exist, temporary files of crashed writers, and the
/// directories of dropped databases. `keep` (just written; its model may not be visible to this
/// statement's snapshot yet) is kept, and its oid of `audience.models` is the current one. A build
/// passes `other_installs_only` (models committed by concurrent builds are not visible to it).
pub fn sweep(keep: [u64; 2], other_installs_only: bool) {
    let live: Vec<i64> = query_rows("SELECT m.model_id FROM audience.models m", &[], |r| {
        r.get::<i64>(1).ok().flatten()
    })
    .into_iter()
    .flatten()
    .collect();
    let Ok(entries) = std::fs::read_dir(db_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let remove = if let Some((_, _pid)) = name.split_once(".img.tmp.") {
            entry
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age.as_secs() > STALE_TMP_SECS)
        } else if let Some(stem) = name.strip_suffix(".img") {
            match stem
                .split_once('_')
                .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
            {
                Some((oid, id)) if [oid, id] == keep => false,
                Some((oid, id)) => {
                    oid != keep[0] || (!other_installs_only && !live.contains(&(id as i64)))
                }
                None => false,
            }
        } else {
            false
        };
        if remove {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let dbs: Vec<u32> = query_rows("SELECT d.oid FROM pg_catalog.pg_database d", &[], |r| {
        r.get::<pg_sys::Oid>(1).ok().flatten().map(|o| o.to_u32())
    })
    .into_iter()
    .flatten()
    .collect();
    if let Ok(entries) = std::fs::read_dir(root()) {
        for entry in entries.flatten() {
            if let Some(oid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            {
                if !dbs.contains(&oid) {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::csr::Csr;
    use crate::model::days::DayIndex;
    use std::sync::atomic::AtomicBool;

    fn stage_in(name: &str) -> Stage {
        let dir = std::env::temp_dir().join(format!("pga-stage-{}-{name}", std::process::id()));
        Stage {
            tags: [7, 42],
            tmp: dir.join("img.tmp"),
            path: dir.join("img"),
            threads: 2,
        }
    }

    /// The worker's image is the model's, as the backend reads it.
    #[test]
    fn a_staged_image_reads_back() {
        let m = crate::store::image::tests::model();
        let st = stage_in("ok");
        let (parts, file, sync) = st.write(&m, &AtomicBool::new(false)).unwrap();
        assert!(parts >= 0.0 && file >= 0.0);
        // The closing fsync (of a mapped write) is part of the file's time.
        assert!(
            sync.is_none_or(|s| (0.0..=file).contains(&s)),
            "{sync:?} of {file}"
        );
        let f = std::fs::File::open(&st.tmp).unwrap();
        let served = read_image(Arc::new(Mapping::of_file(&f).unwrap()), [7, 42]).unwrap();
        assert_eq!(served.ui, m.ui);
        assert_eq!(served.als, m.als);
        let _ = std::fs::remove_dir_all(st.tmp.parent().unwrap());
    }

    /// A stopped build stops the worker at its next check and leaves no partial file.
    #[test]
    fn a_stopped_stage_leaves_no_file() {
        let mut m = crate::store::image::tests::model();
        // Big enough (about 8 MB of pairs) for the writer to check the flag.
        let (users, items) = (200_000u32, 3u32);
        let mut t: Vec<(u32, u32, f32)> = (0..users)
            .flat_map(|u| (0..items).map(move |i| (u, i, 1.0)))
            .collect();
        m.ui = Csr::from_triplets(users as usize, items as usize, &mut t);
        let n = m.ui.nnz();
        let ptr: Vec<u32> = (0..=n as u32).collect();
        m.days = DayIndex::from_records(&ptr, &vec![1440; n], &vec![1.0; n]);
        m.last_seen = vec![0; n];
        m.users = (0..users).map(|u| format!("u{u:06}")).collect();
        m.als = None;
        m.knn = None;
        let st = stage_in("stop");
        let err = st.write(&m, &AtomicBool::new(true)).unwrap_err();
        assert_eq!(err.to_string(), STOPPED);
        assert!(!st.tmp.exists(), "the partial file is removed");
        let _ = std::fs::remove_dir_all(st.tmp.parent().unwrap());
    }
}
