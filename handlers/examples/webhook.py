#!/usr/bin/env python3
"""webhook: POST a message's body to a URL and emit the response body.

Payload: JSON ``{"url": "http(s)://...", "body": <any JSON value or a string>, "headers": {...}}``
(``body`` and ``headers`` optional). A string body is sent as-is (text/plain; charset=utf-8),
any other JSON value is sent serialized (application/json); ``headers`` override these defaults.
The request also carries ``mqfn-id`` and ``mqfn-attempt`` headers so receivers can deduplicate.

The HTTP timeout is the invocation's remaining deadline (minus a small margin); like every
urllib timeout it bounds each socket operation (connect, each read), not the whole exchange,
so mqfn's own deadline remains the hard limit. Redirects are
not followed (a POST must not silently turn into a GET). Proxy environment variables are honoured.

Output: the response body, with headers ``http-status`` and ``content-type`` (if any).
Errors:
  * 5xx, 408, 425, 429, timeout, connection refused/reset, DNS failure -> Retryable
  * other 4xx, 3xx                                                     -> Permanent
  * payload not JSON / not an object, missing or non-http(s) url, bad headers -> Permanent
"""
import http.client
import json
import os
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sdk"))

from mqfn_handler import Output, Permanent, Retryable, handler  # noqa: E402

MARGIN_S = 0.1  # answer mqfn a little before it gives up on us
MIN_TIMEOUT_S = 0.05
DEFAULT_TIMEOUT_S = 30.0
RETRYABLE_4XX = {408, 425, 429}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # urllib then raises HTTPError with the 3xx status


_opener = urllib.request.build_opener(_NoRedirect)


def parse_request(payload):
    try:
        spec = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise Permanent("payload is not valid JSON: %s" % e) from None
    if not isinstance(spec, dict):
        raise Permanent("payload must be a JSON object")
    url = spec.get("url")
    if not isinstance(url, str) or not url:
        raise Permanent("payload has no 'url' string")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise Permanent("only http:// and https:// URLs are allowed, got %r" % url[:200])
    headers = spec.get("headers") or {}
    if not isinstance(headers, dict):
        raise Permanent("'headers' must be a JSON object")
    out_headers = {}
    if "body" not in spec:
        data = b""
    elif isinstance(spec["body"], str):
        data = spec["body"].encode("utf-8")
        out_headers["Content-Type"] = "text/plain; charset=utf-8"
    else:
        data = json.dumps(spec["body"], separators=(",", ":")).encode("utf-8")
        out_headers["Content-Type"] = "application/json"
    for k, v in headers.items():
        v = v if isinstance(v, str) else json.dumps(v) if isinstance(v, (dict, list)) else str(v)
        if any(c in k + v for c in "\r\n\0") or not k:
            raise Permanent("invalid header %r" % k)
        # Replace a default with the same name, whatever its case.
        for existing in [e for e in out_headers if e.lower() == k.lower()]:
            del out_headers[existing]
        out_headers[k] = v
    return url, data, out_headers


def timeout_for(ctx):
    remaining = ctx.remaining_ms()
    if remaining is None:
        return DEFAULT_TIMEOUT_S
    if remaining <= 0:
        raise Retryable("deadline already passed before the request was sent")
    return max(MIN_TIMEOUT_S, remaining / 1000.0 - MARGIN_S)


def _snippet(body):
    text = body[:200].decode("utf-8", "replace").strip()
    return (": " + text) if text else ""


@handler
def run(payload, ctx):
    url, data, headers = parse_request(payload)
    present = {k.lower() for k in headers}
    for name, value in (("User-Agent", "mqfn-webhook/1"), ("mqfn-id", ctx.id),
                        ("mqfn-attempt", str(ctx.attempt))):
        if name.lower() not in present:
            headers[name] = value
    timeout = timeout_for(ctx)
    req = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with _opener.open(req, timeout=timeout) as resp:
            body = resp.read()
            status = resp.status
            ctype = resp.headers.get("Content-Type")
    except urllib.error.HTTPError as e:
        try:
            err_body = e.read() or b""
        except Exception:  # noqa: BLE001 - the body is only for the error text
            err_body = b""
        finally:
            e.close()
        msg = "POST %s -> HTTP %d%s" % (url, e.code, _snippet(err_body))
        if e.code >= 500 or e.code in RETRYABLE_4XX:
            raise Retryable(msg) from None
        raise Permanent(msg) from None
    except urllib.error.URLError as e:
        # Connection refused/reset, DNS failure, TLS failure, connect timeout...
        raise Retryable("POST %s failed: %s" % (url, e.reason)) from None
    except (socket.timeout, TimeoutError):
        raise Retryable("POST %s timed out after %.2fs" % (url, timeout)) from None
    except (http.client.HTTPException, ConnectionError) as e:
        raise Retryable("POST %s failed: %s: %s" % (url, type(e).__name__, e)) from None
    except ValueError as e:  # e.g. invalid header values rejected by http.client
        raise Permanent("POST %s rejected: %s" % (url, e)) from None
    out_headers = {"http-status": str(status)}
    if ctype:
        out_headers["content-type"] = ctype
    return Output(body, headers=out_headers)
