// The web view's render benchmark (run by bench/web.sh): first render of a large graph in Debian's
// chromium, and frame times while panning it.
//
//   node web-render.mjs URL NODES ROUNDS
//
// First render: from navigation start until NODES `[data-node]` elements are in the DOM and a frame
// has been painted, ROUNDS times in fresh pages; the median is printed. Panning: a drag of 120 mouse
// moves across the canvas while requestAnimationFrame records frame intervals; median and p95.
import { chromium } from 'playwright-core';

const [url, nodes, rounds] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4] || 5)];
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const median = (xs) => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor(s.length / 2)]; };
const p95 = (xs) => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor(s.length * 0.95)]; };
const firsts = [];
let page;
for (let r = 0; r < rounds; r++) {
  page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  await page.goto(url);
  const ms = await page.evaluate(async (n) => {
    while (document.querySelectorAll('[data-node]').length < n) await new Promise((r) => setTimeout(r, 5));
    await new Promise((r) => requestAnimationFrame(() => r()));
    return performance.now();
  }, nodes);
  firsts.push(ms);
  if (r + 1 < rounds) await page.close();
}
await page.evaluate(() => {
  window.__frames = [];
  let last = performance.now();
  const tick = (t) => { window.__frames.push(t - last); last = t; if (window.__frames.length < 400) requestAnimationFrame(tick); };
  requestAnimationFrame(tick);
});
await page.mouse.move(700, 450);
await page.mouse.down();
for (let i = 0; i < 120; i++) {
  await page.mouse.move(700 - i * 3, 450 - i * 2);
}
await page.mouse.up();
const frames = (await page.evaluate(() => window.__frames)).slice(2);
console.log(JSON.stringify({
  first_render_ms: firsts.map((x) => Math.round(x)),
  first_render_median_ms: Math.round(median(firsts)),
  pan_frame_median_ms: Number(median(frames).toFixed(1)),
  pan_frame_p95_ms: Number(p95(frames).toFixed(1)),
  frames: frames.length,
}));
await browser.close();
