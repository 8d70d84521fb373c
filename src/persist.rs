//! The state file: everything an operator set through lbd (the desired [`State`]) plus the
//! data-plane ids the reconciler handed out, made durable before a change is acknowledged, and
//! read back at start.
//!
//! Two files in the state directory:
//! * `state.json`, the whole state, written atomically (temp file, fsync, rename, fsync of the
//!   directory): at the first save of a process (lbd's start) and whenever the journal has grown
//!   past [`JOURNAL_LIMIT`] (compaction);
//! * `state.journal`, one line per save in between: a checksum and the whole state as one line
//!   of JSON, appended and made durable with one `fdatasync` before `save` returns.
//!
//! Why: the atomic write costs three device flushes (file data, the rename's journal commit, the
//! directory), the append one; on a virtual disk whose flush takes milliseconds this is most of
//! an acknowledged AddBackend. The guarantee is unchanged: `save` returns only once the new state
//! is on disk, and a crash at any point leaves the state of the last completed save readable.
//!
//! Reading: `state.json` must be intact (a damaged one stops lbd, which never guesses); then the
//! journal record with the highest sequence number wins over it if it is newer. Every record
//! carries its sequence number and a checksum. A damaged *last* record is a save that a crash cut
//! short and that was never acknowledged: it is skipped (with a warning). A damaged record
//! followed by good ones is corruption: refused, as a damaged `state.json` is.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use xdplb_model::state::{State, VipKey};

/// The ids the reconciler handed out: persisted with the state, so that a restarted lbd keeps
/// every id that the pinned maps (rings, conntrack entries, counters) still refer to.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AppliedIds {
    pub(crate) vips: Vec<(VipKey, u32)>,
    pub(crate) backends: Vec<(VipKey, SocketAddrV4, u32)>,
}

/// Format version of the file; bump it when the layout changes incompatibly.
pub(crate) const STATE_FILE_VERSION: u32 = 1;
/// Name of the state file inside the state directory.
pub(crate) const STATE_FILE: &str = "state.json";
/// Name of the journal of saves since `state.json` was last written.
pub(crate) const JOURNAL_FILE: &str = "state.journal";
/// Size past which the next save rewrites `state.json` and empties the journal.
pub(crate) const JOURNAL_LIMIT: u64 = 8 << 20;

/// Why the state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is corrupt or truncated ({source}); lbd will not guess: fix or move the file away (the data plane keeps forwarding meanwhile)")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: record {record} is damaged ({detail}) and later records follow; lbd will not guess: fix or move the file away (the data plane keeps forwarding meanwhile)")]
    CorruptJournal {
        path: PathBuf,
        record: usize,
        detail: String,
    },
    #[error("{path} has format version {found}, this lbd reads version {STATE_FILE_VERSION}")]
    Version { path: PathBuf, found: u32 },
}

/// What the file holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateFile {
    pub(crate) version: u32,
    pub state: State,
    /// Data-plane ids in use, so a restarted lbd adopts the pinned maps without renumbering.
    pub ids: AppliedIds,
    /// Number of the save that wrote this state (0 in files written before the journal).
    #[serde(default)]
    pub(crate) seq: u64,
}

/// What `save` writes: a [`StateFile`] borrowing its parts (no copy of the state per save).
#[derive(Serialize)]
struct StateFileRef<'a> {
    version: u32,
    state: &'a State,
    ids: &'a AppliedIds,
    seq: u64,
}

/// The state file and its journal in a directory. Clones share the open journal.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
    journal: Arc<Mutex<Journal>>,
    /// Journal size that triggers a compaction ([`JOURNAL_LIMIT`]; smaller in tests).
    limit: u64,
}

/// The writer's side: the open journal and the last sequence number used.
#[derive(Debug, Default)]
struct Journal {
    /// Open for appending once this process rewrote `state.json` (its first save).
    file: Option<File>,
    len: u64,
    seq: u64,
}

