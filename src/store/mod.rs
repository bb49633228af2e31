//! The redb file: tables, the encryption canary, the schema version.
//!
//! Only the writer thread writes; start-up and the offline commands (import, export, rekey) read.
//! Records and domain values convert in `codec`: a key's plaintext is sealed for its id on the
//! way in and opened on the way out, and the first catalog is built from everything stored.
//!
//! * `open`: the checks a file passes before it is opened for writing (see [`Store::open`]).
//! * `guard`: redb's panics on a file altered behind its back, turned into
//!   [`StoreError::Damaged`].
//! * `records`: what each table holds, and its encoding.
//! * `batch`: one write transaction ([`Batch`]).
//! * `reseal`: every sealed value moved to a new key in one transaction ([`reseal_file`]).

mod batch;
mod codec;
mod guard;
mod open;
mod records;
mod reseal;

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use guard::guarded;
use records::decode;

pub use batch::Batch;
pub use codec::{
    Opened, Skipped, consumer_record, key_record, load_catalog, open_key, tier_record,
};
pub use records::{
    ConsumerRecord, Hex, IdempotencyRecord, KeyRecord, LimitRecord, TierRecord, UsageRecord,
    secret_aad, value_aad,
};
pub use reseal::{Resealed, reseal_file};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const TIERS: TableDefinition<&str, &[u8]> = TableDefinition::new("tiers");
const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("keys");
const CONSUMERS: TableDefinition<&str, &[u8]> = TableDefinition::new("consumers");
/// The audit trail, by sequence number.
const USAGE: TableDefinition<u64, &[u8]> = TableDefinition::new("usage_events");
/// Answers to admin writes sent with an idempotency key, by key. Created by the first write
/// that stores one.
const IDEMPOTENCY: TableDefinition<&str, &[u8]> = TableDefinition::new("idempotency_keys");
/// The same keys by the time they were stored, to prune the oldest without a scan.
const IDEMPOTENCY_BY_TIME: TableDefinition<(i64, &str), ()> =
    TableDefinition::new("idempotency_keys_by_time");

/// The record format this build writes and reads.
pub const SCHEMA_VERSION: u32 = 1;
/// The first 16 bytes of every SQLite file: the store refuses such a file (it is the Go
/// service's, to be imported), and the import requires them.
pub const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

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

impl Store {
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn db(&self) -> &Database {
        self.db
            .as_ref()
            .expect("the database is open until the store is dropped")
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
}
