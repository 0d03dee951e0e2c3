#!/usr/bin/env bash
# `make device-test`: the device bundle on aarch64, under qemu user emulation (issue #20).
#
# On the host: export the device bundle (`--target jetson`) of a shipped demo. Then, for each Debian
# release, in an arm64 Debian root (mmdebstrap + qemu-user-static, Debian's own packages): unpack the
# bundle's tarball and run the ```bash blocks of its README-device.md outside the TensorRT section, word
# for word (scripts/device_test_readme.py extracts them): venv, `pip install` of the wheel and its
# dependencies from PyPI's aarch64 wheels, `verify`, `solve` of the golden puzzles on ONNX Runtime. Then
# assert that the machine is aarch64, that torch is not installed, and that `hrm-edge parity` (which
# re-runs the PyTorch reference) refuses with one error line. Any failure exits non-zero.
#
# Usage: scripts/device_test.sh [--release bookworm|trixie]... [--bundle TARBALL] [--demo CHECKPOINT_DIR]
#   --release  Debian release(s) to test (default: bookworm and trixie: Python 3.11 and 3.13; JetPack's
#              3.10 and 3.12 are in no Debian release)
#   --bundle   a device tarball already exported (skips the export)
#   --demo     the shipped demo to export (default checkpoints/sudoku6-demo)
# Environment: HRM_EDGE_DEVICE_CACHE (default ~/.cache/hrm-edge/device) keeps root-<release>-arm64.tar
#   (the Debian root, built once) and pip-<release>/ (pip's cache); delete it to start over.
#   DEVICE_TEST_SKIP_UNAVAILABLE=1: exit 0 with a SKIP line when this machine cannot emulate arm64.
# Needs root (chroot, mounts) and, the first time, Debian's network for the root and PyPI for pip.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$(pwd)

RELEASES=()
BUNDLE_TAR=""
DEMO=checkpoints/sudoku6-demo
while [ $# -gt 0 ]; do
    case "$1" in
        --release) RELEASES+=("$2"); shift 2 ;;
        --bundle) BUNDLE_TAR=$(realpath "$2"); shift 2 ;;
        --demo) DEMO="$2"; shift 2 ;;
        *) echo "error: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
    esac
done
[ ${#RELEASES[@]} -gt 0 ] || RELEASES=(bookworm trixie)
CACHE=${HRM_EDGE_DEVICE_CACHE:-$HOME/.cache/hrm-edge/device}
MIRROR=http://deb.debian.org/debian
# The root: what a fresh Jetson image has that matters here (python3, sudo, CA certificates) and nothing of
# hrm-edge's; the README's own commands install the rest.
ROOT_PACKAGES=python3,sudo,ca-certificates
T0=$(date +%s)

say() { echo "== device-test [$(( $(date +%s) - T0 )) s] $*"; }
unavailable() {
    if [ "${DEVICE_TEST_SKIP_UNAVAILABLE:-0}" = 1 ]; then
        echo "SKIP device-test: $*"
        exit 0
    fi
    echo "error: device-test: $*" >&2
    exit 1
}

# --- arm64 emulation: qemu-user-static registered with binfmt_misc --------------------------------------
[ "$(id -u)" = 0 ] || unavailable "needs root (chroot and bind mounts)"
need=()
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
[ -e /usr/bin/qemu-aarch64-static ] || need+=(qemu-user-static binfmt-support)
if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]} (Debian packages)"
    command -v apt-get >/dev/null || unavailable "no apt-get to install ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null \
        || unavailable "apt-get install ${need[*]} failed"
fi
if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null \
        || unavailable "binfmt_misc cannot be mounted here (a container without the privilege?)"
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    update-binfmts --enable qemu-aarch64 2>/dev/null || unavailable "qemu-aarch64 cannot be registered with binfmt_misc"
fi

