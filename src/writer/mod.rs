//! The single writer: every admin change goes through one thread that owns the redb write
//! transactions.
//!
//! Handlers send a request and wait on its reply. The writer takes whatever is queued (group
//! commit), applies it to a staged copy of the catalog and to one write transaction, commits
//! durably, publishes the next snapshot, and only then replies. So a 2xx means the change is on
//! disk and visible to the next `GET /key`; a failed commit changes neither disk nor pool.
//!
//! After a failed batch (a full disk, a read-only remount, an I/O error) redb wants the
//! database closed and opened again: the writer drops its handle and reopens the file before
//! the next batch (redb recovers it to the last commit), so writes work again once the disk
//! does, without a restart.

pub mod load;
pub mod spec;

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use metrics::{Counter, Histogram};

use tokio::sync::{mpsc, oneshot};

use zeroize::Zeroizing;

use crate::broker::snapshot::seconds;
use crate::broker::usage::LIFETIME;
use crate::broker::{
    AuditLog, Catalog, Clock, Consumer, Dirty, KeyEntry, KeyInfo, Plaintext, Pool, Reserve, Tier,
    UsageCap,
};
use crate::crypto::Sealer;
use crate::store::{Batch, Store, StoreError, UsageRecord};
use crate::telemetry::{Meter, WRITER_COMMANDS, WRITER_COMMIT_DURATION};
pub use spec::{Invalid, NewKey, TierSpec};

/// Requests a handler may queue before `send` waits.
const QUEUE_DEPTH: usize = 4_096;
/// Most requests applied in one transaction.
const MAX_BATCH: usize = 1_024;
/// Audit events kept on disk; older ones are dropped as new ones arrive.
pub const AUDIT_RETENTION: u64 = 100_000;

/// The `kind` label values of [`WRITER_COMMANDS`]: admin changes, then the writer's own work
/// (usage reservations and audit flushes, and reads of the audit trail).
pub const KINDS: [&str; 11] = [
    "create_tier",
    "update_tier",
    "add_key",
    "delete_key",
    "create_consumer",
    "add_scope",
    "delete_consumer",
    "reserve_usage",
    "flush_audit",
    "recent_usage",
    "expire_keys",
];
/// The `outcome` label values of [`WRITER_COMMANDS`]: committed; refused as invalid or
/// conflicting (a 4xx); not saved because storage failed or the writer stopped (a 5xx).
pub const OUTCOMES: [&str; 3] = ["applied", "refused", "failed"];

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("tier already exists: {0}")]
    TierExists(String),
    #[error("tier not found: {0}")]
    TierNotFound(String),
    #[error("key not found: {0}")]
    KeyNotFound(String),
    #[error("consumer not found: {0}")]
    ConsumerNotFound(String),
    /// Raised while staging; aborts the whole batch, whose requests then get [`WriteError::Unsaved`].
    #[error("the change was not saved: {0}")]
    Storage(#[from] StoreError),
    #[error("the change was not saved: {0}")]
    Unsaved(String),
    #[error("the server is shutting down")]
    Stopped,
}

enum Op {
    CreateTier(TierSpec),
    UpdateTier(TierSpec),
    AddKey(NewKey),
    DeleteKey(String),
    CreateConsumer {
        name: String,
        description: String,
    },
    AddScope {
        consumer_id: String,
        tier: String,
    },
    DeleteConsumer(String),
    /// Reserve the next chunk of a usage-capped key (asked by the hot path; nobody waits).
    Reserve(Arc<str>),
    /// Write the queued audit events.
    FlushAudit,
    /// Write the queued audit events, then read the newest ones.
    RecentUsage(usize),
    /// Take expired keys out of the rotation (every batch does; this one has nothing else).
    ExpireKeys,
}

impl Op {
    /// Its index in [`KINDS`].
    fn index(&self) -> usize {
        match self {
            Op::CreateTier(_) => 0,
            Op::UpdateTier(_) => 1,
            Op::AddKey(_) => 2,
            Op::DeleteKey(_) => 3,
            Op::CreateConsumer { .. } => 4,
            Op::AddScope { .. } => 5,
            Op::DeleteConsumer(_) => 6,
            Op::Reserve(_) => 7,
            Op::FlushAudit => 8,
            Op::RecentUsage(_) => 9,
            Op::ExpireKeys => 10,
        }
    }

    fn kind(&self) -> &'static str {
        KINDS[self.index()]
    }
}

