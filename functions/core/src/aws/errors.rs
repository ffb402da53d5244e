//! The error names the Lambdas report and the state machine's `Retry`/`Catch` match.
//!
//! Every failure of a step maps, once, here, to an [`ErrorType`] whose [`ErrorType::name`] is
//! stable: it is part of the state machine's contract (`infra/statemachine.asl.json` retries
//! `S3Quilt.Transient` and catches everything else), of the execution's error as users see
//! it, and of the CLI's and MCP server's reports. Never rename one.

use crate::copy::CopyError;
use crate::finalize::FinalizeError;
use crate::plan::PlanError;
use crate::registry::RegistryError;
use crate::registry::workflow::WorkflowError;
use crate::staging::StagingError;
use crate::storage::{StoreError, StoreErrorKind};
use crate::transaction::TransactionError;

/// A failure class with a stable name (`S3Quilt.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ErrorType {
    /// S3 was unavailable, slow or throttling: running the step again may succeed. The only
    /// type the state machine retries.
    #[serde(rename = "S3Quilt.Transient")]
    Transient,
    /// The event or packaging request is invalid (names the field and what is allowed).
    #[serde(rename = "S3Quilt.InvalidRequest")]
    InvalidRequest,
    /// The Lambda's role (or a bucket policy) does not allow a needed S3 call.
    #[serde(rename = "S3Quilt.AccessDenied")]
    AccessDenied,
    /// A bucket, or the run's staging area, does not exist.
    #[serde(rename = "S3Quilt.NotFound")]
    NotFound,
    /// The include/exclude patterns selected nothing.
    #[serde(rename = "S3Quilt.EmptySelection")]
    EmptySelection,
    /// Selected objects cannot be packaged (collisions, invalid keys, archived objects,
    /// existing destinations).
    #[serde(rename = "S3Quilt.SelectionRejected")]
    SelectionRejected,
    /// A source object changed or disappeared after planning.
    #[serde(rename = "S3Quilt.SourceChanged")]
    SourceChanged,
    /// Copying a shard failed for good.
    #[serde(rename = "S3Quilt.CopyFailed")]
    CopyFailed,
    /// Some shards have no manifest fragment: no package is written.
    #[serde(rename = "S3Quilt.MissingFragments")]
    MissingFragments,
    /// Writing the manifest or pointers failed for good.
    #[serde(rename = "S3Quilt.FinalizeFailed")]
    FinalizeFailed,
    /// A staging document is corrupt (not what a step of this version wrote).
    #[serde(rename = "S3Quilt.CorruptStaging")]
    CorruptStaging,
    /// A step failed with one of Step Functions' own errors (`States.Timeout`,
    /// `States.Runtime`, …), named in the cause: a Fail state may not raise a `States.` name.
    #[serde(rename = "S3Quilt.StepFailed")]
    StepFailed,
    /// Rollback itself failed: objects of the run may remain (the cause says which error
    /// stopped the run and which stopped the rollback).
    #[serde(rename = "S3Quilt.RollbackFailed")]
    RollbackFailed,
}

impl ErrorType {
    /// Every type, for documentation and tests.
    pub const ALL: [ErrorType; 13] = [
        ErrorType::Transient,
        ErrorType::InvalidRequest,
        ErrorType::AccessDenied,
        ErrorType::NotFound,
        ErrorType::EmptySelection,
        ErrorType::SelectionRejected,
        ErrorType::SourceChanged,
        ErrorType::CopyFailed,
        ErrorType::MissingFragments,
        ErrorType::FinalizeFailed,
        ErrorType::CorruptStaging,
        ErrorType::StepFailed,
        ErrorType::RollbackFailed,
    ];

