#!/usr/bin/env bash
# Runs the fuzz targets of tests/fuzz one after another, each for a time or a number of
# executions (whichever comes first), and fails on the first crash, naming its input.
#   bash tests/fuzz/run.sh                    # the long suite's short run: 20 s per target
#   bash tests/fuzz/run.sh 1800 10000000      # the campaign: 30 min or 10 M executions each
#   bash tests/fuzz/run.sh 60 0 hidx ranges   # some targets only (0 = no execution limit)
# Set-up of the fuzz run (not of the main suite): cargo-fuzz 0.13.1 is installed from
# crates.io when missing; the targets need a nightly toolchain (`rustup toolchain install
# nightly`), or RUSTC_BOOTSTRAP=1 with the stable one when no nightly is installed.
# Corpora stay in tests/fuzz/corpus/TARGET (git-ignored) and grow from run to run; a
# summary line per target (executions, seconds, coverage, corpus) goes to stdout.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-20}
runs=${2:-0}
shift $(($# > 2 ? 2 : $#))

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz is missing: installing 0.13.1 from crates.io" >&2
  cargo install cargo-fuzz --version 0.13.1 --locked
fi
tc=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  tc=(+nightly)
else
  echo "no nightly toolchain (rustup toolchain install nightly): using RUSTC_BOOTSTRAP=1" >&2
  export RUSTC_BOOTSTRAP=1
fi

if [ $# -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(cargo "${tc[@]}" fuzz list); fi
# Release with debug assertions and overflow checks, AddressSanitizer (cargo-fuzz defaults).
cargo "${tc[@]}" fuzz build

# Seeds that select the patch modes of the image and store targets (see README.md).
seed() { mkdir -p "corpus/$1"; [ -n "$(ls -A "corpus/$1")" ] || for b in "${@:2}"; do printf "$b" >"corpus/$1/seed-${b//\\/}"; done; }
seed vhdx_open '\x00' '\x01' '\x02' '\x03'
seed hrl_open '\x00' '\x01' '\x02'
seed local_state '\x00' '\x01' '\x02' '\x03'
seed undo_log '\x00' '\x01'
seed hidx '\x01' '\x02' '\x03'

mkdir -p logs
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  start=$(date +%s)
  set +e
  "target/x86_64-unknown-linux-gnu/release/$t" "corpus/$t" -artifact_prefix="artifacts/$t/" \
    -max_total_time="$secs" -runs="$([ "$runs" = 0 ] && echo -1 || echo "$runs")" \
    -rss_limit_mb=2048 -print_final_stats=1 >"logs/$t.log" 2>&1
  rc=$?
  set -e
  took=$(($(date +%s) - start))
  done_line=$(grep -E '^#[0-9]+\s+(DONE|pulse|NEW|REDUCE|INITED)' "logs/$t.log" | tail -1)
  execs=$(grep -oE 'stat::number_of_executed_units: [0-9]+' "logs/$t.log" | grep -oE '[0-9]+$' || true)
  echo "$t: rc=$rc execs=${execs:-?} seconds=$took corpus=$(ls "corpus/$t" | wc -l) last: $done_line"
  if [ $rc -ne 0 ]; then
    echo "CRASH in $t: $(grep -oE "artifacts/$t/[^ ]+" "logs/$t.log" | tail -1) (log tests/fuzz/logs/$t.log)" >&2
    tail -40 "logs/$t.log" >&2
    exit 1
  fi
done
