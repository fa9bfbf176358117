//! `audience.build`: one scan of every registered source through the affinity aggregate, item
//! properties, training, and an atomic swap of the stored model.
use crate::affinity::result::Affinity;
pub use crate::api::params::*;
pub use crate::api::scan::*;
use crate::api::spi_util::args;
use crate::error::{AudienceError, OrRaise};
use crate::model::als::{train_als_with, transpose_checked};
use crate::model::days::DayIndex;
use crate::model::knn::{train_knn_with, KnnParams};
use crate::model::train::{damped_on, value_user_counts};
use crate::store::stored::{Model, Property};
use crate::util::csr::Csr;
use crate::util::interrupt::Interrupted;
use pgrx::prelude::*;
use pgrx::PgMemoryContexts;
use std::time::Instant;

/// The check the core's long loops call on the backend's own thread. A pending cancel, statement
/// timeout or terminate is returned as `Err(Interrupted)` instead of raised: raising here would
/// unwind through `std::thread::scope`, which waits for the worker threads to finish all their work
/// first (the whole kNN training). The core stops its workers and returns, and the caller raises
/// the proper error with [`raise_interrupted`]. Other pending interrupts are processed as usual.
pub fn interrupt_check() -> Result<(), Interrupted> {
    // SAFETY: flags set by signal handlers (volatile sig_atomic_t in C), read on the backend's thread.
    unsafe {
        if std::ptr::read_volatile(&raw const pg_sys::InterruptPending) != 0 {
            if std::ptr::read_volatile(&raw const pg_sys::QueryCancelPending) != 0
                || std::ptr::read_volatile(&raw const pg_sys::ProcDiePending) != 0
            {
                return Err(Interrupted);
            }
            pg_sys::ProcessInterrupts();
        }
    }
    Ok(())
}

/// Raises the error of the interrupt that stopped `what` (see [`interrupt_check`]): the cancel's
/// or terminate's own error, or 57014 when PostgreSQL holds it off for now.
pub fn raise_interrupted(what: &str) -> ! {
    pgrx::check_for_interrupts!();
    AudienceError::new(
        pgrx::PgSqlErrorCode::ERRCODE_QUERY_CANCELED,
        format!("{what} was interrupted"),
    )
    .raise()
}

pub struct Trained {
    pub model: Model,
    pub als_seconds: f64,
    pub knn_seconds: f64,
}

/// Memory available to a build, in bytes: `audience.build_memory_mb`, or what the operating
/// system reports available (MemAvailable), or no limit when neither is known.
fn build_memory_limit() -> Option<u64> {
    let mb = crate::guc::BUILD_MEMORY_MB.get();
    if mb > 0 {
        return Some(mb as u64 * 1024 * 1024);
    }
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    line.split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()
        .map(|kb| kb * 1024)
}

/// Refuses (54000) a training whose memory estimate exceeds what the build may use, before
/// anything is allocated, naming the settings that lower it.
pub fn check_training_memory(n_users: usize, n_items: usize, nnz: usize, p: &BuildParams) {
    let als = p
        .als
        .as_ref()
        .map(|a| crate::model::als::memory_estimate(n_users, n_items, nnz, a))
        .unwrap_or(0);
    let knn = p
        .knn
        .as_ref()
        .map(|k| crate::model::knn::memory_estimate(n_users, n_items, nnz, k))
        .unwrap_or(0);
    // The damped confidence copy of the affinity matrix.
    let need = (als + knn + nnz * 8 + n_users * 8) as u64;
    let Some(limit) = build_memory_limit() else {
        return;
    };
    if need > limit {
        let mb = |b: u64| b.div_ceil(1024 * 1024);
        AudienceError::new(pgrx::PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED, "training this model needs more memory than the build may use")
            .detail(format!(
                "Estimated {} MB (ALS {} MB, item-kNN {} MB) for {n_users} users, {n_items} items and {nnz} pairs; {} MB may be used.",
                mb(need),
                mb(als as u64),
                mb(knn as u64),
                mb(limit)
            ))
            .hint(format!(
                "Lower factors (now {}) or neighbours (now {}), or raise audience.build_memory_mb.",
                p.als.as_ref().map_or(0, |a| a.factors),
                p.knn.as_ref().map_or(0, |k| k.neighbours)
            ))
            .raise();
    }
}

