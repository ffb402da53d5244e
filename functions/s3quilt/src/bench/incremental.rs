//! `bench --incremental`: the second version of a package after a small change to its source.
//!
//! After the first s3quilt run (the plain run of the first `--s3quilt-modes` mode), the source
//! is changed directly on the server (untimed): 1 % of the objects rewritten with other bytes,
//! 0.5 % removed and as many added, at least one of each. Then the same package is created
//! again (incremental, the default: base = `latest`), and once more with nothing changed (an
//! up-to-date run). Issue 14's targets are printed beside the figures, never asserted:
//! requests beyond the listing ≤ 1.05 × what the plain run spent per object on the changed
//! and added objects, plus the plain run's fixed requests and the base's reads; wall time
//! ≤ 10 % of the plain run's; peak RSS ≤ 1.5 × the plain run's; an up-to-date run makes no
//! CopyObject, HeadObject or PutObject beyond the staging plan.

use anyhow::{Context, bail};
use aws_sdk_s3::Client;
use serde_json::json;

use super::memory::MemoryS3;
use super::proxy::Counts;
use super::tools::Measured;
use super::{SOURCE_BUCKET, SOURCE_PREFIX, total};

/// Requests that read the listing (of the source, and of the target's existing keys).
const LISTING_OPS: [&str; 2] = ["ListObjectsV2", "ListObjectVersions"];
/// Requests a plain run spends per object (copy, parts, the HEAD of `full` mode).
const PER_OBJECT_OPS: [&str; 5] = [
    "CopyObject",
    "UploadPartCopy",
    "CreateMultipartUpload",
    "CompleteMultipartUpload",
    "HeadObject",
];
/// Reads an incremental run adds to a plain one: the `latest` pointer and the base manifest.
const BASE_READS: u64 = 2;

/// Which objects of the seeded dataset change between the two versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeSet {
    /// Indexes (into the seeded keys) of objects rewritten with other bytes, same size.
    pub changed: Vec<usize>,
    /// Indexes of objects deleted.
    pub removed: Vec<usize>,
    /// New keys, each with the size of the seeded object of the same position.
    pub added: Vec<String>,
}

impl ChangeSet {
    /// 1 % of `n` objects changed, 0.5 % removed, as many added (at least one each), spread
    /// evenly over the dataset so every folder sees changes. Deterministic.
    pub fn choose(n: usize) -> anyhow::Result<ChangeSet> {
        if n < 4 {
            bail!("--incremental needs at least 4 objects (it changes, removes and adds some)");
        }
        let changed_count = (n / 100).max(1);
        let removed_count = (n / 200).max(1);
        let changed: Vec<usize> = (0..changed_count).map(|j| j * n / changed_count).collect();
        // Odd offsets from the changed ones: never the same object twice.
        let removed: Vec<usize> = (0..removed_count)
            .map(|j| j * n / removed_count + 1)
            .filter(|i| *i < n && !changed.contains(i))
            .collect();
        let added = (0..removed.len())
            .map(|j| format!("{SOURCE_PREFIX}part-{:02}/added-{j:07}.bin", j % 16))
            .collect();
        Ok(ChangeSet {
            changed,
            removed,
            added,
        })
    }

    /// Objects in the source after the change.
    pub fn objects_after(&self, n: usize) -> usize {
        n - self.removed.len() + self.added.len()
    }

    /// Applies the change to the source, directly (no delay, untimed). `memory` is the
    /// in-memory S3 when the dataset is held as fills (`--object-size`).
    pub async fn apply(
        &self,
        direct: &Client,
        memory: Option<&MemoryS3>,
        keys: &[String],
        sizes: &[u64],
    ) -> anyhow::Result<()> {
        let writes = self
            .changed
            .iter()
            .map(|&i| (keys[i].as_str(), sizes[i], 0x5a_u8))
            .chain(
                self.added
                    .iter()
                    .enumerate()
                    .map(|(j, key)| (key.as_str(), sizes[j % sizes.len()], 0xa5_u8)),
            );
        for (key, size, byte) in writes {
            match memory {
                Some(store) => {
                    store.insert_fill(SOURCE_BUCKET, key, byte, size, "application/octet-stream")
                }
                None => {
                    direct
                        .put_object()
                        .bucket(SOURCE_BUCKET)
                        .key(key)
                        .content_type("application/octet-stream")
                        .metadata("bench", "2")
                        .body(vec![byte; usize::try_from(size)?].into())
                        .send()
                        .await
                        .with_context(|| format!("changing {key}"))?;
                }
            }
        }
        for &i in &self.removed {
            direct
                .delete_object()
                .bucket(SOURCE_BUCKET)
                .key(&keys[i])
                .send()
                .await
                .with_context(|| format!("removing {}", keys[i]))?;
        }
        Ok(())
    }
}

fn sum_of(counts: &Counts, ops: &[&str]) -> u64 {
    ops.iter().filter_map(|op| counts.get(op)).sum()
}

/// One run's figures.
#[derive(Debug, Clone)]
pub struct RunFigures {
    /// Wall seconds.
    pub seconds: f64,
    /// CPU seconds.
    pub cpu_s: f64,
    /// Peak RSS, bytes.
    pub peak_rss: u64,
    /// Requests by operation.
    pub requests: Counts,
}

impl RunFigures {
    /// The figures of a measured child and the requests it made.
    pub fn of(run: &Measured, requests: Counts) -> RunFigures {
        RunFigures {
            seconds: run.wall.as_secs_f64(),
            cpu_s: run.cpu.as_secs_f64(),
            peak_rss: run.peak_rss,
            requests,
        }
    }

