// A learner's session in JupyterLab, driven in Debian's Chromium by playwright-core.
// Started by run.sh, which serves the notebook and sets JUPYTER_URL, NOTEBOOK_PATH,
// ARTIFACTS and CHROMIUM. Steps (each one fails the test with a clear message):
//   0. first, a notebook that trains (TRAIN_NOTEBOOK_PATH, its exercises done), run all:
//      the course's own progress bars (ftlib.train.fit) render as widgets, the epochs
//      bar ends green at 100 %, the epoch summaries stay, and no cell fails;
//   1. open the learner notebook (kernel idle, Validate button in the toolbar);
//   2. write a wrong count_parameters (frozen parameters counted as trainable), run all:
//      the grade cell shows the check's message; Validate: the dialog shows it too;
//   3. write a right one, restart and run all: a matplotlib plot renders; Validate:
//      "Success!".

import { chromium } from "playwright-core";
import path from "node:path";

const URL = process.env.JUPYTER_URL;
const NOTEBOOK = process.env.NOTEBOOK_PATH;
const TRAIN_NOTEBOOK = process.env.TRAIN_NOTEBOOK_PATH;
const ART = process.env.ARTIFACTS;
const RUN_TIMEOUT = Number(process.env.RUN_TIMEOUT_MS || 300_000);
const VALIDATE_TIMEOUT = Number(process.env.VALIDATE_TIMEOUT_MS || 600_000);
if (!URL || !NOTEBOOK || !TRAIN_NOTEBOOK || !ART) throw new Error("run me through tests/browser/run.sh");

const WRONG = `def count_parameters(model):
    total = sum(p.numel() for p in model.parameters())
    return total, total  # wrong on purpose: frozen parameters are not trainable
`;
const RIGHT = `def count_parameters(model):
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return trainable, total
`;
const CHECK_MESSAGE = /Wrong trainable count/;

const t0 = Date.now();
const log = (msg) => console.log(`[browser-test ${((Date.now() - t0) / 1000).toFixed(1)}s] ${msg}`);
const shots = [];

async function step(name, fn) {
  log(name);
  try {
    return await fn();
  } catch (err) {
    throw new Error(`step "${name}" failed: ${err.message.split("\n")[0]}`);
  }
}

async function shot(page, name, locator) {
  const file = path.join(ART, name);
  if (locator) await locator.scrollIntoViewIfNeeded();
  await page.waitForTimeout(300);
  await page.screenshot({ path: file });
  shots.push(file);
  log(`screenshot ${file}`);
}

async function menu(page, top, item) {
  await page.locator(".lm-MenuBar-itemLabel", { hasText: new RegExp(`^${top}$`) }).click();
  await page.locator(".lm-Menu-itemLabel", { hasText: item }).first().click();
}

// Waits until the kernel has started running and then is idle with no cell queued.
async function waitForRun(page) {
  const busy = page.locator('.jp-InputPrompt:has-text("[*]")');
  await busy.first().waitFor({ timeout: 15_000 }).catch(() => {});
  const deadline = Date.now() + RUN_TIMEOUT;
  let quiet = 0;
  while (quiet < 3) {
    if (Date.now() > deadline) throw new Error(`cells still running after ${RUN_TIMEOUT / 1000}s`);
    const running = await busy.count();
    const status = await page.locator(".jp-Notebook-ExecutionIndicator").first().getAttribute("data-status").catch(() => null);
    quiet = running === 0 && (status === null || status === "idle") ? quiet + 1 : 0;
    await page.waitForTimeout(500);
  }
}

async function writeSolution(page, code) {
  // The exercise's cell: the learner's release says NotImplementedError, later our answer.
  const cell = page.locator(".jp-Notebook .jp-CodeCell")
    .filter({ has: page.locator(".cm-content", { hasText: /NotImplementedError|def count_parameters/ }) })
    .first();
  await cell.waitFor({ timeout: 10_000 });
  await cell.locator(".cm-content").click();
  await page.keyboard.press("Control+A");
  await page.keyboard.insertText(code);
  await page.keyboard.press("Escape");
  const text = await cell.locator(".cm-content").innerText();
  if (!text.includes(code.split("\n")[1].trim())) throw new Error(`the cell did not take the answer: ${text}`);
  return cell;
}

