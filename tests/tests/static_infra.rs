//! Static checks of the AWS deployment: `template.yaml` (SAM) and
//! `infra/statemachine.asl.json` against each other, the workspace and the limits of the
//! local Step Functions engine. (asl-validator and cfn-lint run in `.ci/run`.)

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use s3quilt_core::aws::ErrorType;
use s3quilt_core::aws::sfn::states;
use s3quilt_tests::{FUNCTIONS, repo_root};
use serde_json::Value;
use serde_norway::Value as Yaml;

fn template() -> Yaml {
    let path = repo_root().join("template.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()))
}

fn definition_text() -> String {
    let path = repo_root().join("infra").join("statemachine.asl.json");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn definition() -> Value {
    serde_json::from_str(&definition_text()).expect("the definition is JSON")
}

fn get<'a>(yaml: &'a Yaml, path: &[&str]) -> Option<&'a Yaml> {
    path.iter().try_fold(yaml, |node, key| node.get(*key))
}

fn resources_of_type<'a>(template: &'a Yaml, kind: &str) -> Vec<(String, &'a Yaml)> {
    template["Resources"]
        .as_mapping()
        .expect("Resources")
        .iter()
        .filter(|(_, r)| r["Type"].as_str() == Some(kind))
        .map(|(name, r)| (name.as_str().expect("resource name").to_string(), r))
        .collect()
}

/// Binary targets of the workspace's packages, from `cargo metadata`.
fn workspace_binaries() -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(repo_root())
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
    meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .filter(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "bin"))
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn every_template_function_is_a_workspace_binary_built_for_lambda() {
    let template = template();
    let binaries = workspace_binaries();
    let globals = &template["Globals"]["Function"];
    let functions = resources_of_type(&template, "AWS::Serverless::Function");
    // The state machine's four, and the janitor (the rollback binary deployed again).
    assert_eq!(
        functions.len(),
        FUNCTIONS.len() + 1,
        "functions in template.yaml"
    );
    assert_eq!(
        get(
            &template,
            &[
                "Resources",
                "JanitorFunction",
                "Metadata",
                "BuildProperties",
                "Binary"
            ]
        )
        .and_then(Yaml::as_str),
        Some("rollback"),
        "the janitor runs the rollback code"
    );
    let mut built = BTreeSet::new();
    for (name, function) in &functions {
        let binary = get(function, &["Metadata", "BuildProperties", "Binary"])
            .and_then(Yaml::as_str)
            .unwrap_or_else(|| panic!("{name}: no Metadata.BuildProperties.Binary"));
        assert_eq!(
            get(function, &["Metadata", "BuildMethod"]).and_then(Yaml::as_str),
            Some("rust-cargolambda"),
            "{name}: BuildMethod"
        );
        assert!(
            binaries.contains(binary),
            "{name}: binary {binary:?} is not in the workspace ({binaries:?})"
        );
        built.insert(binary.to_string());
        let property = |key: &str| function["Properties"].get(key).or_else(|| globals.get(key));
        assert_eq!(
            property("Runtime").and_then(Yaml::as_str),
            Some("provided.al2023"),
            "{name}: Runtime"
        );
        assert_eq!(
            property("Architectures")
                .and_then(Yaml::as_sequence)
                .map(|a| a.len()),
            Some(1),
            "{name}: Architectures"
        );
        assert_eq!(
            property("Architectures").unwrap()[0].as_str(),
            Some("arm64"),
            "{name}: arm64"
        );
        assert_eq!(
            property("Handler").and_then(Yaml::as_str),
            Some("bootstrap"),
            "{name}: Handler"
        );
        let log_group = get(function, &["Properties", "LoggingConfig", "LogGroup"])
            .unwrap_or_else(|| panic!("{name}: LoggingConfig.LogGroup"));
        let Yaml::Tagged(tagged) = log_group else {
            panic!("{name}: LogGroup is not a !Ref")
        };
        let group = tagged.value.as_str().unwrap();
        assert!(
            get(
                &template,
                &["Resources", group, "Properties", "RetentionInDays"]
            )
            .is_some(),
            "{name}: log group {group} has no retention"
        );
    }
    let wanted: BTreeSet<String> = FUNCTIONS.iter().map(|(_, b)| b.to_string()).collect();
    assert_eq!(
        built, wanted,
        "the template builds exactly the state machine's functions"
    );
}

