#!/usr/bin/env bash
# tools/bwlimit.sh — does --bwlimit hold? A push and a pull through tools/delayline
# (1 Gbit/s, 50 ms RTT, no loss, MTU 1500), each limited by --bwlimit and sized to take
# about DURATION seconds at the limit. Prints, for each, the rate from the transfer's own
# summary, the steady rate from its --json-log progress objects (the first 3 s, the
# handshake and the first burst, left out), and the rate of the bytes the kernel counted
# on side A's device, against the limit. Run as root; builds what is missing.
#
#   tools/bwlimit.sh                      # RATE=200Mbit DURATION=30
#   RATE=50M DURATION=20 tools/bwlimit.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-200Mbit}
SECONDS_WANTED=${DURATION:-30}
TPC=$PWD/target/release/tpc-xfer
DELAYLINE=$PWD/target/release/tpc-delayline
[ -x "$TPC" ] && [ -x "$DELAYLINE" ] || cargo build --release --quiet --workspace
. tools/need.sh
install_missing python3:python3 ip:iproute2
NS_A=tpcbw-a NS_B=tpcbw-b HOST=10.198.0.2
RUN=$(mktemp -d /tmp/tpc-bwlimit.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del "$NS_A" 2>/dev/null || true
  ip netns del "$NS_B" 2>/dev/null || true
  rm -rf "$RUN"
}
trap cleanup EXIT

# The limit in bytes a second, as tpc-xfer reads it (tpc_core::pace::parse_rate).
limit=$(python3 - "$RATE" <<'EOF'
import re, sys
t = sys.argv[1].strip()
m = re.fullmatch(r'([0-9.]+)([kmgt]?)bit', t, re.I)
if m:
    print(int(float(m[1]) * {'': 1, 'k': 1e3, 'm': 1e6, 'g': 1e9, 't': 1e12}[m[2].lower()] / 8))
elif re.fullmatch(r'[0-9.]+', t):
    print(int(float(t) * 1024))
else:
    m = re.fullmatch(r'([0-9.]+)([kmgt])(i?b)?', t, re.I)
    base = 1000 if m[3] and m[3].lower() == 'b' else 1024
    print(int(float(m[1]) * base ** ('kmgt'.index(m[2].lower()) + 1)))
EOF
)
size_mb=$((limit * SECONDS_WANTED / 1000000))
echo "limit: $RATE = $limit B/s; file: $size_mb MB, about ${SECONDS_WANTED} s at the limit"

"$DELAYLINE" --ns-a "$NS_A" --ns-b "$NS_B" --addr-a 10.198.0.1 --addr-b "$HOST" \
  --delay-ms 25 --loss-pct 0 --rate-mbit 1000 --mtu 1500 --stats "$RUN/delayline.json" \
  2> "$RUN/delayline.log" &
pids+=($!)
for _ in $(seq 100); do [ -f "$RUN/delayline.json" ] && break; sleep 0.1; done
[ -f "$RUN/delayline.json" ] || { cat "$RUN/delayline.log"; exit 1; }
DEV=$(ip -n "$NS_A" -o link show | awk -F': ' '$2 != "lo" {print $2; exit}')
DEV=${DEV%@*}

mkdir -p "$RUN/src" "$RUN/served" "$RUN/pulled" "$RUN/server-state"
chmod 700 "$RUN/server-state"
head -c "$((size_mb * 1000000))" /dev/urandom > "$RUN/src/big"
"$TPC" id --state "$RUN/client-state" > "$RUN/server-state/authorized-clients"
ip netns exec "$NS_B" "$TPC" serve --root "$RUN/served" --listen "$HOST:7470" \
  --state "$RUN/server-state" 2> "$RUN/serve.log" &
pids+=($!)
sleep 1

# Bytes side A's device sent and received so far.
counted() {
  local stats=/sys/class/net/$DEV/statistics
  echo $(($(ip netns exec "$NS_A" cat "$stats/tx_bytes") + $(ip netns exec "$NS_A" cat "$stats/rx_bytes")))
}

# one NAME SRC DST: one limited transfer; prints its three rates.
one() {
  local name=$1 src=$2 dst=$3 before after
  before=$(counted)
  local t0 t1
  t0=$(date +%s.%N)
  ip netns exec "$NS_A" "$TPC" copy --accept-new --state "$RUN/client-state" \
    --bwlimit "$RATE" --fsync never --json-log --stats-every 1 "$src" "$dst" > "$RUN/$name.log"
  t1=$(date +%s.%N)
  after=$(counted)
  python3 - "$RUN/$name.log" "$name" "$limit" "$((after - before))" "$t0" "$t1" <<'EOF'
import json, sys
path, name, limit, wire, t0, t1 = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
lines = [json.loads(l) for l in open(path)]
s = lines[-1]
assert s["type"] == "summary" and s["exit_code"] == 0, s
from datetime import datetime
def at(l):
    return datetime.fromisoformat(l["time"].replace("Z", "+00:00")).timestamp()
prog = [l for l in lines if l["type"] == "progress"]
start = at(prog[0]) if prog else 0
steady = [l for l in prog if at(l) - start >= 3 and l["bytes"] < l["total_bytes"]]
def ratio(r):
    return f"{r / 1e6:8.2f} MB/s  {r / limit:5.3f}x the limit"
print(f"{name}: {s['bytes'] / 1e6:.0f} MB in {s['seconds']:.2f} s")
print(f"  summary (whole run)        {ratio(s['bytes'] / s['seconds'])}")
if len(steady) >= 2:
    a, b = steady[0], steady[-1]
    print(f"  steady ({at(b) - at(a):4.1f} s, json-log)   {ratio((b['bytes'] - a['bytes']) / (at(b) - at(a)))}")
print(f"  interface, both ways       {ratio(wire / (t1 - t0))}  ({wire / 1e6:.0f} MB on the wire)")
EOF
}
one push "$RUN/src/big" "tpc://$HOST:7470/big"
cmp "$RUN/src/big" "$RUN/served/big"
one pull "tpc://$HOST:7470/big" "$RUN/pulled/big"
cmp "$RUN/src/big" "$RUN/pulled/big"
echo "both copies byte-identical"
