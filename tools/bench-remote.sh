#!/usr/bin/env bash
# tools/bench-remote.sh — loopback remote-transfer benchmark: tpc-xfer push against scp,
# rsync over ssh and the rsync daemon, all client and server on 127.0.0.1, side by side in
# one run, with the iperf3 TCP figure as the ceiling. Median of N runs (hyperfine), page
# cache warm, plus whole-machine CPU seconds per GiB (both ends share the machine). Prints
# markdown tables ready for PERFORMANCE.md; raw hyperfine JSON goes to
# $BENCH_DIR/results/<date>-<commit>/.
#
# Run as root on Debian (installs openssh-server, rsync, iperf3, hyperfine, ... if missing;
# note that installing openssh-server may enable the system's own sshd on port 22 — this
# harness never uses it, it starts a private one on SSH_PORT):
#
#   tools/bench-remote.sh                                  # everything, 5 runs each
#   RUNS=7 PARTS="big" tools/bench-remote.sh               # only the 2 GiB file
#   TOOLS="scp rsync-ssh rsyncd" tools/bench-remote.sh     # peers only, no tpc-xfer
#   RUNS=1 BIG_MB=64 SMALL_COUNT=500 SETTLE=0 tools/bench-remote.sh   # smoke test
#
# Knobs (environment):
#   RUNS=5            hyperfine --runs per tool
#   BENCH_DIR=/var/tmp/tpc-bench-remote   datasets, destinations, results (no spaces)
#   SETTLE=70         seconds to wait after mass deletes (see "ext4 without a journal" in
#                     PERFORMANCE.md)
#   PARTS="ceiling big small rerun"       ceiling = iperf3; big = one BIG_MB file;
#                     small = SMALL_COUNT files of 8 KiB; rerun = unchanged small tree again
#   TOOLS="tpc tpc-never scp rsync-ssh rsyncd floor floor-never floor-bare"   (also:
#                     tpc-cubic, tpc-bbr: tpc-xfer with quinn-proto's own congestion
#                     controllers instead of the default; tpc-tcp: over TCP + TLS
#                     instead of QUIC). floor, floor-never: the small
#                     part only, tools/fs-floor.c copying the tree locally with one thread
#                     per core, durable or not: what this filesystem allows any faithful
#                     copy at best; floor-bare: the same without temporary names, renames,
#                     modes or mtimes (no tool may copy so). In the big part, floor is
#                     benches/per_byte.rs (criterion): each piece of work a pushed byte
#                     needs (BLAKE3 twice, AES-GCM both ways, two copies, UDP through the
#                     kernel) timed alone, added up and spread over every core: the time
#                     under which no protocol on tpc-xfer's data path can push the file
#                     (loopback only; built once in BENCH_DIR/target)
#   BIG_MB=2048  SMALL_COUNT=20000        dataset sizes (generated once, then reused)
#   TPC=target/release/tpc-xfer           built with cargo only if missing
#   SSH_PORT=2222 RSYNC_PORT=8873 IPERF_PORT=5299 TPC_PORT=7440
#   IPERF_BYTES=2G    bytes per iperf3 run (loopback)
#   NET=loopback      loopback: client and server on 127.0.0.1.
#                     lan: two network namespaces joined by a veth pair (MTU 9000, no
#                     impairment); wan: two namespaces joined by tools/delayline with
#                     DELAY_MS one-way delay (RTT = 2x), LOSS_PCT random loss and RATE_MBIT
#                     rate limit each way, at MTU (default 1500). Servers run in the B
#                     namespace, clients in A. The report then starts with the path's
#                     calibration (ping RTT, iperf3 rate at zero loss, loss applied).
#   DELAY_MS=25 LOSS_PCT=0 RATE_MBIT=1000 MTU=1500 IPERF_SECONDS=10   (lan/wan)
#
# Takes roughly 15-25 minutes with the defaults on the 2-core dev VM, about 6 of them
# SETTLE waits. Everything it starts is stopped and every destination removed when it exits
# (also on error or Ctrl-C); the datasets under $BENCH_DIR/data are kept for the next run.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-5}
BENCH_DIR=${BENCH_DIR:-/var/tmp/tpc-bench-remote}
SETTLE=${SETTLE:-70}
PARTS=${PARTS:-ceiling big small rerun}
TOOLS=${TOOLS:-tpc tpc-never scp rsync-ssh rsyncd floor floor-never floor-bare}
BIG_MB=${BIG_MB:-2048}
SMALL_COUNT=${SMALL_COUNT:-20000}
TPC=${TPC:-$PWD/target/release/tpc-xfer}
SSH_PORT=${SSH_PORT:-2222}
RSYNC_PORT=${RSYNC_PORT:-8873}
IPERF_PORT=${IPERF_PORT:-5299}
TPC_PORT=${TPC_PORT:-7440}
IPERF_BYTES=${IPERF_BYTES:-2G}
NET=${NET:-loopback}
DELAY_MS=${DELAY_MS:-25}
LOSS_PCT=${LOSS_PCT:-0}
RATE_MBIT=${RATE_MBIT:-1000}
MTU=${MTU:-1500}
IPERF_SECONDS=${IPERF_SECONDS:-10}
# Where the servers listen, and the prefixes that put a server or client command into its
# namespace (empty on loopback).
HOST=127.0.0.1 SRV="" CLI=""
NS_A=tpcwan-a NS_B=tpcwan-b
case $NET in
  loopback) ;;
  lan | wan) HOST=10.199.0.2 SRV="ip netns exec $NS_B" CLI="ip netns exec $NS_A" ;;
  *) echo "bench-remote: NET must be loopback, lan or wan" >&2; exit 1 ;;
esac
CIPHER=aes128-gcm@openssh.com # the fastest OpenSSH cipher with AES-NI: scp at its best