/// Every `${Name}` in a JSON value's strings.
fn placeholders(value: &Value, out: &mut BTreeSet<String>) {
    match value {
        Value::String(s) => {
            let mut rest = s.as_str();
            while let Some(start) = rest.find("${") {
                let end = rest[start..].find('}').expect("closed placeholder") + start;
                out.insert(rest[start + 2..end].to_string());
                rest = &rest[end + 1..];
            }
        }
        Value::Array(a) => a.iter().for_each(|v| placeholders(v, out)),
        Value::Object(o) => o.values().for_each(|v| placeholders(v, out)),
        _ => {}
    }
}

#[test]
fn every_definition_placeholder_is_substituted_by_the_template() {
    let template = template();
    let machines = resources_of_type(&template, "AWS::Serverless::StateMachine");
    assert_eq!(machines.len(), 1);
    let props = &machines[0].1["Properties"];
    assert_eq!(
        props["DefinitionUri"].as_str(),
        Some("infra/statemachine.asl.json")
    );
    let substitutions: BTreeMap<String, &Yaml> = props["DefinitionSubstitutions"]
        .as_mapping()
        .expect("DefinitionSubstitutions")
        .iter()
        .map(|(k, v)| (k.as_str().unwrap().to_string(), v))
        .collect();
    let mut used = BTreeSet::new();
    placeholders(&definition(), &mut used);
    let given: BTreeSet<String> = substitutions.keys().cloned().collect();
    assert_eq!(
        used, given,
        "placeholders in the definition vs DefinitionSubstitutions"
    );
    for (key, binary) in FUNCTIONS {
        // `!GetAtt XFunction.Arn` of the function that builds `binary`.
        let Some(Yaml::Tagged(tagged)) = substitutions.get(key) else {
            panic!("{key}: not a !GetAtt")
        };
        assert!(tagged.tag == "GetAtt", "{key}: {}", tagged.tag);
        let target = tagged.value.as_str().unwrap();
        let resource = target
            .strip_suffix(".Arn")
            .unwrap_or_else(|| panic!("{key}: {target}"));
        assert_eq!(
            get(
                &template,
                &[
                    "Resources",
                    resource,
                    "Metadata",
                    "BuildProperties",
                    "Binary"
                ]
            )
            .and_then(Yaml::as_str),
            Some(binary),
            "{key} must be the ARN of the {binary} function"
        );
    }
    // Every Task's Resource is one of them (a `${…}` placeholder, never a literal ARN), except
    // the Map's own S3 reader/writer integrations.
    let def = definition();
    let mut resources = Vec::new();
    collect_key(&def, "Resource", &mut resources);
    for r in resources {
        let r = r.as_str().unwrap();
        assert!(
            (r.starts_with("${") && r.ends_with('}'))
                || r == "arn:aws:states:::s3:getObject"
                || r == "arn:aws:states:::s3:putObject",
            "Resource {r:?}"
        );
    }
}

fn collect_key<'a>(value: &'a Value, key: &str, out: &mut Vec<&'a Value>) {
    match value {
        Value::Array(a) => a.iter().for_each(|v| collect_key(v, key, out)),
        Value::Object(o) => {
            for (k, v) in o {
                if k == key {
                    out.push(v);
                }
                collect_key(v, key, out);
            }
        }
        _ => {}
    }
}

/// Every IAM statement in the template (inline role policies and SAM `Policies`).
fn statements(yaml: &Yaml, out: &mut Vec<Yaml>) {
    match yaml {
        Yaml::Mapping(m) => {
            if let Some(Yaml::Sequence(s)) = m.get("Statement") {
                out.extend(s.iter().cloned());
            }
            m.values().for_each(|v| statements(v, out));
        }
        Yaml::Sequence(s) => s.iter().for_each(|v| statements(v, out)),
        Yaml::Tagged(t) => statements(&t.value, out),
        _ => {}
    }
}

fn strings(yaml: &Yaml) -> Vec<String> {
    match yaml {
        Yaml::String(s) => vec![s.clone()],
        Yaml::Sequence(s) => s.iter().flat_map(strings).collect(),
        Yaml::Tagged(t) => strings(&t.value),
        Yaml::Mapping(m) => m.values().flat_map(strings).collect(),
        _ => Vec::new(),
    }
}

