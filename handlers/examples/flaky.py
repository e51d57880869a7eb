#!/usr/bin/env python3
"""flaky: a misbehaving handler for testing mqfn's worker supervision.

Payload (bytes) selects the behaviour:
  exit          -> sys.exit(1) mid-request (a crash: no response is written)
  sleep:N       -> sleep N seconds (float allowed), then echo the payload
  garbage       -> write bytes that are not a valid frame on the protocol stdout, then exit 1
  permanent     -> raise Permanent (status "fail")
  retry         -> raise Retryable (status "retry")
  raise         -> raise an uncaught RuntimeError (status "retry")
  anything else -> echo the payload
"""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sdk"))

import mqfn_handler  # noqa: E402
from mqfn_handler import Permanent, Retryable, handler  # noqa: E402


@handler
def run(payload, ctx):
    if payload == b"exit":
        print("flaky: exiting with status 1", file=sys.stderr)
        sys.exit(1)
    if payload.startswith(b"sleep:"):
        seconds = float(payload[len(b"sleep:"):].decode("ascii").strip() or "0")
        time.sleep(seconds)
        return payload
    if payload == b"garbage":
        # Deliberately corrupt the protocol stream (the SDK otherwise protects it).
        out = mqfn_handler._frame_out
        out.write(b"\xff\xff\xff\xffthis is not a frame\n")
        out.flush()
        print("flaky: wrote garbage to stdout, exiting with status 1", file=sys.stderr)
        sys.stdout.flush()
        os._exit(1)
    if payload == b"permanent":
        raise Permanent("flaky: permanent failure requested")
    if payload == b"retry":
        raise Retryable("flaky: retryable failure requested")
    if payload == b"raise":
        raise RuntimeError("flaky: uncaught exception requested")
    return payload
