//! Key health: what callers report of the provider's answers, and what it does to serving.
//!
//! A key's health is its durable [`HealthState`] (disabled by a 401/402/403, exhausted until a
//! time, cooling as a whole or per feature, its backoff levels and run of failures), changed
//! only by the writer through [`HealthState::after`], and one atomic word the hot path reads
//! ([`Health::blocked_until`]). Deadlines are kept on both clocks ([`Deadline`]): the wall
//! clock is what is stored and shown, running time is what `GET /key` compares, so a deadline
//! set by a report is not moved by a later step of the wall clock (a restart judges it on the
//! wall clock as it then reads, as it does expiry).

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use metrics::Counter;

use super::clock::Clock;
use super::key::KeyState;
use super::sync::{AtomicU64, Ordering};
use crate::telemetry::{KEY_REPORTS, Meter};

/// How far ahead `POST /key/{id}/exhausted` may set a deadline: 366 days.
pub const MAX_EXHAUSTION_AHEAD_MS: i64 = 366 * 86_400_000;

/// How reports turn into cooldowns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthPolicy {
    /// The longest cooldown (`COOLDOWN_MAX`), in seconds; a provider's `Retry-After` is capped
    /// by it too.
    pub cooldown_max_seconds: u32,
    /// Consecutive 5xx or timeouts that cool the whole key (`FAILURE_THRESHOLD`).
    pub failure_threshold: u32,
}

/// An instant on both clocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadline {
    /// Unix ms: what is stored and shown.
    pub unix_ms: i64,
    /// Running time (ms, on the [`Clock`](super::Clock)): what serving is judged on.
    pub running_ms: u64,
}

/// One reading of both clocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    pub running_ms: u64,
    pub unix_ms: i64,
}

impl Now {
    /// Both clocks of `clock`, now.
    pub fn read(clock: &Clock) -> Self {
        Self {
            running_ms: clock.now_ms(),
            unix_ms: clock.unix_now_ms(),
        }
    }

    /// The deadline `ms` from now.
    pub fn after(self, ms: u64) -> Deadline {
        Deadline {
            unix_ms: self
                .unix_ms
                .saturating_add(i64::try_from(ms).unwrap_or(i64::MAX)),
            running_ms: self.running_ms.saturating_add(ms),
        }
    }

    /// The deadline at wall time `unix_ms` (now, if that has passed).
    pub fn at_unix(self, unix_ms: i64) -> Deadline {
        let ahead = unix_ms.saturating_sub(self.unix_ms).max(0).unsigned_abs();
        Deadline {
            unix_ms,
            running_ms: self.running_ms.saturating_add(ahead),
        }
    }

    fn before(self, deadline: Option<Deadline>) -> bool {
        deadline.is_some_and(|d| self.running_ms < d.running_ms)
    }
}

/// A cooldown (of the whole key or of one feature) and its backoff level: how many cooldowns
/// this run of failures has started (the next lasts 2^level seconds, capped).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backoff {
    pub until: Option<Deadline>,
    pub level: u8,
}

/// What a key's health is, durably: every field is stored with the key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HealthState {
    /// Why a 401, 402 or 403 disabled the key (the key is then inactive).
    pub disabled_reason: Option<Arc<str>>,
    /// Set by `POST /key/{id}/exhausted`: not served for any feature until then.
    pub exhausted: Option<Deadline>,
    /// The whole key's cooldown.
    pub key: Backoff,
    /// Per feature, by name.
    pub features: BTreeMap<Arc<str>, Backoff>,
    /// 5xx answers and timeouts since the last success.
    pub consecutive_failures: u32,
}

/// What the provider said, as reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx.
    Success,
    /// 429, with the provider's `Retry-After` in ms when it sent one.
    TooManyRequests { retry_after_ms: Option<u64> },
    /// 401, 402 or 403: the key is revoked, unpaid or forbidden.
    Refused(u16),
    /// 5xx.
    ServerError(u16),
    /// No answer at all.
    Timeout,
    /// Any other status (1xx, 3xx, other 4xx): recorded, no effect on serving.
    Other(u16),
}

