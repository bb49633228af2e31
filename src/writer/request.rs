//! What the writer's queue carries: one variant per operation, each a [`Call`] whose reply is
//! typed by what that operation answers.

use std::sync::Arc;

use tokio::sync::oneshot;
use zeroize::Zeroizing;

use super::WriteError;
use super::idempotency::{Answer, Keyed};
use super::meters::{CommandSeries, Kind};
use super::ops::{Exhaustion, HealthReport, Reported, Reservation, SpendAnswer};
use crate::broker::{
    Catalog, Consumer, KeyEntry, KeyPatch, NewConsumer, NewKey, NewScope, Spend, Tier, TierSpec,
};
use crate::store::{Snapshot, StoreError, UsageRecord};

/// Where a call's answer goes.
type Reply<O> = oneshot::Sender<Result<O, WriteError>>;

/// One operation: its input, and its answer once the batch holding it is staged.
pub(super) struct Call<I, O> {
    input: I,
    /// `None` for the writer's own work, which nobody waits for.
    reply: Option<Reply<O>>,
    /// Set when staged; sent once the batch has committed (or replaced if it failed).
    answer: Option<Result<O, WriteError>>,
}

impl<I, O> Call<I, O> {
    /// A call whose caller waits on the receiver.
    pub(super) fn ask(input: I) -> (Self, oneshot::Receiver<Result<O, WriteError>>) {
        let (reply, answer) = oneshot::channel();
        let call = Self {
            input,
            reply: Some(reply),
            answer: None,
        };
        (call, answer)
    }

    /// A call nobody waits for.
    pub(super) fn nudge(input: I) -> Self {
        Self {
            input,
            reply: None,
            answer: None,
        }
    }

    /// Applies the call to the batch being staged. A storage error aborts the whole batch, so it
    /// is returned instead of kept as this call's answer.
    pub(super) fn stage(
        &mut self,
        apply: impl FnOnce(&I) -> Result<O, WriteError>,
    ) -> Result<(), StoreError> {
        match apply(&self.input) {
            Err(WriteError::Storage(err)) => Err(*err),
            answer => {
                self.answer = Some(answer);
                Ok(())
            }
        }
    }

    pub(super) fn answer(&self) -> Option<&Result<O, WriteError>> {
        self.answer.as_ref()
    }

    pub(super) fn input(&self) -> &I {
        &self.input
    }

    /// Sets the answer of a call that is answered once its batch has committed, not staged.
    pub(super) fn answer_with(&mut self, answer: Result<O, WriteError>) {
        self.answer = Some(answer);
    }

    /// Counts the call and replies; `failure` is why the batch was not saved, if it was not.
    pub(super) fn finish(self, kind: Kind, failure: Option<&str>, meters: &CommandSeries) {
        self.finish_or(kind, failure, meters, |_| ());
    }

    /// [`Call::finish`], calling `unapplied` with the input when the call changed nothing.
    pub(super) fn finish_or(
        self,
        kind: Kind,
        failure: Option<&str>,
        meters: &CommandSeries,
        unapplied: impl FnOnce(&I),
    ) {
        let answer = match failure {
            Some(message) => Err(WriteError::Unsaved(message.to_owned())),
            // Staged with the batch that committed; without an answer, the reply is dropped and
            // its caller reads that as the writer stopping.
            None => match self.answer {
                Some(answer) => answer,
                None => return,
            },
        };
        meters.count(kind, &answer);
        if let Err(err) = &answer {
            tracing::debug!(kind = kind.label(), error = %err, "admin change refused");
            unapplied(&self.input);
        }
        // The caller may have gone away; its change stands either way.
        if let Some(reply) = self.reply {
            let _ = reply.send(answer);
        }
    }
}

/// A write that may carry an idempotency key: its input beside the key, answering whether it
/// applied or replayed.
pub(super) type OnceCall<I, O> = Call<Keyed<I, O>, Answer<O>>;

/// A consumer just created, with its token.
pub(super) type NewlyCreated = (Arc<Consumer>, Zeroizing<String>);

/// Audit events with their ids, newest first.
pub(super) type AuditEvents = Vec<(u64, UsageRecord)>;

