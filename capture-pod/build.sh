#!/usr/bin/env bash
# Build tracer's capture image (this directory's Dockerfile) with whatever engine is here, and load it
# where the cluster's nodes find it.
#
#   capture-pod/build.sh [--load microk8s|k3s|kind] [--engine docker|podman|buildah]
#                        [--platform linux/amd64] [--base IMAGE] [--tag IMAGE] [--output FILE]
#                        [--push] [-- ENGINE BUILD OPTIONS...]
#
#   --engine     docker (when its daemon answers), else podman, else buildah: the first one found
#   --load       microk8s: `microk8s ctr image import -` (this node's containerd: run it on every node
#                          tracer captures on, or use the registry addon and --push instead)
#                k3s:      `k3s ctr images import -` (likewise per node)
#                kind:     `kind load image-archive` (every node of the cluster; KIND_CLUSTER_NAME names it)
#   --push       push the tag to its registry (`microk8s enable registry` serves localhost:32000 on
#                every node); podman and buildah get --tls-verify=false for a localhost registry, which
#                they would otherwise refuse (Docker treats localhost as insecure by itself)
#   --platform   the nodes' platform, e.g. linux/amd64 on an arm64 machine (Apple silicon) for amd64
#                nodes: an image of the wrong architecture does not start there ("exec format error");
#                building another architecture needs qemu's binfmt handlers on this machine
#   --base       the base image (--build-arg BASE): any Debian-based image with python3 and pip;
#                default python:3.11-slim
#   --tag        the image's name, default localhost:32000/tracer-capture:0.1 (tracer's default;
#                another name: tracer follow ... --capture-image NAME)
#   --output     also keep the image as a docker-archive tar here (ctr image import, kind, copying it
#                to a node by hand)
#   after --     passed to the engine's build command as they are (e.g. --no-cache)
#
# Traps it avoids: Docker's BuildKit adds attestation manifests that `ctr image import` cannot
# import ("content digest ... not found", containerd #11344): built with --provenance=false, and
# imported with --platform. podman and buildah build with the host's network (their RUN steps only
# fetch packages): no CNI bridge or firewall rules appear on the build machine, and builds work
# where that bridge has no way out. `microk8s ctr` and `k3s ctr` need root (or microk8s' group);
# sudo would build in root's own image store, so with a rootless podman build as yourself with
# --output, then import that file: sudo microk8s ctr image import --platform linux/amd64 FILE.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DEFAULT_TAG=localhost:32000/tracer-capture:0.1

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
}

die() {
    echo "build.sh: $*" >&2
    exit 2
}

ENGINE="" LOAD="" PLATFORM="" BASE="" TAG="$DEFAULT_TAG" OUTPUT="" PUSH=0
EXTRA=()
while (($#)); do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --engine | --load | --platform | --base | --tag | --output)
            (($# >= 2)) && [ -n "$2" ] || die "$1 needs a value (see --help)"
            case "$1" in
                --engine) ENGINE=$2 ;;
                --load) LOAD=$2 ;;
                --platform) PLATFORM=$2 ;;
                --base) BASE=$2 ;;
                --tag) TAG=$2 ;;
                --output) OUTPUT=$2 ;;
            esac
            shift 2
            ;;
        --engine=* | --load=* | --platform=* | --base=* | --tag=* | --output=*)
            set -- "${1%%=*}" "${1#*=}" "${@:2}"
            ;;
        --push) PUSH=1; shift ;;
        --) shift; EXTRA=("$@"); break ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done

case "$LOAD" in
    "" | microk8s | k3s | kind) ;;
    *) die "--load takes microk8s, k3s or kind, not '$LOAD'" ;;
