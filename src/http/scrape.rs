//! One scrape of `/metrics`: the families read from a snapshot, written in the text exposition
//! format a chunk at a time, streamed ([`super::stream`]) so that a scrape holds a few chunks
//! however large the pool, and never runs on the threads that answer `GET /key`.
//!
//! Nothing it keeps grows with the number of keys: the per-tier sums read each tier's roster
//! into one slot per feature, and the per-key series are written key by key.

use std::fmt::Display;
use std::io::Write;
use std::sync::Arc;

use axum::body::Body;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::OwnedSemaphorePermit;

use super::stream::{self, Out};
use crate::broker::{Catalog, KeyState, Now, Snapshot, Tier, TierKeys};
use crate::telemetry::{
    BUILD_INFO, KEY_BUDGET_CUT, KEY_BUDGET_LIMIT, KEY_BUDGET_USED, KEYS_UNAVAILABLE,
    POOL_ACTIVE_KEYS, POOL_FEATURES, POOL_KEYS, POOL_TIERS, SNAPSHOT_BUILD_DURATION,
    SNAPSHOT_BUILT, SNAPSHOT_GENERATION, TIER_BUDGET_LIMIT, TIER_BUDGET_USED, WRITER_QUEUE_DEPTH,
};

/// How much a scrape may show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detail {
    /// Aggregates only: no key or consumer id or name.
    Aggregate,
    /// Each key's budget too, unless that takes more than `max` series.
    PerKey { max: usize },
}

/// What one scrape reads, taken when the request arrives.
pub struct Scrape {
    pub snapshot: Arc<Snapshot>,
    /// The broker clock's instant (windows are measured on it) and the wall time.
    pub now_ms: u64,
    pub unix_now_ms: i64,
    pub queue_depth: usize,
    pub detail: Detail,
}

impl Scrape {
    /// The response body: `recorded` (the recorder's series), then the families read from the
    /// snapshot, rendered on a blocking thread that holds `permit` until it is done.
    pub fn stream(self, recorded: PrometheusHandle, permit: OwnedSemaphorePermit) -> Body {
        stream::spawn(move |out| {
            let _permit = permit;
            out.push_chunk(recorded.render());
            self.render(&mut Families(out));
        })
    }

    fn render(&self, families: &mut Families<'_>) {
        let catalog = &self.snapshot.catalog;
        let tiers: Vec<_> = catalog.tier_keys(self.unix_now_ms).collect();
        families.live(&self.snapshot, &tiers, self.queue_depth);
        families.key_health(
            catalog,
            Now {
                running_ms: self.now_ms,
                unix_ms: self.unix_now_ms,
            },
        );
        families.tier_budgets(catalog, &tiers, self.now_ms);
        if let Detail::PerKey { max } = self.detail {
            // Two series (used, limit) per key and feature of its tier.
            let series: usize = tiers
                .iter()
                .map(|(tier, keys)| 2 * keys.total * tier.features.len())
                .sum();
            if series <= max {
                families.key_budgets(catalog, self.now_ms);
            } else {
                families.gauge(
                    KEY_BUDGET_CUT,
                    "Per-key series left out of this scrape: there were more than \
                     METRICS_PER_KEY_MAX; the per-tier series stand in for them.",
                    series,
                );
            }
        }
    }
}

/// Writes families in the text exposition format.
struct Families<'a>(&'a mut Out);

