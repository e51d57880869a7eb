#!/usr/bin/env python3
"""noop: returns the payload unchanged (one output, no headers). Used by benchmarks."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sdk"))

from mqfn_handler import handler  # noqa: E402


@handler
def run(payload, ctx):
    return payload
