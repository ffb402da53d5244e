//! How a failed command ends: its exit code, a stable `kind` for `--json`, and the message.

use s3quilt_core::engine::EngineError;
use s3quilt_core::finalize::RollbackReport;
use s3quilt_core::plan::PlanError;
use s3quilt_core::registry::workflow::WorkflowError;
use s3quilt_core::storage::StoreErrorKind;
use serde::Serialize;

use crate::cli::{ArgError, flag_for_field};

/// Exit code: bad input.
pub const EXIT_BAD_INPUT: u8 = 2;
/// Exit code: access denied or missing bucket.
pub const EXIT_ACCESS: u8 = 3;
/// Exit code: the run failed and was rolled back.
pub const EXIT_ROLLED_BACK: u8 = 4;
/// Exit code: anything else.
pub const EXIT_OTHER: u8 = 1;
/// Exit code: the run was interrupted (SIGINT/SIGTERM) and rolled back (128 + SIGINT, as
/// shells report an interrupted command).
pub const EXIT_INTERRUPTED: u8 = 130;
/// Exit code: the run is left unfinished for `s3quilt runs resume|abort`.
pub const EXIT_UNFINISHED: u8 = 5;

/// A classified failure.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Failure {
    /// Process exit code.
    #[serde(skip)]
    pub code: u8,
    /// Stable machine-readable kind.
    pub kind: &'static str,
    /// What went wrong, for a person.
    pub message: String,
    /// For runs that were rolled back: what rollback did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback: Option<RollbackReport>,
}

impl Failure {
    fn new(code: u8, kind: &'static str, message: String) -> Self {
        Failure {
            code,
            kind,
            message,
            rollback: None,
        }
    }

    /// The `--json` document: `{"error": {...}}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "error": self })
    }

    /// A command-line usage error (clap's).
    pub fn usage(message: String) -> Self {
        Failure::new(EXIT_BAD_INPUT, "usage", message)
    }
}

/// Classifies an error from a command into exit code and kind.
pub fn classify(err: &anyhow::Error) -> Failure {
    if let Some(e) = err.downcast_ref::<ArgError>() {
        return Failure::new(EXIT_BAD_INPUT, "invalid_argument", e.to_string());
    }
    if let Some(e) = err.downcast_ref::<EngineError>() {
        return classify_engine(e);
    }
    Failure::new(EXIT_OTHER, "error", format!("{err:#}"))
}

