//! The redb file: tables, the encryption canary, the schema version.
//!
//! Only the writer thread writes; start-up and the offline commands (import, export, rekey) read.
//! Records and domain values convert in `codec`: a key's plaintext is sealed for its id on the
//! way in and opened on the way out, and the first catalog is built from everything stored.
//!
//! Opening is careful with files it refuses: an existing file is first checked through a
//! read-only handle (schema, canary, every record decoded), so a damaged, foreign or
//! wrong-key file is left byte for byte as it was. Only a file that passed, or one a crash left
//! needing recovery (which redb repairs), is opened for writing. redb may panic on a file
//! altered behind its back; `guard::guarded` turns that into [`StoreError::Damaged`].

mod codec;
mod guard;
pub mod records;
pub mod rekey;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableError};

use guard::guarded;

use crate::crypto::Sealer;
pub use codec::{
    Opened, Skipped, consumer_record, key_record, load_catalog, open_key, tier_record,
};
pub use records::{
    ConsumerRecord, Hex, KeyRecord, LimitRecord, TierRecord, UsageRecord, secret_aad, value_aad,
};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const TIERS: TableDefinition<&str, &[u8]> = TableDefinition::new("tiers");
const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("keys");
const CONSUMERS: TableDefinition<&str, &[u8]> = TableDefinition::new("consumers");
/// The audit trail, by sequence number.
const USAGE: TableDefinition<u64, &[u8]> = TableDefinition::new("usage_events");

/// The record format this build writes and reads.
pub const SCHEMA_VERSION: u32 = 1;
const SCHEMA_KEY: &str = "schema_version";
const CANARY_KEY: &str = "canary";
const CANARY_AAD: &[u8] = b"keypooler:meta/canary";
const CANARY_TEXT: &[u8] = b"keypooler canary v1";
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "{0} is a SQLite database (the Go keypooler's format); it was not modified. Move it in with `keypooler import --from {0}` and point DB_PATH at a new .redb file"
    )]
    SqliteFile(PathBuf),
    #[error("ENCRYPTION_KEY does not match this database ({0})")]
    WrongKey(PathBuf),
    #[error("{path} is not a keypooler database: {reason}")]
    NotKeypooler { path: PathBuf, reason: String },
    #[error("{0} is in use by another process (is a keypooler server running on it?)")]
    InUse(PathBuf),
    #[error(
        "{path} was written by a newer keypooler (schema {found}); this build reads schema {SCHEMA_VERSION}"
    )]
    NewerSchema { path: PathBuf, found: u32 },
    #[error("cannot open {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("{path} is damaged ({reason}); restore it from a backup")]
    Damaged { path: PathBuf, reason: String },
    #[error("record {table}/{id} is unreadable: {reason}")]
    BadRecord {
        table: &'static str,
        id: String,
        reason: String,
    },
    #[error("storage error: {0}")]
    Storage(#[from] redb::Error),
}

macro_rules! storage_from {
    ($($source:ty),*) => {$(
        impl From<$source> for StoreError {
            fn from(err: $source) -> Self {
                StoreError::Storage(err.into())
            }
        }
    )*};
}
storage_from!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::DatabaseError
);

/// Everything stored, decoded.
#[derive(Debug, Default)]
pub struct Contents {
    pub tiers: Vec<TierRecord>,
    pub keys: Vec<KeyRecord>,
    pub consumers: Vec<ConsumerRecord>,
}

pub struct Store {
    /// Always `Some` until dropped: [`Drop`] takes it to close it under [`guarded`].
    db: Option<Database>,
    path: PathBuf,
}

