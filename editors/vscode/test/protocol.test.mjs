// The extension's side of the protocol, against the real server over stdio: the client
// capabilities vscode-languageclient 9 sends, the initializationOptions and configuration
// changes the extension builds from its settings, and inline completion requests shaped the
// way the extension sends them. Random weights give arbitrary text, so the checks are on
// shapes: ranges, types, options, states.

import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";

import { computeClientCapabilities, FIXTURE as CAPABILITIES_FIXTURE } from "./clientCapabilities.mjs";

const require = createRequire(import.meta.url);
const protocol = require("vscode-languageserver-protocol/node");
const { SECTION, STATUS_COMMAND, serverCommand, serverOptions } = require("../dist/settings.js");
const { lspInlineContext } = require("../dist/inlineContext.js");
const manifest = require("../package.json");

const ROOT = fileURLToPath(new URL("../../../", import.meta.url));
const FIXTURES = join(ROOT, "tests", "fixtures");
const SAMPLE = readFileSync(join(ROOT, "lsp_server", "demo_sample.py"), "utf8");
const VSCODE_INVOKE = 0; // vscode.InlineCompletionTriggerKind
const VSCODE_AUTOMATIC = 1;
const READY_TIMEOUT_MS = 90_000;
const SHUTDOWN_TIMEOUT_MS = 15_000;
const DIAGNOSTICS_TIMEOUT_MS = 90_000;

const readJson = (path) => JSON.parse(readFileSync(path, "utf8"));

/** A setting reader over the manifest's defaults, with `overrides` by key. */
function settingsWith(overrides = {}) {
  const properties = manifest.contributes.configuration.properties;
  return (key) => (key in overrides ? overrides[key] : properties[`${SECTION}.${key}`]?.default);
}

function python() {
  const venv = join(ROOT, ".venv", "bin", "python");
  return process.env.GPTBIGCODE_PYTHON || (existsSync(venv) ? venv : "python3");
}

/** The checkpoint folder to serve: $GPTBIGCODE_TEST_MODEL, or a small random one built now. */
function testModel() {
  if (process.env.GPTBIGCODE_TEST_MODEL) {
    return process.env.GPTBIGCODE_TEST_MODEL;
  }
  const folder = join(mkdtempSync(join(tmpdir(), "gptbigcode-vscode-")), "tiny");
  const build = "import sys, pathlib, lsp_fixtures; lsp_fixtures.build_checkpoint(pathlib.Path(sys.argv[1]))";
  execFileSync(python(), ["-c", build, folder], {
    cwd: ROOT,
    env: { ...process.env, PYTHONPATH: join(ROOT, "tests") },
    stdio: ["ignore", "ignore", "inherit"],
  });
  return folder;
}

/** The position just after the first `needle` (UTF-16 units, as JavaScript strings count). */
function positionAfter(text, needle) {
  const offset = text.indexOf(needle) + needle.length;
  assert.ok(offset >= needle.length, `${needle} not in the text`);
  const before = text.slice(0, offset);
  const line = before.split("\n").length - 1;
  return { line, character: offset - (before.lastIndexOf("\n") + 1) };
}

/** `line` with TextEdits on it applied (every edit on that one line; ranges do not overlap). */
function applyLineEdits(line, edits) {
  const sorted = [...edits].sort((a, b) => b.range.start.character - a.range.start.character);
  return sorted.reduce(
    (text, e) => text.slice(0, e.range.start.character) + e.newText + text.slice(e.range.end.character),
    line,
  );
}

// ---- fixtures: what the extension sends

test("client capabilities fixture is what vscode-languageclient computes with the extension's features", () => {
  const computed = computeClientCapabilities();
  assert.deepEqual(readJson(CAPABILITIES_FIXTURE), computed, "run `npm run capabilities` to update the fixture");
  assert.deepEqual(computed.textDocument.inlineCompletion, { dynamicRegistration: true });
  assert.deepEqual(computed.general.positionEncodings, ["utf-16"]);
  assert.equal(computed.window.workDoneProgress, true);
});

