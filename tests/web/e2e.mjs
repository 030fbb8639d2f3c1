// End-to-end test of the web view in Debian's chromium (playwright-core), driven by
// tests/it/web.rs, which runs a collector with test traffic and passes its URL.
//
//   node e2e.mjs URL SCREENSHOT
//
// Steps, each waiting for selectors (never for time): the graph shows the expected nodes and edges;
// clicking a node shows the numbers the API has for it; the script prints "WAITING update" and
// waits for a line on stdin, after which new traffic (a new node) must appear through the SSE
// stream; a node named like an HTML tag renders as text and runs nothing; a screenshot is saved.
// Prints "OK" and exits 0, or "FAIL: why" and exits 1.
import { chromium } from 'playwright-core';
import { createInterface } from 'node:readline';

const [url, shot] = process.argv.slice(2);
const XSS = '<img src=x onerror=alert(1)>';
let page;
const fail = async (why) => {
  console.log(`FAIL: ${why}`);
  if (page) await page.screenshot({ path: shot, fullPage: true }).catch(() => {});
  process.exit(1);
};
const lines = createInterface({ input: process.stdin });
const nextLine = () => new Promise((resolve) => lines.once('line', resolve));

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  page = await browser.newPage({ viewport: { width: 1400, height: 800 } });
  const dialogs = [];
  page.on('dialog', async (d) => { dialogs.push(d.message()); await d.dismiss(); });
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(url);

  // 1. The graph: nodes and edges.
  for (const id of ['default/frontend/v1', 'default/catalog/v1', 'default/payments/v1']) {
    await page.waitForSelector(`[data-node="${id}"]`, { timeout: 20000 }).catch(() => fail(`no node ${id}`));
  }
  for (const id of ['default/frontend/v1->default/catalog/v1', 'default/frontend/v1->default/payments/v1']) {
    await page.waitForSelector(`[data-edge="${id}"]`, { timeout: 5000 }).catch(() => fail(`no edge ${id}`));
  }
  await page.waitForSelector('#live.live', { timeout: 10000 }).catch(() => fail('the live indicator never lit'));
  // The mTLS edge carries a drawn lock (an SVG shape, not an emoji Debian's chromium cannot draw).
  await page.waitForSelector('[data-edge="default/frontend/v1->default/catalog/v1"] .lock', { timeout: 5000 })
    .catch(() => fail('no lock on the mTLS edge'));
  if (await page.$('[data-edge="default/frontend/v1->default/payments/v1"] .lock')) fail('a lock on a plain edge');
  const emoji = await page.evaluate(() => /\p{Extended_Pictographic}/u.test(document.querySelector('svg')?.textContent ?? ''));
  if (emoji) fail('an emoji in the graph text');

  // 2. Clicking a node shows the API's numbers for it.
  await page.click('[data-node="default/payments/v1"]');
  await page.waitForSelector('#panel-title', { timeout: 5000 }).catch(() => fail('no side panel'));
  const title = await page.textContent('#panel-title');
  if (!title.includes('payments v1')) fail(`panel title ${title}`);
  const api = await (await fetch(new URL('/api/v1/graph', url))).json();
  const node = api.nodes.find((n) => n.id === 'default/payments/v1');
  const row = await page.textContent('#panel-table tr:nth-child(2)');
  // Success and error shares are fixed by the traffic; the rate moves as the window fills, so it
  // only has to be close to the API's a moment later.
  const cells = await page.$$eval('#panel-table tr:nth-child(2) td', (tds) => tds.map((t) => t.textContent));
  if (cells[2] !== node.inbound.success_pct.toFixed(2) || cells[3] !== node.inbound.error_pct.toFixed(2)) {
    await fail(`panel row ${cells} against the API's ${JSON.stringify(node.inbound)}`);
  }
  const rps = Number(cells[1]);
  if (!(rps > 0 && Math.abs(rps - node.inbound.rps) <= 0.5 * node.inbound.rps)) await fail(`panel rps ${rps} against ${node.inbound.rps}`);
  console.log(`panel: ${row.replace(/\s+/g, ' ').trim()}`);

  // The node's failed requests are listed by their exemplars; one opens as a waterfall whose
  // rows are the API's spans of that trace.
  await page.waitForSelector('#panel-traces a.trace-id', { timeout: 10000 }).catch(() => fail('no failed requests in the panel'));
  const traceId = (await page.textContent('#panel-traces a.trace-id')).trim();
  // The slowest beside them, slowest first, as the API has them (read before and after: live
  // traffic may bring a slower one between).
  await page.waitForSelector('#panel-slow a.trace-id', { timeout: 10000 }).catch(() => fail('no slowest requests in the panel'));
  const exemplars = async () => (await (await fetch(new URL('/api/v1/exemplars?node=default/payments/v1&limit=5', url))).json()).slowest.map((x) => x.trace_id);
  const before = await exemplars();
  const slowShown = await page.$$eval('#panel-slow li', (lis) => lis.map((l) => [l.querySelector('.trace-id,.trace-link,.trace-gone').textContent.trim(), Number(l.dataset.latencyMs)]));
  const after = await exemplars();
  if (!slowShown.every(([id]) => before.includes(id) || after.includes(id))) await fail(`slowest ${JSON.stringify(slowShown)} against the API's ${before} / ${after}`);
  if (!slowShown.every(([, ms], i) => i === 0 || slowShown[i - 1][1] >= ms)) await fail(`slowest not slowest first: ${JSON.stringify(slowShown)}`);
  const kept = await (await fetch(new URL(`/api/v1/traces/${traceId}`, url))).json();
  await page.click('#panel-traces a.trace-id');
  await page.waitForSelector('#trace-waterfall tr', { timeout: 5000 }).catch(() => fail('the trace did not open'));
  const spanRows = await page.$$eval('#trace-waterfall tr', (trs) => trs.map((t) => t.textContent));
  if (spanRows.length !== kept.spans.length) await fail(`${spanRows.length} waterfall rows against ${kept.spans.length} spans`);
  if (!spanRows.some((r) => r.includes('default/payments/v1 server') && r.includes('500'))) await fail(`no failed payments span in ${spanRows}`);
  if ((await page.$$('#trace-waterfall tr.failed')).length === 0) await fail('no span marked failed');
  console.log(`trace: ${traceId} ${spanRows.length} spans`);

  // A service's routes, as the agents counted them: the API's rows, in its order.
  await page.click('[data-node="shop/b/v1"]');
  await page.waitForSelector('#panel-routes tr.route', { timeout: 10000 }).catch(() => fail('no routes in the panel'));
  const routes = await (await fetch(new URL('/api/v1/routes?service=shop/b&window=1m', url))).json();
  const shown = await page.$$eval('#panel-routes tr.route', (trs) => trs.map((t) => [...t.children].map((c) => c.textContent)));
  const want = routes.routes.map((r) => [r.route, r.stats.success_pct.toFixed(2)]);
  if (JSON.stringify(shown.map((c) => [c[0], c[2]])) !== JSON.stringify(want)) await fail(`routes ${JSON.stringify(shown)} against the API's ${JSON.stringify(want)}`);
  if (!shown.some((c) => c[0] === 'GET /status/{code}' && c[2] === '80.00')) await fail(`no GET /status/{code} at 80% in ${JSON.stringify(shown)}`);
  console.log(`routes: ${JSON.stringify(shown)}`);

  // 3. Live: new traffic shows without a reload.
  console.log('WAITING update');
  await nextLine();
  await page.waitForSelector('[data-node="default/shipping/v1"]', { timeout: 20000 }).catch(() => fail('the SSE update did not show shipping'));

  // 4. A name from span data is text, not markup.
  const xss = await page.$$eval('#graph text', (ts, x) => ts.some((t) => t.textContent.includes(x)), XSS);
  if (!xss) fail('the XSS-named node is not shown as text');
  if (await page.$('img[src="x"]')) fail('an <img> from span data reached the DOM');
  if (dialogs.length) fail(`a dialog ran: ${dialogs}`);

  // 5. Find: highlight, then the URL holds the view.
  await page.fill('#find', 'app = payments');
  await page.press('#find', 'Enter');
  await page.waitForFunction(() => location.search.includes('find=app'), null, { timeout: 5000 }).catch(() => fail('the URL did not take the find expression'));

  await page.screenshot({ path: shot, fullPage: true });
  console.log(`screenshot ${shot}`);
  if (errors.length) fail(`page errors: ${errors}`);
  console.log('OK');
} finally {
  await browser.close();
  lines.close();
}
