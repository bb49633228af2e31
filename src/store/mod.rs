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
//! * `parallel`: work spread over the machine's cores ([`map_on_cores`]).

mod backup;
mod batch;
mod codec;
mod guard;
mod open;
mod parallel;
mod records;
mod reseal;
mod upgrade;

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use guard::guarded;
use records::decode;

use crate::crypto::Signer;

pub use backup::{Backup, BackupCounts, Snapshot, inspect_backup};
pub use batch::{Batch, SignedKey, spend_tag};
pub use codec::{
    Opened, Skipped, check_consumer_loads, check_key_loads, check_tier_loads, consumer_record,
    health_from_record, key_budget, key_info, key_record, load_catalog, open_key, seal_into,
    store_budget, store_health, tier_record, usage_cap,
};
pub use parallel::map_on_cores;
pub use records::{
    BudgetRecord, ConsumerRecord, CooldownRecord, Hex, IdempotencyRecord, KeyRecord, LimitRecord,
    TierRecord, UsageRecord, secret_aad, value_aad,
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

/// Audit events kept on disk; older ones are dropped as new ones arrive.
pub const AUDIT_RETENTION: u64 = 100_000;
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
    redb::DatabaseError,
    redb::CompactionError
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
pub enum Record {
    Tier(TierRecord),
    /// Boxed: a key's record (with its health and budget) is several times the others.
    Key(Box<KeyRecord>),
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
            Record::Key(key) => self.keys.push(*key),
            Record::Consumer(consumer) => self.consumers.push(consumer),
            Record::LeftOut(skipped) => self.left_out.push(skipped),
        }
    }
}

/// Records read from redb before they are checked and decoded together on every core: enough to
/// keep the threads busy, few enough that start-up's memory peak stays the catalog.
const CHUNK: usize = 4096;

/// The table a record was read from.
#[derive(Clone, Copy)]
enum Table {
    Tiers,
    Keys,
    Consumers,
}

/// A record's stored bytes, copied out of redb so another thread can check them.
struct Stored {
    table: Table,
    id: String,
    bytes: Vec<u8>,
}

impl Stored {
    /// Checks the signature and decodes: a record that fails either is [`Record::LeftOut`].
    fn record(&self, signer: &Signer) -> Record {
        let (name, id) = (self.table.name(), self.id.as_str());
        let Some(json) = records::verified(signer, name, id, &self.bytes) else {
            return Record::LeftOut(Skipped {
                table: name,
                id: id.to_owned(),
                reason: records::UNSIGNED.into(),
            });
        };
        match self.table {
            Table::Tiers => decoded(name, id, json, Record::Tier),
            Table::Keys => decoded(name, id, json, |key| Record::Key(Box::new(key))),
            Table::Consumers => decoded(name, id, json, Record::Consumer),
        }
    }
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Table::Tiers => "tiers",
            Table::Keys => "keys",
            Table::Consumers => "consumers",
        }
    }
}