SMALL_FILE_BYTES=8192
SMALL_PER_DIR=100
BIG_BYTES=$((BIG_MB * 1024 * 1024))
SMALL_BYTES=$((SMALL_COUNT * SMALL_FILE_BYTES))

die() { echo "bench-remote: $*" >&2; exit 1; }
say() { echo "$*" >&2; }
has() { [[ " $2 " == *" $1 "* ]]; } # has WORD "LIST"
part_on() { has "$1" "$PARTS"; }
tool_on() { has "$1" "$TOOLS"; }

# ---------------------------------------------------------------------------------------
# Preconditions and packages

[ "$(id -u)" = 0 ] || die "run as root (it starts sshd and logs in as root over loopback)"
[[ $BENCH_DIR != *[[:space:]]* ]] || die "BENCH_DIR must not contain spaces"

install_missing() {
  local need=() pair
  for pair in /usr/sbin/sshd:openssh-server ssh:openssh-client scp:openssh-client \
    rsync:rsync iperf3:iperf3 hyperfine:hyperfine python3:python3 ss:iproute2 \
    cmp:diffutils diff:diffutils getconf:libc-bin cc:gcc ping:iputils-ping; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair##*:}")
  done
  if [ ${#need[@]} -gt 0 ]; then
    say "installing: ${need[*]}"
    # noninteractive: iperf3's package would otherwise ask whether to run a daemon.
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
}
install_missing

# Build only when there is no binary: the machine is shared and a rebuild is not ours to
# start. Check that this binary has the remote commands before spending any time.
tpc_on() { tool_on tpc || tool_on tpc-never || tool_on tpc-cubic || tool_on tpc-bbr || tool_on tpc-tcp; }
if tpc_on; then
  [ -x "$TPC" ] || cargo build --release --quiet
  "$TPC" serve --help >/dev/null 2>&1 ||
    die "$TPC has no 'serve' command; rebuild it, or leave tpc and tpc-never out of TOOLS"
fi

# The big file's floor (benches/per_byte.rs) builds in a target directory of its own, so
# that cargo never rebuilds the binary under test, and builds before anything is timed.
PER_BYTE_TARGET=$BENCH_DIR/target
if tool_on floor && part_on big && [ "$NET" = loopback ]; then
  CARGO_TARGET_DIR=$PER_BYTE_TARGET cargo bench --quiet --no-run --bench per_byte ||
    die "cannot build benches/per_byte.rs"
fi

DATA=$BENCH_DIR/data
DST=$BENCH_DIR/dst # every server writes here: sshd, rsync daemon module, tpc-xfer root
BIG=$DATA/random-${BIG_MB}m
SMALL=$DATA/small-$SMALL_COUNT
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
RES=$BENCH_DIR/results/$(date +%Y%m%d-%H%M%S)-$COMMIT
mkdir -p "$DATA" "$RES"
RUN=$(mktemp -d "$BENCH_DIR/run.XXXXXX") # keys, configs, pids, logs: removed on exit
SEQ=$RUN/seq # last destination number handed out; see NEXT_NAME below
echo 0 > "$SEQ"
# ---------------------------------------------------------------------------------------
# Cleanup: stop what we started (by pid), remove state and destinations.

pids=()
made_run_sshd=0
cleanup() {
  local rc=$? pid log
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "$rc" != 0 ] && [ -d "$RUN" ]; then
    for log in "$RUN"/*.log; do
      [ -s "$log" ] && { say "--- tail of $log"; tail -n 5 "$log" >&2; }
    done
  fi
  [ "$NET" = lan ] && { ip netns del "$NS_A" 2>/dev/null; ip netns del "$NS_B" 2>/dev/null; }
  rm -rf "$RUN" "$DST"
  [ "$made_run_sshd" = 1 ] && rmdir /run/sshd 2>/dev/null
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

FLOOR=$RUN/fs-floor
if tool_on floor || tool_on floor-never || tool_on floor-bare; then
  cc -O2 -pthread -o "$FLOOR" tools/fs-floor.c || die "cannot build tools/fs-floor.c"
fi

# ---------------------------------------------------------------------------------------
# Disk space, destinations and the ext4 settle

# ext4 without a journal (as on the dev VM) skips inodes freed in the last 60 s when it
# allocates, rescanning them for every new file. So deletes never happen right before a
# timed group: every run writes a fresh name, earlier destinations are deleted between
# groups, and the next group first waits SETTLE seconds.
dirty=0
clear_dests() { # clear_dests GLOB...: delete earlier destinations (keeps disk bounded)
  local g
  # shellcheck disable=SC2086 # the glob is meant to expand
  for g in "$@"; do rm -rf "${DST:?}"/$g; done
  dirty=1
}
settle() {
  [ "$dirty" = 1 ] || return 0
  sync
  say "  waiting ${SETTLE}s after deletes (ext4 inode reuse, see PERFORMANCE.md)"
  sleep "$SETTLE"
  dirty=0
}

# A destination left by a killed run: remove it, and let the first group settle.
if [ -e "$DST" ]; then rm -rf "$DST"; dirty=1; fi
mkdir -p "$DST"

check_space() {
  # Datasets + the destinations alive at once (two big files, RUNS+1 small trees) stay
  # under 3x the dataset size; datasets already on disk count as available.
  local need have=0 avail
  need=$((3 * (BIG_BYTES + SMALL_BYTES)))
  [ -f "$BIG" ] && have=$((have + $(stat -c %s "$BIG")))
  [ -d "$SMALL" ] && have=$((have + $(du -sb "$SMALL" | cut -f1)))
  avail=$(df -B1 --output=avail "$BENCH_DIR" | tail -n1)
  have=$((have + avail))
  [ "$have" -ge "$need" ] || die "need $((need >> 30)) GiB free under $BENCH_DIR, have \
$((avail >> 30)) GiB; lower BIG_MB / SMALL_COUNT or set BENCH_DIR elsewhere"
}
check_space

# ---------------------------------------------------------------------------------------
# Datasets (generated once, reused; named by size so a smoke run never replaces them)

make_datasets() {
  # tools/gen-dataset.py: deterministic bytes from a seed, kept once complete.
  local want=()
  part_on big && want+=("random-${BIG_MB}m")
  { part_on small || part_on rerun; } && want+=("small-$SMALL_COUNT")
  [ ${#want[@]} -gt 0 ] || return 0
  [ -e "$SMALL" ] && [ ! -f "$SMALL.complete" ] && dirty=1 # a half-made tree goes
  python3 tools/gen-dataset.py "$DATA" "${want[@]}"
}
make_datasets

# Read a dataset once so every tool starts with it in the page cache.
warm() { if [ -d "$1" ]; then find "$1" -type f -exec cat {} + > /dev/null; else cat "$1" > /dev/null; fi; }

# ---------------------------------------------------------------------------------------
# Peers. Each daemon runs in the foreground of a background job so that $! is its pid.

# wait_port tcp|udp PORT PID NAME: wait until the daemon's socket is bound (none of them
# says reliably when it is ready), failing early if it died.
wait_port() {
  local proto=$1 port=$2 pid=$3 name=$4 i
  for i in $(seq 200); do
    [ -n "$($SRV ss -Hln --"$proto" "sport = :$port")" ] && return 0
    kill -0 "$pid" 2>/dev/null || die "$name exited at start (log in $RUN)"
    sleep 0.1
  done
  die "$name did not bind port $port within 20 s"
}
port_free() { # port_free tcp|udp PORT KNOB
  [ -z "$($SRV ss -Hln --"$1" "sport = :$2")" ] || die "port $2 already in use; set $3"
}

start_sshd() {
  port_free tcp "$SSH_PORT" SSH_PORT
  ssh-keygen -q -t ed25519 -N '' -f "$RUN/host_key"
  ssh-keygen -q -t ed25519 -N '' -f "$RUN/client_key"
  cp "$RUN/client_key.pub" "$RUN/authorized_keys"
  local sftp=/usr/lib/openssh/sftp-server # Debian's default; scp uses SFTP since 9.0
  [ -x "$sftp" ] || sftp=internal-sftp
  # StrictModes no: the key files sit under /var/tmp (world-writable), which strict mode
  # refuses; this sshd only listens on 127.0.0.1 and only for the run.
  cat > "$RUN/sshd_config" <<EOF
Port $SSH_PORT
ListenAddress $HOST
HostKey $RUN/host_key
PidFile $RUN/sshd.pid
AuthorizedKeysFile $RUN/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
Subsystem sftp $sftp
EOF
  cat > "$RUN/ssh_config" <<EOF
Host bench
  HostName $HOST
  Port $SSH_PORT
  User root
  IdentityFile $RUN/client_key
  IdentitiesOnly yes
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  BatchMode yes
  LogLevel ERROR
EOF
  # sshd refuses to start without its privilege-separation directory.
  [ -d /run/sshd ] || { mkdir -m 755 /run/sshd; made_run_sshd=1; }
  $SRV /usr/sbin/sshd -D -e -f "$RUN/sshd_config" 2> "$RUN/sshd.log" &
  pids+=($!)
  wait_port tcp "$SSH_PORT" "$!" sshd
  $CLI ssh -F "$RUN/ssh_config" bench true || die "cannot log in to the bench sshd"
}

start_rsyncd() {
  port_free tcp "$RSYNC_PORT" RSYNC_PORT
  cat > "$RUN/rsyncd.conf" <<EOF
use chroot = no
log file = $RUN/rsyncd.log
[bench]
  path = $DST
  read only = no
  uid = root
  gid = root
EOF
  $SRV rsync --daemon --no-detach --config="$RUN/rsyncd.conf" --address=$HOST \
    --port="$RSYNC_PORT" &
  pids+=($!)
  wait_port tcp "$RSYNC_PORT" "$!" "rsync daemon"
}

start_iperf3() {
  port_free tcp "$IPERF_PORT" IPERF_PORT
  $SRV iperf3 -s -B $HOST -p "$IPERF_PORT" > "$RUN/iperf3.log" 2>&1 &
  pids+=($!)
  wait_port tcp "$IPERF_PORT" "$!" "iperf3 server"
}

TPC_SERVER=$RUN/tpc-server-state
TPC_CLIENT=$RUN/tpc-client-state
start_tpc() {
  port_free udp "$TPC_PORT" TPC_PORT
  mkdir -m 700 "$TPC_SERVER" # the client's state dir is made by `tpc-xfer id`
  # Authorise the client before the server starts: its first line is the fingerprint.
  local fp
  fp=$("$TPC" id --state "$TPC_CLIENT")
  fp=${fp%%$'\n'*}
  [[ $fp == tpc1:* ]] || die "tpc-xfer id printed '$fp', expected a tpc1: fingerprint"
  echo "$fp" >> "$TPC_SERVER/authorized-clients"
  $SRV "$TPC" serve --root "$DST" --listen "$HOST:$TPC_PORT" --state "$TPC_SERVER" \
    2> "$RUN/tpc-serve.log" &
  pids+=($!)
  wait_port udp "$TPC_PORT" "$!" "tpc-xfer serve"
  # Trust on first use, once and untimed, so the timed runs only ever see a known server.
  echo probe > "$RUN/probe"
  $CLI "$TPC" copy -q --accept-new --state "$TPC_CLIENT" "$RUN/probe" \
    "tpc://$HOST:$TPC_PORT/.probe"
  cmp -s "$RUN/probe" "$DST/.probe" || die "tpc-xfer probe push did not arrive intact"
  rm -f "$DST/.probe"
}

# ---------------------------------------------------------------------------------------
# Measuring

CLK_TCK=$(getconf CLK_TCK)
# Busy ticks of the whole machine so far. guest time is already inside user; iowait and
# idle are not work.
busy_jiffies() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8; exit }' /proc/stat; }

# cpu_run NAME CMD: run CMD once (sh, as hyperfine does) and write the machine's busy
# ticks during it to $RES/NAME.cpu as "ticks CLK_TCK". Client and server share the
# machine, so this is both ends together — and anything else running (keep it quiet).
# Writeback the kernel does after CMD returns is not counted.
cpu_run() {
  local before after
  before=$(busy_jiffies)
  sh -c "$2"
  after=$(busy_jiffies)
  echo "$((after - before)) $CLK_TCK" > "$RES/$1.cpu"
}

# The CPU figures count everything the machine runs, so look first whether it is quiet.
background_cores() {
  local before after
  before=$(busy_jiffies)
  sleep 3
  after=$(busy_jiffies)
  awk -v t=$((after - before)) -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", t / hz / 3 }'
}
BACKGROUND=$(background_cores)
awk -v b="$BACKGROUND" 'BEGIN { exit !(b > 0.2) }' &&
  say "warning: $BACKGROUND cores busy before the run; times and CPU figures will be noisy"

# push_cmd TOOL SRC NAME: the command that pushes SRC to NAME under the servers' DST
# (rsync's trailing-slash rule everywhere: SRC/ copies a directory's contents).
push_cmd() {
  local tool=$1 src=$2 name=$3
  case $tool in
    scp) echo "$CLI scp -q -r -F $RUN/ssh_config -c $CIPHER $src bench:$DST/$name" ;;
    rsync-ssh) echo "$CLI rsync -a -e 'ssh -F $RUN/ssh_config -c $CIPHER' $src bench:$DST/$name" ;;
    rsyncd) echo "$CLI rsync -a $src rsync://$HOST:$RSYNC_PORT/bench/$name" ;;
    tpc) echo "$CLI $TPC copy -q --state $TPC_CLIENT $src tpc://$HOST:$TPC_PORT/$name" ;;
    tpc-never) echo "$CLI $TPC copy -q --fsync never --state $TPC_CLIENT $src tpc://$HOST:$TPC_PORT/$name" ;;
    # quinn-proto's Cubic instead of the default controller, to show the difference.
    tpc-cubic) echo "$CLI $TPC copy -q --fsync never --congestion cubic --state $TPC_CLIENT $src tpc://$HOST:$TPC_PORT/$name" ;;
    tpc-bbr) echo "$CLI $TPC copy -q --fsync never --congestion bbr --state $TPC_CLIENT $src tpc://$HOST:$TPC_PORT/$name" ;;
    # The same over TCP + TLS 1.3 instead of QUIC (the kernel's congestion control).
    tpc-tcp) echo "$CLI $TPC copy -q --fsync never --transport tcp --state $TPC_CLIENT $src tpc://$HOST:$TPC_PORT/$name" ;;
    # Local, no network: what the filesystem allows (durable like tpc, or not).
    floor) echo "$FLOOR $src $DST/$name $(nproc) 1 > /dev/null" ;;
    floor-never) echo "$FLOOR $src $DST/$name $(nproc) 0 > /dev/null" ;;
    floor-bare) echo "$FLOOR $src $DST/$name $(nproc) 0 bare > /dev/null" ;;
    *) die "unknown tool '$tool' in TOOLS" ;;
  esac
}

# Fresh destination names: the prepare step bumps the counter in $SEQ, the timed command
# reads it with the shell builtin `read` (no extra process inside the timed region) and
# writes NAME.$n. sync first so no run pays for the previous run's writeback.
NEXT_NAME="sync; read n < $SEQ; echo \$((n + 1)) > $SEQ"
PICK="read n < $SEQ; "

# verify SRC DEST: the copy must equal the source byte for byte — a benchmark of a wrong
# copy is worthless. (Content only: scp keeps neither modes nor mtimes.)
verify() {
  if [ -d "$1" ]; then
    diff -rq "$1" "$2" > "$RUN/diff.out" ||
      die "$2 differs from $1: $(head -n 3 "$RUN/diff.out")"
  else
    cmp "$1" "$2" || die "$2 differs from $1"
  fi
}

# measure PART TOOL SRC NAME PREPARE: one untimed run (checked for correctness; its CPU
# time is the CPU figure), then RUNS timed runs. NAME may contain $n (fresh names).
measure() {
  local part=$1 tool=$2 src=$3 name=$4 prepare=$5 cmd
  cmd=$(push_cmd "$tool" "$src" "$name")
  # shellcheck disable=SC2016 # a literal $n, expanded by sh at run time
  [[ $name == *'$n'* ]] && cmd=$PICK$cmd
  warm "$src"
  sh -c "$prepare"
  if [[ $tool == tpc* ]]; then
    # The untimed run also keeps tpc-xfer's --json summary: per-chunk latency, path.
    cpu_run "$part-$tool" "${cmd/copy -q/copy -q --json} > $RES/$part-$tool.summary.json"
  else
    cpu_run "$part-$tool" "$cmd"
  fi
  # shellcheck disable=SC2016
  verify "$src" "$DST/${name//'$n'/$(< "$SEQ")}"
  hyperfine --style none --runs "$RUNS" --prepare "$prepare" --command-name "$tool" \
    --export-json "$RES/$part-$tool.json" "$cmd" > /dev/null
  say "  $tool: median $(python3 -c 'import json,sys; print("%.3f" % json.load(open(sys.argv[1]))["results"][0]["median"])' "$RES/$part-$tool.json") s"
}

# ---------------------------------------------------------------------------------------
# Parts

part_ceiling() {
  local i cc cmd
  if [ "$NET" = loopback ]; then
    say "== iperf3 TCP ceiling (one stream, $IPERF_BYTES)"
    cmd=(iperf3 -c 127.0.0.1 -p "$IPERF_PORT" -n "$IPERF_BYTES" --json)
    cpu_run iperf3 "${cmd[*]} > $RES/iperf3-cpu.json"
    for i in $(seq "$RUNS"); do "${cmd[@]}" > "$RES/iperf3-$i.json"; done
    return
  fi
  # On an emulated path, what TCP gets with each congestion control: timed, not sized,
  # since Cubic under loss may move little.
  # The iperf3 server takes a moment between tests and refuses a client that comes too
  # soon ("Connection refused"): such a run is tried again, up to three times.
  for cc in cubic bbr; do
    say "== iperf3 TCP $cc, one stream, ${IPERF_SECONDS}s"
    for i in $(seq "$RUNS"); do
      for try in 1 2 3; do
        $CLI iperf3 -c "$HOST" -p "$IPERF_PORT" -t "$IPERF_SECONDS" -C "$cc" --json \
          > "$RES/iperf3-$cc-$i.json" && break
        say "   iperf3 $cc run $i failed (try $try): $(grep -o '"error":.*' "$RES/iperf3-$cc-$i.json" || true)"
        sleep 1
      done
    done
  done
}

# ---------------------------------------------------------------------------------------
# The path: namespaces joined by a veth pair (lan) or by tools/delayline (wan)

DELAYLINE=${DELAYLINE:-$PWD/target/release/tpc-delayline}
delayline_pid=""
# start_delayline LOSS: the wan path with the given loss, up once its stats file appears.
start_delayline() {
  rm -f "$RUN/delayline.json"
  "$DELAYLINE" --ns-a "$NS_A" --ns-b "$NS_B" --addr-b "$HOST" --delay-ms "$DELAY_MS" \
    --loss-pct "$1" --rate-mbit "$RATE_MBIT" --mtu "$MTU" --stats "$RUN/delayline.json" \
    2> "$RUN/delayline.log" &
  delayline_pid=$!
  pids+=("$delayline_pid")
  local i
  for i in $(seq 100); do
    [ -f "$RUN/delayline.json" ] && return 0
    kill -0 "$delayline_pid" 2>/dev/null || die "tpc-delayline failed: $(cat "$RUN/delayline.log")"
    sleep 0.1
  done
  die "tpc-delayline did not come up"
}
stop_delayline() {
  kill "$delayline_pid"
  wait "$delayline_pid" || true
  pids=("${pids[@]/$delayline_pid/}") # reaped: cleanup must not signal its pid again
}

make_lan() {
  local ns
  for ns in "$NS_A" "$NS_B"; do
    ip netns del "$ns" 2>/dev/null || true
    ip netns add "$ns"
    ip -n "$ns" link set lo up
  done
  ip link add tpcwan-va netns "$NS_A" mtu 9000 type veth peer name tpcwan-vb netns "$NS_B" mtu 9000
  ip -n "$NS_A" addr add 10.199.0.1/24 dev tpcwan-va
  ip -n "$NS_B" addr add "$HOST/24" dev tpcwan-vb
  ip -n "$NS_A" link set tpcwan-va up
  ip -n "$NS_B" link set tpcwan-vb up
}

# calibrate: what the path really does, measured with ping and iperf3 at zero loss (the
# delay line is restarted without loss for it), printed beside every table.
calibrate() {
  say "== calibrating the path"
  [ "$NET" = wan ] && start_delayline 0
  $CLI ping -q -c 20 -i 0.05 "$HOST" > "$RUN/ping.txt"
  $SRV iperf3 -s -1 -B "$HOST" -p "$IPERF_PORT" > /dev/null 2>&1 &
  local srv=$!
  wait_port tcp "$IPERF_PORT" "$srv" "iperf3 calibration server"
  $CLI iperf3 -c "$HOST" -p "$IPERF_PORT" -t "$IPERF_SECONDS" -O 2 --json > "$RES/calibration-iperf3.json"
  wait "$srv" || true
  cp "$RUN/ping.txt" "$RES/calibration-ping.txt"
  [ "$NET" = wan ] && stop_delayline
  return 0
}

# per_byte_floor: runs benches/per_byte.rs, its results under $RES/criterion, and keeps
# each piece's median time and bytes in $RES/per-byte.json for the report's floor row,
# since the report reads them after everything else has run.
per_byte_floor() {
  if [ "$NET" != loopback ]; then
    say "  floor: none for the big file on $NET (the per-byte floor is loopback's)"
    return
  fi
  say "  floor: the per-byte work alone (cargo bench --bench per_byte)"
  CARGO_TARGET_DIR=$PER_BYTE_TARGET CRITERION_HOME=$RES/criterion \
    cargo bench --quiet --bench per_byte -- --noplot \
    > "$RES/per-byte.txt" 2>&1 || die "benches/per_byte.rs failed: see $RES/per-byte.txt"
  python3 - "$RES" <<'PY'
import glob, json, os, sys
R = sys.argv[1]
out = {}
for d in glob.glob(f"{R}/criterion/per_byte/*/new"):
    b = json.load(open(f"{d}/benchmark.json"))
    e = json.load(open(f"{d}/estimates.json"))
    out[b["function_id"]] = {"ns": e["median"]["point_estimate"], "bytes": b["throughput"]["Bytes"]}
json.dump(out, open(f"{R}/per-byte.json", "w"), indent=1)
PY
}

part_big() {
  say "== one $BIG_MB MiB file"
  # One earlier file deleted per run: few inodes, so no settle needed.
  local tool prepare="rm -rf $DST/big-* $DST/.big-*; $NEXT_NAME"
  settle # only if a killed run's leftovers were just removed
  for tool in $TOOLS; do
    case $tool in
      floor) per_byte_floor ;;
      floor-*) ;;
      *) measure big "$tool" "$BIG" "big-$tool.\$n" "$prepare" ;;
    esac
  done
  rm -rf "${DST:?}"/big-*
}

