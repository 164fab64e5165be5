// The ClientCapabilities the extension sends: computed by vscode-languageclient itself, with
// the extension's features, outside VS Code. The library only reads constants from the
// `vscode` module while computing them, so a stand-in module that answers every property is
// enough. `node test/clientCapabilities.mjs --write` rewrites the fixture the tests compare with.

import { writeFileSync } from "node:fs";
import Module, { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

const require = createRequire(import.meta.url);
export const FIXTURE = fileURLToPath(
  new URL("../../../tests/fixtures/vscode_client_capabilities.json", import.meta.url),
);
const VSCODE_VERSION = require("../package.json").engines.vscode.replace(/^\^/, "");

/** A value that has every property, can be called and constructed, and is never a promise. */
function anything(name) {
  return new Proxy(function () {}, {
    get(target, property) {
      if (property === "prototype") return target.prototype;
      if (property === "then") return undefined;
      if (property === Symbol.toPrimitive) return () => name;
      return anything(`${name}.${String(property)}`);
    },
    apply: () => anything(`${name}()`),
    construct: () => anything(`new ${name}`),
  });
}

function withStandInVscode(load) {
  const vscode = new Proxy(anything("vscode"), {
    get: (target, property) => (property === "version" ? VSCODE_VERSION : target[property]),
  });
  const original = Module._load;
  Module._load = function (request, ...rest) {
    return request === "vscode" ? vscode : original.call(this, request, ...rest);
  };
  try {
    return load();
  } finally {
    Module._load = original;
  }
}

export function computeClientCapabilities() {
  return withStandInVscode(() => {
    const { LanguageClient } = require("vscode-languageclient/node");
    const { addFeatures } = require("../dist/clientFeatures.js");
    const client = new LanguageClient("gptbigcode", "GPTBigCode", { command: "unused" }, {});
    addFeatures(client);
    return client.computeClientCapabilities();
  });
}

if (process.argv.includes("--write")) {
  writeFileSync(FIXTURE, JSON.stringify(computeClientCapabilities(), null, 2) + "\n");
  console.error(`wrote ${FIXTURE}`);
}
