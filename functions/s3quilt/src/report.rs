//! Running the engine with a progress bar, and printing what it produced.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use s3quilt_core::engine::{
    EngineOptions, Phase, Progress, ProgressSnapshot, RunOutcome, run_local,
};
use s3quilt_core::plan::{PlanSummary, RequestEstimate};
use s3quilt_core::request::PackageRequest;
use s3quilt_core::storage::ObjectStore;

const TICK: Duration = Duration::from_millis(100);

/// Runs `request` with [`run_local`], drawing a progress bar on stderr when it is a terminal.
pub async fn run_with_progress(
    store: Arc<dyn ObjectStore>,
    request: &PackageRequest,
    options: &EngineOptions,
) -> anyhow::Result<RunOutcome> {
    let progress = Progress::new();
    let bar = ProgressView::new();
    let ticker = bar.as_ref().map(|view| {
        let (mut view, progress) = (view.clone(), progress.clone());
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(TICK);
            loop {
                interval.tick().await;
                view.show(progress.snapshot());
            }
        })
    });
    let result = run_local(store, request, options, progress.clone()).await;
    if let Some(ticker) = ticker {
        ticker.abort();
    }
    if let Some(view) = bar {
        view.bar.finish_and_clear();
    }
    Ok(result?)
}

/// The bar on stderr: a spinner while planning (totals unknown), then objects, bytes, rate
/// and ETA.
#[derive(Clone)]
struct ProgressView {
    bar: ProgressBar,
    copying: bool,
}

impl ProgressView {
    /// `None` when stderr is not a terminal: nothing is drawn.
    fn new() -> Option<Self> {
        if !std::io::stderr().is_terminal() {
            return None;
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(Self::style("{spinner} {msg} ({elapsed})"));
        Some(ProgressView {
            bar,
            copying: false,
        })
    }

    fn style(template: &str) -> ProgressStyle {
        ProgressStyle::with_template(template)
            .expect("valid progress template")
            .progress_chars("=> ")
    }

    fn show(&mut self, snapshot: ProgressSnapshot) {
        self.bar.set_message(progress_message(&snapshot));
        if !self.copying && snapshot.phase != Phase::Planning {
            self.copying = true;
            self.bar.set_style(Self::style(
                "{spinner} {msg} [{wide_bar}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
            ));
            self.bar.set_length(snapshot.bytes_total);
            self.bar.reset_eta();
        }
        self.bar.set_position(snapshot.bytes_done);
    }
}

/// The text beside the bar: phase and object counts.
pub fn progress_message(s: &ProgressSnapshot) -> String {
    let phase = match s.phase {
        Phase::Planning => return "planning: listing and selecting".to_string(),
        Phase::Copying => "copying",
        Phase::Finalizing => "finalizing",
        Phase::RollingBack => "rolling back",
        Phase::Succeeded => "done",
        Phase::Failed => "failed",
    };
    format!("{phase} {}/{} objects", s.objects_done, s.objects_total)
}

/// Prints the outcome: one JSON document, or text.
pub fn print_outcome(outcome: &RunOutcome, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(outcome)?);
    } else {
        print!("{}", outcome_text(outcome));
    }
    Ok(())
}

/// The text form of an outcome.
pub fn outcome_text(outcome: &RunOutcome) -> String {
    match outcome {
        RunOutcome::Planned(plan) => plan_text(plan),
        RunOutcome::UpToDate(plan) => {
            let base = plan.incremental.as_ref().map_or("", |i| i.base.as_str());
            let mut out = format!(
                "Up to date: {} has not changed since its version {base}; no version was written\n",
                plan.package_name
            );
            out += &format!("  registry:  {}\n", plan.registry);
            out += &format!("  source:    {}\n", plan.source);
            out += &format!("  objects:   {} ({})\n", plan.objects, bytes(plan.bytes));
            out += "  (--publish-unchanged writes a new version anyway; --full packages everything again)\n";
            out += &skipped_data_text(plan);
            out
        }
        RunOutcome::Created { plan, package } => {
            let mut out = format!("Created {}\n", package.package_name);
            out += &format!("  top hash:  {}\n", package.top_hash);
            out += &format!("  registry:  {}\n", package.registry);
            out += &format!(
                "  objects:   {} ({})\n",
                package.objects,
                bytes(package.bytes)
            );
            out += &format!("  source:    {}\n", plan.source);
            if plan.copy {
                out += &format!(
                    "  copies in: s3://{}/{}/\n",
                    plan.target_bucket, package.package_name
                );
            } else {
                out += "  objects referenced in place (not copied)\n";
            }
            if package.manifest_replaced {
                out += "  manifest replaced: an earlier version had the same top hash (the same content) with its entries elsewhere; this version's entries stand, and that version now reads them too\n";
            }
            out += &incremental_text(plan);
            out += &skipped_data_text(plan);
            out += &format!("  browse:    {}\n", package.browse);
            out
        }
    }
}

fn plan_text(plan: &PlanSummary) -> String {
    let mut out = format!(
        "Plan for {} in {} (dry run: nothing was written)\n",
        plan.package_name, plan.registry
    );
    out += &format!("  source:    {}\n", plan.source);
    if plan.copy {
        out += &format!(
            "  copies to: s3://{}/{}/\n",
            plan.target_bucket, plan.package_name
        );
    } else {
        out += "  objects referenced in place (not copied)\n";
    }
    out += &format!("  objects:   {} ({})\n", plan.objects, bytes(plan.bytes));
    out += &format!(
        "  listed:    {} ({} folder markers skipped, {} not matched by --include, {} removed by --exclude)\n",
        plan.listed, plan.folder_markers, plan.not_included, plan.excluded
    );
    for m in &plan.pattern_matches {
        out += &format!("    {} {:?}: {} keys\n", m.field, m.pattern, m.keys);
    }
    for warning in &plan.warnings {
        out += &format!("  warning:   {warning}\n");
    }
    out += &incremental_text(plan);
    out += &skipped_data_text(plan);
    out += &format!("  shards:    {}\n", plan.shards);
    out += &format!(
        "  estimated S3 requests: {}\n",
        estimate_text(&plan.estimated_requests)
    );
    out += &format!("  first {} logical keys:\n", plan.sample_logical_keys.len());
    for key in &plan.sample_logical_keys {
        out += &format!("    {key}\n");
    }
    out
}