part_small() {
  say "== $SMALL_COUNT files of 8 KiB"
  local tool
  for tool in $TOOLS; do
    settle
    measure small "$tool" "$SMALL/" "small-$tool.\$n" "$NEXT_NAME"
    clear_dests "small-*"
  done
}

part_rerun() {
  say "== rerun on the unchanged $SMALL_COUNT-file tree"
  # No settle: a rerun allocates no inodes, so the small part's deletes cannot slow it.
  sync
  # Destinations that already hold the tree, made untimed: by tpc-xfer for tpc-xfer, by
  # one rsync transport for both (the same tree and metadata either way).
  local tool rsync_base=rsyncd
  tool_on rsyncd || rsync_base=rsync-ssh
  for tool in $TOOLS; do
    case $tool in
      tpc) sh -c "$(push_cmd tpc "$SMALL/" same-tpc)" ;;
      rsyncd | rsync-ssh) [ -d "$DST/same-rsync" ] ||
        sh -c "$(push_cmd "$rsync_base" "$SMALL/" same-rsync)" ;;
    esac
  done
  for tool in $TOOLS; do
    case $tool in
      tpc) measure rerun tpc "$SMALL/" same-tpc sync ;;
      rsyncd | rsync-ssh) measure rerun "$tool" "$SMALL/" same-rsync sync ;;
      tpc-never) say "  tpc-never: no rerun (writes nothing, same as tpc)" ;;
      floor*) ;;
      *) say "  $tool: no rerun (cannot skip unchanged files)" ;;
    esac
  done
  clear_dests "same-*"
}

