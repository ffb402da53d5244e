#!/usr/bin/env python3
"""A real MCP client (the Python `mcp` SDK, 2.x) driving `s3quilt mcp` over stdio (and, in
the `http` scenario, over Streamable HTTP), for
tests/tests/mcp.rs.

Usage: mcp_client.py SCENARIO CONFIG_JSON

CONFIG_JSON: {"command": path, "args": [...], "env": {...}, "version": "0.1.0", ...} plus the
scenario's buckets and keys (see each scenario). Each scenario checks what the protocol shows
(schemas, annotations, tool errors, progress notifications, results) with `check`, and prints
one JSON line, the last line of stdout, with what the Rust test checks against S3 and quilt3.
On failure a traceback goes to stderr, the last stdout line is {"error": ...}, exit status 1.

Scenarios:
  main     every tool, both protocol revisions, the flaws a package server must not have, bad
           input answered with tool errors while the server stays up;
  slow     a run that outlasts wait_seconds, followed to its end with package_create_status;
  failing  a run whose copies fail: a tool error naming the rollback, kept for status calls;
  sfn      Step Functions mode: executions started, followed and reported by ARN;
  agent_input  what agents and hosts really send: null for optional arguments, URIs where
           names are asked for, out-of-range page sizes, nested globs and metadata (answered,
           the server staying up), plain input schemas; and, over raw stdio, a line that is
           not JSON and a request too deep to read, each answered with a JSON-RPC error;
  guarded  an allowlist (S3QUILT_ALLOW_BUCKETS) and --read-only: other buckets and writes
           refused as tool errors;
  disconnect  a client that goes away mid-run ("leave"), and the same call again ("retry");
  http     Streamable HTTP with a bearer token: 401 without it, two clients (both revisions)
           sharing the server's runs, SIGTERM ending it cleanly;
  paging   listings past an agent's context: bucket_objects_list pages under 40 KiB of one S3
           page, packages_list one name or version a page; each item once, in order;
  misconfigured  a server without credentials or with a wrong endpoint: tool errors that name
           the setting to change (config "needles"), never the SDK's dump, and no retry loop.
"""

import json
import sys
import time
import traceback

import anyio
from mcp import Client, StdioServerParameters
from mcp.shared.exceptions import MCPError

READ_ONLY = {
    "package_create_status",
    "bucket_objects_list",
    "bucket_object_info",
    "packages_list",
    "package_browse",
}
CREATING = {"package_create_from_s3", "package_create"}
# Ends runs left in staging: `abort` deletes (exactly what the run created); repeating it is a no-op.
CLEANING = {"package_runs"}
# Arguments whose schema must carry an example (what an agent most needs to get right).
EXAMPLES = {
    "package_create_from_s3": ["source_bucket", "source_prefix", "package_name", "target_registry",
                               "include_patterns", "metadata", "wait_seconds"],
    "package_create": ["package_name", "target_registry"],
    "package_create_status": ["run_id"],
    "bucket_objects_list": ["bucket", "prefix", "max_keys"],
    "bucket_object_info": ["bucket", "key"],
    "packages_list": ["registry"],
    "package_browse": ["package_name", "registry"],
    "package_runs": ["registry", "action", "run_id"],
}
# Never in any output: signed URLs and credentials.
SECRETS = ("X-Amz-Signature", "X-Amz-Credential", "Signature=", "aws_secret_access_key")


def emit(obj):
    sys.stdout.flush()
    sys.stdout.write(json.dumps(obj, ensure_ascii=True) + "\n")
    sys.stdout.flush()


def check(condition, message, *context):
    if not condition:
        detail = "\n".join(json.dumps(c, default=str)[:4000] for c in context)
        raise AssertionError(f"{message}\n{detail}" if detail else message)


def texts(result):
    return "\n".join(getattr(c, "text", "") for c in result.content)


class Session:
    """One client connection, recording every result's text for the secrets check."""

    def __init__(self, client, secret):
        self.client = client
        self.seen = []
        self.secret = secret

    async def call(self, name, arguments, progress=None):
        result = await self.client.call_tool(name, arguments, progress_callback=progress)
        text = texts(result)
        self.seen.append(text + json.dumps(result.structured_content, default=str))
        return result

    async def ok(self, name, arguments, progress=None):
        result = await self.call(name, arguments, progress)
        check(not result.is_error, f"{name} failed: {texts(result)}", arguments)
        check(isinstance(result.structured_content, dict), f"{name}: no structured content")
        check(len(result.content) >= 1 and result.content[0].text,
              f"{name}: no human-readable text")
        return result.structured_content

    async def error(self, name, arguments, *needles):
        result = await self.call(name, arguments)
        message = texts(result)
        check(result.is_error is True, f"{name} should fail as a tool error", arguments, message)
        for needle in needles:
            check(needle.lower() in message.lower(),
                  f"{name}: the error should mention {needle!r}", arguments, message)
        return result

    def check_no_secrets(self):
        for text in self.seen:
            for s in SECRETS + ((self.secret,) if self.secret else ()):
                check(s not in text, f"output contains {s!r}", text)


def server_params(config):
    return StdioServerParameters(command=config["command"], args=config["args"], env=config["env"])


def connect(config, mode):
    return Client(server_params(config), mode=mode, read_timeout_seconds=120)