    fn beyond_listing(&self) -> u64 {
        total(&self.requests) - sum_of(&self.requests, &LISTING_OPS)
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "seconds": self.seconds,
            "cpu_s": self.cpu_s,
            "peak_rss_mb": super::mb(self.peak_rss),
            "requests": total(&self.requests),
            "requests_beyond_listing": self.beyond_listing(),
            "requests_by_op": self.requests,
        })
    }
}

/// What the scenario measured, against issue 14's targets.
#[derive(Debug, Clone)]
pub struct IncrementalReport {
    /// Objects seeded for the plain run.
    pub objects: usize,
    /// The change between the versions.
    pub changes: ChangeSet,
    /// The plain (first) run.
    pub plain: RunFigures,
    /// The incremental run after the change.
    pub incremental: RunFigures,
    /// The run after that, with nothing changed.
    pub up_to_date: RunFigures,
}

impl IncrementalReport {
    /// The request budget of the incremental run: per-object requests of the plain run for
    /// the changed and added objects (× 1.05), plus the plain run's fixed requests and the
    /// base's reads.
    fn request_budget(&self) -> f64 {
        let per_object = sum_of(&self.plain.requests, &PER_OBJECT_OPS) as f64 / self.objects as f64;
        let fixed = self.plain.beyond_listing() - sum_of(&self.plain.requests, &PER_OBJECT_OPS);
        let copied = (self.changes.changed.len() + self.changes.added.len()) as f64;
        1.05 * per_object * copied + (fixed + BASE_READS) as f64
    }

    /// The printed section.
    pub fn print(&self) {
        let c = &self.changes;
        println!(
            "\nincremental: {} changed, {} added, {} removed of {} objects, then nothing changed",
            c.changed.len(),
            c.added.len(),
            c.removed.len(),
            self.objects
        );
        println!(
            "{:<26} {:>9} {:>10} {:>8} {:>12} {:>9} {:>15}",
            "", "wall s", "× plain", "CPU s", "peak RSS MB", "requests", "beyond listing"
        );
        for (name, run) in [
            ("plain (first) run", &self.plain),
            ("incremental run", &self.incremental),
            ("up-to-date run", &self.up_to_date),
        ] {
            println!(
                "{:<26} {:>9.2} {:>10.3} {:>8.2} {:>12.0} {:>9} {:>15}",
                name,
                run.seconds,
                run.seconds / self.plain.seconds,
                run.cpu_s,
                super::mb(run.peak_rss),
                total(&run.requests),
                run.beyond_listing()
            );
        }
        let met = |ok: bool| if ok { "met" } else { "NOT met" };
        let budget = self.request_budget();
        let beyond = self.incremental.beyond_listing() as f64;
        println!(
            "target: incremental requests beyond the listing ≤ {budget:.0} (1.05 × the plain run's per-object requests for the changed and added, + its fixed requests + {BASE_READS} base reads): {beyond:.0}, {}",
            met(beyond <= budget)
        );
        let wall = self.incremental.seconds / self.plain.seconds;
        println!(
            "target: incremental wall ≤ 10 % of the plain run's: {:.1} %, {}",
            wall * 100.0,
            met(wall <= 0.10)
        );
        let rss = self.incremental.peak_rss as f64 / self.plain.peak_rss as f64;
        println!(
            "target: incremental peak RSS ≤ 1.5 × the plain run's: {rss:.2} ×, {}",
            met(rss <= 1.5)
        );
        let writes = |op: &str| self.up_to_date.requests.get(op).copied().unwrap_or(0);
        let (copies, heads, puts) = (
            writes("CopyObject"),
            writes("HeadObject"),
            writes("PutObject"),
        );
        // The one HEAD an unchanged run may make is of the registry's workflow config.
        println!(
            "target: up to date, CopyObject 0, HeadObject ≤ 1 (the workflow config), PutObject ≤ 1 (the staging plan): {copies}, {heads}, {puts}, {}",
            met(copies == 0 && heads <= 1 && puts <= 1)
        );
    }

    /// The JSON of `--json`.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "objects": self.objects,
            "changed": self.changes.changed.len(),
            "added": self.changes.added.len(),
            "removed": self.changes.removed.len(),
            "plain": self.plain.to_json(),
            "incremental": self.incremental.to_json(),
            "up_to_date": self.up_to_date.to_json(),
            "request_budget": self.request_budget(),
            "wall_over_plain": self.incremental.seconds / self.plain.seconds,
            "peak_rss_over_plain": self.incremental.peak_rss as f64 / self.plain.peak_rss as f64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_one_percent_and_half_a_percent_and_disjoint() {
        let c = ChangeSet::choose(10_000).unwrap();
        assert_eq!(c.changed.len(), 100);
        assert_eq!(c.removed.len(), 50);
        assert_eq!(c.added.len(), 50);
        assert!(c.removed.iter().all(|i| !c.changed.contains(i)));
        assert_eq!(c.objects_after(10_000), 10_000);
        assert_eq!(c, ChangeSet::choose(10_000).unwrap());
    }

    #[test]
    fn small_datasets_change_at_least_one_of_each() {
        let c = ChangeSet::choose(4).unwrap();
        assert_eq!((c.changed.len(), c.removed.len(), c.added.len()), (1, 1, 1));
        assert!(c.removed.iter().all(|i| !c.changed.contains(i) && *i < 4));
        assert!(ChangeSet::choose(3).is_err());
    }
}