# ---------------------------------------------------------------------------------------
# Main

if [ "$NET" = wan ]; then
  [ -x "$DELAYLINE" ] || cargo build --release --quiet -p tpc-delayline
  calibrate
  start_delayline "$LOSS_PCT"
elif [ "$NET" = lan ]; then
  make_lan
  calibrate
fi
part_on ceiling && start_iperf3
if part_on big || part_on small || part_on rerun; then
  { tool_on scp || tool_on rsync-ssh; } && start_sshd
  tool_on rsyncd && start_rsyncd
  tpc_on && start_tpc
fi

part_on ceiling && part_ceiling
part_on big && part_big
part_on small && part_small
part_on rerun && part_rerun
if [ "$NET" = wan ]; then
  stop_delayline # its last counters: the loss it applied during the whole run
  cp "$RUN/delayline.json" "$RES/delayline.json"
fi

# ---------------------------------------------------------------------------------------
# Report (stdout, also saved as $RES/report.md)

dirty_tree=""
[ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] &&
  dirty_tree=" (working tree had uncommitted changes)"
tpc_version="tpc-xfer not run"
if tpc_on; then tpc_version=$("$TPC" --version); fi
{
  case $NET in
    loopback) echo "## Loopback remote transfer"; netenv="" ;;
    lan) echo "## LAN: veth pair, MTU 9000, no impairment"; netenv="NET=lan " ;;
    wan) echo "## WAN: ${RATE_MBIT} Mbit/s, $((2 * DELAY_MS)) ms RTT, ${LOSS_PCT}% loss, MTU $MTU"
      netenv="NET=wan DELAY_MS=$DELAY_MS LOSS_PCT=$LOSS_PCT RATE_MBIT=$RATE_MBIT MTU=$MTU " ;;
  esac
  echo
  echo "Command: \`${netenv}RUNS=$RUNS PARTS=\"$PARTS\" TOOLS=\"$TOOLS\" BIG_MB=$BIG_MB" \
    "SMALL_COUNT=$SMALL_COUNT tools/bench-remote.sh\`"
  echo "Commit $COMMIT$dirty_tree, $(date -u '+%Y-%m-%d %H:%M UTC'), nproc $(nproc)," \
    "kernel $(uname -r). Client and server on the same machine ($NET: servers on $HOST);" \
    "$BACKGROUND cores were busy with other work just before the run."
  echo "Versions: $tpc_version; $(ssh -V 2>&1 | cut -d, -f1); $(rsync --version | head -n1 |
    awk '{print "rsync " $3}'); $(iperf3 --version | head -n1 | awk '{print "iperf3 " $2}')."
  DELAY_MS=$DELAY_MS python3 - "$RES" "$RUNS" "$BIG_BYTES" "$SMALL_BYTES" "$SMALL_COUNT" "$SMALL_PER_DIR" \
    "$PARTS" "$TOOLS" "$NET" "$RATE_MBIT" <<'PY'
