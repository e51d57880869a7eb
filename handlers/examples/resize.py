#!/usr/bin/env python3
"""resize: shrink an image to a thumbnail.

Input: the image bytes. Request header ``max-side`` (default 64, 1..10000) bounds the longer
side of the result; the aspect ratio is kept and images are never enlarged.

* With Pillow importable: any format Pillow reads; the output is PNG.
* Without Pillow (or with MQFN_RESIZE_NO_PIL=1 in the environment): binary netpbm only,
  PPM (P6, RGB) and PGM (P5, greyscale), 8 or 16 bits per sample, box-filter (area average)
  downscale; the output is in the same netpbm format and maxval.

Output headers: ``content-type``, ``image-width``, ``image-height``.
Undecodable image data, an unsupported format or a bad ``max-side`` -> Permanent failure.

Upload mode: when the payload is an S3 event notification (from an SQS queue the bucket
notifies, or MinIO's), each created object is fetched with boto3 (the endpoint from
``AWS_ENDPOINT_URL``, credentials from the usual AWS chain), resized, and its thumbnail
written back to the same bucket under ``MQFN_RESIZE_PREFIX`` (default ``thumbnails/``),
whose own events are skipped. One JSON output per thumbnail: bucket, key, thumbnail,
width, height. S3's test event gives no output. A missing object -> Permanent; any other
S3 error -> Retryable.
"""
import io
import json
import os
import sys
import urllib.parse
from array import array

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sdk"))

from mqfn_handler import Output, Permanent, Retryable, handler  # noqa: E402

DEFAULT_MAX_SIDE = 64
MAX_PIXELS = 64 * 1024 * 1024  # refuse absurd dimensions before allocating anything

Image = None
if os.environ.get("MQFN_RESIZE_NO_PIL") != "1":
    try:
        from PIL import Image  # type: ignore  # noqa: F811
    except ImportError:
        Image = None


def target_size(w, h, max_side):
    """(new_w, new_h) with the longer side <= max_side, aspect kept, never enlarged."""
    if max(w, h) <= max_side:
        return w, h
    if w >= h:
        return max_side, max(1, round(h * max_side / w))
    return max(1, round(w * max_side / h)), max_side


# ------------------------------------------------------------------------------ netpbm

_WS = b" \t\n\r\v\f"


def parse_netpbm(data):
    """Parse a binary PPM/PGM. Returns (magic, width, height, maxval, samples: array)."""
    if len(data) < 2 or data[:2] not in (b"P5", b"P6"):
        raise Permanent("not a binary PPM (P6) or PGM (P5) image%s" % (
            "" if Image is not None else " (Pillow is not installed, only netpbm is supported)"))
    magic = data[:2]
    pos = 2
    tokens = []
    while len(tokens) < 3:
        if pos >= len(data):
            raise Permanent("truncated netpbm header")
        c = data[pos:pos + 1]
        if c in _WS and c:
            pos += 1
        elif c == b"#":
            nl = data.find(b"\n", pos)
            if nl < 0:
                raise Permanent("truncated netpbm header")
            pos = nl + 1
        else:
            start = pos
            while pos < len(data) and data[pos:pos + 1] not in _WS and data[pos:pos + 1] != b"#":
                pos += 1
            tok = data[start:pos]
            if not tok.isdigit():
                raise Permanent("bad netpbm header token %r" % tok[:16])
            tokens.append(int(tok))
    if pos >= len(data) or data[pos:pos + 1] not in _WS:
        raise Permanent("netpbm header must end with one whitespace character")
    pos += 1
    width, height, maxval = tokens
    if width <= 0 or height <= 0:
        raise Permanent("bad image size %dx%d" % (width, height))
    if width * height > MAX_PIXELS:
        raise Permanent("image too large (%dx%d)" % (width, height))
    if not 0 < maxval < 65536:
        raise Permanent("bad netpbm maxval %d" % maxval)
    channels = 3 if magic == b"P6" else 1
    bps = 1 if maxval < 256 else 2
    need = width * height * channels * bps
    raster = data[pos:pos + need]
    if len(raster) < need:
        raise Permanent("truncated netpbm raster (%d of %d bytes)" % (len(raster), need))
    if bps == 1:
        samples = array("B", raster)
    else:
        samples = array("H")
        samples.frombytes(raster)
        if sys.byteorder == "little":
            samples.byteswap()
    if max(samples) > maxval:
        raise Permanent("netpbm sample exceeds maxval %d" % maxval)
    return magic, width, height, maxval, samples


def encode_netpbm(magic, width, height, maxval, samples):
    head = b"%s\n%d %d\n%d\n" % (magic, width, height, maxval)
    if maxval < 256:
        return head + bytes(samples)
    out = array("H", samples)
    if sys.byteorder == "little":
        out.byteswap()
    return head + out.tobytes()