/// Trains the collaborative models on collected affinity. Pure apart from interrupt checks.
pub fn train(c: Collected, p: &BuildParams) -> Trained {
    let (mut trained, knn) = train_starting_knn(c, p);
    if let Some(run) = knn {
        let (knn, seconds) = run.finish(None);
        trained.model.knn = Some(knn);
        trained.knn_seconds = seconds;
    }
    trained
}

/// [`train`] up to item-kNN, which it starts on a thread of its own ([`KnnRun`]) and does not
/// wait for: the model it returns has no `knn` yet (nor `knn_seconds`). The model is put
/// together meanwhile, and a build stores what does not depend on the neighbours meanwhile too
/// ([`store`]).
pub fn train_starting_knn(c: Collected, p: &BuildParams) -> (Trained, Option<KnnRun>) {
    let aff = c.aff;
    check_training_memory(aff.users.len(), aff.items.len(), aff.matrix.nnz(), p);
    let conf = damped_on(&aff.matrix, crate::guc::threads());
    let t0 = Instant::now();
    if let Some(ap) = &p.als {
        crate::api::progress::phase(
            "als",
            format!(
                "{} factors, {} iterations, {} users x {} items",
                ap.factors,
                ap.iterations,
                aff.users.len(),
                aff.items.len()
            ),
        );
    }
    // The items' rows of the matrix: ALS's item half-sweeps read them, and item-kNN weighs them
    // in place (one transpose for both).
    let mut iu = p.als.as_ref().map(|ap| {
        transpose_checked(&conf, ap.threads, &mut interrupt_check)
            .unwrap_or_else(|_| raise_interrupted("ALS training"))
    });
    let als = p.als.as_ref().zip(iu.as_ref()).map(|(ap, iu)| {
        train_als_with(&conf, iu, ap, &mut interrupt_check)
            .unwrap_or_else(|_| raise_interrupted("ALS training"))
    });
    let als_seconds = t0.elapsed().as_secs_f64();
    if let Some(ap) = &p.als {
        crate::api::progress::finished(
            format!(
                "trained ALS ({} factors, {} iterations)",
                ap.factors, ap.iterations
            ),
            als_seconds,
        );
    }
    // The model put together before item-kNN starts: its days and latest times replace the
    // scan's occasion records and microsecond times, which are freed first (item-kNN's memory
    // then adds to the smaller ones). The three pieces on threads of their own.
    let Affinity {
        users,
        items,
        matrix,
        last_seen,
        occasions,
        reference_us,
        ..
    } = aff;
    let n_items = items.len();
    let (days, last_seen, properties) = std::thread::scope(|sc| {
        let days = sc
            .spawn(|| DayIndex::from_records(&occasions.ptr, &occasions.minute, &occasions.value));
        // Minutes since 2000-01-01 keep the per-entry time in 4 bytes.
        let minutes = sc.spawn(|| {
            last_seen
                .iter()
                .map(|&us| {
                    (us.div_euclid(60_000_000)).clamp(i32::MIN as i64, i32::MAX as i64) as i32
                })
                .collect::<Vec<i32>>()
        });
        let properties: Vec<Property> = c
            .item_values
            .iter()
            .map(|(name, per_item)| Property::from_item_values(name, n_items, per_item))
            .collect();
        (joined_ok(days), joined_ok(minutes), properties)
    });
    drop((occasions, c.item_values));
    let reference_day = crate::affinity::accumulator::day_of(reference_us);
    let model = Model {
        users,
        items,
        ui: matrix,
        last_seen,
        als,
        knn: None,
        properties,
        params: p.hybrid,
        cross_params: p.cross_sell,
        days,
        reference_day,
        property_params: p.by_property.clone(),
    };
    let knn = p.knn.map(|kp| KnnRun::start(conf, iu.take(), kp));
    drop(iu);
    let trained = Trained {
        model,
        als_seconds,
        knn_seconds: 0.0,
    };
    (trained, knn)
}