import glob, json, os, statistics, sys

R = sys.argv[1]
runs, big_bytes, small_bytes, small_count, per_dir = map(int, sys.argv[2:7])
parts, tools = sys.argv[7].split(), sys.argv[8].split()
net, rate_mbit = sys.argv[9], float(sys.argv[10])
report = {"net": net, "runs": runs, "tables": {}}
GIB = 1 << 30
LABELS = {
    "tpc": "tpc-xfer copy (durable, default)",
    "tpc-never": "tpc-xfer copy --fsync never",
    "tpc-cubic": "tpc-xfer copy --fsync never --congestion cubic",
    "tpc-bbr": "tpc-xfer copy --fsync never --congestion bbr",
    "tpc-tcp": "tpc-xfer copy --fsync never --transport tcp",
    "scp": "scp -c aes128-gcm",
    "rsync-ssh": "rsync -a over ssh -c aes128-gcm",
    "rsyncd": "rsync -a to rsync daemon",
    "floor": "floor: tools/fs-floor.c, local, durable",
    "floor-never": "floor: tools/fs-floor.c, local, not synced",
    "floor-bare": "floor: tools/fs-floor.c bare (final names, no mode or mtime)",
}

def cpu_seconds(name):
    ticks, hz = open(f"{R}/{name}.cpu").read().split()
    return int(ticks) / int(hz)

