"""mqfn_handler: the Python SDK for mqfn "process" handlers (standard library only).

Writing a handler is one decorated function in a script::

    import os, sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../sdk"))
    from mqfn_handler import handler, Output, Permanent, Retryable

    @handler
    def run(payload: bytes, ctx):
        return payload.upper()

How it runs
-----------
``@handler`` registers the function.  When the decorated function lives in the
module that is being executed as the program (its module ``__name__`` is
``"__main__"``), the decorator immediately runs the serve loop: it reads
requests from stdin, calls the function once per request, writes responses to
stdout, and exits with status 0 when stdin is closed.  When the module is only
imported (tests, reuse), the decorator just returns the function unchanged.
``serve(fn)`` runs the loop explicitly (it never returns: it calls ``sys.exit``).
Because serving starts at the decoration and ends with ``sys.exit``, put the
decorated function last in the script: code below it never runs.

The function receives
  * ``payload``: ``bytes``
  * ``ctx``: a :class:`Context` with ``id``, ``route``, ``subject``, ``key``
    (``str`` or ``None``), ``headers`` (``dict[str, str]``), ``attempt`` (int,
    1-based), ``deadline_ms`` (int, milliseconds left when the request arrived),
    ``deadline`` (a ``time.monotonic()`` instant) and ``remaining_ms()``.

It returns
  * ``None``: no output message;
  * ``bytes`` / ``bytearray`` / ``memoryview`` / ``str`` (UTF-8): one output;
  * ``Output(payload, headers=None, key=None)``: one output with headers/key;
  * a ``dict`` with a ``"payload"`` key and optional ``"headers"``/``"key"``;
  * a ``list``/``tuple`` of any of the above (several outputs, in order).
Header names and values must be strings (non-string values are converted with
``str()``).  Any other return value is a bug in the handler and is answered
with a permanent failure ("fail").

Errors
  * ``raise Permanent("why")``: status "fail", the message goes to the dead letter;
  * ``raise Retryable("why")``: status "retry", mqfn retries with backoff;
  * any other ``Exception``: status "retry" (the traceback is logged on stderr);
  * ``SystemExit``/``KeyboardInterrupt`` are not caught: the process exits and
    mqfn treats it as a crash.

stdout is reserved for protocol frames.  The serve loop moves the real stdout to
a private file descriptor, points file descriptor 1 (and ``sys.stdout``) at
stderr, and points file descriptor 0 (and ``sys.stdin``) at ``/dev/null``, so
``print()`` — and even child processes — write to the log, never into the
protocol stream.

Protocol (see README.md): each message is a frame: 4-byte big-endian length,
UTF-8 JSON header, then payload frames (4-byte big-endian length + bytes).
A request carries exactly one payload; a response carries one payload per
entry of its ``outputs`` list.

Helpers for tests and tools: :func:`encode_frame`, :func:`decode`,
:func:`read_message`, :func:`encode_request`.
"""

import io
import json
import os
import struct
import sys
import time
import traceback

__all__ = [
    "handler",
    "serve",
    "Output",
    "Permanent",
    "Retryable",
    "Context",
    "ProtocolError",
    "encode_frame",
    "encode_request",
    "decode",
    "read_message",
    "MAX_FRAME",
]

MAX_FRAME = 0xFFFFFFFF  # the length prefix is an unsigned 32-bit integer
_LEN = struct.Struct(">I")


class Permanent(Exception):
    """Permanent failure: the message goes straight to the dead letter (status "fail")."""


class Retryable(Exception):
    """Retryable failure: mqfn retries the message with backoff (status "retry")."""


class ProtocolError(Exception):
    """Malformed frame or header."""


class Output:
    """One output message: ``payload`` (bytes or str), optional ``headers`` and ``key``."""

    __slots__ = ("payload", "headers", "key")

    def __init__(self, payload, headers=None, key=None):
        self.payload = payload
        self.headers = headers
        self.key = key

    def __repr__(self):
        return "Output(payload=%r, headers=%r, key=%r)" % (self.payload, self.headers, self.key)


class Context:
    """Per-request metadata handed to the user function."""

    __slots__ = ("id", "route", "subject", "key", "headers", "attempt", "deadline_ms", "deadline")

    def __init__(self, header):
        self.id = header["id"]
        self.route = header.get("route", "")
        self.subject = header.get("subject", "")
        self.key = header.get("key")
        self.headers = dict(header.get("headers") or {})
        self.attempt = int(header.get("attempt", 1))
        dl = header.get("deadline_ms")
        self.deadline_ms = int(dl) if dl is not None else None
        self.deadline = (
            time.monotonic() + self.deadline_ms / 1000.0 if self.deadline_ms is not None else None
        )

    def remaining_ms(self):
        """Milliseconds left before the deadline (may be negative); None if no deadline."""
        if self.deadline is None:
            return None
        return int((self.deadline - time.monotonic()) * 1000)

    def __repr__(self):
        return "Context(id=%r, route=%r, subject=%r, key=%r, attempt=%r, deadline_ms=%r)" % (
            self.id, self.route, self.subject, self.key, self.attempt, self.deadline_ms)


