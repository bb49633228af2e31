//! The single writer: every admin change goes through one thread that owns the redb write
//! transactions.
//!
//! Handlers send a [`Request`] and wait on its reply. The writer takes whatever is queued (group
//! commit), applies it to a staged copy of the catalog and to one write transaction, commits
//! durably, publishes the next snapshot, and only then replies. So a 2xx means the change is on
//! disk and visible to the next `GET /key`; a failed commit changes neither disk nor pool.

pub mod load;
pub mod spec;

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use metrics::{Counter, Histogram};

use tokio::sync::{mpsc, oneshot};

use crate::broker::{Catalog, Dirty, KeyEntry, KeyInfo, Meter, Plaintext, Pool, Tier};
use crate::crypto::Sealer;
use crate::store::{Batch, Store, StoreError};
pub use spec::{Invalid, NewKey, TierSpec};

/// Requests a handler may queue before `send` waits.
const QUEUE_DEPTH: usize = 4_096;
/// Most requests applied in one transaction.
const MAX_BATCH: usize = 1_024;

/// Admin changes handled, by `kind` and `outcome` ([`OUTCOMES`]).
pub const COMMANDS: &str = "keypooler_writer_commands_total";
/// Seconds each durable commit of a batch took.
pub const COMMIT_DURATION: &str = "keypooler_writer_commit_duration_seconds";
/// The `kind` label values of [`COMMANDS`].
pub const KINDS: [&str; 4] = ["create_tier", "update_tier", "add_key", "delete_key"];
/// The `outcome` label values of [`COMMANDS`]: committed; refused as invalid or conflicting
/// (a 4xx); not saved because storage failed or the writer stopped (a 5xx).
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
}

impl Op {
    /// Its index in [`KINDS`].
    fn index(&self) -> usize {
        match self {
            Op::CreateTier(_) => 0,
            Op::UpdateTier(_) => 1,
            Op::AddKey(_) => 2,
            Op::DeleteKey(_) => 3,
        }
    }

    fn kind(&self) -> &'static str {
        KINDS[self.index()]
    }
}

/// The writer's metric handles, registered once when it starts.
struct Meters {
    /// By [`KINDS`], then [`OUTCOMES`].
    commands: [[Counter; 3]; 4],
    commit: Histogram,
}

impl Meters {
    fn new(meter: &Meter) -> Self {
        Self {
            commands: KINDS.map(|kind| {
                OUTCOMES
                    .map(|outcome| meter.counter(COMMANDS, &[("kind", kind), ("outcome", outcome)]))
            }),
            commit: meter.histogram(COMMIT_DURATION, &[]),
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

enum Done {
    Tier(Arc<Tier>),
    Key(Arc<KeyEntry>),
    Deleted,
}

/// What an applied change did, logged once it is committed: ids and names, never values.
enum Change {
    TierCreated(Arc<Tier>),
    TierUpdated { old: Arc<Tier>, new: Arc<Tier> },
    KeyAdded { key: Arc<KeyEntry>, tier: Arc<str> },
    KeyDeleted { key: Arc<KeyEntry>, tier: Arc<str> },
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
        }
    }

    fn done(self) -> Done {
        match self {
            Change::TierCreated(tier) | Change::TierUpdated { new: tier, .. } => Done::Tier(tier),
            Change::KeyAdded { key, .. } => Done::Key(key),
            Change::KeyDeleted { .. } => Done::Deleted,
        }
    }
}

/// Feature names, comma-separated, for a log field.
fn names<'a>(features: impl Iterator<Item = &'a Arc<str>>) -> String {
    features.map(|f| &**f).collect::<Vec<_>>().join(",")
}

struct Request {
    op: Op,
    reply: oneshot::Sender<Result<Done, WriteError>>,
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
            .send(Request { op, reply })
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

    /// Changes queued and not yet taken by the writer.
    pub fn queue_depth(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
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

/// Starts the writer over `store`, publishing into `pool` from `catalog` (already published),
/// registering its metrics with `meter`.
pub fn spawn(
    store: Store,
    sealer: Sealer,
    pool: Arc<Pool>,
    catalog: Catalog,
    meter: &Meter,
) -> std::io::Result<(Writer, WriterThread)> {
    let (queue, requests) = mpsc::channel(QUEUE_DEPTH);
    let last_created_ms = catalog
        .keys()
        .map(|key| key.info.created_at_ms)
        .max()
        .unwrap_or(i64::MIN);
    let state = State {
        last_created_ms,
        store,
        sealer,
        pool,
        catalog,
        meters: Meters::new(meter),
    };
    let handle = std::thread::Builder::new()
        .name("keypooler-writer".into())
        .spawn(move || state.run(requests))?;
    Ok((Writer { queue }, WriterThread(handle)))
}

struct State {
    /// Unix ms given to the last key created: creation times are kept strictly increasing so
    /// that keys rotate in the order they were added, even within one millisecond.
    last_created_ms: i64,
    store: Store,
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
        tracing::debug!(path = %self.store.path().display(), "writer stopped; database closed");
    }

    fn apply_batch(&mut self, batch: &mut Vec<Request>) {
        let outcome = self.stage(batch);
        let results: Vec<Result<Done, WriteError>> = match outcome {
            Ok((staged, dirty, results)) => {
                self.pool.publish(staged.clone(), &dirty);
                self.catalog = staged;
                results
                    .into_iter()
                    .map(|result| {
                        result.map(|change| {
                            change.log();
                            change.done()
                        })
                    })
                    .collect()
            }
            Err(err) => {
                tracing::error!(error = %err, requests = batch.len(), "write batch failed; nothing was changed");
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
            }
            // The caller may have gone away; its change stands either way.
            let _ = request.reply.send(result);
        }
    }

    /// Applies the batch to a copy of the catalog and one transaction, and commits it.
    #[allow(clippy::type_complexity)]
    fn stage(
        &mut self,
        batch: &[Request],
    ) -> Result<(Catalog, Dirty, Vec<Result<Change, WriteError>>), StoreError> {
        let mut staged = self.catalog.clone();
        let mut dirty = Dirty::new();
        let txn = self.store.begin()?;
        let mut results = Vec::with_capacity(batch.len());
        for request in batch {
            match self.apply(&mut staged, &mut dirty, &txn, &request.op) {
                Err(WriteError::Storage(err)) => return Err(err),
                result => results.push(result),
            }
        }
        let started = Instant::now();
        txn.commit()?;
        self.meters.commit.record(started.elapsed().as_secs_f64());
        Ok((staged, dirty, results))
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
    ) -> Result<Change, WriteError> {
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
                Ok(Change::TierCreated(Arc::new(tier)))
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
                Ok(Change::TierUpdated {
                    old,
                    new: Arc::new(tier),
                })
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
                txn.put_key(&load::key_record(&info, &plain, &self.sealer))?;
                let tier = Arc::clone(&tier.name);
                let entry = KeyEntry::new(info, &plain);
                let id = Arc::clone(&entry.info.id);
                dirty.extend(catalog.put_key(entry));
                let key = Arc::clone(catalog.key(&id).expect("the key was just added"));
                Ok(Change::KeyAdded { key, tier })
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
                Ok(Change::KeyDeleted { key, tier })
            }
        }
    }
}

fn features(spec: &TierSpec) -> std::collections::BTreeMap<Arc<str>, crate::broker::Limit> {
    spec.features
        .iter()
        .map(|(feature, limit)| (feature.as_str().into(), *limit))
        .collect()
}
