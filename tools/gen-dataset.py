#!/usr/bin/env python3
"""tools/gen-dataset.py — the benchmark datasets, deterministic from a seed: the same
command writes the same bytes on every machine, so runs on different days and hosts
move identical data.

  tools/gen-dataset.py DIR                   # the standard set (below), seed 2026
  tools/gen-dataset.py DIR random-1g small-100k --seed 7
  tools/gen-dataset.py --list

Datasets (the seeds' benchmark notes):
  random-1g     one 1 GiB file of pseudo-random bytes (incompressible)
  random-10g    one 10 GiB file of pseudo-random bytes
  text-1g       one 1 GiB file of base64 text (compressible: zstd -1 takes it to ~75%)
  logs-SIZE     one file of SIZE of service-log lines (timestamps, hosts, paths, counters;
                zstd -1 takes it to about a fifth), e.g. logs-512m
  small-100k    100,000 files of 10 KiB in 1,000 directories
  random-SIZE   one file of SIZE (e.g. random-2048m, random-64m), for quick runs
  small-N       N files of 8 KiB, 100 per directory (e.g. small-20000)

Each dataset is written under a temporary name and renamed when complete, with a
".complete" marker recording the seed; an existing complete dataset with the same seed
is kept (so the harness can call this every run). Bytes come from Python's Mersenne
Twister (random.Random(seed + dataset name)): not cryptographic, only reproducible.
"""

import argparse
import base64
import os
import random
import re
import shutil
import sys

BLOCK_BYTES = 1 << 20
STANDARD = ["random-1g", "random-10g", "text-1g", "small-100k"]


def parse_size(text):
    m = re.fullmatch(r"(\d+)([kmg])", text)
    if not m:
        raise ValueError(f"bad size '{text}' (want e.g. 64m, 1g)")
    return int(m.group(1)) << {"k": 10, "m": 20, "g": 30}[m.group(2)]


def spec(name):
    """(kind, parameters) for a dataset name, or ValueError."""
    if name == "small-100k":
        return ("small", 100_000, 10 * 1024, 100)
    if m := re.fullmatch(r"small-(\d+)", name):
        return ("small", int(m.group(1)), 8 * 1024, 100)
    if m := re.fullmatch(r"text-(\w+)", name):
        return ("text", parse_size(m.group(1)))
    if m := re.fullmatch(r"logs-(\w+)", name):
        return ("logs", parse_size(m.group(1)))
    if m := re.fullmatch(r"random-(\w+)", name):
        return ("random", parse_size(m.group(1)))
    raise ValueError(f"unknown dataset '{name}' (see --help)")


def rng_for(seed, name):
    # Seeded by the name as well, so random-1g and random-10g do not share a prefix.
    return random.Random(f"{seed}:{name}")


def write_random(path, size, rng):
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, BLOCK_BYTES)
            f.write(rng.randbytes(n))
            left -= n


def write_text(path, size, rng):
    # base64 of random bytes, in 76-column lines: what `base64 /dev/urandom` gives.
    with open(path, "wb") as f:
        left = size
        while left:
            raw = base64.encodebytes(rng.randbytes(57 * 1024))
            n = min(left, len(raw))
            f.write(raw[:n])
            left -= n


def write_logs(path, size, rng):
    # Lines as a busy service writes them: a rising timestamp, a few hosts and pids,
    # paths and verbs from small vocabularies, and counters that vary.
    verbs = ["verified", "written", "queued", "sent", "retried", "skipped"]
    dirs = ["data", "logs", "scratch", "archive", "images"]
    t = 1_763_700_000_000
    with open(path, "wb") as f:
        left = size
        while left:
            lines = []
            for _ in range(4096):
                t += rng.randrange(5000)
                lines.append(
                    f"{t // 1000}.{t % 1000:03} host-{rng.randrange(24):02} "
                    f"tpc-xfer[{1000 + rng.randrange(64)}]: chunk {rng.randrange(100000):06} "
                    f"of /{rng.choice(dirs)}/set-{rng.randrange(50)}/part-{rng.randrange(2000):04}.bin "
                    f"{rng.choice(verbs)} in {rng.randrange(100000)} us "
                    f"({4194304 - rng.randrange(3) * 65536} bytes)\n"
                )
            raw = "".join(lines).encode()
            n = min(left, len(raw))
            f.write(raw[:n])
            left -= n


def write_small(root, count, file_bytes, per_dir, rng):
    for i in range(count):
        d = os.path.join(root, f"d{i // per_dir:04}")
        if i % per_dir == 0:
            os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i % per_dir:03}"), "wb") as f:
            f.write(rng.randbytes(file_bytes))


def generate(out_dir, name, seed):
    kind, *params = spec(name)
    final = os.path.join(out_dir, name)
    marker = final + ".complete"
    if os.path.exists(marker) and open(marker).read().strip() == f"seed {seed}":
        print(f"{name}: present (seed {seed})", file=sys.stderr)
        return
    for old in (final, marker):
        if os.path.isdir(old):
            shutil.rmtree(old)
        elif os.path.exists(old):
            os.remove(old)
    tmp = final + ".tmp"
    if os.path.isdir(tmp):
        shutil.rmtree(tmp)
    elif os.path.exists(tmp):
        os.remove(tmp)
    print(f"{name}: generating (seed {seed})", file=sys.stderr)
    rng = rng_for(seed, name)
    if kind == "random":
        write_random(tmp, params[0], rng)
    elif kind == "text":
        write_text(tmp, params[0], rng)
    elif kind == "logs":
        write_logs(tmp, params[0], rng)
    else:
        write_small(tmp, *params, rng)
    os.rename(tmp, final)
    with open(marker, "w") as f:
        f.write(f"seed {seed}\n")


def main():
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    ap.add_argument("dir", nargs="?", help="where the datasets go")
    ap.add_argument("datasets", nargs="*", help="dataset names (default: the standard set)")
    ap.add_argument("--seed", type=int, default=2026, help="seed of every byte (default 2026)")
    ap.add_argument("--list", action="store_true", help="print the standard set and exit")
    args = ap.parse_args()
    if args.list:
        print("\n".join(STANDARD))
        return 0
    if not args.dir:
        ap.error("DIR is required")
    names = args.datasets or STANDARD
    try:
        for n in names:
            spec(n)
    except ValueError as e:
        ap.error(str(e))
    os.makedirs(args.dir, exist_ok=True)
    for n in names:
        generate(args.dir, n, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
