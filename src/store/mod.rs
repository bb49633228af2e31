//! The redb file: tables, the encryption canary, the schema version.
//!
//! Only the writer thread writes; start-up and the offline commands (import, export, rekey) read.
//! Records and domain values convert in `codec`: a key's plaintext is sealed for its id on the
//! way in and opened on the way out, and the first catalog is built from everything stored.
//!
//! * `open`: the checks a file passes before it is opened for writing (see [`Store::open`]).
//! * `guard`: redb's panics on a file altered behind its back, turned into
//!   [`StoreError::Damaged`].
//! * `records`: what each table holds, and its encoding (signed, for tiers, keys and consumers).
//! * `batch`: one write transaction ([`Batch`]).
//! * `reseal`: every sealed value moved to a new key in one transaction ([`reseal_file`]).
//! * `backup`: one commit copied into a new database while the server writes ([`Snapshot`]).
//! * `upgrade`: a schema 1 file brought to schema 2 in one transaction, at its first open.

mod backup;
mod batch;
mod codec;
mod guard;
mod open;
mod records;
mod reseal;
mod upgrade;

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use guard::guarded;
use records::decode;

use crate::crypto::Signer;

pub use backup::{Backup, BackupCounts, Snapshot, inspect_backup};
pub use batch::{Batch, spend_tag};
pub use codec::{
    Opened, Skipped, check_consumer_loads, check_key_loads, check_tier_loads, consumer_record,
    key_budget, key_info, key_record, load_catalog, open_key, seal_into, store_budget, tier_record,
    usage_cap,
};
pub use records::{
    BudgetRecord, ConsumerRecord, Hex, IdempotencyRecord, KeyRecord, LimitRecord, TierRecord,
    UsageRecord, secret_aad, value_aad,
};
pub use reseal::{Resealed, reseal_file};

// A new table goes into `backup`'s list too: a backup refuses a file with a table it would not
// copy.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const TIERS: TableDefinition<&str, &[u8]> = TableDefinition::new("tiers");
const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("keys");
const CONSUMERS: TableDefinition<&str, &[u8]> = TableDefinition::new("consumers");
/// In `META`: the broker's running time (ms, little-endian `u64`) as of the last commit, from
/// which the next run's clock goes on (usage windows end in running time).
const RUNNING_MS_KEY: &str = "running_ms";
/// The audit trail, by sequence number.
const USAGE: TableDefinition<u64, &[u8]> = TableDefinition::new("usage_events");
/// Answers to admin writes sent with an idempotency key, by key. Created by the first write
/// that stores one.
const IDEMPOTENCY: TableDefinition<&str, &[u8]> = TableDefinition::new("idempotency_keys");
/// The same keys by the time they were stored, to prune the oldest without a scan.
const IDEMPOTENCY_BY_TIME: TableDefinition<(i64, &str), ()> =
    TableDefinition::new("idempotency_keys_by_time");
/// The request ids of counted spends, by their [`SpendTag`], with when they were counted
/// (unix ms): a replay is recognised. Fixed-size entries, whatever the length of the ids.
const SPENDS: TableDefinition<SpendTag, i64> = TableDefinition::new("spend_requests");
/// The same by when they were counted, to prune the oldest without a scan.
const SPENDS_BY_TIME: TableDefinition<(i64, SpendTag), ()> =
    TableDefinition::new("spend_requests_by_time");

/// A spend's request id as stored: the first 16 bytes of its SHA-256, so each entry has the
/// same small size whatever the id (up to 128 characters), and no caller's id is kept as such.
/// Two ids share a tag with a chance of about n²/2^129 among n stored ids: none in practice.
pub type SpendTag = [u8; 16];

/// The record format this build writes and reads. Schema 1 (read, and upgraded at its first
/// open) had no record signatures and joined associated data; see `upgrade`.
pub const SCHEMA_VERSION: u32 = 2;
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
    #[error(
        "{0} was closed while a backup read it (the server stopping, or reopening the file after a failed write); nothing was changed, try again"
    )]
    Closed(PathBuf),
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
    /// Records left out, by table and id: their signature does not match, or they do not decode.
    /// Not in the lists above.
    pub left_out: Vec<Skipped>,
}

pub struct Store {
    /// Always `Some` until dropped: [`Drop`] takes it to close it under [`guarded`].
    db: Option<Database>,
    path: PathBuf,
    /// Signs the records written and checks the records read.
    signer: Signer,
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
#[expect(
    clippy::large_enum_variant,
    reason = "records are handed over one at a time and moved once; boxing keys would allocate once per key at start-up"
)]
pub enum Record {
    Tier(TierRecord),
    Key(KeyRecord),
    Consumer(ConsumerRecord),
    /// A tier, key or consumer that is not loaded: its signature does not match, or its bytes do
    /// not decode. Reported by table and id and left out, so that one bad record never keeps the
    /// rest from loading.
    LeftOut(Skipped),
}

impl Contents {
    fn push(&mut self, record: Record) {
        match record {
            Record::Tier(tier) => self.tiers.push(tier),
            Record::Key(key) => self.keys.push(key),
            Record::Consumer(consumer) => self.consumers.push(consumer),
            Record::LeftOut(skipped) => self.left_out.push(skipped),
        }
    }
}

/// Reads and decodes every record, one at a time, handing each to `each`, each record's
/// signature checked first; a record whose signature does not match, or that does not decode,
/// is handed over as [`Record::LeftOut`].
fn read_each(
    db: &impl ReadableDatabase,
    signer: &Signer,
    each: &mut dyn FnMut(Record),
) -> Result<(), StoreError> {
    let read = db.begin_read()?;
    read_table(&read, TIERS, "tiers", signer, Record::Tier, each)?;
    read_table(&read, KEYS, "keys", signer, Record::Key, each)?;
    read_table(
        &read,
        CONSUMERS,
        "consumers",
        signer,
        Record::Consumer,
        each,
    )
}

fn read_table<T: serde::de::DeserializeOwned>(
    read: &redb::ReadTransaction,
    definition: TableDefinition<&str, &[u8]>,
    table: &'static str,
    signer: &Signer,
    record: fn(T) -> Record,
    each: &mut dyn FnMut(Record),
) -> Result<(), StoreError> {
    for entry in read.open_table(definition)?.iter()? {
        let (id, bytes) = entry?;
        let (id, stored) = (id.value(), bytes.value());
        match records::verified(signer, table, id, stored) {
            Some(json) => each(decoded(table, id, json, record)),
            None => each(Record::LeftOut(Skipped {
                table,
                id: id.to_owned(),
                reason: records::UNSIGNED.into(),
            })),
        }
    }
    Ok(())
}

fn decoded<T: serde::de::DeserializeOwned>(
    table: &'static str,
    id: &str,
    bytes: &[u8],
    record: impl FnOnce(T) -> Record,
) -> Record {
    match decode(table, id, bytes) {
        Ok(value) => record(value),
        Err(err) => Record::LeftOut(Skipped::from_error(table, id, err)),
    }
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

    /// The running time (ms) saved by the last commit: 0 in a database no server has written.
    pub fn running_ms(&self) -> Result<u64, StoreError> {
        let read = self.db().begin_read()?;
        let meta = match read.open_table(META) {
            Ok(meta) => meta,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
            Err(err) => return Err(err.into()),
        };
        Ok(meta
            .get(RUNNING_MS_KEY)?
            .and_then(|saved| <[u8; 8]>::try_from(saved.value()).ok())
            .map_or(0, u64::from_le_bytes))
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
            read_each(self.db(), &self.signer, &mut |record| {
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
