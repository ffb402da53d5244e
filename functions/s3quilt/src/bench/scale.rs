//! `bench --finalizer N,..` and `bench --planner N,..`: the AWS steps' peak memory, wall and
//! CPU time at scale, each step as a process of its own.
//!
//! The finalizer (`s3quilt runs finalize`, what the finalizer Lambda runs): each run is planned for real in the in-memory S3 (one tiny source object per shard,
//! `copy: false`), then every shard's fragment is replaced by [`ENTRIES_PER_SHARD`] synthetic
//! entries with `meta` shaped like a real entry's (an `s3` record and a little user metadata):
//! what a 100 k- to 10 M-object run leaves in staging, without seeding or copying millions of
//! objects. The in-memory S3 holds the fragments and the manifest (both in the bench process,
//! not the measured one); latency 0, so the figures are the finalizer's own work.
//!
//! The planner (`s3quilt plan`, a dry run: listing, selection and every check before the
//! shards are written): N objects inserted straight into the in-memory S3 (no requests), under
//! 16 × 64 folders as a real dataset spreads its keys.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use futures::StreamExt;
use s3quilt_core::plan::{PlanOptions, plan};
use s3quilt_core::quilt::HashType;
use s3quilt_core::request::PackageRequest;
use s3quilt_core::staging::{FragmentEntry, ManifestFragment, Staging};
use s3quilt_core::storage::{ObjectStore, S3Store};
use serde_json::json;

use super::memory::MemoryServer;
use super::tools::{Measured, run_measured};
use super::{ACCESS_KEY, SECRET_KEY, apply_env, blocking, client, mb};

/// Entries per shard: the AWS planner's default shard size (`S3QUILT_SHARD_MAX_OBJECTS`).
pub const ENTRIES_PER_SHARD: u64 = 500;

/// One measured step.
struct StepRow {
    entries: u64,
    fragments: u64,
    manifest_bytes: u64,
    wall_s: f64,
    cpu_s: f64,
    peak_rss: u64,
}

/// Measures the finalizer for each size in `finalizer` and the planner for each in `planner`,
/// and prints their tables (and a JSON line last with `json`).
pub async fn run(finalizer: &[u64], planner: &[u64], json: bool) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("s3quilt-bench-scale-")
        .tempdir()?;
    let exe = std::env::current_exe()?;
    let finalized = finalizer_rows(&exe, dir.path(), finalizer).await?;
    let planned = planner_rows(&exe, dir.path(), planner).await?;
    for (title, rows, unit) in [
        ("finalizer (s3quilt runs finalize)", &finalized, "manifest"),
        ("planner (s3quilt plan, dry run)", &planned, "keys"),
    ] {
        if rows.is_empty() {
            continue;
        }
        println!("{title}, in-memory S3, latency 0");
        println!(
            "| objects | documents | {unit} MB | wall s | CPU s | peak RSS MB | RSS ÷ {unit} |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|");
        for r in rows {
            println!(
                "| {} | {} | {:.1} | {:.2} | {:.2} | {:.1} | {:.3} |",
                r.entries,
                r.fragments,
                mb(r.manifest_bytes),
                r.wall_s,
                r.cpu_s,
                mb(r.peak_rss),
                r.peak_rss as f64 / r.manifest_bytes.max(1) as f64,
            );
        }
    }
    if json {
        let rows = |rows: &[StepRow]| -> Vec<serde_json::Value> {
            rows.iter()
                .map(|r| {
                    json!({
                        "objects": r.entries,
                        "documents": r.fragments,
                        "data_bytes": r.manifest_bytes,
                        "wall_s": r.wall_s,
                        "cpu_s": r.cpu_s,
                        "peak_rss_bytes": r.peak_rss,
                    })
                })
                .collect()
        };
        println!(
            "{}",
            json!({ "finalizer": rows(&finalized), "planner": rows(&planned) })
        );
    }
    Ok(())
}

