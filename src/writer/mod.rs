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
//!
//! * `handle`: the [`Writer`] handlers hold, and the hot path's way to ask for reservations.
//! * `request`: what the queue carries: one variant per operation, each with its typed reply.
//! * `idempotency`: admin writes applied at most once per idempotency key, their answers stored.
//! * `thread`: the thread and its batch loop (drain, stage, commit, publish, reply).
//! * `ops`: one function per operation, applied to the batch being staged.
//! * `change_log`: the log line of each committed change.
//! * `meters`: the writer's metric handles.

mod change_log;
mod handle;
mod idempotency;
mod meters;
mod ops;
mod request;
mod thread;

use crate::store::StoreError;

pub use handle::Writer;
pub use idempotency::{Answer, Idempotency, IdempotencyKey, Once, StoredAnswer};
pub use ops::{Exhaustion, HealthReport, Reported, SPEND_RETENTION_MS, SpendAnswer, reserve_all};
pub use thread::{WriterThread, spawn};

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("tier already exists: {0}")]
    TierExists(String),
    #[error("tier not found: {0}")]
    TierNotFound(String),
    #[error("tier still has keys")]
    TierHasKeys,
    /// A change the stored state does not allow (a 400), named by its field.
    #[error("{0}")]
    Invalid(String),
    #[error("key not found: {0}")]
    KeyNotFound(String),
    #[error("consumer not found: {0}")]
    ConsumerNotFound(String),
    /// A spend for a key without a spend budget.
    #[error("key has no budget")]
    NoBudget,
    /// A spend in another unit than the key's budget (named).
    #[error("unit does not match the key's budget ({0})")]
    UnitDiffers(&'static str),
    #[error(
        "this Idempotency-Key was used in the last 24 hours with a different request (method, path or body)"
    )]
    IdempotencyKeyReused,
    /// Raised while staging; aborts the whole batch, whose requests then get [`WriteError::Unsaved`].
    /// Boxed: it is rare and large, and every queued request holds room for its answer.
    #[error("the change was not saved: {0}")]
    Storage(Box<StoreError>),
    #[error("the change was not saved: {0}")]
    Unsaved(String),
    #[error("the server is shutting down")]
    Stopped,
}

impl From<StoreError> for WriteError {
    fn from(err: StoreError) -> Self {
        WriteError::Storage(Box::new(err))
    }
}
