// The web view on a large mesh (tests/it/web.rs feeds a 10-namespace, 300-service synthetic mesh).
//
// Opened with no view in the URL it shows the namespace view: every namespace visible and
// labelled, text at 10 CSS pixels or more, no two nodes or labels overlapping. A namespace
// expands into its apps (double-click) and collapses back (the panel's button); focus keeps the
// selected node's neighbourhood and nothing else. Opened as `view=versioned`, all 300 services are
// drawn legibly from the first namespace, and dragging pans to the rest.
//
//   node large.mjs URL SCREENSHOT
//
// Prints "OK" and exits 0, or "FAIL: why" and exits 1; screenshots go beside SCREENSHOT.
import { chromium } from 'playwright-core';

const [url, shot] = process.argv.slice(2);
const shotAs = (name) => shot.replace(/\.png$/, `-${name}.png`);
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

// What a reader sees: each drawn node's id and label box, and whether it lies inside the canvas.
const drawn = () => page.evaluate(() => {
  const c = document.querySelector('#canvas').getBoundingClientRect();
  return [...document.querySelectorAll('[data-node]')].map((g) => {
    const t = g.querySelector('text').getBoundingClientRect();
    const inside = t.left >= c.left && t.right <= c.right && t.top >= c.top && t.bottom <= c.bottom;
    return { id: g.dataset.node, label: g.querySelector('text').textContent, inside, px: t.height,
      box: [t.left, t.top, t.right, t.bottom] };
  });
});
// Edge labels drawn (empty ones are left out where they would overlap), as boxes like `drawn`'s.
const edgeLabels = () => page.evaluate(() => [...document.querySelectorAll('.edge text')]
  .filter((t) => t.textContent.trim() !== '')
  .map((t) => { const r = t.getBoundingClientRect(); return { id: `label of ${t.parentNode.dataset.edge}`, box: [r.left, r.top, r.right, r.bottom] }; }));
const overlapping = (nodes) => {
  for (let i = 0; i < nodes.length; i++) {
    for (let j = i + 1; j < nodes.length; j++) {
      const [a, b] = [nodes[i].box, nodes[j].box];
      if (a[0] < b[2] && b[0] < a[2] && a[1] < b[3] && b[1] < a[3]) return `${nodes[i].id} and ${nodes[j].id}`;
    }
  }
  return null;
};
const scale = () => page.evaluate(() => document.querySelector('#viewport').getScreenCTM().a);
const until = (what, fn, arg) => page.waitForFunction(fn, arg, { timeout: 30000 })
  .catch(async () => fail(`${what} (at ${page.url()}; ${await page.evaluate(() => document.querySelector('#error')?.textContent ?? 'no error shown')})`));

try {
  page = await browser.newPage({ viewport: { width: 1400, height: 800 } });

  // 1. The namespace view, at once.
  await page.goto(url);
  await until('the namespace view did not open', () => document.querySelectorAll('.node.namespace').length === 10);
  let nodes = await drawn();
  for (let i = 0; i < 10; i++) {
    const ns = nodes.find((n) => n.id === `ns:ns${i}`);
    if (!ns || !ns.inside || ns.label !== `ns${i}`) await fail(`namespace ns${i} is not visible and labelled: ${JSON.stringify(ns)}`);
  }
  if (!(11 * (await scale()) >= 10)) await fail(`the smallest text is drawn at ${(11 * (await scale())).toFixed(1)} px`);
  let clash = overlapping([...nodes, ...(await edgeLabels())]);
  if (clash) await fail(`in the namespace view ${clash} overlap`);
  if (!(await page.locator('#panel-hint').isVisible())) await fail('no hint says what the boxes are');
  await page.screenshot({ path: shotAs('namespaces') });

  // 2. Expand ns3: its apps appear, the other namespaces stay boxes.
  await page.dblclick('[data-node="ns:ns3"] text');
  await until(`ns3 did not expand`, () =>
    document.querySelectorAll('[data-node^="ns3/"]').length > 0 && document.querySelectorAll('.node.namespace').length === 9);
  if (!page.url().includes('collapse=ns0')) await fail(`the URL does not hold the expanded view: ${page.url()}`);
  nodes = await drawn();
  clash = overlapping([...nodes, ...(await edgeLabels())]);
  if (clash) await fail(`with ns3 expanded ${clash} overlap`);
  if (nodes.some((n) => n.id.includes('/') && !n.id.startsWith('ns3/'))) await fail('another namespace expanded too');
  await page.screenshot({ path: shotAs('expanded') });

  // 3. Focus on one of ns3's services: only it and what it calls or is called by remain.
  const target = nodes.find((n) => n.id.startsWith('ns3/')).id;
  const near = await page.evaluate((id) => {
    const keep = new Set([id]);
    for (const e of document.querySelectorAll('[data-edge]')) {
      const [s, t] = e.dataset.edge.split('->');
      if (s === id) keep.add(t);
      if (t === id) keep.add(s);
    }
    return [...keep].sort();
  }, target);
  await page.click(`[data-node="${target}"] text`);
  await page.click('#focus');
  await page.waitForFunction((n) => document.querySelectorAll('[data-node]').length === n, near.length, { timeout: 30000 })
    .catch(async () => fail(`focus on ${target} did not narrow the graph to ${near}: drawn ${(await drawn()).map((n) => n.id)} (at ${page.url()})`));
  const focused = (await drawn()).map((n) => n.id).sort();
  if (JSON.stringify(focused) !== JSON.stringify(near)) await fail(`focus on ${target} kept ${focused}, not ${near}`);
  await page.click('#unfocus');

  // 4. Collapse ns3 again from the panel.
  await until('focus did not widen again', () => document.querySelectorAll('[data-node]').length > 10);
  await page.click(`[data-node="${target}"] text`);
  await page.click('#collapse-ns');
  await until('ns3 did not collapse', () =>
    document.querySelectorAll('[data-node^="ns3/"]').length === 0 && document.querySelector('[data-node="ns:ns3"]'));

  // 5. Every service: legible from the first namespace, and panning shows the rest.
  await page.goto(`${url}?view=versioned`);
  await until('fewer than 300 nodes drawn', () => document.querySelectorAll('[data-node]').length >= 300);
  if (!(11 * (await scale()) >= 10)) await fail(`the smallest text is drawn at ${(11 * (await scale())).toFixed(1)} px`);
  // Titles of boxes inside the canvas, as a reader sees them.
  const visible = async () => page.evaluate(() => {
    const c = document.querySelector('#canvas').getBoundingClientRect();
    return [...document.querySelectorAll('.box text')]
      .filter((t) => { const r = t.getBoundingClientRect(); return r.left >= c.left && r.right <= c.right && r.top >= c.top && r.bottom <= c.bottom; })
      .map((t) => t.textContent);
  });
  const first = await visible();
  if (!first.some((t) => t.startsWith('ns0/'))) await fail(`the first namespace is not in view: ${first.slice(0, 10)}`);
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
