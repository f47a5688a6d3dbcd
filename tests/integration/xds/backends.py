#!/usr/bin/env python3
"""gRPC backends for the xDS test: one server per port given, each answering
/ruddr.test.Echo/Who with its own name ("b<port>"). Prints "ready" once all listen."""
import sys
from concurrent import futures

import grpc


def serve(port: int) -> grpc.Server:
    name = f"b{port}".encode()

    def who(_request, _context):
        return name

    handler = grpc.method_handlers_generic_handler(
        "ruddr.test.Echo", {"Who": grpc.unary_unary_rpc_method_handler(who)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[handler])
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server


servers = [serve(int(p)) for p in sys.argv[1:]]
print("ready", flush=True)
servers[0].wait_for_termination()
