#!/usr/bin/env bash
# Installs what ruddr's build, tests and demo need on Debian: etcd (server and etcdctl), dig,
# dnsperf, and protoc with the well-known protos (for the etcd client). Skips what is present.
set -euo pipefail

need=()
command -v etcd >/dev/null || need+=(etcd-server)
command -v etcdctl >/dev/null || need+=(etcd-client)
command -v openssl >/dev/null || need+=(openssl)
command -v dig >/dev/null || need+=(bind9-dnsutils)
command -v ip >/dev/null || need+=(iproute2)
command -v protoc >/dev/null || need+=(protobuf-compiler)
[ -e /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
# Node and npm, for the xDS test's Node gRPC client.
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
# Observability tests: fstrm_capture (dnstap collector), promtool (alert rules), Chromium and a
# font for the status page's browser test.
command -v fstrm_capture >/dev/null || need+=(fstrm-bin)
# DNS over TLS and HTTPS tests: kdig, curl (--doh-url).
command -v kdig >/dev/null || need+=(knot-dnsutils)
command -v curl >/dev/null || need+=(curl)
command -v promtool >/dev/null || need+=(prometheus)
command -v chromium >/dev/null || need+=(chromium)
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)
if [ "${WITH_BENCH:-0}" = 1 ]; then
  command -v dnsperf >/dev/null || need+=(dnsperf)
  # Reference servers for bench/compare.sh, and perf for its --profile.
  command -v knotd >/dev/null || need+=(knot)
  command -v nsd >/dev/null || need+=(nsd)
  command -v perf >/dev/null || need+=(linux-perf)
  # bench/encrypted.py: dnsdist (the DoT/DoH reference in front of knotd) and h2load (DoH load).
  command -v dnsdist >/dev/null || need+=(dnsdist)
  command -v h2load >/dev/null || need+=(nghttp2-client)
  # knotd's dnstap module, the reference for the dnstap benchmark.
  [ -e /usr/lib/x86_64-linux-gnu/knot/modules-3.2/dnstap.so ] || ls /usr/lib/*/knot/*/dnstap.so >/dev/null 2>&1 || need+=(knot-module-dnstap)
fi

if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# The Debian package registers a service; nothing here relies on it running.

# dnspython, for the test that resolves and connects like a Python client would.
# With its DNS-over-HTTPS extra (httpx, h2) for dns.query.https.
if ! python3 -c "import dns.query, sys; sys.exit(0 if dns.query.have_doh else 1)" 2>/dev/null; then
  echo "installing: dnspython[doh]"
  python3 -m pip install --quiet --disable-pip-version-check "dnspython[doh]"
fi
# grpcio, for the xDS test: a real gRPC client resolving xds:///<service> from ruddr, and the
# backends it calls.
if ! python3 -c "import grpc" 2>/dev/null; then
  echo "installing: grpcio"
  python3 -m pip install --quiet --disable-pip-version-check grpcio ||
    { [ "$(id -u)" = 0 ] && apt-get install -y -qq --no-install-recommends python3-grpcio >/dev/null; } ||
    sudo apt-get install -y -qq --no-install-recommends python3-grpcio >/dev/null
fi
# kubernetes-validate: the Kubernetes manifests in config/kubernetes checked offline against
# the Kubernetes schemas it ships.
if ! command -v kubernetes-validate >/dev/null; then
  echo "installing: kubernetes-validate"
  python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate
fi
# Playwright for Python drives the system Chromium in the status page test (its own browser
# download is not used).
if ! python3 -c "import playwright" 2>/dev/null; then
  echo "installing: playwright (Python)"
  python3 -m pip install --quiet --disable-pip-version-check playwright
fi
# @grpc/grpc-js-xds, the Node gRPC client of the xDS test (into tests/integration/xds, ignored
# by git).
if [ ! -d "$(dirname "$0")/../tests/integration/xds/node_modules/@grpc/grpc-js-xds" ]; then
  echo "installing: @grpc/grpc-js-xds (npm)"
  npm install --silent --no-audit --no-fund --prefix "$(dirname "$0")/../tests/integration/xds"
fi
# unshare (util-linux) and getent (libc-bin) run glibc against a private resolv.conf.
command -v unshare >/dev/null || { echo "unshare missing: apt-get install -y util-linux"; exit 1; }
