"""The long soak test of issue 15: a sweep SIGKILLed many times at random moments while other processes keep the
CPU busy, then rerun; every cell must finish exactly once and the report's numbers must equal an uninterrupted
sweep's. (tests/test_kills.py has the short version that CI runs.)

    python scripts/soak.py --kills 40 --burners 2 --out runs/soak
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

SWEEP = """
base:
  data: {name: synthetic, input_size: 32, synthetic_train_size: 256, synthetic_val_size: 32, synthetic_classes: 1000}
  optim: {batch_size: 16}
  train: {batch_size: 16, workers: 0, threads: 1, epochs: 3, log_every: 1, checkpoint_every: 3}
  model: {pretrained: false}
pairs:
  - [resnet10t, resnet10t]
  - [resnet10t, vit_tiny_patch16_224]
gaps: ["1:2", "2:3"]
methods: [downsample_linear, downsample_bottleneck]
baselines:
  finetune: {lrs: [0.002]}
seeds: [0, 1, 2]
"""
NUMBERS = ("status", "top1", "top5", "epochs", "gmacs", "params", "trainable_params")


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    for key in ("STITCHKIT_FAULT", "STITCHKIT_SWEEP_WORKER", "WORLD_SIZE"):
        env.pop(key, None)
    return env


def _run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stitchkit", *map(str, args)], env=_env(), capture_output=True,
                          text=True)


def _numbers(runs: Path) -> dict:
    done = _run("report", runs, "--out", runs / "report")
    if done.returncode != 0:
        raise SystemExit(f"report failed: {done.stderr[-2000:]}")
    with open(runs / "report" / "results.csv") as f:
        return {row["run_dir"].rsplit(str(runs), 1)[-1]: {k: row[k] for k in NUMBERS} for row in csv.DictReader(f)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=40, help="SIGKILLs before the final rerun")
    parser.add_argument("--burners", type=int, default=2, help="processes that keep a core busy meanwhile")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/soak")
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    sweep = out / "soak.yaml"
    sweep.write_text(SWEEP)
    started = time.time()
    reference = _run("sweep", sweep, "--out", out / "reference")
    if reference.returncode != 0:
        raise SystemExit(f"the uninterrupted sweep failed: {reference.stderr[-2000:]}")
    expected = _numbers(out / "reference")
    print(f"uninterrupted sweep: {len(expected)} cells in {time.time() - started:.0f} s", flush=True)

    rng = random.Random(args.seed)
    runs = out / "killed"
    command = [sys.executable, "-m", "stitchkit", "sweep", str(sweep), "--out", str(runs)]
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.burners)]
    landed = finished_early = 0
    try:
        for i in range(args.kills):
            interval = rng.uniform(0.2, 2.0) if rng.random() < 0.5 else rng.uniform(2.0, 15.0)
            process = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(interval)
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                landed += 1
            else:
                finished_early += 1
            process.wait()
            print(f"kill {i + 1}/{args.kills} after {interval:.1f} s: "
                  f"{'landed' if process.returncode == -9 else 'the sweep had ended'}", flush=True)
            if process.returncode == 0:
                break  # every cell is done: later kills would only hit a sweep that skips them all
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    rerun = _run("sweep", sweep, "--out", runs)
    got = _numbers(runs)
    attempts = [p.read_text().splitlines() for p in runs.rglob("attempts.log")]
    finished_once = all(sum(" finished" in line for line in lines) == 1 for lines in attempts)
    summary = {"kills_landed": landed, "sweep_ended_before_kill": finished_early, "rerun_exit": rerun.returncode,
               "cells": len(got), "every_cell_finished_once": finished_once, "numbers_equal": got == expected,
               "minutes": round((time.time() - started) / 60, 1)}
    print(json.dumps(summary, indent=2))
    if got != expected:
        for key in sorted(set(got) | set(expected)):
            if got.get(key) != expected.get(key):
                print(f"differs: {key}: {expected.get(key)} -> {got.get(key)}")
    return 0 if rerun.returncode == 0 and finished_once and got == expected else 1


if __name__ == "__main__":
    sys.exit(main())