async def check_tools(client):
    listed = (await client.list_tools()).tools
    names = {t.name for t in listed}
    check(names == READ_ONLY | CREATING | CLEANING, "the tools", sorted(names))
    for tool in listed:
        schema = tool.input_schema
        check(schema.get("type") == "object", f"{tool.name}: input schema is an object", schema)
        check(schema.get("additionalProperties") is False,
              f"{tool.name}: unknown arguments are refused", schema)
        for prop, spec in schema["properties"].items():
            check(spec.get("description"), f"{tool.name}.{prop} has a description", spec)
        for prop in EXAMPLES[tool.name]:
            check(schema["properties"][prop].get("examples"), f"{tool.name}.{prop} has examples",
                  schema["properties"][prop])
        check(tool.description and len(tool.description) > 40, f"{tool.name}: description")
        check(tool.title, f"{tool.name}: title")
        check(tool.output_schema and tool.output_schema.get("type") == "object",
              f"{tool.name}: output schema", tool.output_schema)
        a = tool.annotations
        check(a is not None and a.title, f"{tool.name}: annotations with a title")
        if tool.name in READ_ONLY:
            check(a.read_only_hint is True, f"{tool.name} is read-only", a.model_dump())
        elif tool.name in CLEANING:
            check(a.read_only_hint is False and a.destructive_hint is True
                  and a.idempotent_hint is True,
                  f"{tool.name}: deletes (destructive), idempotent", a.model_dump())
        else:
            # overwrite_existing replaces objects at the destination: destructive.
            check(a.read_only_hint is False and a.destructive_hint is True
                  and a.idempotent_hint is False,
                  f"{tool.name}: creates (not read-only), may replace (destructive), "
                  "not idempotent", a.model_dump())
    wait = {t.name: t for t in listed}["package_create_from_s3"].input_schema["properties"][
        "wait_seconds"]
    check(wait.get("maximum") == 50 and wait.get("default") == 20, "wait_seconds bounds", wait)
    return sorted(names)


async def list_keys(s, bucket, prefix, max_keys):
    keys, token, pages = [], None, 0
    while True:
        args = {"bucket": bucket, "prefix": prefix, "delimiter": "", "max_keys": max_keys}
        if token:
            args["continuation_token"] = token
        page = await s.ok("bucket_objects_list", args)
        keys += [o["key"] for o in page["objects"]]
        pages += 1
        token = page["next_continuation_token"]
        if not token:
            return keys, pages


async def browse_all(s, name, registry, page_size, top_hash=None):
    entries, cursor, pages = [], None, 0
    while True:
        args = {"package_name": name, "registry": registry, "max_entries": page_size}
        if top_hash:
            args["top_hash"] = top_hash
        if cursor:
            args["cursor"] = cursor
        page = await s.ok("package_browse", args)
        entries += page["entries"]
        pages += 1
        cursor = page["next_cursor"]
        if not cursor:
            return page, entries, pages


