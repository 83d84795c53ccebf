"""Peak memory of a stitch's fitted start, by calibration-image count: the measurement behind
``Start.fit_memory`` (the cap on how many calibration images the default start asks for).

Each count runs in a fresh process (peak memory cannot be reset within one) that builds the stitch with random
weights and calibrates it on that many random images, then reports the peak: on a CUDA device the most memory
torch allocated there, on the CPU the process's peak resident memory above what it held before building. The
images are random (memory does not depend on their content); the count ``auto`` is what the start asks for.

The start's feature matching (600 Adam steps on batches of 64) does not set the peak, which comes from its passes
over all the calibration images at once (the least-squares fit, the norms' statistics), but on a CPU it takes most
of the time at 224 pixels, so ``--match-steps`` shortens it (default 2; 600 is the start as trained).

    python scripts/calibration_memory.py resnet50 resnet50 1:4 bottleneck --counts 256 auto
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def measure(args: argparse.Namespace, count: str) -> dict:
    """One count, in this process."""
    import torch

    from stitchkit import create_stitched
    from stitchkit.starts import DEFAULT_START, feature_bytes, get_start

    torch.manual_seed(0)
    start = get_start(DEFAULT_START)
    type(start).match_steps = args.match_steps
    device = torch.device(args.device)
    chosen = {}

    def images(bridge):
        n = start.images_wanted(bridge) if count == "auto" else int(count)
        chosen["images"] = n
        return torch.randn(n, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    began = time.perf_counter()
    model = create_stitched(args.src, args.dst, args.gap, args.adapter, pretrained=False, input_size=args.size,
                            calibration_images=images, calibration_device=device)
    if device.type == "cuda":
        peak, where = torch.cuda.max_memory_allocated(device), "allocated on " + torch.cuda.get_device_name(device)
    else:
        peak, where = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before, "resident, CPU"
    per_image = feature_bytes(model.bridge)
    return {"stitch": f"{args.src} -> {args.dst} {args.gap} {args.adapter} @ {args.size} px", "images": chosen["images"],
            "features_gb": round(chosen["images"] * per_image / 1e9, 2), "peak_gb": round(peak / 1e9, 2),
            "peak": where, "match_steps": args.match_steps, "start_s": round(model.start_seconds, 1),
            "wall_s": round(time.perf_counter() - began, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("gap")
    parser.add_argument("adapter")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--counts", nargs="+", default=["256", "auto"], help="image counts; 'auto': the start's")
    parser.add_argument("--match-steps", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child process: measure this count and print it
    args = parser.parse_args(argv)
    if args.one is not None:
        print(json.dumps(measure(args, args.one)))
        return 0
    for count in args.counts:
        child = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--one", count]
        out = subprocess.run(child, capture_output=True, text=True)
        if out.returncode:
            print(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"count {count} failed",
                  file=sys.stderr)
            return out.returncode
        print(out.stdout.strip().splitlines()[-1], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
