// The web view on a large mesh (tests/it/web.rs feeds a 10-namespace, 300-service synthetic mesh):
// the initial view is legible — the smallest text (11 SVG units) drawn at 10 CSS pixels or more —
// and shows the first namespace's boxes, and dragging pans to the rest.
//
//   node large.mjs URL SCREENSHOT
//
// Prints "OK" and exits 0, or "FAIL: why" and exits 1.
import { chromium } from 'playwright-core';

const [url, shot] = process.argv.slice(2);
let page;
const fail = async (why) => {
  console.log(`FAIL: ${why}`);
  if (page) await page.screenshot({ path: shot }).catch(() => {});
  process.exit(1);
};
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'],
});
try {
  page = await browser.newPage({ viewport: { width: 1400, height: 800 } });
  await page.goto(url);
  await page.waitForFunction(() => document.querySelectorAll('[data-node]').length >= 300, null, { timeout: 30000 })
    .catch(() => fail('fewer than 300 nodes drawn'));
  const scale = await page.evaluate(() => document.querySelector('#viewport').getScreenCTM().a);
  if (!(11 * scale >= 10)) await fail(`the smallest text is drawn at ${(11 * scale).toFixed(1)} px`);
  // Titles of boxes inside the canvas, as a reader sees them.
  const visible = async () => page.evaluate(() => {
    const c = document.querySelector('#canvas').getBoundingClientRect();
    return [...document.querySelectorAll('.box text')]
      .filter((t) => { const r = t.getBoundingClientRect(); return r.left >= c.left && r.right <= c.right && r.top >= c.top && r.bottom <= c.bottom; })
      .map((t) => t.textContent);
  });
  const first = await visible();
  if (!first.some((t) => t.startsWith('ns0/'))) await fail(`the first namespace is not in view: ${first.slice(0, 10)}`);
  // Drag left and up: other boxes come into view.
  await page.mouse.move(900, 600);
  await page.mouse.down();
  await page.mouse.move(200, 150, { steps: 5 });
  await page.mouse.up();
  const after = await visible();
  if (!after.some((t) => !first.includes(t))) await fail('panning showed nothing new');
  await page.screenshot({ path: shot });
  console.log('OK');
} catch (e) {
  await fail(String(e));
} finally {
  await browser.close();
}