impl Drop for Store {
    /// Closing writes (the allocator state), which on a file damaged behind redb's back can
    /// panic; that must not take the process (or the writer thread) down with it.
    fn drop(&mut self) {
        if let Some(db) = self.db.take() {
            let closed = guarded(&self.path, || db.close().map_err(StoreError::from));
            if let Err(err) = closed {
                tracing::warn!(error = %err, "the database did not close cleanly; the next start recovers it");
            }
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

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

fn decode<T: serde::de::DeserializeOwned>(
    table: &'static str,
    id: &str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|err| StoreError::BadRecord {
        table,
        id: id.to_owned(),
        reason: err.to_string(),
    })
}

/// redb's page cache. keypooler reads the database once, at start-up, and then only writes, so
/// redb's default (1 GiB) would only grow the RSS: filling a pool to 100,000 keys left the
/// server at 253 MB with it. 8 MiB keeps the B-tree's upper pages hot: against 16 MiB it saved
/// 8 MB of RSS at 100,000 keys with the same single-write latency and group-commit throughput
/// (`loadtest/admin_writes.sh`).
const CACHE_BYTES: usize = 8 * 1024 * 1024;

fn encode<T: serde::Serialize>(record: &T) -> Vec<u8> {
    serde_json::to_vec(record).expect("records always serialize")
}

/// What a redb error at open time means for the operator.
fn open_error(path: &Path, err: redb::DatabaseError) -> StoreError {
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

/// Whether a database holds keypooler's tables, checked against `sealer`.
enum Layout {
    /// A redb file with no table at all: keypooler adopts it.
    Blank,
    Keypooler,
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
    let canary = meta
        .get(CANARY_KEY)?
        .ok_or_else(|| StoreError::NotKeypooler {
            path: path.into(),
            reason: "no encryption canary".into(),
        })?;
    match sealer.open(canary.value(), CANARY_AAD) {
        Ok(text) if &text[..] == CANARY_TEXT => Ok(Layout::Keypooler),
        _ => Err(StoreError::WrongKey(path.into())),
    }
}

/// One stored record. [`Store::load_each`] hands over every tier first, then every key, then
/// every consumer.
pub enum Record {
    Tier(TierRecord),
    Key(KeyRecord),
    Consumer(ConsumerRecord),
}

impl Contents {
    fn push(&mut self, record: Record) {
        match record {
            Record::Tier(tier) => self.tiers.push(tier),
            Record::Key(key) => self.keys.push(key),
            Record::Consumer(consumer) => self.consumers.push(consumer),
        }
    }
}

/// Reads and decodes every record, one at a time, handing each to `each`.
fn read_each(db: &impl ReadableDatabase, each: &mut dyn FnMut(Record)) -> Result<(), StoreError> {
    let read = db.begin_read()?;
    for entry in read.open_table(TIERS)?.iter()? {
        let (id, bytes) = entry?;
        each(Record::Tier(decode("tiers", id.value(), bytes.value())?));
    }
    for entry in read.open_table(KEYS)?.iter()? {
        let (id, bytes) = entry?;
        each(Record::Key(decode("keys", id.value(), bytes.value())?));
    }
    for entry in read.open_table(CONSUMERS)?.iter()? {
        let (id, bytes) = entry?;
        each(Record::Consumer(decode(
            "consumers",
            id.value(),
            bytes.value(),
        )?));
    }
    Ok(())
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
    if let Layout::Keypooler = check(&db, path, sealer)? {
        read_each(&db, &mut drop)?;
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
                fs::create_dir_all(folder).map_err(|err| StoreError::Open {
                    path: path.into(),
                    reason: format!("cannot create folder {}: {err}", folder.display()),
                })?;
            }
            builder.create(path).map_err(|err| open_error(path, err))?
        };
        let store = Self {
            db: Some(db),
            path: path.into(),
        };
        if let Layout::Blank = check(store.db(), path, sealer)? {
            store.initialize(sealer)?;
        }
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn db(&self) -> &Database {
        self.db
            .as_ref()
            .expect("the database is open until the store is dropped")
    }

    fn initialize(&self, sealer: &Sealer) -> Result<(), StoreError> {
        let txn = self.db().begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            meta.insert(SCHEMA_KEY, SCHEMA_VERSION.to_le_bytes().as_slice())?;
            meta.insert(CANARY_KEY, sealer.seal(CANARY_TEXT, CANARY_AAD).as_slice())?;
            txn.open_table(TIERS)?;
            txn.open_table(KEYS)?;
            txn.open_table(CONSUMERS)?;
            txn.open_table(USAGE)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Reads every record.
    pub fn load(&self) -> Result<Contents, StoreError> {
        let mut contents = Contents::default();
        self.load_each(|record| contents.push(record))?;
        Ok(contents)
    }

    /// Reads every record, handing each to `each` as it is decoded, so no more than one is held
    /// at a time (start-up's memory peak is the catalog, not the catalog plus every record).
    ///
    /// A panic in `each` (the caller's code, not redb's) is not taken for a damaged file: the
    /// records after it are not handed over, and the panic resumes once redb's handles are
    /// dropped.
    pub fn load_each(&self, mut each: impl FnMut(Record)) -> Result<(), StoreError> {
        let mut escaped = None;
        let read = guarded(&self.path, || {
            read_each(self.db(), &mut |record| {
                if escaped.is_none() {
                    escaped = guard::unguarded(|| each(record)).err();
                }
            })
        });
        if let Some(panic) = escaped {
            std::panic::resume_unwind(panic);
        }
        read
    }

    /// Starts a write transaction. Only the writer thread (or an offline command) calls this.
    pub fn begin(&self) -> Result<Batch, StoreError> {
        Ok(Batch {
            txn: self.db().begin_write()?,
        })
    }
}

/// One write transaction: everything in it lands on disk together, or nothing does.
pub struct Batch {
    txn: redb::WriteTransaction,
}

impl Batch {
    pub fn put_tier(&self, record: &TierRecord) -> Result<(), StoreError> {
        self.txn
            .open_table(TIERS)?
            .insert(record.id.as_str(), encode(record).as_slice())?;
        Ok(())
    }

    pub fn put_key(&self, record: &KeyRecord) -> Result<(), StoreError> {
        self.txn
            .open_table(KEYS)?
            .insert(record.id.as_str(), encode(record).as_slice())?;
        Ok(())
    }

    pub fn get_key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        let table = self.txn.open_table(KEYS)?;
        let Some(bytes) = table.get(id)? else {
            return Ok(None);
        };
        decode("keys", id, bytes.value()).map(Some)
    }

    /// Removes a key; `false` when there was none with that id.
    pub fn delete_key(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.txn.open_table(KEYS)?.remove(id)?.is_some())
    }

    pub fn put_consumer(&self, record: &ConsumerRecord) -> Result<(), StoreError> {
        self.txn
            .open_table(CONSUMERS)?
            .insert(record.id.as_str(), encode(record).as_slice())?;
        Ok(())
    }

    /// Removes a consumer; `false` when there was none with that id.
    pub fn delete_consumer(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.txn.open_table(CONSUMERS)?.remove(id)?.is_some())
    }