/// The writer's metric handles, registered once when it starts.
struct Meters {
    /// By [`KINDS`], then [`OUTCOMES`].
    commands: [[Counter; 3]; KINDS.len()],
    commit: Histogram,
}

impl Meters {
    fn new(meter: &Meter) -> Self {
        Self {
            commands: KINDS.map(|kind| {
                OUTCOMES.map(|outcome| {
                    meter.counter(WRITER_COMMANDS, &[("kind", kind), ("outcome", outcome)])
                })
            }),
            commit: meter.histogram(WRITER_COMMIT_DURATION, &[]),
        }
    }

    fn count(&self, op: &Op, result: &Result<Done, WriteError>) {
        let outcome = match result {
            Ok(_) => 0,
            Err(WriteError::Storage(_) | WriteError::Unsaved(_) | WriteError::Stopped) => 2,
            Err(_) => 1,
        };
        self.commands[op.index()][outcome].increment(1);
    }
}

/// What an applied change did, logged once it is committed: ids and names, never values.
enum Change {
    TierCreated(Arc<Tier>),
    TierUpdated {
        old: Arc<Tier>,
        new: Arc<Tier>,
    },
    KeyAdded {
        key: Arc<KeyEntry>,
        tier: Arc<str>,
    },
    KeyDeleted {
        key: Arc<KeyEntry>,
        tier: Arc<str>,
    },
    ConsumerCreated(Arc<Consumer>),
    ScopeAdded {
        consumer: Arc<Consumer>,
        tier: Arc<str>,
    },
    ConsumerDeleted(Arc<Consumer>),
}

impl Change {
    fn log(&self) {
        match self {
            Change::TierCreated(tier) => tracing::info!(
                tier_id = %tier.id,
                tier = %tier.name,
                features = %names(tier.features.keys()),
                "tier created"
            ),
            Change::TierUpdated { old, new } => {
                let listed = |tier: &Tier, feature: &Arc<str>| tier.features.contains_key(feature);
                tracing::info!(
                    tier_id = %new.id,
                    tier = %new.name,
                    added = %names(new.features.keys().filter(|f| !listed(old, f))),
                    removed = %names(old.features.keys().filter(|f| !listed(new, f))),
                    limits_changed = %names(new.features.iter().filter(|(f, limit)| {
                        old.features.get(*f).is_some_and(|was| was != *limit)
                    }).map(|(f, _)| f)),
                    description_changed = old.description != new.description,
                    "tier updated"
                );
            }
            Change::KeyAdded { key, tier } => tracing::info!(
                key_id = %key.info.id,
                key = %key.info.name,
                tier = %tier,
                "key added"
            ),
            Change::KeyDeleted { key, tier } => tracing::info!(
                key_id = %key.info.id,
                key = %key.info.name,
                tier = %tier,
                "key deleted"
            ),
            Change::ConsumerCreated(consumer) => tracing::info!(
                consumer_id = %consumer.id,
                consumer = %consumer.name,
                "consumer created"
            ),
            Change::ScopeAdded { consumer, tier } => tracing::info!(
                consumer_id = %consumer.id,
                consumer = %consumer.name,
                tier = %tier,
                "consumer scope added"
            ),
            Change::ConsumerDeleted(consumer) => tracing::info!(
                consumer_id = %consumer.id,
                consumer = %consumer.name,
                "consumer deleted"
            ),
        }
    }
}

/// Feature names, comma-separated, for a log field.
fn names<'a>(features: impl Iterator<Item = &'a Arc<str>>) -> String {
    features.map(|f| &**f).collect::<Vec<_>>().join(",")
}

enum Done {
    Tier(Arc<Tier>),
    Key(Arc<KeyEntry>),
    Consumer(Arc<Consumer>),
    NewConsumer(Arc<Consumer>, Zeroizing<String>),
    Deleted,
    /// A reservation to publish once committed: (cap, window end, reserved).
    Reserved(Arc<UsageCap>, u32, u32),
    Usage(Vec<UsageRecord>),
    Nothing,
}

struct Request {
    op: Op,
    /// `None` for requests nobody waits on.
    reply: Option<oneshot::Sender<Result<Done, WriteError>>>,
}

/// The handle handlers use to queue changes. Cheap to clone.
#[derive(Clone)]
pub struct Writer {
    queue: mpsc::Sender<Request>,
}

