//! `package_create`: an explicit list of objects and folders, expressed as one
//! [`PackageRequest`] so it runs through the same plan → copy → finalize as every other run.
//!
//! A request packages one source folder `R` of one bucket, each selected key `R + path`
//! becoming the logical key `path`. So a list is accepted when every source is in one bucket
//! and every requested logical key is the end of its source's path, all starting from the same
//! folder `R`: the sources become anchored, escaped include patterns relative to `R`. Paths are
//! never shortened to base names, so two `metrics.csv` in different folders stay two entries.
//! Renaming (a logical key that is not the end of the source's path) and sources in several
//! buckets are refused with a message saying so: the core has no entry point for arbitrary
//! key mappings yet.

use s3quilt_core::request::{PackageRequest, workflow_field};
use s3quilt_core::storage::{ObjectStore, StoreErrorKind};

use super::ToolError;
use super::types::CreateParams;

/// One source, resolved: a file or a folder (`path` ends in `/`, or is empty for the bucket).
#[derive(Debug, Clone, PartialEq)]
struct Source {
    uri: String,
    path: String,
    folder: bool,
    logical_key: Option<String>,
}

/// Escapes `text` so the glob matches it literally (see `s3quilt_core::select`'s syntax).
fn escape_glob(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(
            c,
            '\\' | '*' | '?' | '[' | ']' | '{' | '}' | ',' | '!' | '^'
        ) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The folder part of a path (`a/b/c.csv` → `a/b/`; `a/b/` → `a/b/`).
fn folder_of(path: &str) -> &str {
    match path.rfind('/') {
        Some(i) => &path[..=i],
        None => "",
    }
}

/// The suffixes of `path` that a logical key may be (`a/b/c.csv` → `c.csv`, `b/c.csv`,
/// `a/b/c.csv`), for error messages.
fn allowed_keys(path: &str, folder: bool) -> Vec<String> {
    let trimmed = path.trim_end_matches('/');
    let mut keys: Vec<String> = trimmed
        .char_indices()
        .filter(|(_, c)| *c == '/')
        .map(|(i, _)| trimmed[i + 1..].to_string())
        .collect();
    keys.reverse();
    keys.push(trimmed.to_string());
    if folder {
        keys = keys.into_iter().map(|k| format!("{k}/")).collect();
        keys.insert(0, String::new());
    }
    keys
}

fn split_uri(uri: &str) -> Result<(String, String), ToolError> {
    let rest = uri.strip_prefix("s3://").ok_or_else(|| {
        ToolError(format!(
            "entries: source {uri:?} is not an S3 URI; give s3://bucket/path/file or s3://bucket/folder/"
        ))
    })?;
    let (bucket, path) = rest.split_once('/').unwrap_or((rest, ""));
    let bucket = s3quilt_core::request::parse_bucket("entries.source", bucket)
        .map_err(|e| ToolError(e.to_string()))?;
    Ok((bucket, path.to_string()))
}

/// Whether anything is stored under `prefix`.
async fn has_objects(
    store: &dyn ObjectStore,
    bucket: &str,
    prefix: &str,
) -> Result<bool, ToolError> {
    let page = store
        .list_page(bucket, prefix, None, None, Some(1))
        .await
        .map_err(ToolError::store)?;
    Ok(!page.objects.is_empty())
}

/// Finds out whether each source is an object or a folder (and that it exists).
async fn resolve(
    store: &dyn ObjectStore,
    bucket: &str,
    uri: &str,
    path: &str,
    logical_key: Option<String>,
) -> Result<Source, ToolError> {
    let source = |path: String, folder: bool| Source {
        uri: uri.to_string(),
        path,
        folder,
        logical_key: logical_key.clone(),
    };
    if path.is_empty() || path.ends_with('/') {
        if !has_objects(store, bucket, path).await? {
            return Err(ToolError(format!(
                "entries: folder {uri:?} holds no objects; check it with bucket_objects_list"
            )));
        }
        return Ok(source(path.to_string(), true));
    }
    let below = format!("{path}/");
    match store.head(bucket, path, None).await {
        Ok(_) if has_objects(store, bucket, &below).await? => Err(ToolError(format!(
            "entries: {uri:?} is both an object and a folder ({uri}/…); package_create cannot select only the object. Give the folder as {uri}/ or use package_create_from_s3 with include/exclude patterns"
        ))),
        Ok(_) => Ok(source(path.to_string(), false)),
        Err(e) if e.kind == StoreErrorKind::NotFound => {
            if has_objects(store, bucket, &below).await? {
                Ok(source(below, true))
            } else {
                Err(ToolError(format!(
                    "entries: {uri:?} is neither an object nor a folder with objects; check the key with bucket_objects_list (keys are case-sensitive and may hold any character)"
                )))
            }
        }
        Err(e) => Err(ToolError::store(e)),
    }
}

/// The root folder implied by a source's requested logical key, or why it has none.
fn root_for(source: &Source, logical_key: &str) -> Result<String, ToolError> {
    let key = logical_key.trim_start_matches('/');
    let mut key = key.to_string();
    if source.folder && !key.is_empty() && !key.ends_with('/') {
        key.push('/');
    }
    let fits = source
        .path
        .strip_suffix(key.as_str())
        .filter(|root| root.is_empty() || root.ends_with('/'))
        .filter(|_| source.folder || !key.is_empty());
    match fits {
        Some(root) => Ok(root.to_string()),
        None => Err(ToolError(format!(
            "entries: logical_key {logical_key:?} for {:?} would rename it, and packages keep the source's path: give one of {} (or package a copy placed under the name you want). Renaming needs a core entry point that takes explicit key mappings; it does not exist yet",
            source.uri,
            allowed_keys(&source.path, source.folder)
                .iter()
                .map(|k| format!("{k:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The longest common folder of `folders` (each empty or ending in `/`).
fn common_folder<'a>(mut folders: impl Iterator<Item = &'a str>) -> String {
    let Some(first) = folders.next() else {
        return String::new();
    };
    let mut common = first.to_string();
    for f in folders {
        let shared = common
            .char_indices()
            .zip(f.chars())
            .take_while(|((_, a), b)| a == b)
            .last()
            .map_or(0, |((i, a), _)| i + a.len_utf8());
        common.truncate(shared);
    }
    folder_of(&common).to_string()
}

/// The request packaging `params.entries` (resolved against S3), with `registry`.
pub async fn request_for(
    store: &dyn ObjectStore,
    params: &CreateParams,
    registry: String,
) -> Result<PackageRequest, ToolError> {
    if params.entries.is_empty() {
        return Err(ToolError(
            "entries: give at least one {\"source\": \"s3://bucket/path\"}".into(),
        ));
    }
    let mut bucket: Option<String> = None;
    let mut sources = Vec::with_capacity(params.entries.len());
    for entry in &params.entries {
        let (b, path) = split_uri(&entry.source)?;
        match &bucket {
            Some(first) if *first != b => {
                return Err(ToolError(format!(
                    "entries: sources are in buckets {first:?} and {b:?}; one package_create call takes sources from one bucket (call it once per bucket, or copy the objects into one bucket first)"
                )));
            }
            _ => bucket = Some(b.clone()),
        }
        sources.push(resolve(store, &b, &entry.source, &path, entry.logical_key.clone()).await?);
    }
    let bucket = bucket.expect("at least one entry");

    // The root: agreed by every requested logical key, else the deepest common folder.
    let mut root: Option<(String, String)> = None;
    for source in &sources {
        let Some(key) = &source.logical_key else {
            continue;
        };
        let this = root_for(source, key)?;
        match &root {
            Some((r, uri)) if *r != this => {
                return Err(ToolError(format!(
                    "entries: the logical keys start from different folders (s3://{bucket}/{r} for {uri:?}, s3://{bucket}/{this} for {:?}); every path in a package is relative to one folder: adjust the logical keys",
                    source.uri
                )));
            }
            Some(_) => {}
            None => root = Some((this, source.uri.clone())),
        }
    }
    let root = match root {
        Some((r, _)) => r,
        None => common_folder(sources.iter().map(|s| {
            if s.folder {
                s.path.as_str()
            } else {
                folder_of(&s.path)
            }
        })),
    };

    let mut patterns: Vec<String> = Vec::new();
    for source in &sources {
        let Some(relative) = source.path.strip_prefix(root.as_str()) else {
            return Err(ToolError(format!(
                "entries: {:?} is not inside s3://{bucket}/{root}, the folder the given logical keys start from; give it a logical_key too",
                source.uri
            )));
        };
        if relative.is_empty() {
            // A folder that is the root: everything under it.
            patterns.clear();
            break;
        }
        let pattern = format!("/{}", escape_glob(relative));
        if !patterns.contains(&pattern) {
            patterns.push(pattern);
        }
    }

    let mut request = PackageRequest::new(&bucket, &root, &params.package_name, &registry);
    request.include_patterns = patterns;
    request.target_bucket = params.target_bucket.clone();
    request.description = params.description.clone();
    request.metadata = params.metadata.clone().map(serde_json::Value::Object);
    request.overwrite_existing = params.overwrite_existing;
    request.object_metadata = params.object_metadata.map(Into::into).unwrap_or_default();
    request.incremental = params.incremental;
    request.base = params.base.clone();
    request.verify_base = params.verify_base;
    request.publish_unchanged = params.publish_unchanged;
    request.dry_run = params.dry_run;
    request.workflow = workflow_field(params.workflow.clone(), params.no_workflow)
        .map_err(|e| ToolError(e.to_string()))?;
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, key: Option<&str>) -> Source {
        Source {
            uri: format!("s3://b/{path}"),
            path: path.into(),
            folder: path.ends_with('/'),
            logical_key: key.map(str::to_string),
        }
    }

    #[test]
    fn escaped_keys_match_only_themselves() {
        assert_eq!(escape_glob("a[1]/{x,y}*?.csv"), r"a\[1\]/\{x\,y\}\*\?.csv");
        let key = "odd [1] {a,b} *?!^ %#~.csv".to_string();
        let pattern = format!("/{}", escape_glob(&key));
        let selector = s3quilt_core::select::Selector::new(&[pattern], &[]).unwrap();
        assert!(selector.is_selected(&key));
        assert!(!selector.is_selected("odd [1] a *?!^ %#~.csv"));
    }

    #[test]
    fn roots_come_from_logical_keys_that_end_the_path() {
        let f = file("runs/2024/m.csv", None);
        assert_eq!(root_for(&f, "m.csv").unwrap(), "runs/2024/");
        assert_eq!(root_for(&f, "2024/m.csv").unwrap(), "runs/");
        assert_eq!(root_for(&f, "runs/2024/m.csv").unwrap(), "");
        let err = root_for(&f, "renamed.csv").unwrap_err().0;
        assert!(
            err.contains("\"2024/m.csv\"") && err.contains("rename"),
            "{err}"
        );
        assert!(root_for(&f, "024/m.csv").is_err());
        let d = file("runs/2024/", None);
        assert_eq!(root_for(&d, "2024").unwrap(), "runs/");
        assert_eq!(root_for(&d, "").unwrap(), "runs/2024/");
    }

    #[test]
    fn common_folders() {
        assert_eq!(common_folder(["a/b/", "a/c/"].into_iter()), "a/");
        assert_eq!(common_folder(["a/b/", "a/bc/"].into_iter()), "a/");
        assert_eq!(common_folder(["a/b/"].into_iter()), "a/b/");
        assert_eq!(common_folder(["x/", "y/"].into_iter()), "");
        assert_eq!(common_folder(["é/ü/", "é/ü/x/"].into_iter()), "é/ü/");
    }
}