def load(part, tool):
    path = f"{R}/{part}-{tool}.json"
    if not os.path.exists(path):
        return None
    t = json.load(open(path))["results"][0]["times"]
    return {"med": statistics.median(t), "lo": min(t), "hi": max(t),
            "cpu": cpu_seconds(f"{part}-{tool}")}

# benches/per_byte.rs: how many times each byte of a push gets each piece of work.
PER_BYTE = {"blake3_chunk": 2, "aes128gcm_seal_packet": 1, "aes128gcm_open_packet": 1,
            "copy_into_packets": 1, "copy_into_chunk": 1, "udp_loopback": 1}

def per_byte_floor_row(nbytes, refs, ref):
    """Prints the floor row of the big table: the per-byte pieces, each timed alone on one
    core, added up per GiB and spread over every core as if nothing else had to happen.
    Returns the note that goes under the table (what each piece cost, or why no row)."""
    pb = json.load(open(f"{R}/per-byte.json"))
    missing = [k for k in PER_BYTE if k not in pb]
    if missing:
        # Said in the report, and the rest of it still printed.
        return f"No floor row: benches/per_byte.rs gave no result for {', '.join(missing)}."
    s_per_gib = {k: w * pb[k]["ns"] / pb[k]["bytes"] * GIB / 1e9 for k, w in PER_BYTE.items()}
    cpu_per_gib = sum(s_per_gib.values())
    cores = len(os.sched_getaffinity(0))
    med = cpu_per_gib * nbytes / GIB / cores
    report["per_byte_floor"] = {"cpu_s_per_gib": cpu_per_gib, "cores": cores, "seconds": med,
                                "pieces_s_per_gib": s_per_gib}
    cells = [f"floor: the per-byte work alone, on {cores} cores (benches/per_byte.rs)",
             f"{med:.3f}", "-", "-", f"{nbytes / med / 1e9:.2f}"]
    for name, _ in refs:
        cells.append(f"{ref[name]['med'] / med:.2f}x" if ref[name] else "-")
    cells.append(f"{cpu_per_gib:.2f}")
    print("| " + " | ".join(cells) + " |")
    return ("Floor row, CPU s per GiB of each piece (criterion medians): " + ", ".join(
        f"{k} {v:.3f}" + (f" ({PER_BYTE[k]}x)" if PER_BYTE[k] > 1 else "") for k, v in s_per_gib.items())
        + f"; {cpu_per_gib:.3f} in all, over {cores} cores.")