def box_resize(samples, w, h, channels, nw, nh):
    """Area-average downscale of interleaved samples from w x h to nw x nh (nw <= w, nh <= h)."""
    xs = [(x * w // nw, (x + 1) * w // nw) for x in range(nw)]
    ys = [(y * h // nh, (y + 1) * h // nh) for y in range(nh)]
    stride = w * channels
    out = []
    for y0, y1 in ys:
        # Horizontal pass: per source row, the sum of each output column's block per channel.
        band = []
        for sy in range(y0, y1):
            row = samples[sy * stride:(sy + 1) * stride]
            sums = []
            for x0, x1 in xs:
                for ch in range(channels):
                    sums.append(sum(row[x0 * channels + ch:x1 * channels:channels]))
            band.append(sums)
        # Vertical pass: add the band's rows, then divide by the block area (rounded).
        col_sums = map(sum, zip(*band))
        rows = y1 - y0
        for i, s in enumerate(col_sums):
            x0, x1 = xs[i // channels]
            area = (x1 - x0) * rows
            out.append((s + area // 2) // area)
    return out


def resize_netpbm(data, max_side):
    magic, w, h, maxval, samples = parse_netpbm(data)
    nw, nh = target_size(w, h, max_side)
    channels = 3 if magic == b"P6" else 1
    if (nw, nh) != (w, h):
        samples = box_resize(samples, w, h, channels, nw, nh)
    ctype = "image/x-portable-pixmap" if magic == b"P6" else "image/x-portable-graymap"
    return encode_netpbm(magic, nw, nh, maxval, samples), ctype, nw, nh


# ------------------------------------------------------------------------------ Pillow

def resize_pillow(data, max_side):
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as e:  # UnidentifiedImageError, OSError, SyntaxError, DecompressionBombError...
        raise Permanent("cannot decode image: %s" % e) from None
    if img.mode not in ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"):
        img = img.convert("RGBA" if "A" in img.mode else "RGB")
    nw, nh = target_size(img.width, img.height, max_side)
    if (nw, nh) != img.size:
        img = img.resize((nw, nh), Image.LANCZOS if hasattr(Image, "LANCZOS") else Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue(), "image/png", nw, nh


# ------------------------------------------------------------------------------ handler

def parse_max_side(ctx):
    raw = ctx.headers.get("max-side")
    if raw is None or raw == "":
        return DEFAULT_MAX_SIDE
    try:
        value = int(raw.strip())
    except ValueError:
        raise Permanent("max-side header must be an integer, got %r" % raw) from None
    if not 1 <= value <= 10000:
        raise Permanent("max-side must be between 1 and 10000, got %d" % value)
    return value


def resize_image(data, max_side):
    if Image is not None:
        return resize_pillow(data, max_side)
    return resize_netpbm(data, max_side)


# ------------------------------------------------------------------------------ uploads

THUMB_PREFIX = os.environ.get("MQFN_RESIZE_PREFIX", "thumbnails/")


def s3_records(payload):
    """The object-created records of an S3 event notification; None when the payload
    is not one (then it is an image), [] for S3's test event."""
    if not payload.lstrip().startswith(b"{"):
        return None
    try:
        event = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(event, dict):
        return None
    if event.get("Event") == "s3:TestEvent":
        return []
    records = event.get("Records")
    if not isinstance(records, list):
        return None
    return [r for r in records if isinstance(r, dict) and isinstance(r.get("s3"), dict)
            and str(r.get("eventName", "")).startswith("ObjectCreated")]


def resize_uploads(records, max_side):
    import boto3  # only uploads need it
    from botocore.exceptions import BotoCoreError, ClientError

    s3 = boto3.client("s3")
    outputs = []
    for r in records:
        bucket = r["s3"]["bucket"]["name"]
        key = urllib.parse.unquote_plus(r["s3"]["object"]["key"])
        if key.startswith(THUMB_PREFIX):
            continue  # a thumbnail of ours
        try:
            body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            data, ctype, w, h = resize_image(body, max_side)
            thumb = THUMB_PREFIX + key.rsplit("/", 1)[-1]
            s3.put_object(Bucket=bucket, Key=thumb, Body=data, ContentType=ctype)
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "NoSuchBucket", "404"):
                raise Permanent("s3://%s/%s: %s" % (bucket, key, code)) from None
            raise Retryable("s3://%s/%s: %s" % (bucket, key, e)) from None
        except BotoCoreError as e:
            raise Retryable("s3://%s/%s: %s" % (bucket, key, e)) from None
        outputs.append(Output(json.dumps({
            "bucket": bucket, "key": key, "thumbnail": thumb, "width": w, "height": h,
        }).encode(), headers={"content-type": "application/json"}))
    return outputs


@handler
def run(payload, ctx):
    max_side = parse_max_side(ctx)
    if not payload:
        raise Permanent("empty payload: no image")
    records = s3_records(payload)
    if records is not None:
        return resize_uploads(records, max_side)
    data, ctype, w, h = resize_image(payload, max_side)
    return Output(data, headers={"content-type": ctype, "image-width": str(w), "image-height": str(h)})
