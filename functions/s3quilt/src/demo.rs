//! `s3quilt demo`: an embedded S3 server in a temporary directory, a small seeded dataset, and
//! one `create` run against it — no AWS account, network or configuration needed.

use std::path::{Path, PathBuf};

use anyhow::Context;
use aws_sdk_s3::config::Credentials;
use aws_sdk_s3::primitives::ByteStream;
use s3quilt_core::engine::{EngineOptions, RunOutcome};
use s3quilt_core::request::PackageRequest;
use s3quilt_core::storage::{S3Settings, S3Store};

use crate::cli::DemoArgs;
use crate::demo_server::{DEMO_ACCESS_KEY, DEMO_SECRET_KEY, DemoServer};
use crate::report::{print_outcome, run_with_progress};

/// Bucket holding the sample dataset.
pub const SOURCE_BUCKET: &str = "demo-source";
/// Registry bucket the package is written to.
pub const REGISTRY_BUCKET: &str = "demo-registry";
/// The demo package.
pub const PACKAGE: &str = "demo/sample";

/// One object of the sample dataset.
#[derive(Debug, Clone)]
pub struct SampleObject {
    /// Key.
    pub key: &'static str,
    /// Content.
    pub body: Vec<u8>,
    /// Content-Type.
    pub content_type: Option<&'static str>,
    /// `x-amz-meta-*` user metadata.
    pub metadata: Vec<(&'static str, &'static str)>,
}

/// Size of the large object: over 8 MiB, so it is copied with UploadPartCopy (2 parts).
pub const LARGE_OBJECT_BYTES: usize = 9 * 1024 * 1024 + 4321;

/// Deterministic pseudo-random bytes (xorshift), so the demo's hashes are the same every run.
fn pseudo_random(len: usize, mut state: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The sample dataset: nested folders, CSV, JSON, a key with a space and unicode, an empty
/// object, an object over 8 MiB, content types and user metadata.
pub fn sample_objects() -> Vec<SampleObject> {
    let obj = |key, body: &[u8], content_type, metadata| SampleObject {
        key,
        body: body.to_vec(),
        content_type,
        metadata,
    };
    let csv = |year: u32| {
        let mut text = String::from("station,date,temperature_c\n");
        for day in 1..=31 {
            text.push_str(&format!(
                "north-{},{year}-01-{day:02},{:.1}\n",
                day % 3,
                -4.0 + f64::from(day) * 0.37
            ));
        }
        text.into_bytes()
    };
    vec![
        obj(
            "README.md",
            b"# Demo dataset\n\nWeather readings, reports and images, seeded by `s3quilt demo`.\n",
            Some("text/markdown"),
            vec![("author", "s3quilt demo")],
        ),
        obj("data/2024/readings.csv", &csv(2024), Some("text/csv"), vec![("station", "north"), ("year", "2024")]),
        obj("data/2025/readings.csv", &csv(2025), Some("text/csv"), vec![("station", "north"), ("year", "2025")]),
        obj(
            "data/2025/summary.json",
            br#"{"stations": 3, "days": 31, "mean_temperature_c": 1.92, "units": {"temperature": "celsius"}}"#,
            Some("application/json"),
            vec![],
        ),
        obj("data/stations.json", br#"[{"id": "north-0"}, {"id": "north-1"}, {"id": "north-2"}]"#, Some("application/json"), vec![]),
        obj(
            "reports/Résumé final 2025.txt",
            "Résumé: a cold January; the northern stations agree within 0.4 °C.\n".as_bytes(),
            Some("text/plain; charset=utf-8"),
            vec![("reviewed-by", "demo-team")],
        ),
        obj("reports/drafts/notes.txt", b"draft notes, not for publication\n", Some("text/plain"), vec![]),
        obj(
            "images/logo.svg",
            br#"<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16"><circle cx="8" cy="8" r="7" fill="teal"/></svg>"#,
            Some("image/svg+xml"),
            vec![],
        ),
        obj("logs/empty.log", b"", Some("text/plain"), vec![("note", "intentionally empty")]),
        obj("config/settings.yaml", b"sampling_interval_s: 600\nstations: [north-0, north-1, north-2]\n", Some("application/yaml"), vec![]),
        obj("docs/nested/deep/path/info.txt", b"Five folders deep.\n", None, vec![]),
        SampleObject {
            key: "raw/large-sensor-dump.bin",
            body: pseudo_random(LARGE_OBJECT_BYTES, 0x5eed_2025),
            content_type: Some("application/octet-stream"),
            metadata: vec![("format", "raw"), ("sensor", "north-0")],
        },
    ]
}

/// Creates the buckets and uploads the sample dataset.
async fn seed(client: &aws_sdk_s3::Client, objects: &[SampleObject]) -> anyhow::Result<()> {
    for bucket in [SOURCE_BUCKET, REGISTRY_BUCKET] {
        client
            .create_bucket()
            .bucket(bucket)
            .send()
            .await
            .with_context(|| format!("creating bucket {bucket}"))?;
    }
    for object in objects {
        client
            .put_object()
            .bucket(SOURCE_BUCKET)
            .key(object.key)
            .body(ByteStream::from(object.body.clone()))
            .set_content_type(object.content_type.map(str::to_string))
            .set_metadata((!object.metadata.is_empty()).then(|| {
                object
                    .metadata
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            }))
            .send()
            .await
            .with_context(|| format!("uploading s3://{SOURCE_BUCKET}/{}", object.key))?;
    }
    Ok(())
}

/// An S3 client for the demo server: its endpoint, path-style, the demo keys — nothing from
/// the environment's AWS configuration decides where it connects or how it signs.
async fn demo_client(endpoint: &str) -> aws_sdk_s3::Client {
    let settings = S3Settings {
        endpoint_url: Some(endpoint.to_string()),
        region: Some("us-east-1".to_string()),
        force_path_style: Some(true),
        ..S3Settings::default()
    };
    let config = settings.sdk_config().await;
    let s3_config = aws_sdk_s3::config::Builder::from(&config)
        .credentials_provider(Credentials::new(
            DEMO_ACCESS_KEY,
            DEMO_SECRET_KEY,
            None,
            None,
            "s3quilt-demo",
        ))
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(s3_config)
}

/// The demo's request.
pub fn demo_request() -> PackageRequest {
    let mut request = PackageRequest::new(
        SOURCE_BUCKET,
        "",
        PACKAGE,
        &format!("s3://{REGISTRY_BUCKET}"),
    );
    request.description = Some("Sample dataset packaged by `s3quilt demo`".to_string());
    request.metadata = Some(serde_json::json!({"source": "s3quilt demo", "license": "CC0-1.0"}));
    request
}

/// Runs the demo.
pub async fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("s3quilt-demo-")
        .tempdir()
        .context("creating a temporary directory")?;
    let root = dir.path().to_path_buf();
    let result = run_in(&root, args).await;
    if args.keep {
        let kept = dir.keep();
        eprintln!("kept the demo buckets in {}", kept.display());
    } else if let Err(e) = dir.close() {
        tracing::warn!(dir = %root.display(), error = %e, "could not remove the demo directory");
    }
    result
}

async fn run_in(root: &Path, args: &DemoArgs) -> anyhow::Result<()> {
    let server = DemoServer::start(root).await?;
    let result = package(root, &server, args).await;
    if result.is_ok() && args.serve {
        eprintln!(
            "serving {} at {}; press Ctrl-C to stop",
            root.display(),
            server.endpoint
        );
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot wait for Ctrl-C; stopping the demo server");
        }
    }
    server.stop().await;
    result
}

