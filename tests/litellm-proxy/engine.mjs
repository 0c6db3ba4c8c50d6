#!/usr/bin/env node
// Prisma's query engine as prisma-client-py runs it (`<engine> -p <port> ...`, or `--version`),
// for LiteLLM's proxy in entra-sync's tests. The native engine cannot be downloaded here, so this
// serves the native engine's HTTP interface in front of the same engine commit built to
// WebAssembly (@prisma/query-engine-wasm over @prisma/adapter-pg and pg), translating
// prisma-client-py's GraphQL requests into the JSON protocol the wasm engine speaks, and its
// answers back (README: "Checked against LiteLLM's proxy").
import fs from 'node:fs';
import http from 'node:http';
import { createRequire } from 'node:module';
import { parse, Kind } from 'graphql';
import pg from 'pg';
import { PrismaPg } from '@prisma/adapter-pg';
import { bindAdapter } from '@prisma/driver-adapter-utils';
import * as wasmBindings from '@prisma/query-engine-wasm/postgresql/query_engine_bg.js';

const ENGINE_COMMIT = '393aa359c9ad4a4bb28630fb5613f9c281cde053';

if (process.argv.includes('--version')) {
  console.log(`query-engine ${ENGINE_COMMIT}`);
  process.exit(0);
}

// --- PostgreSQL --------------------------------------------------------------------------------

// The native engine reads these pg_catalog types as text; @prisma/adapter-pg 5.17 rejects them
// (LiteLLM's start-up reads views returning them). Relabel them before pg picks a parser.
const READ_AS_TEXT = new Map([
  [18, 25], [19, 25], [24, 25], [26, 25], [2202, 25], [2203, 25], [2204, 25], [2205, 25],
  [2206, 25], [3734, 25], [3769, 25], [4089, 25], [4096, 25], [4191, 25], // "char", name, reg*
  [1002, 1009], [1003, 1009], [1008, 1009], [2210, 1009], [2211, 1009], // their arrays
]);
const addFields = pg.Result.prototype.addFields;
pg.Result.prototype.addFields = function relabelled(fields) {
  for (const field of fields) field.dataTypeID = READ_AS_TEXT.get(field.dataTypeID) ?? field.dataTypeID;
  return addFields.call(this, fields);
};

// Parameters only Prisma understands; pg would pass them to the server as settings.
const PRISMA_ONLY_PARAMS = ['schema', 'connection_limit', 'pool_timeout', 'socket_timeout', 'pgbouncer',
  'statement_cache_size', 'connect_timeout'];

function databaseUrl() {
  const overrides = process.env.OVERWRITE_DATASOURCES ? JSON.parse(process.env.OVERWRITE_DATASOURCES) : [];
  const raw = overrides[0]?.url ?? process.env.DATABASE_URL;
  if (!raw) throw new Error('no database URL: set DATABASE_URL');
  const url = new URL(raw);
  const schema = url.searchParams.get('schema') ?? undefined;
  for (const param of PRISMA_ONLY_PARAMS) url.searchParams.delete(param);
  return { connectionString: url.toString(), schema };
}

// --- The schema: which fields are Json, which lead to another model ----------------------------

const datamodel = fs.readFileSync(process.env.PRISMA_DML_PATH, 'utf8');

/** model name -> field name -> field type (a scalar type's name or another model's name). */
function readModels(dml) {
  const models = {};
  for (const [, name, body] of dml.matchAll(/^model\s+(\w+)\s*\{([\s\S]*?)^\}/gm)) {
    models[name] = {};
    for (const line of body.split('\n')) {
      const field = line.match(/^\s*(\w+)\s+(\w+)/);
      if (field) models[name][field[1]] = field[2];
    }
  }
  return models;
}
const models = readModels(datamodel);

// --- GraphQL (prisma-client-py) to the JSON protocol -------------------------------------------

const ACTION = /^(findUnique|findFirst|findMany|createOne|createMany|updateOne|updateMany|deleteOne|deleteMany|upsertOne|aggregate|groupBy)(\w+?)(OrThrow)?$/;

