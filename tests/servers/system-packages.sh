#!/usr/bin/env bash
# Debian packages the integration tests need: dockerd (+ busybox/debootstrap for local images), and
# Go + etcd for building and running a real kube-apiserver. Installs only what is missing.
set -euo pipefail
need=()
for p in docker.io busybox-static debootstrap golang-go etcd-server rsync jq openssl gcc libc6-dev nodejs; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "missing Debian packages: ${need[*]} (run as root, or install them)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q "${need[@]}" >/dev/null
fi