/// A queued request.
pub(super) enum Request {
    CreateTier(OnceCall<TierSpec, Arc<Tier>>),
    /// Replaces a tier's features (and description, when given), found by name.
    UpdateTier(Call<TierSpec, Arc<Tier>>),
    /// Boxed: the largest input would otherwise set the size every queued request is copied at,
    /// the hot path's reservation requests included.
    AddKey(OnceCall<Box<NewKey>, Arc<KeyEntry>>),
    DeleteKey(Call<String, ()>),
    /// What the provider answered for a key (`POST /key/{id}/report`).
    Report(Call<HealthReport, Reported>),
    /// Sets or clears a key's exhaustion (`POST /key/{id}/exhausted`).
    Exhaust(Call<Exhaustion, Reported>),
    /// A key's id and its change (boxed, as `AddKey`).
    PatchKey(Call<(String, Box<KeyPatch>), Arc<KeyEntry>>),
    /// A key's id and a spend to count against its budget, once per request id.
    Spend(Call<(String, Spend), SpendAnswer>),
    /// Deletes a tier, found by name or id.
    DeleteTier(Call<String, ()>),
    /// Answers with the consumer's token, which exists nowhere else afterwards.
    CreateConsumer(OnceCall<NewConsumer, NewlyCreated>),
    /// The consumer's id and the tier it may draw from.
    AddScope(OnceCall<(String, NewScope), Arc<Consumer>>),
    /// The consumer's id and the tier (name or id) it may no longer draw from.
    RemoveScope(Call<(String, String), Arc<Consumer>>),
    /// A consumer's id; answers with its new token, which exists nowhere else afterwards.
    RotateToken(OnceCall<String, NewlyCreated>),
    DeleteConsumer(Call<String, ()>),
    /// Write the queued audit events, then read the newest ones (how many, and before which
    /// event id), with their ids.
    RecentUsage(Call<(usize, Option<u64>), AuditEvents>),
    /// Reserve the next chunk of a usage-capped key (asked by the hot path; nobody waits).
    Reserve(Call<Arc<str>, Option<Reservation>>),
    /// Write the queued audit events.
    FlushAudit(Call<(), ()>),
    /// Take expired keys out of the rotation and let keys whose cooldown or exhaustion ended be
    /// available again (every batch does; this one has nothing else).
    ExpireKeys(Call<(), ()>),
    /// Save the running time (every batch does; this one has nothing else).
    SaveRunningTime(Call<(), ()>),
    /// Pin the commit this batch ends with, for a backup (answered after the commit, so every
    /// change answered before the request was queued is in it). Boxed, as `AddKey`.
    Snapshot(Call<(), Box<Snapshot>>),
}

impl Request {
    /// Counts the request and replies once its batch is over: committed into `catalog`, or not
    /// saved for the reason `failure` gives.
    pub(super) fn finish(self, failure: Option<&str>, catalog: &Catalog, meters: &CommandSeries) {
        match self {
            Request::CreateTier(call) => call.finish(Kind::CreateTier, failure, meters),
            Request::UpdateTier(call) => call.finish(Kind::UpdateTier, failure, meters),
            Request::AddKey(call) => call.finish(Kind::AddKey, failure, meters),
            Request::DeleteKey(call) => call.finish(Kind::DeleteKey, failure, meters),
            Request::Report(call) => call.finish(Kind::ReportHealth, failure, meters),
            Request::Exhaust(call) => call.finish(Kind::Exhaust, failure, meters),
            Request::PatchKey(call) => call.finish(Kind::PatchKey, failure, meters),
            Request::Spend(call) => {
                if failure.is_none()
                    && let Some(Ok(answer)) = call.answer()
                    && !answer.duplicate
                {
                    meters.spent(call.input());
                }
                call.finish(Kind::Spend, failure, meters);
            }
            Request::DeleteTier(call) => call.finish(Kind::DeleteTier, failure, meters),
            Request::RemoveScope(call) => call.finish(Kind::RemoveScope, failure, meters),
            Request::RotateToken(call) => call.finish(Kind::RotateToken, failure, meters),
            Request::CreateConsumer(call) => call.finish(Kind::CreateConsumer, failure, meters),
            Request::AddScope(call) => call.finish(Kind::AddScope, failure, meters),
            Request::DeleteConsumer(call) => call.finish(Kind::DeleteConsumer, failure, meters),
            Request::RecentUsage(call) => call.finish(Kind::RecentUsage, failure, meters),
            // A reservation not written lets the key ask again.
            Request::Reserve(call) => call.finish_or(Kind::ReserveUsage, failure, meters, |id| {
                if let Some(cap) = catalog.key(id).and_then(|key| key.usage.as_ref()) {
                    cap.clear_pending();
                }
            }),
            Request::FlushAudit(call) => call.finish(Kind::FlushAudit, failure, meters),
            Request::ExpireKeys(call) => call.finish(Kind::ExpireKeys, failure, meters),
            Request::SaveRunningTime(call) => {
                call.finish(Kind::SaveRunningTime, failure, meters);
            }
            Request::Snapshot(call) => call.finish(Kind::Snapshot, failure, meters),
        }
    }
}
