"""Protocol tests for the Python handler SDK and the Python example handlers.

Run from the repository root:
    python3 -m unittest discover -s tests/sdk -p 'test_*.py'

Every test spawns real handler processes and talks the frame protocol over their stdin/stdout.
All reads have timeouts, so a broken handler fails the test instead of hanging it.
"""
import http.server
import importlib.util
import io
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import unittest
import urllib.request
import zlib

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
SDK_DIR = os.path.join(ROOT, "handlers", "sdk")
EXAMPLES = os.path.join(ROOT, "handlers", "examples")
sys.path.insert(0, SDK_DIR)

import mqfn_handler  # noqa: E402
from mqfn_handler import ProtocolError, decode, encode_frame, encode_request, read_message  # noqa: E402

TIMEOUT = 10.0  # seconds for any single response
HAVE_PIL = importlib.util.find_spec("PIL") is not None


def child_env(**extra):
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(extra)
    return env


class Worker:
    """A handler subprocess with a background reader on stdout (and one collecting stderr)."""

    def __init__(self, argv, env=None):
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env or child_env(), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._buf = bytearray()
        self._eof = False
        self._cv = threading.Condition()
        self._stderr = bytearray()
        self._threads = [threading.Thread(target=self._pump_stdout, daemon=True),
                         threading.Thread(target=self._pump_stderr, daemon=True)]
        for t in self._threads:
            t.start()

    def _pump_stdout(self):
        fd = self.proc.stdout.fileno()
        while True:
            chunk = os.read(fd, 65536)
            with self._cv:
                if not chunk:
                    self._eof = True
                else:
                    self._buf += chunk
                self._cv.notify_all()
            if not chunk:
                return

    def _pump_stderr(self):
        fd = self.proc.stderr.fileno()
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                return
            self._stderr += chunk

    @property
    def stderr(self):
        return bytes(self._stderr).decode("utf-8", "replace")

    def send(self, data):
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def request(self, payload=b"", **kw):
        self.send(encode_request(payload, **kw))

    def read_exact(self, n, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        with self._cv:
            while len(self._buf) < n:
                if self._eof:
                    raise EOFError("handler stdout closed after %d of %d bytes; stderr:\n%s"
                                   % (len(self._buf), n, self.stderr))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no %d bytes within %.1fs (have %d); stderr:\n%s"
                                       % (n, timeout, len(self._buf), self.stderr))
                self._cv.wait(left)
            out = bytes(self._buf[:n])
            del self._buf[:n]
            return out

    def read_frame(self, timeout=TIMEOUT):
        (n,) = struct.unpack(">I", self.read_exact(4, timeout))
        return self.read_exact(n, timeout)

    def response(self, timeout=TIMEOUT):
        """Read one response: (header dict, [payload bytes, ...])."""
        header = json.loads(self.read_frame(timeout).decode("utf-8"))
        payloads = [self.read_frame(timeout) for _ in header["outputs"]]
        return header, payloads

    def call(self, payload=b"", **kw):
        self.request(payload, **kw)
        return self.response()

    def stdout_rest(self, timeout=TIMEOUT):
        """Everything written on stdout until it closes."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while not self._eof:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("stdout did not close")
                self._cv.wait(left)
            out = bytes(self._buf)
            self._buf.clear()
            return out

    def close(self, timeout=TIMEOUT):
        """Close stdin and return the exit status."""
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        return self.proc.wait(timeout)

    def wait(self, timeout=TIMEOUT):
        return self.proc.wait(timeout)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(TIMEOUT)
        for t in self._threads:
            t.join(TIMEOUT)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except OSError:
                pass


class WorkerTestCase(unittest.TestCase):
    def spawn(self, argv, env=None):
        w = Worker(argv, env)
        self.addCleanup(w.kill)
        return w

    def inline(self, body):
        """Spawn `python3 -c` with the SDK on the path and `body` (defining the handler)."""
        code = "import sys\nsys.path.insert(0, %r)\nfrom mqfn_handler import *\n%s" % (SDK_DIR, body)
        return self.spawn([sys.executable, "-c", code])

    def example(self, name, **env):
        return self.spawn([sys.executable, os.path.join(EXAMPLES, name)], env=child_env(**env))

    def assertOk(self, header, payloads, expected):
        self.assertEqual(header["status"], "ok", header)
        self.assertEqual(payloads, expected)


# ----------------------------------------------------------------------------- frame helpers

class FrameHelperTests(unittest.TestCase):
    def test_encode_decode_request_roundtrip(self):
        data = encode_request(b"\x00\xffpayload", id="abc", key="k", headers={"h": "v"}, attempt=3,
                              deadline_ms=1234)
        header, payloads, end = decode(data)
        self.assertEqual(end, len(data))
        self.assertEqual(header, {"id": "abc", "route": "test", "subject": "test", "key": "k",
                                  "headers": {"h": "v"}, "attempt": 3, "deadline_ms": 1234})
        self.assertEqual(payloads, [b"\x00\xffpayload"])
        self.assertEqual(data[:4], struct.pack(">I", len(data) - 8 - len(b"\x00\xffpayload")))

    def test_encode_decode_response_with_outputs(self):
        header = {"id": "x", "status": "ok", "outputs": [{"headers": {}}, {"headers": {"a": "b"}}]}
        data = encode_frame(header, [b"one", "twö"]) + encode_frame({"id": "y", "status": "fail",
                                                                     "error": "e", "outputs": []})
        h1, p1, end = decode(data)
        self.assertEqual((h1, p1), (header, [b"one", "twö".encode()]))
        h2, p2, end2 = decode(data, end)
        self.assertEqual((h2["id"], p2, end2), ("y", [], len(data)))
        stream = io.BytesIO(data)
        self.assertEqual(read_message(stream), (header, [b"one", "twö".encode()]))
        self.assertEqual(read_message(stream)[0]["status"], "fail")
        self.assertIsNone(read_message(stream))

    def test_decode_truncated_raises(self):
        data = encode_request(b"payload")
        for cut in (2, 10, len(data) - 1):
            with self.assertRaises(ProtocolError):
                decode(data[:cut])
            with self.assertRaises(ProtocolError):
                read_message(io.BytesIO(data[:cut]))

    def test_normalize_results(self):
        outs = mqfn_handler._outputs([b"a", "é", mqfn_handler.Output(b"c", {"n": 1}, key="k"),
                                      {"payload": b"d", "headers": {"x": "y"}}])
        self.assertEqual(outs, [({"headers": {}}, b"a"), ({"headers": {}}, "é".encode()),
                                ({"headers": {"n": "1"}, "key": "k"}, b"c"),
                                ({"headers": {"x": "y"}}, b"d")])
        self.assertEqual(mqfn_handler._outputs(None), [])
        with self.assertRaises(TypeError):
            mqfn_handler._outputs(42)
        with self.assertRaises(TypeError):
            mqfn_handler._outputs({"not_payload": 1})


# ----------------------------------------------------------------------------- SDK over pipes

class SdkProtocolTests(WorkerTestCase):
    def test_ok_single_output(self):
        w = self.inline("@handler\ndef run(p, ctx):\n    return p.upper()\n")
        header, payloads = w.call(b"hello", id="req-1")
        self.assertEqual(header, {"id": "req-1", "status": "ok", "outputs": [{"headers": {}}]})
        self.assertEqual(payloads, [b"HELLO"])
        self.assertEqual(w.close(), 0)

    def test_several_outputs_with_headers_and_keys(self):
        w = self.inline(
            "@handler\n"
            "def run(p, ctx):\n"
            "    return [b'raw', 'text-\\u00e9', Output(b'out', headers={'n': 7}, key='k1'),\n"
            "            {'payload': 'dict', 'headers': {'a': 'b'}, 'key': 'k2'}, b'']\n")
        header, payloads = w.call(b"x", id="m")
        self.assertEqual(header["status"], "ok")
        self.assertEqual(header["outputs"], [{"headers": {}}, {"headers": {}},
                                             {"headers": {"n": "7"}, "key": "k1"},
                                             {"headers": {"a": "b"}, "key": "k2"}, {"headers": {}}])
        self.assertEqual(payloads, [b"raw", "text-é".encode(), b"out", b"dict", b""])

    def test_none_means_no_output(self):
        w = self.inline("@handler\ndef run(p, ctx):\n    return None\n")
        self.assertEqual(w.call(b"x", id="n"), ({"id": "n", "status": "ok", "outputs": []}, []))

    def test_context_fields(self):
        w = self.inline(
            "import json\n@handler\ndef run(p, ctx):\n"
            "    return json.dumps({'id': ctx.id, 'route': ctx.route, 'subject': ctx.subject,\n"
            "        'key': ctx.key, 'headers': ctx.headers, 'attempt': ctx.attempt,\n"
            "        'deadline_ms': ctx.deadline_ms, 'remaining_ok': 0 < ctx.remaining_ms() <= 5000})\n")
        header, payloads = w.call(b"", id="c1", route="thumbs", subject="images.new", key="user-9",
                                  headers={"max-side": "32", "x": "y"}, attempt=4, deadline_ms=5000)
        self.assertEqual(header["status"], "ok")
        self.assertEqual(json.loads(payloads[0]), {
            "id": "c1", "route": "thumbs", "subject": "images.new", "key": "user-9",
            "headers": {"max-side": "32", "x": "y"}, "attempt": 4, "deadline_ms": 5000,
            "remaining_ok": True})
        header, payloads = w.call(b"", id="c2", key=None)
        self.assertIsNone(json.loads(payloads[0])["key"])

    def test_uncaught_exception_is_retry(self):
        w = self.inline("@handler\ndef run(p, ctx):\n    raise ValueError('bad input ' + p.decode())\n")
        header, payloads = w.call(b"42", id="e")
        self.assertEqual(header, {"id": "e", "status": "retry", "error": "ValueError: bad input 42",
                                  "outputs": []})
        self.assertEqual(payloads, [])
        # The process survives and keeps serving.
        self.assertEqual(w.call(b"43", id="e2")[0]["status"], "retry")
        self.assertEqual(w.close(), 0)
        self.assertIn("Traceback", w.stderr)

    def test_permanent_is_fail_and_retryable_is_retry(self):
        w = self.inline(
            "@handler\ndef run(p, ctx):\n"
            "    if p == b'perm': raise Permanent('cannot ever work')\n"
            "    if p == b'again': raise Retryable('try later')\n"
            "    return p\n")
        self.assertEqual(w.call(b"perm", id="1")[0],
                         {"id": "1", "status": "fail", "error": "cannot ever work", "outputs": []})
        self.assertEqual(w.call(b"again", id="2")[0],
                         {"id": "2", "status": "retry", "error": "try later", "outputs": []})
        self.assertOk(*w.call(b"fine", id="3"), [b"fine"])

    def test_invalid_return_value_is_fail(self):
        w = self.inline("@handler\ndef run(p, ctx):\n    return 42\n")
        header, _ = w.call(b"x", id="bad")
        self.assertEqual(header["status"], "fail")
        self.assertIn("invalid handler result", header["error"])

    def test_print_does_not_corrupt_stdout(self):
        w = self.inline(
            "import os, subprocess\n@handler\ndef run(p, ctx):\n"
            "    print('print from user code')\n"
            "    print('x' * 100000)\n"
            "    sys.stdout.write('sys.stdout.write\\n')\n"
            "    os.write(1, b'raw fd 1 write\\n')\n"
            "    subprocess.run(['echo', 'child process output'])\n"
            "    print(repr(sys.stdin.read()))\n"
            "    return p\n")
        for i in range(3):
            self.assertOk(*w.call(b"payload-%d" % i, id=str(i)), [b"payload-%d" % i])
        self.assertEqual(w.close(), 0)
        self.assertEqual(w.stdout_rest(), b"")
        for text in ("print from user code", "sys.stdout.write", "raw fd 1 write", "child process output"):
            self.assertEqual(w.stderr.count(text), 3, text)

    def test_sequential_requests_on_one_process(self):
        w = self.inline("import os\n@handler\ndef run(p, ctx):\n    return [p, str(os.getpid())]\n")
        pids = set()
        for i in range(50):
            header, payloads = w.call(b"msg-%d" % i, id="id-%d" % i)
            self.assertEqual(header["id"], "id-%d" % i)
            self.assertEqual(payloads[0], b"msg-%d" % i)
            pids.add(payloads[1])
        self.assertEqual(pids, {str(w.proc.pid).encode()})
        self.assertEqual(w.close(), 0)

    def test_pipelined_requests_are_answered_in_order(self):
        w = self.inline("@handler\ndef run(p, ctx):\n    return p[::-1]\n")
        w.send(b"".join(encode_request(b"abc%d" % i, id=str(i)) for i in range(10)))
        for i in range(10):
            header, payloads = w.response()
            self.assertEqual((header["id"], payloads), (str(i), [(b"abc%d" % i)[::-1]]))

    def test_clean_exit_on_eof(self):
        w = self.inline("@handler\ndef run(p, ctx):\n    return p\n")
        self.assertEqual(w.close(), 0)
        self.assertEqual(w.stdout_rest(), b"")

    def test_truncated_input_exits_with_protocol_error(self):
        w = self.inline("@handler\ndef run(p, ctx):\n    return p\n")
        w.send(encode_request(b"payload")[:-3])
        self.assertEqual(w.close(), 2)
        self.assertIn("protocol error", w.stderr)

    def test_bytes_delivered_one_at_a_time(self):
        w = self.inline("@handler\ndef run(p, ctx):\n    return p + b'!'\n")
        for b in encode_request(b"slow", id="s"):
            w.send(bytes([b]))
        self.assertOk(*w.response(), [b"slow!"])

    def test_large_payload_roundtrip(self):
        w = self.inline("@handler\ndef run(p, ctx):\n    return [p, p[:10]]\n")
        big = os.urandom(4 << 20)
        header, payloads = w.call(big, id="big")
        self.assertEqual(header["status"], "ok")
        self.assertEqual(payloads, [big, big[:10]])

    def test_import_does_not_serve(self):
        # Decorating a function in an imported (non-__main__) module only registers it.
        code = ("import sys, types\nsys.path.insert(0, %r)\nimport mqfn_handler\n"
                "def f(p, c): return p\nf.__module__ = 'somemodule'\n"
                "assert mqfn_handler.handler(f) is f\nprint('returned')\n" % SDK_DIR)
        out = subprocess.run([sys.executable, "-c", code], stdin=subprocess.DEVNULL,
                             capture_output=True, timeout=TIMEOUT)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout, b"returned\n")


# ----------------------------------------------------------------------------- examples

class NoopAndFlakyTests(WorkerTestCase):
    def test_noop_echoes(self):
        w = self.example("noop.py")
        for payload in (b"", b"hello", bytes(range(256))):
            self.assertOk(*w.call(payload, id="x"), [payload])
        self.assertEqual(w.close(), 0)

    def test_flaky_modes(self):
        w = self.example("flaky.py")
        self.assertOk(*w.call(b"hi", id="1"), [b"hi"])
        t0 = time.monotonic()
        self.assertOk(*w.call(b"sleep:0.2", id="2"), [b"sleep:0.2"])
        self.assertGreaterEqual(time.monotonic() - t0, 0.2)
        self.assertEqual(w.call(b"permanent", id="3")[0]["status"], "fail")
        self.assertEqual(w.call(b"retry", id="4")[0]["status"], "retry")
        self.assertEqual(w.call(b"raise", id="5")[0]["status"], "retry")
        self.assertEqual(w.close(), 0)

    def test_flaky_exit_crashes_without_response(self):
        w = self.example("flaky.py")
        w.request(b"exit", id="x")
        self.assertEqual(w.wait(), 1)
        self.assertEqual(w.stdout_rest(), b"")

    def test_flaky_garbage_corrupts_stdout_and_exits(self):
        w = self.example("flaky.py")
        w.request(b"garbage", id="g")
        self.assertEqual(w.wait(), 1)
        out = w.stdout_rest()
        self.assertTrue(out.startswith(b"\xff\xff\xff\xff"), out)
        with self.assertRaises(ProtocolError):
            decode(out)


def make_ppm(w, h, pixel, magic=b"P6", maxval=255):
    """Netpbm image where pixel(x, y) gives an RGB tuple (P6) or a grey int (P5)."""
    samples = []
    for y in range(h):
        for x in range(w):
            v = pixel(x, y)
            samples.extend(v if isinstance(v, tuple) else (v,))
    fmt = "B" if maxval < 256 else "H"
    raster = struct.pack(">%d%s" % (len(samples), fmt), *samples)
    return b"%s\n# generated by the test\n%d %d\n%d\n" % (magic, w, h, maxval) + raster


def parse_ppm(data):
    # Output of resize.py is always "Px\nW H\nMAX\n" + raster.
    magic, dims, maxval, raster = data.split(b"\n", 3)
    w, h = map(int, dims.split())
    return magic, w, h, int(maxval), raster


def make_png(w, h, rgb):
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    raw = b"".join(b"\x00" + bytes(rgb) * w for _ in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


class ResizeTests(WorkerTestCase):
    def netpbm_worker(self):
        return self.example("resize.py", MQFN_RESIZE_NO_PIL="1")

    def test_ppm_default_max_side(self):
        w = self.netpbm_worker()
        img = make_ppm(200, 100, lambda x, y: (10, 200, 30) if x < 100 else (250, 0, 128))
        header, payloads = w.call(img, id="r1")
        self.assertEqual(header["status"], "ok", header)
        self.assertEqual(header["outputs"][0]["headers"],
                         {"content-type": "image/x-portable-pixmap", "image-width": "64",
                          "image-height": "32"})
        magic, width, height, maxval, raster = parse_ppm(payloads[0])
        self.assertEqual((magic, width, height, maxval, len(raster)), (b"P6", 64, 32, 255, 64 * 32 * 3))
        # Box filter: left half keeps its colour, right half its colour, one blended column between.
        self.assertEqual(tuple(raster[0:3]), (10, 200, 30))
        self.assertEqual(tuple(raster[-3:]), (250, 0, 128))
        self.assertEqual(w.close(), 0)

    def test_max_side_header_and_portrait_pgm_16bit(self):
        w = self.netpbm_worker()
        img = make_ppm(30, 90, lambda x, y: 1000 * (y // 30), magic=b"P5", maxval=4000)
        header, payloads = w.call(img, headers={"max-side": "9"})
        self.assertEqual(header["status"], "ok", header)
        magic, width, height, maxval, raster = parse_ppm(payloads[0])
        self.assertEqual((magic, width, height, maxval), (b"P5", 3, 9, 4000))
        values = struct.unpack(">27H", raster)
        self.assertEqual(values, (0,) * 9 + (1000,) * 9 + (2000,) * 9)

    def test_average_of_block(self):
        w = self.netpbm_worker()
        img = make_ppm(4, 4, lambda x, y: 0 if (x + y) % 2 else 200, magic=b"P5")
        header, payloads = w.call(img, headers={"max-side": "2"})
        self.assertEqual(parse_ppm(payloads[0])[4], bytes([100] * 4))

    def test_small_image_not_enlarged(self):
        w = self.netpbm_worker()
        img = make_ppm(5, 3, lambda x, y: (x, y, 7))
        header, payloads = w.call(img)
        _, width, height, _, raster = parse_ppm(payloads[0])
        self.assertEqual((width, height), (5, 3))
        self.assertEqual(raster, img.split(b"\n", 4)[4])

    def test_bad_image_is_permanent(self):
        w = self.netpbm_worker()
        for bad in (b"", b"not an image", b"P6\n10 10\n255\n" + b"\x00" * 5, b"P6\n10 x\n255\n",
                    b"P5\n0 10\n255\n"):
            header, payloads = w.call(bad, id="bad")
            self.assertEqual(header["status"], "fail", (bad, header))
            self.assertEqual(payloads, [])
        header, _ = w.call(make_ppm(2, 2, lambda x, y: 1, magic=b"P5"), headers={"max-side": "big"})
        self.assertEqual(header["status"], "fail")
        self.assertIn("max-side", header["error"])
        self.assertEqual(w.close(), 0)

    def test_default_mode_handles_ppm(self):
        # Without MQFN_RESIZE_NO_PIL: Pillow (PNG out) if installed, else the netpbm path.
        w = self.example("resize.py")
        header, payloads = w.call(make_ppm(128, 64, lambda x, y: (x, y, 0)), headers={"max-side": "32"})
        self.assertEqual(header["status"], "ok", header)
        hdrs = header["outputs"][0]["headers"]
        self.assertEqual((hdrs["image-width"], hdrs["image-height"]), ("32", "16"))
        if HAVE_PIL:
            self.assertEqual(hdrs["content-type"], "image/png")
            self.assertTrue(payloads[0].startswith(b"\x89PNG\r\n\x1a\n"))
        else:
            self.assertTrue(payloads[0].startswith(b"P6\n32 16\n255\n"))

    @unittest.skipUnless(HAVE_PIL, "Pillow is not installed")
    def test_png_with_pillow(self):
        w = self.example("resize.py")
        header, payloads = w.call(make_png(300, 150, (255, 0, 0)), headers={"max-side": "50"})
        self.assertEqual(header["status"], "ok", header)
        png = payloads[0]
        self.assertTrue(png.startswith(b"\x89PNG\r\n\x1a\n"))
        self.assertEqual(struct.unpack(">II", png[16:24]), (50, 25))
        header, _ = w.call(b"\x89PNG\r\n\x1a\ncorrupt")
        self.assertEqual(header["status"], "fail")


class _Hook(http.server.BaseHTTPRequestHandler):
    received = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        _Hook.received.append((self.path, self.headers, body))  # case-insensitive lookups
        if self.path == "/slow":
            time.sleep(1.5)
        status = {"/ok": 200, "/slow": 200, "/unavailable": 503, "/missing": 404,
                  "/redirect": 302, "/throttled": 429}.get(self.path, 404)
        reply = json.dumps({"path": self.path, "got": body.decode("utf-8")}).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            if status == 302:
                self.send_header("Location", "/ok")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)
        except (BrokenPipeError, ConnectionResetError):
            pass


class ResizeUploadTests(WorkerTestCase):
    """resize.py given S3 event notifications: against moto's S3 server (its
    own process, like a real endpoint), it fetches each upload, writes the
    thumbnail back, skips its own thumbnails and S3's test event."""

    @classmethod
    def setUpClass(cls):
        try:
            import boto3  # noqa: F401
            import moto.server  # noqa: F401
        except ImportError:
            raise unittest.SkipTest("pip install 'moto[server]' boto3 (scripts/test.sh does)")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        cls.endpoint = "http://127.0.0.1:%d" % port
        cls.moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-p", str(port)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                urllib.request.urlopen(cls.endpoint, timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    cls.moto.kill()
                    raise
                time.sleep(0.1)
        cls.aws = {"AWS_ENDPOINT_URL": cls.endpoint, "AWS_ACCESS_KEY_ID": "test",
                   "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"}

    @classmethod
    def tearDownClass(cls):
        cls.moto.kill()
        cls.moto.wait()

    def s3(self):
        import boto3
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="test", aws_secret_access_key="test")

    @staticmethod
    def event(bucket, *keys):
        return json.dumps({"Records": [
            {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": bucket}, "object": {"key": k}}}
            for k in keys]}).encode()

    def test_an_upload_gets_its_thumbnail_written_back(self):
        s3 = self.s3()
        bucket = "uploads-%d" % os.getpid()
        s3.create_bucket(Bucket=bucket)
        img = make_ppm(200, 100, lambda x, y: (10, 200, 30))
        s3.put_object(Bucket=bucket, Key="photos/my+cat.ppm", Body=img)
        w = self.example("resize.py", MQFN_RESIZE_NO_PIL="1", **self.aws)
        # Keys arrive URL-encoded, as S3 and MinIO send them.
        header, payloads = w.call(self.event(bucket, "photos/my%2Bcat.ppm", "thumbnails/old.ppm"), id="u1")
        self.assertEqual(header["status"], "ok", header)
        self.assertEqual(len(payloads), 1, "its own thumbnails are skipped")
        out = json.loads(payloads[0])
        self.assertEqual(out, {"bucket": bucket, "key": "photos/my+cat.ppm",
                               "thumbnail": "thumbnails/my+cat.ppm", "width": 64, "height": 32})
        thumb = s3.get_object(Bucket=bucket, Key="thumbnails/my+cat.ppm")
        self.assertEqual(thumb["ContentType"], "image/x-portable-pixmap")
        self.assertEqual(parse_ppm(thumb["Body"].read())[1:3], (64, 32))

        header, payloads = w.call(json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"}).encode(), id="u2")
        self.assertEqual((header["status"], payloads), ("ok", []))
        header, _ = w.call(self.event(bucket, "photos/missing.ppm"), id="u3")
        self.assertEqual(header["status"], "fail", header)
        self.assertIn("NoSuchKey", header["error"])


class WebhookTests(WorkerTestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
        cls.server.daemon_threads = True
        cls.base = "http://127.0.0.1:%d" % cls.server.server_address[1]
        cls.thread = threading.Thread(target=cls.server.serve_forever, daemon=True)
        cls.thread.start()

    @classmethod
    def tearDownClass(cls):
        cls.server.shutdown()
        cls.server.server_close()

    def setUp(self):
        _Hook.received.clear()
        self.w = self.example("webhook.py")

    def hook(self, spec, **kw):
        data = spec if isinstance(spec, bytes) else json.dumps(spec).encode()
        return self.w.call(data, **kw)

    def test_200_is_ok_with_body(self):
        header, payloads = self.hook({"url": self.base + "/ok", "body": {"a": [1, 2]},
                                      "headers": {"X-Token": "t"}}, id="wh-1", attempt=2)
        self.assertEqual(header["status"], "ok", header)
        self.assertEqual(header["outputs"][0]["headers"],
                         {"http-status": "200", "content-type": "application/json"})
        self.assertEqual(json.loads(payloads[0]), {"path": "/ok", "got": '{"a":[1,2]}'})
        path, headers, body = _Hook.received[-1]
        self.assertEqual(body, b'{"a":[1,2]}')
        self.assertEqual(headers["Content-Type"], "application/json")
        self.assertEqual(headers["X-Token"], "t")
        self.assertEqual((headers["mqfn-id"], headers["mqfn-attempt"]), ("wh-1", "2"))

    def test_string_body_sent_verbatim(self):
        header, payloads = self.hook({"url": self.base + "/ok", "body": "plain text"})
        self.assertEqual(header["status"], "ok")
        self.assertEqual(_Hook.received[-1][2], b"plain text")
        self.assertTrue(_Hook.received[-1][1]["Content-Type"].startswith("text/plain"))

    def test_503_is_retry(self):
        header, payloads = self.hook({"url": self.base + "/unavailable", "body": 1})
        self.assertEqual(header["status"], "retry", header)
        self.assertIn("503", header["error"])
        self.assertEqual(payloads, [])

    def test_429_is_retry(self):
        self.assertEqual(self.hook({"url": self.base + "/throttled"})[0]["status"], "retry")

    def test_404_is_fail(self):
        header, _ = self.hook({"url": self.base + "/missing", "body": "x"})
        self.assertEqual(header["status"], "fail", header)
        self.assertIn("404", header["error"])

    def test_redirect_not_followed(self):
        header, _ = self.hook({"url": self.base + "/redirect", "body": "x"})
        self.assertEqual(header["status"], "fail", header)
        self.assertEqual([p for p, _, _ in _Hook.received], ["/redirect"])

    def test_timeout_from_deadline_is_retry(self):
        t0 = time.monotonic()
        header, _ = self.hook({"url": self.base + "/slow", "body": "x"}, deadline_ms=400)
        self.assertEqual(header["status"], "retry", header)
        self.assertLess(time.monotonic() - t0, 1.4)

    def test_connection_refused_is_retry(self):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        header, _ = self.hook({"url": "http://127.0.0.1:%d/" % port, "body": "x"})
        self.assertEqual(header["status"], "retry", header)

    def test_bad_payloads_are_fail(self):
        for bad in (b"not json", b"[1,2]", json.dumps({"body": "no url"}).encode(),
                    json.dumps({"url": "ftp://127.0.0.1/x"}).encode(),
                    json.dumps({"url": "file:///etc/passwd"}).encode(),
                    json.dumps({"url": self.base + "/ok", "headers": "nope"}).encode(),
                    json.dumps({"url": self.base + "/ok", "headers": {"X": "a\r\nb"}}).encode()):
            header, payloads = self.hook(bad)
            self.assertEqual(header["status"], "fail", (bad, header))
        self.assertEqual(_Hook.received, [])
        self.assertEqual(self.w.close(), 0)


if __name__ == "__main__":
    unittest.main()