#[test]
fn iam_is_least_privilege_for_s3() {
    let template = template();
    let text = std::fs::read_to_string(repo_root().join("template.yaml")).unwrap();
    assert!(!text.contains("s3:*"), "template.yaml grants s3:*");
    assert!(
        !text.contains("AmazonS3FullAccess"),
        "template.yaml uses a managed S3 policy"
    );
    for policy in [
        "S3CrudPolicy",
        "S3FullAccessPolicy",
        "S3ReadPolicy",
        "S3WritePolicy",
    ] {
        assert!(
            !text.contains(policy),
            "template.yaml uses the broad SAM policy {policy}"
        );
    }
    let mut found = Vec::new();
    statements(&template, &mut found);
    let s3_statements: Vec<&Yaml> = found
        .iter()
        .filter(|s| strings(&s["Action"]).iter().any(|a| a.starts_with("s3:")))
        .collect();
    assert!(
        s3_statements.len() >= 10,
        "expected the S3 statements of 5 roles, found {}",
        s3_statements.len()
    );
    for statement in &found {
        let actions = strings(&statement["Action"]);
        assert!(
            !actions.iter().any(|a| a == "*"),
            "Action \"*\" in {statement:?}"
        );
    }
    for statement in s3_statements {
        let resources = statement
            .get("Resource")
            .expect("S3 statement without Resource");
        let literal_star = match resources {
            Yaml::String(s) => s == "*",
            Yaml::Sequence(items) => items.iter().any(|r| r.as_str() == Some("*")),
            _ => false,
        };
        assert!(
            !literal_star,
            "S3 statement with Resource \"*\": {statement:?}"
        );
        let literals: Vec<&Yaml> = match resources {
            Yaml::Sequence(items) => items.iter().collect(),
            other => vec![other],
        };
        for literal in literals.iter().filter_map(|r| r.as_str()) {
            assert!(
                literal.starts_with("arn:"),
                "S3 resource {literal:?} is not an ARN"
            );
        }
        for resource in strings(resources) {
            assert!(
                !resource.contains(":::*"),
                "S3 resource {resource:?} covers every bucket"
            );
        }
        match statement["Effect"].as_str() {
            Some("Allow") => {}
            // Denials only fence off the registry's own documents.
            Some("Deny") => assert!(
                strings(resources)
                    .iter()
                    .filter(|r| r.contains("arn:"))
                    .all(|r| r.contains("/.quilt/*")),
                "a Deny on something other than .quilt/*: {statement:?}"
            ),
            other => panic!("Effect {other:?} in {statement:?}"),
        }
    }
    // Of the functions that write or delete in the bucket, only the finalizer and the janitor
    // may write the registry's documents, and none but the finalizer delete them.
    for function in ["CopierFunction", "RollbackFunction"] {
        let policies = &template["Resources"][function]["Properties"]["Policies"];
        let mut denied = Vec::new();
        statements(policies, &mut denied);
        assert!(
            denied.iter().any(|s| s["Effect"].as_str() == Some("Deny")
                && strings(&s["Action"]).iter().any(|a| a == "s3:PutObject")
                && strings(&s["Resource"])
                    .iter()
                    .any(|r| r.contains("/.quilt/*"))),
            "{function}: no Deny of PutObject on .quilt/*"
        );
    }
}

#[test]
fn the_schedule_is_off_by_default() {
    let template = template();
    assert_eq!(
        get(&template, &["Parameters", "ScheduleExpression", "Default"]).and_then(Yaml::as_str),
        Some("")
    );
    for (name, resource) in resources_of_type(&template, "AWS::Scheduler::Schedule") {
        assert_eq!(
            resource["Condition"].as_str(),
            Some("HasSchedule"),
            "{name}"
        );
    }
}