impl Outcome {
    /// The outcome of an HTTP status (100-599); `retry_after_ms` counts only for a 429.
    pub fn of_status(status: u16, retry_after_ms: Option<u64>) -> Self {
        match status {
            200..=299 => Outcome::Success,
            429 => Outcome::TooManyRequests { retry_after_ms },
            401..=403 => Outcome::Refused(status),
            500..=599 => Outcome::ServerError(status),
            _ => Outcome::Other(status),
        }
    }

    /// The `class` label of the reports counter.
    pub fn class(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::TooManyRequests { .. } => "rate_limited",
            Outcome::Refused(_) => "refused",
            Outcome::ServerError(_) => "server_error",
            Outcome::Timeout => "timeout",
            Outcome::Other(_) => "other",
        }
    }

    /// How the audit trail names it: `report 429`, `report timeout`.
    pub fn audit_event(self) -> String {
        match self {
            Outcome::Success => "report 2xx".into(),
            Outcome::TooManyRequests { .. } => "report 429".into(),
            Outcome::Refused(status) | Outcome::ServerError(status) | Outcome::Other(status) => {
                format!("report {status}")
            }
            Outcome::Timeout => "report timeout".into(),
        }
    }
}

/// `2^(level - 1)` seconds (level 1 is 1 s), capped at `max_seconds`, in ms.
fn backoff_ms(level: u8, max_seconds: u32) -> u64 {
    let seconds = 1u64
        .checked_shl(u32::from(level.saturating_sub(1)))
        .unwrap_or(u64::MAX);
    seconds.min(u64::from(max_seconds)) * 1_000
}

impl Backoff {
    /// One cooldown reported now: escalates the level only if none is running (many callers
    /// seeing the same 429 are one event), and ends at the later of the running deadline and
    /// now plus `retry_after_ms` (floor 1 s, cap `COOLDOWN_MAX`) or the level's backoff.
    fn cool(self, now: Now, retry_after_ms: Option<u64>, policy: HealthPolicy) -> Self {
        let cooling = now.before(self.until);
        let level = if cooling {
            self.level.max(1)
        } else {
            self.level.saturating_add(1)
        };
        let max_ms = u64::from(policy.cooldown_max_seconds) * 1_000;
        let ms = retry_after_ms.map_or_else(
            || backoff_ms(level, policy.cooldown_max_seconds),
            |ms| ms.clamp(1_000, max_ms.max(1_000)),
        );
        // Ends on a whole second of running time (rounded up, never earlier than asked): the
        // reports of one refusal from many callers within a second then propose one deadline,
        // and all but the first change nothing (answered from memory, see `unchanged_by`).
        let whole = ms + (1_000 - now.running_ms.saturating_add(ms) % 1_000) % 1_000;
        let proposed = now.after(whole.min(max_ms.max(1_000)));
        let until = match self.until {
            Some(current) if cooling && current.running_ms >= proposed.running_ms => current,
            _ => proposed,
        };
        Self {
            until: Some(until),
            level,
        }
    }
}

impl HealthState {
    /// The state after `outcome` was reported at `now` (for `feature` only, when given and the
    /// outcome is a 429).
    #[must_use]
    pub fn after(
        &self,
        outcome: Outcome,
        feature: Option<&Arc<str>>,
        now: Now,
        policy: HealthPolicy,
    ) -> Self {
        let mut next = self.clone();
        match outcome {
            Outcome::Success => {
                next.consecutive_failures = 0;
                next.key.level = 0;
                // Levels reset; cooldowns still running stand (the provider's word on them
                // holds), the others go.
                next.features.retain(|_, backoff| now.before(backoff.until));
                for backoff in next.features.values_mut() {
                    backoff.level = 0;
                }
            }
            Outcome::TooManyRequests { retry_after_ms } => match feature {
                Some(feature) => {
                    let backoff = next.features.entry(Arc::clone(feature)).or_default();
                    *backoff = backoff.cool(now, retry_after_ms, policy);
                }
                None => next.key = next.key.cool(now, retry_after_ms, policy),
            },
            Outcome::Refused(status) => {
                // The first refusal says when the key was disabled; later ones change nothing.
                next.disabled_reason
                    .get_or_insert_with(|| disabled_reason(status, now.unix_ms).into());
            }
            Outcome::ServerError(_) | Outcome::Timeout => {
                next.consecutive_failures = next.consecutive_failures.saturating_add(1);
                if next.consecutive_failures >= policy.failure_threshold {
                    next.key = next.key.cool(now, None, policy);
                }
            }
            Outcome::Other(_) => {}
        }
        next
    }

