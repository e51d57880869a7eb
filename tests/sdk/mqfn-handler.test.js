'use strict';
// Protocol tests for the Node handler SDK and the csv-rows.js example.
// Run from the repository root:  node --test tests/sdk/
// Every test spawns real handler processes and talks the frame protocol over stdin/stdout;
// every read has a timeout so a broken handler fails instead of hanging.

const { test, describe, after } = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const path = require('node:path');
const crypto = require('node:crypto');

const ROOT = path.resolve(__dirname, '..', '..');
const SDK = path.join(ROOT, 'handlers', 'sdk', 'mqfn-handler.js');
const CSV_ROWS = path.join(ROOT, 'handlers', 'examples', 'csv-rows.js');
const sdk = require(SDK);
const { encodeFrame, encodeRequest, FrameParser, decode, normalizeResult, Output, Permanent } = sdk;

const TIMEOUT_MS = 10000;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A handler subprocess; responses are decoded by an independent reader (not the SDK parser). */
class Worker {
  constructor(args) {
    this.child = spawn(process.execPath, args, { cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'] });
    this.buf = Buffer.alloc(0);
    this.stdoutEnded = false;
    this.stderr = '';
    this.waiters = [];
    this.child.stdout.on('data', (c) => {
      this.buf = Buffer.concat([this.buf, c]);
      this.wake();
    });
    this.child.stdout.on('end', () => {
      this.stdoutEnded = true;
      this.wake();
    });
    this.child.stderr.on('data', (c) => {
      this.stderr += c.toString('utf8');
    });
    this.child.stdin.on('error', () => {}); // EPIPE when a test makes the child exit early
    this.exited = new Promise((resolve) => this.child.on('exit', (code, signal) => resolve(code ?? signal)));
  }

  wake() {
    const w = this.waiters;
    this.waiters = [];
    w.forEach((f) => f());
  }

  async readExact(n, timeoutMs = TIMEOUT_MS) {
    const deadline = Date.now() + timeoutMs;
    while (this.buf.length < n) {
      if (this.stdoutEnded) {
        throw new Error(`handler stdout ended after ${this.buf.length} of ${n} bytes; stderr:\n${this.stderr}`);
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timeout waiting for ${n} bytes (have ${this.buf.length}); stderr:\n${this.stderr}`);
      await new Promise((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }

  async readFrame() {
    const n = (await this.readExact(4)).readUInt32BE(0);
    return Buffer.from(await this.readExact(n));
  }

  async response() {
    const header = JSON.parse((await this.readFrame()).toString('utf8'));
    const payloads = [];
    for (let i = 0; i < header.outputs.length; i++) payloads.push(await this.readFrame());
    return { header, payloads };
  }

  send(buf) {
    return new Promise((resolve, reject) => this.child.stdin.write(buf, (err) => (err ? reject(err) : resolve())));
  }

  async call(payload, opts) {
    await this.send(encodeRequest(payload, opts));
    return this.response();
  }

  async close(timeoutMs = TIMEOUT_MS) {
    this.child.stdin.end();
    return this.wait(timeoutMs);
  }

  wait(timeoutMs = TIMEOUT_MS) {
    let t;
    const timeout = new Promise((_, reject) => {
      t = setTimeout(() => reject(new Error(`handler did not exit; stderr:\n${this.stderr}`)), timeoutMs);
    });
    return Promise.race([this.exited, timeout]).finally(() => clearTimeout(t));
  }

  async rest() {
    while (!this.stdoutEnded) await this.readExact(this.buf.length + 1).catch(() => {});
    return this.buf;
  }

  kill() {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
  }
}

const workers = [];
function spawnWorker(args) {
  const w = new Worker(args);
  workers.push(w);
  return w;
}
after(() => workers.forEach((w) => w.kill()));

/** node -e with the SDK's exports in scope; `body` calls handler(...). */
function inline(body) {
  const code = `const { handler, Output, Permanent, Retryable } = require(${JSON.stringify(SDK)});\n${body}`;
  return spawnWorker(['-e', code]);
}

function okPayloads(res) {
  assert.equal(res.header.status, 'ok', JSON.stringify(res.header));
  return res.payloads.map((p) => p.toString('utf8'));
}

// ------------------------------------------------------------------------------- frame helpers

describe('frame helpers', () => {
  test('encodeFrame layout is 4-byte BE length + JSON, then length + payload', () => {
    const buf = encodeFrame({ id: 'a' }, [Buffer.from('xyz')]);
    const head = Buffer.from('{"id":"a"}');
    assert.deepEqual(buf, Buffer.concat([Buffer.from([0, 0, 0, head.length]), head, Buffer.from([0, 0, 0, 3]), Buffer.from('xyz')]));
  });

  test('FrameParser reassembles messages fed one byte at a time', () => {
    const resp = { id: 'r', status: 'ok', outputs: [{ headers: {} }, { headers: { a: 'b' }, key: 'k' }] };
    const data = Buffer.concat([
      encodeRequest(Buffer.from('päyload'), { id: 'q', key: 'k', headers: { h: 'v' } }),
      encodeFrame(resp, [Buffer.from('one'), Buffer.alloc(0)]),
      encodeRequest(Buffer.alloc(0), { id: 'empty' }),
    ]);
    for (const size of [1, 2, 3, 7, 1000]) {
      const p = new FrameParser();
      const msgs = [];
      for (let i = 0; i < data.length; i += size) {
        p.push(data.subarray(i, i + size));
        let m;
        while ((m = p.next()) !== null) msgs.push(m);
      }
      assert.equal(p.partial, false);
      assert.equal(msgs.length, 3, `chunk size ${size}`);
      assert.equal(msgs[0].header.id, 'q');
      assert.deepEqual(msgs[0].header.headers, { h: 'v' });
      assert.equal(msgs[0].payloads[0].toString(), 'päyload');
      assert.deepEqual(msgs[1].header, resp);
      assert.deepEqual(msgs[1].payloads.map(String), ['one', '']);
      assert.deepEqual(msgs[2].payloads.map((b) => b.length), [0]);
    }
  });

  test('decode rejects truncated input', () => {
    const data = encodeRequest(Buffer.from('abc'));
    assert.equal(decode(data).length, 1);
    for (const cut of [2, 9, data.length - 1]) assert.throws(() => decode(data.subarray(0, cut)), /truncated/);
  });

  test('normalizeResult accepts the documented return shapes', () => {
    const outs = normalizeResult([
      'é',
      Buffer.from('b'),
      new Uint8Array([1, 2]),
      new Output('o', { n: 1 }, 'k'),
      { payload: 'p', headers: { x: 'y' } },
    ]);
    assert.deepEqual(outs.map((o) => o.meta), [
      { headers: {} },
      { headers: {} },
      { headers: {} },
      { headers: { n: '1' }, key: 'k' },
      { headers: { x: 'y' } },
    ]);
    assert.deepEqual(outs.map((o) => [...o.payload]), [[0xc3, 0xa9], [0x62], [1, 2], [0x6f], [0x70]]);
    assert.deepEqual(normalizeResult(undefined), []);
    assert.deepEqual(normalizeResult(null), []);
    assert.throws(() => normalizeResult(42), TypeError);
    assert.throws(() => normalizeResult({ nope: 1 }), TypeError);
  });
});

// ------------------------------------------------------------------------------- SDK over pipes

describe('Node SDK over pipes', () => {
  test('ok with one output, then clean exit 0 on EOF', async () => {
    const w = inline(`handler(async (p) => p.toString().toUpperCase());`);
    const res = await w.call(Buffer.from('hello'), { id: 'req-1' });
    assert.deepEqual(res.header, { id: 'req-1', status: 'ok', outputs: [{ headers: {} }] });
    assert.deepEqual(okPayloads(res), ['HELLO']);
    assert.equal(await w.close(), 0);
  });

  test('several outputs with headers and keys; sync handlers work too', async () => {
    const w = inline(
      `handler((p) => [Buffer.from('raw'), 'text-é', new Output('out', { n: 7 }, 'k1'),` +
        ` { payload: 'obj', headers: { a: 'b' }, key: 'k2' }, new Uint8Array([65]), ''])`,
    );
    const res = await w.call(Buffer.from('x'), { id: 'm' });
    assert.deepEqual(res.header.outputs, [
      { headers: {} },
      { headers: {} },
      { headers: { n: '7' }, key: 'k1' },
      { headers: { a: 'b' }, key: 'k2' },
      { headers: {} },
      { headers: {} },
    ]);
    assert.deepEqual(okPayloads(res), ['raw', 'text-é', 'out', 'obj', 'A', '']);
  });

  test('undefined means no output', async () => {
    const w = inline(`handler(async () => {});`);
    const res = await w.call(Buffer.from('x'), { id: 'n' });
    assert.deepEqual(res.header, { id: 'n', status: 'ok', outputs: [] });
  });

  test('context carries the request fields', async () => {
    const w = inline(
      `handler(async (p, ctx) => JSON.stringify({ id: ctx.id, route: ctx.route, subject: ctx.subject, key: ctx.key,` +
        ` headers: ctx.headers, attempt: ctx.attempt, deadline_ms: ctx.deadline_ms,` +
        ` remainingOk: ctx.remainingMs() > 0 && ctx.remainingMs() <= 5000, aborted: ctx.signal.aborted,` +
        ` isBuffer: Buffer.isBuffer(p) }));`,
    );
    const res = await w.call(Buffer.from(''), {
      id: 'c1', route: 'csv', subject: 'files.csv', key: 'user-9', headers: { x: 'y' }, attempt: 3, deadline_ms: 5000,
    });
    assert.deepEqual(JSON.parse(okPayloads(res)[0]), {
      id: 'c1', route: 'csv', subject: 'files.csv', key: 'user-9', headers: { x: 'y' }, attempt: 3,
      deadline_ms: 5000, remainingOk: true, aborted: false, isBuffer: true,
    });
    const res2 = await w.call(Buffer.from(''), { id: 'c2' });
    assert.equal(JSON.parse(okPayloads(res2)[0]).key, null);
  });

  test('thrown errors: Error -> retry, Permanent -> fail, Retryable -> retry, bad result -> fail', async () => {
    const w = inline(
      `handler(async (p) => {
        const s = p.toString();
        if (s === 'error') throw new Error('boom');
        if (s === 'perm') throw new Permanent('never works');
        if (s === 'again') throw new Retryable('later');
        if (s === 'string') throw 'a bare string';
        if (s === 'bad') return 42;
        return s;
      });`,
    );
    assert.deepEqual((await w.call(Buffer.from('error'), { id: '1' })).header, {
      id: '1', status: 'retry', error: 'Error: boom', outputs: [],
    });
    assert.deepEqual((await w.call(Buffer.from('perm'), { id: '2' })).header, {
      id: '2', status: 'fail', error: 'never works', outputs: [],
    });
    assert.deepEqual((await w.call(Buffer.from('again'), { id: '3' })).header, {
      id: '3', status: 'retry', error: 'later', outputs: [],
    });
    const str = await w.call(Buffer.from('string'), { id: '4' });
    assert.equal(str.header.status, 'retry');
    assert.equal(str.header.error, 'a bare string');
    const bad = await w.call(Buffer.from('bad'), { id: '5' });
    assert.equal(bad.header.status, 'fail');
    assert.match(bad.header.error, /invalid handler result/);
    assert.deepEqual(okPayloads(await w.call(Buffer.from('fine'), { id: '6' })), ['fine']);
    assert.equal(await w.close(), 0);
    assert.match(w.stderr, /Error: boom/);
  });

  test('console.log and process.stdout.write do not corrupt stdout', async () => {
    const w = inline(
      `handler(async (p) => {
        console.log('console.log from user code');
        console.info('console.info', { a: 1 });
        console.log('x'.repeat(200000));
        process.stdout.write('process.stdout.write\\n');
        return p;
      });`,
    );
    for (let i = 0; i < 3; i++) {
      assert.deepEqual(okPayloads(await w.call(Buffer.from(`p${i}`), { id: String(i) })), [`p${i}`]);
    }
    assert.equal(await w.close(), 0);
    assert.equal((await w.rest()).length, 0);
    for (const text of ['console.log from user code', 'console.info', 'process.stdout.write']) {
      assert.equal(w.stderr.split(text).length - 1, 3, text);
    }
  });

  test('many sequential requests are served by one process', async () => {
    const w = inline(`handler(async (p) => [p, String(process.pid)]);`);
    const pids = new Set();
    for (let i = 0; i < 50; i++) {
      const res = await w.call(Buffer.from(`msg-${i}`), { id: `id-${i}` });
      assert.equal(res.header.id, `id-${i}`);
      const [echo, pid] = okPayloads(res);
      assert.equal(echo, `msg-${i}`);
      pids.add(pid);
    }
    assert.deepEqual([...pids], [String(w.child.pid)]);
    assert.equal(await w.close(), 0);
  });

  test('pipelined requests are answered one at a time, in order', async () => {
    const w = inline(
      `let busy = false;
      handler(async (p) => {
        if (busy) throw new Permanent('concurrent call');
        busy = true;
        await new Promise((r) => setTimeout(r, 5));
        busy = false;
        return p;
      });`,
    );
    await w.send(Buffer.concat(Array.from({ length: 10 }, (_, i) => encodeRequest(Buffer.from(`m${i}`), { id: String(i) }))));
    for (let i = 0; i < 10; i++) {
      const res = await w.response();
      assert.equal(res.header.id, String(i));
      assert.deepEqual(okPayloads(res), [`m${i}`]);
    }
  });

  test('request delivered in 1-byte pieces still parses', async () => {
    const w = inline(`handler(async (p, ctx) => ctx.id + ':' + p.toString());`);
    const req = encodeRequest(Buffer.from('chunky'), { id: 'one-byte' });
    for (const b of req) {
      await w.send(Buffer.from([b]));
      await sleep(1); // give the child a chance to read each byte separately
    }
    assert.deepEqual(okPayloads(await w.response()), ['one-byte:chunky']);
  });

  test('large payloads and outputs round-trip (chunked stdin, stdout backpressure)', async () => {
    const w = inline(`handler(async (p) => [p, p, p.subarray(0, 10)]);`);
    const big = crypto.randomBytes(4 << 20);
    const res = await w.call(big, { id: 'big' });
    assert.equal(res.header.status, 'ok');
    assert.equal(res.payloads.length, 3);
    assert.ok(res.payloads[0].equals(big));
    assert.ok(res.payloads[1].equals(big));
    assert.ok(res.payloads[2].equals(big.subarray(0, 10)));
    assert.equal(await w.close(), 0);
  });

  test('exit 0 on EOF without any request; exit 2 on a truncated frame', async () => {
    const idle = inline(`handler(async (p) => p);`);
    assert.equal(await idle.close(), 0);
    const cut = inline(`handler(async (p) => p);`);
    await cut.send(encodeRequest(Buffer.from('payload')).subarray(0, 20));
    assert.equal(await cut.close(), 2);
    assert.match(cut.stderr, /protocol error/);
  });
});

// ------------------------------------------------------------------------------- csv-rows.js

describe('csv-rows.js', () => {
  const rows = (res) => {
    assert.equal(res.header.status, 'ok', JSON.stringify(res.header));
    res.header.outputs.forEach((o, i) => {
      assert.equal(o.headers['mqfn-row'], String(i + 1));
      assert.equal(o.headers['content-type'], 'application/json');
    });
    return res.payloads.map((p) => JSON.parse(p.toString('utf8')));
  };

  test('one JSON output per row with mqfn-row numbering', async () => {
    const w = spawnWorker([CSV_ROWS]);
    const res = await w.call(Buffer.from('name,age\nalice,30\nbob,41\n'), { id: 'csv1' });
    assert.deepEqual(rows(res), [{ name: 'alice', age: '30' }, { name: 'bob', age: '41' }]);
    assert.equal(await w.close(), 0);
  });

  test('quoted fields with commas, escaped quotes, embedded newlines, CRLF', async () => {
    const w = spawnWorker([CSV_ROWS]);
    const csv =
      'id,text,note\r\n' +
      '1,"hello, world","say ""hi"""\r\n' +
      '2,"line one\r\nline two\nline three",plain\r\n' +
      '3,,""\r\n' +
      '\r\n' +
      '4,"last, no newline","x"';
    assert.deepEqual(rows(await w.call(Buffer.from(csv))), [
      { id: '1', text: 'hello, world', note: 'say "hi"' },
      { id: '2', text: 'line one\r\nline two\nline three', note: 'plain' },
      { id: '3', text: '', note: '' },
      { id: '4', text: 'last, no newline', note: 'x' },
    ]);
    // Short rows get empty strings; a BOM is ignored.
    assert.deepEqual(rows(await w.call(Buffer.from('\ufeffa,b,c\n1\n'))), [{ a: '1', b: '', c: '' }]);
  });

  test('empty CSV or header only -> no outputs', async () => {
    const w = spawnWorker([CSV_ROWS]);
    for (const csv of ['', 'a,b\n', 'a,b', '\n\n']) {
      const res = await w.call(Buffer.from(csv));
      assert.deepEqual(res.header, { id: '1', status: 'ok', outputs: [] }, JSON.stringify(csv));
    }
  });

  test('malformed CSV -> fail', async () => {
    const w = spawnWorker([CSV_ROWS]);
    for (const csv of ['a,b\n1,"unterminated\n2,3\n', 'a\n"x"y\n', 'a,b\n1,2,3\n', 'a,a\n1,2\n']) {
      const res = await w.call(Buffer.from(csv));
      assert.equal(res.header.status, 'fail', JSON.stringify(csv));
      assert.deepEqual(res.payloads, []);
    }
    const unterminated = await w.call(Buffer.from('a,b\n1,"open'));
    assert.match(unterminated.header.error, /unterminated/);
    const notUtf8 = await w.call(Buffer.from([0x61, 0x0a, 0xff, 0xfe, 0x0a]));
    assert.equal(notUtf8.header.status, 'fail');
    assert.equal(await w.close(), 0);
  });

  test('request delivered in 1-byte pieces still parses', async () => {
    const w = spawnWorker([CSV_ROWS]);
    const req = encodeRequest(Buffer.from('k,v\r\n"a,1","multi\nline"\r\nb,2\r\n'), { id: 'chunked' });
    for (const b of req) {
      await w.send(Buffer.from([b]));
      await sleep(1);
    }
    const res = await w.response();
    assert.equal(res.header.id, 'chunked');
    assert.deepEqual(rows(res), [{ k: 'a,1', v: 'multi\nline' }, { k: 'b', v: '2' }]);
    assert.equal(await w.close(), 0);
  });

  test('many rows', async () => {
    const w = spawnWorker([CSV_ROWS]);
    const lines = ['n,sq'];
    for (let i = 1; i <= 2000; i++) lines.push(`${i},${i * i}`);
    const out = rows(await w.call(Buffer.from(lines.join('\n'))));
    assert.equal(out.length, 2000);
    assert.deepEqual(out[1999], { n: '2000', sq: String(2000 * 2000) });
  });

  test('module exports the parser without serving', () => {
    const { parseCsv } = require(CSV_ROWS);
    assert.deepEqual(parseCsv('a,"b\n""c"""\r\n1,2'), [['a', 'b\n"c"'], ['1', '2']]);
    assert.throws(() => parseCsv('"x'), Permanent);
  });
});
