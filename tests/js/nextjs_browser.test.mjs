// The Next.js example (examples/nextjs-chat) in headless Chromium: useChat through the example's
// pass-through route to a running ai-stream (see tests/test_ui_chat_js.py, which builds and
// starts the app). Debian's chromium; Playwright never downloads a browser here.
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";

const APP = process.env.APP_URL;
assert.ok(APP, "APP_URL must be set");
let browser;
let page;

before(async () => {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  page = await browser.newPage({ viewport: { width: 800, height: 600 } });
});

after(async () => {
  await browser?.close();
});

const assistantTexts = () => page.$$eval('li[data-role="assistant"] .text', (nodes) => nodes.map((n) => n.textContent));
const messageRows = () => page.$$eval("#messages li", (nodes) => nodes.map((n) => [n.dataset.role, n.dataset.id, n.querySelector(".text").textContent]));

// The texts the last answer showed while it streamed, until useChat is ready again.
async function watchAnswer() {
  const seen = [];
  const deadline = Date.now() + 30_000;
  for (;;) {
    const texts = await assistantTexts();
    const last = texts.at(-1);
    if (last && seen.at(-1) !== last) seen.push(last);
    const status = await page.getAttribute("#status", "data-status");
    if (status === "ready" && seen.length > 0) break;
    assert.ok(Date.now() < deadline, `no answer in time: ${JSON.stringify(seen)} (${status})`);
    await new Promise((resolve) => setTimeout(resolve, 30));
  }
  return seen;
}

const EXPECTED = "Echo: grow please and more words to read";

test("the answer grows in the page, survives a reload, and regenerates", async () => {
  const chat = `browser${Date.now()}`;
  await page.goto(`${APP}/?chat=${chat}`);
  await page.waitForSelector("form input[name=prompt]");
  await page.fill("form input[name=prompt]", "[slow] grow please");
  await page.click('button[type="submit"]');
  const renders = await watchAnswer();
  assert.equal(renders.at(-1), EXPECTED);
  assert.ok(renders.length >= 3, `several distinct renders, got ${JSON.stringify(renders)}`);
  for (const render of renders) assert.ok(EXPECTED.startsWith(render), render);
  const before = await messageRows();
  assert.deepEqual(before.map(([role, , text]) => [role, text]), [["user", "[slow] grow please"], ["assistant", EXPECTED]]);

  // A reload loads the stored chat: same messages, same ids (the assistant's is the stored id).
  await page.reload();
  await page.waitForSelector('li[data-role="assistant"]');
  assert.deepEqual(await messageRows(), before);

  // Regenerate: a new answer replaces the old one, in the page and in the store.
  await page.click("text=Regenerate");
  const again = await watchAnswer();
  assert.equal(again.at(-1), EXPECTED);
  const regenerated = await messageRows();
  assert.equal(regenerated.length, 2);
  assert.notEqual(regenerated[1][1], before[1][1]);
  await page.reload();
  await page.waitForSelector('li[data-role="assistant"]');
  assert.deepEqual(await messageRows(), regenerated);
  if (process.env.SCREENSHOT) await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });
});