# --------------------------------------------------------------------------- frames

def _to_bytes(data):
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    if isinstance(data, str):
        return data.encode("utf-8")
    raise TypeError("payload must be bytes or str, not %s" % type(data).__name__)


def _len_prefix(n):
    if n > MAX_FRAME:
        raise ValueError("frame of %d bytes exceeds the 4 GiB frame limit" % n)
    return _LEN.pack(n)


def encode_frame(header, payloads=()):
    """Encode one message: the JSON ``header`` frame followed by payload frames.

    ``payloads`` is a single bytes/str payload or an iterable of them.
    """
    if isinstance(payloads, (bytes, bytearray, memoryview, str)):
        payloads = [payloads]
    head = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    parts = [_len_prefix(len(head)), head]
    for p in payloads:
        p = _to_bytes(p)
        parts.append(_len_prefix(len(p)))
        parts.append(p)
    return b"".join(parts)


def encode_request(payload=b"", id="1", route="test", subject="test", key=None, headers=None,
                   attempt=1, deadline_ms=30000):
    """Build a request message (what mqfn sends to a handler); handy for tests."""
    header = {
        "id": id, "route": route, "subject": subject, "key": key,
        "headers": headers or {}, "attempt": attempt, "deadline_ms": deadline_ms,
    }
    return encode_frame(header, [payload])


def _payload_count(header):
    outputs = header.get("outputs")
    if isinstance(outputs, list):
        return len(outputs)  # a response
    return 1  # a request


def _parse_header(raw):
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ProtocolError("header is not UTF-8 JSON: %s" % e) from None
    if not isinstance(header, dict):
        raise ProtocolError("header is not a JSON object")
    return header


def decode(data, offset=0):
    """Decode one message from ``data`` starting at ``offset``.

    Returns ``(header, payloads, end_offset)``.  A header with an ``outputs``
    list is a response followed by ``len(outputs)`` payloads; any other header is
    a request followed by one payload.  Raises :class:`ProtocolError` if the data
    is incomplete or malformed.
    """
    data = memoryview(data)

    def take(pos, what):
        if pos + 4 > len(data):
            raise ProtocolError("truncated %s length" % what)
        (n,) = _LEN.unpack_from(data, pos)
        pos += 4
        if pos + n > len(data):
            raise ProtocolError("truncated %s (%d bytes announced, %d left)" % (what, n, len(data) - pos))
        return bytes(data[pos:pos + n]), pos + n

    raw, pos = take(offset, "header")
    header = _parse_header(raw)
    payloads = []
    for _ in range(_payload_count(header)):
        p, pos = take(pos, "payload")
        payloads.append(p)
    return header, payloads, pos


def _read_exact(stream, n):
    """Read exactly n bytes; b"" on clean EOF before the first byte, ProtocolError if cut short."""
    chunks = []
    got = 0
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            if got == 0:
                return b""
            raise ProtocolError("stream ended inside a frame (%d of %d bytes)" % (got, n))
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _read_frame(stream, what, eof_ok):
    prefix = _read_exact(stream, 4)
    if not prefix:
        if eof_ok:
            return None
        raise ProtocolError("stream ended before the %s frame" % what)
    (n,) = _LEN.unpack(prefix)
    if n == 0:
        return b""
    body = _read_exact(stream, n)
    if not body:
        raise ProtocolError("stream ended inside the %s frame" % what)
    return body


def read_message(stream):
    """Read one message from a binary stream: ``(header, payloads)``, or ``None`` on clean EOF.

    Same request/response rule as :func:`decode`.
    """
    raw = _read_frame(stream, "header", eof_ok=True)
    if raw is None:
        return None
    header = _parse_header(raw)
    payloads = [_read_frame(stream, "payload", eof_ok=False) for _ in range(_payload_count(header))]
    return header, payloads


# --------------------------------------------------------------------------- results

def _normalize_headers(headers):
    if headers is None:
        return {}
    if not isinstance(headers, dict):
        raise TypeError("output headers must be a dict, not %s" % type(headers).__name__)
    return {str(k): str(v) for k, v in headers.items()}