async fn package(root: &Path, server: &DemoServer, args: &DemoArgs) -> anyhow::Result<()> {
    let client = demo_client(&server.endpoint).await;
    let objects = sample_objects();
    seed(&client, &objects)
        .await
        .context("seeding the demo dataset")?;
    tracing::info!(objects = objects.len(), endpoint = %server.endpoint, "seeded the demo dataset");
    if !args.json {
        println!(
            "Demo S3 server at {} serving {}",
            server.endpoint,
            root.display()
        );
        println!(
            "Seeded s3://{SOURCE_BUCKET} with {} objects; packaging it as {PACKAGE}…\n",
            objects.len()
        );
    }
    let request = demo_request();
    let outcome =
        run_with_progress(S3Store::shared(client), &request, &EngineOptions::default()).await?;
    print_outcome(&outcome, args.json)?;
    if !args.json
        && let RunOutcome::Created { package, .. } = &outcome
    {
        print_browse_hints(root, server, &package.package_name, &package.top_hash, args);
    }
    Ok(())
}

fn print_browse_hints(
    root: &Path,
    server: &DemoServer,
    name: &str,
    top_hash: &str,
    args: &DemoArgs,
) {
    let registry_dir: PathBuf = root.join(REGISTRY_BUCKET);
    let manifest = registry_dir.join(".quilt").join("packages").join(top_hash);
    println!();
    println!("Registry on disk:  {}", registry_dir.display());
    println!("Manifest:          {}", manifest.display());
    println!("Package files:     {}", registry_dir.join(name).display());
    println!();
    if args.serve {
        println!("Browse it with quilt3 now (the keys are the demo server's fixed test keys):");
    } else {
        println!(
            "Browse it with quilt3 while a demo server runs (`s3quilt demo --serve` keeps one running; \
             the keys are its fixed test keys):"
        );
    }
    println!(
        "  AWS_ENDPOINT_URL={} AWS_ACCESS_KEY_ID={DEMO_ACCESS_KEY} AWS_SECRET_ACCESS_KEY={DEMO_SECRET_KEY} \\\n    \
         python -c \"import quilt3; print(quilt3.Package.browse('{name}', registry='s3://{REGISTRY_BUCKET}', top_hash='{top_hash}'))\"",
        server.endpoint
    );
    if args.keep {
        println!("or, without a server, from the kept directory:");
        println!(
            "  python -c \"import quilt3; print(quilt3.Package.browse('{name}', registry='{}', top_hash='{top_hash}'))\"",
            file_url(&registry_dir)
        );
    } else if !args.serve {
        println!("(the temporary directory is removed now; pass --keep to keep it)");
    }
}