impl Writer {
    async fn submit(&self, op: Op) -> Result<Done, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Request {
                op,
                reply: Some(reply),
            })
            .await
            .map_err(|_| WriteError::Stopped)?;
        answer.await.map_err(|_| WriteError::Stopped)?
    }

    pub async fn create_tier(&self, spec: TierSpec) -> Result<Arc<Tier>, WriteError> {
        match self.submit(Op::CreateTier(spec)).await? {
            Done::Tier(tier) => Ok(tier),
            _ => unreachable!("create_tier answers with a tier"),
        }
    }

    /// Replaces a tier's features (and description, when given), found by name.
    pub async fn update_tier(&self, spec: TierSpec) -> Result<Arc<Tier>, WriteError> {
        match self.submit(Op::UpdateTier(spec)).await? {
            Done::Tier(tier) => Ok(tier),
            _ => unreachable!("update_tier answers with a tier"),
        }
    }

    pub async fn add_key(&self, key: NewKey) -> Result<Arc<KeyEntry>, WriteError> {
        match self.submit(Op::AddKey(key)).await? {
            Done::Key(key) => Ok(key),
            _ => unreachable!("add_key answers with a key"),
        }
    }

    pub async fn delete_key(&self, id: String) -> Result<(), WriteError> {
        match self.submit(Op::DeleteKey(id)).await? {
            Done::Deleted => Ok(()),
            _ => unreachable!("delete_key answers with deleted"),
        }
    }
}

impl Writer {
    /// Creates a consumer; returns it with its token, which exists nowhere else afterwards.
    pub async fn create_consumer(
        &self,
        name: String,
        description: String,
    ) -> Result<(Arc<Consumer>, Zeroizing<String>), WriteError> {
        match self
            .submit(Op::CreateConsumer { name, description })
            .await?
        {
            Done::NewConsumer(consumer, token) => Ok((consumer, token)),
            _ => unreachable!("create_consumer answers with a new consumer"),
        }
    }

    /// Lets a consumer draw from a tier (found by name or id); adding it twice is harmless.
    pub async fn add_scope(
        &self,
        consumer_id: String,
        tier: String,
    ) -> Result<Arc<Consumer>, WriteError> {
        match self.submit(Op::AddScope { consumer_id, tier }).await? {
            Done::Consumer(consumer) => Ok(consumer),
            _ => unreachable!("add_scope answers with a consumer"),
        }
    }

    /// The newest `limit` audit events, newest first, including those still queued.
    pub async fn recent_usage(&self, limit: usize) -> Result<Vec<UsageRecord>, WriteError> {
        match self.submit(Op::RecentUsage(limit)).await? {
            Done::Usage(events) => Ok(events),
            _ => unreachable!("recent_usage answers with events"),
        }
    }