// After a run: no cell failed and no widget fell back to text; returns the outputs' text.
async function cleanOutputs(page) {
  const errors = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"]');
  if (await errors.count()) throw new Error(`a cell failed: ${(await errors.first().innerText()).slice(0, 400)}`);
  const outputs = await page.locator(".jp-OutputArea-output").allInnerTexts();
  const fallback = outputs.find((t) => /IProgress not found|Error displaying widget|HBox\(children/.test(t));
  if (fallback) throw new Error(`the progress bar did not render as a widget: ${fallback.slice(0, 200)}`);
  return outputs;
}

// nbgrader's validate also fails on written (manually graded) answers left empty.
const WRITTEN_ANSWER = "MiniLM-L6: the e-mails are short texts, it is the sentence encoder of the registry, and its counts fit a CPU budget.";

async function answerWrittenQuestions(page) {
  const markdown = page.locator(".jp-Notebook .jp-MarkdownCell");
  const texts = await markdown.evaluateAll((cells) => cells.map(
    (c) => (c.querySelector(".jp-MarkdownOutput")?.innerText || "").trim()));
  const open = texts.flatMap((t, i) => (t === "YOUR ANSWER HERE" ? [i] : []));
  for (const i of open) {
    const cell = markdown.nth(i);
    await cell.locator(".jp-MarkdownOutput").dblclick();
    await cell.locator(".cm-content").click();
    await page.keyboard.press("Control+A");
    await page.keyboard.insertText(WRITTEN_ANSWER);
    await page.keyboard.press("Control+Enter");
  }
  log(`wrote ${open.length} written answer(s)`);
}

async function validate(page) {
  await page.locator(".jp-NotebookPanel-toolbar .validate-button:visible").first().click();
  const message = page.locator(".jp-Dialog #validation-message");
  await message.waitFor({ timeout: VALIDATE_TIMEOUT });
  return message;
}

async function closeDialog(page) {
  await page.locator(".jp-Dialog .jp-mod-accept").first().click();
  await page.locator(".jp-Dialog").waitFor({ state: "detached" });
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  // As root, and on a closed network: no sandbox, no background connections.
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"],
});
let failed = null;
const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
page.setDefaultTimeout(30_000);
page.on("pageerror", (err) => log(`page error: ${err.message}`));
try {
  // First, while the server still has NBGRADER_EXECUTION (the course's small budgets):
  // nbgrader's Validate removes it from the server's environment when it is done.
  await step("a notebook that trains, run all: the course's progress bars", async () => {
    await page.goto(`${URL}/lab/tree/${TRAIN_NOTEBOOK}`, { waitUntil: "domcontentloaded", timeout: 120_000 });
    await page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell").first().waitFor({ timeout: 120_000 });
    await page.locator(".jp-StatusBar-Widget", { hasText: /\| Idle/ }).first().waitFor({ timeout: 120_000 });
    await menu(page, "Run", /^Run All Cells$/);
    await waitForRun(page);
    const outputs = await cleanOutputs(page);
    const done = page.locator(".jp-OutputArea-output .widget-hbox", { has: page.locator(".widget-hprogress") })
      .filter({ hasText: /epochs/ });
    const count = await done.count();
    if (!count) throw new Error("no 'epochs' progress bar from ftlib.train.fit in the outputs");
    const barBox = done.first();
    const barText = await barBox.innerText();
    if (!/100%/.test(barText)) throw new Error(`the epochs bar did not reach 100%: ${barText}`);
    if (!(await barBox.locator(".progress-bar-success").count())) throw new Error("the finished epochs bar is not green (bar_style success)");
    if (!outputs.some((t) => /epoch 1\/\d+: train loss [\d.]+ acc [\d.]+ \| val loss/.test(t))) {
      throw new Error("no epoch summary line ('epoch 1/N: train loss ... | val loss ...') in the outputs");
    }
    log(`${count} finished 'epochs' bar(s): ${barText.replace(/\s+/g, " ").trim()}`);
    await shot(page, "00-training-progress-bars.png", barBox);
  });

  await step("open the learner notebook", async () => {
    // ?reset: a fresh workspace with this notebook only. Otherwise JupyterLab restores the
    // training notebook's tab too, and the locators below could land in its hidden panel.
    await page.goto(`${URL}/lab/tree/${NOTEBOOK}?reset`, { waitUntil: "domcontentloaded", timeout: 120_000 });
    await page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell").first().waitFor({ timeout: 120_000 });
    await page.locator(".jp-StatusBar-Widget", { hasText: /\| Idle/ }).first()
      .waitFor({ timeout: 120_000 }).catch(() => { throw new Error("the kernel did not start (no '| Idle' in the status bar)"); });
    await page.locator(".jp-NotebookPanel-toolbar .validate-button:visible").first().waitFor({ timeout: 30_000 })
      .catch(() => { throw new Error("no Validate button in the notebook toolbar (nbgrader validate-assignment labextension off?)"); });
    await shot(page, "01-opened.png");
  });

  await step("wrong answer, run all: the grade cell shows the check's message", async () => {
    await writeSolution(page, WRONG);
    await menu(page, "Run", /^Run All Cells$/);
    await waitForRun(page);
    const error = page.locator(".jp-OutputArea-output", { hasText: CHECK_MESSAGE }).first();
    await error.waitFor({ timeout: 10_000 })
      .catch(() => { throw new Error(`no output matching ${CHECK_MESSAGE} after running all cells`); });
    // The check's message and the learner's own line, not a traceback through ftlib.checks.
    const shown = (await error.innerText()).trim().split("\n");
    if (shown.length > 10 || shown.some((l) => /ftlib\/checks|site-packages/.test(l))) {
      throw new Error(`the failed check shows ${shown.length} lines (at most 10, none in ftlib): ${shown.slice(0, 12).join(" / ")}`);
    }
    // What it shows is the check's own report, not a traceback: the three parts of the message.
    const text = shown.join("\n");
    for (const part of [/expected: /, /found: /, /hint: /, /checked by: +Cell In\[/]) {
      if (!part.test(text)) throw new Error(`the failed check's output lacks ${part}: ${shown.join(" / ")}`);
    }
    if (/Traceback \(most recent call last\)/.test(text)) {
      throw new Error(`the failed check still prints a traceback: ${shown.slice(0, 12).join(" / ")}`);
    }
    log(`the failed check shows ${shown.length} lines`);
    await shot(page, "02-wrong-answer-check-message.png", error);
    // The rendered message alone, as the learner reads it (the artifact for reviewers).
    const alone = path.join(ART, "02b-check-message-only.png");
    await error.screenshot({ path: alone });
    shots.push(alone);
    log(`screenshot ${alone}`);
  });

  await step("wrong answer, Validate: the dialog shows the failure and the message", async () => {
    const message = await validate(page);
    const cls = await message.getAttribute("class");
    const text = await message.innerText();
    // Scroll the dialog to the end of the traceback, where the check's message is.
    await message.locator("pre").last().evaluate((el) => {
      el.scrollTop = el.scrollHeight;
      const body = el.closest(".jp-Dialog-body");
      if (body) body.scrollTop = body.scrollHeight;
    }).catch(() => {});
    await shot(page, "03-validate-wrong-answer.png");
    if (!/validation-failed/.test(cls || "")) throw new Error(`expected a failed validation, got class="${cls}": ${text.slice(0, 300)}`);
    if (!CHECK_MESSAGE.test(text)) throw new Error(`the dialog does not show the check's message: ${text.slice(0, 300)}`);
    await closeDialog(page);
  });

  await step("right answer, restart and run all: the plot", async () => {
    await writeSolution(page, RIGHT);
    await answerWrittenQuestions(page);
    await menu(page, "Kernel", /Restart Kernel and Run All Cells/);
    await page.locator(".jp-Dialog .jp-mod-accept").first().click();
    await waitForRun(page);
    await cleanOutputs(page);
    const img = page.locator(".jp-OutputArea .jp-RenderedImage img").first();
    await img.waitFor({ state: "visible", timeout: 20_000 })
      .catch(() => { throw new Error("no rendered plot (image output) in the notebook"); });
    const width = await img.evaluate((el) => el.naturalWidth);
    if (!(width > 50)) throw new Error(`the plot image is empty (naturalWidth ${width})`);
    await shot(page, "04-plot.png", img);
  });

  await step("right answer, Validate: success", async () => {
    const message = await validate(page);
    const cls = await message.getAttribute("class");
    const text = await message.innerText();
    await shot(page, "05-validate-success.png");
    if (!/validation-success/.test(cls || "") || !/Success! Your notebook passes all the tests/.test(text)) {
      throw new Error(`expected success, got class="${cls}": ${text.slice(0, 400)}`);
    }
    await closeDialog(page);
  });

} catch (err) {
  failed = err;
  await shot(page, "99-failure.png").catch(() => {});
} finally {
  await browser.close();
}
if (failed) {
  console.error(`[browser-test] ${failed.message}`);
  process.exit(1);
}
log(`all steps passed; ${shots.length} screenshots`);
