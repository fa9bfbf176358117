//! Progress of running builds. A build reports each phase as a NOTICE when it ends (shown when
//! `client_min_messages` allows) and keeps its current phase in a small file,
//! `pg_audience/progress/<pid>`, replaced atomically at each change and removed when the build
//! ends (also on error or cancel: the guard's `Drop` runs while the error unwinds).
//! `audience.build_progress()` reads those files from any session, showing only the builds of roles
//! the caller is a member of (all of them to members of `pg_read_all_stats`), like
//! `pg_stat_activity` does with queries; files of backends that are gone are removed.
use crate::api::spi_util::{args, query_rows};
use pgrx::prelude::*;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct State {
    pid: i32,
    role: u32,
    catalog: String,
    phase: String,
    detail: String,
    started_ms: u64,
    phase_started_ms: u64,
}

thread_local! {
    static CURRENT: RefCell<Option<State>> = const { RefCell::new(None) };
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn dir() -> PathBuf {
    crate::api::shared::root().join("progress")
}

fn write(s: &State) {
    let d = dir();
    let path = d.join(s.pid.to_string());
    let tmp = d.join(format!("{}.tmp", s.pid));
    let ok = std::fs::create_dir_all(&d).is_ok()
        && serde_json::to_vec(s)
            .ok()
            .is_some_and(|b| std::fs::write(&tmp, b).is_ok())
        && std::fs::rename(&tmp, &path).is_ok();
    if !ok {
        pgrx::debug1!(
            "pg_audience: could not record build progress in {}",
            d.display()
        );
    }
}

/// The progress of this backend's build; removes its file when dropped.
pub struct Guard(());

impl Drop for Guard {
    fn drop(&mut self) {
        CURRENT.with(|c| {
            if let Some(s) = c.borrow_mut().take() {
                let _ = std::fs::remove_file(dir().join(s.pid.to_string()));
            }
        });
    }
}

/// Starts reporting a build of `catalog` (phase "scan").
pub fn begin(catalog: &str) -> Guard {
    // SAFETY: plain reads of backend globals set at connection start.
    let (pid, role) = unsafe { (pg_sys::MyProcPid, pg_sys::GetUserId().to_u32()) };
    let t = now_ms();
    let s = State {
        pid,
        role,
        catalog: catalog.to_string(),
        phase: "scan".into(),
        detail: String::new(),
        started_ms: t,
        phase_started_ms: t,
    };
    write(&s);
    CURRENT.with(|c| *c.borrow_mut() = Some(s));
    Guard(())
}

/// Moves the running build (if any) to `phase`.
/// While tuning, training the validation model stays in phase `tune` (its step goes to `detail`).
pub fn phase(phase: &str, detail: impl Into<String>) {
    CURRENT.with(|c| {
        if let Some(s) = c.borrow_mut().as_mut() {
            if s.phase == "tune" && matches!(phase, "scan" | "products" | "als" | "knn") {
                s.detail = format!("validation model: {phase} {}", detail.into())
                    .trim_end()
                    .to_string();
            } else {
                s.phase = phase.to_string();
                s.detail = detail.into();
                s.phase_started_ms = now_ms();
            }
            write(s);
        }
    });
}

/// Reports the end of a phase as a NOTICE (filtered by `client_min_messages` as usual).
/// Nothing when no build is running in this backend (tune and evaluate train models too).
pub fn finished(what: impl std::fmt::Display, seconds: f64) {
    if let Some((catalog, phase)) = CURRENT.with(|c| {
        c.borrow()
            .as_ref()
            .map(|s| (s.catalog.clone(), s.phase.clone()))
    }) {
        let within = if phase == "tune" {
            "automatic tuning: "
        } else {
            ""
        };
        pgrx::notice!(
            "build of \"{}\": {within}{what} in {seconds:.1} s",
            crate::error::shown(&catalog)
        );
    }
}

/// The builds running now, one row each, with their phase: `scan` (reading the events),
/// `products` (item properties), `tune` (automatic tuning), `als`, `knn` (training), `store`
/// (writing the model and its serving image).
#[pg_extern(volatile)]
#[allow(clippy::type_complexity)] // the named output columns of the SQL function
fn build_progress() -> TableIterator<
    'static,
    (
        name!(pid, i32),
        name!(catalog, String),
        name!(role, Option<String>),
        name!(phase, String),
        name!(detail, String),
        name!(started, Option<TimestampWithTimeZone>),
        name!(phase_seconds, f64),
        name!(seconds, f64),
    ),
> {
    let running: Vec<i32> = query_rows(
        "SELECT a.pid FROM pg_catalog.pg_stat_activity a",
        &[],
        |r| r.get::<i32>(1).ok().flatten(),
    )
    .into_iter()
    .flatten()
    .collect();
    let mut states: Vec<State> = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir()) {
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            let state = std::fs::read(e.path())
                .ok()
                .and_then(|b| serde_json::from_slice::<State>(&b).ok());
            match state {
                Some(s) if running.contains(&pid) && s.pid == pid => states.push(s),
                // The backend is gone (a crash skips the cleanup), or the file is not ours.
                _ if !running.contains(&pid) => {
                    let _ = std::fs::remove_file(e.path());
                }
                _ => {}
            }
        }
    }
    states.sort_by_key(|s| s.pid);
    let now = now_ms();
    let rows: Vec<_> = states
        .into_iter()
        .filter_map(|s| {
            let visible = query_rows(
                "SELECT pg_catalog.pg_has_role(pg_catalog.current_user(), $1::pg_catalog.oid, 'MEMBER') OR pg_catalog.pg_has_role(pg_catalog.current_user(), 'pg_read_all_stats', 'MEMBER'), (SELECT r.rolname::pg_catalog.text FROM pg_catalog.pg_roles r WHERE r.oid OPERATOR(pg_catalog.=) $1::pg_catalog.oid)",
                &args![s.role as i64],
                |r| (r.get::<bool>(1).ok().flatten().unwrap_or(false), r.get::<String>(2).ok().flatten()),
            );
            let (ok, role) = visible.into_iter().next().unwrap_or((false, None));
            if !ok {
                return None;
            }
            let started = TimestampWithTimeZone::try_from(((s.started_ms as i64) - 946_684_800_000) * 1000).ok();
            Some((
                s.pid,
                s.catalog,
                role,
                s.phase,
                s.detail,
                started,
                now.saturating_sub(s.phase_started_ms) as f64 / 1000.0,
                now.saturating_sub(s.started_ms) as f64 / 1000.0,
            ))
        })
        .collect();
    TableIterator::new(rows)
}