# --- the device tarball, exported on the host ----------------------------------------------------------
WORK=$(mktemp -d /tmp/hrm-edge-device-test.XXXXXX)
MOUNTS=()
cleanup() {
    local m i
    for (( i=${#MOUNTS[@]}-1; i>=0; i-- )); do umount -l "${MOUNTS[i]}" 2>/dev/null || true; done
    # Only once nothing is mounted inside: rm must never reach /proc, /dev or the pip cache.
    if ! grep -q " $WORK/" /proc/mounts; then rm -rf "$WORK"; else echo "warning: left $WORK (still mounted)" >&2; fi
}
trap cleanup EXIT
if [ -z "$BUNDLE_TAR" ]; then
    say "exporting the device bundle of $DEMO on the host"
    # 32 gate puzzles, not the whole validation set: `verify` re-runs the FP16 gate on them, and fp16
    # arithmetic under qemu is slow (the maze bundle's 256-puzzle FP16 gate took over 40 min there).
    .venv/bin/hrm-edge export "$DEMO/model.pt" -o "$WORK/bundle" --target jetson --gate-puzzles 32
    BUNDLE_TAR=$WORK/bundle.tar.gz
fi
BUNDLE_NAME=$(tar -tzf "$BUNDLE_TAR" | awk -F/ 'NR == 1 {print $1}')  # awk reads to the end: no SIGPIPE

# --- per release: root, README commands, assertions ----------------------------------------------------
SUMMARY=()
for release in "${RELEASES[@]}"; do
    mkdir -p "$CACHE" "$CACHE/pip-$release"
    root_tar=$CACHE/root-$release-arm64.tar
    if [ ! -s "$root_tar" ]; then
        say "building the $release arm64 root (mmdebstrap under emulation; once, cached in $root_tar)"
        mmdebstrap --quiet --format=tar --arch=arm64 --variant=apt --include="$ROOT_PACKAGES" --skip=cleanup/apt/lists \
            "$release" "$root_tar.partial" "$MIRROR"
        mv "$root_tar.partial" "$root_tar"
    fi
    say "$release: unpacking the root and the bundle"
    root=$WORK/root-$release
    mkdir -p "$root"
    tar -xf "$root_tar" -C "$root"
    # No /sys: under qemu-user it is the x86 host's, and onnxruntime's cpuinfo segfaults at import reading it
    # beside an x86 /proc/cpuinfo (without it, cpuinfo warns and falls back). A real aarch64 board has its own.
    for m in proc dev root/.cache/pip; do
        mkdir -p "$root/$m"
        case "$m" in
            proc) mount -t proc proc "$root/proc" ;;
            root/.cache/pip) mount --bind "$CACHE/pip-$release" "$root/$m" ;;
            *) mount --rbind "/$m" "$root/$m" ;;
        esac
        MOUNTS+=("$root/$m")
    done
    # The host's network view: its resolver and the CA certificates it trusts (a TLS-inspecting proxy's too).
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    cp "${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}" "$root/etc/ssl/certs/ca-certificates.crt"
    tar -xzf "$BUNDLE_TAR" -C "$root/root"
    {
        echo "set -euxo pipefail"
        echo "cd /root/$BUNDLE_NAME"
        python3 scripts/device_test_readme.py "$root/root/$BUNDLE_NAME/README-device.md"
        cat scripts/device_test_checks.sh
    } > "$root/root/device-steps.sh"
    say "$release: README-device.md's commands (root/device-steps.sh) under emulation"
    t_release=$(date +%s)
    # A clean environment: the host's PIP_*/PYTHON* settings and virtualenv must not leak in.
    chroot "$root" /usr/bin/env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        LANG=C.UTF-8 /bin/bash /root/device-steps.sh 2>&1 | tee "$WORK/$release.log"
    versions=$(grep '^device-test versions:' "$WORK/$release.log" | cut -d: -f2-)
    SUMMARY+=("$release:$versions, $(( $(date +%s) - t_release )) s")
    for (( i=${#MOUNTS[@]}-1; i>=0; i-- )); do umount -l "${MOUNTS[i]}"; done
    MOUNTS=()
done
say "PASS on aarch64 (emulated):"
printf '  %s\n' "${SUMMARY[@]}"