def size(n):
    return f"{n // GIB} GiB" if n % GIB == 0 else f"{n >> 20} MiB"

def table(part, title, nbytes, refs, gbps, cpu_per_gib):
    rows = [(t, load(part, t)) for t in tools]
    rows = [(t, r) for t, r in rows if r]
    floor = part == "big" and net == "loopback" and os.path.exists(f"{R}/per-byte.json")
    if not rows and not floor:
        return
    ref = {name: load(part, t) for name, t in refs}
    head = ["tool", "median s", "min s", "max s"]
    head += ["GB/s"] if gbps else []
    head += [f"vs {name}" for name, _ in refs]
    head += ["CPU s/GiB" if cpu_per_gib else "CPU s"]
    report["tables"][part] = {t: dict(r, bytes=nbytes) for t, r in rows}
    if net != "loopback":
        head.insert(4, "Mbit/s")
        if net == "wan":
            head.insert(5, "of rate")
    print(f"\n### {title}\n")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for tool, r in rows:
        cells = [LABELS[tool], f"{r['med']:.3f}", f"{r['lo']:.3f}", f"{r['hi']:.3f}"]
        if net != "loopback":
            # A floor row is a local copy: no path, so no rate.
            local = tool.startswith("floor")
            mbit = nbytes * 8 / r["med"] / 1e6
            cells.append("-" if local else f"{mbit:.0f}")
            if net == "wan":
                cells.append("-" if local else f"{mbit / rate_mbit:.0%}")
        if gbps:
            cells.append(f"{nbytes / r['med'] / 1e9:.2f}")
        for name, _ in refs:
            cells.append(f"{ref[name]['med'] / r['med']:.2f}x" if ref[name] else "-")
        cells.append(f"{r['cpu'] / (nbytes / GIB):.2f}" if cpu_per_gib else f"{r['cpu']:.2f}")
        print("| " + " | ".join(cells) + " |")
    floor_note = per_byte_floor_row(nbytes, refs, ref) if floor else None
    if floor_note:
        print(f"\n{floor_note}")
    for tool, r in rows:
        path = f"{R}/{part}-{tool}.summary.json"
        if not os.path.exists(path):
            continue
        s = json.load(open(path))
        lat = s["chunk_latency_us"]
        report["tables"][part][tool]["chunk_latency_us"] = lat
        report["tables"][part][tool]["path_per_shard"] = s.get("path_per_shard")
        if lat["chunks"]:
            lost = sum(p["lost_packets"] for p in s["path_per_shard"])
            sent = sum(p["sent_packets"] for p in s["path_per_shard"])
            print(f"\n{LABELS[tool]}, untimed run: per-chunk latency ({lat['chunks']} chunks, "
                  f"{lat['measures']}) p50 {lat['p50'] / 1e3:.0f} ms, p99 {lat['p99'] / 1e3:.0f} ms, "
                  f"p999 {lat['p999'] / 1e3:.0f} ms; QUIC packets lost {lost:,} of {sent:,}", end="")
            windows = [p["flow_window_bytes"] for p in s["path_per_shard"] if "flow_window_bytes" in p]
            if windows:
                print("; client flow windows at the end: "
                      + ", ".join(f"{w / 1e6:.1f}" for w in windows) + " MB", end="")
            print(".")

