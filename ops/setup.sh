#!/usr/bin/env bash
# Installs everything vdrep's tests need on a fresh Debian machine of this kind, pinned:
#   - Debian: qemu-utils (qemu-img, qemu-io), libvhdi-utils (vhdiinfo), prometheus (promtool),
#     rsync, socat, zstd, bzip2, iproute2 (ip netns, tc), systemd (systemd-analyze verify of
#     the packaged units), xxd (the README's examples)
#   - crates.io: cargo-nextest (pinned), the test runner
#   - npm: Azurite, pinned in ops/package.json + ops/package-lock.json (`npm ci`)
#   - PyPI: libvhdi-python built from its sdist with the VHD-bitmap fix (ops/build-libvhdi.sh);
#     schemathesis (pinned) in ops/.venv-schemathesis for the sidecar's API property tests
# Idempotent: a second run only checks.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

# Debian packages: name=version. A pinned version that the archive no longer serves (a
# security update replaced it) falls back to the archive's candidate with a warning, so a
# routine Debian update does not break CI.
debs=(
  "qemu-utils="
  "libvhdi-utils=20210425-1+b2"
  "prometheus=2.42.0+ds-5+deb12u1"
  "rsync="
  "socat="
  "zstd="
  "bzip2="
  "iproute2="
  "openssl="
  "systemd="
  "xxd="
)
missing=()
for spec in "${debs[@]}"; do
  name=${spec%%=*}
  dpkg -s "$name" >/dev/null 2>&1 || missing+=("$spec")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  for spec in "${missing[@]}"; do
    name=${spec%%=*}
    ver=${spec#*=}
    if [ -n "$ver" ] && apt-get install -y -qq --no-install-recommends "$name=$ver" >/dev/null; then
      continue
    fi
    [ -n "$ver" ] && echo "setup: warning: $name=$ver not available, installing the archive's candidate"
    apt-get install -y -qq --no-install-recommends "$name" >/dev/null
  done
fi
for tool in qemu-img qemu-io vhdiinfo promtool prometheus rsync socat zstd bunzip2 ip tc openssl \
    systemd-analyze dpkg-deb xxd; do
  command -v "$tool" >/dev/null || { echo "setup: $tool still missing after install" >&2; exit 1; }
done

# qemu >= 10 for the qemu change source's tests (dataplane/qemu: fleecing with a
# snapshot-access node, export bitmaps named by node, qemu-storage-daemon), and libnbd's
# tools (python3-libnbd, nbdinfo) that play the guest. An installed qemu >= 10 is kept as is:
# nothing here installs a version pin, so the archive's older qemu never replaces it.
qemu_major() { qemu-img --version 2>/dev/null | sed -n 's/^qemu-img version \([0-9]*\)\..*/\1/p'; }
if [ "$(qemu_major || true)" = "" ] || [ "$(qemu_major)" -lt 10 ]; then
  if apt-cache policy 2>/dev/null | grep 'a=bookworm-backports' >/dev/null; then
    echo "setup: qemu-img $(qemu_major || echo missing) < 10: installing qemu-utils from bookworm-backports"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-utils >/dev/null
  fi
  if [ "$(qemu_major || true)" = "" ] || [ "$(qemu_major)" -lt 10 ]; then
    echo "setup: qemu >= 10 is required (found $(qemu_major || echo none)): enable bookworm-backports and run apt-get install -t bookworm-backports qemu-utils" >&2
    exit 1
  fi
fi
command -v qemu-storage-daemon >/dev/null || { echo "setup: qemu-storage-daemon missing (qemu-utils >= 10 ships it)" >&2; exit 1; }
nbd_missing=()
for p in python3-libnbd libnbd-bin; do dpkg -s "$p" >/dev/null 2>&1 || nbd_missing+=("$p"); done
if [ ${#nbd_missing[@]} -gt 0 ]; then
  echo "setup: installing ${nbd_missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${nbd_missing[@]}" >/dev/null
fi
command -v nbdinfo >/dev/null || { echo "setup: nbdinfo still missing after install" >&2; exit 1; }

# cargo-nextest, the test runner ops/test.sh uses, pinned (built from crates.io if missing).
nextest_version=0.9.143
if ! cargo nextest --version 2>/dev/null | grep "^cargo-nextest $nextest_version" >/dev/null; then
  echo "setup: installing cargo-nextest $nextest_version"
  cargo install --locked --quiet "cargo-nextest@$nextest_version"
fi

# Azurite, exactly as locked.
if [ ! -x "$here/node_modules/.bin/azurite-blob" ] || [ "$here/package-lock.json" -nt "$here/node_modules/.package-lock.json" ]; then
  echo "setup: installing Azurite (npm ci)"
  (cd "$here" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error)
fi

# libvhdi-python with the bitmap fix, the independent reader for differencing fixtures.
if [ -f "$here/build-libvhdi.sh" ]; then
  bash "$here/build-libvhdi.sh"
fi
# schemathesis: a property-based client generated from the sidecar's OpenAPI description.
schemathesis_version=4.32.5
venv="$here/.venv-schemathesis"
if ! "$venv/bin/st" --version 2>/dev/null | grep -q "$schemathesis_version"; then
  echo "setup: installing schemathesis $schemathesis_version into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$schemathesis_version"
fi
echo "setup: ok"
