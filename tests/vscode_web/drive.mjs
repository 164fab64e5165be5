// Drives VS Code (code-server in Debian's Chromium, through playwright-core) as a user would,
// for tests/test_vscode_web.py: waits for the extension's status item to say "ready", types a
// function header and accepts the ghost text with Tab, types a secret and applies its quick fix
// after the line settles, while the diagnostic is a version behind and after a key typed into
// the secret, and restarts the server
// from the command palette. It records what it saw in result.json and a screenshot per step;
// the Python test asserts on them and on the saved file.
//
// node drive.mjs CONFIG.json, where CONFIG names: url, file (the workspace file to edit, read
// after each save), out (the folder for result.json and the PNGs), browser (Chromium's path),
// modules (a node_modules folder holding playwright-core), header, secret, above (a line typed
// at the top of the file), pids (the file the server appends its process id to), timeoutMs.

import { readFileSync, writeFileSync, existsSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

const config = JSON.parse(readFileSync(process.argv[2], "utf8"));
const require = createRequire(path.join(config.modules, "noop.js"));
const { chromium } = require("playwright-core");

const result = { steps: [], errors: [], pageErrors: [] };
const started = Date.now();
let shots = 0;

function save() {
  writeFileSync(path.join(config.out, "result.json"), JSON.stringify(result, null, 2));
}

function note(step, facts = {}) {
  result.steps.push({ step, ms: Date.now() - started, ...facts });
  save();
}

async function shot(page, name) {
  shots += 1;
  const file = `${String(shots).padStart(2, "0")}-${name}.png`;
  await page.screenshot({ path: path.join(config.out, file) });
  return file;
}

function readFile() {
  return readFileSync(config.file, "utf8");
}

function pids() {
  return existsSync(config.pids)
    ? readFileSync(config.pids, "utf8").split("\n").filter(Boolean).map(Number)
    : [];
}

function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function until(what, check, timeoutMs = config.timeoutMs) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) {
      return value;
    }
    if (Date.now() > end) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

const statusItem = (page) => page.locator(".statusbar-item", { hasText: "GPTBigCode" }).first();

async function statusLabel(page) {
  return (await statusItem(page).getAttribute("aria-label")) ?? "";
}

async function waitReady(page) {
  await statusItem(page).locator(".codicon-sparkle").waitFor({ timeout: config.timeoutMs });
  return statusLabel(page);
}

// Saves with Ctrl+S and returns the file once it is on disk: every step saves after changing
// the text, so the save is done when the file differs from the last one read and holds still.
let lastSaved = null;
async function saveFile(page) {
  lastSaved ??= readFile();
  await page.keyboard.press("Control+S");
  let seen = lastSaved;
  let since = Date.now();
  await until("the saved file", async () => {
    const now = readFile();
    if (now !== seen) {
      seen = now;
      since = Date.now();
    }
    return seen !== lastSaved && Date.now() - since > 300;
  });
  lastSaved = seen;
  return seen;
}

async function ghostText(page) {
  return page.evaluate(() => {
    const parts = [...document.querySelectorAll(".monaco-editor .ghost-text-decoration, .monaco-editor .ghost-text")];
    return parts.map((e) => e.textContent).join("\u241f");
  });
}

// Opens the quick fix menu at the cursor (Ctrl+.) and returns the titles it lists, or [] when
// VS Code says there is none.
async function quickFixTitles(page) {
  const menu = page.locator(".action-widget");
  const none = page.locator(".monaco-editor-overlaymessage", { hasText: "No code actions" });
  // The last answer's menu or message gone first, so that what is read is this one's (the
  // message goes when the cursor moves: there and back).
  if (await none.isVisible()) {
    await page.keyboard.press("ArrowLeft");
    await page.keyboard.press("ArrowRight");
  }
  await until("the last quick fix menu or message to go", async () =>
    !(await menu.isVisible()) && !(await none.isVisible()), 10_000);
  await page.keyboard.press("Control+.");
  await until("the quick fix menu or its 'no code actions' message", async () =>
    (await menu.isVisible()) || (await none.isVisible()));
  if (!(await menu.isVisible())) {
    return [];
  }
  const rows = menu.locator(".monaco-list-row.action");
  await until("the menu's rows", async () => (await rows.count()) > 0);
  return (await rows.allInnerTexts()).map((t) => t.trim());
}

const isFix = (title) => title.startsWith("Read this secret from the environment");