/// Runs `s3quilt ARGS --endpoint-url ENDPOINT --json` as a measured child and reads the JSON
/// it prints.
async fn measured_json(
    exe: &std::path::Path,
    dir: &std::path::Path,
    endpoint: &str,
    args: &[&str],
) -> anyhow::Result<(Measured, serde_json::Value)> {
    let what = format!("s3quilt {}", args[..2].join(" "));
    let mut cmd = std::process::Command::new(exe);
    cmd.args(args).args(["--endpoint-url", endpoint, "--json"]);
    apply_env(&mut cmd, endpoint, dir);
    let label = what.clone();
    let run = blocking(move || run_measured(cmd, &label)).await?;
    let outcome = serde_json::from_str(&run.stdout)
        .with_context(|| format!("{what} printed no JSON:\n{}", run.stdout))?;
    Ok((run, outcome))
}

/// The finalizer of a staged run of each size.
async fn finalizer_rows(
    exe: &std::path::Path,
    dir: &std::path::Path,
    sizes: &[u64],
) -> anyhow::Result<Vec<StepRow>> {
    let mut rows = Vec::new();
    for &entries in sizes {
        // A fresh store per size: the last size's fragments and manifest are freed.
        let server = MemoryServer::start(std::time::Duration::ZERO, ACCESS_KEY, SECRET_KEY)?;
        let endpoint = server.direct_endpoint();
        let (registry, run_id) = stage(&endpoint, entries).await?;
        eprintln!("bench: finalizing {entries} entries");
        let (run, outcome) = measured_json(
            exe,
            dir,
            &endpoint,
            &[
                "runs",
                "finalize",
                &run_id,
                "--registry",
                &format!("s3://{registry}"),
            ],
        )
        .await?;
        if outcome["package"]["objects"].as_u64() != Some(entries) {
            bail!(
                "the finalizer did not publish {entries} entries:\n{}",
                run.stdout
            );
        }
        let top_hash = outcome["package"]["top_hash"].as_str().unwrap_or_default();
        let manifest = client(&endpoint)
            .head_object()
            .bucket(&registry)
            .key(format!(".quilt/packages/{top_hash}"))
            .send()
            .await
            .context("reading the manifest's size")?;
        rows.push(StepRow {
            entries,
            fragments: entries.div_ceil(ENTRIES_PER_SHARD),
            manifest_bytes: u64::try_from(manifest.content_length().unwrap_or(0)).unwrap_or(0),
            wall_s: run.wall.as_secs_f64(),
            cpu_s: run.cpu.as_secs_f64(),
            peak_rss: run.peak_rss,
        });
    }
    Ok(rows)
}

/// The planner over a prefix of each size.
async fn planner_rows(
    exe: &std::path::Path,
    dir: &std::path::Path,
    sizes: &[u64],
) -> anyhow::Result<Vec<StepRow>> {
    let (source, registry) = ("bench-planner-src", "bench-planner-reg");
    let mut rows = Vec::new();
    for &objects in sizes {
        let server = MemoryServer::start(std::time::Duration::ZERO, ACCESS_KEY, SECRET_KEY)?;
        let endpoint = server.direct_endpoint();
        let direct = client(&endpoint);
        for bucket in [source, registry] {
            direct.create_bucket().bucket(bucket).send().await?;
        }
        let mut key_bytes = 0;
        for i in 0..objects {
            let key = format!(
                "data/region-{:02}/day-{:02}/object-{i:010}.parquet",
                i % 16,
                (i / 16) % 64
            );
            key_bytes += key.len() as u64;
            server
                .store
                .insert_fill(source, &key, 0, 1024, "application/octet-stream");
        }
        eprintln!("bench: planning {objects} objects");
        let (run, outcome) = measured_json(
            exe,
            dir,
            &endpoint,
            &[
                "plan",
                &format!("s3://{source}/data/"),
                "bench/planner",
                "--registry",
                &format!("s3://{registry}"),
            ],
        )
        .await?;
        if outcome["objects"].as_u64() != Some(objects) {
            bail!(
                "the planner did not select {objects} objects:\n{}",
                run.stdout
            );
        }
        rows.push(StepRow {
            entries: objects,
            fragments: objects.div_ceil(1000),
            manifest_bytes: key_bytes,
            wall_s: run.wall.as_secs_f64(),
            cpu_s: run.cpu.as_secs_f64(),
            peak_rss: run.peak_rss,
        });
    }
    Ok(rows)
}