    /// What an admin's `is_active: true` leaves: no disabled reason, no cooldown (of the key or
    /// of a feature), no backoff level, no run of failures. An exhaustion stands (the provider
    /// said when the key has budget again; clearing it is its own change).
    #[must_use]
    pub fn re_enabled(&self) -> Self {
        Self {
            exhausted: self.exhausted,
            ..Self::default()
        }
    }

    /// Whether `self`, replacing `before` at `now`, lets the key serve sooner: a deadline that
    /// was running (its exhaustion, its cooldown or a feature's) is gone or earlier.
    pub fn frees_sooner_than(&self, before: &HealthState, now: Now) -> bool {
        let running = |d: Option<Deadline>| d.filter(|d| now.before(Some(*d)));
        let earlier =
            |was: Option<Deadline>, is: Option<Deadline>| match (running(was), running(is)) {
                (Some(was), Some(is)) => is.running_ms < was.running_ms,
                (Some(_), None) => true,
                (None, _) => false,
            };
        earlier(before.exhausted, self.exhausted)
            || earlier(before.key.until, self.key.until)
            || before.features.iter().any(|(feature, backoff)| {
                let is = self.features.get(feature).and_then(|b| b.until);
                earlier(backoff.until, is)
            })
    }

    /// Whether a success would change anything durable: a run of failures or a backoff level
    /// to reset, or a feature cooldown that has ended to forget.
    pub fn in_failure_run(&self) -> bool {
        self.consecutive_failures > 0
            || self.key.level > 0
            || self.features.values().any(|backoff| backoff.level > 0)
    }

    /// Until when the whole key is unavailable (exhausted or cooling), if it is at `now`, and
    /// which of the two (exhaustion first).
    pub fn unavailable(&self, now: Now) -> Option<(KeyState, Deadline)> {
        let exhausted = self.exhausted.filter(|_| now.before(self.exhausted));
        let cooling = self.key.until.filter(|_| now.before(self.key.until));
        match (exhausted, cooling) {
            (Some(e), _) => Some((KeyState::Exhausted, e)),
            (None, Some(c)) => Some((KeyState::Cooling, c)),
            (None, None) => None,
        }
    }

    /// Until when (running ms) the key sits out of its tier's rotation, if it does at `now`:
    /// while it is unavailable as a whole (exhausted or cooling), whatever the feature. The one
    /// rule of who takes turns (an inactive key is in no roster at all): a key out of rotation
    /// costs a pick nothing, so a pool with most keys cooling picks as fast as one with none. A
    /// feature's own cooldown does not take the key out: the pick's check of the health word
    /// skips it for that feature only.
    pub fn out_of_rotation_until(&self, now: Now) -> Option<u64> {
        [self.exhausted, self.key.until]
            .into_iter()
            .flatten()
            .map(|d| d.running_ms)
            .filter(|&at| now.running_ms < at)
            .max()
    }

    /// The features cooling at `now`, with their deadlines.
    pub fn cooling_features(&self, now: Now) -> impl Iterator<Item = (&Arc<str>, Deadline)> {
        self.features
            .iter()
            .filter_map(move |(feature, backoff)| Some((feature, backoff.until?)))
            .filter(move |(_, until)| now.before(Some(*until)))
    }

    /// The last instant (running ms) at which some deadline of the key ends, if any is ahead.
    pub fn last_deadline(&self, now: Now) -> Option<u64> {
        let features = self.features.values().filter_map(|backoff| backoff.until);
        [self.exhausted, self.key.until]
            .into_iter()
            .flatten()
            .chain(features)
            .map(|d| d.running_ms)
            .filter(|&at| now.running_ms < at)
            .max()
    }