    /// The stable name, e.g. `S3Quilt.Transient`.
    pub fn name(self) -> &'static str {
        match self {
            ErrorType::Transient => "S3Quilt.Transient",
            ErrorType::InvalidRequest => "S3Quilt.InvalidRequest",
            ErrorType::AccessDenied => "S3Quilt.AccessDenied",
            ErrorType::NotFound => "S3Quilt.NotFound",
            ErrorType::EmptySelection => "S3Quilt.EmptySelection",
            ErrorType::SelectionRejected => "S3Quilt.SelectionRejected",
            ErrorType::SourceChanged => "S3Quilt.SourceChanged",
            ErrorType::CopyFailed => "S3Quilt.CopyFailed",
            ErrorType::MissingFragments => "S3Quilt.MissingFragments",
            ErrorType::FinalizeFailed => "S3Quilt.FinalizeFailed",
            ErrorType::CorruptStaging => "S3Quilt.CorruptStaging",
            ErrorType::StepFailed => "S3Quilt.StepFailed",
            ErrorType::RollbackFailed => "S3Quilt.RollbackFailed",
        }
    }

    /// The type with this name.
    pub fn from_name(name: &str) -> Option<ErrorType> {
        ErrorType::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Whether the state machine retries this type.
    pub fn is_transient(self) -> bool {
        self == ErrorType::Transient
    }
}

impl std::fmt::Display for ErrorType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A step's failure: its class and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error_type}: {message}")]
pub struct StepError {
    /// The class (becomes the Lambda error's `errorType`).
    pub error_type: ErrorType,
    /// What happened and, where possible, what to do (becomes `errorMessage`).
    pub message: String,
}

impl StepError {
    /// A new error.
    pub fn new(error_type: ErrorType, message: impl Into<String>) -> Self {
        StepError {
            error_type,
            message: message.into(),
        }
    }

    /// An invalid event or request.
    pub fn invalid(message: impl Into<String>) -> Self {
        StepError::new(ErrorType::InvalidRequest, message)
    }
}

impl From<StepError> for lambda_runtime::Diagnostic {
    fn from(e: StepError) -> Self {
        lambda_runtime::Diagnostic {
            error_type: e.error_type.name().to_string(),
            error_message: e.message,
        }
    }
}

/// The class of a storage failure, `otherwise` when it is neither transient, denied nor missing.
fn store_type(e: &StoreError, otherwise: ErrorType) -> ErrorType {
    match e.kind {
        k if k.is_retryable() => ErrorType::Transient,
        StoreErrorKind::AccessDenied | StoreErrorKind::NoCredentials => ErrorType::AccessDenied,
        StoreErrorKind::NotFound => ErrorType::NotFound,
        _ => otherwise,
    }
}

fn staging_type(e: &StagingError, otherwise: ErrorType) -> ErrorType {
    match e {
        StagingError::Store(e) => store_type(e, otherwise),
        StagingError::Missing { .. } => ErrorType::NotFound,
        StagingError::Corrupt { .. } => ErrorType::CorruptStaging,
    }
}

impl From<PlanError> for StepError {
    fn from(e: PlanError) -> Self {
        let error_type = match &e {
            PlanError::Request(_) => ErrorType::InvalidRequest,
            PlanError::SourceAccess { source, .. } | PlanError::TargetAccess { source, .. } => {
                store_type(source, ErrorType::AccessDenied)
            }
            PlanError::Problems(_) => ErrorType::SelectionRejected,
            PlanError::EmptySelection { .. } => ErrorType::EmptySelection,
            PlanError::Base { source, .. } => match source {
                RegistryError::Store(s) => store_type(s, ErrorType::InvalidRequest),
                // A named base that is not there, or not a manifest: the request must change.
                _ => ErrorType::InvalidRequest,
            },
            PlanError::Store(source) => store_type(source, ErrorType::InvalidRequest),
            PlanError::Workflow(WorkflowError::Read { source, .. }) => {
                store_type(source, ErrorType::AccessDenied)
            }
            // The registry's workflows refuse this request (or their config is unusable).
            PlanError::Workflow(_) => ErrorType::InvalidRequest,
        };
        StepError::new(error_type, e.to_string())
    }
}

