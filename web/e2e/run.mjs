// End-to-end test of the web build: web/dist served on localhost, with the tiny random model of
// tests/fixtures/tiny at /model/, driven in headless Chromium (WebGPU on its SwiftShader adapter).
//   1. With neither WebGPU nor WebGL the page shows its message, not a blank canvas.
//   1b. Without WebGPU (--disable-gpu): the app draws with WebGL2, says that the networks run on
//      the CPU backend (the slow path), and makes a clip there; its WAV records the backend.
//   2. With WebGPU: the page loads, the prompt is typed and Generate clicked (real input on the
//      canvas, at the controls' positions the app reports), the progress and the spectrogram
//      appear, a history entry with the settings shows up, and the clip's WAV download is 16 kHz
//      audio of the clip's length; the clip plays through Web Audio; a WAV file dropped on the
//      page becomes the input clip, and an edit of it is made.
//   3. A download cut off halfway gives a message and leaves nothing in the cache; Generate
//      again makes the clip.
//   4. A model folder picked with the app's "Folder…" (a webkitdirectory file input) is mounted,
//      and a clip is made from it.
//   5. The next visit, with the model's server gone: the history is still there, an earlier clip
//      still downloads (clips are kept in the browser's storage), and a clip is made from the
//      model in the browser's cache.
// Serves $E2E_DIST (default web/dist). Screenshots go to $E2E_OUT (default target/web-e2e).
// Prints the figures: page load to interactive, the time of each stage of the generation. Exit
// status 0 only when every check passed.
//   node web/e2e/run.mjs
// For figures on another model (the full-size random one, say) only part 2 runs, or with
// E2E_CPU=1 only part 1b:
//   E2E_FIGURES_ONLY=1 E2E_MODEL=target/reference/full E2E_STEPS=1 E2E_DURATION=2.5 node web/e2e/run.mjs
import fs from "node:fs";
import os from "node:os";
import http from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const dist = path.resolve(process.env.E2E_DIST || path.join(root, "web/dist"));
const tiny = path.join(root, "tests/fixtures/tiny");
const model = path.resolve(process.env.E2E_MODEL || tiny);
const figuresOnly = process.env.E2E_FIGURES_ONLY === "1";
const steps = Number(process.env.E2E_STEPS || 2);
const duration = Number(process.env.E2E_DURATION || 1);
const out = process.env.E2E_OUT || path.join(root, "target/web-e2e");
const executablePath = process.env.CHROMIUM ||
  ["/usr/lib/chromium/chromium", "/usr/bin/chromium"].find((p) => fs.existsSync(p));
const webgpuFlags = ["--no-sandbox", "--enable-unsafe-webgpu", "--enable-features=Vulkan",
  "--use-vulkan=swiftshader", "--use-angle=swiftshader"];
// No GPU for the page: no WebGPU, WebGL2 on Chromium's software renderer.
const cpuFlags = ["--no-sandbox", "--disable-gpu", "--disable-features=WebGPU,Vulkan"];
const figuresOnCpu = process.env.E2E_CPU === "1";
const PROMPT = "a dog barking in the rain";
const GENERATION_TIMEOUT_MS = Number(process.env.E2E_TIMEOUT_MS || 15 * 60 * 1000);

const types = { ".html": "text/html", ".js": "text/javascript", ".wasm": "application/wasm",
  ".json": "application/json" };

function fail(message) {
  console.error(`e2e: FAILED: ${message}`);
  process.exitCode = 1;
  throw new Error(message);
}

function check(condition, message) {
  if (!condition) fail(message);
  console.log(`e2e: ok: ${message}`);
}

