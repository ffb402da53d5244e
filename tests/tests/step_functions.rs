//! Following a packaging run on Step Functions (`s3quilt_core::aws::sfn`) against a scripted
//! Step Functions API on 127.0.0.1, so every state an execution can be in is reached in
//! milliseconds: idempotent starts (new, already started, refused, throttled), the phase read
//! from the execution history, shard counts from the Map Run, objects and bytes done from the
//! run's staging area (on moto), the result or error at the end, and polling that rides out
//! transient API failures. (`aws_engine.rs` runs the real state machine, slowly.)

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use s3quilt_core::aws::sfn::states;
use s3quilt_core::aws::{
    ExecutionInput, SfnError, ShardCounts, StartedExecution, execution_name, execution_report,
    follow_execution, start_execution,
};
use s3quilt_core::engine::{Phase, ProgressSnapshot};
use s3quilt_core::request::PackageRequest;
use s3quilt_core::staging::{ShardRef, Staging};
use s3quilt_core::storage::{ObjectStore, S3Store};
use s3quilt_tests::{create_bucket, moto};
use serde_json::{Value, json};

const MACHINE: &str = "arn:aws:states:us-east-1:123456789012:stateMachine:s3quilt-packager";
const EXECUTION: &str = "arn:aws:states:us-east-1:123456789012:execution:s3quilt-packager:s3q-1";
const MAP_RUN: &str =
    "arn:aws:states:us-east-1:123456789012:mapRun:s3quilt-packager/s3q-1:CopyShards";

/// One scripted answer: HTTP status and JSON body.
type Answer = (u16, Value);

/// Each operation's answers still to give.
type Script = Mutex<Vec<(&'static str, VecDeque<Answer>)>>;

/// A Step Functions API stand-in: answers each operation (`X-Amz-Target` without its
/// `AWSStepFunctions.` prefix) from that operation's queue of answers (the last one repeats),
/// and records every call with its JSON input.
struct SfnStub {
    endpoint: String,
    calls: Arc<Mutex<Vec<(String, Value)>>>,
}

impl SfnStub {
    fn start(script: Vec<(&'static str, Vec<Answer>)>) -> SfnStub {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let script: Arc<Script> = Arc::new(Mutex::new(
            script
                .into_iter()
                .map(|(op, answers)| (op, answers.into()))
                .collect(),
        ));
        let calls = Arc::new(Mutex::new(Vec::new()));
        let log = calls.clone();
        std::thread::spawn(move || {
            for socket in listener.incoming() {
                let Ok(socket) = socket else { return };
                let (script, log) = (script.clone(), log.clone());
                std::thread::spawn(move || serve(socket, &script, &log));
            }
        });
        SfnStub { endpoint, calls }
    }

    fn client(&self) -> aws_sdk_sfn::Client {
        let config = aws_sdk_sfn::Config::builder()
            .behavior_version(aws_sdk_sfn::config::BehaviorVersion::latest())
            .region(aws_sdk_sfn::config::Region::new("us-east-1"))
            .endpoint_url(&self.endpoint)
            .credentials_provider(aws_sdk_sfn::config::Credentials::new(
                "testing", "testing", None, None, "stub",
            ))
            // Every call is one request: the retries under test are s3quilt's own.
            .retry_config(aws_sdk_sfn::config::retry::RetryConfig::disabled())
            .build();
        aws_sdk_sfn::Client::from_conf(config)
    }

    fn calls(&self) -> Vec<(String, Value)> {
        self.calls.lock().unwrap().clone()
    }

    fn operations(&self) -> Vec<String> {
        self.calls().into_iter().map(|(op, _)| op).collect()
    }
}

