#!/usr/bin/env bash
# Builds the libvhdi oracle used by the differencing-disk tests: libvhdi-python 20260901 from
# its sdist, with the patches in ops/patches/libvhdi-*.patch applied, installed into a venv
# (ops/.venv by default). Tests then run `ops/.venv/bin/python tests/oracle/vhdi_read.py`.
#
# Why patched: upstream 20260901 misreads VHD differencing sector bitmaps (a missing `& 1`)
# and, for VHDX differencing disks, reads a sector bitmap for blocks that have none (from file
# offset 0 when the chunk's sector bitmap block is absent). See ops/patches/README.md.
#
# Idempotent: a stamp in the venv records the version and the hash of the patches and of this
# recipe; a re-run with the same stamp and an importable pyvhdi does nothing.
#
# Environment:
#   VDREP_LIBVHDI_VENV      where to install (default: ops/.venv)
#   VDREP_LIBVHDI_UNPATCHED=1  build upstream as is (to reproduce its bugs; use another venv)
#   LIBVHDI_SDIST           path of libvhdi_python-20260901.tar.gz (else a cached or
#                           pip-downloaded copy is used)
set -euo pipefail

VERSION=20260901
SDIST_NAME="libvhdi_python-${VERSION}.tar.gz"
SDIST_SHA256=1106dc38ee2009996d6ee07fd8fafc4c851067d4f7a1fe589289ba0647bb31fc
RECIPE=2 # bump when the build steps change

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VDREP_LIBVHDI_VENV:-$ROOT/ops/.venv}"
UNPATCHED="${VDREP_LIBVHDI_UNPATCHED:-0}"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/vdrep/libvhdi"
PYTHON="${PYTHON:-python3}"

for tool in "$PYTHON" gcc make patch tar sha256sum; do
    command -v "$tool" >/dev/null || {
        echo "build-libvhdi: missing $tool (apt-get install build-essential patch python3-venv)" >&2
        exit 1
    }
done

patches=()
if [ "$UNPATCHED" != 1 ]; then
    while IFS= read -r p; do patches+=("$p"); done < <(ls "$ROOT"/ops/patches/libvhdi-*.patch | sort)
fi
stamp="libvhdi-python ${VERSION} recipe ${RECIPE} unpatched=${UNPATCHED} patches=$(
    if [ ${#patches[@]} -gt 0 ]; then cat "${patches[@]}" | sha256sum | cut -d' ' -f1; else echo none; fi
)"

if [ -f "$VENV/.libvhdi-stamp" ] && [ "$(cat "$VENV/.libvhdi-stamp")" = "$stamp" ] &&
    "$VENV/bin/python" -c 'import pyvhdi' 2>/dev/null; then
    echo "build-libvhdi: up to date ($VENV)"
    exit 0
fi

# The sdist: given, cached, the copy in /tmp, or downloaded with pip.
sdist="${LIBVHDI_SDIST:-}"
if [ -z "$sdist" ]; then
    mkdir -p "$CACHE"
    sdist="$CACHE/$SDIST_NAME"
    if [ ! -f "$sdist" ]; then
        if [ -f "/tmp/libvhdi-sdist/$SDIST_NAME" ]; then
            cp "/tmp/libvhdi-sdist/$SDIST_NAME" "$sdist"
        else
            "$PYTHON" -m pip download --quiet --no-deps --no-binary :all: \
                "libvhdi-python==${VERSION}" -d "$CACHE"
        fi
    fi
fi
echo "$SDIST_SHA256  $sdist" | sha256sum --check --quiet || {
    echo "build-libvhdi: $sdist does not have the expected SHA-256 $SDIST_SHA256" >&2
    exit 1
}

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
tar -xzf "$sdist" -C "$work"
src="$work/libvhdi_python-${VERSION}"
for p in "${patches[@]}"; do
    echo "build-libvhdi: applying $(basename "$p")"
    patch -d "$src" -p1 --forward --quiet <"$p"
done

rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
echo "build-libvhdi: compiling (a minute or two)"
if ! "$VENV/bin/pip" install --quiet --disable-pip-version-check "$src" >"$work/pip.log" 2>&1; then
    tail -n 40 "$work/pip.log" >&2
    echo "build-libvhdi: build failed" >&2
    exit 1
fi
"$VENV/bin/python" -c 'import pyvhdi; print("build-libvhdi: pyvhdi", pyvhdi.get_version())'
echo "$stamp" >"$VENV/.libvhdi-stamp"
echo "build-libvhdi: installed into $VENV"
