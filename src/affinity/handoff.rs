//! A parallel worker's partial state handed to its leader through a file instead of the tuple
//! queue.
//!
//! A worker's partial state of a 20M-row scan is ~140 MB. Sent as a `bytea` it is copied into a
//! fresh datum, into a fresh tuple, then through the 64 KB ring of the tuple queue, in ~2,200
//! turns of the worker and the leader, into a fresh 256 MB receive buffer of the leader: on the
//! 2-core VMs measured here, the leader's part of the scan was mostly waiting on that ring and
//! faulting in the fresh pages (`README.md`, "Where the scan's tail goes"). Instead the worker
//! writes the encoded state once into a file in the server's temporary directory and sends a
//! 32-byte ticket; the leader maps the file (its pages are already in the page cache), removes
//! its name at once, and merges straight from the mapping.
//!
//! Names: `base/pgsql_tmp/pgsql_tmp_pga_<leader pid>_<worker pid>_<n>`, under the data
//! directory (the server's working directory). The `pgsql_tmp` prefix makes the server remove
//! files a crash left behind when it starts ([`RemovePgTempFiles`]); the leader's pid lets the
//! leader remove, at the end of its transaction, any file its workers wrote that it never read
//! (a failed or cancelled query). The leader registers that clean-up when it starts its own part
//! of the scan, or, taking no part (`parallel_leader_participation = off`), when it reads its
//! first worker's file: a query that fails before either leaves its files to the same backend's
//! next transaction that registers, or to the server's next start.
//!
//! Plain Rust with `std` and `libc`: `cargo test` covers it.
//!
//! [`RemovePgTempFiles`]: https://github.com/postgres/postgres/blob/REL_15_STABLE/src/backend/storage/file/fd.c
use std::io::Write;
use std::path::{Path, PathBuf};

/// The first bytes of a ticket; never the start of an encoded state.
pub const TICKET_MAGIC: [u8; 8] = *b"PGAfile\0";
/// Bytes of a ticket: magic, leader pid, worker pid, sequence number, the file's length.
pub const TICKET_LEN: usize = 32;
/// States smaller than this go through the tuple queue as before (a grouped aggregate sends a
/// small state per group: a file each would cost more than it saves).
pub const MIN_BYTES: usize = 1 << 20;
/// The directory of the files, relative to the data directory.
pub const DIR: &str = "base/pgsql_tmp";
/// The first part of every file's name (`pgsql_tmp` first: see the module comment).
const PREFIX: &str = "pgsql_tmp_pga_";

/// What a worker sends in place of its state's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket {
    pub leader: u32,
    pub worker: u32,
    pub seq: u64,
    pub len: u64,
}

impl Ticket {
    pub fn encode(&self) -> [u8; TICKET_LEN] {
        let mut out = [0u8; TICKET_LEN];
        out[..8].copy_from_slice(&TICKET_MAGIC);
        out[8..12].copy_from_slice(&self.leader.to_le_bytes());
        out[12..16].copy_from_slice(&self.worker.to_le_bytes());
        out[16..24].copy_from_slice(&self.seq.to_le_bytes());
        out[24..32].copy_from_slice(&self.len.to_le_bytes());
        out
    }

    /// The ticket in `bytes`; `None` when they are not a ticket (an encoded state).
    pub fn decode(bytes: &[u8]) -> Option<Ticket> {
        if bytes.len() != TICKET_LEN || bytes[..8] != TICKET_MAGIC {
            return None;
        }
        let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap());
        let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().unwrap());
        Some(Ticket {
            leader: u32_at(8),
            worker: u32_at(12),
            seq: u64_at(16),
            len: u64_at(24),
        })
    }

    /// The file's path under `dir`.
    pub fn path(&self, dir: &Path) -> PathBuf {
        dir.join(format!(
            "{PREFIX}{}_{}_{}",
            self.leader, self.worker, self.seq
        ))
    }
}

/// Creates the file for `ticket` under `dir` (the directory created if missing; the file must not
/// exist; owner-only permissions) and has `fill` write it; returns what `fill` returns (the bytes
/// written, for the ticket's `len`). On any error nothing is left behind.
pub fn write(
    dir: &Path,
    ticket: &Ticket,
    fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<u64>,
) -> std::io::Result<u64> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir)?;
    let path = ticket.path(dir);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    let done = fill(&mut f);
    if done.is_err() {
        let _ = std::fs::remove_file(&path);
    }
    done
}

/// [`write`] of `bytes`.
pub fn write_bytes(dir: &Path, ticket: &Ticket, bytes: &[u8]) -> std::io::Result<u64> {
    write(dir, ticket, |f| {
        f.write_all(bytes).map(|()| bytes.len() as u64)
    })
}