impl From<CopyError> for StepError {
    fn from(e: CopyError) -> Self {
        let error_type = if e.is_transient() {
            ErrorType::Transient
        } else {
            match &e {
                CopyError::Object { source, .. } => match source.kind {
                    StoreErrorKind::AccessDenied => ErrorType::AccessDenied,
                    // The planned source is gone (deleted after planning).
                    StoreErrorKind::NotFound => ErrorType::SourceChanged,
                    _ => ErrorType::CopyFailed,
                },
                CopyError::SourceChanged { .. } => ErrorType::SourceChanged,
                CopyError::Staging(s) => staging_type(s, ErrorType::CopyFailed),
                CopyError::NoSuchShard(_) => ErrorType::InvalidRequest,
                // Transient: never reached (is_transient), listed for completeness.
                CopyError::DeadlineNear(_) => ErrorType::Transient,
                CopyError::Checksum { .. }
                | CopyError::DestinationExists { .. }
                | CopyError::Stopped(_)
                | CopyError::RunDecided { .. } => ErrorType::CopyFailed,
            }
        };
        StepError::new(error_type, e.to_string())
    }
}

impl From<StagingError> for StepError {
    fn from(e: StagingError) -> Self {
        StepError::new(staging_type(&e, ErrorType::StepFailed), e.to_string())
    }
}

impl From<TransactionError> for StepError {
    fn from(e: TransactionError) -> Self {
        let error_type = match &e {
            TransactionError::Staging(s) => staging_type(s, ErrorType::StepFailed),
            TransactionError::NotFound { .. } => ErrorType::NotFound,
            TransactionError::Committed { .. } | TransactionError::Aborted { .. } => {
                ErrorType::StepFailed
            }
        };
        StepError::new(error_type, e.to_string())
    }
}