    /// The hot path's word at `now`: see [`Health`].
    fn word(&self, now: Now) -> u64 {
        let until = self.out_of_rotation_until(now).unwrap_or(0);
        let features = self.cooling_features(now).next().is_some();
        (until.min(MAX_WORD_UNTIL) << 1) | u64::from(features)
    }
}

/// The last running ms a word can hold (about 146 million years).
const MAX_WORD_UNTIL: u64 = u64::MAX >> 1;

/// `provider answered 401 (reported 2026-06-01T00:00:00Z)`.
fn disabled_reason(status: u16, unix_ms: i64) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    format!("provider answered {status} (reported {at})")
}

/// A key's live health: its [`HealthState`], swapped whole by the writer once a change is
/// committed, and the word `GET /key` reads.
///
/// The word is `(until << 1) | features`: `until` is the running ms before which the whole key
/// is unavailable (exhausted or cooling; 0 when neither), and `features` is set when some
/// feature of the key is cooling. A healthy key's word is 0, so a pick pays one load and one
/// comparison for health. `Relaxed`: the word publishes no memory the pick reads with it (the
/// slow path for a cooling feature reads the state through `ArcSwap`, which orders itself);
/// a pick that reads it a moment stale serves or skips as if it had come a moment earlier.
pub struct Health {
    word: AtomicU64,
    state: ArcSwap<HealthState>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("state", &**self.state.load())
            .finish()
    }
}

/// The health of every key nothing was reported of, shared: a healthy key costs no allocation
/// of its own (a pool may hold millions).
static HEALTHY: std::sync::LazyLock<Arc<HealthState>> = std::sync::LazyLock::new(Arc::default);

impl Default for Health {
    fn default() -> Self {
        Self {
            word: AtomicU64::new(0),
            state: ArcSwap::new(Arc::clone(&HEALTHY)),
        }
    }
}

impl Health {
    /// A key's health as it was stored, judged at `now`.
    pub fn new(state: HealthState, now: Now) -> Self {
        let health = Self::default();
        if state != **HEALTHY {
            health.publish(state, now);
        }
        health
    }

    /// If the key may not be served for `feature` at running time `now`: until when.
    #[inline]
    pub fn blocked_until(&self, now: u64, feature: &str) -> Option<u64> {
        let word = self.word.load(Ordering::Relaxed);
        if now < word >> 1 {
            return Some(word >> 1);
        }
        if word & 1 == 0 {
            return None;
        }
        self.feature_blocked_until(now, feature)
    }

    #[cold]
    fn feature_blocked_until(&self, now: u64, feature: &str) -> Option<u64> {
        self.state
            .load()
            .features
            .get(feature)
            .and_then(|backoff| backoff.until)
            .map(|until| until.running_ms)
            .filter(|&until| now < until)
    }

    /// The current state.
    pub fn state(&self) -> Arc<HealthState> {
        self.state.load_full()
    }

    /// Whether a 2xx would change anything (see [`HealthState::in_failure_run`]). Lock-free, so
    /// success reports may come at the rate of `GET /key`.
    pub fn in_failure_run(&self) -> bool {
        self.state.load().in_failure_run()
    }

    /// Makes `state` the key's health (the writer, once it is committed): the state first, then
    /// the word, so a pick that sees a feature flag finds its cooldown.
    pub fn publish(&self, state: HealthState, now: Now) {
        let word = state.word(now);
        self.state.store(Arc::new(state));
        self.word.store(word, Ordering::Relaxed);
    }
}

/// The `POST /key/{id}/report` counters, by outcome class: registered once, so counting a
/// report is one atomic increment (a success may come at the rate of `GET /key`).
pub struct ReportCounts {
    success: Counter,
    rate_limited: Counter,
    refused: Counter,
    server_error: Counter,
    timeout: Counter,
    other: Counter,
}