/// What an incremental run reuses of its base and what it copies (nothing for a full run).
fn incremental_text(plan: &PlanSummary) -> String {
    let Some(i) = &plan.incremental else {
        return String::new();
    };
    let tally = |t: &s3quilt_core::reuse::Tally| format!("{} ({})", t.objects, HumanBytes(t.bytes));
    let mut out = format!("  base:      {}\n", i.base);
    out += &format!(
        "  reused:    {} unchanged; copied: {} changed, {} new; removed: {}\n",
        tally(&i.reused),
        tally(&i.changed),
        tally(&i.added),
        tally(&i.removed)
    );
    if let Some(verified) = i.verified {
        out += &format!(
            "  verified:  {verified} reused entries, {} of them gone (copied again)\n",
            i.missing.len()
        );
        for key in &i.missing {
            out += &format!("    gone: {key}\n");
        }
    }
    if i.up_to_date && !plan.dry_run {
        out += "  nothing changed: a new version was published as asked (--publish-unchanged)\n";
    } else if i.up_to_date {
        out += "  nothing changed: no version would be written\n";
    }
    out
}

/// A warning line per key ending in `/` that holds data (skipped, as quilt3 skips them).
fn skipped_data_text(plan: &PlanSummary) -> String {
    plan.non_empty_folder_markers
        .iter()
        .map(|key| {
            format!("  warning:   {key:?} ends in '/' but holds data; skipped (a logical key cannot end in '/')\n")
        })
        .collect()
}

fn estimate_text(e: &RequestEstimate) -> String {
    let total =
        e.list + e.head + e.copy_object + e.upload_part_copy + e.multipart_control + e.put + e.get;
    format!(
        "{total} ({} list, {} head, {} copy, {} upload-part-copy, {} multipart create/complete, {} put, {} get)",
        e.list, e.head, e.copy_object, e.upload_part_copy, e.multipart_control, e.put, e.get
    )
}

fn bytes(n: u64) -> String {
    format!("{n} bytes, {}", HumanBytes(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary() -> PlanSummary {
        PlanSummary {
            run_id: None,
            package_name: "team/pkg".into(),
            registry: "s3://reg".into(),
            target_bucket: "reg".into(),
            source: "s3://src/data/".into(),
            objects: 2,
            bytes: 3 * 1024 * 1024,
            shards: 1,
            listed: 4,
            folder_markers: 1,
            non_empty_folder_markers: vec!["data/notes/".into()],
            not_included: 1,
            excluded: 0,
            pattern_matches: Vec::new(),
            warnings: Vec::new(),
            sample_logical_keys: vec!["a.csv".into(), "b/c.json".into()],
            estimated_requests: RequestEstimate {
                list: 1,
                head: 2,
                copy_object: 2,
                upload_part_copy: 0,
                multipart_control: 0,
                put: 7,
                get: 0,
            },
            copy: true,
            dry_run: true,
            incremental: None,
        }
    }

    #[test]
    fn incremental_runs_say_what_they_reuse_and_an_unchanged_one_says_so() {
        let mut plan = summary();
        plan.incremental = Some(s3quilt_core::reuse::IncrementalSummary {
            base: "ab".repeat(32),
            reused: s3quilt_core::reuse::Tally {
                objects: 1,
                bytes: 2048,
            },
            added: s3quilt_core::reuse::Tally {
                objects: 1,
                bytes: 10,
            },
            ..Default::default()
        });
        let text = outcome_text(&RunOutcome::Planned(plan.clone()));
        assert!(
            text.contains(&format!("base:      {}", "ab".repeat(32))),
            "{text}"
        );
        assert!(
            text.contains("reused:    1 (2.00 KiB) unchanged; copied: 0 (0 B) changed, 1 (10 B) new; removed: 0 (0 B)"),
            "{text}"
        );
        plan.dry_run = false;
        plan.incremental.as_mut().unwrap().up_to_date = true;
        let text = outcome_text(&RunOutcome::UpToDate(plan));
        assert!(
            text.starts_with("Up to date: team/pkg has not changed since its version abab"),
            "{text}"
        );
    }

    #[test]
    fn plan_text_has_counts_shards_keys_and_estimate() {
        let text = outcome_text(&RunOutcome::Planned(summary()));
        for needle in [
            "team/pkg",
            "s3://reg",
            "objects:   2 (3145728 bytes, 3.00 MiB)",
            "shards:    1",
            "    b/c.json",
            "12 (1 list, 2 head, 2 copy",
            "warning:   \"data/notes/\" ends in '/' but holds data; skipped",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from\n{text}");
        }
    }

    #[test]
    fn progress_messages() {
        let mut s = ProgressSnapshot {
            phase: Phase::Planning,
            objects_total: 0,
            bytes_total: 0,
            objects_done: 0,
            bytes_done: 0,
        };
        assert!(progress_message(&s).starts_with("planning"));
        s.phase = Phase::Copying;
        s.objects_total = 12;
        s.objects_done = 5;
        assert_eq!(progress_message(&s), "copying 5/12 objects");
    }
}