// Serves `/model/...` from the model folder (while `modelServed`) and everything else from
// web/dist. The next response for the model file `cutOnce` stops halfway, its connection closed.
let modelServed = true;
let cutOnce = null;
function serve() {
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, "http://localhost");
    const isModel = url.pathname.startsWith("/model/");
    if (isModel && !modelServed) {
      res.writeHead(503).end();
      return;
    }
    const [base, rel] = isModel
      ? [model, url.pathname.slice("/model/".length)]
      : [dist, url.pathname === "/" ? "index.html" : url.pathname.slice(1)];
    const file = path.resolve(base, decodeURIComponent(rel));
    if (!file.startsWith(base + path.sep) || !fs.existsSync(file) || !fs.statSync(file).isFile()) {
      res.writeHead(404).end();
      return;
    }
    const size = fs.statSync(file).size;
    res.writeHead(200, {
      "content-type": types[path.extname(file)] || "application/octet-stream",
      "content-length": size,
    });
    if (isModel && rel === cutOnce) {
      cutOnce = null;
      const half = fs.createReadStream(file, { start: 0, end: Math.floor(size / 2) });
      half.on("end", () => res.socket.destroy());
      half.pipe(res, { end: false });
      return;
    }
    fs.createReadStream(file).pipe(res);
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}

async function withoutGraphics(base) {
  const browser = await chromium.launch({ executablePath, args: [...cpuFlags,
    "--disable-3d-apis"] });
  try {
    const page = await browser.newPage();
    await page.goto(`${base}/`);
    const message = page.locator("#message");
    await message.waitFor({ state: "visible", timeout: 60000 });
    const title = await page.locator("#message-title").textContent();
    const text = await page.locator("#message-text").textContent();
    console.log(`e2e: the page without WebGPU and WebGL says: ${title}: ${text}`);
    check(/WebGPU/.test(text) && /WebGL2/.test(text),
      "without WebGPU and WebGL the page shows its message, naming both");
    check(await page.locator("#app").isHidden(), "without WebGPU and WebGL no blank canvas is shown");
  } finally {
    await browser.close();
  }
}

async function state(page) {
  return page.evaluate(() => window.audioldm?.state() ?? null);
}

async function waitFor(page, what, predicate, timeout, onState = () => {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const s = await state(page);
    if (s) onState(s);
    if (s && predicate(s)) return s;
    if (Date.now() > deadline) fail(`timed out waiting for ${what}; last state: ${JSON.stringify(s)}`);
    await page.waitForTimeout(250);
  }
}

// The centre of control `name` once the layout has settled (a message shown above the controls
// moves them): two reads a frame or more apart that agree.
async function settledControl(page, name) {
  let last = null;
  for (let i = 0; i < 40; i++) {
    const rect = JSON.stringify((await state(page)).controls[name] ?? null);
    if (rect === last && rect !== "null") return center(JSON.parse(rect));
    last = rect;
    await page.waitForTimeout(250);
  }
  await page.screenshot({ path: path.join(out, "control-missing.png") });
  fail(`the control ${name} is not shown or does not stay in place (last at ${last})`);
}

function center([x, y, w, h]) {
  return [x + w / 2, y + h / 2];
}

// The fields of a WAV file's `fmt ` and `data` chunks.
function readWav(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const tag = (at) => String.fromCharCode(...bytes.subarray(at, at + 4));
  if (tag(0) !== "RIFF" || tag(8) !== "WAVE") fail("the download is not a WAV file");
  let at = 12;
  const wav = {};
  while (at + 8 <= bytes.length) {
    const id = tag(at);
    const size = view.getUint32(at + 4, true);
    if (id === "fmt ") {
      wav.channels = view.getUint16(at + 10, true);
      wav.rate = view.getUint32(at + 12, true);
      wav.bits = view.getUint16(at + 22, true);
    } else if (id === "data") {
      wav.dataBytes = size;
    }
    at += 8 + size + (size & 1);
  }
  return wav;
}