function literal(node) {
  switch (node.kind) {
    case Kind.INT: {
      const n = Number(node.value);
      return Number.isSafeInteger(n) ? n : { $type: 'BigInt', value: node.value };
    }
    case Kind.FLOAT: return Number(node.value);
    case Kind.STRING: case Kind.ENUM: return node.value;
    case Kind.BOOLEAN: return node.value;
    case Kind.NULL: return null;
    case Kind.LIST: return node.values.map(literal);
    case Kind.OBJECT: return Object.fromEntries(node.fields.map((f) => [f.name.value, literal(f.value)]));
    default: throw new Error(`unsupported GraphQL value ${node.kind}`);
  }
}

/** The GraphQL protocol sends a Json value as a string of JSON; the JSON protocol keeps such a
 * string a JSON string unless it is tagged. Walks arguments with the model they belong to. */
function tagJson(value, model) {
  if (Array.isArray(value)) return value.map((v) => tagJson(v, model));
  if (value === null || typeof value !== 'object' || '$type' in value) return value;
  return Object.fromEntries(Object.entries(value).map(([key, v]) => {
    const type = models[model]?.[key];
    if (type === 'Json') return [key, jsonValue(v)];
    return [key, tagJson(v, models[type] ? type : model)];
  }));
}

function jsonValue(value) {
  if (typeof value === 'string') return { $type: 'Json', value };
  if (value === null) return { $type: 'Enum', value: 'DbNull' };
  if (typeof value === 'object' && !Array.isArray(value)) {
    // Under `set`, `equals` and `not` (updates and filters) the value is Json too.
    return Object.fromEntries(Object.entries(value).map(([k, v]) =>
      [k, ['set', 'equals', 'not'].includes(k) && typeof v === 'string' ? { $type: 'Json', value: v } : v]));
  }
  return value;
}

function selection(set) {
  if (!set) return { $scalars: true };
  return Object.fromEntries(set.selections.map((field) => [field.name.value,
    field.selectionSet || field.arguments.length
      ? { arguments: args(field), selection: selection(field.selectionSet) }
      : true]));
}

function args(field) {
  return Object.fromEntries(field.arguments.map((a) => [a.name.value, literal(a.value)]));
}

/** One GraphQL request -> [JSON-protocol request, the key prisma-client-py reads the answer at]. */
function translate(graphql) {
  const operation = parse(graphql).definitions[0];
  const field = operation.selectionSet.selections[0];
  const name = field.name.value;
  const alias = field.alias?.value ?? name;
  if (name === 'executeRaw' || name === 'queryRaw') {
    return [{ action: name, query: { arguments: args(field), selection: {} } }, alias];
  }
  const [, action, model, orThrow] = name.match(ACTION) ?? [];
  if (!action) throw new Error(`unsupported operation ${name}`);
  return [{
    modelName: model,
    action: action + (orThrow ?? ''),
    query: { arguments: tagJson(args(field), model), selection: selection(field.selectionSet) },
  }, alias];
}

/** Answers come back keyed by action and with tagged values; prisma-client-py reads `data.result`
 * with plain values (a Json value as its string, as the native engine sends it). */
function untag(value) {
  if (Array.isArray(value)) return value.map(untag);
  if (value === null || typeof value !== 'object') return value;
  if (typeof value.$type === 'string' && 'value' in value) {
    if (value.$type === 'BigInt') {
      const n = Number(value.value);
      return Number.isSafeInteger(n) ? n : value.value;
    }
    return value.value;
  }
  return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, untag(v)]));
}

function answer(response, alias) {
  if (!response.data) return response;
  const [key] = Object.keys(response.data);
  const raw = key === 'queryRaw' || key === 'executeRaw';
  return { data: { [alias]: raw ? response.data[key] : untag(response.data[key]) } };
}

// --- The engine and its HTTP interface ---------------------------------------------------------