impl StateStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            journal: Arc::default(),
            limit: JOURNAL_LIMIT,
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    pub fn journal_path(&self) -> PathBuf {
        self.dir.join(JOURNAL_FILE)
    }

    /// Reads the state (the state file, then the newer saves in the journal); `Ok(None)` when
    /// there is none yet.
    pub fn load(&self) -> Result<Option<StateFile>, PersistError> {
        let path = self.path();
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(PersistError::Io { path, source }),
        };
        let mut file = parse(&path, &text)?;
        if let Some(newer) = self.read_journal()? {
            if newer.seq > file.seq {
                file = newer;
            }
        }
        let mut j = self.lock();
        j.seq = j.seq.max(file.seq);
        Ok(Some(file))
    }

    /// The last good record of the journal, if any.
    fn read_journal(&self) -> Result<Option<StateFile>, PersistError> {
        let path = self.journal_path();
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(PersistError::Io { path, source }),
        };
        let mut last = None;
        // A record is complete only with its newline: what follows the last one is a cut append.
        let mut records: Vec<&[u8]> = text.split(|b| *b == b'\n').collect();
        let tail = records.pop().unwrap_or_default();
        if !tail.is_empty() {
            tracing::warn!(path = %path.display(), bytes = tail.len(),
                "the journal ends in a cut record (a save that never completed): skipped");
        }
        let count = records.len();
        for (i, line) in records.into_iter().enumerate() {
            match parse_record(&path, line) {
                Ok(file) => last = Some(file),
                Err(detail) if i + 1 == count => {
                    tracing::warn!(path = %path.display(), record = i, %detail,
                        "the journal's last record is damaged (a save that never completed): skipped");
                }
                Err(detail) => {
                    return Err(PersistError::CorruptJournal {
                        path,
                        record: i,
                        detail,
                    })
                }
            }
        }
        Ok(last)
    }

    /// Makes `state` and `ids` durable: on return they are what `load` reads, even after a crash.
    pub fn save(&self, state: &State, ids: &AppliedIds) -> Result<(), PersistError> {
        let mut j = self.lock();
        let seq = j.seq + 1;
        let file = StateFileRef {
            version: STATE_FILE_VERSION,
            state,
            ids,
            seq,
        };
        if j.file.is_none() || j.len > self.limit {
            self.compact(&mut j, &file)?;
        } else {
            self.append(&mut j, &file)?;
        }
        j.seq = seq;
        Ok(())
    }

    /// Appends one record to the journal and waits until it is on disk.
    fn append(&self, j: &mut Journal, file: &StateFileRef<'_>) -> Result<(), PersistError> {
        let path = self.journal_path();
        let json = serde_json::to_vec(file).map_err(|source| PersistError::Corrupt {
            path: path.clone(),
            source,
        })?;
        let mut record = format!("{:016x} ", fnv1a64(&json)).into_bytes();
        record.extend_from_slice(&json);
        record.push(b'\n');
        let Some(f) = j.file.as_mut() else {
            return self.compact(j, file);
        };
        let written = f.write_all(&record).and_then(|()| f.sync_data());
        if let Err(source) = written {
            // The journal may end in a partial record now; the next save starts afresh.
            j.file = None;
            return Err(PersistError::Io { path, source });
        }
        j.len += record.len() as u64;
        Ok(())
    }

    /// Writes the state file atomically (readers see the old or the new file, never a mix),
    /// then empties the journal.
    fn compact(&self, j: &mut Journal, file: &StateFileRef<'_>) -> Result<(), PersistError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| PersistError::Io { path, source }
        };
        j.file = None;
        fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let text = serde_json::to_vec_pretty(file).map_err(|source| PersistError::Corrupt {
            path: self.path(),
            source,
        })?;
        // Created before the directory's fsync below, which makes its name durable too.
        let jpath = self.journal_path();
        let journal = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&jpath)
            .map_err(io(&jpath))?;
        let tmp = self.dir.join(format!(".{STATE_FILE}.tmp"));
        {
            let mut f = File::create(&tmp).map_err(io(&tmp))?;
            f.write_all(&text).map_err(io(&tmp))?;
            f.write_all(b"\n").map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
        }
        let path = self.path();
        fs::rename(&tmp, &path).map_err(io(&path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))?;
        // Older records are now superseded by the state file (lower sequence numbers), so a
        // crash before or during the truncation loses nothing.
        journal
            .set_len(0)
            .and_then(|()| journal.sync_all())
            .map_err(io(&jpath))?;
        j.file = Some(journal);
        j.len = 0;
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Journal> {
        // A panic while holding the lock leaves nothing half-done that the next save relies
        // on (it compacts when the journal is not open), so a poisoned lock is usable.
        self.journal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Parses a whole state file (version first, so that a newer format is reported as such, not
/// as corrupt).
fn parse(path: &Path, text: &[u8]) -> Result<StateFile, PersistError> {
    #[derive(Deserialize)]
    struct Version {
        version: u32,
    }
    let v: Version = serde_json::from_slice(text).map_err(|source| PersistError::Corrupt {
        path: path.to_owned(),
        source,
    })?;
    if v.version != STATE_FILE_VERSION {
        return Err(PersistError::Version {
            path: path.to_owned(),
            found: v.version,
        });
    }
    serde_json::from_slice(text).map_err(|source| PersistError::Corrupt {
        path: path.to_owned(),
        source,
    })
}

/// Parses one journal line (`<checksum, 16 hex digits> <json>`); the error says what is wrong.
fn parse_record(path: &Path, line: &[u8]) -> Result<StateFile, String> {
    let (sum, json) = match (line.get(..16), line.get(16), line.get(17..)) {
        (Some(sum), Some(b' '), Some(json)) => (sum, json),
        _ => return Err(format!("{} bytes, not a record", line.len())),
    };
    let sum = std::str::from_utf8(sum)
        .ok()
        .and_then(|s| u64::from_str_radix(s, 16).ok())
        .ok_or("no checksum")?;
    if sum != fnv1a64(json) {
        return Err("checksum mismatch".into());
    }
    parse(path, json).map_err(|e| e.to_string())
}

/// 64-bit FNV-1a, the journal's record checksum (catches torn and damaged records).
fn fnv1a64(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use xdplb_model::state::{Mode, Protocol, VipKey};

    fn sample() -> (State, AppliedIds) {
        let mut s = State::default();
        let v = VipKey {
            addr: "10.0.0.10:80".parse().unwrap(),
            proto: Protocol::Tcp,
        };
        s.add_vip(v, Mode::Nat).unwrap();
        s.add_backend(&v, "10.0.2.1:8080".parse().unwrap(), 7)
            .unwrap();
        let ids = AppliedIds {
            vips: vec![(v, 3)],
            backends: vec![(v, "10.0.2.1:8080".parse().unwrap(), 9)],
        };
        (s, ids)
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        assert!(store.load().unwrap().is_none());
        let (s, ids) = sample();
        store.save(&s, &ids).unwrap();
        let back = store.load().unwrap().expect("written");
        assert_eq!(back.state, s);
        assert_eq!(back.ids, ids);
        assert!(!dir.path().join(".state.json.tmp").exists());
    }

    fn add(s: &mut State, port: u16) {
        let v = s.vips.keys().next().copied().unwrap();
        s.add_backend(&v, format!("10.0.2.9:{port}").parse().unwrap(), 1)
            .unwrap();
    }

    /// A store in a new directory with [`sample`] saved once (the state file).
    fn saved_sample() -> (tempfile::TempDir, StateStore, State, AppliedIds) {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        let (s, ids) = sample();
        store.save(&s, &ids).unwrap();
        (dir, store, s, ids)
    }

    /// What a new process (a new store) on `dir` loads.
    fn reloaded(dir: &tempfile::TempDir) -> StateFile {
        StateStore::new(dir.path()).load().unwrap().expect("saved")
    }

    fn journal_lines(store: &StateStore) -> usize {
        fs::read(store.journal_path())
            .unwrap()
            .iter()
            .filter(|b| **b == b'\n')
            .count()
    }

    #[test]
    fn saves_after_the_first_go_to_the_journal_and_read_back() {
        let (dir, store, mut s, ids) = saved_sample();
        let first = fs::read(store.path()).unwrap();
        assert_eq!(journal_lines(&store), 0);
        for port in 1..=5 {
            add(&mut s, port);
            store.save(&s, &ids).unwrap();
        }
        // The state file is as the first save left it; the journal has one record per save.
        assert_eq!(fs::read(store.path()).unwrap(), first);
        assert_eq!(journal_lines(&store), 5);
        // A new process (a new store) reads the last save.
        let back = reloaded(&dir);
        assert_eq!(back.state, s);
        assert_eq!(back.ids, ids);
        assert_eq!(back.seq, 6);
    }

    #[test]
    fn a_restart_compacts_and_keeps_counting() {
        let (dir, store, mut s, ids) = saved_sample();
        add(&mut s, 1);
        store.save(&s, &ids).unwrap();
        // The next lbd: load, then its first save rewrites the state file, empties the journal.
        let next = StateStore::new(dir.path());
        assert_eq!(next.load().unwrap().expect("saved").state, s);
        add(&mut s, 2);
        next.save(&s, &ids).unwrap();
        assert_eq!(journal_lines(&next), 0);
        let back = reloaded(&dir);
        assert_eq!((back.state, back.seq), (s, 3));
    }

    #[test]
    fn a_full_journal_is_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = StateStore::new(dir.path());
        store.limit = 2000;
        let (mut s, ids) = sample();
        for port in 1..=30 {
            add(&mut s, port);
            store.save(&s, &ids).unwrap();
            assert!(
                fs::metadata(store.journal_path()).unwrap().len() < 2000 + 4096,
                "journal not compacted"
            );
        }
        let back = reloaded(&dir);
        assert_eq!((back.state, back.seq), (s, 30));
    }

    #[test]
    fn a_state_file_newer_than_the_journal_wins() {
        // A crash after a compaction's rename and before the journal was emptied.
        let (dir, store, mut s, ids) = saved_sample();
        add(&mut s, 1);
        store.save(&s, &ids).unwrap();
        let old_journal = fs::read(store.journal_path()).unwrap();
        let next = StateStore::new(dir.path());
        next.load().unwrap();
        add(&mut s, 2);
        next.save(&s, &ids).unwrap();
        fs::write(store.journal_path(), old_journal).unwrap();
        let back = reloaded(&dir);
        assert_eq!(back.state, s);
    }

    #[test]
    fn a_cut_last_record_is_skipped_a_damaged_middle_one_refused() {
        let (dir, store, mut s, ids) = saved_sample();
        let mut saved = Vec::new();
        for port in 1..=3 {
            add(&mut s, port);
            store.save(&s, &ids).unwrap();
            saved.push(s.clone());
        }
        let journal = fs::read(store.journal_path()).unwrap();
        // Cut in the middle of the last record (no newline): the save before it is read.
        fs::write(store.journal_path(), &journal[..journal.len() - 40]).unwrap();
        let back = reloaded(&dir);
        assert_eq!(back.state, saved[1]);
        // The last record complete but with a wrong byte: skipped too.
        let mut bad = journal.clone();
        let n = bad.len();
        bad[n - 10] ^= 0x01;
        fs::write(store.journal_path(), &bad).unwrap();
        let back = reloaded(&dir);
        assert_eq!(back.state, saved[1]);
        // A damaged record with good ones after it: refused, the file named.
        let mut bad = journal.clone();
        bad[40] ^= 0x01;
        fs::write(store.journal_path(), &bad).unwrap();
        let e = StateStore::new(dir.path())
            .load()
            .expect_err("damaged journal")
            .to_string();
        assert!(
            e.contains("state.journal") && e.contains("record 0") && e.contains("will not guess"),
            "{e}"
        );
    }

    #[test]
    fn corrupt_and_truncated_files_are_refused_clearly() {
        let (_dir, store, _, _) = saved_sample();
        let text = fs::read(store.path()).unwrap();
        fs::write(store.path(), &text[..text.len() / 2]).unwrap();
        let e = store.load().expect_err("truncated").to_string();
        assert!(e.contains("corrupt or truncated"), "{e}");
        fs::write(store.path(), b"{\"version\": 99}").unwrap();
        let e = store.load().expect_err("newer version").to_string();
        assert!(e.contains("format version 99"), "{e}");
    }
}
