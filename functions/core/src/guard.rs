//! Guard rails of a long-running server (`s3quilt mcp`): which buckets its callers may reach,
//! and whether they may write at all. An agent chooses the buckets of every call, while the
//! server's credentials often reach far more than the agent's user means to expose; the guard
//! is checked on every bucket a call names before any request is sent for it.

use std::collections::BTreeSet;
use std::fmt;

use crate::request::{ValidRequest, parse_bucket};

/// A call the guard refuses. The message names the field, the bucket and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    /// The bucket is not in the server's allowlist.
    #[error(
        "{field}: bucket {bucket:?} is not one this server may use (allowed: {allowed}); use one of those, or restart the server with --allow-bucket {bucket}"
    )]
    NotAllowed {
        /// The argument naming the bucket.
        field: &'static str,
        /// The bucket named.
        bucket: String,
        /// The allowed buckets, comma-separated.
        allowed: String,
    },
    /// The server is read-only and the call would write.
    #[error(
        "{what}: this server is read-only (started with --read-only or S3QUILT_READ_ONLY); a dry run (dry_run: true) still shows what would be packaged"
    )]
    ReadOnly {
        /// What would have written.
        what: &'static str,
    },
    /// An allowlist entry is not a bucket name.
    #[error("--allow-bucket: {0}")]
    BadEntry(String),
}

/// Which buckets calls may name, and whether they may write. The default allows every bucket
/// the credentials reach, for reading and writing: the guard narrows what IAM grants, it
/// does not replace it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BucketGuard {
    /// `None`: every bucket.
    allowed: Option<BTreeSet<String>>,
    read_only: bool,
}

impl BucketGuard {
    /// A guard allowing only `allowed` (every bucket when empty), read-only if `read_only`.
    /// Entries may be given as `s3://bucket`; each must be a valid bucket name.
    pub fn new<I, S>(allowed: I, read_only: bool) -> Result<Self, GuardError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut set = BTreeSet::new();
        for entry in allowed {
            let entry = entry.as_ref().trim();
            if entry.is_empty() {
                continue;
            }
            let bucket =
                parse_bucket("bucket", entry).map_err(|e| GuardError::BadEntry(e.to_string()))?;
            set.insert(bucket);
        }
        Ok(BucketGuard {
            allowed: (!set.is_empty()).then_some(set),
            read_only,
        })
    }

    /// Whether calls that write are refused.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The allowed buckets (`None`: every bucket).
    pub fn allowed(&self) -> Option<impl Iterator<Item = &str>> {
        self.allowed.as_ref().map(|s| s.iter().map(String::as_str))
    }

    /// A bucket a call reads from (listing, object metadata, a registry's packages).
    pub fn check_bucket(&self, field: &'static str, bucket: &str) -> Result<(), GuardError> {
        let bucket = bucket.strip_prefix("s3://").unwrap_or(bucket);
        let bucket = bucket.split('/').next().unwrap_or(bucket);
        match &self.allowed {
            Some(allowed) if !allowed.contains(bucket) => Err(GuardError::NotAllowed {
                field,
                bucket: bucket.to_string(),
                allowed: self.to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// A call that writes (e.g. rolling back or finishing a run).
    pub fn check_write(&self, what: &'static str) -> Result<(), GuardError> {
        if self.read_only {
            Err(GuardError::ReadOnly { what })
        } else {
            Ok(())
        }
    }

    /// A packaging request: its source is read, its registry and target bucket are written
    /// (a dry run writes nothing, so a read-only server still plans it).
    pub fn check_request(&self, request: &ValidRequest) -> Result<(), GuardError> {
        self.check_bucket("source_bucket", &request.source_bucket)?;
        self.check_bucket("target_registry", &request.registry_bucket)?;
        self.check_bucket("target_bucket", &request.target_bucket)?;
        if !request.dry_run {
            self.check_write("package creation")?;
        }
        Ok(())
    }
}

impl fmt::Display for BucketGuard {
    /// The allowlist as a user would write it: `a, b` or `every bucket`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.allowed {
            None => f.write_str("every bucket"),
            Some(allowed) => {
                let names: Vec<&str> = allowed.iter().map(String::as_str).collect();
                f.write_str(&names.join(", "))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::PackageRequest;

    fn request(dry_run: bool) -> ValidRequest {
        let mut request = PackageRequest::new("src-data", "in/", "team/pkg", "s3://reg-bucket");
        request.target_bucket = Some("copies-bucket".into());
        request.dry_run = dry_run;
        request.validate().unwrap()
    }

    #[test]
    fn the_default_allows_everything() {
        let guard = BucketGuard::default();
        assert_eq!(guard.check_request(&request(false)), Ok(()));
        assert_eq!(guard.check_bucket("bucket", "any-bucket"), Ok(()));
        assert_eq!(guard.to_string(), "every bucket");
        assert_eq!(BucketGuard::new([""; 1], false).unwrap(), guard);
    }

    #[test]
    fn every_bucket_of_a_request_must_be_allowed() {
        let all = ["src-data", "s3://reg-bucket", "copies-bucket/"];
        let guard = BucketGuard::new(all, false).unwrap();
        assert_eq!(guard.check_request(&request(false)), Ok(()));
        for (missing, field) in [
            (0, "source_bucket"),
            (1, "target_registry"),
            (2, "target_bucket"),
        ] {
            let allowed = all
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != missing)
                .map(|(_, b)| *b);
            let guard = BucketGuard::new(allowed, false).unwrap();
            let error = guard.check_request(&request(false)).unwrap_err();
            let GuardError::NotAllowed { field: f, .. } = &error else {
                panic!("{error:?}");
            };
            assert_eq!(*f, field);
            assert!(error.to_string().starts_with(&format!("{field}: bucket ")));
            assert!(error.to_string().contains("--allow-bucket"), "{error}");
        }
    }

    #[test]
    fn read_only_refuses_writes_but_plans_dry_runs() {
        let guard = BucketGuard::new(Vec::<String>::new(), true).unwrap();
        assert!(guard.is_read_only());
        assert_eq!(guard.check_request(&request(true)), Ok(()));
        let error = guard.check_request(&request(false)).unwrap_err();
        assert_eq!(
            error,
            GuardError::ReadOnly {
                what: "package creation"
            }
        );
        assert!(error.to_string().contains("dry_run: true"), "{error}");
        assert!(guard.check_write("abort").is_err());
    }

    #[test]
    fn uris_and_keys_name_their_bucket_and_bad_entries_are_refused() {
        let guard = BucketGuard::new(["data-bucket"], false).unwrap();
        assert_eq!(guard.check_bucket("bucket", "s3://data-bucket/a/b"), Ok(()));
        assert!(guard.check_bucket("bucket", "s3://other-bucket").is_err());
        assert_eq!(guard.to_string(), "data-bucket");
        let error = BucketGuard::new(["Not_A_Bucket"], false).unwrap_err();
        assert!(error.to_string().starts_with("--allow-bucket: "), "{error}");
    }
}