const wasmPath = createRequire(import.meta.url).resolve('@prisma/query-engine-wasm/postgresql/query_engine_bg.wasm');
const instance = new WebAssembly.Instance(new WebAssembly.Module(fs.readFileSync(wasmPath)),
  { './query_engine_bg.js': wasmBindings });
wasmBindings.__wbg_set_wasm(instance.exports);

const { connectionString, schema } = databaseUrl();
const pool = new pg.Pool({ connectionString, max: 10 });
// An idle connection the server ends (a test dropping its database) is not a reason to die.
pool.on('error', (error) => process.stderr.write(`engine stand-in: idle connection lost: ${error.message}\n`));
const adapter = bindAdapter(new PrismaPg(pool, { schema }));
const engine = new wasmBindings.QueryEngine(
  { datamodel, logLevel: 'error', logQueries: false, env: process.env, ignoreEnvVarErrors: true, datasourceOverrides: {} },
  (log) => process.stderr.write(`${log}\n`),
  adapter,
);
await engine.connect('');

/** A transaction's errors arrive as one object; prisma-client-py reads an `errors` list. */
function asErrors(json) {
  const parsed = JSON.parse(json || '{}');
  return parsed.error && !parsed.errors ? { errors: [parsed] } : parsed;
}

async function query(body, txId) {
  if (body.batch) {
    const translated = body.batch.map((q) => translate(q.query));
    const request = { batch: translated.map(([q]) => q), transaction: body.transaction ? {} : undefined };
    const response = JSON.parse(await engine.query(JSON.stringify(request), '', txId));
    if (!response.batchResult) return response;
    return { batchResult: response.batchResult.map((r, i) => answer(r, translated[i][1])) };
  }
  const [request, alias] = translate(body.query);
  return answer(JSON.parse(await engine.query(JSON.stringify(request), '', txId)), alias);
}

async function handle(req, body) {
  const url = new URL(req.url, 'http://engine');
  if (req.method === 'GET' && url.pathname === '/status') return { status: 'ok' };
  if (url.pathname === '/metrics') {
    // LiteLLM does not read the engine's metrics; an empty set in the asked format.
    return url.searchParams.get('format') === 'json' ? { counters: [], gauges: [], histograms: [] } : '';
  }
  if (req.method !== 'POST') return null;
  if (url.pathname === '/') return query(JSON.parse(body), req.headers['x-transaction-id']);
  if (url.pathname === '/transaction/start') return asErrors(await engine.startTransaction(body || '{}', ''));
  const tx = url.pathname.match(/^\/transaction\/([^/]+)\/(commit|rollback)$/);
  if (tx) {
    const done = tx[2] === 'commit' ? engine.commitTransaction(tx[1], '') : engine.rollbackTransaction(tx[1], '');
    return asErrors(await done);
  }
  return null;
}

function serve(req, res) {
  let body = '';
  req.setEncoding('utf8');
  req.on('data', (chunk) => { body += chunk; });
  req.on('end', async () => {
    try {
      const result = await handle(req, body);
      if (result === null) {
        res.writeHead(404).end();
      } else if (typeof result === 'string') {
        res.writeHead(200, { 'content-type': 'text/plain' }).end(result);
      } else {
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(result));
      }
    } catch (error) {
      process.stderr.write(`engine stand-in: ${error.stack}\n`);
      res.writeHead(500, { 'content-type': 'application/json' })
        .end(JSON.stringify({ errors: [{ error: String(error), user_facing_error: {} }] }));
    }
  });
}

// Go with the proxy: when it dies without stopping us (SIGKILL), we are handed to another parent.
const parent = process.ppid;
setInterval(() => { if (process.ppid !== parent) process.exit(0); }, 1000).unref();

// prisma-client-py connects to http://localhost:<port>, which may resolve to either family.
const port = Number(process.argv[process.argv.indexOf('-p') + 1]);
http.createServer(serve).listen(port, '127.0.0.1');
http.createServer(serve).on('error', () => {}).listen(port, '::1');
