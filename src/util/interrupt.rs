//! Interrupt polling for the long single-threaded passes of the pure core (splitting the affinity
//! at a day, building the day index, counting active days): they call [`poll`] every
//! [`POLL_EVERY`] steps. The SQL layer installs a hook at load time that raises PostgreSQL's
//! pending cancel, statement timeout or terminate as the statement's error; without a hook (plain
//! `cargo test`) polling does nothing.
//!
//! The hook runs only on the thread that installed it (the backend's own): worker threads must
//! not call into PostgreSQL, and a raise inside `std::thread::scope` would wait for the workers
//! to finish (the multi-threaded loops return `Interrupted` instead, see `api::build`).
use std::sync::OnceLock;
use std::thread::ThreadId;

/// Returned by the core's multi-threaded loops when their `check` callback asked them to stop
/// (one type for ALS, item-kNN, model encoding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interrupted;

/// Steps between two polls in the core's loops.
pub const POLL_EVERY: usize = 1 << 16;

static HOOK: OnceLock<(ThreadId, fn())> = OnceLock::new();

/// Installs the hook for the calling thread (once per process; later calls are ignored).
pub fn set_hook(f: fn()) {
    let _ = HOOK.set((std::thread::current().id(), f));
}

/// Runs the hook when one is installed and this is its thread.
#[inline]
pub fn poll() {
    if let Some((thread, f)) = HOOK.get() {
        if std::thread::current().id() == *thread {
            f();
        }
    }
}

/// Polls every [`POLL_EVERY`] values of a loop counter.
#[inline]
pub fn poll_every(i: usize) {
    if i.is_multiple_of(POLL_EVERY) {
        poll();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn the_hook_runs_every_poll_every_steps_and_only_on_its_thread() {
        static CALLS: AtomicUsize = AtomicUsize::new(0);
        fn count() {
            CALLS.fetch_add(1, Ordering::SeqCst);
        }
        set_hook(count);
        for i in 0..3 * POLL_EVERY {
            poll_every(i);
        }
        assert_eq!(CALLS.load(Ordering::SeqCst), 3);
        std::thread::spawn(poll).join().unwrap();
        assert_eq!(CALLS.load(Ordering::SeqCst), 3, "not on another thread");
        poll();
        assert_eq!(CALLS.load(Ordering::SeqCst), 4);
    }
}