// Clicks Generate and waits for the new history entry; the phases seen, with when each began.
async function clickGenerate(page, console_) {
  const { history: { length: before }, messages: { length: known } } = await state(page);
  await page.waitForTimeout(300);
  await page.mouse.click(...await settledControl(page, "Generate"));
  const clicked = Date.now();
  const phases = new Map();
  let framesWhileRunning = 0;
  const done = await waitFor(page, "the clip", (s) => s.history.length > before && !s.running,
    GENERATION_TIMEOUT_MS, (s) => {
      const phase = s.phase?.split(/[ {(]/)[0];
      if (phase && !phases.has(phase)) phases.set(phase, Date.now());
      if (s.running) framesWhileRunning = Math.max(framesWhileRunning, s.shown_frames);
      if (s.messages.length > known && !s.running && s.history.length === before) {
        fail(`the app reported: ${s.messages.join("; ")}\n${console_.join("\n")}`);
      }
    });
  return { done, phases, framesWhileRunning, generationS: (Date.now() - clicked) / 1000 };
}

// "Save as WAV" of history `entry`: a download of 16 kHz mono audio of the entry's length.
async function checkDownload(page, entry, what) {
  const [download] = await Promise.all([
    page.waitForEvent("download", { timeout: 30000 }),
    page.evaluate((id) => window.audioldm.save_clip(id), entry.id),
  ]);
  const file = path.join(out, download.suggestedFilename());
  await download.saveAs(file);
  const wav = readWav(new Uint8Array(fs.readFileSync(file)));
  const samples = wav.dataBytes / (wav.bits / 8) / wav.channels;
  const expected = Math.floor(entry.settings.duration_s * 16000);
  console.log(`e2e: ${what} ${download.suggestedFilename()}: ${wav.rate} Hz, ` +
    `${wav.channels} channel(s), ${wav.bits} bits, ${samples} samples`);
  check(wav.rate === 16000 && wav.channels === 1, `${what} is 16 kHz mono`);
  check(samples === expected, `${what} has the clip's ${expected} samples`);
  return file;
}

// Part 2 (`cpu` false: WebGPU, every check unless `figuresOnly`) or part 1b (`cpu`: no WebGPU,
// the generation and its download).
async function generate(base, cpu) {
  const what = cpu ? "without WebGPU" : "with WebGPU";
  fs.mkdirSync(out, { recursive: true });
  // A persistent profile, as a user's browser has: an incognito context (Playwright's default)
  // keeps the Cache API and Blobs in memory with a quota too small for a full-size model.
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "audioldm-e2e-profile-"));
  const context = await chromium.launchPersistentContext(profile, { executablePath,
    args: cpu ? cpuFlags : webgpuFlags, viewport: { width: 1280, height: 800 }, acceptDownloads: true });
  try {
    const page = await context.newPage();
    const console_ = [];
    page.on("console", (m) => console_.push(`${m.type()}: ${m.text()}`));
    page.on("pageerror", (e) => console_.push(`pageerror: ${e.message}`));
    const started = Date.now();
    // Two steps of a one-second clip by default: SwiftShader runs compute on the CPU.
    await page.goto(`${base}/?model=${encodeURIComponent(`${base}/model/`)}&steps=${steps}` +
      `&duration=${duration}`);
    const ready = await waitFor(page, "the app's controls", (s) => s.controls?.Prompt && s.controls?.Generate,
      120000);
    const interactiveMs = Date.now() - started;
    console.log(`e2e: figure: page load to interactive ${interactiveMs} ms`);
    check(!(await page.locator("#message").isVisible()), `${what} the app starts (no message)`);
    console.log(`e2e: ${what} the app runs the networks on: ${ready.backend}`);
    if (cpu) {
      const note = ready.messages.find((m) => m.includes("CPU backend"));
      console.log(`e2e: the app says: ${note}`);
      check(/no WebGPU/.test(note) && /slow path/.test(note),
        "without WebGPU the app says the networks run on the CPU, the slow path");
      check(/^CPU: WebAssembly/.test(ready.backend), "without WebGPU the backend is the CPU's");
    } else {
      check(/^GPU/.test(ready.backend), "with WebGPU the backend is the GPU");
    }

    const [px, py] = center(ready.controls.Prompt);
    await page.mouse.click(px, py);
    await page.keyboard.type(PROMPT);
    await page.waitForTimeout(300);
    const { done, phases, framesWhileRunning, generationS } = await clickGenerate(page, console_);
    console.log(`e2e: figure: generation ${what} (${path.basename(model)} model, ` +
      `${done.history[0].settings.steps} steps, ` +
      `${done.history[0].settings.duration_s} s) ${generationS.toFixed(1)} s`);
    const marks = [...phases, ["Done", Date.now()]];
    const stages = marks.slice(0, -1).map(([name, at], i) =>
      `${name} ${((marks[i + 1][1] - at) / 1000).toFixed(1)} s`);
    console.log(`e2e: figure: stages ${stages.join(", ")}`);
    const memory = await page.evaluate(() => window.audioldm.wasm_memory());
    console.log(`e2e: figure: wasm memory at its peak ${(memory / 2 ** 30).toFixed(2)} GiB`);
    await page.screenshot({ path: path.join(out, cpu ? "app-cpu.png" : "app.png") });
    check(phases.has("Denoising"), "the progress showed the denoising steps");
    check(framesWhileRunning > 0, "the spectrogram appeared while denoising");
    check(done.shown_frames > 0, "the spectrogram shows the clip");
    const entry = done.history[0];
    check(entry.settings.prompt === PROMPT, "the history entry has the typed prompt");
    check(entry.settings.model === `${base}/model/`, "the history entry names the model");
    check(entry.settings.steps === steps && entry.settings.duration_s === duration,
      "the history entry has the steps and duration of the page's address");

    const wavFile = await checkDownload(page, entry, `the WAV download ${what}`);
    const comment = fs.readFileSync(wavFile).toString("latin1");
    const backend = done.backend.split(" · ")[0];
    check(comment.includes(backend), `the WAV's comment records the backend ${what} (${backend})`);
    if (figuresOnly || cpu) return;

    // Playback through Web Audio: the clip plays, its position moves.
    await page.mouse.click(...await settledControl(page, "Play"));
    const playing = await waitFor(page, "playback", (s) => s.playing || s.messages.some(
      (m) => /audio/i.test(m)), 30000);
    check(playing.playing && playing.playing[0] === entry.id,
      `the clip plays through Web Audio (${JSON.stringify(playing.playing ?? playing.messages)})`);
    const later = await waitFor(page, "the playback position to move",
      (s) => s.playing?.[0] === entry.id && s.playing[1] > playing.playing[1], 10000);
    check(later.playing[1] > 0, `the playback position moves (${later.playing[1]} s)`);

    // An audio file dropped on the page becomes the input clip, and an edit of it is made.
    const dropped = await page.evaluateHandle(([name, base64]) => {
      const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
      const transfer = new DataTransfer();
      transfer.items.add(new File([bytes], name, { type: "audio/wav" }));
      return transfer;
    }, ["dropped.wav", fs.readFileSync(wavFile).toString("base64")]);
    await page.dispatchEvent("#app", "dragover", { dataTransfer: dropped });
    await page.dispatchEvent("#app", "drop", { dataTransfer: dropped });
    const withInput = await waitFor(page, "the dropped file as the input clip", (s) => s.input,
      30000);
    check(withInput.input.name.includes("dropped.wav") && withInput.input.duration_s === 1,
      `a dropped WAV file becomes the input clip (${JSON.stringify(withInput.input)})`);
    const editsBefore = withInput.history.length;
    await page.mouse.click(...await settledControl(page, "Generate edit"));
    const edited = await waitFor(page, "the edit", (s) => s.history.length > editsBefore &&
      !s.running, GENERATION_TIMEOUT_MS, (s) => {
      if (!s.running && s.messages.some((m) => m.includes("failed"))) fail(s.messages.join("; "));
    });
    check(edited.history[0].edit !== null, "an edit of the dropped clip is in the history");

    // A download cut off halfway: a message, nothing of it kept, and Generate again succeeds.
    await page.evaluate(() => caches.delete("audioldm-models-v1"));
    cutOnce = "unet/diffusion_pytorch_model.safetensors";
    await page.mouse.click(...await settledControl(page, "Generate"));
    const cut = await waitFor(page, "the cut-off download's message",
      (s) => !s.running && s.messages.some((m) => m.includes("Generation failed")), 120000);
    const cutMessage = cut.messages.find((m) => m.includes("Generation failed"));
    console.log(`e2e: a download cut off halfway: ${cutMessage}`);
    check(/unet\/diffusion_pytorch_model\.safetensors/.test(cutMessage) && /cut (off|short)/.test(cutMessage),
      "a download cut off halfway gives a message naming the file");
    check(!(await page.evaluate(async () => {
      const cache = await caches.open("audioldm-models-v1");
      return !!(await cache.match(new URL("/model/unet/diffusion_pytorch_model.safetensors", location.href).href));
    })), "nothing of the cut-off download is in the browser's cache");
    const retried = await clickGenerate(page, console_);
    check(retried.done.history.length === 3, "Generate again after the cut-off download makes a clip");

    // 4. The model from a folder the user picks; a folder without a model's files is refused.
    const [wrongChooser] = await Promise.all([
      page.waitForEvent("filechooser", { timeout: 30000 }),
      page.mouse.click(...await settledControl(page, "Folder…")),
    ]);
    await wrongChooser.setFiles(path.join(model, "vae"));
    const refused = await waitFor(page, "the refusal of a folder without a model",
      (s) => s.messages.some((m) => m.includes("cannot use the picked folder")), 60000);
    console.log(`e2e: a folder without a model: ${refused.messages.find((m) =>
      m.includes("cannot use the picked folder"))}`);
    check(refused.model === `${base}/model/`, "a folder without a model's files is refused");
    const [chooser] = await Promise.all([
      page.waitForEvent("filechooser", { timeout: 30000 }),
      page.mouse.click(...await settledControl(page, "Folder…")),
    ]);
    await chooser.setFiles(model);
    const picked = await waitFor(page, "the picked folder", (s) => s.model.startsWith("/local/"),
      60000);
    console.log(`e2e: the picked folder: ${picked.model} (${picked.model_status})`);
    check(picked.model_status === "a folder picked in this visit",
      "the picked folder is mounted as the model");
    const fromFolder = await clickGenerate(page, console_);
    console.log(`e2e: figure: generation from the picked folder ${fromFolder.generationS.toFixed(1)} s`);
    check(fromFolder.done.history.length === 4 && fromFolder.done.history[0].settings.model === picked.model,
      "a clip is made from the picked folder");

    // 5. The next visit, offline for the model.
    modelServed = false;
    await page.reload();
    const again = await waitFor(page, "the app after a reload",
      (s) => s.controls?.Generate && s.history.length === 4, 120000);
    check(again.history[3].id === entry.id, "the history is kept across visits");
    await checkDownload(page, again.history[3], "a clip of the earlier visit");
    check(again.history[0].settings.prompt === PROMPT, "the settings are kept across visits");
    const offline = await clickGenerate(page, console_);
    check(offline.done.history.length === 5 && offline.done.history[0].settings.model === `${base}/model/`,
      "the next visit makes a clip from the model in the browser's cache, its server gone");
    await page.screenshot({ path: path.join(out, "app-next-visit.png") });
  } catch (e) {
    console.error(e.message);
    throw e;
  } finally {
    await context.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

if (!executablePath) fail("no Chromium found (set CHROMIUM)");
if (!fs.existsSync(path.join(dist, "audioldm_web_bg.wasm"))) fail("web/dist is not built: bash web/build.sh");
const server = await serve();
const base = `http://127.0.0.1:${server.address().port}`;
try {
  if (!figuresOnly) await withoutGraphics(base);
  if (!figuresOnly || figuresOnCpu) await generate(base, true);
  if (!figuresOnly || !figuresOnCpu) await generate(base, false);
  console.log("e2e: all checks passed");
} catch {
  process.exitCode = 1;
} finally {
  server.close();
}