impl ReportCounts {
    pub fn new(meter: &Meter) -> Self {
        let count = |class| meter.counter(KEY_REPORTS, &[("class", class)]);
        Self {
            success: count("success"),
            rate_limited: count("rate_limited"),
            refused: count("refused"),
            server_error: count("server_error"),
            timeout: count("timeout"),
            other: count("other"),
        }
    }

    pub fn count(&self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Success => &self.success,
            Outcome::TooManyRequests { .. } => &self.rate_limited,
            Outcome::Refused(_) => &self.refused,
            Outcome::ServerError(_) => &self.server_error,
            Outcome::Timeout => &self.timeout,
            Outcome::Other(_) => &self.other,
        };
        counter.increment(1);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const NOW: Now = Now {
        running_ms: 10_000,
        unix_ms: 1_780_272_000_000,
    };

    fn later(now: Now, ms: u64) -> Now {
        Now {
            running_ms: now.running_ms + ms,
            unix_ms: now.unix_ms + ms as i64,
        }
    }

    /// The defaults of `COOLDOWN_MAX` and `FAILURE_THRESHOLD`.
    fn policy() -> HealthPolicy {
        HealthPolicy {
            cooldown_max_seconds: 300,
            failure_threshold: 3,
        }
    }

    fn too_many(retry_after_ms: Option<u64>) -> Outcome {
        Outcome::TooManyRequests { retry_after_ms }
    }

    #[test]
    fn consecutive_429s_back_off_1_2_4_up_to_the_cap() {
        let policy = HealthPolicy {
            cooldown_max_seconds: 5,
            failure_threshold: 3,
        };
        let mut state = HealthState::default();
        let mut now = NOW;
        let mut lengths = Vec::new();
        for _ in 0..5 {
            state = state.after(too_many(None), None, now, policy);
            let until = state.key.until.unwrap();
            lengths.push(until.running_ms - now.running_ms);
            now = later(now, until.running_ms - now.running_ms);
        }
        assert_eq!(lengths, [1_000, 2_000, 4_000, 5_000, 5_000]);
        // A success resets the level: the next 429 cools for a second again.
        state = state.after(Outcome::Success, None, now, policy);
        state = state.after(too_many(None), None, now, policy);
        assert_eq!(state.key.until.unwrap().running_ms - now.running_ms, 1_000);
    }

    #[test]
    fn reports_during_a_cooldown_extend_it_without_escalating() {
        let first = HealthState::default().after(too_many(None), None, NOW, policy());
        let mut state = first.clone();
        for _ in 0..20 {
            state = state.after(too_many(None), None, NOW, policy());
        }
        assert_eq!(state, first, "twenty reports of the same 429 are one event");
        // A later Retry-After extends the running cooldown, to a whole second of running time
        // (never sooner than asked); the level stays.
        let extended = state.after(too_many(Some(30_000)), None, later(NOW, 500), policy());
        assert_eq!(extended.key.level, 1);
        let until = extended.key.until.unwrap().running_ms;
        assert!((NOW.running_ms + 30_500..NOW.running_ms + 31_500).contains(&until));
        assert_eq!(until % 1_000, 0);
        // An earlier one never shortens it.
        let kept = extended.after(too_many(Some(1_000)), None, later(NOW, 600), policy());
        assert_eq!(kept.key.until, extended.key.until);
    }

    #[test]
    fn retry_after_is_floored_at_a_second_and_capped_at_cooldown_max() {
        let cooled = |ms| {
            HealthState::default()
                .after(too_many(Some(ms)), None, NOW, policy())
                .key
                .until
                .unwrap()
                .running_ms
                - NOW.running_ms
        };
        assert_eq!(cooled(0), 1_000);
        assert_eq!(cooled(7_000), 7_000);
        assert_eq!(cooled(10_000_000), 300_000);
    }