#[test]
fn definition_fits_the_engines_it_runs_on() {
    let text = definition_text();
    let def = definition();
    assert_eq!(def["QueryLanguage"], "JSONPath");
    // moto's engine (the local test bed) refuses these; real Step Functions would take them.
    assert!(
        !text.contains("ItemBatcher"),
        "ItemBatcher: one Map item must be one shard"
    );
    assert!(
        !text.contains("JSONata"),
        "JSONata is not run by the local engine"
    );
    let mut tolerated = Vec::new();
    collect_key(&def, "ToleratedFailurePercentage", &mut tolerated);
    for t in tolerated {
        assert!(
            t.is_f64() && t.as_f64() == Some(0.0),
            "ToleratedFailurePercentage {t} (write 0.0)"
        );
    }
    let states_map = def["States"].as_object().unwrap();
    for name in [
        states::PLAN,
        states::COPY_SHARDS,
        states::FINALIZE,
        states::ROLLBACK,
    ] {
        assert!(
            states_map.contains_key(name),
            "state {name} (progress reports rely on it)"
        );
    }
    let map = &def["States"][states::COPY_SHARDS];
    assert_eq!(
        map["ItemProcessor"]["ProcessorConfig"]["Mode"],
        "DISTRIBUTED"
    );
    assert_eq!(
        map["ItemReader"]["Resource"],
        "arn:aws:states:::s3:getObject"
    );
    assert_eq!(map["ItemReader"]["ReaderConfig"]["InputType"], "JSON");
    assert_eq!(map["MaxConcurrencyPath"], "$.plan.max_concurrency");

    // Every Task retries S3Quilt.Transient with backoff, and only names errors that exist.
    let mut all_states: Vec<(String, &Value)> =
        states_map.iter().map(|(k, v)| (k.clone(), v)).collect();
    all_states.extend(
        map["ItemProcessor"]["States"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v)),
    );
    let names: BTreeSet<&str> = all_states.iter().map(|(k, _)| k.as_str()).collect();
    for (name, state) in &all_states {
        for key in ["Next", "Default"] {
            if let Some(next) = state.get(key).and_then(Value::as_str) {
                assert!(
                    names.contains(next),
                    "{name}: {key} {next:?} does not exist"
                );
            }
        }
        let mut errors = Vec::new();
        collect_key(state, "ErrorEquals", &mut errors);
        for e in errors.iter().flat_map(|e| e.as_array().unwrap()) {
            let e = e.as_str().unwrap();
            if let Some(rest) = e.strip_prefix("S3Quilt.") {
                assert!(
                    ErrorType::from_name(e).is_some(),
                    "{name}: unknown error S3Quilt.{rest}"
                );
            }
        }
        if state["Type"] == "Fail"
            && let Some(error) = state.get("Error").and_then(Value::as_str)
        {
            assert!(
                ErrorType::from_name(error).is_some(),
                "{name}: Error {error:?} is not an ErrorType"
            );
        }
        if state["Type"] != "Task" {
            continue;
        }
        let retry = state["Retry"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: no Retry"));
        let transient = retry
            .iter()
            .find(|r| {
                r["ErrorEquals"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|e| e == "S3Quilt.Transient")
            })
            .unwrap_or_else(|| panic!("{name}: does not retry S3Quilt.Transient"));
        assert!(
            transient["BackoffRate"].as_f64().unwrap() > 1.0,
            "{name}: backoff"
        );
        assert!(
            transient["MaxAttempts"].as_u64().unwrap() >= 2,
            "{name}: attempts"
        );
        assert!(
            retry.iter().all(|r| !r["ErrorEquals"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e == "States.ALL")),
            "{name}: retries everything"
        );
    }
    // After planning, every failure goes through Rollback before the execution fails.
    for name in [states::COPY_SHARDS, states::FINALIZE] {
        let catch = def["States"][name]["Catch"].as_array().unwrap();
        assert!(
            catch
                .iter()
                .any(|c| c["ErrorEquals"][0] == "States.ALL" && c["Next"] == states::ROLLBACK),
            "{name} must catch everything into Rollback"
        );
    }
    // Rollback ends failed, or waits for copiers and runs again, or (committed) finishes the
    // run with the finalizer; nothing else.
    let done = &def["States"][def["States"][states::ROLLBACK]["Next"].as_str().unwrap()];
    assert_eq!(done["Type"], "Choice");
    assert_eq!(done["Default"], "Failed");
    assert_eq!(def["States"]["Failed"]["Type"], "Fail");
    let nexts: BTreeSet<&str> = done["Choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["Next"].as_str().unwrap())
        .collect();
    for next in nexts {
        let state = &def["States"][next];
        match state["Type"].as_str() {
            Some("Wait") => assert_eq!(state["Next"], states::ROLLBACK, "{next}"),
            Some("Task") => {
                assert_eq!(state["Resource"], "${FinalizerFunctionArn}", "{next}");
                let catch = state["Catch"].as_array().unwrap();
                assert!(
                    catch.iter().all(|c| c["Next"] != states::ROLLBACK),
                    "{next}: a committed run must never reach Rollback again"
                );
            }
            other => panic!("{next}: unexpected {other:?} after Rollback"),
        }
    }
}
