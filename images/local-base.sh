#!/bin/sh
# Build a local Debian bookworm + Python 3.11 base image with no registry: debootstrap a minimal root
# file system from the machine's own apt mirror and `docker import` it.
#
#   images/local-base.sh [TAG]      (default TAG: the0-runtime/local-base:bookworm)
#
# Cached twice: when the image TAG already exists the script exits at once; the root file system tarball
# is kept under $THE0_CACHE_DIR (default ~/.cache/the0-runtime) so a dockerd with an empty image store
# only re-imports it (a few seconds). Needs root and the debootstrap package (apt-get install debootstrap).
# Environment: THE0_DEBIAN_MIRROR overrides the mirror (default: the first one in /etc/apt/sources*).
set -eu

TAG="${1:-the0-runtime/local-base:bookworm}"
SUITE=bookworm
# python3 + venv for the daemon; libstdc++/libgmp/libffi so compiled C++, Rust and Haskell bots run.
PACKAGES="python3,python3-venv,libstdc++6,libgmp10,libffi8,ca-certificates"
CACHE_DIR="${THE0_CACHE_DIR:-$HOME/.cache/the0-runtime}"
KEY=$(printf '%s %s' "$SUITE" "$PACKAGES" | sha256sum | cut -c1-12)
TARBALL="$CACHE_DIR/local-base-$SUITE-$KEY.tar"

if docker image inspect "$TAG" >/dev/null 2>&1; then
    echo "local-base: $TAG already present"
    exit 0
fi

if [ ! -s "$TARBALL" ]; then
    command -v debootstrap >/dev/null 2>&1 || {
        echo "local-base: debootstrap not found; run: apt-get install -y debootstrap" >&2
        exit 1
    }
    MIRROR="${THE0_DEBIAN_MIRROR:-}"
    if [ -z "$MIRROR" ]; then
        # deb822 (URIs: ...) or one-line (deb URL suite ...) sources; skip security and third-party repos.
        MIRROR=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null \
            | sed -n -e 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' -e 's/^deb[[:space:]]\{1,\}\(\[[^]]*\][[:space:]]\{1,\}\)\{0,1\}\([^[:space:]]*\).*/\2/p' \
            | grep -v -e security -e nodesource -e google | head -n1)
    fi
    [ -n "$MIRROR" ] || MIRROR=http://deb.debian.org/debian
    mkdir -p "$CACHE_DIR"
    ROOT=$(mktemp -d "$CACHE_DIR/rootfs.XXXXXX")
    trap 'rm -rf "$ROOT" "$TARBALL.part"' EXIT
    echo "local-base: debootstrap $SUITE from $MIRROR (about a minute)"
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOT" "$MIRROR" >"$CACHE_DIR/debootstrap.log" 2>&1 || {
        echo "local-base: debootstrap failed; see $CACHE_DIR/debootstrap.log" >&2
        tail -n 20 "$CACHE_DIR/debootstrap.log" >&2
        exit 1
    }
    rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/* "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/*
    tar -C "$ROOT" -cf "$TARBALL.part" .
    mv "$TARBALL.part" "$TARBALL"
fi

echo "local-base: importing $TARBALL as $TAG"
docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    "$TARBALL" "$TAG" >/dev/null
echo "local-base: $TAG ready"
