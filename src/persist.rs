//! The state file: everything an operator set through lbd (the desired [`State`]) plus the
//! data-plane ids the reconciler handed out, written atomically (temp file, fsync, rename, fsync
//! of the directory) before a change is acknowledged, and read back at start.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::reconcile::AppliedIds;
use crate::state::State;

/// Format version of the file; bump it when the layout changes incompatibly.
pub const STATE_FILE_VERSION: u32 = 1;
/// Name of the state file inside the state directory.
pub const STATE_FILE: &str = "state.json";

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
    #[error("{path} has format version {found}, this lbd reads version {STATE_FILE_VERSION}")]
    Version { path: PathBuf, found: u32 },
}

/// What the file holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateFile {
    pub version: u32,
    pub state: State,
    /// Data-plane ids in use, so a restarted lbd adopts the pinned maps without renumbering.
    pub ids: AppliedIds,
}

/// The state file in a directory.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// Reads the state file; `Ok(None)` when there is none yet.
    pub fn load(&self) -> Result<Option<StateFile>, PersistError> {
        let path = self.path();
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(PersistError::Io { path, source }),
        };
        // Read the version first, so that a newer format is reported as such, not as corrupt.
        #[derive(Deserialize)]
        struct Version {
            version: u32,
        }
        let v: Version = serde_json::from_slice(&text).map_err(|source| PersistError::Corrupt {
            path: path.clone(),
            source,
        })?;
        if v.version != STATE_FILE_VERSION {
            return Err(PersistError::Version {
                path,
                found: v.version,
            });
        }
        let file: StateFile = serde_json::from_slice(&text)
            .map_err(|source| PersistError::Corrupt { path, source })?;
        Ok(Some(file))
    }

    /// Writes the state file atomically: readers see the old or the new file, never a mix.
    pub fn save(&self, state: &State, ids: &AppliedIds) -> Result<(), PersistError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| PersistError::Io { path, source }
        };
        fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let file = StateFile {
            version: STATE_FILE_VERSION,
            state: state.clone(),
            ids: ids.clone(),
        };
        let text = serde_json::to_vec_pretty(&file).map_err(|source| PersistError::Corrupt {
            path: self.path(),
            source,
        })?;
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
        Ok(())
    }
}

/// (De)serialises a map whose keys are not strings as a list of `[key, value]` pairs.
pub mod vec_map {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<K: Serialize, V: Serialize, S: Serializer>(
        m: &BTreeMap<K, V>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(m.iter())
    }

    pub fn deserialize<'de, K, V, D>(d: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(d)?.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Mode, Protocol, VipKey};

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

    #[test]
    fn corrupt_and_truncated_files_are_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        let (s, ids) = sample();
        store.save(&s, &ids).unwrap();
        let text = fs::read(store.path()).unwrap();
        fs::write(store.path(), &text[..text.len() / 2]).unwrap();
        let e = store.load().expect_err("truncated").to_string();
        assert!(e.contains("corrupt or truncated"), "{e}");
        fs::write(store.path(), b"{\"version\": 99}").unwrap();
        let e = store.load().expect_err("newer version").to_string();
        assert!(e.contains("format version 99"), "{e}");
    }
}
