#!/usr/bin/env python3
"""quilt3 8.0.0 as a test oracle for s3quilt.

Subcommands (each prints exactly one JSON line, the last line of stdout):

  browse --registry s3://BUCKET --name NS/NAME [--top-hash HASH] [--set-meta JSON]
      Loads a package with quilt3.Package.browse and reports its top hash, message,
      package metadata and every entry in walk order, with each entry's object fetched
      and its hash verified by quilt3's own PackageEntry._verify_hash. With --set-meta,
      also reports "top_hash_with_meta": the top hash quilt3 computes once the package
      metadata is replaced by json.loads(JSON), i.e. what the package's hash should be had
      the user handed quilt3 that text.

  push --registry s3://BUCKET --name NS/NAME --spec FILE [--message TEXT] [--meta JSON]
       [--no-workflow | --workflow ID] [--copy-all] [--dest S3URL]
      FILE is JSON: [{"logical_key": ..., "source": "s3://bucket/key[?versionId=..]",
      "meta": {...} | null}]. Builds a quilt3.Package, pushes it with force=True and
      reports the pushed package.

  hash --file PATH
      Hashes a local file with quilt3.checksums.

Environment: AWS_ENDPOINT_URL (e.g. a local moto server) and test credentials come from the
caller. Telemetry is always disabled. On failure a traceback goes to stderr, the last stdout
line is {"error": ...} and the exit status is 1.
"""

import argparse
import hashlib
import json
import os
import sys
import traceback

# Must be set before quilt3 is imported: no telemetry, no local object/manifest cache, no
# progress bars.
os.environ["QUILT_DISABLE_USAGE_METRICS"] = "true"
os.environ.setdefault("QUILT_DISABLE_CACHE", "true")
os.environ.setdefault("QUILT_MINIMIZE_STDOUT", "true")

import quilt3  # noqa: E402
from quilt3 import checksums  # noqa: E402
from quilt3.telemetry import ApiTelemetry  # noqa: E402
from quilt3.util import QuiltException  # noqa: E402

# Belt and braces: never send usage metrics, whatever the config file says.
ApiTelemetry.telemetry_disabled = True

HASH_TYPES = (checksums.SHA256_CHUNKED_HASH_NAME, checksums.CRC64NVME_HASH_NAME)


def emit(obj):
    sys.stdout.flush()
    sys.stdout.write(json.dumps(obj, ensure_ascii=True, allow_nan=False) + "\n")
    sys.stdout.flush()


def entry_dict(logical_key, entry, *, verify):
    out = {
        "logical_key": logical_key,
        "physical_key": str(entry.physical_key),
        "size": entry.size,
        "hash": entry.hash,
        # The entry's whole `meta` object as written in the manifest line.
        "meta": entry._meta,
        # What quilt3 shows its users as entry metadata: meta["user_meta"] or {}.
        "user_meta": entry.meta,
    }
    if verify:
        data = entry.get_bytes(use_cache_if_available=False)
        try:
            entry._verify_hash(data)
            out["hash_valid"] = True
            out["hash_error"] = None
        except QuiltException as e:
            out["hash_valid"] = False
            out["hash_error"] = str(e)
        out["bytes_sha256"] = hashlib.sha256(data).hexdigest()
        out["bytes_len"] = len(data)
    return out


def header_dict(pkg):
    meta = pkg._meta
    return {
        "message": meta.get("message"),
        # Package metadata (the manifest header's `user_meta`), {} when absent.
        "user_meta": pkg.meta,
        "has_user_meta": "user_meta" in meta,
        "workflow": meta.get("workflow"),
        # The whole header object (line 1 of the manifest), as quilt3 holds it.
        "header": meta,
    }


def cmd_browse(args):
    pkg = quilt3.Package.browse(args.name, registry=args.registry, top_hash=args.top_hash)
    out = {
        # Recomputed by quilt3 from the loaded content.
        "top_hash": pkg.top_hash,
        # The hash the manifest was found under (latest pointer or --top-hash).
        "loaded_top_hash": pkg._origin.top_hash if pkg._origin is not None else None,
    }
    out.update(header_dict(pkg))
    if args.no_verify:
        # Only what quilt3 reads from the manifest (its entries may share physical keys).
        out["entries"] = [entry_dict(lk, e, verify=False) for lk, e in pkg.walk()]
    else:
        out["entries"] = [entry_dict(lk, e, verify=True) for lk, e in pkg.walk()]
        out["all_hashes_valid"] = all(e["hash_valid"] for e in out["entries"])
    if args.set_meta is not None:
        pkg.set_meta(json.loads(args.set_meta))
        out["top_hash_with_meta"] = pkg.top_hash
    emit(out)


def cmd_push(args):
    with open(args.spec, encoding="utf-8") as f:
        spec = json.load(f)
    pkg = quilt3.Package()
    for item in spec:
        meta = item.get("meta")
        if meta is None:
            pkg.set(item["logical_key"], item["source"])
        else:
            pkg.set(item["logical_key"], item["source"], meta=meta)
    if args.meta is not None:
        pkg.set_meta(json.loads(args.meta))

    kwargs = dict(registry=args.registry, message=args.message, force=True)
    if args.no_workflow:
        # None = do not use any workflow (`"id": null` where the registry has a workflows
        # config; refused where it has none).
        kwargs["workflow"] = None
    elif args.workflow is not None:
        kwargs["workflow"] = args.workflow
    if args.copy_all:
        kwargs["selector_fn"] = quilt3.Package.selector_fn_copy_all
    if args.dest is not None:
        kwargs["dest"] = args.dest

    # push() prints human-readable lines to stdout; our JSON line comes last.
    pushed = pkg.push(args.name, **kwargs)
    top_hash = pushed.top_hash
    out = {
        "top_hash": top_hash,
        "manifest_key": f".quilt/packages/{top_hash}",
    }
    out.update(header_dict(pushed))
    out["entries"] = [entry_dict(lk, e, verify=False) for lk, e in pushed.walk()]
    emit(out)


def cmd_hash(args):
    with open(args.file, "rb") as f:
        data = f.read()
    out = {t: checksums.calculate_multipart_checksum_bytes(data, checksum_type=t) for t in HASH_TYPES}
    out[checksums.SHA256_HASH_NAME] = checksums.legacy_calculate_checksum_bytes(data)
    out["size"] = len(data)
    emit(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description="quilt3 oracle for s3quilt tests")
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("browse")
    p.add_argument("--registry", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--top-hash", default=None)
    p.add_argument("--set-meta", default=None, help="package metadata as a JSON text")
    p.add_argument("--no-verify", action="store_true", help="do not read and hash the entries")
    p.set_defaults(func=cmd_browse)

    p = sub.add_parser("push")
    p.add_argument("--registry", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--spec", required=True)
    p.add_argument("--message", default=None)
    p.add_argument("--meta", default=None, help="package metadata as a JSON text")
    p.add_argument("--no-workflow", action="store_true", help="push with workflow=None")
    p.add_argument("--workflow", default=None, help="push with workflow=ID")
    p.add_argument("--copy-all", action="store_true", help="selector_fn=Package.selector_fn_copy_all")
    p.add_argument("--dest", default=None, help="S3 URL prefix in the registry bucket")
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("hash")
    p.add_argument("--file", required=True)
    p.set_defaults(func=cmd_hash)

    args = parser.parse_args(argv)
    try:
        args.func(args)
    except Exception as e:  # noqa: BLE001 - report any failure as the JSON line
        traceback.print_exc(file=sys.stderr)
        emit({"error": f"{type(e).__name__}: {e}"})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
