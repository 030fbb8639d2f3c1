// One service of a small shop, instrumented by the OpenTelemetry Node SDK with its defaults on:
// the SDK's own HTTP server and client metrics exported beside the traces, over whichever OTLP
// protocol the environment names (OTEL_EXPORTER_OTLP_PROTOCOL: grpc, http/protobuf, http/json).
//
//   node shop.js ROLE PORT [INVENTORY_URL ORDERS_URL]
//
// ROLE is `inventory` (answers 200), `orders` (answers 500 to every fifth request) or `frontend`,
// which for each request it serves calls inventory with node:http, orders with fetch (undici) and
// runs one PostgreSQL query span, then answers 200. The service's name, namespace and version come
// from OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES. On SIGTERM the SDK is shut down, which
// flushes every span and metric point, and the process exits.
'use strict';

const { NodeSDK } = require('@opentelemetry/sdk-node');
const { HttpInstrumentation } = require('@opentelemetry/instrumentation-http');
const { UndiciInstrumentation } = require('@opentelemetry/instrumentation-undici');

const sdk = new NodeSDK({ instrumentations: [new HttpInstrumentation(), new UndiciInstrumentation()] });
sdk.start();

// Required after start, so that the instrumentation patches them.
const http = require('node:http');
const api = require('@opentelemetry/api');

const [role, port, inventoryUrl, ordersUrl] = process.argv.slice(2);
const tracer = api.trace.getTracer('shop');
let served = 0;

function get(url) {
  return new Promise((resolve, reject) => {
    http
      .get(url, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode));
      })
      .on('error', reject);
  });
}

async function query() {
  await tracer.startActiveSpan(
    'SELECT shop.orders',
    {
      kind: api.SpanKind.CLIENT,
      attributes: {
        'db.system.name': 'postgresql',
        'db.namespace': 'shop',
        'db.operation.name': 'SELECT',
        'db.query.text': 'SELECT id FROM orders WHERE user_id = $1',
        'server.address': 'pg.shop.local',
        'server.port': 5432,
      },
    },
    async (span) => {
      await new Promise((r) => setTimeout(r, 1));
      span.end();
    },
  );
}

async function handle(req, res) {
  served += 1;
  if (role === 'orders' && served % 5 === 0) {
    res.writeHead(500).end('orders failed\n');
    return;
  }
  if (role === 'frontend') {
    await get(inventoryUrl);
    const r = await fetch(ordersUrl);
    await r.text();
    await query();
  }
  res.writeHead(200, { 'content-type': 'text/plain' }).end(`${role} ok\n`);
}

const server = http.createServer((req, res) => {
  handle(req, res).catch((e) => res.writeHead(502).end(String(e)));
});
server.keepAliveTimeout = 1000;
server.listen(Number(port), '127.0.0.1', () => process.stdout.write(`listening ${server.address().port}\n`));

process.on('SIGTERM', () => {
  server.close();
  server.closeAllConnections();
  sdk.shutdown().finally(() => process.exit(0));
});