def _one_output(item):
    if isinstance(item, Output):
        payload, headers, key = item.payload, item.headers, item.key
    elif isinstance(item, dict):
        if "payload" not in item:
            raise TypeError("a dict output needs a 'payload' key (use Output(payload, headers, key))")
        extra = set(item) - {"payload", "headers", "key"}
        if extra:
            raise TypeError("unknown output dict keys: %s" % ", ".join(sorted(map(str, extra))))
        payload, headers, key = item["payload"], item.get("headers"), item.get("key")
    elif isinstance(item, (bytes, bytearray, memoryview, str)):
        payload, headers, key = item, None, None
    else:
        raise TypeError(
            "handler returned %s; expected None, bytes, str, Output, dict with 'payload', or a list"
            % type(item).__name__)
    meta = {"headers": _normalize_headers(headers)}
    if key is not None:
        if not isinstance(key, str):
            raise TypeError("output key must be a str, not %s" % type(key).__name__)
        meta["key"] = key
    return meta, _to_bytes(payload)


def _outputs(result):
    """Normalize a handler's return value into ``[(meta, payload_bytes), ...]``."""
    if result is None:
        return []
    if isinstance(result, (list, tuple)):
        return [_one_output(item) for item in result]
    return [_one_output(result)]


def _error_text(exc):
    text = str(exc)
    if isinstance(exc, (Permanent, Retryable)):
        return text or type(exc).__name__
    return "%s: %s" % (type(exc).__name__, text) if text else type(exc).__name__


def _error_response(req_id, status, error):
    return encode_frame({"id": req_id, "status": status, "error": error, "outputs": []})


def handle_one(fn, header, payload):
    """Run ``fn`` for one request and return the encoded response bytes."""
    req_id = header.get("id")
    try:
        ctx = Context(header)
    except (KeyError, TypeError, ValueError) as e:
        return _error_response(req_id, "fail", "invalid request header: %s" % _error_text(e))
    try:
        result = fn(payload, ctx)
    except Permanent as e:
        return _error_response(req_id, "fail", _error_text(e))
    except Retryable as e:
        return _error_response(req_id, "retry", _error_text(e))
    except Exception as e:  # noqa: BLE001 - any other user exception is retryable by default
        traceback.print_exc(file=sys.stderr)
        sys.stderr.flush()
        return _error_response(req_id, "retry", _error_text(e))
    try:
        outputs = _outputs(result)
        return encode_frame({"id": req_id, "status": "ok", "outputs": [m for m, _ in outputs]},
                            [p for _, p in outputs])
    except (TypeError, ValueError) as e:
        # A bad return value (or an output too large to frame) is deterministic: retrying
        # cannot help, so it is a permanent failure.
        _log("invalid handler result: %s" % e)
        return _error_response(req_id, "fail", "invalid handler result: %s" % e)


# --------------------------------------------------------------------------- serve loop

_frame_out = None  # the protected protocol stream (a binary file); set by serve()


def _protect_stdio():
    """Move the real stdin/stdout to private fds; point fds 0/1 at /dev/null and stderr."""
    global _frame_out
    sys.stdout.flush()
    in_fd = os.dup(0)
    out_fd = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    frames_in = io.open(in_fd, "rb", buffering=1 << 16, closefd=True)
    _frame_out = io.open(out_fd, "wb", buffering=1 << 16, closefd=True)
    sys.stdin = io.TextIOWrapper(io.open(0, "rb", closefd=False), encoding="utf-8")
    # Line-buffered text stdout that lands on stderr (fd 1 is now a copy of fd 2).
    sys.stdout = io.TextIOWrapper(io.open(1, "wb", closefd=False), encoding="utf-8",
                                  errors="backslashreplace", line_buffering=True)
    return frames_in, _frame_out


def _log(msg):
    sys.stderr.write("mqfn_handler: %s\n" % msg)
    sys.stderr.flush()


def serve(fn):
    """Run the request loop for ``fn`` until stdin is closed, then ``sys.exit(0)``.

    Exits with status 2 on a protocol error (malformed or truncated input frame).
    """
    frames_in, frames_out = _protect_stdio()
    try:
        while True:
            try:
                msg = read_message(frames_in)
            except ProtocolError as e:
                _log("protocol error on stdin: %s" % e)
                sys.exit(2)
            if msg is None:
                break
            header, payloads = msg
            if not isinstance(header.get("id"), str):
                _log("protocol error on stdin: request header without a string 'id'")
                sys.exit(2)
            frames_out.write(handle_one(fn, header, payloads[0]))
            frames_out.flush()
    except BrokenPipeError:
        _log("stdout closed by mqfn; exiting")
        sys.exit(1)
    sys.stdout.flush()
    sys.exit(0)


def handler(fn):
    """Decorator: register ``fn`` as the handler; serve it if its module is ``__main__``."""
    if getattr(fn, "__module__", None) == "__main__":
        serve(fn)
    return fn
