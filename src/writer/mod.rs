//! The single writer: every admin change goes through one thread that owns the redb write
//! transactions.
//!
//! Handlers send a [`Request`] and wait on its reply. The writer takes whatever is queued (group
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

use tokio::sync::{mpsc, oneshot};

use crate::broker::{Catalog, Dirty, KeyEntry, KeyInfo, Plaintext, Pool, Tier};
use crate::crypto::Sealer;
use crate::store::{Batch, Store, StoreError};
pub use spec::{Invalid, NewKey, TierSpec};

/// Requests a handler may queue before `send` waits.
const QUEUE_DEPTH: usize = 4_096;
/// Most requests applied in one transaction.
const MAX_BATCH: usize = 1_024;

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
    fn kind(&self) -> &'static str {
        match self {
            Op::CreateTier(_) => "create_tier",
            Op::UpdateTier(_) => "update_tier",
            Op::AddKey(_) => "add_key",
            Op::DeleteKey(_) => "delete_key",
        }
    }
}

enum Done {
    Tier(Arc<Tier>),
    Key(Arc<KeyEntry>),
    Deleted,
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
) -> std::io::Result<(Writer, WriterThread)> {
    let (queue, requests) = mpsc::channel(QUEUE_DEPTH);
    let last_created_ms = catalog
        .keys()
        .map(|key| key.info.created_at_ms)
        .max()
        .unwrap_or(i64::MIN);
    let state = State {
        last_created_ms,
        path: store.path().to_owned(),
        store: Some(store),
        sealer,
        pool,
        catalog,
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
    path: PathBuf,
    /// `None` after a failed batch, until the next batch reopens the file.
    store: Option<Store>,
    sealer: Sealer,
    pool: Arc<Pool>,
    catalog: Catalog,
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
            Ok((staged, dirty, results)) => {
                self.pool.publish(staged.clone(), &dirty);
                self.catalog = staged;
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
    ) -> Result<(Catalog, Dirty, Vec<Result<Done, WriteError>>), StoreError> {
        let mut staged = self.catalog.clone();
        let mut dirty = Dirty::new();
        let txn = self.store()?.begin()?;
        let mut results = Vec::with_capacity(batch.len());
        for request in batch {
            match self.apply(&mut staged, &mut dirty, &txn, &request.op) {
                Err(WriteError::Storage(err)) => return Err(err),
                result => results.push(result),
            }
        }
        txn.commit()?;
        Ok((staged, dirty, results))
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
                tracing::info!(tier_id = %tier.id, tier = %tier.name, features = tier.features.len(), "tier created");
                dirty.extend(catalog.put_tier(tier.clone()));
                Ok(Done::Tier(Arc::new(tier)))
            }
            Op::UpdateTier(spec) => {
                let old = catalog
                    .tier_by_name(&spec.name)
                    .ok_or_else(|| WriteError::TierNotFound(spec.name.clone()))?;
                let tier = Tier {
                    description: spec
                        .description
                        .clone()
                        .unwrap_or_else(|| old.description.clone()),
                    features: features(spec),
                    ..Tier::clone(old)
                };
                txn.put_tier(&load::tier_record(&tier))?;
                tracing::info!(tier_id = %tier.id, tier = %tier.name, features = tier.features.len(), "tier updated");
                dirty.extend(catalog.put_tier(tier.clone()));
                Ok(Done::Tier(Arc::new(tier)))
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
                tracing::info!(key_id = %info.id, key = %info.name, tier = %tier.name, "key added");
                let entry = KeyEntry::new(info, &plain);
                let id = Arc::clone(&entry.info.id);
                dirty.extend(catalog.put_key(entry));
                let added = catalog.key(&id).expect("the key was just added");
                Ok(Done::Key(Arc::clone(added)))
            }
            Op::DeleteKey(id) => {
                if catalog.key(id).is_none() {
                    return Err(WriteError::KeyNotFound(id.clone()));
                }
                txn.delete_key(id)?;
                tracing::info!(key_id = %id, "key deleted");
                dirty.extend(catalog.remove_key(id));
                Ok(Done::Deleted)
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
