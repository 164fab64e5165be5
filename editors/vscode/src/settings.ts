/** The extension's settings as the server's options and command line. Free of the `vscode`
 * module, so that the protocol tests run it in plain Node. */

import { homedir } from "node:os";

export const SECTION = "gptbigcode";
export const STATUS_COMMAND = "gptbigcode.status";

/** Settings (under "gptbigcode.") that are server options, under the same camelCase key. */
export const SERVER_OPTION_KEYS = [
  "model",
  "device",
  "dtype",
  "quantize",
  "decodePath",
  "maxNewTokens",
  "temperature",
  "topP",
  "contextTokens",
  "fimLayout",
  "stop",
  "debounceMs",
  "timeBudgetMs",
  "minConfidence",
  "candidates",
  "cacheBudgetMb",
  "warm",
] as const;

/** Settings under "gptbigcode.diagnostics." that are the server's `diagnostics` options. */
export const DIAGNOSTICS_OPTION_KEYS = [
  "enabled",
  "model",
  "secrets",
  "personalData",
  "bugs",
  "secretThreshold",
  "personalDataThreshold",
  "bugThreshold",
  "debounceMs",
  "maxChars",
] as const;

/** Settings under "gptbigcode.engine." that are the server's `engine` options. */
export const ENGINE_OPTION_KEYS = ["kind", "url", "model", "apiKeyEnv", "timeoutMs"] as const;

/** Settings under "gptbigcode.crossFile." that are the server's `crossFile` options. */
export const CROSS_FILE_OPTION_KEYS = ["enabled", "share"] as const;

/** Reads one setting by its key under "gptbigcode." (`getConfiguration("gptbigcode").get`). */
export type ReadSetting = (key: string) => unknown;

export interface ServerCommand {
  command: string;
  args: string[];
}

/** initializationOptions, and the section sent with workspace/didChangeConfiguration: every
 * server option, null where unset (the server then uses its own default); the
 * "crossFile.", "engine." and "diagnostics." settings go nested under `crossFile`, `engine`
 * and `diagnostics`, as the server reads them. */
export function serverOptions(read: ReadSetting): Record<string, unknown> {
  const options = readKeys(read, SERVER_OPTION_KEYS, "");
  options.crossFile = readKeys(read, CROSS_FILE_OPTION_KEYS, "crossFile.");
  options.engine = readKeys(read, ENGINE_OPTION_KEYS, "engine.");
  options.diagnostics = readKeys(read, DIAGNOSTICS_OPTION_KEYS, "diagnostics.");
  return options;
}

function readKeys(read: ReadSetting, keys: readonly string[], prefix: string): Record<string, unknown> {
  const options: Record<string, unknown> = {};
  for (const key of keys) {
    const value = read(prefix + key);
    options[key] = value === undefined ? null : value;
  }
  return options;
}

/** How to start the server: `server.command` when set, else `server.pythonPath -m lsp_server`
 * when that is set, else `gptbigcode-lsp` from the PATH; `server.args` follow. */
export function serverCommand(read: ReadSetting): ServerCommand {
  const args = stringList(read("server.args"));
  const command = expandHome(text(read("server.command")));
  if (command) {
    return { command, args };
  }
  const python = expandHome(text(read("server.pythonPath")));
  if (python) {
    return { command: python, args: ["-m", "lsp_server", ...args] };
  }
  return { command: "gptbigcode-lsp", args };
}

/** The server process's environment: `base` (the editor's) with PYTHONSAFEPATH=1, so that
 * Python (3.11+) keeps the working directory, the user's workspace, off the import path: a
 * `model.py`, `secrets.py` or `lsp_server.py` there must not replace the server's modules.
 * An environment variable rather than `-P` in the arguments: Python 3.10 rejects `-P`, and
 * it reaches `server.command` launches too. */
export function serverEnvironment(base: Record<string, string | undefined>): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [key, value] of Object.entries(base)) {
    if (value !== undefined) {
      env[key] = value;
    }
  }
  env.PYTHONSAFEPATH = "1";
  return env;
}

function text(value: unknown): string {
  return typeof value === "string" ? value.trim() : "";
}

function stringList(value: unknown): string[] {
  return Array.isArray(value) ? value.filter((item): item is string => typeof item === "string") : [];
}

function expandHome(path: string): string {
  return path === "~" || path.startsWith("~/") ? homedir() + path.slice(1) : path;
}
