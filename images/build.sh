#!/bin/sh
# Build the0's runtime images: the0-runtime/base:<version> and one image per runtime.
#
#   images/build.sh [--base local|public] [--only RUNTIME,...] [--service] [--prefix PREFIX] [--tag TAG]
#
#   --base public  (default) FROM public images (python:3.11-slim-bookworm, node, gcc, ...): needs a registry.
#   --base local   FROM a debootstrapped Debian + Python base (images/local-base.sh): no registry needed.
#                  Toolchains that only come from public images (node 20, .NET 8, Java) are then absent:
#                  those images are the base only (docs/docker.md).
#   --only         build the base and these runtimes only (comma-separated).
#   --service      also build PREFIX/service:TAG, the runtime service for config/docker-compose.yml.
#
# The daemon's dependencies are built as wheels on the host (pip, from PyPI or its cache) into
# build/wheelhouse and installed in the image with --no-index, so `docker build` itself needs no network.
# The build context is staged in build/image-context (daemon/, bootstrap.sh, wheels, Dockerfiles).
# Environment: PYTHON (default .venv/bin/python, else python3), DOCKER (default docker).
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
BASE_MODE=public
ONLY=""
SERVICE=0
PREFIX="${THE0_IMAGE_PREFIX:-the0-runtime}"
TAG="${THE0_IMAGE_TAG:-}"
RUNTIMES="python3.11 nodejs20 rust cpp dotnet8 scala3 haskell"
LOCAL_BASE="the0-runtime/local-base:bookworm"
DOCKER="${DOCKER:-docker}"

while [ $# -gt 0 ]; do
    case "$1" in
        --base) BASE_MODE="${2:-}"; shift 2 ;;
        --base=*) BASE_MODE="${1#--base=}"; shift ;;
        --only) ONLY="${2:-}"; shift 2 ;;
        --only=*) ONLY="${1#--only=}"; shift ;;
        --prefix) PREFIX="$2"; shift 2 ;;
        --tag) TAG="$2"; shift 2 ;;
        --service) SERVICE=1; shift ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "build.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$BASE_MODE" in local|public) ;; *) echo "build.sh: --base must be local or public" >&2; exit 2 ;; esac
if [ -n "$ONLY" ]; then
    for r in $(echo "$ONLY" | tr ',' ' '); do
        case " $RUNTIMES " in *" $r "*) ;; *) echo "build.sh: unknown runtime $r; one of: $RUNTIMES" >&2; exit 2 ;; esac
    done
    RUNTIMES=$(echo "$ONLY" | tr ',' ' ')
fi

PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
if [ -z "$TAG" ]; then  # the project's version (pyproject.toml)
    TAG=$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' "$ROOT/pyproject.toml" | head -n1)
fi
[ -f "$HERE/bootstrap.sh" ] || { echo "build.sh: $HERE/bootstrap.sh is missing" >&2; exit 1; }
"$DOCKER" info >/dev/null 2>&1 || { echo "build.sh: dockerd is not reachable (start dockerd or set DOCKER_HOST)" >&2; exit 1; }