test("initializationOptions fixture is what the extension builds from default settings", () => {
  const built = serverOptions(settingsWith());
  assert.deepEqual(readJson(join(FIXTURES, "vscode_initialization_options.json")), built);
  assert.equal(built.contextTokens, null); // unset: the server's default
  assert.deepEqual(built.stop, []);
  assert.equal(built.diagnostics.enabled, true); // the "diagnostics." settings, nested
  assert.equal(built.diagnostics.secretThreshold, null);
});

test("server command prefers server.command, then pythonPath -m lsp_server, then gptbigcode-lsp", () => {
  const args = ["--threads", "2"];
  assert.deepEqual(serverCommand(settingsWith({ "server.args": args })), { command: "gptbigcode-lsp", args });
  assert.deepEqual(serverCommand(settingsWith({ "server.pythonPath": "/venv/bin/python", "server.args": args })), {
    command: "/venv/bin/python",
    args: ["-m", "lsp_server", ...args],
  });
  const both = settingsWith({ "server.command": " /opt/lsp ", "server.pythonPath": "/venv/bin/python" });
  assert.deepEqual(serverCommand(both), { command: "/opt/lsp", args: [] });
});

test("inline context maps VS Code's trigger kinds and selected completion to LSP 3.18", () => {
  assert.deepEqual(lspInlineContext({ triggerKind: VSCODE_INVOKE }), { triggerKind: 1 });
  assert.deepEqual(lspInlineContext({ triggerKind: VSCODE_AUTOMATIC }), { triggerKind: 2 });
  // vscode.Range has more than start/end, and serializes as an array: only positions go out.
  const range = { start: { line: 1, character: 2, extra: 0 }, end: { line: 1, character: 5 }, isEmpty: false };
  const mapped = lspInlineContext({ triggerKind: VSCODE_INVOKE, selectedCompletionInfo: { range, text: "abc" } });
  assert.deepEqual(mapped.selectedCompletionInfo, {
    range: { start: { line: 1, character: 2 }, end: { line: 1, character: 5 } },
    text: "abc",
  });
});

// ---- the real server

/** The server process and a protocol connection to it, recording what the server sends. */
function startServer(settings) {
  const { command, args } = serverCommand(settings);
  const child = spawn(command, args, { cwd: ROOT, stdio: ["pipe", "pipe", "pipe"] });
  let stderr = "";
  child.stderr.on("data", (chunk) => {
    stderr = (stderr + chunk).slice(-20_000);
  });
  const connection = protocol.createProtocolConnection(
    new protocol.StreamMessageReader(child.stdout),
    new protocol.StreamMessageWriter(child.stdin),
  );
  const seen = { messages: [], progress: [], diagnostics: new Map() };
  connection.onRequest(protocol.WorkDoneProgressCreateRequest.type, ({ token }) => {
    connection.onProgress(protocol.WorkDoneProgress.type, token, (value) => seen.progress.push(value));
    return null;
  });
  connection.onRequest(protocol.RegistrationRequest.type, () => null);
  connection.onRequest(protocol.ConfigurationRequest.type, ({ items }) =>
    items.map((item) => (item.section === SECTION ? serverOptions(settings) : null)),
  );
  connection.onNotification(protocol.ShowMessageNotification.type, (params) => seen.messages.push(params));
  connection.onNotification(protocol.LogMessageNotification.type, () => {});
  connection.onNotification(protocol.PublishDiagnosticsNotification.type, ({ uri, diagnostics }) =>
    seen.diagnostics.set(uri, diagnostics),
  );
  connection.listen();
  return { child, connection, seen, stderr: () => stderr };
}