    /// Appends audit events and keeps only the newest `keep`.
    pub fn append_usage(&self, events: &[UsageRecord], keep: u64) -> Result<(), StoreError> {
        let mut table = self.txn.open_table(USAGE)?;
        let mut next = table.last()?.map_or(0, |(seq, _)| seq.value() + 1);
        for event in events {
            table.insert(next, encode(event).as_slice())?;
            next += 1;
        }
        if next > keep {
            table.retain_in(..next - keep, |_, _| false)?;
        }
        Ok(())
    }

    /// The newest `limit` audit events, newest first.
    pub fn recent_usage(&self, limit: usize) -> Result<Vec<UsageRecord>, StoreError> {
        let table = self.txn.open_table(USAGE)?;
        let mut events = Vec::with_capacity(limit);
        for entry in table.iter()?.rev().take(limit) {
            let (seq, bytes) = entry?;
            events.push(decode(
                "usage_events",
                &seq.value().to_string(),
                bytes.value(),
            )?);
        }
        Ok(events)
    }

    /// Removes every tier, key, consumer and audit event (the meta table, with the canary, stays).
    pub fn clear(&self) -> Result<(), StoreError> {
        self.txn.open_table(TIERS)?.retain(|_, _| false)?;
        self.txn.open_table(KEYS)?.retain(|_, _| false)?;
        self.txn.open_table(CONSUMERS)?.retain(|_, _| false)?;
        self.txn.open_table(USAGE)?.retain(|_, _| false)?;
        Ok(())
    }

    /// Commits durably: once this returns, the batch survives a crash.
    pub fn commit(self) -> Result<(), StoreError> {
        self.txn.commit()?;
        Ok(())
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::crypto::EncryptionKey;

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

    use std::collections::BTreeMap;

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
