/** The VS Code extension: starts gptbigcode-lsp with the user's settings, shows its inline
 * suggestions, diagnostics and code actions, and keeps a status bar item up to date. */

import * as vscode from "vscode";
import {
  DidChangeConfigurationNotification,
  ExecuteCommandRequest,
  LanguageClient,
  type LanguageClientOptions,
  type ServerOptions,
  State,
  TransportKind,
} from "vscode-languageclient/node";

import { addFeatures } from "./clientFeatures";
import { lspInlineContext } from "./inlineContext";
import { SECTION, STATUS_COMMAND, serverCommand, serverEnvironment, serverOptions } from "./settings";
import { type ServerStatus, StatusItem } from "./status";

const COMMANDS = {
  showStatus: "gptbigcode.showStatus",
  restart: "gptbigcode.restartServer",
  toggle: "gptbigcode.toggleSuggestions",
};

function settings(): vscode.WorkspaceConfiguration {
  return vscode.workspace.getConfiguration(SECTION);
}

function suggestionsEnabled(): boolean {
  return settings().get<boolean>("suggestions.enabled", true);
}

/** One server process and the client talking to it; restart replaces both. */
class Server {
  private client: LanguageClient | undefined;

  constructor(
    private readonly output: vscode.LogOutputChannel,
    private readonly status: StatusItem,
  ) {}

  async start(): Promise<void> {
    const { command, args } = serverCommand((key) => settings().get(key));
    const env = serverEnvironment(process.env);
    const run: ServerOptions = { command, args, transport: TransportKind.stdio, options: { env } };
    const client = new LanguageClient(SECTION, "GPTBigCode", run, this.clientOptions());
    addFeatures(client);
    client.onDidChangeState(({ newState }) => {
      if (newState === State.Stopped && this.client === client) {
        this.status.stopped("the server stopped"); // a crash; the client may restart it
      } else if (newState === State.Running) {
        void this.refreshStatus();
      }
    });
    this.client = client;
    this.status.starting();
    try {
      await client.start();
    } catch (error) {
      this.status.stopped(`could not start ${command}: ${error}`);
      void vscode.window.showErrorMessage(
        `GPTBigCode: could not start the server (${command}). Set gptbigcode.server.command ` +
          "or gptbigcode.server.pythonPath.",
      );
      return;
    }
    await this.refreshStatus();
  }

  async stop(): Promise<void> {
    const client = this.client;
    this.client = undefined;
    if (client?.isRunning()) {
      await client.stop();
    }
    this.status.stopped("the server is stopped");
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.start();
  }

  /** The server's status report, or undefined when no server is running. */
  async fetchStatus(): Promise<ServerStatus | undefined> {
    if (!this.client?.isRunning()) {
      return undefined;
    }
    return this.client.sendRequest(ExecuteCommandRequest.type, { command: STATUS_COMMAND, arguments: [] });
  }

  async refreshStatus(): Promise<void> {
    try {
      const report = await this.fetchStatus();
      if (report) {
        this.status.report(report);
      }
    } catch (error) {
      this.output.warn(`status command failed: ${error}`);
    }
  }

  /** Sends the options the way the server expects them: under the "gptbigcode" section,
   * server options only (the extension's own settings would be unknown keys there). */
  sendOptions(): void {
    if (this.client?.isRunning()) {
      void this.client.sendNotification(DidChangeConfigurationNotification.type, {
        settings: { [SECTION]: serverOptions((key) => settings().get(key)) },
      });
    }
  }

  private clientOptions(): LanguageClientOptions {
    return {
      documentSelector: [{ scheme: "file" }, { scheme: "untitled" }],
      initializationOptions: () => serverOptions((key) => settings().get(key)),
      outputChannel: this.output,
      middleware: {
        handleWorkDoneProgress: (token, value, next) => {
          next(token, value); // VS Code's own window progress
          this.status.progress(value);
          if (value.kind === "end") {
            void this.refreshStatus();
          }
        },
        provideInlineCompletionItems: (document, position, context, token, next) => {
          if (!suggestionsEnabled()) {
            return undefined;
          }
          const lspContext = lspInlineContext(context) as unknown as vscode.InlineCompletionContext;
          return next(document, position, lspContext, token);
        },
        provideCompletionItem: (document, position, context, token, next) => {
          const wanted = suggestionsEnabled() && settings().get<boolean>("completionItems.enabled", false);
          return wanted ? next(document, position, context, token) : undefined;
        },
        workspace: {
          // A pull of the "gptbigcode" section gets the server options only, as pushes do.
          configuration: async (params, token, next) => {
            const values = await next(params, token);
            if (!Array.isArray(values)) {
              return values;
            }
            const options = serverOptions((key) => settings().get(key));
            return values.map((value, i) => (params.items[i]?.section === SECTION ? options : value));
          },
        },
      },
    };
  }
}

let server: Server | undefined;

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  const output = vscode.window.createOutputChannel("GPTBigCode", { log: true });
  const status = new StatusItem(COMMANDS.showStatus);
  status.setSuggestions(suggestionsEnabled());
  server = new Server(output, status);
  const current = server;
  context.subscriptions.push(
    output,
    status,
    vscode.commands.registerCommand(COMMANDS.showStatus, () => showStatus(current, output)),
    vscode.commands.registerCommand(COMMANDS.restart, () => current.restart()),
    vscode.commands.registerCommand(COMMANDS.toggle, () =>
      settings().update("suggestions.enabled", !suggestionsEnabled(), vscode.ConfigurationTarget.Global),
    ),
    vscode.workspace.onDidChangeConfiguration((event) => {
      if (!event.affectsConfiguration(SECTION)) {
        return;
      }
      status.setSuggestions(suggestionsEnabled());
      if (event.affectsConfiguration(`${SECTION}.server`)) {
        void current.restart();
      } else {
        current.sendOptions();
      }
    }),
  );
  await server.start();
}

export async function deactivate(): Promise<void> {
  await server?.stop();
}

async function showStatus(current: Server, output: vscode.LogOutputChannel): Promise<void> {
  let report: ServerStatus | undefined;
  try {
    report = await current.fetchStatus();
  } catch (error) {
    void vscode.window.showErrorMessage(`GPTBigCode: the status command failed: ${error}`);
    return;
  }
  if (!report) {
    void vscode.window.showWarningMessage("GPTBigCode: the server is not running.");
    return;
  }
  output.info(`status: ${JSON.stringify(report, null, 2)}`);
  const summary =
    report.state === "ready"
      ? `${report.model} ready on ${report.device} (${report.dtype})`
      : report.state === "failed"
        ? `failed: ${report.error}`
        : `${report.model}: ${report.state}`;
  const suggestions = suggestionsEnabled() ? "" : "; suggestions are off";
  const choice = await vscode.window.showInformationMessage(`GPTBigCode: ${summary}${suggestions}`, "Details");
  if (choice === "Details") {
    output.show();
  }
}