esac
case "$PLATFORM" in
    "" | */*) ;;
    *) die "--platform is OS/ARCH, e.g. linux/amd64, not '$PLATFORM'" ;;
esac

docker_answers() {
    command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1
}

if [ -z "$ENGINE" ]; then
    if docker_answers; then
        ENGINE=docker
    elif command -v podman >/dev/null 2>&1; then
        ENGINE=podman
    elif command -v buildah >/dev/null 2>&1; then
        ENGINE=buildah
    else
        die "no image builder here: install Docker, podman or buildah (Debian/Ubuntu: apt-get install podman)"
    fi
fi
case "$ENGINE" in
    docker)
        command -v docker >/dev/null 2>&1 || die "--engine docker: no docker command here"
        docker info >/dev/null 2>&1 || die "--engine docker: the Docker daemon does not answer (is it running? may you use its socket?); --engine podman builds without a daemon"
        ;;
    podman | buildah)
        command -v "$ENGINE" >/dev/null 2>&1 || die "--engine $ENGINE: no $ENGINE command here"
        ;;
    *) die "--engine takes docker, podman or buildah, not '$ENGINE'" ;;
esac
case "$LOAD" in
    microk8s | k3s | kind)
        command -v "$LOAD" >/dev/null 2>&1 || die "--load $LOAD: no $LOAD command here (run this on the node, or use --output and copy the file)"
        ;;
esac

say() {
    echo ">> $*" >&2
}

run() {
    say "$*"
    "$@"
}

if [ -z "$PLATFORM" ]; then
    case "$(uname -m)" in
        aarch64 | arm64)
            say "note: building for arm64 (this machine); amd64 nodes need --platform linux/amd64" ;;
    esac
fi

# --- build --------------------------------------------------------------------------------------
args=()
[ -n "$PLATFORM" ] && args+=(--platform "$PLATFORM")
[ -n "$BASE" ] && args+=(--build-arg "BASE=$BASE")
case "$ENGINE" in
    docker)
        if docker buildx version >/dev/null 2>&1; then
            # --load: into Docker's own image store, from which `docker save` takes it
            run docker buildx build --provenance=false --load "${args[@]}" -t "$TAG" "${EXTRA[@]}" "$HERE"
        else  # the legacy builder: no attestations to avoid (and no --provenance flag)
            run docker build "${args[@]}" -t "$TAG" "${EXTRA[@]}" "$HERE"
        fi
        ;;
    podman) run podman build --network host "${args[@]}" -t "$TAG" "${EXTRA[@]}" "$HERE" ;;
    buildah) run buildah bud --network host "${args[@]}" -t "$TAG" "${EXTRA[@]}" "$HERE" ;;
esac

# --- the image as a docker-archive tar (for --output and --load) ------------------------------------
image_platform() {
    case "$ENGINE" in
        docker | podman) "$ENGINE" image inspect --format '{{.Os}}/{{.Architecture}}' "$TAG" ;;
        buildah) buildah inspect --type image --format '{{.OCIv1.OS}}/{{.OCIv1.Architecture}}' "$TAG" ;;
    esac
}

save_archive() {  # FILE
    rm -f "$1"
    case "$ENGINE" in
        docker) run docker save -o "$1" "$TAG" ;;
        podman) run podman save --format docker-archive -o "$1" "$TAG" ;;
        buildah) run buildah push "$TAG" "docker-archive:$1:$TAG" ;;
    esac
}

ARCHIVE=""
if [ -n "$OUTPUT" ] || [ -n "$LOAD" ]; then
    if [ -n "$OUTPUT" ]; then
        ARCHIVE=$OUTPUT
    else
        TMPDIR_BUILD=$(mktemp -d "${TMPDIR:-/tmp}/tracer-capture-build.XXXXXX")
        trap 'rm -rf "$TMPDIR_BUILD"' EXIT
        ARCHIVE=$TMPDIR_BUILD/tracer-capture.tar
    fi
    save_archive "$ARCHIVE"
fi

# --- load / push ------------------------------------------------------------------------------------
if [ -n "$LOAD" ]; then
    # ctr imports only this platform's manifest: an attestation manifest a builder added anyway is
    # left out instead of failing the import
    platform=${PLATFORM:-$(image_platform)}
    case "$LOAD" in
        microk8s) say "microk8s ctr image import --platform $platform - < $ARCHIVE"
                  microk8s ctr image import --platform "$platform" - < "$ARCHIVE" ;;
        k3s) say "k3s ctr images import --platform $platform - < $ARCHIVE"
             k3s ctr images import --platform "$platform" - < "$ARCHIVE" ;;
        kind) run kind load image-archive ${KIND_CLUSTER_NAME:+--name "$KIND_CLUSTER_NAME"} "$ARCHIVE" ;;
    esac
fi

if ((PUSH)); then
    tls=()
    case "$TAG" in
        localhost:* | 127.0.0.1:*) tls=(--tls-verify=false) ;;
    esac
    case "$ENGINE" in
        docker) run docker push "$TAG" ;;
        podman) run podman push "${tls[@]}" "$TAG" ;;
        buildah) run buildah push "${tls[@]}" "$TAG" "docker://$TAG" ;;
    esac
fi

done_what="built $TAG with $ENGINE"
[ -n "$OUTPUT" ] && done_what+=", saved as $OUTPUT"
[ -n "$LOAD" ] && done_what+=", loaded into $LOAD"
((PUSH)) && done_what+=", pushed"
say "$done_what"
if [ "$TAG" != "$DEFAULT_TAG" ]; then
    say "tracer's default image is $DEFAULT_TAG: run tracer follow ... --capture-image $TAG"
fi