    /// Changes queued and not yet taken by the writer.
    pub fn queue_depth(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    /// Asks the writer to take expired keys out of the rotation, without waiting.
    pub fn expire_keys(&self) {
        self.nudge(Op::ExpireKeys);
    }

    /// Asks the writer to write the queued audit events, without waiting.
    pub fn flush_audit(&self) {
        self.nudge(Op::FlushAudit);
    }

    /// Queues the writer's own work with no one waiting for it; a full queue drops it (the next
    /// tick asks again).
    fn nudge(&self, op: Op) {
        let _ = self.queue.try_send(Request { op, reply: None });
    }

    pub async fn delete_consumer(&self, id: String) -> Result<(), WriteError> {
        match self.submit(Op::DeleteConsumer(id)).await? {
            Done::Deleted => Ok(()),
            _ => unreachable!("delete_consumer answers with deleted"),
        }
    }
}

/// The hot path's way to ask for reservations: a non-blocking send on the writer's queue. The
/// sender is weak so that the pool (which the writer owns) does not keep the writer's queue
/// open: the writer stops once every [`Writer`] handle is gone.
struct ReserveSink(mpsc::WeakSender<Request>);

impl Reserve for ReserveSink {
    fn reserve(&self, key_id: &Arc<str>) -> bool {
        self.0.upgrade().is_some_and(|queue| {
            queue
                .try_send(Request {
                    op: Op::Reserve(Arc::clone(key_id)),
                    reply: None,
                })
                .is_ok()
        })
    }
}

/// The running writer thread. [`WriterThread::join`] waits until it has applied everything
/// queued and closed the database; it ends once every [`Writer`] handle is dropped.
pub struct WriterThread(JoinHandle<()>);

impl WriterThread {
    pub fn join(self) {
        if self.0.join().is_err() {
            tracing::error!("the writer thread panicked");
        }
    }
}

/// Starts the writer over `store`, publishing into `pool` from `catalog` (already published).
pub fn spawn(
    store: Store,
    sealer: Sealer,
    pool: Arc<Pool>,
    catalog: Catalog,
    audit: Option<Arc<AuditLog>>,
    meter: &Meter,
) -> std::io::Result<(Writer, WriterThread)> {
    let (queue, requests) = mpsc::channel(QUEUE_DEPTH);
    pool.set_reserve(Box::new(ReserveSink(queue.downgrade())));
    let last_created_ms = catalog
        .keys()
        .map(|key| key.info.created_at_ms)
        .max()
        .unwrap_or(i64::MIN);
    let state = State {
        audit,
        last_created_ms,
        path: store.path().to_owned(),
        store: Some(store),
        sealer,
        pool,
        catalog,
        meters: Meters::new(meter),
    };
    // Returns only once the thread runs, named and at its lower priority, so the server never
    // serves a request before the writer has taken its place below the request threads.
    let (started, running) = std::sync::mpsc::sync_channel(1);
    let handle = std::thread::Builder::new()
        .name("keypooler-writer".into())
        .spawn(move || {
            yield_to_requests();
            // The receiver waits right below; it can only be gone if `spawn`'s caller unwound.
            let _ = started.send(());
            state.run(requests)
        })?;
    // An error means the thread ended before signalling, which only a panic can do.
    if running.recv().is_err() {
        let _ = handle.join();
        return Err(std::io::Error::other(
            "the writer thread stopped while starting",
        ));
    }
    Ok((Writer { queue }, WriterThread(handle)))
}

/// How much nicer the writer is than the request threads, so that on a saturated core its work (the
/// audit trail's flush of up to 8,192 events a second, reservations, admin writes) waits for
/// `GET /key` instead of taking turns with it. With `/key` saturating one core, the flushes cost
/// the writer about 15 ms of CPU a second, and at this niceness the scheduler preempts it rather
/// than let a flush hold the core (PERFORMANCE.md). Admin writes under full load take longer
/// instead.
const WRITER_NICENESS: i32 = 10;

/// Lowers the calling thread's priority by [`WRITER_NICENESS`] from the process's (at most to
/// 19). Linux schedules threads separately; elsewhere this would renice the whole process, so it
/// does nothing. Raising one's own niceness is always allowed; a failure is logged and changes
/// nothing else.
fn yield_to_requests() {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{getpriority_process, setpriority_process};
        let tid = rustix::thread::gettid();
        let lowered = getpriority_process(Some(tid))
            .and_then(|now| setpriority_process(Some(tid), (now + WRITER_NICENESS).min(19)));
        if let Err(err) = lowered {
            tracing::warn!(error = %err, "cannot lower the writer thread's priority");
        }
    }
}

/// A committed batch: the catalog it leads to, the features it touched, each request's result,
/// and the changes to log.
struct Staged {
    catalog: Catalog,
    dirty: Dirty,
    results: Vec<Result<Done, WriteError>>,
    changes: Vec<Change>,
}

struct State {
    audit: Option<Arc<AuditLog>>,
    /// Unix ms given to the last key created: creation times are kept strictly increasing so
    /// that keys rotate in the order they were added, even within one millisecond.
    last_created_ms: i64,
    path: PathBuf,
    /// `None` after a failed batch, until the next batch reopens the file.
    store: Option<Store>,
    sealer: Sealer,
    pool: Arc<Pool>,
    catalog: Catalog,
    meters: Meters,
}