describe("the extension's requests against the real server over stdio", { timeout: 240_000 }, () => {
  const model = testModel();
  const settings = settingsWith({
    model,
    debounceMs: 0,
    maxNewTokens: 12,
    "server.pythonPath": python(),
    "server.args": ["--threads", "1"],
  });
  let server;
  let initializeResult;
  let readyStatus;
  let documents = 0;

  const status = () =>
    server.connection.sendRequest(protocol.ExecuteCommandRequest.type, { command: STATUS_COMMAND, arguments: [] });
  const warnings = () => server.seen.messages.filter((m) => m.type <= protocol.MessageType.Warning);

  function open(text) {
    const uri = `file:///work/vscode-test-${documents++}.py`;
    server.connection.sendNotification(protocol.DidOpenTextDocumentNotification.type, {
      textDocument: { uri, languageId: "python", version: 1, text },
    });
    return uri;
  }

  function inline(uri, position, context) {
    return server.connection.sendRequest(protocol.InlineCompletionRequest.type, {
      textDocument: { uri },
      position,
      context,
    });
  }

  before(async () => {
    server = startServer(settings);
    const exited = new Promise((resolve) => server.child.once("exit", (code) => resolve(code)));
    const initialize = server.connection.sendRequest(protocol.InitializeRequest.type, {
      processId: process.pid,
      clientInfo: { name: "Visual Studio Code", version: manifest.engines.vscode.replace(/^\^/, "") },
      locale: "en",
      rootPath: null,
      rootUri: null,
      capabilities: readJson(CAPABILITIES_FIXTURE),
      initializationOptions: serverOptions(settings),
      trace: "off",
      workspaceFolders: null,
    });
    initializeResult = await Promise.race([
      initialize,
      exited.then((code) => assert.fail(`the server exited (${code}) before initialize:\n${server.stderr()}`)),
    ]);
    server.connection.sendNotification(protocol.InitializedNotification.type, {});
    const deadline = Date.now() + READY_TIMEOUT_MS;
    do {
      readyStatus = await status();
      if (readyStatus.state === "ready" || readyStatus.state === "failed") break;
      await new Promise((resolve) => setTimeout(resolve, 100));
    } while (Date.now() < deadline);
  });

  after(async () => {
    if (!server) return;
    const exited = new Promise((resolve) => server.child.once("exit", () => resolve(true)));
    const timeout = new Promise((resolve) => setTimeout(() => resolve(false), SHUTDOWN_TIMEOUT_MS).unref());
    const shutdown = server.connection
      .sendRequest(protocol.ShutdownRequest.type)
      .then(() => server.connection.sendNotification(protocol.ExitNotification.type));
    const stopped = await Promise.race([shutdown.then(() => exited), exited, timeout]);
    server.child.kill();
    server.connection.dispose();
    assert.ok(stopped, `the server did not exit within ${SHUTDOWN_TIMEOUT_MS} ms of shutdown and exit`);
  });

  test("initialize offers inline completion, the status command and UTF-16 positions", () => {
    const capabilities = initializeResult.capabilities;
    assert.ok(capabilities.inlineCompletionProvider, JSON.stringify(capabilities));
    assert.ok(capabilities.executeCommandProvider.commands.includes(STATUS_COMMAND));
    assert.ok([undefined, "utf-16"].includes(capabilities.positionEncoding));
  });

  test("the model loads with $/progress and the options the extension sent", () => {
    assert.equal(readyStatus.state, "ready", `${JSON.stringify(readyStatus)}\n${server.stderr()}`);
    assert.equal(readyStatus.positionEncoding, "utf-16");
    assert.equal(readyStatus.options.model, model);
    assert.equal(readyStatus.options.maxNewTokens, 12);
    const kinds = server.seen.progress.map((value) => value.kind);
    assert.equal(kinds[0], "begin");
    assert.equal(kinds.at(-1), "end");
    assert.deepEqual(warnings(), []); // every option the extension sends is accepted
  });

  test("inline completion items are anchored at the cursor with text to insert", async () => {
    const uri = open(SAMPLE);
    const places = ["a, b = b, a + b", "    return a", "math.hypot(", "raise ValueError(", "best = points[0]"];
    const texts = [];
    for (const place of places) {
      const at = positionAfter(SAMPLE, place);
      const result = await inline(uri, at, lspInlineContext({ triggerKind: VSCODE_AUTOMATIC }));
      assert.ok(Array.isArray(result.items), JSON.stringify(result));
      for (const item of result.items) {
        assert.deepEqual(item.range, { start: at, end: at });
        assert.equal(typeof item.insertText, "string");
        texts.push(item.insertText);
      }
    }
    assert.ok(
      texts.some((text) => text.trim() !== ""),
      `no suggestion at any of ${places.length} places`,
    );
    const recent = (await server.connection.sendRequest(protocol.ExecuteCommandRequest.type, {
      command: STATUS_COMMAND,
      arguments: [{ requests: true }],
    })).recent;
    assert.ok(recent.slice(-places.length).every((r) => ["model", "typeThrough"].includes(r.outcome)));
  });

  test("an explicitly invoked request with a selected completion item is accepted", async () => {
    const text = "import math\n\n\ndef norm(x, y):\n    return math.hy\n";
    const uri = open(text);
    const at = positionAfter(text, "math.hy");
    const selected = { range: { start: { line: at.line, character: at.character - 2 }, end: at }, text: "hypot" };
    const context = lspInlineContext({ triggerKind: VSCODE_INVOKE, selectedCompletionInfo: selected });
    const result = await inline(uri, at, context);
    for (const item of result.items) {
      assert.deepEqual(item.range, { start: at, end: at });
      assert.equal(typeof item.insertText, "string");
    }
    const recent = (await server.connection.sendRequest(protocol.ExecuteCommandRequest.type, {
      command: STATUS_COMMAND,
      arguments: [{ requests: true }],
    })).recent;
    assert.equal(recent.at(-1).kind, "inline");
    assert.ok(["model", "typeThrough"].includes(recent.at(-1).outcome), JSON.stringify(recent.at(-1)));
  });

  test("changed settings reach the running server as didChangeConfiguration", async () => {
    const changed = settingsWith({ model, debounceMs: 0, maxNewTokens: 5, "diagnostics.bugThreshold": 0.9 });
    server.connection.sendNotification(protocol.DidChangeConfigurationNotification.type, {
      settings: { [SECTION]: serverOptions(changed) },
    });
    const options = (await status()).options;
    assert.equal(options.maxNewTokens, 5);
    assert.equal(options.debounceMs, 0);
    assert.equal(options.diagnostics.bugThreshold, 0.9);
    assert.equal(options.diagnostics.debounceMs, 400); // the other diagnostics settings as they were
    assert.equal((await status()).state, "ready"); // same model: no reload
    assert.deepEqual(warnings(), []);
  });

  test("diagnostics are published after a secret is typed, with a quick fix reading it from the environment", async () => {
    const text = "import os\n\n";
    const uri = open(text);
    const secretLine = 'AWS_SECRET_ACCESS_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzQ1x9Lq3Ts"';
    server.connection.sendNotification(protocol.DidChangeTextDocumentNotification.type, {
      textDocument: { uri, version: 2 },
      contentChanges: [
        { range: { start: { line: 2, character: 0 }, end: { line: 2, character: 0 } }, text: `${secretLine}\n` },
      ],
    });
    const deadline = Date.now() + DIAGNOSTICS_TIMEOUT_MS; // the diagnostics model loads on first use
    while (!server.seen.diagnostics.get(uri)?.length && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    const diagnostics = server.seen.diagnostics.get(uri) ?? [];
    const secret = diagnostics.find((d) => d.range.start.line === 2 && d.code?.startsWith("secret/"));
    assert.ok(secret, `${JSON.stringify(diagnostics)}\n${JSON.stringify((await status()).diagnostics)}`);
    assert.equal(secret.source, "gptbigcode");
    assert.equal(secret.severity, protocol.DiagnosticSeverity.Warning);
    const flagged = secretLine.slice(secret.range.start.character, secret.range.end.character);
    assert.ok(flagged.length > 0 && "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzQ1x9Lq3Ts".includes(flagged), flagged);

    const actions = await server.connection.sendRequest(protocol.CodeActionRequest.type, {
      textDocument: { uri },
      range: secret.range,
      context: { diagnostics: [secret], only: [protocol.CodeActionKind.QuickFix], triggerKind: 1 },
    });
    assert.equal(actions.length, 1, JSON.stringify(actions));
    const [action] = actions;
    assert.equal(action.kind, protocol.CodeActionKind.QuickFix);
    assert.match(action.title, /environment variable AWS_SECRET_ACCESS_KEY$/);
    const edits = action.edit.changes[uri];
    assert.ok(edits.every((e) => e.range.start.line === 2 && e.range.end.line === 2), JSON.stringify(edits));
    const fixed = applyLineEdits(secretLine, edits);
    assert.ok(/os\.environ\[["']AWS_SECRET_ACCESS_KEY["']\]/.test(fixed), fixed);
    assert.ok(!fixed.includes(flagged), fixed); // the secret itself is gone
  });
});