/// A scoped thread's result (its panic resumed here).
fn joined_ok<T>(h: std::thread::ScopedJoinHandle<'_, T>) -> T {
    h.join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Item-kNN training running on a thread of its own while the backend's thread goes on. Only the
/// backend's thread talks to PostgreSQL: the training thread checks nothing but `stop`, which
/// [`KnnRun::finish`] sets on a pending cancel (it polls for one while it waits) and `Drop` sets
/// when an error unwinds past the run; either way the thread is joined before the run is gone.
pub struct KnnRun {
    result: std::sync::mpsc::Receiver<Result<Csr, Interrupted>>,
    thread: Option<std::thread::JoinHandle<()>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    started: Instant,
    neighbours: usize,
}

impl KnnRun {
    /// Starts training item-kNN on `conf` (its transpose `iu` when at hand) and moves the build
    /// to phase `knn`.
    pub fn start(conf: Csr, iu: Option<Csr>, kp: KnnParams) -> KnnRun {
        use std::sync::atomic::{AtomicBool, Ordering};
        crate::api::progress::phase("knn", format!("{} neighbours", kp.neighbours));
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let (tx, result) = std::sync::mpsc::sync_channel(1);
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("pg_audience knn".into())
            .spawn(move || {
                let mut check = || {
                    if stopped.load(Ordering::Relaxed) {
                        Err(Interrupted)
                    } else {
                        Ok(())
                    }
                };
                let knn = train_knn_with(&conf, iu, &kp, &mut check);
                drop(conf);
                let _ = tx.send(knn);
            })
            .unwrap_or_else(|e| {
                AudienceError::new(
                    pgrx::PgSqlErrorCode::ERRCODE_INSUFFICIENT_RESOURCES,
                    format!("could not start a thread for item-kNN training: {e}"),
                )
                .hint("Check the server's limits on processes and threads (ulimit -u).")
                .raise()
            });
        KnnRun {
            result,
            thread: Some(thread),
            stop,
            started: Instant::now(),
            neighbours: kp.neighbours,
        }
    }

    /// Waits for the neighbours, serving a cancel, statement timeout or terminate meanwhile (the
    /// training stops and the statement fails), and reports the phase's end (`meanwhile`: what
    /// this thread did while it trained, for the report). Returns them and the seconds since the
    /// training started.
    pub fn finish(mut self, meanwhile: Option<&str>) -> (Csr, f64) {
        use std::sync::mpsc::RecvTimeoutError;
        loop {
            match self
                .result
                .recv_timeout(std::time::Duration::from_millis(10))
            {
                Ok(Ok(knn)) => {
                    if let Some(t) = self.thread.take() {
                        t.join()
                            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                    }
                    let seconds = self.started.elapsed().as_secs_f64();
                    crate::api::progress::finished(
                        match meanwhile {
                            Some(m) => format!(
                                "trained item-kNN ({} neighbours; {m} meanwhile)",
                                self.neighbours
                            ),
                            None => format!("trained item-kNN ({} neighbours)", self.neighbours),
                        },
                        seconds,
                    );
                    return (knn, seconds);
                }
                Ok(Err(Interrupted)) => raise_interrupted("item-kNN training"),
                Err(RecvTimeoutError::Timeout) => {
                    if interrupt_check().is_err() {
                        raise_interrupted("item-kNN training")
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    // The thread ended without a result: it panicked.
                    if let Some(Err(panic)) = self.thread.take().map(|t| t.join()) {
                        std::panic::resume_unwind(panic)
                    }
                    AudienceError::internal("item-kNN training ended without a result").raise()
                }
            }
        }
    }
}

impl Drop for KnnRun {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A memory figure of this backend from /proc/self/status, in bytes (Linux only).
fn proc_status_bytes(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Peak resident memory (VmHWM). It includes the shared buffers the scan touched.
pub fn peak_rss_bytes() -> Option<u64> {
    proc_status_bytes("VmHWM:")
}

/// Private (anonymous) resident memory now: the backend's own allocations, without shared buffers.
pub fn private_rss_bytes() -> Option<u64> {
    proc_status_bytes("RssAnon:")
}

/// Bytes per model_data row: small enough that a cancel between rows is noticed quickly.
const CHUNK: usize = 8 << 20;

/// What [`store`] did.
pub struct Stored {
    pub model_id: i64,
    /// When item-kNN trained while the model was stored (a [`KnnRun`] was given).
    pub knn: Option<KnnStored>,
}

/// Item-kNN trained during [`store`].
pub struct KnnStored {
    pub seconds: f64,
    /// When it finished: the store's own seconds count from then.
    pub done: Instant,
    /// The backend's private memory then (the build's high point).
    pub private_bytes: Option<u64>,
}

/// Stores a model, in the caller's transaction, as the catalog's new active model (dropping the
/// catalog's older models), or, when `activate` is false (refused by the deploy guard, whose
/// report is `guard`), beside the active model (dropping the other inactive ones). Returns the
/// new model id.
///
/// With `knn` (item-kNN still training, the model's `knn` not set yet), the sections before the
/// neighbours' are encoded and written, and the older models dropped, while it trains; then
/// `model.knn` is set and the rest is stored (phase `store` from then on).
#[allow(clippy::too_many_arguments)]
pub fn store(
    cid: i32,
    model: &mut Model,
    knn: Option<KnnRun>,
    rows_read: i64,
    until: Option<TimestampWithTimeZone>,
    reference_us: i64,
    params: &serde_json::Value,
    stats: &serde_json::Value,
    activate: bool,
    guard: Option<&serde_json::Value>,
) -> Stored {
    if knn.is_none() {
        crate::api::progress::phase("store", "");
    }
    let reference = TimestampWithTimeZone::try_from(reference_us).ok();
    let model_id: i64 = Spi::get_one_with_args::<i64>(
        "INSERT INTO audience.models (catalog_id, train_until, reference_time, rows_read, users, items, pairs, params, stats, guard)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING model_id",
        &args![
            cid,
            until,
            reference,
            rows_read,
            model.users.len() as i64,
            model.items.len() as i64,
            model.ui.nnz() as i64,
            pgrx::JsonB(params.clone()),
            pgrx::JsonB(stats.clone()),
            guard.map(|g| pgrx::JsonB(g.clone()))
        ],
    )
    .or_raise("storing the model")
    .unwrap_or_else(|| AudienceError::internal("no model id").raise());
    let mut rows = RowWriter {
        model_id,
        n: 0,
        bytes: 0,
        seconds: 0.0,
        waited: 0.0,
    };
    let mut encoded = (0f64, 0f64);
    // The older models' rows deleted early (with `knn`: while it trains), and in how long.
    let mut dropped: Option<(Vec<i64>, f64)> = None;
    // The sections before the neighbours' already stored.
    let mut head_stored = false;
    let mut knn_done = None;
    let mut head_bytes = None;
    if let Some(run) = knn {
        let m: &Model = model;
        let stop = std::sync::atomic::AtomicBool::new(false);
        let (enc, early) = std::thread::scope(|sc| {
            let stop = &stop;
            let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(1);
            let encoder =
                sc.spawn(move || encode_pieces(&tx, stop, |at| m.encode_head_sections(at)));
            let _stop = StopOnUnwind(stop);
            // The deletes first: the encoder has its first pieces ready by the time they end.
            let t = Instant::now();
            let early = activate.then(|| {
                (
                    store_activate(cid, model_id, true),
                    t.elapsed().as_secs_f64(),
                )
            });
            rows.write(rx);
            (joined(encoder), early)
        });
        head_bytes = Some(rows.bytes);
        let (knn, seconds) = run.finish(Some("the model's first rows stored"));
        model.knn = Some(knn);
        knn_done = Some(KnnStored {
            seconds,
            done: Instant::now(),
            private_bytes: private_rss_bytes(),
        });
        crate::api::progress::phase("store", "");
        (head_stored, encoded, dropped) = (true, enc, early);
    }
    let m: &Model = model;
    // The serving image is written by a worker thread while this one stores the rows.
    let stage = crate::api::shared::stage(model_id);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (replaced, activate_s, image_wait, written) = std::thread::scope(|sc| {
        let worker = stage.as_ref().map(|st| sc.spawn(|| st.write(m, &stop)));
        // The model is encoded on another worker, in pieces this thread stores as they come.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(1);
        let stop = &stop;
        let encoder = sc.spawn(move || {
            encode_pieces(&tx, stop, |at| {
                if head_stored {
                    m.encode_tail_sections(at)
                } else {
                    m.encode_sections(at)
                }
            })
        });
        // The property values' item and user counts, computed meanwhile too (pure arithmetic).
        let counts = sc.spawn(|| property_counts(m));
        // An error raised below unwinds through this scope, which waits for the workers: stop
        // them (the encoder also stops when the receiver of its pieces is gone).
        let _stop = StopOnUnwind(stop);
        rows.write(rx);
        let enc = joined(encoder);
        encoded = (encoded.0 + enc.0, encoded.1 + enc.1);
        store_property_values(model_id, m, || joined_ok(counts));
        // Activated and the older models dropped (their rows deleted) while the image may still
        // be being written: the same transaction either way.
        let (replaced, activate_s) = dropped.take().unwrap_or_else(|| {
            let t = Instant::now();
            (
                store_activate(cid, model_id, activate),
                t.elapsed().as_secs_f64(),
            )
        });
        let t_wait = Instant::now();
        let written = worker.map(|w| {
            w.join()
                .unwrap_or_else(|_| Err(std::io::Error::other("the image writer panicked")))
        });
        (
            replaced,
            activate_s,
            t_wait.elapsed().as_secs_f64(),
            written,
        )
    });
    if let (Some(st), Some(w)) = (stage, written) {
        st.finish(w, replaced);
    }
    pgrx::debug1!(
        "audience: stored model {model_id}: encoded and wrote its {} MB of rows in {:.2} s (waiting for pieces {:.2} s; the encoder {:.2} s, of which waiting to hand them over {:.2} s), older models dropped in {activate_s:.2} s{}; the serving image (written meanwhile) {image_wait:.2} s longer",
        rows.bytes >> 20,
        rows.seconds,
        rows.waited,
        encoded.0,
        encoded.1,
        match head_bytes {
            Some(b) => format!(
                "; the deletes and {} MB of the rows (before the neighbours') while item-kNN trained",
                b >> 20
            ),
            None => String::new(),
        },
    );
    Stored {
        model_id,
        knn: knn_done,
    }
}

/// Reports the end of the store phase begun at `t_store`; returns its seconds (counted from
/// the end of item-kNN's training when the model was stored while it trained: the build's phases
/// then add up to its total).
pub fn stored_report(stored: &Stored, t_store: Instant) -> f64 {
    let model_id = stored.model_id;
    let seconds = stored
        .knn
        .as_ref()
        .map_or(t_store, |k| k.done)
        .elapsed()
        .as_secs_f64();
    crate::api::progress::finished(
        if stored.knn.is_some() {
            format!("stored the rest of model {model_id} and its serving image")
        } else {
            format!("stored model {model_id} and its serving image")
        },
        seconds,
    );
    seconds
}

/// Runs `encode` (a [`Model`]'s `encode_*_sections`) on this thread, handing `tx` each piece of
/// at least [`CHUNK`] bytes and, at the end, the bytes after the last one (the sections a call
/// encodes end on a row of their own); stops when `stop` is set or the receiver is gone. Returns
/// the seconds encoding, and of them the seconds waiting to hand pieces over.
fn encode_pieces(
    tx: &std::sync::mpsc::SyncSender<Vec<u8>>,
    stop: &std::sync::atomic::AtomicBool,
    encode: impl FnOnce(
        &mut dyn FnMut(&mut Vec<u8>) -> Result<(), Interrupted>,
    ) -> Result<Vec<u8>, Interrupted>,
) -> Result<(f64, f64), Interrupted> {
    let t0 = Instant::now();
    let mut waited = 0f64;
    let mut send = |piece: Vec<u8>| {
        let t = Instant::now();
        let sent = tx.send(piece).map_err(|_| Interrupted);
        waited += t.elapsed().as_secs_f64();
        sent
    };
    let rest = encode(&mut |buf| {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Interrupted);
        }
        if buf.len() >= CHUNK {
            send(std::mem::take(buf))?;
        }
        Ok(())
    })?;
    send(rest)?;
    Ok((t0.elapsed().as_secs_f64(), waited))
}

/// The encoder's seconds (stopped early, an internal error: this thread stopped taking its
/// pieces only by raising an error, which does not get here).
fn joined(
    encoder: std::thread::ScopedJoinHandle<'_, Result<(f64, f64), Interrupted>>,
) -> (f64, f64) {
    joined_ok(encoder).unwrap_or_else(|Interrupted| {
        AudienceError::internal("the model's encoder stopped early").raise()
    })
}

/// Writes the model's encoded pieces as `model_data` rows of [`CHUNK`] bytes, numbered on
/// across calls.
struct RowWriter {
    model_id: i64,
    /// The next row's `chunk`.
    n: i32,
    bytes: usize,
    /// Writing rows as the pieces came, and of it waiting for the encoder's pieces.
    seconds: f64,
    waited: f64,
}

impl RowWriter {
    /// Writes the pieces until the encoder is done (or stopped: then its join reports it).
    fn write(&mut self, pieces: std::sync::mpsc::Receiver<Vec<u8>>) {
        let t0 = Instant::now();
        // Each row's argument (its bytea copy) in a context of its own, freed after the row: in
        // the function's context the copies added up to the whole model (339 MB at the 20M-event
        // shop) until the build returned.
        let mut row_context = PgMemoryContexts::new("pg_audience model row");
        loop {
            let t = Instant::now();
            let Ok(piece) = pieces.recv() else { break };
            self.waited += t.elapsed().as_secs_f64();
            for chunk in piece.chunks(CHUNK) {
                pgrx::check_for_interrupts!();
                // SAFETY: nothing allocated in `row_context` outlives the call; it is reset below.
                unsafe {
                    row_context.switch_to(|_| {
                        Spi::run_with_args(
                            "INSERT INTO audience.model_data (model_id, part, chunk, data) VALUES ($1, 'model', $2, $3)",
                            &args![self.model_id, self.n, chunk],
                        )
                    })
                }
                .or_raise("storing the model data");
                // SAFETY: the row's argument is no longer used.
                unsafe { row_context.reset() };
                self.n += 1;
            }
            self.bytes += piece.len();
        }
        self.seconds += t0.elapsed().as_secs_f64();
    }
}

/// Sets its flag when dropped while unwinding (an error raised in a thread scope).
struct StopOnUnwind<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for StopOnUnwind<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Per property of `model`, each value's item count and user count.
fn property_counts(model: &Model) -> Vec<(Vec<i64>, Vec<i64>)> {
    model
        .properties
        .iter()
        .map(|prop| {
            let items = (0..prop.values.len())
                .map(|v| prop.value_items.row(v).0.len() as i64)
                .collect();
            (items, value_user_counts(&model.ui, &prop.value_items))
        })
        .collect()
}

/// Writes the model's `property_values` rows (`counts` gives [`property_counts`]).
fn store_property_values(
    model_id: i64,
    model: &Model,
    counts: impl FnOnce() -> Vec<(Vec<i64>, Vec<i64>)>,
) {
    for (prop, (items, users)) in model.properties.iter().zip(counts()) {
        pgrx::check_for_interrupts!();
        Spi::run_with_args(
            "INSERT INTO audience.property_values (model_id, property, value, items, users)
             SELECT $1, $2, v, i, u FROM ROWS FROM (pg_catalog.unnest($3::pg_catalog.text[]), pg_catalog.unnest($4::pg_catalog.int8[]), pg_catalog.unnest($5::pg_catalog.int8[])) AS t(v, i, u)",
            &args![model_id, prop.name.as_str(), prop.values.clone(), items, users],
        )
        .or_raise("storing property values");
    }
}

/// Activates the stored model when `activate`, and drops the catalog's models other than it and
/// the active one; returns the dropped ids.
fn store_activate(cid: i32, model_id: i64, activate: bool) -> Vec<i64> {
    if activate {
        Spi::run_with_args(
            "UPDATE audience.catalogs SET active_model_id = $2, updated_at = pg_catalog.now() WHERE catalog_id OPERATOR(pg_catalog.=) $1",
            &args![cid, model_id],
        )
        .or_raise("activating the model");
    }
    // Kept: the new model and the active one.
    Spi::connect_mut(|client| {
        let table = client
            .update(
                "DELETE FROM audience.models m WHERE m.catalog_id OPERATOR(pg_catalog.=) $1 AND m.model_id OPERATOR(pg_catalog.<>) $2
                   AND m.model_id IS DISTINCT FROM (SELECT c.active_model_id FROM audience.catalogs c WHERE c.catalog_id OPERATOR(pg_catalog.=) $1)
                 RETURNING m.model_id",
                None,
                &args![cid, model_id],
            )
            .or_raise("dropping older models");
        table
            .filter_map(|r| r.get::<i64>(1).ok().flatten())
            .collect()
    })
}

/// Adds what is known only once a model is stored to its `stats`: the store and total seconds,
/// the backend's peak memory, and item-kNN's seconds and the private memory after it when it
/// trained while the model was stored (`knn`).
pub fn record_final_stats(model_id: i64, store_s: f64, total: f64, knn: Option<&KnnStored>) {
    Spi::run_with_args(
        "UPDATE audience.models SET stats = stats OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object('seconds', (stats OPERATOR(pg_catalog.->) 'seconds') OPERATOR(pg_catalog.||) pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object('store', $2::pg_catalog.float8, 'total', $3::pg_catalog.float8, 'knn', $5::pg_catalog.float8)), 'peak_rss_bytes', $4::pg_catalog.int8)
           OPERATOR(pg_catalog.||) pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object('private_rss_after_training_bytes', $6::pg_catalog.int8))
         WHERE model_id OPERATOR(pg_catalog.=) $1",
        &args![
            model_id,
            store_s,
            total,
            peak_rss_bytes().map(|b| b as i64),
            knn.map(|k| k.seconds),
            knn.and_then(|k| k.private_bytes).map(|b| b as i64)
        ],
    )
    .or_raise("recording build statistics");
}

/// Locks the catalog for a build (fails fast when another build holds it) and returns its id.
pub fn lock_catalog(catalog: Option<&str>) -> i32 {
    Spi::get_one_with_args::<i32>("SELECT audience._lock_for_build($1)", &args![catalog])
        .or_raise("locking the catalog")
        .unwrap_or_else(|| AudienceError::internal("no catalog id").raise())
}

/// Builds (or rebuilds) the catalog's model from its registered events and makes it active.
#[pg_extern(volatile)]
#[search_path(pg_catalog, @extschema@, pg_temp)]
#[allow(clippy::too_many_arguments, clippy::type_complexity)] // the named output columns of the SQL function
fn build(
    catalog: default!(Option<&str>, "NULL"),
    factors: default!(Option<i32>, "NULL"),
    iterations: default!(Option<i32>, "NULL"),
    regularization: default!(Option<f64>, "NULL"),
    alpha: default!(Option<f64>, "NULL"),
    neighbours: default!(Option<i32>, "NULL"),
    prior: default!(Option<f64>, "NULL"),
    activity_exp: default!(Option<f64>, "NULL"),
    knn_weight: default!(Option<f64>, "NULL"),
    volume: default!(Option<f64>, "NULL"),
    days_exp: default!(Option<f64>, "NULL"),
    tenure_exp: default!(Option<f64>, "NULL"),
    until: default!(Option<TimestampWithTimeZone>, "NULL"),
    own: default!(Option<&str>, "NULL"),
    own_half_life: default!(Option<Interval>, "NULL"),
    tune: default!(Option<bool>, "NULL"),
    guard: default!(Option<bool>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(model_id, i64),
        name!(rows_read, i64),
        name!(users, i64),
        name!(items, i64),
        name!(pairs, i64),
        name!(seconds, f64),
        name!(tuning, Option<pgrx::JsonB>),
        name!(guard, Option<pgrx::JsonB>),
    ),
> {
    let t0 = Instant::now();
    // Validate the explicit arguments before anything is stored.
    let own_hl_days = own_half_life
        .as_ref()
        .map(crate::api::tuning::interval_days);
    build_params(
        factors,
        iterations,
        regularization,
        alpha,
        neighbours,
        prior,
        activity_exp,
        knn_weight,
        volume,
        days_exp,
        tenure_exp,
        own,
        own_hl_days,
    );
    let cid = lock_catalog(catalog);
    if own.is_some() && own_half_life.is_none() {
        // A measure given without a half-life has none: forget the one remembered for the last.
        Spi::run_with_args(
            "UPDATE audience.catalogs SET build_settings = build_settings OPERATOR(pg_catalog.-) 'own_half_life_days'::pg_catalog.text WHERE catalog_id OPERATOR(pg_catalog.=) $1",
            &args![cid],
        )
        .or_raise("updating build settings");
    }
    let params = remembered_params(
        cid,
        serde_json::json!({
            "factors": factors, "iterations": iterations, "regularization": regularization, "alpha": alpha,
            "neighbours": neighbours, "prior": prior.map(|p| json_f32(p as f32)), "activity_exp": activity_exp, "knn_weight": knn_weight,
            "volume": volume, "days_exp": days_exp, "tenure_exp": tenure_exp, "own": own,
            "own_half_life_days": own_hl_days, "tune": tune, "guard": guard,
        }),
    );
    let catalog_name: String = Spi::get_one_with_args(
        "SELECT c.name FROM audience.catalogs c WHERE c.catalog_id OPERATOR(pg_catalog.=) $1",
        &args![cid],
    )
    .or_raise("reading the catalog")
    .unwrap_or_default();
    let _progress = crate::api::progress::begin(&catalog_name);
    let mut guard_report: Option<serde_json::Value> = None;
    let collected = collect(cid, None, until);
    let rows_read = collected.aff.rows as i64;
    if collected.aff.users.is_empty() {
        AudienceError::not_ready("the catalog's event sources hold no usable events")
            .detail(format!("{rows_read} rows were read; rows without a user id, a product id or a finite time are skipped."))
            .hint("Check the registered sources with SELECT * FROM audience.catalog_events.")
            .raise();
    }
    let (scan_s, products_s, state_bytes, scan_state) = (
        collected.scan_seconds,
        collected.products_seconds,
        collected.state_bytes,
        collected.scan_state,
    );
    let (min_t, max_t, ref_t) = (
        collected.aff.min_time_us,
        collected.aff.max_time_us,
        collected.aff.reference_us,
    );
    crate::api::progress::finished(
        format!(
            "scanned {rows_read} event rows ({} users, {} items, {} pairs; {} MB of state)",
            collected.aff.users.len(),
            collected.aff.items.len(),
            collected.aff.matrix.nnz(),
            state_bytes >> 20
        ),
        scan_s + products_s,
    );
    let prepared = if params.guard {
        match crate::api::guard::prepare(cid, &collected) {
            Ok(p) => Some(p),
            Err(v) => {
                pgrx::notice!(
                    "deploy guard: {}; the new model is activated",
                    v.report["reason"].as_str().unwrap_or("")
                );
                guard_report = Some(v.report);
                None
            }
        }
    } else {
        None
    };
    crate::api::progress::phase("tune", "");
    let t_tune = Instant::now();
    let (params, tuning) = crate::api::tuning::auto_tune(&collected, params);
    let tune_s = t_tune.elapsed().as_secs_f64();
    crate::api::progress::phase("training", "");
    if tuning.is_some() {
        crate::api::progress::finished("automatic tuning", tune_s);
    }
    // Without the deploy guard (which judges the whole model first), item-kNN trains while the
    // model is stored.
    let (mut trained, knn_run) = if prepared.is_some() {
        (train(collected, &params), None)
    } else {
        train_starting_knn(collected, &params)
    };
    // Measured with the affinity matrix and the trained models in memory, the build's high point
    // (measured again when item-kNN is done, when it trains while the model is stored).
    let private_bytes = private_rss_bytes();
    let t_guard = Instant::now();
    let mut activate = true;
    if let Some(p) = prepared {
        let v = crate::api::guard::judge(p, &trained.model, &params);
        activate = v.activate;
        if activate {
            pgrx::notice!(
                "deploy guard: {}; the new model is activated",
                v.report["reason"].as_str().unwrap_or("")
            );
        } else {
            crate::error::AudienceError::new(
                pgrx::PgSqlErrorCode::ERRCODE_WARNING,
                format!("deploy guard: {}; the new model is stored but not activated", v.report["reason"].as_str().unwrap_or("")),
            )
            .hint("Inspect it (audience.models.guard), then SELECT audience.activate(model_id) to serve it anyway.")
            .warn();
        }
        guard_report = Some(v.report);
    }
    let guard_s = t_guard.elapsed().as_secs_f64();
    let t_store = Instant::now();
    let m = &trained.model;
    let (users, items, pairs) = (
        m.users.len() as i64,
        m.items.len() as i64,
        m.ui.nnz() as i64,
    );
    let stats = serde_json::json!({
        "seconds": { "scan": scan_s, "products": products_s, "tune": tune_s, "als": trained.als_seconds, "knn": knn_run.is_none().then_some(trained.knn_seconds), "guard": guard_s },
        "tuning": tuning.clone(),
        "affinity_state_bytes": state_bytes,
        "scan_state": scan_state,
        "peak_rss_bytes": peak_rss_bytes(),
        "private_rss_after_training_bytes": private_bytes,
        "first_event_us": min_t, "last_event_us": max_t, "reference_us": ref_t,
        "fresh_check": crate::api::fresh::build_check(cid, max_t),
        "registration": crate::api::incremental::registration(cid),
    });
    pgrx::debug1!(
        "audience: the model's statistics and its check for fresh reads in {:.2} s",
        t_store.elapsed().as_secs_f64()
    );
    let stored = store(
        cid,
        &mut trained.model,
        knn_run,
        rows_read,
        until,
        ref_t,
        &params_json(&params),
        &stats,
        activate,
        guard_report.as_ref(),
    );
    let model_id = stored.model_id;
    let store_s = stored_report(&stored, t_store);
    let total = t0.elapsed().as_secs_f64();
    record_final_stats(model_id, store_s, total, stored.knn.as_ref());
    TableIterator::once((
        model_id,
        rows_read,
        users,
        items,
        pairs,
        total,
        tuning.map(pgrx::JsonB),
        guard_report.map(pgrx::JsonB),
    ))
}