/// Reads every record (tiers, then keys, then consumers) a chunk at a time; each chunk's records
/// are checked, decoded and passed through `convert` on every core while the calling thread hands
/// the previous chunk's results to `each`, in the order they are stored, and reads the next.
/// A panic in `convert` or `each` (the caller's code, not redb's) is returned as `Err`, the
/// records after it unread.
fn read_each<T: Send>(
    db: &impl ReadableDatabase,
    signer: &Signer,
    convert: &(dyn Fn(Record) -> T + Sync),
    each: &mut dyn FnMut(T),
) -> Result<Result<(), Box<dyn std::any::Any + Send>>, StoreError> {
    let read = db.begin_read()?;
    let tables = [
        (read.open_table(TIERS)?, Table::Tiers),
        (read.open_table(KEYS)?, Table::Keys),
        (read.open_table(CONSUMERS)?, Table::Consumers),
    ];
    let mut stored = Vec::new();
    for (opened, table) in &tables {
        stored.push(opened.iter()?.map(move |entry| {
            let (id, bytes) = entry?;
            Ok::<_, StoreError>(Stored {
                table: *table,
                id: id.value().to_owned(),
                bytes: bytes.value().to_vec(),
            })
        }));
    }
    let mut stored = stored.into_iter().flatten();
    let mut next_chunk = || stored.by_ref().take(CHUNK).collect::<Result<Vec<_>, _>>();
    let mut chunk = next_chunk()?;
    let mut ready: Vec<T> = Vec::new();
    while !chunk.is_empty() || !ready.is_empty() {
        // A panic in the caller's code is caught here; one in redb's (reading the next chunk)
        // goes on to `guarded`.
        let convert = |raw: &Stored| guard::unguarded(|| convert(raw.record(signer)));
        let (converted, (handed, next)) = map_on_cores(&chunk, convert, || {
            let handed = guard::unguarded(|| ready.drain(..).for_each(&mut *each));
            (handed, next_chunk())
        });
        if let Err(panic) = handed {
            return Ok(Err(panic));
        }
        match converted.into_iter().collect() {
            Ok(converted) => ready = converted,
            Err(panic) => return Ok(Err(panic)),
        }
        chunk = next?;
    }
    Ok(Ok(()))
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

    /// Gives the file's free pages back to the file system: after a large transaction (an
    /// import writes everything in one), redb leaves the pages its copy-on-write B-trees freed
    /// inside the file, about as much again as what it holds. Needs the store to itself (no
    /// transaction or backup open), so only offline commands call it. `false` when there was
    /// nothing to give back.
    pub fn compact(&mut self) -> Result<bool, StoreError> {
        let path = self.path.clone();
        let db = self
            .db
            .as_mut()
            .expect("the database is open until the store is dropped");
        guarded(&path, || Ok(db.compact()?))
    }

    /// Reads every record.
    pub fn load(&self) -> Result<Contents, StoreError> {
        let mut contents = Contents::default();
        self.load_each(|record| contents.push(record))?;
        Ok(contents)
    }

    /// Reads every record, handing each to `each` as it is decoded, a chunk at a time (start-up's
    /// memory peak is the catalog, not the catalog plus every record).
    pub fn load_each(&self, each: impl FnMut(Record)) -> Result<(), StoreError> {
        self.load_each_with(|record| record, each)
    }

    /// [`Store::load_each`], with `convert` run on every record on every core before `each`
    /// gets its result on the calling thread, in the order the records are stored: for the work
    /// of a record that needs no other (opening a key's value).
    ///
    /// A panic in `convert` or `each` (the caller's code, not redb's) is not taken for a damaged
    /// file: the records after it are not handed over, and the panic resumes once redb's handles
    /// are dropped.
    pub fn load_each_with<T: Send>(
        &self,
        convert: impl Fn(Record) -> T + Sync,
        mut each: impl FnMut(T),
    ) -> Result<(), StoreError> {
        match guarded(&self.path, || {
            read_each(self.db(), &self.signer, &convert, &mut each)
        })? {
            Ok(()) => Ok(()),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::panic::{AssertUnwindSafe, catch_unwind};

    use super::*;
    use crate::crypto::{EncryptionKey, Sealer};

    /// A store of `count` keys (records only: their values are not sealed).
    fn store_of(dir: &Path, count: usize) -> (Store, Sealer) {
        let sealer = Sealer::new(&EncryptionKey::parse_hex(&"33".repeat(32)).unwrap());
        let store = Store::open(&dir.join("pool.redb"), &sealer).unwrap();
        let batch = store.begin().unwrap();
        for i in 0..count {
            let id = format!("key-{i:05}");
            let record = serde_json::json!({
                "id": id, "name": id, "tier_id": "t", "active": true, "created_at_ms": i,
                "value": "00",
            });
            batch
                .put_key(&serde_json::from_value(record).unwrap())
                .unwrap();
        }
        batch.commit().unwrap();
        (store, sealer)
    }

    fn is_key(record: &Record, id: &str) -> bool {
        matches!(record, Record::Key(key) if key.id == id)
    }

    #[test]
    fn records_come_in_stored_order_through_the_threads() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = store_of(dir.path(), 10_000);
        let mut ids = Vec::new();
        store
            .load_each_with(
                |record| match record {
                    Record::Key(key) => key.id,
                    _ => String::new(),
                },
                |id| ids.push(id),
            )
            .unwrap();
        let keys: Vec<String> = (0..10_000).map(|i| format!("key-{i:05}")).collect();
        assert_eq!(ids, keys);
    }

    /// A panic in the caller's code, on a converting thread or the reading one, resumes as
    /// itself: it is not taken for a damaged file, and the file still opens.
    #[test]
    fn a_panic_in_the_callers_code_is_not_taken_for_a_damaged_file() {
        let dir = tempfile::tempdir().unwrap();
        let (store, sealer) = store_of(dir.path(), 5_000);
        for in_convert in [true, false] {
            let caught = catch_unwind(AssertUnwindSafe(|| {
                store.load_each_with(
                    |record| {
                        assert!(!(in_convert && is_key(&record, "key-04000")), "caller");
                        record
                    },
                    |record| assert!(in_convert || !is_key(&record, "key-00300"), "caller"),
                )
            }));
            let panic = caught.expect_err("the panic resumes");
            assert_eq!(panic.downcast_ref::<&str>(), Some(&"caller"));
        }
        drop(store);
        let store = Store::open(&dir.path().join("pool.redb"), &sealer).unwrap();
        assert_eq!(store.load().unwrap().keys.len(), 5_000);
    }
}