/// Classifies an engine error.
pub fn classify_engine(err: &EngineError) -> Failure {
    let message = err.to_string();
    match err {
        EngineError::Plan(plan) => match plan {
            PlanError::Request(request) => {
                let hint = flag_for_field(request.field())
                    .map(|flag| format!(" (set by {flag})"))
                    .unwrap_or_default();
                Failure::new(
                    EXIT_BAD_INPUT,
                    "invalid_request",
                    format!("{message}{hint}"),
                )
            }
            PlanError::EmptySelection { .. } => {
                Failure::new(EXIT_BAD_INPUT, "empty_selection", message)
            }
            PlanError::Problems(_) => Failure::new(EXIT_BAD_INPUT, "cannot_package", message),
            // Configuration, not access or S3's health: say which setting to change.
            PlanError::SourceAccess { source, .. }
            | PlanError::TargetAccess { source, .. }
            | PlanError::Store(source)
                if matches!(
                    source.kind,
                    StoreErrorKind::NoCredentials | StoreErrorKind::Unreachable
                ) =>
            {
                if source.kind == StoreErrorKind::NoCredentials {
                    Failure::new(
                        EXIT_ACCESS,
                        "no_credentials",
                        format!("{message}; or pass --profile"),
                    )
                } else {
                    Failure::new(
                        EXIT_OTHER,
                        "unreachable",
                        format!(
                            "{message}; check --endpoint-url (or AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL): without them s3quilt uses AWS S3"
                        ),
                    )
                }
            }
            // The core reports every failure to list the source or write the target as an
            // access failure; S3 not answering (after retries) is not about access.
            PlanError::SourceAccess { source, .. } | PlanError::TargetAccess { source, .. }
                if source.kind.is_retryable() =>
            {
                Failure::new(EXIT_OTHER, "unavailable", message)
            }
            PlanError::SourceAccess { .. } => Failure::new(EXIT_ACCESS, "source_access", message),
            PlanError::TargetAccess { .. } => Failure::new(EXIT_ACCESS, "target_access", message),
            PlanError::Store(e) if e.kind == StoreErrorKind::AccessDenied => {
                Failure::new(EXIT_ACCESS, "access_denied", message)
            }
            PlanError::Store(_) => Failure::new(EXIT_OTHER, "storage", message),
            PlanError::Base { source, .. } => match source {
                s3quilt_core::registry::RegistryError::Store(e)
                    if e.kind == StoreErrorKind::AccessDenied =>
                {
                    Failure::new(EXIT_ACCESS, "base_access", message)
                }
                s3quilt_core::registry::RegistryError::Store(_) => {
                    Failure::new(EXIT_OTHER, "storage", message)
                }
                _ => Failure::new(
                    EXIT_BAD_INPUT,
                    "invalid_base",
                    format!("{message} (set by --base)"),
                ),
            },
            PlanError::Workflow(WorkflowError::Read { source, .. }) => {
                if source.kind == StoreErrorKind::AccessDenied {
                    Failure::new(EXIT_ACCESS, "access_denied", message)
                } else {
                    Failure::new(EXIT_OTHER, "storage", message)
                }
            }
            PlanError::Workflow(_) => Failure::new(
                EXIT_BAD_INPUT,
                "workflow_rejected",
                format!("{message} (CLI: --workflow NAME, --no-workflow)"),
            ),
        },
        EngineError::Copy { rollback, .. } => Failure {
            rollback: Some(rollback.clone()),
            ..Failure::new(EXIT_ROLLED_BACK, "copy_failed", message)
        },
        EngineError::Finalize { rollback, .. } => Failure {
            rollback: Some(rollback.clone()),
            ..Failure::new(EXIT_ROLLED_BACK, "finalize_failed", message)
        },
        EngineError::Interrupted { rollback, .. } => Failure {
            rollback: Some(rollback.clone()),
            ..Failure::new(EXIT_INTERRUPTED, "interrupted", message)
        },
        EngineError::Unpublished(_) => {
            Failure::new(EXIT_UNFINISHED, "committed_unpublished", message)
        }
        EngineError::RollbackPending { .. } => {
            Failure::new(EXIT_UNFINISHED, "rollback_pending", message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use s3quilt_core::copy::CopyError;
    use s3quilt_core::finalize::FinalizeError;
    use s3quilt_core::plan::PlanProblems;
    use s3quilt_core::request::PackageRequest;
    use s3quilt_core::storage::StoreError;

    fn store_error(kind: StoreErrorKind) -> StoreError {
        StoreError::new(
            kind,
            "ListObjectsV2",
            "bucket",
            "data/",
            "HTTP 403 AccessDenied: no",
        )
    }

    fn source_access(kind: StoreErrorKind) -> EngineError {
        EngineError::Plan(PlanError::SourceAccess {
            bucket: "b".into(),
            prefix: "".into(),
            source: store_error(kind),
        })
    }

    fn target_access(kind: StoreErrorKind) -> EngineError {
        EngineError::Plan(PlanError::TargetAccess {
            bucket: "b".into(),
            source: store_error(kind),
        })
    }

    #[test]
    fn exit_codes() {
        let mut bad = PackageRequest::new("src", "", "team/pkg", "s3://registry");
        bad.target_registry = "Not_A_Bucket".into();
        let request_error = bad.validate().unwrap_err();
        let cases: Vec<(EngineError, u8, &str)> = vec![
            (
                EngineError::Plan(PlanError::Request(request_error)),
                2,
                "invalid_request",
            ),
            (
                EngineError::Plan(PlanError::EmptySelection {
                    bucket: "b".into(),
                    prefix: "p/".into(),
                    listed: 3,
                    folder_markers: 0,
                    not_included: 3,
                    excluded: 0,
                    hints: String::new(),
                }),
                2,
                "empty_selection",
            ),
            (
                EngineError::Plan(PlanError::Problems(PlanProblems::default())),
                2,
                "cannot_package",
            ),
            (
                source_access(StoreErrorKind::AccessDenied),
                3,
                "source_access",
            ),
            (target_access(StoreErrorKind::NotFound), 3, "target_access"),
            (source_access(StoreErrorKind::Transient), 1, "unavailable"),
            (target_access(StoreErrorKind::Throttled), 1, "unavailable"),
            (
                EngineError::Plan(PlanError::Store(store_error(StoreErrorKind::AccessDenied))),
                3,
                "access_denied",
            ),
            (
                source_access(StoreErrorKind::NoCredentials),
                3,
                "no_credentials",
            ),
            (target_access(StoreErrorKind::Unreachable), 1, "unreachable"),
            (
                EngineError::Plan(PlanError::Store(store_error(StoreErrorKind::Transient))),
                1,
                "storage",
            ),
            (
                EngineError::Copy {
                    error: CopyError::NoSuchShard(7),
                    rollback: RollbackReport::default(),
                },
                4,
                "copy_failed",
            ),
            (
                EngineError::Finalize {
                    error: FinalizeError::MissingFragments {
                        run_id: "r".into(),
                        missing: vec![1],
                    },
                    rollback: RollbackReport {
                        replaced_by_others: Vec::new(),
                        deleted: 2,
                        not_deleted: vec!["s3://b/k".into()],
                    },
                },
                4,
                "finalize_failed",
            ),
        ];
        for (error, code, kind) in cases {
            let failure = classify(&anyhow::Error::new(error));
            assert_eq!(
                (failure.code, failure.kind),
                (code, kind),
                "{}",
                failure.message
            );
            assert_eq!(failure.rollback.is_some(), code == 4);
        }
    }

    #[test]
    fn request_errors_name_the_flag() {
        let mut bad = PackageRequest::new("src", "", "team/pkg", "s3://registry");
        bad.target_registry = "Not_A_Bucket".into();
        let failure = classify_engine(&EngineError::Plan(PlanError::Request(
            bad.validate().unwrap_err(),
        )));
        assert!(
            failure.message.contains("target_registry")
                && failure.message.ends_with("(set by --registry)"),
            "{}",
            failure.message
        );
    }

    #[test]
    fn argument_and_other_errors() {
        let arg = anyhow::Error::new(ArgError {
            arg: "--meta",
            problem: "is not valid JSON".into(),
        });
        let failure = classify(&arg);
        assert_eq!(
            (failure.code, failure.kind, failure.message.as_str()),
            (2, "invalid_argument", "--meta: is not valid JSON")
        );
        let other = classify(&anyhow::anyhow!("server did not start").context("demo"));
        assert_eq!((other.code, other.kind), (1, "error"));
        assert_eq!(other.message, "demo: server did not start");
        assert_eq!(Failure::usage("bad flag".into()).code, 2);
    }

    #[test]
    fn json_shape() {
        let failure = classify_engine(&EngineError::Copy {
            error: CopyError::NoSuchShard(7),
            rollback: RollbackReport::default(),
        });
        let json = failure.to_json();
        assert_eq!(json["error"]["kind"], "copy_failed");
        assert!(
            json["error"]["message"]
                .as_str()
                .unwrap()
                .contains("shard 7")
        );
        assert_eq!(json["error"]["rollback"]["deleted"], 0);
        assert!(json["error"].get("code").is_none());
        let usage = Failure::usage("x".into()).to_json();
        assert_eq!(
            usage,
            serde_json::json!({"error": {"kind": "usage", "message": "x"}})
        );
    }
}
