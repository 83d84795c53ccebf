"""The GPU check of issue 6, in one run of about 5 minutes on an H100/H200 class card.

    python scripts/gpu_check.py --out OUT_DIR          # on a machine with a GPU
    python scripts/gpu_check.py --smoke --out OUT_DIR  # tiny sizes on the CPU: checks that the script itself works
    python scripts/gpu_check.py --sections 4 --out DIR # only the sections named (a rerun after a run cut short)

Measures, printing each figure as it comes and writing them all to OUT_DIR/gpu_check.json:

1. ResNet-50 S1 -> Swin-T S3, bottleneck adapters, 224 px: the largest batch (powers of two) whose stitchkit step
   (bf16 autocast + channels_last) fits, its images/s, the naive step (the paper's fp32 NCHW code) at its own largest
   batch and at the same batch when it fits, and the stitchkit step under torch.compile;
2. peak memory of the paper's No Downsample ResNet-50 S1 -> S4 (resize none), naive fp32 and stitchkit bf16, at
   growing batches (the paper ran out of memory on a 32 GB V100);
3. the engine on CUDA: a short bf16 run under torchrun (NCCL), and a grouped run with data.augment_on=device whose
   results must match separate runs within tolerance;
4. the data path: a folder of 500x375 JPEGs (20,000), and one epoch of ResNet-50 S1 -> S3 bottleneck at 224 px
   (bf16, channels_last, batch 512, 14 workers) with each loader (torch with CPU augmentation, torch with device
   augmentation, gpu, gpu preparing batches in the training thread; then the two gpu rows under torch.compile
   unless --skip-compile): the loader alone, the step alone and the whole run, the run as a share of the step, and
   the host synchronisations per batch of the loader and per training step of the whole run (`stitchkit bench
   --pipeline`; the run with train.count_host_syncs=true).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from stitchkit.bench import run_bench

SIZES = {  # full check, smoke test on the CPU
    "full": dict(src="resnet50", dst="torchvision:swin_t", gap="1:3", input=224, batches=[32, 64, 128, 256, 512, 1024],
                 nods_batches=[32, 64, 128, 256], repeats=10, warmup=3, run_model="resnet50",
                 jpegs=20000, data_batch=512, data_workers=14, data_model="resnet50"),
    "smoke": dict(src="resnet18", dst="resnet34", gap="1:3", input=32, batches=[2, 4], nods_batches=[2, 4],
                  repeats=1, warmup=1, run_model="resnet10t", jpegs=8, data_batch=4, data_workers=1,
                  data_model="resnet10t"),
}


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def bench_or_oom(**kwargs) -> dict | None:
    try:
        return run_bench(**kwargs)
    except (RuntimeError, torch.OutOfMemoryError) as err:
        if not is_oom(err):
            raise
        return None
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def largest_batch(batches: list[int], **kwargs) -> tuple[int | None, dict | None]:
    """The largest batch in ``batches`` (ascending) whose step fits, with its measurement."""
    best = (None, None)
    for batch in batches:
        result = bench_or_oom(batch_size=batch, **kwargs)
        if result is None:
            say(f"  batch {batch}: out of memory")
            break
        column = next(iter(result["columns"].values()))
        say(f"  batch {batch}: {column['images_per_s']:.0f} images/s, peak {column.get('peak_memory_gib', 0):.1f} GiB")
        best = (batch, result)
    return best


def engine_checks(size: dict, device: str, out: Path) -> dict:
    """A short bf16 run under torchrun (NCCL on CUDA), and grouped vs separate runs with device augmentation."""
    from stitchkit.training import load_config, train
    from stitchkit.training import train_group

    results: dict = {}
    tiny = ["data.name=synthetic", "data.input_size=64", "data.synthetic_train_size=256", "data.synthetic_val_size=64",
            "data.synthetic_classes=1000", "optim.batch_size=64", "train.batch_size=32", "train.epochs=1",
            "train.workers=2", "model.pretrained=false", f"train.device={device}", "train.log_every=4",
            "train.amp=" + ("bf16" if device == "cuda" else "none")]
    from stitchkit.training.config import to_yaml

    config = out / "torchrun.yaml"
    config.write_text(to_yaml(load_config(None, ["mode=scratch", f"model.src={size['run_model']}", *tiny,
                                                 f"output.dir={out / 'torchrun-run'}"])))
    env = dict(os.environ, OMP_NUM_THREADS="2")
    start = time.time()
    try:  # bounded: a hung rendezvous or NCCL start must not spend the rest of a device session
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                               "-m", "stitchkit", "train", str(config)], env=env, capture_output=True, text=True,
                              timeout=300)
        returncode, stderr = done.returncode, done.stderr
    except subprocess.TimeoutExpired as err:
        returncode = "timeout"
        stderr = (err.stderr.decode(errors="replace") if isinstance(err.stderr, bytes) else err.stderr or "")
    results["torchrun"] = {"returncode": returncode, "seconds": time.time() - start,
                           "backend": "nccl" if device == "cuda" else "gloo", "stderr_tail": stderr[-1500:]}
    if returncode == 0:
        results["torchrun"]["result"] = json.loads((out / "torchrun-run" / "result.json").read_text())
    say(f"torchrun ({results['torchrun']['backend']}): exit {returncode} in {results['torchrun']['seconds']:.0f} s")

    members = [["model.gap=1:3", "model.adapter=bottleneck"], ["model.gap=1:2", "model.adapter=linear"],
               ["model.gap=1:4", "model.adapter=conv3x3_relu"]]

    def configs(prefix: str) -> list:
        return [load_config(None, [*tiny, "mode=stitch", f"model.src={size['run_model']}", "data.augment_on=device",
                                   "train.channels_last=true", *m, f"output.dir={out / f'{prefix}{i}'}"])
                for i, m in enumerate(members)]

    start = time.time()
    alone = [train(c) for c in configs("alone")]
    separate_s = time.time() - start
    start = time.time()
    together = train_group(configs("group"))
    grouped_s = time.time() - start
    results["grouped"] = {
        "separate_s": separate_s, "grouped_s": grouped_s,
        "loss_separate": [r["loss"] for r in alone],
        "loss_grouped": [r["loss"] if isinstance(r, dict) else repr(r) for r in together],
        # None where a member of the pass failed (its error is in loss_grouped)
        "max_abs_loss_difference": max(abs(a["loss"] - b["loss"]) for a, b in zip(alone, together))
        if all(isinstance(b, dict) for b in together) else None,
    }
    difference = results["grouped"]["max_abs_loss_difference"]
    say(f"grouped vs separate on {device}: {grouped_s:.1f} s vs {separate_s:.1f} s, largest loss difference "
        + (f"{difference:.2e}" if difference is not None else "- (a grouped run failed: see loss_grouped)"))
    return results


def data_path_checks(size: dict, device: str, tmp: Path, compile: bool = True, rows: dict | None = None,
                     save=lambda: None) -> dict:
    """Section 4: each loader on one JPEG folder, end to end against the step (see the module's docstring).
    ``rows`` (filled in place) and ``save`` keep each loader's row in the JSON as soon as it is measured, so a
    run stopped at its limit during a later loader keeps the rows before it."""
    from multiprocessing import Pool

    from stitchkit.bench import _write_jpegs, run_pipeline_bench

    root, count = tmp / "jpegs", size["jpegs"]
    processes = max(os.cpu_count() or 1, 1)
    start = time.perf_counter()
    with Pool(processes) as pool:
        pool.starmap(_write_jpegs, [(root, count, 500, 375, 4, list(range(i, count, processes)))
                                    for i in range(processes)])
    say(f"   wrote {count} JPEGs of 500x375 in {time.perf_counter() - start:.0f} s")
    rows = {} if rows is None else rows
    from stitchkit.training.gpu_loader import DeviceBatches

    # The gpu loader prepares batches in a thread of its own; the *_inline rows prepare them in the training thread
    # (DeviceBatches.prepare_ahead=False): which of the two the loader should use.
    loaders = [("torch_cpu_augment", "torch", "cpu", False, True),
               ("torch_device_augment", "torch", "device", False, True),
               ("gpu", "gpu", "cpu", False, True), ("gpu_inline", "gpu", "cpu", False, False)]
    if compile:  # last: the compiled runs (the 8,500 images/s), their compilation timed apart by the run
        loaders += [("gpu_compiled", "gpu", "cpu", True, True), ("gpu_compiled_inline", "gpu", "cpu", True, False)]
    for name, loader, augment_on, compiled, ahead in loaders:
        DeviceBatches.prepare_ahead = ahead
        try:
            result = run_pipeline_bench(size["data_model"], None, "1:3", "bottleneck", "bilinear", size["data_batch"],
                                        size["input"], count, size["data_workers"], device,
                                        "bf16" if device == "cuda" else "none", device == "cuda", compiled,
                                        augment_on, str(root), size["repeats"], None, loader)
        except Exception as err:  # one loader failing must not hide the others' figures
            rows[name] = {"error": f"{type(err).__name__}: {err}"}
            say(f"   {name}: FAILED {rows[name]['error']}")
            save()
            continue
        finally:
            DeviceBatches.prepare_ahead = True
        rows[name] = result
        save()
        syncs, step_syncs = result["host_syncs_per_batch"], result.get("run_host_syncs_per_step")
        say(f"   {name}: loader {result['loader_images_per_s']:.0f}, step {result['step_images_per_s']:.0f}, run "
            f"{result['run_images_per_s']:.0f} images/s = {result['run_fraction_of_step']:.2f} of the step"
            + (f", host syncs {syncs:.1f} per loader batch" if syncs is not None else "")
            + (f", {step_syncs:.1f} per training step of the run" if step_syncs is not None else ""))
    return rows


def crop_checks(size: dict, device: str, repeats: int = 5) -> dict:
    """The gpu loader's crop and resize of one batch of decoded 500x375 images, each crop rounded alone or the batch
    at once (the same bits; gpu_loader.resized_crops rounds the batch at once on CUDA, each crop on the CPU): host
    milliseconds per batch (until the calls return) and milliseconds until the device is done, best of
    ``repeats``, the two alternated."""
    from torchvision import transforms as T

    from stitchkit.training.gpu_loader import resized_crops

    height, width = (375, 500) if device == "cuda" else (30, 40)
    generator = torch.Generator(device).manual_seed(0)
    images = [torch.randint(0, 256, (3, height, width), dtype=torch.uint8, device=device, generator=generator)
              for _ in range(size["data_batch"])]
    boxes = [list(T.RandomResizedCrop.get_params(image, (0.08, 1.0), (3 / 4, 4 / 3))) for image in images]
    best: dict = {}
    for _ in range(repeats + 1):  # the first round warms up
        for name, each in (("round_each", True), ("round_batch", False)):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            resized_crops(images, boxes, size["input"], T.InterpolationMode.BILINEAR, 0.875, round_each=each)
            host = time.perf_counter() - start
            if device == "cuda":
                torch.cuda.synchronize()
            done = time.perf_counter() - start
            if _ and (name not in best or done < best[name]["done_ms"] / 1e3):
                best[name] = {"host_ms": host * 1e3, "done_ms": done * 1e3}
    say("   crop of one batch of " + str(len(images)) + " images: " + ", ".join(
        f"{name} host {row['host_ms']:.1f} ms, done {row['done_ms']:.1f} ms" for name, row in best.items()))
    return {"images": len(images), "image_size": [height, width], **best}


def step_checks(size: dict, common: dict, skip_compile: bool, report: dict, save) -> None:
    """Section 1: the largest batch whose step fits, its speed against the naive step and under torch.compile."""
    say(f"1. {size['src']} S1 -> {size['dst']} S3 bottleneck: stitchkit step, bf16 + channels_last")
    batch, fast = largest_batch(size["batches"], amp="bf16", channels_last=True, columns=("stitchkit",), **common)
    report["stitchkit_bf16_channels_last"] = {"largest_batch": batch, "result": fast}
    save()
    say("   naive step (fp32, NCHW, frozen parts in train mode)")
    naive_batch, naive = largest_batch(size["batches"], columns=("naive",), **common)
    report["naive_fp32"] = {"largest_batch": naive_batch, "result": naive}
    if batch is not None and naive_batch is not None:
        same = naive if naive_batch == batch else None
        report["speedup_vs_naive_images_per_s"] = (fast["columns"]["stitchkit"]["images_per_s"]
                                                   / naive["columns"]["naive"]["images_per_s"])
        if same is not None:
            report["speedup_vs_naive_same_batch"] = report["speedup_vs_naive_images_per_s"]
        say(f"   stitchkit {fast['columns']['stitchkit']['images_per_s']:.0f} images/s at batch {batch}, naive "
            f"{naive['columns']['naive']['images_per_s']:.0f} at batch {naive_batch}: "
            f"{report['speedup_vs_naive_images_per_s']:.2f}x")
    save()
    if batch is not None:
        say("   stitchkit step, bf16 + channels_last at the same batch, without compile, then with torch.compile")
        full_columns = bench_or_oom(batch_size=batch, amp="bf16", channels_last=True,
                                    columns=("stitchkit", "full_dst", "lower_bound"), **common)
        report["at_largest_batch"] = full_columns
        if full_columns is not None:
            say("   " + ", ".join(f"{k} {v['images_per_s']:.0f} images/s" for k, v in full_columns["columns"].items()))
        save()
        if not skip_compile:
            start = time.time()
            try:
                compiled = bench_or_oom(batch_size=batch, amp="bf16", channels_last=True, compile=True,
                                        columns=("stitchkit",), **common)
            except Exception as err:  # compile failures are a finding, not a reason to lose the other figures
                compiled = {"error": f"{type(err).__name__}: {str(err)[:500]}"}
            report["compiled"] = {"result": compiled, "seconds_including_compile": time.time() - start}
            if compiled and "columns" in compiled:
                say(f"   torch.compile: {compiled['columns']['stitchkit']['images_per_s']:.0f} images/s")
            save()


def no_downsample_checks(size: dict, common: dict, smoke: bool, report: dict, save) -> None:
    """Section 2: peak memory of the paper's No Downsample ResNet-50 S1 -> S4, naive fp32 and stitchkit bf16."""
    say("2. No Downsample ResNet-50 S1 -> S4 (resize none): peak memory")
    nods = dict(common, src="resnet50" if not smoke else size["src"], dst="resnet50" if not smoke else
                size["src"], gap="1:4", resize="none", repeats=1, warmup=1)
    report["no_downsample"] = {}
    for name, settings in (("naive_fp32", dict(columns=("naive",))),
                           ("stitchkit_bf16", dict(columns=("stitchkit",), amp="bf16", channels_last=True))):
        rows = []
        for b in size["nods_batches"]:
            result = bench_or_oom(batch_size=b, **nods, **settings)
            column = next(iter(result["columns"].values())) if result else None
            rows.append({"batch": b, "peak_memory_gib": column.get("peak_memory_gib") if column else "OOM",
                         "images_per_s": column["images_per_s"] if column else None})
            say(f"   {name} batch {b}: " + (f"peak {rows[-1]['peak_memory_gib']} GiB" if column else "out of memory"))
            if column is None:
                break
        report["no_downsample"][name] = rows
        save()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu-check"))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU, to test this script")
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument("--sections", default="1,2,3,4",
                        help="which sections to run, comma-separated (default: all four; run in the order 4, 1, 2, 3)")
    args = parser.parse_args()
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}
    if not sections or not sections <= {"1", "2", "3", "4"}:
        parser.error(f"--sections takes numbers from 1 to 4 separated by commas, not {args.sections!r}")
    size = SIZES["smoke" if args.smoke else "full"]
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device is visible; run it on a GPU machine, or pass --smoke", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
                    "sections": sorted(sections)}
    say(f"device: {report['device']}, torch {torch.__version__}")

    def save() -> None:
        (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))

    common = dict(src=size["src"], dst=size["dst"], gap=size["gap"], adapter="bottleneck", resize="bilinear",
                  input_size=size["input"], repeats=size["repeats"], warmup=size["warmup"], device=device)
    report["section_seconds"] = {}
    # The data path first: issue 22's done-when is its figures (each loader's run against the step measured in the
    # same section, the compiled row last); then the step of section 1; a run cut short at its limit then loses the
    # peak-memory and engine sections, which earlier GPU sessions have already measured.
    for number in [n for n in ("4", "1", "2", "3") if n in sections]:
        start = time.perf_counter()
        if number == "1":
            step_checks(size, common, args.skip_compile, report, save)
        elif number == "2":
            no_downsample_checks(size, common, args.smoke, report, save)
        elif number == "3":
            say("3. the engine on this device")
            with tempfile.TemporaryDirectory() as tmp:
                report["engine"] = engine_checks(size, device, Path(tmp))
        else:
            say("4. the data path: one epoch from a JPEG folder with each loader")
            report["gpu_loader_crop"] = crop_checks(size, device)
            save()
            with tempfile.TemporaryDirectory() as tmp:
                report["data_path"] = {}
                data_path_checks(size, device, Path(tmp), compile=not args.skip_compile, rows=report["data_path"],
                                 save=save)
        report["section_seconds"][number] = round(time.perf_counter() - start, 1)
        save()
    say(f"written {out / 'gpu_check.json'}; seconds per section: {report['section_seconds']}")
    engine = report.get("engine")
    return 0 if engine is None or engine["torchrun"]["returncode"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
