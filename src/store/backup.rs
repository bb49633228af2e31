//! Online backups: a read transaction pins one commit while the server keeps writing, and every
//! table is copied from it into a new redb database, which is then read back as a file. Values
//! stay sealed: the copy is a keypooler database under the same `ENCRYPTION_KEY`, and restoring
//! is starting a server on it.
//!
//! The copy goes to a file in the database's folder, created `0600` and unlinked at once: only
//! the open handle keeps it, so it is gone when the handle is dropped, whether the backup was
//! sent whole, abandoned by its client, or cut short by a crash.

use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use redb::backends::FileBackend;
use redb::{
    Database, Key, MultimapTableHandle, ReadOnlyDatabase, ReadTransaction, ReadableDatabase,
    ReadableTable, ReadableTableMetadata, TableDefinition, TableError, TableHandle, Value,
    WriteTransaction,
};

use super::guard::guarded;
use super::open::CACHE_BYTES;
use super::{
    CONSUMERS, IDEMPOTENCY, IDEMPOTENCY_BY_TIME, KEYS, META, SPENDS, SPENDS_BY_TIME, Store,
    StoreError, TIERS, USAGE,
};

/// Whether `name` is one of the tables a backup copies (every table keypooler stores). A table
/// found in the file but not here makes the backup fail rather than leave it out.
fn copied(name: &str) -> bool {
    [
        META.name(),
        TIERS.name(),
        KEYS.name(),
        CONSUMERS.name(),
        USAGE.name(),
        IDEMPOTENCY.name(),
        IDEMPOTENCY_BY_TIME.name(),
        SPENDS.name(),
        SPENDS_BY_TIME.name(),
    ]
    .contains(&name)
}

/// One commit of the database, pinned by a read transaction: what a backup copies. Writers are
/// not held back by it (redb's readers never block the writer); the file only keeps the pages
/// this commit uses until it is dropped.
pub struct Snapshot {
    txn: ReadTransaction,
    /// The database's file: the copy is made in its folder.
    path: PathBuf,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("path", &self.path)
            .finish()
    }
}

/// How many records a backup holds, by table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackupCounts {
    pub tiers: u64,
    pub keys: u64,
    pub consumers: u64,
    pub usage_events: u64,
}

/// A finished copy: an unlinked file, read from its start.
#[derive(Debug)]
pub struct Backup {
    pub file: File,
    /// Its length in bytes.
    pub len: u64,
    pub counts: BackupCounts,
}

impl Store {
    /// Pins the last commit for a backup. Cheap: the copy itself is [`Snapshot::copy`], which
    /// may run on any thread while this store keeps writing.
    pub fn snapshot(&self) -> Result<Snapshot, StoreError> {
        Ok(Snapshot {
            txn: guarded(&self.path, || Ok(self.db().begin_read()?))?,
            path: self.path.clone(),
        })
    }
}

impl Snapshot {
    /// Copies every table into a new database in an unlinked `0600` file in the database's
    /// folder, committed durably, and hands that file back at its start.
    ///
    /// Fails if the database is closed meanwhile (the server stopping, or the writer reopening
    /// its file after a failed write): a backup is all of one commit or nothing.
    pub fn copy(self) -> Result<Backup, StoreError> {
        let Self { txn, path } = self;
        let folder = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let (file, mut reader) = unlinked_file(folder).map_err(|err| StoreError::Open {
            path: folder.into(),
            reason: format!("cannot create the backup's temporary file: {err}"),
        })?;
        let counts = guarded(&path, || {
            let written = (|| {
                let mut builder = Database::builder();
                builder.set_cache_size(CACHE_BYTES);
                let copy = builder.create_with_backend(FileBackend::new(file)?)?;
                let write = copy.begin_write()?;
                let counts = copy_tables(&txn, &write, &path)?;
                write.commit()?;
                copy.close()?;
                Ok(counts)
            })();
            // Not damage: the server closed the database under the read (see above).
            match written {
                Err(StoreError::Storage(redb::Error::DatabaseClosed)) => {
                    Err(StoreError::Closed(path.clone()))
                }
                written => written,
            }
        })?;
        drop(txn);
        let io = |err: std::io::Error| StoreError::Open {
            path: folder.into(),
            reason: format!("cannot read the backup's temporary file back: {err}"),
        };
        let len = reader.seek(SeekFrom::End(0)).map_err(io)?;
        reader.seek(SeekFrom::Start(0)).map_err(io)?;
        Ok(Backup {
            file: reader,
            len,
            counts,
        })
    }
}

/// A new file in `folder`, readable and writable by the owner alone, already unlinked: two
/// handles on it, one for redb to write and one to read it back.
fn unlinked_file(folder: &Path) -> std::io::Result<(File, File)> {
    let path = folder.join(format!(".backup-{}.redb.tmp", uuid::Uuid::new_v4()));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    fs::remove_file(&path)?;
    let reader = file.try_clone()?;
    Ok((file, reader))
}

