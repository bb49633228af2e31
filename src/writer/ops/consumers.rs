//! Creating consumers, scoping them to tiers, deleting them.

use std::collections::BTreeSet;
use std::sync::Arc;

use zeroize::Zeroizing;

use super::Staging;
use crate::broker::{Consumer, NewConsumer, NewScope};
use crate::store::consumer_record;
use crate::writer::WriteError;
use crate::writer::change_log::Change;

/// Creates a consumer; answers with it and its token, which exists nowhere else afterwards.
pub(super) fn create_consumer(
    s: &mut Staging<'_>,
    new: &NewConsumer,
) -> Result<(Arc<Consumer>, Zeroizing<String>), WriteError> {
    let (token, token_hash) = crate::crypto::new_token();
    let consumer = Consumer {
        id: uuid::Uuid::new_v4().to_string().into(),
        name: new.name().into(),
        description: new.description().to_owned(),
        token_hash,
        active: true,
        created_at_ms: s.clock.unix_now_ms(),
        scopes: BTreeSet::new(),
    };
    s.txn.put_consumer(&consumer_record(&consumer))?;
    s.catalog.put_consumer(consumer.clone());
    let consumer = Arc::new(consumer);
    s.changes
        .push(Change::ConsumerCreated(Arc::clone(&consumer)));
    Ok((consumer, token))
}

/// Lets a consumer draw from a tier (found by name or id); adding it twice is harmless.
pub(super) fn add_scope(
    s: &mut Staging<'_>,
    consumer_id: &str,
    scope: &NewScope,
) -> Result<Arc<Consumer>, WriteError> {
    let consumer = s.consumer(consumer_id)?;
    let tier = s.tier(scope.tier())?;
    let mut consumer = Consumer::clone(&consumer);
    if consumer.scopes.insert(Arc::clone(&tier.id)) {
        s.txn.put_consumer(&consumer_record(&consumer))?;
        s.catalog.put_consumer(consumer);
    }
    let consumer = Arc::clone(
        s.catalog
            .consumer(consumer_id)
            .expect("the consumer exists"),
    );
    s.changes.push(Change::Scope {
        consumer: Arc::clone(&consumer),
        tier: Arc::clone(&tier.name),
        added: true,
    });
    Ok(consumer)
}

pub(super) fn delete_consumer(s: &mut Staging<'_>, id: &str) -> Result<(), WriteError> {
    let consumer = s.consumer(id)?;
    s.catalog.remove_consumer(id);
    s.txn.delete_consumer(id)?;
    s.changes.push(Change::ConsumerDeleted(consumer));
    Ok(())
}

/// Stops a consumer drawing from a tier (found by name or id); removing a scope it does not have
/// is harmless.
pub(super) fn remove_scope(
    s: &mut Staging<'_>,
    consumer_id: &str,
    tier: &str,
) -> Result<Arc<Consumer>, WriteError> {
    let consumer = s.consumer(consumer_id)?;
    let tier = s.tier(tier)?;
    let mut consumer = Consumer::clone(&consumer);
    if consumer.scopes.remove(&tier.id) {
        s.txn.put_consumer(&consumer_record(&consumer))?;
        s.catalog.put_consumer(consumer);
        s.changes.push(Change::Scope {
            consumer: Arc::clone(s.catalog.consumer(consumer_id).expect("just put")),
            tier: Arc::clone(&tier.name),
            added: false,
        });
    }
    Ok(Arc::clone(
        s.catalog
            .consumer(consumer_id)
            .expect("the consumer exists"),
    ))
}

/// Gives a consumer a new token; the old one stops working with this commit. Answers with the
/// consumer and its new token, which exists nowhere else afterwards.
pub(super) fn rotate_token(
    s: &mut Staging<'_>,
    consumer_id: &str,
) -> Result<(Arc<Consumer>, Zeroizing<String>), WriteError> {
    let consumer = s.consumer(consumer_id)?;
    let (token, token_hash) = crate::crypto::new_token();
    let consumer = Consumer {
        token_hash,
        ..Consumer::clone(&consumer)
    };
    s.txn.put_consumer(&consumer_record(&consumer))?;
    s.catalog.put_consumer(consumer);
    let consumer = Arc::clone(s.catalog.consumer(consumer_id).expect("just put"));
    s.changes.push(Change::TokenRotated(Arc::clone(&consumer)));
    Ok((consumer, token))
}