if net != "loopback":
    ping = open(f"{R}/calibration-ping.txt").read()
    rtt = [l for l in ping.splitlines() if "min/avg/max" in l][0].split("=")[1].split("/")
    cal = json.load(open(f"{R}/calibration-iperf3.json"))["end"]["sum_received"]
    cal_mbit = cal["bits_per_second"] / 1e6
    report["calibration"] = {"ping_rtt_ms_avg": float(rtt[1]), "ping_rtt_ms_min": float(rtt[0]),
                             "ping_rtt_ms_max": float(rtt[2]), "iperf3_mbit_zero_loss": cal_mbit}
    print("\n### Calibration of the path\n")
    print(f"- ping RTT (20 pings): avg {float(rtt[1]):.2f} ms, min {float(rtt[0]):.2f}, max {float(rtt[2]):.2f}")
    line = f"- iperf3 TCP at zero loss (10 s after 2 s omitted): {cal_mbit:.0f} Mbit/s"
    if net == "wan":
        line += f", {cal_mbit / rate_mbit:.0%} of the {rate_mbit:.0f} Mbit/s limit"
    print(line)
    if net == "wan" and os.path.exists(f"{R}/delayline.json"):
        d = json.load(open(f"{R}/delayline.json"))
        for k in ("a_to_b", "b_to_a"):
            c = d[k]
            applied = c["lost"] / max(1, c["packets_in"])
            report["calibration"][f"loss_applied_{k}"] = applied
            report["calibration"][f"queue_drops_{k}"] = c["queue_drops"]
            print(f"- loss applied {k.replace('_', ' ')} over the whole run: {applied:.3%} of "
                  f"{c['packets_in']:,} packets (set {d['loss_pct']}%); bottleneck queue drops: "
                  f"{c['queue_drops']:,}; mean delivery lateness {c['late_us_mean']:.0f} µs")
    cal_ok = abs(float(rtt[1]) - 2 * float(os.environ.get("DELAY_MS", "0"))) <= 0.1 * 2 * float(os.environ.get("DELAY_MS", "0")) if net == "wan" else True
    if net == "wan":
        print(f"- within 10%: RTT {'yes' if cal_ok else 'NO'}, rate "
              f"{'yes' if abs(cal_mbit - rate_mbit) <= 0.1 * rate_mbit else 'NO'}")

if "ceiling" in parts and net != "loopback":
    print("\n### What TCP gets: iperf3, one stream\n")
    print("| congestion control | median Mbit/s | min | max |")
    print("|---|---|---|---|")
    failed_runs = []
    for cc in ("cubic", "bbr"):
        v = []
        for f in sorted(glob.glob(f"{R}/iperf3-{cc}-[0-9]*.json")):
            end = json.load(open(f)).get("end", {})
            if "sum_received" in end:
                v.append(end["sum_received"]["bits_per_second"] / 1e6)
            else:
                # A run that failed three times: left out, and said so below the table.
                failed_runs.append(os.path.basename(f))
        report.setdefault("iperf3_mbit", {})[cc] = v
        if v:
            print(f"| iperf3 -C {cc} | {statistics.median(v):.0f} | {min(v):.0f} | {max(v):.0f} |")
    if failed_runs:
        print(f"\niperf3 runs that failed and are left out: {', '.join(failed_runs)}")
elif "ceiling" in parts:
    # Rate as the receiver saw it; size as sent (the receiver's count can end short).
    ends = [json.load(open(f))["end"] for f in sorted(glob.glob(f"{R}/iperf3-[0-9]*.json"))]
    gbit = statistics.median(e["sum_received"]["bits_per_second"] for e in ends) / 1e9
    moved = json.load(open(f"{R}/iperf3-cpu.json"))["end"]["sum_sent"]["bytes"]
    print(f"\n### Ceiling: iperf3 TCP, one stream, {size(moved)} per run\n")
    print("| tool | Gbit/s (median) | GB/s | CPU s/GiB |")
    print("|---|---|---|---|")
    print(f"| iperf3 -c 127.0.0.1 -n | {gbit:.1f} | {gbit / 8:.2f} | "
          f"{cpu_seconds('iperf3') / (moved / GIB):.2f} |")

dirs = -(-small_count // per_dir)
if "big" in parts:
    table("big", f"One {size(big_bytes)} random file", big_bytes,
          [("scp", "scp"), ("rsync daemon", "rsyncd")], True, True)
if "small" in parts:
    table("small", f"{small_count:,} files of 8 KiB in {dirs} directories", small_bytes,
          [("rsync daemon", "rsyncd")], False, True)
if "rerun" in parts:
    table("rerun", f"Rerun on the unchanged {small_count:,}-file tree", small_bytes,
          [("rsync daemon", "rsyncd")], False, False)

print(f"""
Median, min and max of {runs} runs (hyperfine), page cache warm, every run to a fresh
destination name. "vs X" is X's median time divided by this tool's: above 1.00x is faster.
CPU is the whole machine's busy time (user+nice+system+irq+softirq from /proc/stat) during
one extra run, so both ends together, per GiB of data moved (for the rerun, per run).
"durable" means tpc-xfer made every file durable before acknowledging it; scp, rsync and
the rsync daemon do not sync, and neither does `--fsync never`. Rerun: the destination
already holds the tree; scp has no way to skip unchanged files. The floor rows are no
transfer: tools/fs-floor.c copies the tree on this machine with one thread per core, each
file read, written under a temporary name, given its mode and mtime and renamed into
place (with one syncfs before the renames and each directory fsynced after, if durable):
the filesystem work any of these tools must do, and nothing else. "bare" creates and
writes each file under its final name and does nothing more: not a faithful copy.
The big file's floor row is no transfer either: benches/per_byte.rs times each piece of
work every pushed byte needs (BLAKE3 at the sender and the receiver, AES-128-GCM sealing
and opening, the copy into QUIC packets and the one out of them, a datagram through the
kernel's loopback), alone on one core with its data in cache; their sum, spread evenly
over every core, bounds from below what any protocol on tpc-xfer's data path (BLAKE3 at
both ends, QUIC packets sealed in user space, UDP) could do.""")
json.dump(report, open(f"{R}/report.json", "w"), indent=1)
PY
} | tee "$RES/report.md"
say "raw results: $RES"