/// Copies every table of `from` into `to`; refuses a file holding a table keypooler does not
/// know, which the copy would leave out.
fn copy_tables(
    from: &ReadTransaction,
    to: &WriteTransaction,
    path: &Path,
) -> Result<BackupCounts, StoreError> {
    let unknown = from
        .list_tables()?
        .map(|table| table.name().to_owned())
        .chain(
            from.list_multimap_tables()?
                .map(|table| table.name().to_owned()),
        )
        .find(|name| !copied(name));
    if let Some(name) = unknown {
        return Err(StoreError::NotKeypooler {
            path: path.into(),
            reason: format!("it holds a table a backup would leave out: {name:?}"),
        });
    }
    copy_table(from, to, META)?;
    // A retry after a restore is still recognised.
    copy_table(from, to, IDEMPOTENCY)?;
    copy_table(from, to, IDEMPOTENCY_BY_TIME)?;
    // A spend replayed after a restore still counts once.
    copy_table(from, to, SPENDS)?;
    copy_table(from, to, SPENDS_BY_TIME)?;
    Ok(BackupCounts {
        tiers: copy_table(from, to, TIERS)?,
        keys: copy_table(from, to, KEYS)?,
        consumers: copy_table(from, to, CONSUMERS)?,
        usage_events: copy_table(from, to, USAGE)?,
    })
}

/// Copies one table entry by entry (a table the file lacks is left out); returns its length.
fn copy_table<K: Key + 'static, V: Value + 'static>(
    from: &ReadTransaction,
    to: &WriteTransaction,
    table: TableDefinition<K, V>,
) -> Result<u64, StoreError> {
    let source = match from.open_table(table) {
        Ok(source) => source,
        Err(TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(err) => return Err(err.into()),
    };
    let mut target = to.open_table(table)?;
    let mut copied = 0;
    for entry in source.iter()? {
        let (key, value) = entry?;
        target.insert(key.value(), value.value())?;
        copied += 1;
    }
    Ok(copied)
}

/// Checks that the file at `path` is a whole keypooler database (redb's header and checksums,
/// the schema version) and counts its records, without the key: what `keypooler backup` checks
/// before it keeps a file it received.
pub fn inspect_backup(path: &Path) -> Result<BackupCounts, StoreError> {
    guarded(path, || {
        let db = ReadOnlyDatabase::open(path).map_err(|err| super::open::open_error(path, err))?;
        let read = db.begin_read()?;
        let meta = read
            .open_table(META)
            .map_err(|_| StoreError::NotKeypooler {
                path: path.into(),
                reason: "no schema version".into(),
            })?;
        super::open::schema_version(&meta, path)?;
        let len = |table: TableDefinition<'static, &str, &[u8]>| -> Result<u64, StoreError> {
            Ok(read.open_table(table)?.len()?)
        };
        Ok(BackupCounts {
            tiers: len(TIERS)?,
            keys: len(KEYS)?,
            consumers: len(CONSUMERS)?,
            usage_events: read.open_table(USAGE)?.len()?,
        })
    })
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::collections::BTreeMap;
    use std::io::Read;

    use super::*;
    use crate::crypto::{EncryptionKey, Sealer};
    use crate::store::TierRecord;

    fn sealer() -> Sealer {
        Sealer::new(&EncryptionKey::parse_hex(&"33".repeat(32)).unwrap())
    }

    fn put_tier(store: &Store, id: &str) {
        let batch = store.begin().unwrap();
        batch
            .put_tier(&TierRecord {
                id: id.into(),
                name: id.into(),
                description: String::new(),
                created_at_ms: 1,
                features: BTreeMap::new(),
            })
            .unwrap();
        batch.commit().unwrap();
    }

    /// The backup's bytes, written to `path`.
    fn save(mut backup: Backup, path: &Path) {
        let mut bytes = Vec::new();
        backup.file.read_to_end(&mut bytes).unwrap();
        assert_eq!(bytes.len() as u64, backup.len);
        fs::write(path, bytes).unwrap();
    }

    #[test]
    fn a_backup_is_the_commit_it_pinned_and_leaves_no_file_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pool.redb");
        let store = Store::open(&path, &sealer()).unwrap();
        put_tier(&store, "before");
        let snapshot = store.snapshot().unwrap();
        put_tier(&store, "after");
        let backup = snapshot.copy().unwrap();
        assert_eq!(
            backup.counts,
            BackupCounts {
                tiers: 1,
                ..BackupCounts::default()
            }
        );
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, ["pool.redb"]);

        let copy = dir.path().join("copy.redb");
        save(backup, &copy);
        assert_eq!(inspect_backup(&copy).unwrap().tiers, 1);
        let tiers = Store::open(&copy, &sealer()).unwrap().load().unwrap().tiers;
        assert_eq!(tiers.len(), 1);
        assert_eq!(tiers[0].id, "before");
    }

    #[test]
    fn a_table_the_backup_would_leave_out_fails_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("pool.redb"), &sealer()).unwrap();
        let txn = store.db().begin_write().unwrap();
        txn.open_table(TableDefinition::<&str, &str>::new("extra"))
            .unwrap()
            .insert("a", "b")
            .unwrap();
        txn.commit().unwrap();
        let err = store.snapshot().unwrap().copy().unwrap_err();
        assert!(err.to_string().contains("\"extra\""), "{err}");
    }

    #[test]
    fn a_database_closed_under_the_copy_fails_it_as_closed_not_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("pool.redb"), &sealer()).unwrap();
        put_tier(&store, "t");
        let snapshot = store.snapshot().unwrap();
        drop(store);
        let err = snapshot.copy().unwrap_err();
        assert!(matches!(err, StoreError::Closed(_)), "{err}");
    }

    #[test]
    fn a_cut_file_is_not_a_backup() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("pool.redb"), &sealer()).unwrap();
        put_tier(&store, "t");
        let copy = dir.path().join("copy.redb");
        save(store.snapshot().unwrap().copy().unwrap(), &copy);
        let bytes = fs::read(&copy).unwrap();
        fs::write(&copy, &bytes[..bytes.len() / 2]).unwrap();
        assert!(inspect_backup(&copy).is_err());
    }
}
