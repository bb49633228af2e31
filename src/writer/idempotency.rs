//! Idempotency keys: an admin write sent with one is applied at most once. Its answer is stored
//! under the key in the same transaction as the change it answers, so a retry (after a timeout,
//! a dropped connection or a restart, even after a kill -9) gets that answer back instead of a
//! second change.
//!
//! The rules, applied by the writer thread alone (so two requests with one key, even in one
//! batch, never both apply):
//! * a key unseen, or stored more than [`IDEMPOTENCY_TTL_MS`] ago: the write is applied and its
//!   answer stored, a refusal (4xx) included: the same request would be refused again;
//! * a key stored within that time with the same fingerprint (method, path, body): the stored
//!   answer, and nothing else happens;
//! * with another fingerprint: [`WriteError::IdempotencyKeyReused`], nothing applied.
//!
//! An answer that is not saved (the batch failed: a 5xx) stores nothing, so a retry applies.
//! Entries older than the TTL are pruned by the batches that store new ones.

use sha2::{Digest, Sha256};

use super::WriteError;
use super::ops::Staging;
use crate::broker::{Catalog, Invalid};
use crate::store::{Hex, IdempotencyRecord};

/// How long a key's answer is kept: 24 hours.
pub const IDEMPOTENCY_TTL_MS: i64 = 24 * 60 * 60 * 1000;

/// The longest idempotency key accepted, in characters.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// Most expired keys one batch prunes, so that a long idle stretch does not make one write slow;
/// every batch that stores a key prunes, so the backlog still goes.
const PRUNE_PER_BATCH: usize = 1_024;

