// A second real MCP client: the TypeScript SDK (@modelcontextprotocol/sdk, pinned in .ci/run)
// driving `s3quilt mcp` over stdio and over Streamable HTTP, for tests/tests/mcp.rs.
//
// Usage: node mcp_client.mjs CONFIG_JSON
// CONFIG_JSON: {"sdk": dir of the SDK's package, "command", "args", "env" (the stdio server),
//   "http_args" (the same server with --http), "token", "source_bucket", "registry"}.
// Over each transport: list the tools, a dry run, then a real run (with a progress token) of
// the same request to package `team/ts-<transport>`. Prints one JSON line with what it saw.

import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { pathToFileURL } from "node:url";
import path from "node:path";

const config = JSON.parse(process.argv[2]);
const sdk = (rel) => import(pathToFileURL(path.join(config.sdk, "dist", "esm", rel)).href);
const { Client } = await sdk("client/index.js");
const { StdioClientTransport } = await sdk("client/stdio.js");
const { StreamableHTTPClientTransport } = await sdk("client/streamableHttp.js");

function check(condition, message, context) {
  if (!condition) {
    throw new Error(`${message}\n${JSON.stringify(context ?? null).slice(0, 4000)}`);
  }
}

async function exercise(transport, name) {
  const client = new Client({ name: "s3quilt-ts-test", version: "1.0.0" });
  await client.connect(transport);
  const { tools } = await client.listTools();
  const names = tools.map((t) => t.name).sort();
  check(names.includes("package_create_from_s3") && names.includes("package_browse"),
    `${name}: the tools`, names);
  const request = {
    source_bucket: config.source_bucket, source_prefix: "data/",
    package_name: `team/ts-${name}`, target_registry: config.registry,
  };
  const dry = await client.callTool({ name: "package_create_from_s3",
    arguments: { ...request, dry_run: true } });
  check(!dry.isError && dry.structuredContent?.plan?.objects > 0, `${name}: dry run`, dry);
  const notes = [];
  const made = await client.callTool(
    { name: "package_create_from_s3", arguments: { ...request, wait_seconds: 50 } },
    undefined,
    { onprogress: (p) => notes.push(p), timeout: 120000 },
  );
  check(!made.isError && made.structuredContent?.status === "succeeded",
    `${name}: created`, made);
  check(notes.length > 0, `${name}: progress notifications`, notes);
  for (let i = 1; i < notes.length; i++) {
    check(notes[i].progress > notes[i - 1].progress, `${name}: progress increases`, notes);
  }
  const bad = await client.callTool({ name: "package_create_from_s3",
    arguments: { ...request, max_keys: 3 } });
  check(bad.isError === true, `${name}: an unknown argument is a tool error`, bad);
  await client.close();
  return { tools: names, package: made.structuredContent.package, notes: notes.length };
}

const report = {};
report.stdio = await exercise(new StdioClientTransport({
  command: config.command, args: config.args, env: config.env, stderr: "inherit",
}), "stdio");

const server = spawn(config.command, config.http_args,
  { env: config.env, stdio: ["ignore", "pipe", "inherit"] });
const exited = new Promise((resolve) => server.on("exit", (code, signal) => resolve({ code, signal })));
try {
  const line = await new Promise((resolve, reject) => {
    const lines = createInterface({ input: server.stdout });
    lines.once("line", resolve);
    server.once("exit", () => reject(new Error("the HTTP server exited before listening")));
  });
  check(line.startsWith("listening http://127.0.0.1:"), "the HTTP server's address", line);
  const url = new URL(line.split(" ")[1]);
  report.http = await exercise(new StreamableHTTPClientTransport(url, {
    requestInit: { headers: { Authorization: `Bearer ${config.token}` } },
  }), "http");
} finally {
  server.kill("SIGTERM");
}
report.http_exit = await exited;
check(report.http_exit.code === 0, "SIGTERM ends the HTTP server cleanly", report.http_exit);
process.stdout.write(JSON.stringify(report) + "\n");