// Chooses the menu row titled `title` (arrow keys then Enter, as a user does).
async function chooseAction(page, titles, title) {
  const index = titles.indexOf(title);
  const rows = page.locator(".action-widget .monaco-list-row.action");
  for (let n = 0; n < index; n += 1) {
    await page.keyboard.press("ArrowDown");
  }
  await until("the row to be focused", async () =>
    ((await rows.nth(index).getAttribute("class")) ?? "").includes("focused"));
  await page.keyboard.press("Enter");
  await until("the menu to close", async () => !(await page.locator(".action-widget").isVisible()));
}

// Chooses the secret's fix if `titles` (the open menu's) list it, else closes the menu or
// message; the title chosen, or null.
async function applyFix(page, titles) {
  const fix = titles.find(isFix);
  if (fix) {
    await chooseAction(page, titles, fix);
  } else {
    await page.keyboard.press("Escape");
  }
  return fix ?? null;
}

// The text of each editor line that has a warning squiggle: a squiggle is drawn in the line's
// overlay, which sits at the same height as the line's text.
async function warnedLines(page) {
  return page.evaluate(() => {
    const editor = document.querySelector(".monaco-editor.focused") ?? document.querySelector(".monaco-editor");
    const text = (line) => {
      const copy = line.cloneNode(true); // without the ghost text shown in the line
      copy.querySelectorAll("[class*=ghost-text]").forEach((ghost) => ghost.remove());
      return copy.textContent.replace(/\u00a0/g, " ");
    };
    const lines = new Map([...editor.querySelectorAll(".view-lines > .view-line")]
      .map((line) => [line.style.top, text(line)]));
    const warned = [...editor.querySelectorAll(".view-overlays > div")]
      .filter((overlay) => overlay.querySelector(".squiggly-warning"))
      .map((overlay) => lines.get(overlay.style.top));
    return warned.filter((text) => text !== undefined);
  });
}

// Types the secret as a new last line, waits for its warning squiggle, and puts the cursor
// inside the string (the flagged range).
async function typeSecret(page) {
  await page.keyboard.press("Control+End");
  await page.keyboard.press("Enter");
  await page.keyboard.press("Shift+Tab"); // drop the auto-indent of the line before
  await page.keyboard.press("Shift+Tab");
  await page.keyboard.type(config.secret, { delay: 20 });
  await page.keyboard.press("Escape"); // hide any ghost text: it may wrap the line
  await until("the secret's warning", async () => (await warnedLines(page)).includes(config.secret));
  await page.keyboard.press("ArrowLeft");
  await page.keyboard.press("ArrowLeft");
}