async def scenario_main(config):
    src, reg, prefix = config["source_bucket"], config["registry"], config["source_prefix"]
    expected_keys = sorted(config["keys"])
    report = {}
    async with connect(config, "legacy") as client:
        s = Session(client, config.get("secret"))
        check(client.protocol_version == "2025-11-25", "handshake revision", client.protocol_version)
        info = client.server_info
        check(info.name == "s3quilt" and info.version == config["version"], "server identity",
              info.model_dump())
        report["tools"] = await check_tools(client)

        # Listing: folders at "/", every key (whatever characters) when paging without one.
        top = await s.ok("bucket_objects_list", {"bucket": src, "prefix": prefix})
        report["folders"] = top["common_prefixes"]
        keys, pages = await list_keys(s, src, prefix, 2)
        check(sorted(keys) == expected_keys, "every key is listed", keys, expected_keys)
        check(pages >= len(expected_keys) // 2, "listing pages", pages)

        for key, (content_type, meta) in config["object_info"].items():
            obj = await s.ok("bucket_object_info", {"bucket": src, "key": key})
            check(obj["key"] == key and obj["content_type"] == content_type
                  and obj["metadata"] == meta and obj["size"] > 0, "object info", obj)

        # Globs are relative to the prefix and `*` stays within a folder.
        dry = await s.ok("package_create_from_s3", {
            "source_bucket": src, "source_prefix": prefix, "package_name": "team/globs",
            "target_registry": reg, "dry_run": True,
            # The second pattern means its `[ ]` and `{ }` literally: it matches nothing.
            "include_patterns": ["tables/*.csv", "odd/100% #1 [draft] ~{x}.txt"]})
        check(dry["status"] == "succeeded" and dry["dry_run"] and dry["package"] is None,
              "dry run", dry)
        report["glob_keys"] = dry["plan"]["sample_logical_keys"]
        report["pattern_matches"] = dry["plan"]["pattern_matches"]
        warnings = dry["plan"]["warnings"]
        unmatched = [w for w in warnings if "matched no key" in w]
        check(len(unmatched) == 1 and "escape them" in unmatched[0],
              "a pattern that matched nothing warns", warnings)
        check(any(w.startswith("write access to ") and "was not checked" in w for w in warnings),
              "a dry run says it did not check write access", warnings)
        full_key_glob = await s.error("package_create_from_s3", {
            "source_bucket": src, "source_prefix": prefix, "package_name": "team/globs",
            "target_registry": reg, "include_patterns": [prefix + "tables/*.csv"]},
            "nothing to package", "not matched by include_patterns", "relative to source_prefix")
        report["full_key_glob_error"] = texts(full_key_glob)

        # Preview, then the real run with a progress token: same logical keys.
        request = {"source_bucket": src, "source_prefix": prefix, "package_name": "team/full",
                   "target_registry": reg, "description": "made over MCP",
                   "metadata": {"project": "mcp-test", "n": 1}, "tags": ["mcp", "test"]}
        preview = await s.ok("package_create_from_s3", dict(request, dry_run=True))
        notes = []

        async def on_progress(progress, total, message):
            notes.append({"progress": progress, "total": total, "message": message})

        made = await s.ok("package_create_from_s3", dict(request, wait_seconds=50), on_progress)
        check(made["status"] == "succeeded" and made["package"], "package created", made)
        check(made["run_id"].startswith("local-") and made["engine"] == "local", "run id", made)
        check(notes, "progress notifications arrived")
        last = notes[-1]
        check(last["progress"] == last["total"] == made["package"]["objects"],
              "the last notification counts every object", notes)
        check(all(a["progress"] < b["progress"] for a, b in zip(notes, notes[1:])),
              "progress increases with every notification (as MCP requires)", notes)
        report["full"] = made["package"]
        report["progress"] = notes
        kept = await s.ok("package_create_status", {"run_id": made["run_id"]})
        listed = texts(await s.error("package_create_status", {}, "run_id", "give one of them"))
        check(made["run_id"] in listed, "status without run_id lists the runs", listed)
        check(kept["status"] == "succeeded" and kept["package"] == made["package"],
              "a finished run keeps its result", kept)

        # Browse it page by page: every entry, and exactly the preview's layout.
        page, entries, pages = await browse_all(s, "team/full", reg, 3)
        logical = [e["logical_key"] for e in entries]
        check(pages > 1 and page["total_entries"] == len(entries) == made["package"]["objects"],
              "paginated browse", page, logical)
        check(logical[:len(preview["plan"]["sample_logical_keys"])]
              == preview["plan"]["sample_logical_keys"], "the preview is the package's layout",
              preview["plan"], logical)
        check(all(e["hash"] and e["hash_type"] and e["physical_key"].startswith("s3://")
                  for e in entries), "entries have hashes and physical keys", entries)
        check(page["metadata"] == dict(request["metadata"], tags=request["tags"])
              and page["message"] == "made over MCP",
              "package metadata (with the tags) and message", page)
        report["browsed_keys"] = logical
        sub = await s.ok("package_browse", {"package_name": "team/full", "registry": reg,
                                            "path_prefix": "tables/"})
        check(all(e["logical_key"].startswith("tables/") for e in sub["entries"])
              and sub["matching_entries"] == len(sub["entries"]) > 0, "path_prefix", sub)

        listed = await s.ok("packages_list", {"registry": reg})
        check("team/full" in listed["packages"], "packages_list", listed)
        runs = await s.ok("package_runs", {"registry": reg})
        check(runs["runs"] == [] and runs["registry"].endswith(reg.removeprefix("s3://")),
              "a finished run leaves nothing in staging", runs)
        versions = await s.ok("packages_list", {"registry": reg, "package_name": "team/full"})
        check(versions["versions"][-1]["top_hash"] == made["package"]["top_hash"], "versions",
              versions)

        # Flattening that would overwrite is refused, naming the files.
        flat = {"source_bucket": src, "source_prefix": prefix, "package_name": "team/flat",
                "target_registry": reg, "preserve_structure": False,
                "include_patterns": ["same/**"]}
        await s.error("package_create_from_s3", flat, "several objects",
                      *config["same_name_keys"])

        # package_create keeps paths: same-named files stay two entries.
        explicit = await s.ok("package_create", {
            "package_name": "team/explicit", "target_registry": reg,
            "entries": [{"source": f"s3://{src}/{k}"} for k in config["same_name_keys"]]
                       + [{"source": f"s3://{src}/{config['odd_folder']}"}],
            "wait_seconds": 50})
        check(explicit["status"] == "succeeded", "package_create", explicit)
        report["explicit"] = explicit["package"]
        _, entries, _ = await browse_all(s, "team/explicit", reg, 100)
        report["explicit_keys"] = [e["logical_key"] for e in entries]
        await s.error("package_create", {
            "package_name": "team/renamed", "target_registry": reg,
            "entries": [{"source": f"s3://{src}/{config['same_name_keys'][0]}",
                         "logical_key": "renamed.csv"}]}, "rename")

        # Bad input: tool errors that say what to fix; the server stays up.
        bad = [
            ("package_create_from_s3", {"source_bucket": src, "package_name": "team/x",
                                        "target_registry": reg, "flaten": True}, ["flaten"]),
            ("package_create_from_s3", {"source_bucket": src, "package_name": "team/x",
                                        "target_registry": reg, "wait_seconds": "soon"},
             ["wait_seconds", "invalid type"]),
            ("package_create_from_s3", {"source_bucket": "Bad_Bucket", "package_name": "team/x",
                                        "target_registry": reg}, ["source_bucket", "lowercase"]),
            ("package_create_from_s3", {"source_bucket": src, "package_name": "no-slash",
                                        "target_registry": reg}, ["package_name"]),
            ("package_create_from_s3", {"source_bucket": src, "package_name": "team/x"},
             ["target_registry", "--registry"]),
            ("package_create_from_s3", {"source_bucket": config["missing_bucket"],
                                        "package_name": "team/x", "target_registry": reg},
             ["cannot read the source", config["missing_bucket"]]),
            ("package_create_from_s3", {"source_bucket": src, "source_prefix": "no/such/prefix",
                                        "package_name": "team/x", "target_registry": reg},
             ["nothing to package"]),
            ("package_create_from_s3", {"source_bucket": src, "package_name": "team/x",
                                        "target_registry": reg, "include_patterns": ["[oops"]},
             ["include_patterns", "[oops"]),
            ("package_create_status", {"run_id": "local-nope"}, ["not a run of this server"]),
            ("bucket_object_info", {"bucket": src, "key": "no/such/key"},
             ["does not exist", "bucket_objects_list"]),
            ("bucket_objects_list", {"bucket": "s3://" + src + "/with/path"}, ["bucket"]),
            ("package_browse", {"package_name": "team/none", "registry": reg},
             ["not found", "packages_list"]),
            ("package_browse", {"package_name": "team/full", "registry": reg, "cursor": "x"},
             ["cursor"]),
            ("package_runs", {"registry": reg, "action": "abort"}, ["run_id", "list"]),
            ("package_runs", {"registry": reg, "action": "resume", "run_id": "../x"},
             ["run_id", "not a run id"]),
            ("package_runs", {"registry": reg, "action": "abort",
                              "run_id": "20260101T000000Z-00000000"}, ["no run"]),
            ("package_create", {"package_name": "team/y", "target_registry": reg,
                                "entries": [{"source": f"s3://{src}/missing.csv"}]},
             ["neither an object nor a folder"]),
        ]
        messages = []
        for name, args, needles in bad:
            messages.append(texts(await s.error(name, args, *needles)))
        report["bad_input_messages"] = messages
        await client.send_ping()
        check(len((await client.list_tools()).tools) == 8, "the server is still up")
        s.check_no_secrets()

    # The 2026-07-28 revision (no handshake: server/discover and per-request metadata).
    async with connect(config, "auto") as client:
        s = Session(client, config.get("secret"))
        check(client.protocol_version == "2026-07-28", "modern revision", client.protocol_version)
        listed = await s.ok("packages_list", {"registry": reg})
        check("team/full" in listed["packages"], "packages_list on 2026-07-28", listed)
        dry = await s.ok("package_create_from_s3", {
            "source_bucket": src, "source_prefix": prefix, "package_name": "team/globs",
            "target_registry": reg, "include_patterns": ["tables/*.csv"], "dry_run": True})
        check(dry["plan"]["sample_logical_keys"] == report["glob_keys"], "same plan", dry)
        report["modern_revision"] = client.protocol_version
    return report


async def scenario_slow(config):
    async with connect(config, "legacy") as client:
        s = Session(client, config.get("secret"))
        request = {"source_bucket": config["source_bucket"], "source_prefix": config["source_prefix"],
                   "package_name": "team/slow", "target_registry": config["registry"],
                   "wait_seconds": 0}
        started = time.monotonic()
        first = await s.ok("package_create_from_s3", request)
        returned_after = time.monotonic() - started
        check(first["status"] == "running" and first["package"] is None,
              "a run that outlasts wait_seconds returns running", first)
        check(first["progress"]["phase"] != "planning" and first["progress"]["objects_total"] > 0,
              "the create call returns after planning", first)
        check(first["plan"] is not None
              and first["plan"]["objects"] == first["progress"]["objects_total"]
              and first["plan"]["sample_logical_keys"],
              "a running view shows the plan", first)
        check("package_create_status" in first["next_step"], "next step", first)
        notes, polls, view = [], 0, first

        async def on_progress(progress, total, message):
            notes.append({"progress": progress, "total": total, "message": message})

        while view["status"] == "running":
            polls += 1
            check(polls < 40, "the run ends", view)
            view = await s.ok("package_create_status",
                              {"run_id": first["run_id"], "wait_seconds": 2}, on_progress)
        check(view["status"] == "succeeded" and view["package"], "the run succeeded", view)
        check(view["progress"]["objects_done"] == view["progress"]["objects_total"], "all copied",
              view)
        check(notes, "status calls send progress too")
        again = await s.ok("package_create_status", {"run_id": first["run_id"]})
        only = await s.ok("package_create_status", {})
        check(only["run_id"] == first["run_id"], "without run_id: the server's one run", only)
        check(again["package"] == view["package"], "the result is kept", again)
        s.check_no_secrets()
        return {"package": view["package"], "polls": polls, "returned_after": returned_after,
                "running_view": first, "progress": notes}


async def scenario_failing(config):
    async with connect(config, "legacy") as client:
        s = Session(client, config.get("secret"))
        request = {"source_bucket": config["source_bucket"], "source_prefix": config["source_prefix"],
                   "package_name": "team/failing", "target_registry": config["registry"],
                   "wait_seconds": 50}
        failed = await s.error("package_create_from_s3", request, "rolled back", "AccessDenied")
        run = failed.structured_content
        check(run and run["status"] == "failed" and run["error"], "structured failure", run)
        kept = await s.error("package_create_status", {"run_id": run["run_id"]}, "rolled back")
        check(kept.structured_content["error"] == run["error"], "the failure is kept")
        # Still serving.
        listed = await s.ok("packages_list", {"registry": config["registry"]})
        check("team/failing" not in listed["packages"], "no package was written", listed)
        s.check_no_secrets()
        return {"error": run["error"], "run_id": run["run_id"]}


async def scenario_incremental(config):
    """Two runs of one package: the second finds nothing changed and writes no version; a dry
    run says what it would reuse; `incremental: false` plans everything again."""
    async with connect(config, "legacy") as client:
        s = Session(client, config.get("secret"))
        request = {"source_bucket": config["source_bucket"], "source_prefix": config["source_prefix"],
                   "package_name": "team/inc", "target_registry": config["registry"],
                   "wait_seconds": 50}
        first = await s.ok("package_create_from_s3", request)
        check(first["status"] == "succeeded" and first["package"], "the first run creates", first)
        check(first["plan"]["incremental"] is None, "a first version has no base", first)
        second = await s.ok("package_create_from_s3", request)
        inc = second["plan"]["incremental"]
        check(second["status"] == "succeeded" and second["package"] is None,
              "an unchanged package gets no version", second)
        check(inc["up_to_date"] and inc["base"] == first["package"]["top_hash"], "up to date", second)
        check(inc["reused"]["objects"] == first["plan"]["objects"], "everything reused", second)
        check("Nothing changed" in second["next_step"], "the next step says so", second)
        dry = await s.ok("package_create_from_s3", dict(request, dry_run=True, incremental=False))
        check(dry["plan"]["incremental"] is None, "incremental: false plans a full run", dry)
        s.check_no_secrets()
        return {"first": first, "second": second}


async def scenario_sfn(config):
    async with connect(config, "legacy") as client:
        s = Session(client, config.get("secret"))
        request = {"source_bucket": config["source_bucket"], "source_prefix": config["source_prefix"],
                   "package_name": "team/sfn", "target_registry": config["registry"]}
        # Validation happens before any execution starts.
        await s.error("package_create_from_s3", dict(request, source_bucket="Bad_Bucket"),
                      "source_bucket")
        await s.error("package_create_from_s3", dict(request, max_concurrency=0), "max_concurrency")
        await s.error("package_create_from_s3", dict(request, idempotency_key=""), "idempotency_key")
        # A key makes a retried call (a host that lost the answer) return the same execution.
        request = dict(request, idempotency_key="mcp-retry-1", max_concurrency=3)
        notes = []

        async def on_progress(progress, total, message):
            notes.append({"progress": progress, "total": total, "message": message})

        view = await s.ok("package_create_from_s3", dict(request, wait_seconds=50), on_progress)
        check(view["engine"] == "step_functions" and view["run_id"].startswith("arn:aws:states:"),
              "an execution ARN", view)
        polls = 0
        while view["status"] == "running":
            polls += 1
            check(polls < 20, "the execution ends", view)
            view = await s.ok("package_create_status", {"run_id": view["run_id"], "wait_seconds": 30},
                              on_progress)
        check(view["status"] == "succeeded" and view["package"], "the execution made a package",
              view)
        check(view["plan"] and view["plan"]["objects"] == view["package"]["objects"], "plan", view)
        check(notes, "progress notifications in Step Functions mode")
        again = await s.ok("package_create_status", {"run_id": view["run_id"]})
        check(again["package"] == view["package"], "status by execution ARN", again)
        retried = await s.ok("package_create_from_s3", dict(request, wait_seconds=5))
        check(retried["run_id"] == view["run_id"] and retried["status"] == "succeeded",
              "a retried call with the same idempotency_key returns the same execution", retried)
        await s.error("package_create_status", {"run_id": view["run_id"] + "-nope"}, "execution")
        s.check_no_secrets()
        return {"package": view["package"], "polls": polls, "progress": notes}


def nested_object(depth):
    value = {}
    for _ in range(depth - 1):
        value = {"k": value}
    return value


async def scenario_agent_input(config):
    src, reg = config["source_bucket"], config["registry"]
    base = {"source_bucket": src, "package_name": "team/agent", "target_registry": reg,
            "dry_run": True}
    report = {}
    async with connect(config, "legacy") as client:
        s = Session(client, config.get("secret"))
        # Plain schemas: Inspector-like clients fill in every argument, including metadata.
        for tool in (await client.list_tools()).tools:
            text = json.dumps(tool.input_schema)
            check('"null"' not in text and '"format"' not in text and "anyOf" not in text,
                  f"{tool.name}: plain input schema", tool.input_schema)
            meta = tool.input_schema["properties"].get("metadata")
            check(meta is None or meta.get("type") == "object", f"{tool.name}.metadata", meta)
            check("uint" not in json.dumps(tool.output_schema), f"{tool.name}: output formats",
                  tool.output_schema)

        # No default registry on this server: the schemas say the registry is required.
        for tool in (await client.list_tools()).tools:
            for argument in ("target_registry", "registry"):
                if argument in tool.input_schema["properties"]:
                    check(argument in tool.input_schema.get("required", []),
                          f"{tool.name}.{argument} is required without a default registry",
                          tool.input_schema)
        await s.error("package_create_from_s3",
                      dict(base, tags=["a"], metadata={"tags": ["b"]}), "tags", "metadata")
        await s.error("package_create_from_s3", dict(base, tags=["a", " "]), "tags", "empty")

        # null is "not given": the whole bucket, every default.
        nulls = await s.ok("package_create_from_s3", dict(
            base, source_prefix=None, include_patterns=None, exclude_patterns=None,
            preserve_structure=None, metadata=None, target_bucket=None, description=None,
            hash_type=None, object_metadata=None, copy=None, overwrite_existing=None,
            wait_seconds=None))
        report["null_keys"] = nulls["plan"]["sample_logical_keys"]
        check(nulls["plan"]["source"] == f"s3://{src}/" and nulls["plan"]["copy"] is True,
              "null arguments take their defaults", nulls)
        listed = await s.ok("bucket_objects_list", {"bucket": src, "prefix": None,
                                                    "delimiter": None, "max_keys": None,
                                                    "continuation_token": None})
        check(listed["delimiter"] == "/" and listed["common_prefixes"] == ["data/"],
              "null listing arguments take their defaults", listed)

        # A source URI with a folder is the bucket and source_prefix.
        split = await s.ok("package_create_from_s3", dict(base, source_bucket=f"s3://{src}/data/"))
        check(split["plan"]["source"] == f"s3://{src}/data/", "source_bucket split", split)
        report["split_keys"] = split["plan"]["sample_logical_keys"]
        await s.error("package_create_from_s3", dict(base, source_bucket=f"s3://{src}/data/",
                                                     source_prefix="b/"),
                      "source_bucket", "source_prefix")

        # An object's URI as the key: the object, not s3://b/s3://b/….
        info = await s.ok("bucket_object_info", {"bucket": src, "key": f"s3://{src}/data/a.csv"})
        check(info["key"] == "data/a.csv" and info["uri"] == f"s3://{src}/data/a.csv",
              "object info by URI", info)
        await s.error("bucket_object_info", {"bucket": src, "key": "s3://other-bucket/data/a.csv"},
                      "key", "another bucket")

        # Page sizes outside 1-1000 are refused, naming the argument and the range.
        report["page_size_errors"] = [
            texts(await s.error("bucket_objects_list", {"bucket": src, "max_keys": bad},
                                "max_keys", "1 to 1000"))
            for bad in (0, 1001)]

        # Deeply nested globs: a tool error naming the field and the limit, never a crash.
        glob_errors = []
        for depth, limit in ((17, "at most 16 levels"), (2000, "at most 16 levels"),
                             (8000, "at most 4096 are allowed")):
            pattern = "{" * depth + "a" + "}" * depth
            glob_errors.append(texts(await s.error(
                "package_create_from_s3", dict(base, include_patterns=[pattern]),
                "include_patterns", limit)))
        report["glob_errors"] = [e[:300] for e in glob_errors]
        many = await s.ok("package_create_from_s3",
                          dict(base, exclude_patterns=["**/" * 1300 + "a.csv"]))
        check("data/a.csv" not in many["plan"]["sample_logical_keys"]
              and many["plan"]["excluded"] == 1, "a pattern of many `**`", many)

        # Nested metadata: past 64 levels a tool error; past what the server reads (128), a
        # JSON-RPC error for this request; both answered.
        await s.error("package_create_from_s3", dict(base, metadata=nested_object(100)),
                      "metadata", "at most 64 levels")
        try:
            await client.call_tool("package_create_from_s3",
                                   dict(base, metadata=nested_object(200)))
            check(False, "metadata 200 levels deep is refused")
        except MCPError as e:
            report["deep_metadata_error"] = {"code": e.code, "message": e.message}
        check(report["deep_metadata_error"]["code"] == -32600
              and "at most 128" in report["deep_metadata_error"]["message"],
              "deep metadata: invalid request", report)
        await client.send_ping()
        again = await s.ok("package_create_from_s3", base)
        check(again["plan"]["objects"] == nulls["plan"]["objects"], "the server is still up")
        s.check_no_secrets()
    report["raw"] = await raw_stdio(config)
    return report


async def walk(s, tool, args):
    """Every page of a listing, following next_continuation_token: (pages, largest page in
    bytes of structured JSON or of any text block)."""
    pages, token = [], None
    while True:
        result = await s.call(tool, dict(args, continuation_token=token) if token else args)
        check(not result.is_error, f"{tool} failed: {texts(result)}", args)
        page = result.structured_content
        size = max([len(json.dumps(page, separators=(",", ":")))]
                   + [len(c.text.encode()) for c in result.content])
        pages.append((page, size))
        token = page["next_continuation_token"]
        check(not token or "next_continuation_token" in result.content[0].text,
              f"{tool}: the summary says how to go on", result.content[0].text)
        if not token:
            return [p for p, _ in pages], max(size for _, size in pages)


async def scenario_paging(config):
    src, reg, prefix = config["source_bucket"], config["registry"], config["prefix"]
    report = {}
    async with connect(config, "legacy") as client:
        s = Session(client, config.get("secret"))
        # S3 pages of 1000 keys, served in pages under 40 KiB: each key or folder once, in order.
        for name, delimiter, want in (("keys", "", config["keys"]), ("folders", "/", config["names"])):
            args = {"bucket": src, "prefix": prefix, "delimiter": delimiter, "max_keys": 1000}
            pages, largest = await walk(s, "bucket_objects_list", args)
            listed = []
            for page in pages:
                objects = [o["key"] for o in page["objects"]]
                check(objects == sorted(objects)
                      and page["common_prefixes"] == sorted(page["common_prefixes"]),
                      "each list in order on a page", page)
                listed += sorted(objects + page["common_prefixes"])
            check(listed == sorted(want), f"{name}: every item once, in S3's order",
                  listed, sorted(want))
            report[name] = {"pages": len(pages), "largest": largest}
        first = await s.ok("bucket_objects_list", {"bucket": src, "prefix": prefix, "delimiter": ""})
        token = first["next_continuation_token"]
        await s.error("bucket_objects_list", {"bucket": src, "prefix": prefix,
                                              "continuation_token": token},
                      "continuation_token", "another listing")
        await s.error("bucket_objects_list", {"bucket": src, "continuation_token": "nope"},
                      "continuation_token", "not a token from bucket_objects_list")

        # Registry listings one item a page: every name and version once.
        pages, _ = await walk(s, "packages_list", {"registry": reg, "max_items": 1})
        check(all(len(p["packages"]) == 1 and p["total"] == len(pages) for p in pages),
              "one name a page, the total on each", pages)
        report["packages"] = [p["packages"][0] for p in pages]
        pages, _ = await walk(s, "packages_list", {"registry": reg, "prefix": "team/",
                                                   "max_items": 2})
        report["team_packages"] = [n for p in pages for n in p["packages"]]
        pages, _ = await walk(s, "packages_list", {"registry": reg, "max_items": 1,
                                                   "package_name": config["package"]})
        report["versions"] = [v["timestamp"] for p in pages for v in p["versions"]]
        await s.error("packages_list", {"registry": reg, "max_items": 0},
                      "max_items: 0 is out of range; give 1 to 1000")
        names_token = (await s.ok("packages_list", {"registry": reg, "max_items": 1}))[
            "next_continuation_token"]
        await s.error("packages_list", {"registry": reg, "package_name": config["package"],
                                        "continuation_token": names_token},
                      "continuation_token", "another listing")
        s.check_no_secrets()
    return report


async def raw_stdio(config):
    """Lines a host may send that no SDK client would: each is answered, the server stays up."""
    import asyncio
    proc = await asyncio.create_subprocess_exec(
        config["command"], *config["args"], env=config["env"], stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, limit=1 << 20)

    async def send(message):
        line = message if isinstance(message, str) else json.dumps(message)
        proc.stdin.write(line.encode() + b"\n")
        await proc.stdin.drain()

    async def answer():
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        check(line, "the server answered")
        return json.loads(line)

    await send({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"}}})
    init = await answer()
    check(init.get("id") == 1 and "result" in init, "initialized", init)
    await send({"jsonrpc": "2.0", "method": "notifications/initialized"})
    await send("this is not JSON")
    not_json = await answer()
    check(not_json["id"] is None and not_json["error"]["code"] == -32700, "-32700", not_json)
    deep = "[" * 3000 + "]" * 3000
    await send('{"jsonrpc": "2.0", "id": 42, "method": "tools/call", "params": {"name": '
               '"packages_list", "arguments": {"registry": ' + deep + '}}}')
    too_deep = await answer()
    check(too_deep["id"] == 42 and too_deep["error"]["code"] == -32600
          and "3003 levels" in too_deep["error"]["message"], "-32600 with the id", too_deep)
    await send({"jsonrpc": "2.0", "id": 43, "method": "ping"})
    pong = await answer()
    check(pong == {"jsonrpc": "2.0", "id": 43, "result": {}}, "still serving", pong)
    proc.stdin.close()
    status = await asyncio.wait_for(proc.wait(), 30)
    check(status == 0, "the server exits cleanly when stdin closes", status)
    return {"not_json": not_json, "too_deep": too_deep, "pong": pong}


async def scenario_misconfigured(config):
    needles = config["needles"]
    async with connect(config, "legacy") as client:
        s = Session(client, config.get("secret"))
        messages = []
        for name, args in [
            ("bucket_objects_list", {"bucket": "some-bucket"}),
            ("package_create_from_s3", {"source_bucket": "some-bucket", "package_name": "team/x",
                                        "target_registry": "s3://some-registry",
                                        "dry_run": True}),
        ]:
            started = time.monotonic()
            message = texts(await s.error(name, args, *needles))
            check("DispatchFailure" not in message and "try again" not in message,
                  f"{name}: a plain configuration error", message)
            check(time.monotonic() - started < 20, f"{name}: answered without a retry loop")
            messages.append(message)
        s.check_no_secrets()
        return {"messages": messages}


async def scenario_guarded(config):
    """A server started with an allowlist (S3QUILT_ALLOW_BUCKETS) and --read-only: every call
    naming another bucket, and every call that would write, is a tool error saying why."""
    src, reg, other = config["source_bucket"], config["registry"], config["other_bucket"]
    base = {"source_bucket": src, "package_name": "team/guarded", "target_registry": reg}
    messages = {}
    async with connect(config, "legacy") as client:
        s = Session(client, config.get("secret"))
        listed = await s.ok("bucket_objects_list", {"bucket": src})
        check(listed["common_prefixes"] == ["data/"], "an allowed bucket is listed", listed)
        planned = await s.ok("package_create_from_s3", dict(base, dry_run=True))
        check(planned["plan"]["objects"] == 2, "a dry run is planned on a read-only server",
              planned)
        refusals = [
            ("bucket_objects_list", {"bucket": other}, "bucket"),
            ("bucket_object_info", {"bucket": other, "key": "data/a.csv"}, "bucket"),
            ("packages_list", {"registry": f"s3://{other}"}, "registry"),
            ("package_browse", {"registry": other, "package_name": "team/x"}, "registry"),
            ("package_create_from_s3", dict(base, source_bucket=other, dry_run=True),
             "source_bucket"),
            ("package_create_from_s3", dict(base, target_registry=other, dry_run=True),
             "target_registry"),
            ("package_create_from_s3", dict(base, target_bucket=other, dry_run=True),
             "target_bucket"),
            ("package_create", {"package_name": "team/guarded", "target_registry": reg,
                                "entries": [{"source": f"s3://{other}/data/a.csv"}]},
             "entries"),
        ]
        for name, arguments, field in refusals:
            result = await s.error(name, arguments, f"{field}: bucket", other, "--allow-bucket")
            messages[f"{name}.{field}"] = texts(result)
        for name, arguments in (
            ("package_create_from_s3", base),
            ("package_create", {"package_name": "team/guarded", "target_registry": reg,
                                "entries": [{"source": f"s3://{src}/data/a.csv"}]}),
            ("package_runs", {"registry": reg, "action": "abort",
                              "run_id": "20260101T000000Z-0123456789abcdef"}),
        ):
            result = await s.error(name, arguments, "read-only", "--read-only")
            messages[f"{name}.read_only"] = texts(result)
        s.check_no_secrets()
    return {"messages": messages}


async def scenario_http(config):
    """`s3quilt mcp --http 127.0.0.1:0` with a bearer token: a request without the token is
    refused with 401; with it, one session (2025-11-25 handshake) creates a package with
    progress notifications, a second client (2026-07-28, no session) follows the same run by
    its id, and SIGTERM ends the server with status 0."""
    import subprocess

    import httpx2
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    token = config["token"]
    proc = subprocess.Popen([config["command"], *config["args"]], env=config["env"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=sys.stderr,
                            text=True)
    report = {}
    try:
        line = await anyio.to_thread.run_sync(proc.stdout.readline)
        check(line.startswith("listening http://127.0.0.1:") and line.strip().endswith("/mcp"),
              "the server says where it listens", line)
        url = line.split()[1]
        initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "probe", "version": "0"}}}
        headers = {"Accept": "application/json, text/event-stream"}
        async with httpx2.AsyncClient() as http:
            for auth in (None, "Bearer wrong-token-0123456789", f"Basic {token}"):
                sent = dict(headers, **({"Authorization": auth} if auth else {}))
                refused = await http.post(url, json=initialize, headers=sent)
                check(refused.status_code == 401
                      and refused.headers.get("www-authenticate", "").startswith("Bearer"),
                      f"a request with authorization {auth!r} is refused",
                      refused.status_code, refused.text)
            elsewhere = await http.post(url.replace("/mcp", "/other"), json=initialize,
                                        headers=dict(headers, Authorization=f"Bearer {token}"))
            check(elsewhere.status_code == 404, "only /mcp is served", elsewhere.status_code)

        def client(mode):
            http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
            return Client(streamable_http_client(url, http_client=http), mode=mode,
                          read_timeout_seconds=120)

        request = {"source_bucket": config["source_bucket"], "source_prefix": "data/",
                   "package_name": "team/remote", "target_registry": config["registry"],
                   "description": "made over Streamable HTTP"}
        async with client("legacy") as c:
            s = Session(c, config.get("secret"))
            names = await check_tools(c)
            report["tools"] = names
            preview = await s.ok("package_create_from_s3", dict(request, dry_run=True))
            notes = []

            async def on_progress(progress, total, message):
                notes.append({"progress": progress, "total": total, "message": message})

            made = await s.ok("package_create_from_s3", dict(request, wait_seconds=50),
                              on_progress)
            check(made["status"] == "succeeded" and made["package"], "created over HTTP", made)
            check(notes and notes[-1]["progress"] == made["package"]["objects"],
                  "progress notifications over HTTP", notes)
            check(all(a["progress"] < b["progress"] for a, b in zip(notes, notes[1:])),
                  "progress increases", notes)
            report["package"] = made["package"]
            report["preview_keys"] = preview["plan"]["sample_logical_keys"]
            s.check_no_secrets()
        async with client("auto") as c:
            s = Session(c, config.get("secret"))
            followed = await s.ok("package_create_status", {"run_id": made["run_id"]})
            check(followed["status"] == "succeeded"
                  and followed["package"] == made["package"],
                  "another client follows the run by its id", followed)
            page = await s.ok("package_browse", {"package_name": "team/remote",
                                                 "registry": config["registry"]})
            report["browsed_keys"] = [e["logical_key"] for e in page["entries"]]
    finally:
        proc.send_signal(15)
        try:
            report["exit_status"] = await anyio.to_thread.run_sync(
                lambda: proc.wait(timeout=30))
        except subprocess.TimeoutExpired:
            proc.kill()
            report["exit_status"] = "killed after 30 s"
    check(report["exit_status"] == 0, "SIGTERM ends the server cleanly", report)
    return report


async def scenario_disconnect(config):
    """A host that goes away mid-run, as Claude Desktop does (stdin closed, SIGTERM after 2 s,
    SIGKILL 2 s later): phase "leave" starts a run and disconnects while it copies; phase
    "retry" (a new server) sends the same call again."""
    request = {"source_bucket": config["source_bucket"], "source_prefix": "run/",
               "package_name": "team/left", "target_registry": config["registry"]}
    async with connect(config, "legacy") as client:
        s = Session(client, config.get("secret"))
        if config["phase"] == "leave":
            started = await s.ok("package_create_from_s3", dict(request, wait_seconds=0))
            progress = started["progress"]
            check(started["status"] == "running" and progress["phase"] == "copying"
                  and progress["objects_done"] < progress["objects_total"],
                  "the client leaves while the run copies", started)
            left_at = time.monotonic()
            result = {"left": started}
        else:
            made = await s.ok("package_create_from_s3", dict(request, wait_seconds=50))
            check(made["status"] == "succeeded" and made["package"],
                  "the retried call creates the package", made)
            result = {"package": made["package"]}
    # The SDK closed stdin and waited for the server (killing it after 4 s).
    if config["phase"] == "leave":
        result["server_gone_after"] = time.monotonic() - left_at
    return result


SCENARIOS = {"disconnect": scenario_disconnect, "http": scenario_http, "guarded": scenario_guarded, "misconfigured": scenario_misconfigured, "main": scenario_main, "slow": scenario_slow, "failing": scenario_failing,
             "sfn": scenario_sfn, "agent_input": scenario_agent_input, "paging": scenario_paging,
             "incremental": scenario_incremental}


def main():
    scenario, config = sys.argv[1], json.loads(sys.argv[2])
    try:
        report = anyio.run(SCENARIOS[scenario], config)
    except BaseException as e:  # noqa: BLE001 - reported, then exit 1
        traceback.print_exc()
        emit({"error": f"{type(e).__name__}: {e}"})
        sys.exit(1)
    emit(report)


if __name__ == "__main__":
    main()