impl Families<'_> {
    fn header(&mut self, name: &str, help: &str) {
        let _ = writeln!(self.0.buf(), "# HELP {name} {help}\n# TYPE {name} gauge");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        let out = self.0.buf();
        out.extend_from_slice(name.as_bytes());
        for (i, (label, text)) in labels.iter().enumerate() {
            out.push(if i == 0 { b'{' } else { b',' });
            out.extend_from_slice(label.as_bytes());
            out.extend_from_slice(b"=\"");
            escape_into(out, text);
            out.push(b'"');
        }
        if !labels.is_empty() {
            out.push(b'}');
        }
        let _ = writeln!(out, " {value}");
        self.0.written();
    }

    fn gauge(&mut self, name: &str, help: &str, value: impl Display) {
        self.header(name, help);
        self.sample(name, &[], value);
    }

    fn live(&mut self, snapshot: &Snapshot, tiers: &[(&Arc<Tier>, TierKeys)], queue_depth: usize) {
        self.header(BUILD_INFO, "The running version; always 1.");
        self.sample(BUILD_INFO, &[("version", env!("CARGO_PKG_VERSION"))], 1);
        self.header(POOL_KEYS, "Keys stored, by tier.");
        for (tier, keys) in tiers {
            self.sample(POOL_KEYS, &[("tier", &tier.name)], keys.total);
        }
        self.header(
            POOL_ACTIVE_KEYS,
            "Keys servable now (active, not expired, within their spend budget), by tier.",
        );
        for (tier, keys) in tiers {
            self.sample(POOL_ACTIVE_KEYS, &[("tier", &tier.name)], keys.active);
        }
        self.gauge(POOL_TIERS, "Tiers defined.", snapshot.catalog.tier_count());
        self.gauge(
            POOL_FEATURES,
            "Features some tier lists.",
            snapshot.feature_count(),
        );
        self.gauge(
            SNAPSHOT_GENERATION,
            "Generation of the published snapshot; each committed admin batch adds one.",
            snapshot.generation,
        );
        self.gauge(
            SNAPSHOT_BUILT,
            "Unix time at which the published snapshot was built.",
            snapshot.built_at_unix_ms as f64 / 1_000.0,
        );
        self.gauge(
            SNAPSHOT_BUILD_DURATION,
            "Time building the published snapshot took.",
            snapshot.build_duration.as_secs_f64(),
        );
        self.gauge(
            WRITER_QUEUE_DEPTH,
            "Admin changes queued for the writer and not yet taken.",
            queue_depth,
        );
    }

    /// Keys not servable now by what was reported of them or by their spend budget, by state:
    /// aggregates only (no key id or name).
    fn key_health(&mut self, catalog: &Catalog, now: Now) {
        const COUNTED: [KeyState; 4] = [
            KeyState::Cooling,
            KeyState::Disabled,
            KeyState::Exhausted,
            KeyState::OverBudget,
        ];
        let mut counts = [0usize; COUNTED.len()];
        for key in catalog.keys() {
            let state = key.state(now).0;
            if let Some(at) = COUNTED.iter().position(|&counted| counted == state) {
                counts[at] += 1;
            }
        }
        self.header(
            KEYS_UNAVAILABLE,
            "Keys not servable now by what was reported of them or by their spend budget: \
             cooling (the whole key), disabled (by a 401, 402 or 403), exhausted, or over_budget \
             (until it resets or grows).",
        );
        for (state, count) in COUNTED.iter().zip(counts) {
            self.sample(KEYS_UNAVAILABLE, &[("state", state.as_str())], count);
        }
    }

    /// Each tier's budget per feature: its keys' uses in their open windows and their limits,
    /// summed. The uses are read from each tier's roster in turn, a slot per feature; the limits
    /// are the tier's own times its number of keys.
    fn tier_budgets(&mut self, catalog: &Catalog, tiers: &[(&Arc<Tier>, TierKeys)], now_ms: u64) {
        self.header(
            TIER_BUDGET_USED,
            "Uses of a tier's keys for each feature in their open windows, summed.",
        );
        for (tier, _) in tiers {
            let used = catalog.tier_used(tier, now_ms);
            for (feature, used) in tier.features.keys().zip(used) {
                let labels = [("tier", &*tier.name), ("feature", &**feature)];
                self.sample(TIER_BUDGET_USED, &labels, used);
            }
        }
        self.header(
            TIER_BUDGET_LIMIT,
            "Uses a tier's keys may serve for each feature per window, summed.",
        );
        for (tier, keys) in tiers {
            for (feature, limit) in &tier.features {
                let labels = [("tier", &*tier.name), ("feature", &**feature)];
                let most = keys.total as u64 * u64::from(limit.rate_limit);
                self.sample(TIER_BUDGET_LIMIT, &labels, most);
            }
        }
    }

    /// Each key's budget per feature, read from the live counters (with a token only).
    fn key_budgets(&mut self, catalog: &Catalog, now_ms: u64) {
        for (name, help, limit) in [
            (
                KEY_BUDGET_USED,
                "Uses of each key for each feature in its open window.",
                false,
            ),
            (
                KEY_BUDGET_LIMIT,
                "Uses each key may serve for each feature per window.",
                true,
            ),
        ] {
            self.header(name, help);
            for key in catalog.keys() {
                if self.0.is_cut() {
                    return;
                }
                for (feature, budget) in catalog.budgets(key, now_ms) {
                    let labels = [
                        ("key_id", &*key.info.id),
                        ("key_name", &*key.info.name),
                        ("feature", &**feature),
                    ];
                    let value = if limit {
                        budget.limit.rate_limit
                    } else {
                        budget.used
                    };
                    self.sample(name, &labels, value);
                }
            }
        }
    }
}

/// A label value as the text format wants it: backslash, double quote and newline escaped.
fn escape_into(out: &mut Vec<u8>, text: &str) {
    for &byte in text.as_bytes() {
        match byte {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'"' => out.extend_from_slice(b"\\\""),
            b'\n' => out.extend_from_slice(b"\\n"),
            byte => out.push(byte),
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut out = Out::kept();
        Families(&mut out).sample("m", &[("a", "x\"y\\z\nw"), ("b", "ok")], 3);
        assert_eq!(out.text(), "m{a=\"x\\\"y\\\\z\\nw\",b=\"ok\"} 3\n");
    }
}