/// A file mapped read-only; unmapped when dropped.
pub struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    /// Maps the file of `ticket` under `dir` and removes its name (the mapping keeps its pages).
    /// An error when it is missing or its length is not the ticket's.
    pub fn take(dir: &Path, ticket: &Ticket) -> std::io::Result<Mapping> {
        use std::os::fd::AsRawFd;
        let path = ticket.path(dir);
        let f = std::fs::File::open(&path)?;
        let len = f.metadata()?.len();
        // Removed whatever follows: a file is read once.
        let _ = std::fs::remove_file(&path);
        if len != ticket.len || len == 0 || len > isize::MAX as u64 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} bytes where the ticket says {}", len, ticket.len),
            ));
        }
        let len = len as usize;
        // SAFETY: a new private read-only mapping of a file we opened; the kernel checks the
        // arguments. MAP_POPULATE maps the pages (already in the page cache) in one call.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_POPULATE,
                f.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mapping { ptr, len })
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `len` readable bytes at `ptr` for as long as the mapping lives; nothing writes
        // them (a private read-only mapping, its file's name already removed).
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `take`, unmapped once.
        unsafe {
            libc::munmap(self.ptr, self.len);
        }
    }
}

/// Removes the files under `dir` written for `leader` (those its queries never read); returns
/// how many.
pub fn remove_for_leader(dir: &Path, leader: u32) -> usize {
    let prefix = format!("{PREFIX}{leader}_");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        if e.file_name()
            .to_str()
            .is_some_and(|s| s.starts_with(&prefix))
            && std::fs::remove_file(e.path()).is_ok()
        {
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pga_handoff_{}_{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn ticket_round_trip_and_foreign_bytes() {
        let t = Ticket {
            leader: 7,
            worker: 4_000_000_000,
            seq: u64::MAX - 1,
            len: 123_456_789_012,
        };
        assert_eq!(Ticket::decode(&t.encode()), Some(t));
        assert_eq!(Ticket::decode(&t.encode()[..31]), None);
        let mut other = t.encode();
        other[0] = b'X';
        assert_eq!(Ticket::decode(&other), None);
        assert_eq!(Ticket::decode(b"PGAfile\0"), None);
        assert!(t
            .path(Path::new("/d"))
            .ends_with("pgsql_tmp_pga_7_4000000000_18446744073709551614"));
    }

    #[test]
    fn written_file_is_read_once_and_removed() {
        let dir = temp_dir("once");
        let bytes: Vec<u8> = (0..100_000u32).map(|x| (x * 7 % 251) as u8).collect();
        let t = Ticket {
            leader: 11,
            worker: 12,
            seq: 1,
            len: bytes.len() as u64,
        };
        write_bytes(&dir, &t, &bytes).unwrap();
        // The same name twice is an error, and the first file stays as it was.
        assert!(write_bytes(&dir, &t, b"other").is_err());
        // A failed fill leaves nothing behind.
        let other = Ticket { seq: 2, ..t };
        assert!(write(&dir, &other, |f| {
            f.write_all(b"partial")?;
            Err(std::io::Error::other("disk full"))
        })
        .is_err());
        assert!(!other.path(&dir).exists());
        let m = Mapping::take(&dir, &t).unwrap();
        assert!(!t.path(&dir).exists());
        assert_eq!(m.bytes(), &bytes[..]);
        assert!(Mapping::take(&dir, &t).is_err());
        drop(m);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn wrong_length_is_refused_and_the_file_removed() {
        let dir = temp_dir("len");
        let t = Ticket {
            leader: 1,
            worker: 2,
            seq: 3,
            len: 10,
        };
        write_bytes(&dir, &t, b"0123456789").unwrap();
        let bad = Ticket { len: 11, ..t };
        assert!(Mapping::take(&dir, &bad).is_err());
        assert!(!t.path(&dir).exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn leader_removes_only_its_own_files() {
        let dir = temp_dir("leader");
        for (leader, worker) in [(5u32, 1u32), (5, 2), (55, 1), (6, 5)] {
            let t = Ticket {
                leader,
                worker,
                seq: 1,
                len: 1,
            };
            write_bytes(&dir, &t, b"x").unwrap();
        }
        assert_eq!(remove_for_leader(&dir, 5), 2);
        assert_eq!(remove_for_leader(&dir, 5), 0);
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["pgsql_tmp_pga_55_1_1", "pgsql_tmp_pga_6_5_1"]);
        assert_eq!(remove_for_leader(&dir.join("missing"), 5), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