impl State {
    fn run(mut self, mut requests: mpsc::Receiver<Request>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = requests.blocking_recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match requests.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            self.apply_batch(&mut batch);
        }
        tracing::debug!(path = %self.path.display(), "writer stopped; database closed");
    }

    fn apply_batch(&mut self, batch: &mut Vec<Request>) {
        let outcome = self.stage(batch);
        let results = match outcome {
            Ok(Staged {
                catalog,
                dirty,
                results,
                changes,
            }) => {
                for result in &results {
                    if let Ok(Done::Reserved(cap, end, reserved)) = result {
                        cap.apply_reservation(*end, *reserved);
                    }
                }
                if !dirty.is_empty() || !catalog.same_as(&self.catalog) {
                    self.pool.publish(catalog.clone(), &dirty);
                }
                self.catalog = catalog;
                for change in &changes {
                    change.log();
                }
                results
            }
            Err(err) => {
                tracing::error!(error = %err, requests = batch.len(), "write batch failed; nothing was changed");
                // Closes the file; the next batch reopens it (redb may refuse this handle now).
                self.store = None;
                let message = err.to_string();
                batch
                    .iter()
                    .map(|_| Err(WriteError::Unsaved(message.clone())))
                    .collect()
            }
        };
        for (request, result) in batch.drain(..).zip(results) {
            self.meters.count(&request.op, &result);
            if let Err(err) = &result {
                tracing::debug!(kind = request.op.kind(), error = %err, "admin change refused");
                if let Op::Reserve(id) = &request.op
                    && let Some(cap) = self.catalog.key(id).and_then(|key| key.usage.as_ref())
                {
                    cap.clear_pending();
                }
            }
            // The caller may have gone away; its change stands either way.
            if let Some(reply) = request.reply {
                let _ = reply.send(result);
            }
        }
    }

    /// Applies the batch to a copy of the catalog and one transaction, and commits it.
    fn stage(&mut self, batch: &[Request]) -> Result<Staged, StoreError> {
        let mut staged = self.catalog.clone();
        let mut dirty = Dirty::new();
        let mut changes = Vec::new();
        let txn = self.store()?.begin()?;
        let mut results = Vec::with_capacity(batch.len());
        for request in batch {
            match self.apply(&mut staged, &mut dirty, &txn, &request.op, &mut changes) {
                Err(WriteError::Storage(err)) => return Err(err),
                result => results.push(result),
            }
        }
        // Expired keys leave the rotation with whatever batch comes first.
        dirty.extend(staged.expire(self.pool.clock().unix_now_ms()));
        let started = Instant::now();
        txn.commit()?;
        self.meters.commit.record(started.elapsed().as_secs_f64());
        Ok(Staged {
            catalog: staged,
            dirty,
            results,
            changes,
        })
    }

    fn flush_audit(&self, txn: &Batch) -> Result<(), StoreError> {
        let Some(audit) = &self.audit else {
            return Ok(());
        };
        let (events, dropped) = audit.drain();
        if dropped > 0 {
            tracing::warn!(dropped, "audit queue was full; events were dropped");
        }
        let records: Vec<UsageRecord> = events
            .into_iter()
            .map(|event| UsageRecord {
                key_id: event.key_id.to_string(),
                consumer_id: event.consumer_id.map(|id| id.to_string()),
                feature: event.feature.to_string(),
                created_at_ms: event.at_unix_ms,
            })
            .collect();
        txn.append_usage(&records, AUDIT_RETENTION)
    }

    /// The unix time (ms) at which the usage window ending at clock second `end_s` began.
    fn window_start_unix_ms(&self, end_s: u32, window_s: u32) -> i64 {
        window_start_unix_ms(self.pool.clock(), end_s, window_s)
    }

    /// The open store, reopening the file if the last batch failed.
    fn store(&mut self) -> Result<&Store, StoreError> {
        if self.store.is_none() {
            let store = Store::open_existing(&self.path, &self.sealer)?;
            tracing::info!(path = %self.path.display(), "database reopened after a failed write");
            self.store = Some(store);
        }
        Ok(self.store.as_ref().expect("opened above"))
    }

    fn next_created_ms(&mut self) -> i64 {
        let now = self.pool.clock().unix_now_ms();
        self.last_created_ms = now.max(self.last_created_ms.saturating_add(1));
        self.last_created_ms
    }

    fn apply(
        &mut self,
        catalog: &mut Catalog,
        dirty: &mut Dirty,
        txn: &Batch,
        op: &Op,
        changes: &mut Vec<Change>,
    ) -> Result<Done, WriteError> {
        match op {
            Op::CreateTier(spec) => {
                if catalog.tier_by_name(&spec.name).is_some() {
                    return Err(WriteError::TierExists(spec.name.clone()));
                }
                let tier = Tier {
                    id: uuid::Uuid::new_v4().to_string().into(),
                    name: spec.name.as_str().into(),
                    description: spec.description.clone().unwrap_or_default(),
                    created_at_ms: self.pool.clock().unix_now_ms(),
                    features: features(spec),
                };
                txn.put_tier(&load::tier_record(&tier))?;
                dirty.extend(catalog.put_tier(tier.clone()));
                let tier = Arc::new(tier);
                changes.push(Change::TierCreated(Arc::clone(&tier)));
                Ok(Done::Tier(tier))
            }
            Op::UpdateTier(spec) => {
                let old = catalog
                    .tier_by_name(&spec.name)
                    .cloned()
                    .ok_or_else(|| WriteError::TierNotFound(spec.name.clone()))?;
                let tier = Tier {
                    description: spec
                        .description
                        .clone()
                        .unwrap_or_else(|| old.description.clone()),
                    features: features(spec),
                    ..Tier::clone(&old)
                };
                txn.put_tier(&load::tier_record(&tier))?;
                dirty.extend(catalog.put_tier(tier.clone()));
                let new = Arc::new(tier);
                changes.push(Change::TierUpdated {
                    old,
                    new: Arc::clone(&new),
                });
                Ok(Done::Tier(new))
            }
            Op::AddKey(new) => {
                let tier = catalog
                    .tier_by_name(&new.tier)
                    .or_else(|| catalog.tier_by_id(&new.tier))
                    .ok_or_else(|| WriteError::TierNotFound(new.tier.clone()))?;
                let info = KeyInfo {
                    id: uuid::Uuid::new_v4().to_string().into(),
                    name: new.name.as_str().into(),
                    tier_id: Arc::clone(&tier.id),
                    active: true,
                    created_at_ms: self.next_created_ms(),
                    expires_at_ms: new.expires_at_ms,
                };
                let plain = Plaintext {
                    value: &new.value,
                    metadata: &new.metadata,
                    secrets: &new.secrets,
                };
                let mut record = load::key_record(&info, &plain, &self.sealer);
                let cap = new.usage_limit.map(|limit| {
                    // The first chunk is reserved with the key, in the same commit.
                    let now_ms = self.pool.clock().now_ms();
                    let end_s = new
                        .usage_window_seconds
                        .map_or(LIFETIME, |window| seconds(now_ms).saturating_add(window));
                    let reserved = UsageCap::chunk_for(limit).min(limit);
                    record.usage_limit = Some(limit.into());
                    record.usage_window_seconds = new.usage_window_seconds.map(u64::from);
                    record.usage_count = reserved.into();
                    record.usage_window_start_ms = new
                        .usage_window_seconds
                        .map(|window| self.window_start_unix_ms(end_s, window));
                    UsageCap::new(limit, new.usage_window_seconds, end_s, reserved, 0)
                });
                txn.put_key(&record)?;
                let tier = Arc::clone(&tier.name);
                let entry = KeyEntry::new(info, &plain, cap);
                let id = Arc::clone(&entry.info.id);
                dirty.extend(catalog.put_key(entry));
                let key = Arc::clone(catalog.key(&id).expect("the key was just added"));
                changes.push(Change::KeyAdded {
                    key: Arc::clone(&key),
                    tier,
                });
                Ok(Done::Key(key))
            }
            Op::DeleteKey(id) => {
                let key = catalog
                    .key(id)
                    .cloned()
                    .ok_or_else(|| WriteError::KeyNotFound(id.clone()))?;
                txn.delete_key(id)?;
                let tier = catalog
                    .tier_by_id(&key.info.tier_id)
                    .map_or_else(|| Arc::from(""), |tier| Arc::clone(&tier.name));
                dirty.extend(catalog.remove_key(id));
                changes.push(Change::KeyDeleted { key, tier });
                Ok(Done::Deleted)
            }
            Op::Reserve(id) => {
                let Some(cap) = catalog.key(id).and_then(|key| key.usage.clone()) else {
                    return Ok(Done::Nothing);
                };
                match reserve(txn, id, &cap, self.pool.clock())? {
                    Some((end, reserved)) => Ok(Done::Reserved(cap, end, reserved)),
                    None => {
                        cap.clear_pending();
                        Ok(Done::Nothing)
                    }
                }
            }
            Op::FlushAudit => {
                self.flush_audit(txn)?;
                Ok(Done::Nothing)
            }
            Op::ExpireKeys => Ok(Done::Nothing),
            Op::RecentUsage(limit) => {
                self.flush_audit(txn)?;
                Ok(Done::Usage(txn.recent_usage(*limit)?))
            }
            Op::CreateConsumer { name, description } => {
                let (token, token_hash) = crate::crypto::new_token();
                let consumer = Consumer {
                    id: uuid::Uuid::new_v4().to_string().into(),
                    name: name.as_str().into(),
                    description: description.clone(),
                    token_hash,
                    active: true,
                    created_at_ms: self.pool.clock().unix_now_ms(),
                    scopes: std::collections::BTreeSet::new(),
                };
                txn.put_consumer(&load::consumer_record(&consumer))?;
                catalog.put_consumer(consumer.clone());
                let consumer = Arc::new(consumer);
                changes.push(Change::ConsumerCreated(Arc::clone(&consumer)));
                Ok(Done::NewConsumer(consumer, token))
            }
            Op::AddScope { consumer_id, tier } => {
                let consumer = catalog
                    .consumer(consumer_id)
                    .ok_or_else(|| WriteError::ConsumerNotFound(consumer_id.clone()))?;
                let tier = catalog
                    .tier_by_name(tier)
                    .or_else(|| catalog.tier_by_id(tier))
                    .ok_or_else(|| WriteError::TierNotFound(tier.clone()))?;
                let tier = Arc::clone(tier);
                let mut consumer = Consumer::clone(consumer);
                if consumer.scopes.insert(Arc::clone(&tier.id)) {
                    txn.put_consumer(&load::consumer_record(&consumer))?;
                    catalog.put_consumer(consumer);
                }
                let consumer =
                    Arc::clone(catalog.consumer(consumer_id).expect("the consumer exists"));
                changes.push(Change::ScopeAdded {
                    consumer: Arc::clone(&consumer),
                    tier: Arc::clone(&tier.name),
                });
                Ok(Done::Consumer(consumer))
            }
            Op::DeleteConsumer(id) => {
                let consumer = catalog
                    .consumer(id)
                    .cloned()
                    .ok_or_else(|| WriteError::ConsumerNotFound(id.clone()))?;
                catalog.remove_consumer(id);
                txn.delete_consumer(id)?;
                changes.push(Change::ConsumerDeleted(consumer));
                Ok(Done::Deleted)
            }
        }
    }
}

