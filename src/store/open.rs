//! Opening: an existing file is first checked through a read-only handle (schema, canary,
//! every record read), so a damaged, foreign or wrong-key file is left byte for byte as it
//! was. A record that reads but does not decode is no reason to refuse the file: start-up
//! leaves it out by id (see [`load_catalog`](super::load_catalog)). Only a file that passed, or one a crash left needing recovery (which redb repairs), is
//! opened for writing. Each redb step runs under [`guarded`], so a redb panic on a file altered
//! behind its back becomes [`StoreError::Damaged`].
//!
//! The canary's sealed text names the schema version (`keypooler canary v2`), and the stored
//! version must agree with it: a version edited in the file without the key (to pass schema 2
//! records off as unsigned schema 1 ones) is refused. A schema 1 file that passed is upgraded
//! once opened for writing (`upgrade`).

use std::fs;
use std::io::Read;
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableError};

use super::guard::guarded;
use super::{CONSUMERS, KEYS, META, SCHEMA_VERSION, SQLITE_MAGIC, Store, StoreError, TIERS, USAGE};
use crate::crypto::Sealer;

pub(super) const SCHEMA_KEY: &str = "schema_version";
pub(super) const CANARY_KEY: &str = "canary";
pub(super) const CANARY_AAD: &[u8] = b"keypooler:meta/canary";

/// The canary's plaintext in a file of schema `version`.
pub(super) fn canary_text(version: u32) -> Vec<u8> {
    format!("keypooler canary v{version}").into_bytes()
}

/// redb's page cache. keypooler reads the database once, at start-up, and then only writes, so
/// redb's default (1 GiB) would only grow the RSS; 8 MiB keeps the B-tree's upper pages hot
/// (figures in PERFORMANCE.md).
pub(super) const CACHE_BYTES: usize = 8 * 1024 * 1024;

/// Refuses a SQLite file or an empty file before redb touches it.
fn check_existing(path: &Path) -> Result<bool, StoreError> {
    let mut file = match fs::File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(err) => {
            return Err(StoreError::Open {
                path: path.into(),
                reason: err.to_string(),
            });
        }
    };
    let is_file = file.metadata().map(|meta| meta.is_file()).unwrap_or(false);
    if !is_file {
        return Err(StoreError::Open {
            path: path.into(),
            reason: "not a regular file".into(),
        });
    }
    let mut head = [0u8; 16];
    let mut filled = 0;
    while filled < head.len() {
        match file.read(&mut head[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) => {
                return Err(StoreError::Open {
                    path: path.into(),
                    reason: err.to_string(),
                });
            }
        }
    }
    if filled == head.len() && &head == SQLITE_MAGIC {
        return Err(StoreError::SqliteFile(path.into()));
    }
    if filled == 0 {
        return Err(StoreError::NotKeypooler {
            path: path.into(),
            reason: "the file is empty".into(),
        });
    }
    Ok(true)
}

/// Creates `folder` (and its missing parents) readable by the owner only (0700). A folder that
/// exists already is left as the operator made it.
fn create_private_folder(folder: &Path) -> std::io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(folder)
}

/// Opens `path` for reading and writing, creating it readable by the owner only (0600) when it
/// does not exist. An existing file keeps its mode.
fn create_private_file(path: &Path) -> std::io::Result<fs::File> {
    let mut options = fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// What a redb error at open time means for the operator.
pub(super) fn open_error(path: &Path, err: redb::DatabaseError) -> StoreError {
    match err {
        redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse(path.into()),
        // redb's "not a redb database" (a wrong magic number) is an I/O error of this kind.
        redb::DatabaseError::Storage(redb::StorageError::Io(io))
            if io.kind() == std::io::ErrorKind::InvalidData =>
        {
            StoreError::NotKeypooler {
                path: path.into(),
                reason: io.to_string(),
            }
        }
        redb::DatabaseError::Storage(redb::StorageError::Io(io)) => StoreError::Open {
            path: path.into(),
            reason: io.to_string(),
        },
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(reason)) => {
            StoreError::Damaged {
                path: path.into(),
                reason,
            }
        }
        other => StoreError::NotKeypooler {
            path: path.into(),
            reason: other.to_string(),
        },
    }
}