fn file_url(path: &Path) -> String {
    format!("file://{}", path.display())
}

#[cfg(test)]
mod tests {
    use super::*;
    use s3quilt_core::select::logical_key;

    #[test]
    fn sample_dataset_covers_the_interesting_cases() {
        let objects = sample_objects();
        assert!((10..=14).contains(&objects.len()));
        assert!(objects.iter().any(|o| o.body.is_empty()));
        assert!(objects.iter().any(|o| o.body.len() > 8 * 1024 * 1024));
        assert!(
            objects
                .iter()
                .any(|o| o.key.contains(' ') && !o.key.is_ascii())
        );
        assert!(objects.iter().any(|o| o.key.matches('/').count() >= 4));
        assert!(
            objects.iter().any(|o| o.key.ends_with(".csv"))
                && objects.iter().any(|o| o.key.ends_with(".json"))
        );
        assert!(
            objects
                .iter()
                .any(|o| !o.metadata.is_empty() && o.content_type.is_some())
        );
        for o in &objects {
            logical_key(o.key, false).unwrap_or_else(|e| panic!("{}: {e}", o.key));
        }
        assert_eq!(pseudo_random(100, 7), pseudo_random(100, 7));
        demo_request().validate().unwrap();
    }

    /// The demo's pieces end to end: the embedded server, seeding, a dry run, a run, a second
    /// run that finds nothing changed, and a full run refused because the copies exist (bad
    /// input, exit code 2).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn demo_server_packages_the_sample() {
        let dir = tempfile::tempdir().unwrap();
        let server = DemoServer::start(dir.path()).await.unwrap();
        let client = demo_client(&server.endpoint).await;
        let objects = sample_objects();
        seed(&client, &objects).await.unwrap();
        let store = S3Store::shared(client.clone());
        let options = EngineOptions::default();

        let mut dry = demo_request();
        dry.dry_run = true;
        let RunOutcome::Planned(plan) = run_with_progress(store.clone(), &dry, &options)
            .await
            .unwrap()
        else {
            panic!("a dry run plans");
        };
        assert_eq!(plan.objects, objects.len() as u64);
        assert_eq!(
            plan.estimated_requests.upload_part_copy, 2,
            "the 9 MiB object is copied in 2 parts"
        );
        assert!(
            !dir.path().join(REGISTRY_BUCKET).join(".quilt").exists(),
            "a dry run writes nothing"
        );

        let outcome = run_with_progress(store.clone(), &demo_request(), &options)
            .await
            .unwrap();
        let RunOutcome::Created { package, .. } = outcome else {
            panic!("a run creates")
        };
        assert_eq!(package.objects, objects.len() as u64);
        assert_eq!(
            package.bytes,
            objects.iter().map(|o| o.body.len() as u64).sum::<u64>()
        );
        let registry = dir.path().join(REGISTRY_BUCKET);
        let manifest =
            std::fs::read_to_string(registry.join(".quilt/packages").join(&package.top_hash))
                .unwrap();
        assert_eq!(
            manifest.lines().count(),
            objects.len() + 1,
            "header + one line per object"
        );
        let latest =
            std::fs::read_to_string(registry.join(".quilt/named_packages/demo/sample/latest"))
                .unwrap();
        assert_eq!(latest.trim(), package.top_hash);
        for object in &objects {
            let copy = std::fs::read(registry.join(PACKAGE).join(object.key)).unwrap();
            assert!(copy == object.body, "{} copied byte for byte", object.key);
        }
        let staging = client
            .list_objects_v2()
            .bucket(REGISTRY_BUCKET)
            .prefix(".s3quilt/runs/")
            .send()
            .await
            .unwrap();
        assert!(staging.contents().is_empty(), "staging removed");
        let versioning = client
            .get_bucket_versioning()
            .bucket(REGISTRY_BUCKET)
            .send()
            .await
            .unwrap();
        assert!(versioning.status().is_none());

        // The same run again starts from that version: nothing changed, nothing is written.
        let again = run_with_progress(store.clone(), &demo_request(), &options)
            .await
            .unwrap();
        let RunOutcome::UpToDate(plan) = again else {
            panic!("expected up to date, got {again:?}");
        };
        assert_eq!(plan.incremental.unwrap().base, package.top_hash);
        // A full run would write over the copies of the unversioned registry: refused.
        let mut full = demo_request();
        full.incremental = false;
        let refused = run_with_progress(store, &full, &options).await.unwrap_err();
        let failure = crate::failure::classify(&refused);
        assert_eq!(
            (failure.code, failure.kind),
            (2, "cannot_package"),
            "{}",
            failure.message
        );
        server.stop().await;
    }
}
