#!/usr/bin/env python3
"""A gRPC client resolving xds:///<target> from ruddr (GRPC_XDS_BOOTSTRAP_CONFIG points at it).
Makes one RPC every <interval> seconds (default 0.02) and prints "<monotonic seconds> <backend
name or ERR:code>" per RPC, until stdin closes."""
import sys
import threading
import time

import grpc

target = sys.argv[1]
interval = float(sys.argv[2]) if len(sys.argv) > 2 else 0.02
stop = threading.Event()


def watch_stdin():
    sys.stdin.read()
    stop.set()


threading.Thread(target=watch_stdin, daemon=True).start()
channel = grpc.insecure_channel(f"xds:///{target}")
who = channel.unary_unary("/ruddr.test.Echo/Who")
while not stop.is_set():
    try:
        reply = who(b"", timeout=2).decode()
    except grpc.RpcError as e:
        reply = f"ERR:{e.code().name}"
    print(f"{time.monotonic():.3f} {reply}", flush=True)
    time.sleep(interval)