/// Plans a run of `entries / ENTRIES_PER_SHARD` shards and stages its synthetic fragments;
/// returns the registry bucket and the run id.
async fn stage(endpoint: &str, entries: u64) -> anyhow::Result<(String, String)> {
    let (source, registry) = ("bench-finalizer-src", "bench-finalizer-reg");
    let direct = client(endpoint);
    for bucket in [source, registry] {
        direct.create_bucket().bucket(bucket).send().await?;
    }
    let shards = entries.div_ceil(ENTRIES_PER_SHARD);
    let started = Instant::now();
    let mut puts = futures::stream::iter((0..shards).map(|s| {
        let direct = direct.clone();
        async move {
            direct
                .put_object()
                .bucket(source)
                .key(format!("data/{s:07}.bin"))
                .body(b"x".to_vec().into())
                .send()
                .await
                .with_context(|| format!("seeding source object {s}"))?;
            anyhow::Ok(())
        }
    }))
    .buffer_unordered(32);
    while let Some(r) = puts.next().await {
        r?;
    }
    let store: Arc<dyn ObjectStore> = S3Store::shared(direct.clone());
    let mut request = PackageRequest::new(source, "data", "bench/finalizer", registry);
    request.copy = false;
    let options = PlanOptions {
        shard_max_objects: 1,
        ..PlanOptions::default()
    };
    let planned = plan(store.clone(), &request, &options).await?;
    let run_id = planned
        .run
        .as_ref()
        .context("the plan staged no run")?
        .run_id
        .clone();
    let staging = Staging::new(store.clone(), registry, &run_id);
    let mut run = staging.plan().await?;
    let mut writes = futures::stream::iter((0..shards).map(|s| {
        let staging = staging.clone();
        async move {
            let first = s * ENTRIES_PER_SHARD;
            let last = (first + ENTRIES_PER_SHARD).min(entries);
            let fragment = ManifestFragment {
                shard: u32::try_from(s)?,
                entries: (first..last).map(|i| synthetic_entry(s, i)).collect(),
                created: Vec::new(),
                attempt: String::new(),
            };
            staging
                .put(&staging.fragment_key(u32::try_from(s)?), &fragment)
                .await?;
            anyhow::Ok(())
        }
    }))
    .buffer_unordered(16);
    while let Some(r) = writes.next().await {
        r?;
    }
    run.objects = entries;
    run.bytes = entries * 1_048_576;
    staging.put(&staging.plan_key(), &run).await?;
    eprintln!(
        "bench: staged {entries} entries in {shards} fragments in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok((registry.to_string(), run_id))
}

/// Entry `i` of shard `s`: keys in walk order by shard, `meta` as a copied object's.
fn synthetic_entry(s: u64, i: u64) -> FragmentEntry {
    let key = format!("dataset/part-{s:07}/object-{i:010}.parquet");
    FragmentEntry {
        logical_key: key.parse().expect("a valid logical key"),
        physical_key: format!(
            "s3://bench-finalizer-reg/bench/finalizer/{key}?versionId=3HL4kqtJlcpXroDTDmJ{i:013}"
        ),
        size: 1_048_576,
        hash_type: HashType::Sha2_256Chunked,
        hash_value: format!("{:044}", i),
        meta: format!(
            r#"{{"s3": {{"content_type": "application/vnd.apache.parquet", "etag": "\"{i:032x}\"", "last_modified": "2026-12-01T08:00:00Z", "metadata": {{"pipeline": "nightly", "owner": "data-eng"}}, "version_id": "3HL4kqtJlcpXroDTDmJ{i:013}"}}}}"#
        ),
    }
}