    #[test]
    fn a_feature_429_cools_that_feature_only() {
        let chat: Arc<str> = "chat".into();
        let state = HealthState::default().after(too_many(None), Some(&chat), NOW, policy());
        assert_eq!(state.key, Backoff::default());
        assert_eq!(state.unavailable(NOW), None);
        let cooling: Vec<_> = state.cooling_features(NOW).map(|(f, _)| &**f).collect();
        assert_eq!(cooling, ["chat"]);
        let health = Health::new(state, NOW);
        assert_eq!(health.blocked_until(NOW.running_ms, "chat"), Some(11_000));
        assert_eq!(health.blocked_until(NOW.running_ms, "image"), None);
        assert_eq!(health.blocked_until(11_000, "chat"), None);
    }

    #[test]
    fn failures_cool_the_key_at_the_threshold_and_a_success_resets_them() {
        let mut state = HealthState::default();
        for n in 1..=2 {
            state = state.after(Outcome::Timeout, None, NOW, policy());
            assert_eq!(state.consecutive_failures, n);
            assert_eq!(state.unavailable(NOW), None);
        }
        state = state.after(Outcome::ServerError(503), None, NOW, policy());
        let (what, until) = state.unavailable(NOW).unwrap();
        assert_eq!((what, until.running_ms), (KeyState::Cooling, 11_000));
        assert!(state.in_failure_run());
        state = state.after(Outcome::Success, None, NOW, policy());
        assert_eq!(state.consecutive_failures, 0);
        assert!(!state.in_failure_run());
    }

    #[test]
    fn other_statuses_change_nothing_and_refusals_disable() {
        let state = HealthState::default();
        for status in [100, 302, 400, 404, 418] {
            assert_eq!(
                state.after(Outcome::of_status(status, None), None, NOW, policy()),
                state
            );
        }
        let refused = state.after(Outcome::of_status(402, None), None, NOW, policy());
        assert_eq!(
            refused.disabled_reason.as_deref(),
            Some("provider answered 402 (reported 2026-06-01T00:00:00Z)")
        );
    }

    #[test]
    fn exhaustion_outranks_a_cooldown() {
        let state = HealthState {
            exhausted: Some(NOW.after(5_000)),
            ..HealthState::default()
        }
        .after(too_many(Some(60_000)), None, NOW, policy());
        assert_eq!(state.unavailable(NOW).unwrap().0, KeyState::Exhausted);
        let after = later(NOW, 5_000);
        assert_eq!(state.unavailable(after).unwrap().0, KeyState::Cooling);
        assert_eq!(state.last_deadline(NOW), Some(NOW.running_ms + 60_000));
    }

    #[test]
    fn re_enabling_clears_all_but_the_exhaustion_and_frees_sooner() {
        let chat: Arc<str> = "chat".into();
        let state = HealthState {
            exhausted: Some(NOW.after(5_000)),
            ..HealthState::default()
        }
        .after(too_many(None), Some(&chat), NOW, policy())
        .after(too_many(None), None, NOW, policy())
        .after(Outcome::Timeout, None, NOW, policy())
        .after(Outcome::Refused(401), None, NOW, policy());
        let enabled = state.re_enabled();
        assert_eq!(
            enabled,
            HealthState {
                exhausted: state.exhausted,
                ..HealthState::default()
            }
        );
        assert!(enabled.frees_sooner_than(&state, NOW), "the cooldowns went");
        let cleared = HealthState::default();
        assert!(
            cleared.frees_sooner_than(&enabled, NOW),
            "the exhaustion went"
        );
        assert!(!enabled.frees_sooner_than(&cleared, NOW));
        assert!(!state.frees_sooner_than(&state, NOW));
        // A deadline that has passed frees nothing when it goes.
        assert!(!cleared.frees_sooner_than(&enabled, later(NOW, 5_000)));
    }

    /// A state with random deadlines around `NOW`.
    fn state() -> impl Strategy<Value = HealthState> {
        let deadline = proptest::option::of(0u64..20_000).prop_map(|ms| {
            ms.map(|ms| Deadline {
                unix_ms: 0,
                running_ms: NOW.running_ms - 10_000 + ms,
            })
        });
        let backoff =
            (deadline.clone(), 0u8..4).prop_map(|(until, level)| Backoff { until, level });
        let features = proptest::collection::btree_map(
            prop::sample::select(vec!["a", "b", "c"]).prop_map(Arc::<str>::from),
            backoff.clone(),
            0..3,
        );
        (deadline, backoff, features).prop_map(|(exhausted, key, features)| HealthState {
            exhausted,
            key,
            features,
            ..HealthState::default()
        })
    }

