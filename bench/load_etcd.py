#!/usr/bin/env python3
"""Loads N services x M instances into etcd through its JSON gateway (stdlib only).

Usage: load_etcd.py ENDPOINT SERVICES INSTANCES
Writes /ruddr/services/svc<i>/i<j> = {"address":"10.<i/250>.<i%250>.<j+1>","port":<8080+j>,
"ports":{"http":<8080+j>}} (so `_http._tcp.svc<i>` answers SRV too). `load()` is also used by
compare.py.
"""
import base64
import json
import sys
import urllib.request


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def ip_of(i: int, j: int) -> str:
    return f"10.{i // 250}.{i % 250}.{j + 1}"


def load(endpoint: str, services: int, instances: int) -> int:
    kvs = []
    for i in range(services):
        for j in range(instances):
            port = 8080 + j
            value = json.dumps({"address": ip_of(i, j), "port": port, "ports": {"http": port}})
            kvs.append((f"/ruddr/services/svc{i}/i{j}", value))
    return put_all(endpoint, kvs)


def put_all(endpoint: str, kvs: list[tuple[str, str]]) -> int:
    """Writes every (key, value), 100 to a transaction; returns how many."""
    ops = [{"request_put": {"key": b64(k), "value": b64(v)}} for k, v in kvs]
    for start in range(0, len(ops), 100):
        body = json.dumps({"success": ops[start:start + 100]}).encode()
        req = urllib.request.Request(endpoint + "/v3/kv/txn", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()
    return len(ops)


def main() -> None:
    endpoint, services, instances = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    print(f"loaded {load(endpoint, services, instances)} instances of {services} services")


if __name__ == "__main__":
    main()
