/** The features the extension adds to vscode-languageclient's defaults; shared with the test
 * that computes the client capabilities the extension sends. */

import type { BaseLanguageClient } from "vscode-languageclient";

export function addFeatures(client: BaseLanguageClient): void {
  // Inline completion (LSP 3.18) is still a proposed feature in vscode-languageclient 9.
  client.registerProposedFeatures();
}
