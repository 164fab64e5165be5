/** VS Code's inline completion context in the shape LSP 3.18 defines. vscode-languageclient 9
 * copies the context into the request unchanged, which a 3.18 server rejects: VS Code numbers
 * the trigger kinds Invoke 0 / Automatic 1 where LSP has Invoked 1 / Automatic 2, and VS Code's
 * Range serializes as a [start, end] array. */

interface Position {
  line: number;
  character: number;
}

interface Range {
  start: Position;
  end: Position;
}

/** What the middleware receives (a vscode.InlineCompletionContext has these fields). */
export interface EditorInlineContext {
  triggerKind: number;
  selectedCompletionInfo?: { range: Range; text: string };
}

export interface LspInlineContext {
  triggerKind: 1 | 2;
  selectedCompletionInfo?: { range: Range; text: string };
}

const EDITOR_AUTOMATIC = 1;

export function lspInlineContext(context: EditorInlineContext): LspInlineContext {
  const result: LspInlineContext = {
    triggerKind: context.triggerKind === EDITOR_AUTOMATIC ? 2 : 1,
  };
  const selected = context.selectedCompletionInfo;
  if (selected) {
    const { start, end } = selected.range;
    result.selectedCompletionInfo = {
      range: {
        start: { line: start.line, character: start.character },
        end: { line: end.line, character: end.character },
      },
      text: selected.text,
    };
  }
  return result;
}
