# Shared by the *-copy.sh profiles (sourced, not run; the caller shifts its three arguments
# afterwards): from `VDREP_BIN IMAGE OUTDIR` sets bin, img and out (made, absolute), makes a
# temporary work folder with certificates for the sender `prof` (removed on exit, the
# receiver `$rpid` killed), picks a port, and reads the image once so the copy starts warm.
# wait_listening waits for the receiver the caller started in the background.
bin=$(realpath "$1"); img=$(realpath "$2"); out=$3
mkdir -p "$out"; out=$(realpath "$out")
work=$(mktemp -d)
trap 'kill $rpid 2>/dev/null || true; rm -rf "$work"' EXIT
"$bin" certs init "$work/certs" --sender prof --host 127.0.0.1 >/dev/null
port=$((20000 + $$ % 20000))
# Warm: one untimed read first.
cat "$img" >/dev/null

# Waits (60 s at most) until the receiver's stdout, $work/recv.stdout, says it listens.
wait_listening() {
  i=0
  until grep -q "listening on" "$work/recv.stdout" 2>/dev/null; do
    i=$((i + 1)); [ $i -lt 600 ] || { echo "receiver did not start" >&2; exit 1; }; sleep 0.1
  done
}