/// The schema version stored in `meta`: an error for a file without one, or of a newer
/// keypooler than this one.
pub(super) fn schema_version(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
    path: &Path,
) -> Result<u32, StoreError> {
    let version = meta
        .get(SCHEMA_KEY)?
        .and_then(|v| <[u8; 4]>::try_from(v.value()).ok())
        .map(u32::from_le_bytes)
        .ok_or_else(|| StoreError::NotKeypooler {
            path: path.into(),
            reason: "no schema version".into(),
        })?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            path: path.into(),
            found: version,
        });
    }
    Ok(version)
}

/// Whether a database holds keypooler's tables, checked against `sealer`.
enum Layout {
    /// A redb file with no table at all: keypooler adopts it.
    Blank,
    /// Of this schema version (1 or [`SCHEMA_VERSION`]), vouched for by the canary.
    Keypooler(u32),
}

/// Checks the schema version and the encryption canary, without writing.
fn check(db: &impl ReadableDatabase, path: &Path, sealer: &Sealer) -> Result<Layout, StoreError> {
    let read = db.begin_read()?;
    let meta = match read.open_table(META) {
        Ok(meta) => meta,
        Err(TableError::TableDoesNotExist(_)) => {
            if read.list_tables()?.next().is_some() {
                return Err(StoreError::NotKeypooler {
                    path: path.into(),
                    reason: "a redb file without keypooler's tables".into(),
                });
            }
            return Ok(Layout::Blank);
        }
        Err(err) => return Err(err.into()),
    };
    let version = schema_version(&meta, path)?;
    let canary = meta
        .get(CANARY_KEY)?
        .ok_or_else(|| StoreError::NotKeypooler {
            path: path.into(),
            reason: "no encryption canary".into(),
        })?;
    let text = sealer
        .open(canary.value(), CANARY_AAD)
        .map_err(|_| StoreError::WrongKey(path.into()))?;
    if *text != canary_text(version) {
        return Err(StoreError::NotKeypooler {
            path: path.into(),
            reason: format!(
                "its schema version ({version}) does not match its sealed canary: the file was altered"
            ),
        });
    }
    Ok(Layout::Keypooler(version))
}

/// Checks an existing file through a read-only handle, which never writes: a file refused here
/// is left exactly as it was. A file a crash left needing recovery cannot be read this way; the
/// writable open repairs it (redb rolls back to the last commit) and checks it again.
fn precheck(path: &Path, sealer: &Sealer) -> Result<(), StoreError> {
    let db = match redb::ReadOnlyDatabase::open(path) {
        Ok(db) => db,
        Err(redb::DatabaseError::RepairAborted) => {
            tracing::warn!(path = %path.display(), "the database was not closed cleanly; recovering");
            return Ok(());
        }
        Err(err) => return Err(open_error(path, err)),
    };
    if let Layout::Keypooler(_) = check(&db, path, sealer)? {
        read_every_page(&db)?;
    }
    Ok(())
}

/// Reads every record's bytes once, so that damage in any page the records use shows here, on
/// the read-only handle. Records are checked and decoded once, when the catalog is loaded: one
/// that fails there is left out, not a reason to refuse the file.
fn read_every_page(db: &impl ReadableDatabase) -> Result<(), StoreError> {
    let read = db.begin_read()?;
    for table in [TIERS, KEYS, CONSUMERS] {
        for entry in read.open_table(table)?.iter()? {
            let (id, bytes) = entry?;
            std::hint::black_box((id.value(), bytes.value()));
        }
    }
    Ok(())
}

impl Store {
    /// Opens the database at `path`, creating it (and its folder) when missing, and checks that
    /// `sealer` holds the key it was created under.
    pub fn open(path: &Path, sealer: &Sealer) -> Result<Self, StoreError> {
        let exists = check_existing(path)?;
        if exists {
            guarded(path, || precheck(path, sealer))?;
        }
        guarded(path, || Self::open_writable(path, sealer, exists))
    }

    /// Opens a database that must exist already (a missing file is an error, never a new
    /// empty database): for rekey, and for the writer reopening its file after a failure.
    pub fn open_existing(path: &Path, sealer: &Sealer) -> Result<Self, StoreError> {
        if !check_existing(path)? {
            return Err(StoreError::Open {
                path: path.into(),
                reason: "no such file".into(),
            });
        }
        Self::open(path, sealer)
    }