/// The unix time (ms) at which the usage window ending at clock second `end_s` began.
fn window_start_unix_ms(clock: &Clock, end_s: u32, window_s: u32) -> i64 {
    let start_s = u64::from(end_s.saturating_sub(window_s));
    clock.to_unix_ms(start_s * 1_000)
}

/// Writes the next reservation of a capped key into `txn`; the caller publishes it with
/// [`UsageCap::apply_reservation`] once the transaction is committed.
fn reserve(
    txn: &Batch,
    id: &str,
    cap: &UsageCap,
    clock: &Clock,
) -> Result<Option<(u32, u32)>, WriteError> {
    let Some((end, reserved)) = cap.next_reservation(seconds(clock.now_ms())) else {
        return Ok(None);
    };
    let mut record = txn
        .get_key(id)?
        .ok_or_else(|| WriteError::KeyNotFound(id.to_owned()))?;
    record.usage_count = reserved.into();
    record.usage_window_start_ms = cap
        .window_s
        .map(|window| window_start_unix_ms(clock, end, window));
    txn.put_key(&record)?;
    tracing::debug!(key_id = %id, reserved, "usage reserved");
    Ok(Some((end, reserved)))
}

/// Reserves a chunk for every capped key of `catalog` in one commit, so that after a start
/// they are servable at once instead of waiting for their first reservation.
pub fn reserve_all(store: &Store, catalog: &Catalog, clock: &Clock) -> Result<(), WriteError> {
    let capped: Vec<_> = catalog
        .keys()
        .filter_map(|key| Some((Arc::clone(&key.info.id), Arc::clone(key.usage.as_ref()?))))
        .collect();
    if capped.is_empty() {
        return Ok(());
    }
    let txn = store.begin()?;
    let mut reserved = Vec::new();
    for (id, cap) in capped {
        if let Some((end, count)) = reserve(&txn, &id, &cap, clock)? {
            reserved.push((cap, end, count));
        }
    }
    txn.commit()?;
    for (cap, end, count) in reserved {
        cap.apply_reservation(end, count);
    }
    Ok(())
}

fn features(spec: &TierSpec) -> std::collections::BTreeMap<Arc<str>, crate::broker::Limit> {
    spec.features
        .iter()
        .map(|(feature, limit)| (feature.as_str().into(), *limit))
        .collect()
}