fn serve(mut socket: std::net::TcpStream, script: &Script, log: &Mutex<Vec<(String, Value)>>) {
    let mut request = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        match socket.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
        if let Some(at) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&request[..head_end]).to_string();
    let header = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
    };
    let length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while request.len() < head_end + length {
        match socket.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let operation = header("x-amz-target")
        .unwrap_or_default()
        .trim_start_matches("AWSStepFunctions.")
        .to_string();
    let input: Value = serde_json::from_slice(&request[head_end..]).unwrap_or(Value::Null);
    log.lock().unwrap().push((operation.clone(), input));
    let (status, body) = {
        let mut script = script.lock().unwrap();
        match script.iter_mut().find(|(op, _)| *op == operation) {
            Some((_, answers)) if answers.len() > 1 => answers.pop_front().unwrap(),
            Some((_, answers)) => answers.front().cloned().unwrap(),
            None => error(400, "UnknownOperationException", &operation),
        }
    };
    let body = body.to_string();
    let _ = write!(
        socket,
        "HTTP/1.1 {status} Stub\r\ncontent-type: application/x-amz-json-1.0\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn ok(body: Value) -> Answer {
    (200, body)
}

fn error(status: u16, code: &str, message: &str) -> Answer {
    (status, json!({"__type": code, "message": message}))
}

fn described(status: &str, extra: Value) -> Answer {
    let mut body = json!({
        "executionArn": EXECUTION,
        "stateMachineArn": MACHINE,
        "name": "s3q-1",
        "status": status,
        "startDate": 1_700_000_000.0,
    });
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    ok(body)
}

fn event(id: i64, kind: &str, details: Value) -> Value {
    let mut e = json!({"timestamp": 1_700_000_000.0 + id as f64, "type": kind, "id": id});
    e.as_object_mut()
        .unwrap()
        .extend(details.as_object().unwrap().clone());
    e
}

fn entered(id: i64, kind: &str, state: &str) -> Value {
    event(
        id,
        kind,
        json!({"stateEnteredEventDetails": {"name": state, "input": "{}"}}),
    )
}

/// The Plan state's exit, with the planner's output under `plan` as the state machine puts it.
fn planned(id: i64, run_id: &str, registry: &str) -> Value {
    let output = json!({"request": {}, "plan": {
        "run_id": run_id, "registry_bucket": registry, "objects": 10, "bytes": 1000, "shards": 3,
        "summary": planned_summary(run_id)
    }});
    event(
        id,
        "TaskStateExited",
        json!({"stateExitedEventDetails": {"name": states::PLAN, "output": output.to_string()}}),
    )
}

/// The planner's plan summary in [`planned`] (a part of one: the report passes it on as is).
fn planned_summary(run_id: &str) -> Value {
    json!({"run_id": run_id, "package_name": "team/pkg", "objects": 10, "bytes": 1000})
}

/// History pages (the first with a `nextToken`) reaching `last_state`.
fn history(run_id: &str, registry: &str, last_state: Option<&str>) -> Vec<Answer> {
    let mut first = vec![
        event(1, "ExecutionStarted", json!({})),
        entered(2, "TaskStateEntered", states::PLAN),
        planned(3, run_id, registry),
    ];
    let mut second = Vec::new();
    match last_state {
        Some(states::COPY_SHARDS) => {
            second.push(entered(4, "MapStateEntered", states::COPY_SHARDS));
            // A Map iteration's own state entries are not the parent's state.
            second.push(entered(5, "MapIterationStarted", "CopyShard"));
        }
        Some(state) => second.push(entered(4, "TaskStateEntered", state)),
        None => {
            // Still planning: no Plan exit yet.
            first.truncate(2);
        }
    }
    vec![
        ok(json!({"events": first, "nextToken": "page-2"})),
        ok(json!({"events": second})),
    ]
}

fn map_runs() -> Vec<(&'static str, Vec<Answer>)> {
    vec![
        (
            "ListMapRuns",
            vec![ok(json!({"mapRuns": [{
                "executionArn": EXECUTION, "mapRunArn": MAP_RUN, "stateMachineArn": MACHINE,
                "startDate": 1_700_000_001.0
            }]}))],
        ),
        (
            "DescribeMapRun",
            vec![ok(json!({
                "mapRunArn": MAP_RUN, "executionArn": EXECUTION, "status": "RUNNING",
                "startDate": 1_700_000_001.0, "maxConcurrency": 4,
                "toleratedFailurePercentage": 0.0, "toleratedFailureCount": 0,
                "itemCounts": {"pending": 1, "running": 1, "succeeded": 5, "failed": 1,
                               "timedOut": 1, "aborted": 1, "total": 10, "resultsWritten": 5},
                "executionCounts": {"pending": 1, "running": 1, "succeeded": 5, "failed": 1,
                                    "timedOut": 1, "aborted": 1, "total": 10, "resultsWritten": 5}
            }))],
        ),
    ]
}

fn input() -> ExecutionInput {
    ExecutionInput::new(PackageRequest::new(
        "src-1",
        "data",
        "team/pkg",
        "s3://reg-1",
    ))
}

#[tokio::test]
async fn a_new_start_is_named_by_token_and_input_and_sends_the_input() {
    let stub = SfnStub::start(vec![(
        "StartExecution",
        vec![ok(
            json!({"executionArn": EXECUTION, "startDate": 1_700_000_000.0}),
        )],
    )]);
    let input = input();
    let started = start_execution(&stub.client(), MACHINE, &input, "token-1")
        .await
        .unwrap();
    let name = execution_name(&input, "token-1");
    assert_eq!(
        started,
        StartedExecution {
            execution_arn: EXECUTION.into(),
            name: name.clone(),
            existing: false,
        }
    );
    let calls = stub.calls();
    assert_eq!(calls.len(), 1);
    let (operation, sent) = &calls[0];
    assert_eq!(operation, "StartExecution");
    assert_eq!(sent["stateMachineArn"], json!(MACHINE));
    assert_eq!(sent["name"], json!(name));
    let sent_input: Value = serde_json::from_str(sent["input"].as_str().unwrap()).unwrap();
    assert_eq!(sent_input, input.to_json());
}

#[tokio::test]
async fn a_start_repeated_after_the_run_ended_returns_that_execution() {
    let stub = SfnStub::start(vec![
        (
            "StartExecution",
            vec![error(
                400,
                "ExecutionAlreadyExists",
                "Execution Already Exists",
            )],
        ),
        ("DescribeExecution", vec![described("SUCCEEDED", json!({}))]),
    ]);
    let input = input();
    let started = start_execution(&stub.client(), MACHINE, &input, "token-1")
        .await
        .unwrap();
    let name = execution_name(&input, "token-1");
    let arn = format!("arn:aws:states:us-east-1:123456789012:execution:s3quilt-packager:{name}");
    assert_eq!(
        started,
        StartedExecution {
            execution_arn: arn.clone(),
            name,
            existing: true,
        }
    );
    let calls = stub.calls();
    assert_eq!(stub.operations(), ["StartExecution", "DescribeExecution"]);
    assert_eq!(calls[1].1["executionArn"], json!(arn));
}

#[tokio::test]
async fn refused_starts_say_which_call_failed_and_whether_to_retry() {
    let cases = [
        (
            vec![error(400, "ThrottlingException", "Rate exceeded")],
            vec![],
            "StartExecution",
            true,
            "ThrottlingException: Rate exceeded",
        ),
        (
            vec![error(400, "StateMachineDoesNotExist", "no such machine")],
            vec![],
            "StartExecution",
            false,
            "StateMachineDoesNotExist: no such machine",
        ),
        (
            vec![error(503, "ServiceUnavailable", "busy")],
            vec![],
            "StartExecution",
            true,
            "ServiceUnavailable: busy",
        ),
        (
            vec![error(400, "ExecutionAlreadyExists", "exists")],
            vec![error(400, "AccessDeniedException", "not allowed")],
            "DescribeExecution",
            false,
            "AccessDeniedException: not allowed",
        ),
    ];
    for (start, describe, failed_operation, retry, text) in cases {
        let stub = SfnStub::start(vec![
            ("StartExecution", start),
            ("DescribeExecution", describe),
        ]);
        match start_execution(&stub.client(), MACHINE, &input(), "t").await {
            Err(SfnError::Api {
                operation,
                message,
                transient,
            }) => {
                assert_eq!(
                    (operation, transient),
                    (failed_operation, retry),
                    "{message}"
                );
                assert_eq!(message, text);
            }
            other => panic!("{failed_operation}: expected an API error, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_start_with_no_state_machine_arn_makes_no_call() {
    let stub = SfnStub::start(vec![]);
    let err = start_execution(
        &stub.client(),
        "arn:aws:lambda:us-east-1:1:function:x",
        &input(),
        "t",
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, SfnError::InvalidArn(m) if m.contains("is not a state machine ARN")),
        "{err}"
    );
    assert!(stub.calls().is_empty());
}

#[tokio::test]
async fn an_unreachable_api_is_a_transient_failure() {
    // Nothing listens on port 1 (a privileged port) on a test machine.
    let stub = SfnStub {
        endpoint: "http://127.0.0.1:1".into(),
        calls: Arc::default(),
    };
    match execution_report(&stub.client(), None, EXECUTION).await {
        Err(SfnError::Api {
            operation,
            transient,
            ..
        }) => assert_eq!((operation, transient), ("DescribeExecution", true)),
        other => panic!("expected a transient API error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_copying_progress_counts_the_shards_with_a_fragment() {
    let server = moto();
    let registry = create_bucket(&server.client().await, false).await;
    let store: Arc<dyn ObjectStore> = S3Store::shared(server.client().await);
    let run_id = "20260101T000000Z-0badc0de";
    let staging = Staging::new(store.clone(), &registry, run_id);
    let shard = |shard, objects, bytes| ShardRef {
        run_id: run_id.into(),
        registry_bucket: registry.clone(),
        shard,
        objects,
        bytes,
    };
    let index = vec![shard(0, 4, 400), shard(1, 3, 300), shard(2, 3, 300)];
    staging
        .put(&staging.shard_index_key(), &index)
        .await
        .unwrap();
    for done in [0, 2] {
        staging
            .put(&staging.fragment_key(done), &json!({"shard": done}))
            .await
            .unwrap();
    }

    let mut script = vec![
        ("DescribeExecution", vec![described("RUNNING", json!({}))]),
        (
            "GetExecutionHistory",
            history(run_id, &registry, Some(states::COPY_SHARDS)),
        ),
    ];
    script.extend(map_runs());
    let stub = SfnStub::start(script);
    let report = execution_report(&stub.client(), Some(store.clone()), EXECUTION)
        .await
        .unwrap();
    assert_eq!(report.execution_arn, EXECUTION);
    assert_eq!(report.status, "RUNNING");
    assert!(!report.is_finished());
    assert_eq!(report.run_id.as_deref(), Some(run_id));
    assert_eq!(
        report.plan_summary,
        Some(planned_summary(run_id)),
        "the plan while the shards are copied"
    );
    assert_eq!(
        report.progress,
        ProgressSnapshot {
            phase: Phase::Copying,
            objects_total: 10,
            bytes_total: 1000,
            objects_done: 7,
            bytes_done: 700,
        }
    );
    assert_eq!(
        report.shards,
        Some(ShardCounts {
            total: 10,
            succeeded: 5,
            failed: 3,
            running: 1,
            pending: 1,
        }),
        "timed out and aborted items count as failed"
    );
    assert_eq!(
        (report.output, report.error, report.cause),
        (None, None, None)
    );
    // The history was read to its last page, with the execution data.
    let calls = stub.calls();
    let pages: Vec<&Value> = calls
        .iter()
        .filter(|(op, _)| op == "GetExecutionHistory")
        .map(|(_, input)| input)
        .collect();
    assert_eq!(pages.len(), 2);
    assert_eq!(pages[0]["includeExecutionData"], json!(true));
    assert_eq!(pages[1]["nextToken"], json!("page-2"));
}

#[tokio::test]
async fn the_phase_follows_the_last_state_entered() {
    let cases = [
        ("RUNNING", None, Phase::Planning),
        ("RUNNING", Some(states::PLAN), Phase::Planning),
        ("RUNNING", Some(states::FINALIZE), Phase::Finalizing),
        ("RUNNING", Some(states::ROLLBACK), Phase::RollingBack),
        ("PENDING_REDRIVE", Some(states::COPY_SHARDS), Phase::Copying),
        ("TIMED_OUT", Some(states::COPY_SHARDS), Phase::Failed),
        ("ABORTED", Some(states::FINALIZE), Phase::Failed),
    ];
    for (status, last_state, phase) in cases {
        let stub = SfnStub::start(vec![
            ("DescribeExecution", vec![described(status, json!({}))]),
            (
                "GetExecutionHistory",
                history("20260101T000000Z-00000001", "reg-1", last_state),
            ),
            ("ListMapRuns", vec![ok(json!({"mapRuns": []}))]),
        ]);
        // Without a store, objects done are not known before the end.
        let report = execution_report(&stub.client(), None, EXECUTION)
            .await
            .unwrap();
        let what = format!("{status} in {last_state:?}");
        assert_eq!(report.progress.phase, phase, "{what}");
        assert_eq!(
            (report.progress.objects_done, report.progress.bytes_done),
            (0, 0),
            "{what}"
        );
        assert_eq!(report.shards, None, "no Map Run yet: {what}");
        assert_eq!(
            report.is_finished(),
            !matches!(status, "RUNNING" | "PENDING_REDRIVE"),
            "{what}"
        );
        let totals = (report.progress.objects_total, report.progress.bytes_total);
        if last_state.is_none() {
            assert_eq!(totals, (0, 0), "nothing planned yet");
            assert_eq!(report.run_id, None);
        } else {
            assert_eq!(totals, (10, 1000), "{what}");
        }
    }
}

#[tokio::test]
async fn a_finished_execution_reports_its_result_or_its_error() {
    let output = json!({"status": "created", "plan": {"objects": 10},
                        "package": {"top_hash": "ab".repeat(32)}});
    let stub = SfnStub::start(vec![
        (
            "DescribeExecution",
            vec![described(
                "SUCCEEDED",
                json!({"output": output.to_string()}),
            )],
        ),
        (
            "GetExecutionHistory",
            history("20260101T000000Z-00000002", "reg-1", Some(states::FINALIZE)),
        ),
        (
            "ListMapRuns",
            vec![error(400, "AccessDeniedException", "no ListMapRuns")],
        ),
    ]);
    let report = execution_report(&stub.client(), None, EXECUTION)
        .await
        .unwrap();
    assert!(report.is_finished());
    assert_eq!(
        report.progress,
        ProgressSnapshot {
            phase: Phase::Succeeded,
            objects_total: 10,
            bytes_total: 1000,
            objects_done: 10,
            bytes_done: 1000,
        }
    );
    let result = report.output.expect("the execution's output");
    assert_eq!(result.status, "created");
    assert_eq!(result.package, Some(output["package"].clone()));
    assert_eq!(
        report.shards, None,
        "an unreadable Map Run leaves counts out"
    );

    let stub = SfnStub::start(vec![
        (
            "DescribeExecution",
            vec![described(
                "FAILED",
                json!({"error": "S3Quilt.CopyFailed", "cause": "shard 2: AccessDenied (run rolled back)"}),
            )],
        ),
        (
            "GetExecutionHistory",
            history("20260101T000000Z-00000003", "reg-1", Some(states::ROLLBACK)),
        ),
        ("ListMapRuns", vec![ok(json!({"mapRuns": []}))]),
    ]);
    let report = execution_report(&stub.client(), None, EXECUTION)
        .await
        .unwrap();
    assert_eq!(report.progress.phase, Phase::Failed);
    assert_eq!(report.error.as_deref(), Some("S3Quilt.CopyFailed"));
    assert_eq!(
        report.cause.as_deref(),
        Some("shard 2: AccessDenied (run rolled back)")
    );
    assert_eq!(report.output, None);
}

#[tokio::test]
async fn an_unreadable_history_fails_the_report() {
    let stub = SfnStub::start(vec![
        ("DescribeExecution", vec![described("RUNNING", json!({}))]),
        (
            "GetExecutionHistory",
            vec![error(400, "InvalidToken", "bad token")],
        ),
    ]);
    match execution_report(&stub.client(), None, EXECUTION).await {
        Err(SfnError::Api {
            operation,
            message,
            transient,
        }) => {
            assert_eq!(
                (operation, message.as_str(), transient),
                ("GetExecutionHistory", "InvalidToken: bad token", false)
            );
        }
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn following_rides_out_throttling_and_stops_when_the_execution_ends() {
    let stub = SfnStub::start(vec![
        (
            "DescribeExecution",
            vec![
                error(400, "ThrottlingException", "Rate exceeded"),
                described("RUNNING", json!({})),
                error(400, "ThrottlingException", "Rate exceeded"),
                described("FAILED", json!({"error": "S3Quilt.StepFailed"})),
            ],
        ),
        (
            "GetExecutionHistory",
            vec![ok(
                json!({"events": [entered(1, "TaskStateEntered", states::PLAN)]}),
            )],
        ),
        ("ListMapRuns", vec![ok(json!({"mapRuns": []}))]),
    ]);
    let mut seen = Vec::new();
    let last = follow_execution(
        &stub.client(),
        None,
        EXECUTION,
        Duration::from_millis(5),
        |r| seen.push((r.status.clone(), r.progress.phase)),
    )
    .await
    .unwrap();
    assert_eq!(
        seen,
        [
            ("RUNNING".to_string(), Phase::Planning),
            ("FAILED".to_string(), Phase::Failed)
        ]
    );
    assert_eq!(last.error.as_deref(), Some("S3Quilt.StepFailed"));
    let describes = stub
        .operations()
        .iter()
        .filter(|op| *op == "DescribeExecution")
        .count();
    assert_eq!(describes, 4, "each throttled poll was tried again");
}

#[tokio::test]
async fn following_gives_up_on_a_lasting_or_permanent_failure() {
    let stub = SfnStub::start(vec![(
        "DescribeExecution",
        vec![error(400, "ExecutionDoesNotExist", "no such execution")],
    )]);
    let err = follow_execution(&stub.client(), None, EXECUTION, Duration::ZERO, |_| {
        panic!("no report")
    })
    .await
    .unwrap_err();
    assert!(
        matches!(
            &err,
            SfnError::Api {
                transient: false,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(stub.calls().len(), 1, "a permanent failure is not retried");

    let stub = SfnStub::start(vec![(
        "DescribeExecution",
        vec![error(400, "ThrottlingException", "Rate exceeded")],
    )]);
    let err = follow_execution(&stub.client(), None, EXECUTION, Duration::ZERO, |_| {
        panic!("no report")
    })
    .await
    .unwrap_err();
    assert!(
        matches!(
            &err,
            SfnError::Api {
                transient: true,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        stub.calls().len(),
        11,
        "ten transient failures in a row are ridden out, the eleventh is returned"
    );
    assert_eq!(
        err.to_string(),
        "Step Functions DescribeExecution failed: ThrottlingException: Rate exceeded"
    );
}