/// A valid idempotency key: 1 to [`MAX_IDEMPOTENCY_KEY_LEN`] visible ASCII characters (`!` to
/// `~`; no spaces or control characters).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Parses a header value; the error never repeats it.
    pub fn parse(bytes: &[u8]) -> Result<Self, Invalid> {
        if bytes.is_empty() || bytes.len() > MAX_IDEMPOTENCY_KEY_LEN {
            return Err(Invalid(format!(
                "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} characters"
            )));
        }
        if !bytes.iter().all(|b| b.is_ascii_graphic()) {
            return Err(Invalid(
                "Idempotency-Key must be visible ASCII characters (no spaces or control characters)"
                    .into(),
            ));
        }
        // All ASCII, checked above.
        Ok(Self(String::from_utf8_lossy(bytes).into_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A request's idempotency key and the fingerprint of what it asked.
#[derive(Clone, Debug)]
pub struct Idempotency {
    key: IdempotencyKey,
    /// SHA-256 of the method, the path and the body, each length-prefixed.
    fingerprint: [u8; 32],
}

impl Idempotency {
    pub fn new(key: IdempotencyKey, method: &str, path: &str, body: &[u8]) -> Self {
        let mut hash = Sha256::new();
        for part in [method.as_bytes(), path.as_bytes(), body] {
            hash.update((part.len() as u64).to_le_bytes());
            hash.update(part);
        }
        Self {
            key,
            fingerprint: hash.finalize().into(),
        }
    }

    /// This request's key, to answer with what `render` makes of the answer.
    pub fn answered_by<O>(self, render: Render<O>) -> Once<O> {
        Once {
            idempotency: self,
            render,
        }
    }
}

/// What an idempotent request answers, to store: `None` for an answer that must not be stored.
/// Called by the writer thread with the answer and the catalog as the write left it.
pub type Render<O> = fn(&Result<O, WriteError>, &Catalog) -> Option<StoredAnswer>;

/// An answer stored under an idempotency key: an HTTP status and a JSON body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredAnswer {
    pub status: u16,
    pub body: String,
}

/// A write's idempotency key, and how its answer is stored.
pub struct Once<O> {
    idempotency: Idempotency,
    render: Render<O>,
}

/// The answer to a write that may carry an idempotency key.
#[derive(Debug)]
pub enum Answer<O> {
    /// Applied now.
    Applied(O),
    /// Applied by an earlier request with the same key: its stored answer (boxed: rare, and
    /// every queued request holds room for its answer).
    Replayed(Box<StoredAnswer>),
}

/// A write's input and, boxed (rare, and every queued request holds room for its input), its
/// idempotency key.
pub(super) struct Keyed<I, O> {
    pub(super) input: I,
    pub(super) once: Option<Box<Once<O>>>,
}

/// Applies `input` with `apply`, unless its key says it was applied already; stores the answer
/// under the key in the batch's transaction.
pub(super) fn apply_once<I, O>(
    s: &mut Staging<'_>,
    keyed: &Keyed<I, O>,
    apply: impl FnOnce(&mut Staging<'_>, &I) -> Result<O, WriteError>,
) -> Result<Answer<O>, WriteError> {
    let Some(once) = keyed.once.as_deref() else {
        return apply(s, &keyed.input).map(Answer::Applied);
    };
    let key = once.idempotency.key.as_str();
    let now = s.now_ms();
    let expired_before = now.saturating_sub(IDEMPOTENCY_TTL_MS);
    if let Some(stored) = s.txn().get_idempotent(key)?
        && stored.created_at_ms > expired_before
    {
        if stored.fingerprint.0 != once.idempotency.fingerprint {
            return Err(WriteError::IdempotencyKeyReused);
        }
        tracing::debug!("idempotent write replayed");
        return Ok(Answer::Replayed(Box::new(StoredAnswer {
            status: stored.status,
            body: stored.body,
        })));
    }
    let answer = apply(s, &keyed.input);
    if let Err(WriteError::Storage(_)) = answer {
        return answer.map(Answer::Applied);
    }
    if let Some(stored) = (once.render)(&answer, s.catalog()) {
        s.txn().prune_idempotent(expired_before, PRUNE_PER_BATCH)?;
        let record = IdempotencyRecord {
            fingerprint: Hex(once.idempotency.fingerprint.to_vec()),
            created_at_ms: now,
            status: stored.status,
            body: stored.body,
        };
        s.txn().put_idempotent(key, &record)?;
    }
    answer.map(Answer::Applied)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn keys_are_short_visible_ascii() {
        assert!(IdempotencyKey::parse(b"a").is_ok());
        assert!(IdempotencyKey::parse(&[b'k'; MAX_IDEMPOTENCY_KEY_LEN]).is_ok());
        assert!(IdempotencyKey::parse(b"550e8400-e29b-41d4-a716-446655440000").is_ok());
        for bad in [
            &b""[..],
            &[b'k'; MAX_IDEMPOTENCY_KEY_LEN + 1],
            b"with space",
            b"tab\there",
            b"nul\0",
            b"del\x7f",
            "caf\u{e9}".as_bytes(),
            "\u{202e}rtl".as_bytes(),
        ] {
            let err = IdempotencyKey::parse(bad).unwrap_err();
            assert!(err.0.starts_with("Idempotency-Key must be"), "{}", err.0);
        }
    }

    #[test]
    fn the_fingerprint_tells_method_path_and_body_apart() {
        let key = || IdempotencyKey::parse(b"k").unwrap();
        let print = |method, path, body: &str| {
            Idempotency::new(key(), method, path, body.as_bytes()).fingerprint
        };
        let first = print("POST", "/admin/tiers", "{}");
        assert_eq!(first, print("POST", "/admin/tiers", "{}"));
        assert_ne!(first, print("POST", "/admin/keys", "{}"));
        assert_ne!(first, print("PATCH", "/admin/tiers", "{}"));
        assert_ne!(first, print("POST", "/admin/tiers", "{ }"));
        // Length prefixes: moving bytes between the parts changes the fingerprint.
        assert_ne!(print("POST", "/a", "b"), print("POST", "/ab", ""));
    }
}