async function run() {
  const browser = await chromium.launch({ executablePath: config.browser, args: ["--no-sandbox"] });
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    page.on("pageerror", (error) => result.pageErrors.push(String(error)));
    await page.goto(config.url);
    await page.waitForSelector(".monaco-workbench", { timeout: config.timeoutMs });
    lastSaved = readFile();

    // 1. The status item reaches "ready"; clicking it shows the server's status.
    const readyLabel = await waitReady(page);
    await statusItem(page).click();
    const toast = page.locator(".notification-toast .notification-list-item-message").first();
    await toast.waitFor({ timeout: config.timeoutMs });
    const statusMessage = (await toast.innerText()).trim();
    note("ready", { label: readyLabel, message: statusMessage, screenshot: await shot(page, "ready") });
    await page.keyboard.press("Escape");

    // 2. Ghost text after a function header; Tab accepts all of it; the saved file holds it.
    await page.keyboard.press("Control+P");
    await page.keyboard.type(path.basename(config.file));
    await page.locator(".quick-input-list .monaco-list-row").first().waitFor({ timeout: config.timeoutMs });
    await page.keyboard.press("Enter");
    await page.waitForSelector(".monaco-editor.focused", { timeout: config.timeoutMs });
    await page.keyboard.press("Control+End");
    await page.keyboard.type(config.header, { delay: 40 });
    await page.keyboard.press("Enter");
    // VS Code draws the lines below the cursor and the inline part in separate passes: read
    // the ghost text once it has held still for half a second.
    let ghost = "";
    let since = Date.now();
    await until("ghost text", async () => {
      const now = await ghostText(page);
      if (now !== ghost) {
        ghost = now;
        since = Date.now();
      }
      return ghost && Date.now() - since > 500;
    });
    note("ghost", { ghost, screenshot: await shot(page, "ghost-text") });
    await page.keyboard.press("Tab");
    await until("the ghost text to go", async () => !(await ghostText(page)));
    note("accepted", { text: await saveFile(page), screenshot: await shot(page, "accepted") });

    // 3. A secret, its warning and its quick fix once the line has settled.
    await typeSecret(page);
    note("secret", { warned: await warnedLines(page), screenshot: await shot(page, "secret-warning") });
    const settledTitles = await quickFixTitles(page);
    note("settled-menu", { titles: settledTitles, screenshot: await shot(page, "quick-fix-menu") });
    const fix = await applyFix(page, settledTitles);
    note("settled-fixed", { chosen: fix, text: await saveFile(page), screenshot: await shot(page, "fixed") });

    // 4. The fix while the warning is a version behind: a line typed above the secret moves
    //    the warning with its text (the editor moves it; the server re-diagnoses only after its
    //    debounce), and the fix, computed on the text as it now is, still takes the whole value.
    await typeSecret(page);
    await page.keyboard.press("Control+Home");
    await page.keyboard.type(config.above);
    await page.keyboard.press("Enter");
    await page.keyboard.press("Escape");
    await page.keyboard.press("Control+End");
    await page.keyboard.press("ArrowLeft");
    await page.keyboard.press("ArrowLeft");
    const behindWarned = await until("the moved warning", async () =>
      (await warnedLines(page)).includes(config.secret), 2000).catch(() => false);
    const behindTitles = await quickFixTitles(page);
    note("behind-menu", { titles: behindTitles, warned: behindWarned, screenshot: await shot(page, "behind-quick-fix-menu") });
    const behindFix = await applyFix(page, behindTitles);
    note("behind-fixed", { chosen: behindFix, text: await saveFile(page), screenshot: await shot(page, "behind-fixed") });

    // 5. A key typed into a flagged secret: the server withdraws the warning at once (its text
    //    changed), and no fix is offered for it; once the server has re-diagnosed the line, the
    //    fix takes the secret as it now reads.
    await typeSecret(page);
    await page.keyboard.type("Q");
    await page.keyboard.press("Escape");
    const edited = config.secret.slice(0, -2) + "Q" + config.secret.slice(-2);
    const withdrawn = await until("the edited secret's warning to go", async () =>
      !(await warnedLines(page)).includes(edited), 2000).catch(() => false);
    const editedTitles = await quickFixTitles(page);
    note("edited-menu", { titles: editedTitles, withdrawn, screenshot: await shot(page, "edited-quick-fix-menu") });
    const editedFix = await applyFix(page, editedTitles);
    note("edited-unfixed", { chosen: editedFix, text: await saveFile(page), screenshot: await shot(page, "edited-no-fix") });
    await until("the re-diagnosed warning", async () => {
      if (await applyFix(page, await quickFixTitles(page))) {
        return true;
      }
      await new Promise((resolve) => setTimeout(resolve, 500));
      return false;
    });
    note("caught-up-fixed", { text: await saveFile(page), screenshot: await shot(page, "caught-up-fixed") });

    // 6. Restart from the command palette: a new server process, the old one gone, ready again.
    const before = pids();
    await page.keyboard.press("F1");
    await page.keyboard.type("GPTBigCode: Restart Server");
    await page.locator(".quick-input-list .monaco-list-row", { hasText: "Restart Server" }).first()
      .waitFor({ timeout: config.timeoutMs });
    await page.keyboard.press("Enter");
    await until("a new server process", async () => pids().length > before.length);
    const label = await waitReady(page);
    // The client asks the old server to shut down and exit; on a loaded machine it can still
    // be finishing a diagnostics pass when the new one is ready.
    await until("the old server to exit", async () => before.filter(alive).length === 0, 20000)
      .catch(() => false);
    const after = pids();
    note("restarted", {
      before, after, label,
      oldAlive: before.filter(alive),
      screenshot: await shot(page, "restarted"),
    });
  } catch (error) {
    result.errors.push(String(error?.stack ?? error));
    try {
      const pages = browser.contexts().flatMap((c) => c.pages());
      if (pages.length) {
        await shot(pages[0], "failure");
      }
    } catch {
      // the screenshot of a failure is best effort
    }
  } finally {
    save();
    await browser.close();
  }
}

await run();
process.exit(result.errors.length ? 1 : 0);
