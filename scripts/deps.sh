#!/usr/bin/env bash
# Installs what ruddr's build, tests and demo need on Debian: etcd (server and etcdctl), dig,
# dnsperf, and protoc with the well-known protos (for the etcd client). Skips what is present.
set -euo pipefail

need=()
command -v etcd >/dev/null || need+=(etcd-server)
command -v etcdctl >/dev/null || need+=(etcd-client)
command -v openssl >/dev/null || need+=(openssl)
command -v dig >/dev/null || need+=(bind9-dnsutils)
command -v protoc >/dev/null || need+=(protobuf-compiler)
[ -e /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
if [ "${WITH_BENCH:-0}" = 1 ]; then
  command -v dnsperf >/dev/null || need+=(dnsperf)
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