impl From<FinalizeError> for StepError {
    fn from(e: FinalizeError) -> Self {
        let error_type = if e.is_transient() {
            ErrorType::Transient
        } else {
            match &e {
                FinalizeError::MissingFragments { .. } | FinalizeError::CountMismatch { .. } => {
                    ErrorType::MissingFragments
                }
                FinalizeError::Staging(s) => staging_type(s, ErrorType::FinalizeFailed),
                FinalizeError::Unpublished { source, .. } => match source.as_ref() {
                    FinalizeError::Registry(RegistryError::Store(s)) => {
                        store_type(s, ErrorType::FinalizeFailed)
                    }
                    FinalizeError::Staging(s) => staging_type(s, ErrorType::FinalizeFailed),
                    _ => ErrorType::FinalizeFailed,
                },
                FinalizeError::Registry(RegistryError::Store(s)) => {
                    store_type(s, ErrorType::FinalizeFailed)
                }
                FinalizeError::Fragment { .. } => ErrorType::CorruptStaging,
                _ => ErrorType::FinalizeFailed,
            }
        };
        StepError::new(error_type, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::PackageRequest;

    fn store_error(kind: StoreErrorKind) -> StoreError {
        StoreError::new(kind, "CopyObject", "b", "k", "boom")
    }

    #[test]
    fn names_are_stable_and_round_trip() {
        for t in ErrorType::ALL {
            assert!(t.name().starts_with("S3Quilt."), "{t}");
            assert_eq!(ErrorType::from_name(t.name()), Some(t));
            assert_eq!(
                serde_json::to_value(t).unwrap(),
                serde_json::json!(t.name())
            );
        }
        assert_eq!(ErrorType::Transient.name(), "S3Quilt.Transient");
        assert_eq!(ErrorType::InvalidRequest.name(), "S3Quilt.InvalidRequest");
        assert_eq!(
            ErrorType::MissingFragments.name(),
            "S3Quilt.MissingFragments"
        );
        assert_eq!(ErrorType::from_name("S3Quilt.Nope"), None);
    }

    #[test]
    fn diagnostics_carry_the_stable_name() {
        let d: lambda_runtime::Diagnostic = StepError::invalid("shard: missing").into();
        assert_eq!(d.error_type, "S3Quilt.InvalidRequest");
        assert_eq!(d.error_message, "shard: missing");
    }

    #[test]
    fn copy_errors_map_by_cause() {
        let object = |kind| CopyError::Object {
            bucket: "b".into(),
            key: "k".into(),
            source: store_error(kind),
        };
        let cases = [
            (object(StoreErrorKind::Transient), ErrorType::Transient),
            (object(StoreErrorKind::Throttled), ErrorType::Transient),
            (
                object(StoreErrorKind::AccessDenied),
                ErrorType::AccessDenied,
            ),
            (object(StoreErrorKind::NotFound), ErrorType::SourceChanged),
            (object(StoreErrorKind::Permanent), ErrorType::CopyFailed),
            (CopyError::NoSuchShard(4), ErrorType::InvalidRequest),
            (
                CopyError::Staging(StagingError::Missing {
                    bucket: "b".into(),
                    key: "k".into(),
                }),
                ErrorType::NotFound,
            ),
            (
                CopyError::Staging(StagingError::Store(store_error(StoreErrorKind::Transient))),
                ErrorType::Transient,
            ),
        ];
        for (error, want) in cases {
            let text = error.to_string();
            let step = StepError::from(error);
            assert_eq!(step.error_type, want, "{text}");
            assert_eq!(step.message, text);
        }
    }

    #[test]
    fn plan_and_finalize_errors_map_by_cause() {
        let mut bad = PackageRequest::new("src", "", "nopkg", "reg");
        bad.package_name = "nopkg".into();
        let invalid = PlanError::Request(bad.validate().unwrap_err());
        assert_eq!(
            StepError::from(invalid).error_type,
            ErrorType::InvalidRequest
        );
        let denied = PlanError::SourceAccess {
            bucket: "b".into(),
            prefix: "".into(),
            source: store_error(StoreErrorKind::AccessDenied),
        };
        assert_eq!(StepError::from(denied).error_type, ErrorType::AccessDenied);
        let slow = PlanError::Store(store_error(StoreErrorKind::Throttled));
        assert_eq!(StepError::from(slow).error_type, ErrorType::Transient);
        let missing = FinalizeError::MissingFragments {
            run_id: "r".into(),
            missing: vec![1],
        };
        assert_eq!(
            StepError::from(missing).error_type,
            ErrorType::MissingFragments
        );
        let gone = FinalizeError::Staging(StagingError::Missing {
            bucket: "b".into(),
            key: "k".into(),
        });
        assert_eq!(StepError::from(gone).error_type, ErrorType::NotFound);
    }

    #[test]
    fn only_transient_is_retried_and_display_is_the_name() {
        for t in ErrorType::ALL {
            assert_eq!(t.is_transient(), t == ErrorType::Transient, "{t}");
            assert_eq!(t.to_string(), t.name());
        }
        let e = StepError::new(ErrorType::NotFound, "no bucket");
        assert_eq!(e.to_string(), "S3Quilt.NotFound: no bucket");
    }

    #[test]
    fn every_plan_error_has_its_class() {
        let target = |kind| PlanError::TargetAccess {
            bucket: "reg".into(),
            source: store_error(kind),
        };
        let cases = [
            (
                target(StoreErrorKind::PreconditionFailed),
                ErrorType::AccessDenied,
            ),
            (target(StoreErrorKind::NotFound), ErrorType::NotFound),
            (target(StoreErrorKind::Transient), ErrorType::Transient),
            (
                PlanError::Problems(crate::plan::PlanProblems {
                    existing_in_target: vec!["a/b".into()],
                    ..Default::default()
                }),
                ErrorType::SelectionRejected,
            ),
            (
                PlanError::EmptySelection {
                    bucket: "src".into(),
                    prefix: "p/".into(),
                    listed: 3,
                    folder_markers: 1,
                    not_included: 2,
                    excluded: 0,
                    hints: String::new(),
                },
                ErrorType::EmptySelection,
            ),
            (
                PlanError::Store(store_error(StoreErrorKind::Permanent)),
                ErrorType::InvalidRequest,
            ),
            (
                PlanError::Store(store_error(StoreErrorKind::AccessDenied)),
                ErrorType::AccessDenied,
            ),
        ];
        for (error, want) in cases {
            let text = error.to_string();
            let step = StepError::from(error);
            assert_eq!(step.error_type, want, "{text}");
            assert_eq!(step.message, text);
        }
    }

    #[test]
    fn every_copy_failure_that_is_not_retryable_has_its_class() {
        let cases = [
            (
                CopyError::SourceChanged {
                    bucket: "b".into(),
                    key: "k".into(),
                    planned: "\"1\"".into(),
                    now: "\"2\"".into(),
                },
                ErrorType::SourceChanged,
            ),
            (
                CopyError::Checksum {
                    bucket: "b".into(),
                    key: "k".into(),
                    source: crate::quilt::checksum::ChecksumError::NotSingleChunk { chunks: 2 },
                },
                ErrorType::CopyFailed,
            ),
            (
                CopyError::DestinationExists {
                    bucket: "b".into(),
                    key: "k".into(),
                },
                ErrorType::CopyFailed,
            ),
            (CopyError::Stopped(3), ErrorType::CopyFailed),
            (
                CopyError::Staging(StagingError::Corrupt {
                    bucket: "b".into(),
                    key: "k".into(),
                    reason: "EOF".into(),
                }),
                ErrorType::CorruptStaging,
            ),
            (
                CopyError::Staging(StagingError::Store(store_error(
                    StoreErrorKind::InvalidObjectState,
                ))),
                ErrorType::CopyFailed,
            ),
            (
                CopyError::Staging(StagingError::Store(store_error(
                    StoreErrorKind::AccessDenied,
                ))),
                ErrorType::AccessDenied,
            ),
        ];
        for (error, want) in cases {
            let text = error.to_string();
            assert!(!error.is_transient(), "{text}");
            assert_eq!(StepError::from(error).error_type, want, "{text}");
        }
    }

    #[test]
    fn every_finalize_error_has_its_class() {
        let unpublished = |source: RegistryError| FinalizeError::Unpublished {
            run_id: "r".into(),
            top_hash: "t".into(),
            source: Box::new(source.into()),
        };
        let registry = |kind| unpublished(RegistryError::Store(store_error(kind)));
        let cases = [
            (registry(StoreErrorKind::Throttled), ErrorType::Transient),
            (
                registry(StoreErrorKind::AccessDenied),
                ErrorType::AccessDenied,
            ),
            (
                registry(StoreErrorKind::PreconditionFailed),
                ErrorType::FinalizeFailed,
            ),
            (
                FinalizeError::Staging(StagingError::Store(store_error(StoreErrorKind::Transient))),
                ErrorType::Transient,
            ),
            (
                FinalizeError::Staging(StagingError::Corrupt {
                    bucket: "b".into(),
                    key: "k".into(),
                    reason: "EOF".into(),
                }),
                ErrorType::CorruptStaging,
            ),
            (
                FinalizeError::CountMismatch {
                    run_id: "r".into(),
                    found: 1,
                    planned: 2,
                },
                ErrorType::MissingFragments,
            ),
            (
                FinalizeError::Fragment {
                    shard: 0,
                    reason: "bad meta".into(),
                },
                ErrorType::CorruptStaging,
            ),
            (
                FinalizeError::Manifest(crate::quilt::manifest::ManifestError::DuplicateKey(
                    "a".into(),
                )),
                ErrorType::FinalizeFailed,
            ),
            (
                unpublished(RegistryError::BadPointer {
                    bucket: "b".into(),
                    key: ".quilt/named_packages/a/b/latest".into(),
                }),
                ErrorType::FinalizeFailed,
            ),
        ];
        for (error, want) in cases {
            let text = error.to_string();
            let step = StepError::from(error);
            assert_eq!(step.error_type, want, "{text}");
            assert_eq!(step.message, text);
        }
    }
}