    fn open_writable(path: &Path, sealer: &Sealer, exists: bool) -> Result<Self, StoreError> {
        let mut builder = Database::builder();
        builder.set_cache_size(CACHE_BYTES);
        let db = if exists {
            builder.open(path).map_err(|err| open_error(path, err))?
        } else {
            if let Some(folder) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                create_private_folder(folder).map_err(|err| StoreError::Open {
                    path: path.into(),
                    reason: format!("cannot create folder {}: {err}", folder.display()),
                })?;
            }
            let file = create_private_file(path).map_err(|err| StoreError::Open {
                path: path.into(),
                reason: err.to_string(),
            })?;
            redb::backends::FileBackend::new(file)
                .and_then(|backend| builder.create_with_backend(backend))
                .map_err(|err| open_error(path, err))?
        };
        let store = Self {
            db: Some(db),
            path: path.into(),
            signer: sealer.signer().clone(),
        };
        match check(store.db(), path, sealer)? {
            Layout::Blank => store.initialize(sealer)?,
            Layout::Keypooler(version) if version < SCHEMA_VERSION => {
                store.upgrade(sealer)?;
            }
            Layout::Keypooler(_) => {}
        }
        Ok(store)
    }

    fn initialize(&self, sealer: &Sealer) -> Result<(), StoreError> {
        let txn = self.db().begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            meta.insert(SCHEMA_KEY, SCHEMA_VERSION.to_le_bytes().as_slice())?;
            let canary = sealer.seal(&canary_text(SCHEMA_VERSION), CANARY_AAD);
            meta.insert(CANARY_KEY, canary.as_slice())?;
            txn.open_table(TIERS)?;
            txn.open_table(KEYS)?;
            txn.open_table(CONSUMERS)?;
            txn.open_table(USAGE)?;
        }
        txn.commit()?;
        Ok(())
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::crypto::EncryptionKey;
    use crate::store::{LimitRecord, TierRecord};

    fn sealer() -> Sealer {
        Sealer::new(&EncryptionKey::parse_hex(&"11".repeat(32)).unwrap())
    }

    #[test]
    fn a_new_database_is_created_with_its_folder_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/folder/pool.redb");
        let store = Store::open(&path, &sealer()).unwrap();
        let batch = store.begin().unwrap();
        batch
            .put_tier(&TierRecord {
                id: "t1".into(),
                name: "pro".into(),
                description: String::new(),
                created_at_ms: 1,
                features: BTreeMap::from([(
                    "chat".to_string(),
                    LimitRecord {
                        rate_limit: 5,
                        window_seconds: 60,
                    },
                )]),
            })
            .unwrap();
        batch.commit().unwrap();
        drop(store);
        let contents = Store::open(&path, &sealer()).unwrap().load().unwrap();
        assert_eq!(contents.tiers.len(), 1);
        assert_eq!(contents.tiers[0].name, "pro");
    }

    #[test]
    fn a_wrong_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pool.redb");
        drop(Store::open(&path, &sealer()).unwrap());
        let other = Sealer::new(&EncryptionKey::parse_hex(&"22".repeat(32)).unwrap());
        let err = Store::open(&path, &other).unwrap_err();
        assert!(matches!(err, StoreError::WrongKey(_)), "{err}");
        assert!(
            err.to_string()
                .contains("ENCRYPTION_KEY does not match this database")
        );
    }

    #[test]
    fn sqlite_and_empty_files_are_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = dir.path().join("pool.db");
        let mut bytes = SQLITE_MAGIC.to_vec();
        bytes.extend_from_slice(&[7u8; 100]);
        fs::write(&sqlite, &bytes).unwrap();
        let err = Store::open(&sqlite, &sealer()).unwrap_err();
        assert!(err.to_string().contains("keypooler import --from"), "{err}");
        assert_eq!(fs::read(&sqlite).unwrap(), bytes);

        let empty = dir.path().join("empty.redb");
        fs::write(&empty, b"").unwrap();
        assert!(matches!(
            Store::open(&empty, &sealer()).unwrap_err(),
            StoreError::NotKeypooler { .. }
        ));
        assert_eq!(fs::read(&empty).unwrap(), b"");
    }

    #[test]
    fn a_second_opener_is_told_the_file_is_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pool.redb");
        let _held = Store::open(&path, &sealer()).unwrap();
        let err = Store::open(&path, &sealer()).unwrap_err();
        assert!(matches!(err, StoreError::InUse(_)), "{err}");
    }
}