    proptest! {
        /// Whatever the deadlines, the one-word check of the hot path answers what the state
        /// says, at the time it was published and at any later time.
        #[test]
        fn the_word_agrees_with_the_state(
            state in state(),
            published_at in 0u64..10_000,
            asked_after in 0u64..15_000,
            feature in prop::sample::select(vec!["a", "b", "c", "d"]),
        ) {
            let published = Now { running_ms: published_at, unix_ms: 0 };
            let asked = Now { running_ms: published_at + asked_after, unix_ms: 0 };
            let health = Health::new(state.clone(), published);
            let expected = [
                state.unavailable(asked).map(|(_, d)| d),
                state.features.get(feature).and_then(|b| b.until).filter(|d| asked.before(Some(*d))),
            ]
            .into_iter()
            .flatten()
            .map(|d| d.running_ms)
            .max();
            let got = health.blocked_until(asked.running_ms, feature);
            prop_assert_eq!(got.is_some(), expected.is_some());
            // The word answers the whole-key deadline first; a feature's is asked only when the
            // key as a whole is free.
            if let (Some(got), Some(_)) = (got, expected) {
                prop_assert!(got > asked.running_ms);
            }
        }

        /// However many 429s arrive while a cooldown runs, the level goes up once.
        #[test]
        fn one_escalation_per_cooldown(
            reports in proptest::collection::vec((0u64..3_000, proptest::option::of(0u64..5_000)), 1..50),
        ) {
            let mut state = HealthState::default();
            let mut now = NOW;
            let mut cooldowns = 0u8;
            for (step, retry_after) in reports {
                now = later(now, step);
                if !now.before(state.key.until) {
                    cooldowns += 1;
                }
                let before = state.key.until;
                state = state.after(too_many(retry_after), None, now, policy());
                prop_assert_eq!(state.key.level, cooldowns);
                if let Some(before) = before.filter(|d| now.before(Some(*d))) {
                    prop_assert!(state.key.until.unwrap().running_ms >= before.running_ms);
                }
            }
        }
    }
}

#[cfg(loom)]
mod loom_model {
    use super::*;

    /// The writer publishes a cooldown while a pick reads the word: the pick either serves (it
    /// read before) or sees exactly the published deadline, never anything else; a cooling
    /// feature's flag is never seen without its cooldown.
    #[test]
    fn a_pick_sees_the_old_or_the_new_health_never_a_mix() {
        loom::model(|| {
            let now = Now {
                running_ms: 100,
                unix_ms: 0,
            };
            let health = std::sync::Arc::new(Health::default());
            let feature: Arc<str> = "chat".into();
            let policy = HealthPolicy {
                cooldown_max_seconds: 300,
                failure_threshold: 3,
            };
            let next = HealthState::default()
                .after(
                    Outcome::TooManyRequests {
                        retry_after_ms: Some(1_000),
                    },
                    Some(&feature),
                    now,
                    policy,
                )
                .after(
                    Outcome::TooManyRequests {
                        retry_after_ms: Some(2_000),
                    },
                    None,
                    now,
                    policy,
                );
            let writer = {
                let health = std::sync::Arc::clone(&health);
                loom::thread::spawn(move || health.publish(next, now))
            };
            let seen = [
                health.blocked_until(100, "chat"),
                health.blocked_until(100, "image"),
            ];
            writer.join().unwrap();
            // Cooldowns end on whole seconds of running time: 100 + 1 s and 100 + 2 s, rounded up.
            for blocked in seen {
                assert!(matches!(blocked, None | Some(2_000) | Some(3_000)));
            }
            assert_eq!(health.blocked_until(100, "image"), Some(3_000));
            assert_eq!(health.blocked_until(3_000, "chat"), None);
        });
    }
}
