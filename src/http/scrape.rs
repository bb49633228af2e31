//! One scrape of `/metrics`: the families read from a snapshot, written in the text exposition
//! format a chunk at a time, on a blocking thread, into a small channel the response body reads.
//!
//! So a scrape holds at most [`CHUNKS_AHEAD`] chunks of [`CHUNK`] bytes however large the pool,
//! a client that does not read stops the rendering rather than growing a buffer, and the
//! rendering never runs on the threads that answer `GET /key`.

use std::collections::HashMap;
use std::fmt::{Display, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use http_body::Frame;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use crate::broker::{Catalog, Snapshot, Tier, TierKeys};
use crate::telemetry::{
    BUILD_INFO, KEY_BUDGET_CUT, KEY_BUDGET_LIMIT, KEY_BUDGET_USED, KEYS_OVER_BUDGET,
    POOL_ACTIVE_KEYS, POOL_FEATURES, POOL_KEYS, POOL_TIERS, SNAPSHOT_BUILD_DURATION,
    SNAPSHOT_BUILT, SNAPSHOT_GENERATION, TIER_BUDGET_LIMIT, TIER_BUDGET_USED, WRITER_QUEUE_DEPTH,
};

/// The size at which a chunk is handed to the response body.
const CHUNK: usize = 64 * 1024;
/// Chunks rendered ahead of the client.
const CHUNKS_AHEAD: usize = 2;
/// How long a chunk may wait for the client to take the one before: after that the scrape ends,
/// its connection is closed (the body ends in an error, so no client mistakes it for a whole
/// exposition), and its snapshot and its place among the concurrent scrapes are released.
pub const STALLED_SCRAPE: Duration = Duration::from_secs(30);

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
        let (chunks, receiver) = mpsc::channel(CHUNKS_AHEAD);
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut out = Out {
                text: String::new(),
                sink: Some(Sink { chunks, runtime }),
                cut: false,
            };
            out.push_chunk(recorded.render());
            self.render(&mut Families(&mut out));
            out.finish();
        });
        Body::new(ScrapeBody {
            chunks: receiver,
            done: false,
        })
    }

    fn render(&self, families: &mut Families<'_>) {
        let catalog = &self.snapshot.catalog;
        let tiers: Vec<_> = catalog.tier_keys(self.unix_now_ms).collect();
        families.live(&self.snapshot, &tiers, self.queue_depth);
        families.tier_budgets(catalog, self.now_ms);
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

/// Where the text goes: a buffer handed on each time it reaches [`CHUNK`] bytes, or kept whole
/// (tests).
struct Out {
    text: String,
    sink: Option<Sink>,
    /// The client is gone or stalled: the rest of the scrape is skipped.
    cut: bool,
}

struct Sink {
    chunks: mpsc::Sender<Chunk>,
    runtime: tokio::runtime::Handle,
}

enum Chunk {
    Data(Bytes),
    /// Everything was rendered; without it, the end of the channel is an error.
    End,
}

impl Out {
    /// Called after each sample: hands the buffer on once it is a chunk.
    fn sample_written(&mut self) {
        if self.text.len() >= CHUNK && self.sink.is_some() {
            let full = std::mem::replace(&mut self.text, String::with_capacity(CHUNK + CHUNK / 8));
            self.send(Chunk::Data(Bytes::from(full)));
        }
    }

    /// Hands on what is buffered, then `text` as a chunk of its own.
    fn push_chunk(&mut self, text: String) {
        if self.sink.is_none() {
            self.text.push_str(&text);
            return;
        }
        if !self.text.is_empty() {
            let buffered = std::mem::take(&mut self.text);
            self.send(Chunk::Data(Bytes::from(buffered)));
        }
        self.send(Chunk::Data(Bytes::from(text)));
    }

    fn finish(mut self) {
        let rest = std::mem::take(&mut self.text);
        if !rest.is_empty() {
            self.send(Chunk::Data(Bytes::from(rest)));
        }
        self.send(Chunk::End);
    }

    /// Waits (this is a blocking thread) up to [`STALLED_SCRAPE`] for room in the channel.
    fn send(&mut self, chunk: Chunk) {
        let Some(sink) = &self.sink else { return };
        if self.cut {
            return;
        }
        let sent = sink.runtime.block_on(tokio::time::timeout(
            STALLED_SCRAPE,
            sink.chunks.send(chunk),
        ));
        if !matches!(sent, Ok(Ok(()))) {
            self.cut = true;
            self.text = String::new();
        }
    }
}

/// The response body: the chunks as they come, then the end, or an error if the rendering
/// stopped before its end (the connection is then closed mid-body).
struct ScrapeBody {
    chunks: mpsc::Receiver<Chunk>,
    done: bool,
}

/// A scrape that ended before its last chunk.
#[derive(Debug, thiserror::Error)]
#[error("the scrape was cut short")]
struct ScrapeCut;

impl http_body::Body for ScrapeBody {
    type Data = Bytes;
    type Error = ScrapeCut;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ScrapeCut>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match std::task::ready!(this.chunks.poll_recv(cx)) {
            Some(Chunk::Data(bytes)) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
            Some(Chunk::End) => {
                this.done = true;
                Poll::Ready(None)
            }
            None => {
                this.done = true;
                Poll::Ready(Some(Err(ScrapeCut)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// Writes families in the text exposition format.
struct Families<'a>(&'a mut Out);

impl Families<'_> {
    fn header(&mut self, name: &str, help: &str) {
        let _ = writeln!(self.0.text, "# HELP {name} {help}\n# TYPE {name} gauge");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        let out = &mut self.0.text;
        out.push_str(name);
        for (i, (label, text)) in labels.iter().enumerate() {
            out.push(if i == 0 { '{' } else { ',' });
            out.push_str(label);
            out.push_str("=\"");
            escape_into(out, text);
            out.push('"');
        }
        if !labels.is_empty() {
            out.push('}');
        }
        let _ = writeln!(out, " {value}");
        self.0.sample_written();
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
        self.header(
            KEYS_OVER_BUDGET,
            "Keys over their spend budget (not served until it resets or grows), by tier.",
        );
        for (tier, keys) in tiers {
            self.sample(KEYS_OVER_BUDGET, &[("tier", &tier.name)], keys.over_budget);
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

    /// Each tier's budget per feature: its keys' uses in their open windows and their limits,
    /// summed. The sums take a slot per tier and feature, whatever the number of keys.
    fn tier_budgets(&mut self, catalog: &Catalog, now_ms: u64) {
        let mut sums: HashMap<&str, Vec<(u64, u64)>> = catalog
            .tiers()
            .map(|tier| (&*tier.id, vec![(0, 0); tier.features.len()]))
            .collect();
        for key in catalog.keys() {
            let Some(slots) = sums.get_mut(&*key.info.tier_id) else {
                continue;
            };
            for (slot, (_, budget)) in slots.iter_mut().zip(catalog.budgets(key, now_ms)) {
                slot.0 += u64::from(budget.used);
                slot.1 += u64::from(budget.limit.rate_limit);
            }
        }
        for (name, help, limit) in [
            (
                TIER_BUDGET_USED,
                "Uses of a tier's keys for each feature in their open windows, summed.",
                false,
            ),
            (
                TIER_BUDGET_LIMIT,
                "Uses a tier's keys may serve for each feature per window, summed.",
                true,
            ),
        ] {
            self.header(name, help);
            for tier in catalog.tiers() {
                let Some(slots) = sums.get(&*tier.id) else {
                    continue;
                };
                for (feature, &(used, most)) in tier.features.keys().zip(slots) {
                    let labels = [("tier", &*tier.name), ("feature", &**feature)];
                    self.sample(name, &labels, if limit { most } else { used });
                }
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
                if self.0.cut {
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
fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut out = Out {
            text: String::new(),
            sink: None,
            cut: false,
        };
        Families(&mut out).sample("m", &[("a", "x\"y\\z\nw"), ("b", "ok")], 3);
        assert_eq!(out.text, "m{a=\"x\\\"y\\\\z\\nw\",b=\"ok\"} 3\n");
    }
}
