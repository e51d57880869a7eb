'use strict';
/**
 * mqfn-handler: the Node.js SDK for mqfn "process" handlers (CommonJS, no dependencies).
 *
 *   const path = require('path');
 *   const { handler, Output, Permanent, Retryable } = require(path.join(__dirname, '../sdk/mqfn-handler'));
 *
 *   handler(async (payload, ctx) => {
 *     return payload.toString('utf8').toUpperCase();
 *   });
 *
 * handler(fn) starts the serve loop right away: it reads requests from stdin, calls fn once per
 * request (one at a time, in order), writes the responses on stdout, and exits with status 0 when
 * stdin ends. It returns a promise that settles when the loop is over (you do not need to await it).
 * Requiring this module without calling handler() does nothing (tests use the exported helpers).
 *
 * fn(payload, ctx) may be sync or async.
 *   payload: Buffer
 *   ctx: { id, route, subject, key (string|null), headers ({string: string}), attempt (1-based),
 *          deadline_ms (ms left when the request arrived), deadline (epoch ms),
 *          remainingMs(), signal (AbortSignal that aborts at the deadline) }
 * It returns (or resolves to):
 *   undefined/null                      -> no output
 *   Buffer / Uint8Array / ArrayBuffer / string (UTF-8) -> one output
 *   new Output(payload, headers?, key?) -> one output with headers/key
 *   { payload, headers?, key? }         -> one output
 *   an array of the above               -> several outputs, in order
 * Header values are converted with String(). Any other return value is a handler bug and is
 * answered with a permanent failure ("fail").
 *
 * Errors:
 *   throw new Permanent('why')  -> status "fail" (straight to the dead letter)
 *   throw new Retryable('why')  -> status "retry" (retried with backoff)
 *   anything else thrown        -> status "retry" (the stack is logged on stderr)
 *
 * stdout carries only protocol frames: console.log/info/debug/dir/table and process.stdout.write
 * are redirected to stderr as soon as handler() is called; frames are written with the original
 * stdout write, honouring backpressure ('drain').
 *
 * Protocol: every message is a 4-byte big-endian length + UTF-8 JSON header, then payload frames
 * (4-byte big-endian length + bytes). A request has exactly one payload; a response has one
 * payload per entry of its "outputs" array. See README.md.
 */

const { Console } = require('console');

const MAX_FRAME = 0xffffffff;

class Permanent extends Error {
  constructor(message) {
    super(message);
    this.name = 'Permanent';
  }
}

class Retryable extends Error {
  constructor(message) {
    super(message);
    this.name = 'Retryable';
  }
}

class ProtocolError extends Error {
  constructor(message) {
    super(message);
    this.name = 'ProtocolError';
  }
}

class Output {
  constructor(payload, headers, key) {
    this.payload = payload;
    this.headers = headers;
    this.key = key;
  }
}

// ------------------------------------------------------------------------------------- frames

function toBuffer(data) {
  if (Buffer.isBuffer(data)) return data;
  if (typeof data === 'string') return Buffer.from(data, 'utf8');
  if (data instanceof Uint8Array) return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  if (data instanceof ArrayBuffer) return Buffer.from(data);
  throw new TypeError(`payload must be a Buffer, Uint8Array, ArrayBuffer or string, not ${describe(data)}`);
}

function describe(v) {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  if (typeof v === 'object') return (v.constructor && v.constructor.name) || 'object';
  return typeof v;
}

function lenPrefix(n) {
  if (n > MAX_FRAME) throw new RangeError(`frame of ${n} bytes exceeds the 4 GiB frame limit`);
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(n, 0);
  return b;
}

/** Encode one message: the JSON header frame, then one frame per payload (Buffer|string). */
function encodeFrame(header, payloads = []) {
  if (!Array.isArray(payloads)) payloads = [payloads];
  const head = Buffer.from(JSON.stringify(header), 'utf8');
  const parts = [lenPrefix(head.length), head];
  for (const p of payloads) {
    const b = toBuffer(p);
    parts.push(lenPrefix(b.length), b);
  }
  return Buffer.concat(parts);
}

/** Build a request message (what mqfn sends to a handler); handy for tests. */
function encodeRequest(payload = Buffer.alloc(0), opts = {}) {
  const header = {
    id: opts.id ?? '1',
    route: opts.route ?? 'test',
    subject: opts.subject ?? 'test',
    key: opts.key ?? null,
    headers: opts.headers ?? {},
    attempt: opts.attempt ?? 1,
    deadline_ms: opts.deadline_ms ?? 30000,
  };
  return encodeFrame(header, [payload]);
}

function payloadCount(header) {
  return Array.isArray(header.outputs) ? header.outputs.length : 1;
}

function parseHeader(buf) {
  let header;
  try {
    header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(buf));
  } catch (e) {
    throw new ProtocolError(`header is not UTF-8 JSON: ${e.message}`);
  }
  if (header === null || typeof header !== 'object' || Array.isArray(header)) {
    throw new ProtocolError('header is not a JSON object');
  }
  return header;
}