START=$(date +%s)
# One build at a time per checkout (test sessions may call this concurrently): the context dir is shared.
mkdir -p "$ROOT/build"
exec 9>"$ROOT/build/.images.lock"
flock 9
# 1. Wheels for the daemon's dependencies (cached: rebuilt only when the requirements change).
WHEELS="$ROOT/build/wheelhouse"
STAMP="$WHEELS/.requirements.sha256"
SUM=$(sha256sum "$HERE/daemon-requirements.txt" | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$SUM" ]; then
    echo "build.sh: building daemon wheels into $WHEELS"
    rm -rf "$WHEELS"; mkdir -p "$WHEELS"
    "$PYTHON" -m pip wheel -q --disable-pip-version-check -w "$WHEELS" -r "$HERE/daemon-requirements.txt"
    echo "$SUM" > "$STAMP"
fi

# 2. A small build context (never the whole project: .venv would be sent to dockerd).
CTX="$ROOT/build/image-context"
rm -rf "$CTX"; mkdir -p "$CTX/wheelhouse"
cp -a "$WHEELS"/*.whl "$CTX/wheelhouse/"
cp -a "$HERE/daemon-requirements.txt" "$CTX/wheelhouse/"
cp -RL "$ROOT/daemon" "$CTX/daemon"
find "$CTX/daemon" -name __pycache__ -prune -exec rm -rf {} +
cp -a "$HERE/bootstrap.sh" "$CTX/bootstrap.sh"
cp -a "$HERE"/Dockerfile.* "$CTX/"

# 3. The base image.
build() {  # build TAG DOCKERFILE [--build-arg ...]
    tag="$1"; file="$2"; shift 2
    echo "build.sh: $tag"
    # The classic builder: dockerd 20.10 from Debian, no buildx plugin needed.
    if ! out=$(DOCKER_BUILDKIT=0 "$DOCKER" build -q --force-rm -f "$CTX/$file" -t "$tag" "$@" "$CTX" 2>&1); then
        echo "$out" >&2
        echo "build.sh: building $tag failed" >&2
        exit 1
    fi
}
if [ "$BASE_MODE" = local ]; then
    "$HERE/local-base.sh" "$LOCAL_BASE"
    build "$PREFIX/base:$TAG" Dockerfile.base --build-arg "BASE_IMAGE=$LOCAL_BASE" --build-arg "APT_PACKAGES="
else
    build "$PREFIX/base:$TAG" Dockerfile.base
fi

# 4. One image per runtime, FROM the base (toolchain stages FROM the local base when --base local).
for rt in $RUNTIMES; do
    if [ "$BASE_MODE" = local ]; then
        build "$PREFIX/$rt:$TAG" "Dockerfile.$rt" --build-arg "BASE=$PREFIX/base:$TAG" --build-arg "TOOLCHAIN=$LOCAL_BASE"
    else
        build "$PREFIX/$rt:$TAG" "Dockerfile.$rt" --build-arg "BASE=$PREFIX/base:$TAG"
    fi
done
# 5. The service image (optional): the whole project, installed from wheels built here.
if [ "$SERVICE" = 1 ]; then
    SWHEELS="$ROOT/build/wheelhouse-service"
    SSUM=$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)
    if [ "$(cat "$SWHEELS/.pyproject.sha256" 2>/dev/null || true)" != "$SSUM" ]; then
        echo "build.sh: building the service's dependency wheels into $SWHEELS"
        rm -rf "$SWHEELS"; mkdir -p "$SWHEELS"
        "$PYTHON" -m pip wheel -q --disable-pip-version-check -w "$SWHEELS" "$ROOT" setuptools wheel
        rm -f "$SWHEELS"/the0_runtime-*.whl
        echo "$SSUM" > "$SWHEELS/.pyproject.sha256"
    fi
    SCTX="$ROOT/build/service-context"
    rm -rf "$SCTX"; mkdir -p "$SCTX/src" "$SCTX/wheelhouse"
    cp -a "$SWHEELS"/*.whl "$SCTX/wheelhouse/"
    cp -RL "$ROOT/actors" "$ROOT/daemon" "$ROOT/config" "$ROOT/pyproject.toml" "$SCTX/src/"
    [ -f "$ROOT/README.md" ] && cp "$ROOT/README.md" "$SCTX/src/"
    find "$SCTX/src" -name __pycache__ -prune -exec rm -rf {} +
    cp -a "$HERE/Dockerfile.service" "$SCTX/"
    CTX="$SCTX"
    if [ "$BASE_MODE" = local ]; then
        build "$PREFIX/service:$TAG" Dockerfile.service --build-arg "BASE_IMAGE=$LOCAL_BASE"
    else
        build "$PREFIX/service:$TAG" Dockerfile.service
    fi
fi
echo "build.sh: done in $(( $(date +%s) - START ))s ($BASE_MODE base): $PREFIX/{base,$(echo $RUNTIMES | tr ' ' ',')}:$TAG"
