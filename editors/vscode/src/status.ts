/** The status bar item: starting, loading (from $/progress), ready or failed (from the
 * server's status command), and whether suggestions are on. Clicking it shows the status. */

import * as vscode from "vscode";
import type { WorkDoneProgressBegin, WorkDoneProgressEnd, WorkDoneProgressReport } from "vscode-languageclient";

/** The part of the server's `gptbigcode.status` report the extension reads. */
export interface ServerStatus {
  state: "idle" | "loading" | "ready" | "failed";
  model: string;
  device: string | null;
  dtype: string | null;
  error: string | null;
  [key: string]: unknown;
}

type Progress = WorkDoneProgressBegin | WorkDoneProgressReport | WorkDoneProgressEnd;

export class StatusItem implements vscode.Disposable {
  private readonly item: vscode.StatusBarItem;
  private state: "starting" | "loading" | "ready" | "failed" | "stopped" = "stopped";
  private detail = "";
  private suggestions = true;

  constructor(showCommand: string) {
    this.item = vscode.window.createStatusBarItem("gptbigcode.status", vscode.StatusBarAlignment.Right, 100);
    this.item.name = "GPTBigCode";
    this.item.command = showCommand;
    this.render();
    this.item.show();
  }

  starting(): void {
    this.set("starting", "starting the server");
  }

  stopped(reason: string): void {
    this.set("stopped", reason);
  }

  progress(value: Progress): void {
    if (value.kind === "begin") {
      this.set("loading", value.title);
    } else if (value.kind === "report") {
      const percent = value.percentage === undefined ? "" : ` ${value.percentage}%`;
      this.set("loading", `${value.message ?? this.detail}${percent}`);
    }
    // "end" says only that loading stopped: the status command tells ready from failed.
  }

  report(status: ServerStatus): void {
    if (status.state === "ready") {
      this.set("ready", `${status.model} on ${status.device} (${status.dtype})`);
    } else if (status.state === "failed") {
      this.set("failed", status.error ?? "the model failed to load");
    } else {
      this.set("loading", `loading ${status.model}`);
    }
  }

  setSuggestions(enabled: boolean): void {
    this.suggestions = enabled;
    this.render();
  }

  dispose(): void {
    this.item.dispose();
  }

  private set(state: StatusItem["state"], detail: string): void {
    this.state = state;
    this.detail = detail;
    this.render();
  }

  private render(): void {
    const icon = {
      starting: "$(loading~spin)",
      loading: "$(loading~spin)",
      ready: this.suggestions ? "$(sparkle)" : "$(circle-slash)",
      failed: "$(error)",
      stopped: "$(debug-stop)",
    }[this.state];
    this.item.text = `${icon} GPTBigCode`;
    const off = this.suggestions ? "" : " (suggestions off)";
    this.item.tooltip = `GPTBigCode: ${this.state}${off}\n${this.detail}`;
    this.item.backgroundColor =
      this.state === "failed" ? new vscode.ThemeColor("statusBarItem.errorBackground") : undefined;
  }
}
