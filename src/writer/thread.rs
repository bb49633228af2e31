//! The writer thread and its batch loop: drain what is queued into one write transaction,
//! commit, publish the next snapshot, then reply to each request.

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::mpsc;

use super::WriteError;
use super::handle::{ReserveSink, Writer};
use super::meters::CommandSeries;
use super::ops::{Staged, Staging};
use super::request::Request;
use crate::broker::{AuditLog, Catalog, HealthPolicy, Pool};
use crate::crypto::Sealer;
use crate::store::{Snapshot, Store, StoreError};
use crate::telemetry::Meter;

/// Requests a handler may queue before `send` waits.
const QUEUE_DEPTH: usize = 4_096;
/// Most requests applied in one transaction.
const MAX_BATCH: usize = 1_024;

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
    policy: HealthPolicy,
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
        meters: CommandSeries::new(meter),
        policy,
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
    Ok((Writer::new(queue, policy), WriterThread(handle)))
}

/// How much nicer the writer is than the request threads: on a saturated core its work (audit
/// flushes, reservations, admin writes) waits for `GET /key` instead of taking turns with it,
/// and admin writes take longer instead (see PERFORMANCE.md).
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

struct State {
    audit: Option<Arc<AuditLog>>,
    /// Unix ms given to the last key created (see [`Staging`]).
    last_created_ms: i64,
    path: PathBuf,
    /// `None` after a failed batch, until the next batch reopens the file.
    store: Option<Store>,
    sealer: Sealer,
    pool: Arc<Pool>,
    catalog: Catalog,
    meters: CommandSeries,
    /// How reports turn into cooldowns.
    policy: HealthPolicy,
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
        self.save_running_time();
        tracing::debug!(path = %self.path.display(), "writer stopped; database closed");
    }

    fn apply_batch(&mut self, batch: &mut Vec<Request>) {
        let failure = match self.stage(batch) {
            Ok(mut staged) => {
                staged.publish_health(self.pool.clock());
                let Staged {
                    catalog,
                    dirty,
                    changes,
                    ..
                } = staged;
                for request in batch.iter() {
                    if let Request::Reserve(call) = request
                        && let Some(Ok(Some(reservation))) = call.answer()
                    {
                        reservation.publish();
                    }
                }
                for request in batch.iter_mut() {
                    if let Request::Snapshot(call) = request {
                        call.answer_with(self.snapshot());
                    }
                }
                if !dirty.is_empty() || !catalog.same_as(&self.catalog) {
                    self.pool.publish(catalog.clone(), &dirty);
                }
                self.catalog = catalog;
                for change in &changes {
                    change.log();
                }
                None
            }
            Err(err) => {
                tracing::error!(error = %err, requests = batch.len(), "write batch failed; nothing was changed");
                // Closes the file; the next batch reopens it (redb may refuse this handle now).
                self.store = None;
                Some(err.to_string())
            }
        };
        for request in batch.drain(..) {
            request.finish(failure.as_deref(), &self.catalog, &self.meters);
        }
    }

    /// Saves the running time as the writer stops, so that the next run loses none of it.
    fn save_running_time(&mut self) {
        let running_ms = self.pool.clock().now_ms();
        let saved = self.store().and_then(|store| {
            let txn = store.begin()?;
            txn.save_running_ms(running_ms)?;
            txn.commit()
        });
        if let Err(err) = saved {
            tracing::warn!(error = %err, "cannot save the running time; the next run goes on from the last commit");
        }
    }

    /// Applies the batch to a copy of the catalog and one transaction, and commits it.
    fn stage(&mut self, batch: &mut [Request]) -> Result<Staged, StoreError> {
        let txn = self.store()?.begin()?;
        let mut staging = Staging::new(
            txn,
            &self.catalog,
            self.pool.clock(),
            &self.sealer,
            self.audit.as_deref(),
            &mut self.last_created_ms,
            self.policy,
        );
        for request in batch.iter_mut() {
            staging.apply(request)?;
        }
        staging.commit(&self.meters.commit)
    }

    /// Pins the last commit for a backup: a read transaction, which never holds the writer back.
    fn snapshot(&mut self) -> Result<Box<Snapshot>, WriteError> {
        Ok(Box::new(self.store()?.snapshot()?))
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
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::broker::{Clock, KeyBody, Limit, NewKey, Outcome, Spend, SpendBody, Tier, TierSpec};
    use crate::crypto::EncryptionKey;
    use crate::writer::idempotency::{Answer, Idempotency, IdempotencyKey, Keyed, StoredAnswer};
    use crate::writer::ops::HealthReport;
    use crate::writer::request::Call;

    fn render(
        answer: &Result<Arc<Tier>, crate::writer::WriteError>,
        _: &Catalog,
    ) -> Option<StoredAnswer> {
        answer.as_ref().ok().map(|tier| StoredAnswer {
            status: 201,
            body: tier.id.to_string(),
        })
    }

    /// A writer's state on a new database in `dir`, its clock stopped.
    fn state(dir: &std::path::Path) -> State {
        let sealer = Sealer::new(&EncryptionKey::generate());
        let store = Store::open(&dir.join("pool.redb"), &sealer).unwrap();
        let (clock, _) = Clock::manual();
        State {
            audit: None,
            last_created_ms: i64::MIN,
            path: store.path().to_owned(),
            store: Some(store),
            sealer,
            pool: Arc::new(Pool::new(clock)),
            catalog: Catalog::default(),
            meters: CommandSeries::new(&Meter::off()),
            policy: crate::broker::HealthPolicy {
                cooldown_max_seconds: 300,
                failure_threshold: 3,
            },
        }
    }

    /// The tier `pro`, with one feature.
    fn pro() -> TierSpec {
        let limit = Limit {
            rate_limit: 1,
            window_seconds: 60,
        };
        TierSpec::new("pro", None, BTreeMap::from([("chat".into(), limit)])).unwrap()
    }

    #[test]
    fn two_requests_with_one_key_in_one_batch_apply_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = state(dir.path());
        let spec = pro();
        let request = || {
            let key = IdempotencyKey::parse(b"same").unwrap();
            let once = Idempotency::new(key, "POST", "/admin/tiers", b"{}").answered_by(render);
            Call::ask(Keyed {
                input: spec.clone(),
                once: Some(Box::new(once)),
            })
        };
        let (first, mut first_answer) = request();
        let (second, mut second_answer) = request();
        let mut batch = vec![Request::CreateTier(first), Request::CreateTier(second)];
        state.apply_batch(&mut batch);

        let Ok(Ok(Answer::Applied(tier))) = first_answer.try_recv() else {
            panic!("the first request applies");
        };
        let Ok(Ok(Answer::Replayed(stored))) = second_answer.try_recv() else {
            panic!("the second request, in the same batch, replays the first's answer");
        };
        assert_eq!(stored.body, tier.id.to_string());
        assert_eq!(state.catalog.tier_count(), 1);
    }

    /// A spend, then a report that disables the key, in one batch: the key as the catalog then
    /// holds it keeps what the spend counted.
    #[test]
    fn a_key_disabled_after_a_spend_in_the_same_batch_keeps_the_spend() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = state(dir.path());
        let (tier, _) = Call::ask(Keyed {
            input: pro(),
            once: None,
        });
        let body: KeyBody = serde_json::from_str(
            r#"{"name": "k", "key": "sk-1", "tier": "pro", "budget": {"amount": 10, "unit": "usd"}}"#,
        )
        .unwrap();
        let (key, mut added) = Call::ask(Keyed {
            input: Box::new(NewKey::try_from(body).unwrap()),
            once: None,
        });
        state.apply_batch(&mut vec![Request::CreateTier(tier), Request::AddKey(key)]);
        let Ok(Ok(Answer::Applied(key))) = added.try_recv() else {
            panic!("the key is added");
        };
        let id = key.info.id.to_string();

        let body: SpendBody =
            serde_json::from_str(r#"{"amount": 3, "unit": "usd", "request_id": "r1"}"#).unwrap();
        let (spend, _) = Call::ask((id.clone(), Spend::try_from(body).unwrap()));
        let (report, _) = Call::ask(HealthReport {
            key_id: id.clone(),
            reporter: None,
            outcome: Outcome::Refused(401),
            feature: None,
        });
        state.apply_batch(&mut vec![Request::Spend(spend), Request::Report(report)]);

        let key = state.catalog.key(&id).unwrap();
        assert!(!key.info.active);
        assert_eq!(key.budget().unwrap().spent_nanos, 3_000_000_000);
    }
}