/**
 * Incremental message parser: push() arbitrary chunks (down to 1 byte), then next() returns
 * { header, payloads } for each complete message, or null when more bytes are needed.
 * A header with an "outputs" array is a response (that many payloads); otherwise a request
 * (one payload).
 */
class FrameParser {
  constructor() {
    this.chunks = [];
    this.length = 0; // total buffered bytes
    this.header = null; // header of the message being assembled
    this.payloads = [];
  }

  push(chunk) {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.length += chunk.length;
  }

  /** Copy n bytes starting at the front without consuming them. */
  peek(n) {
    if (this.chunks[0].length >= n) return this.chunks[0].subarray(0, n);
    const out = Buffer.allocUnsafe(n);
    let off = 0;
    for (const c of this.chunks) {
      const k = Math.min(c.length, n - off);
      c.copy(out, off, 0, k);
      off += k;
      if (off === n) break;
    }
    return out;
  }

  /** Remove and return n bytes from the front (n <= this.length). */
  take(n) {
    if (n === 0) return Buffer.alloc(0);
    const first = this.chunks[0];
    if (first.length >= n) {
      const out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      this.length -= n;
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    let off = 0;
    while (off < n) {
      const c = this.chunks[0];
      const k = Math.min(c.length, n - off);
      c.copy(out, off, 0, k);
      off += k;
      if (k === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(k);
    }
    this.length -= n;
    return out;
  }

  /** Next complete frame body, or null. */
  frame() {
    if (this.length < 4) return null;
    const n = this.peek(4).readUInt32BE(0);
    if (this.length < 4 + n) return null;
    this.take(4);
    return this.take(n);
  }

  next() {
    if (this.header === null) {
      const raw = this.frame();
      if (raw === null) return null;
      this.header = parseHeader(raw);
      this.payloads = [];
    }
    while (this.payloads.length < payloadCount(this.header)) {
      const p = this.frame();
      if (p === null) return null;
      this.payloads.push(p);
    }
    const msg = { header: this.header, payloads: this.payloads };
    this.header = null;
    this.payloads = [];
    return msg;
  }

  /** True if bytes of an unfinished message are buffered. */
  get partial() {
    return this.length > 0 || this.header !== null;
  }
}

/** Decode every complete message in a Buffer: [{ header, payloads }]. Throws on trailing bytes. */
function decode(buf) {
  const p = new FrameParser();
  p.push(buf);
  const out = [];
  let m;
  while ((m = p.next()) !== null) out.push(m);
  if (p.partial) throw new ProtocolError('truncated message');
  return out;
}

// ------------------------------------------------------------------------------------ results

function normalizeHeaders(h) {
  if (h === undefined || h === null) return {};
  if (typeof h !== 'object' || Array.isArray(h)) {
    throw new TypeError(`output headers must be an object, not ${describe(h)}`);
  }
  const out = {};
  for (const [k, v] of Object.entries(h)) out[k] = String(v);
  return out;
}

function isPayload(v) {
  return typeof v === 'string' || v instanceof Uint8Array || v instanceof ArrayBuffer;
}

function oneOutput(item) {
  let payload, headers, key;
  if (item instanceof Output) {
    ({ payload, headers, key } = item);
  } else if (isPayload(item)) {
    payload = item;
  } else if (item !== null && typeof item === 'object' && !Array.isArray(item) && 'payload' in item) {
    ({ payload, headers, key } = item);
  } else {
    throw new TypeError(
      `handler returned ${describe(item)}; expected undefined, Buffer, string, Output, ` +
        '{payload, headers?, key?} or an array of those',
    );
  }
  const meta = { headers: normalizeHeaders(headers) };
  if (key !== undefined && key !== null) {
    if (typeof key !== 'string') throw new TypeError(`output key must be a string, not ${describe(key)}`);
    meta.key = key;
  }
  return { meta, payload: toBuffer(payload) };
}

function normalizeResult(result) {
  if (result === undefined || result === null) return [];
  if (Array.isArray(result)) return result.map(oneOutput);
  return [oneOutput(result)];
}

function errorText(e) {
  if (e instanceof Permanent || e instanceof Retryable) return e.message || e.name;
  if (e instanceof Error) return e.message ? `${e.name}: ${e.message}` : e.name;
  return String(e);
}

function errorResponse(id, status, error) {
  return encodeFrame({ id, status, error, outputs: [] });
}

function makeContext(header) {
  const dl = Number(header.deadline_ms);
  const deadlineMs = header.deadline_ms === undefined || header.deadline_ms === null || !Number.isFinite(dl) ? null : dl;
  const deadline = deadlineMs === null ? null : Date.now() + deadlineMs;
  return {
    id: header.id,
    route: header.route ?? '',
    subject: header.subject ?? '',
    key: header.key ?? null,
    headers: { ...(header.headers || {}) },
    attempt: Number(header.attempt ?? 1),
    deadline_ms: deadlineMs,
    deadline,
    remainingMs() {
      return deadline === null ? null : deadline - Date.now();
    },
    signal: deadlineMs === null ? new AbortController().signal : AbortSignal.timeout(Math.max(0, deadlineMs)),
  };
}

/** Run fn for one request; resolves to the encoded response Buffer. Never rejects. */
async function handleOne(fn, header, payload) {
  const id = header.id;
  let result;
  try {
    result = await fn(payload, makeContext(header));
  } catch (e) {
    if (e instanceof Permanent) return errorResponse(id, 'fail', errorText(e));
    if (e instanceof Retryable) return errorResponse(id, 'retry', errorText(e));
    process.stderr.write(`mqfn-handler: handler error: ${(e && e.stack) || String(e)}\n`);
    return errorResponse(id, 'retry', errorText(e));
  }
  try {
    const outs = normalizeResult(result);
    return encodeFrame({ id, status: 'ok', outputs: outs.map((o) => o.meta) }, outs.map((o) => o.payload));
  } catch (e) {
    // Deterministic: retrying cannot fix a bad return value.
    process.stderr.write(`mqfn-handler: invalid handler result: ${e.message}\n`);
    return errorResponse(id, 'fail', `invalid handler result: ${e.message}`);
  }
}

// --------------------------------------------------------------------------------- serve loop

let serving = false;

function protectStdout() {
  const out = process.stdout;
  const rawWrite = out.write.bind(out);
  // Anything else writing to stdout (console.log, libraries, process.stdout.write) goes to stderr.
  out.write = (...args) => process.stderr.write(...args);
  const errConsole = new Console({ stdout: process.stderr, stderr: process.stderr });
  for (const name of ['log', 'info', 'debug', 'dir', 'dirxml', 'table', 'trace', 'warn', 'error', 'group', 'groupCollapsed', 'groupEnd', 'count', 'countReset', 'time', 'timeLog', 'timeEnd', 'assert']) {
    if (typeof errConsole[name] === 'function') console[name] = errConsole[name].bind(errConsole);
  }
  return { out, rawWrite };
}

/** Write buf on the protocol stream; resolves once it is accepted (waits for 'drain'). */
function writeFrame(out, rawWrite, buf) {
  return new Promise((resolve, reject) => {
    let done = false;
    const onError = (err) => {
      if (!done) {
        done = true;
        reject(err);
      }
    };
    out.once('error', onError);
    const ok = rawWrite(buf, (err) => {
      if (err) onError(err);
    });
    const finish = () => {
      out.removeListener('error', onError);
      if (!done) {
        done = true;
        resolve();
      }
    };
    if (ok) finish();
    else out.once('drain', finish);
  });
}

function flushed(out, rawWrite) {
  return new Promise((resolve) => rawWrite('', () => resolve()));
}

/**
 * Start the serve loop for fn. Returns a promise that resolves when stdin has ended and every
 * response has been flushed; the process then exits with status 0 (2 on a protocol error).
 */
function handler(fn) {
  if (typeof fn !== 'function') throw new TypeError('handler(fn): fn must be a function');
  if (serving) throw new Error('handler() may only be called once per process');
  serving = true;
  const { out, rawWrite } = protectStdout();
  const log = (msg) => process.stderr.write(`mqfn-handler: ${msg}\n`);

  out.on('error', (err) => {
    log(`stdout error (${err.code || err.message}); exiting`);
    process.exit(1);
  });

  async function loop() {
    const parser = new FrameParser();
    // for-await pauses stdin while a request is being handled: natural backpressure.
    for await (const chunk of process.stdin) {
      parser.push(chunk);
      for (;;) {
        let msg;
        try {
          msg = parser.next();
        } catch (e) {
          log(`protocol error on stdin: ${e.message}`);
          return 2;
        }
        if (msg === null) break;
        if (typeof msg.header.id !== 'string') {
          log("protocol error on stdin: request header without a string 'id'");
          return 2;
        }
        const response = await handleOne(fn, msg.header, msg.payloads[0]);
        await writeFrame(out, rawWrite, response);
      }
    }
    if (parser.partial) {
      log('protocol error on stdin: stream ended inside a frame');
      return 2;
    }
    return 0;
  }

  return loop().then(
    async (code) => {
      await flushed(out, rawWrite);
      process.exit(code);
    },
    (err) => {
      log(`fatal: ${(err && err.stack) || err}`);
      process.exit(1);
    },
  );
}

module.exports = {
  handler,
  Output,
  Permanent,
  Retryable,
  ProtocolError,
  FrameParser,
  encodeFrame,
  encodeRequest,
  decode,
  handleOne,
  normalizeResult,
  MAX_FRAME,
};
