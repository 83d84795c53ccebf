"""What a sweep will cost, without training: GMACs and parameters of every cell.

Models are built on PyTorch's ``meta`` device (shapes only, no memory, no weights) and counted with the same
FLOP counter as trained runs. Each distinct cell is priced once (seeds share it), and a stitch as the sum of its
front, adapters and back, with each model's fronts and backs counted once per cut: the paper's 3,267 runnable cells
come down to about a thousand adapter chains and a few dozen model parts.
"""
from __future__ import annotations

import functools

import torch

from ..compute import count_macs, count_macs_on, count_params
from ..stitching import StitchedModel
from ..training.modes import get_mode
from ..zoo.models import create_model
from .grid import Cell, Sweep
from .methods import get_method


@functools.lru_cache(maxsize=64)
def meta_model(name: str, input_size: int, num_classes: int | None = None):
    """The model ``name`` on the meta device: shapes only, no memory, no weights (remembered); ``num_classes``:
    its head's size (default: the model's own)."""
    with torch.device("meta"):
        return create_model(name, input_size=input_size, **({"num_classes": num_classes} if num_classes else {}))


@functools.lru_cache(maxsize=None)
def _costs(kind: str, src: str, dst: str, gap: str | None, method: str, input_size: int,
           num_classes: int | None = None) -> tuple[float, int, int]:
    with torch.device("meta"):
        mode = get_mode(kind)
        m = get_method(method) if mode.joins_models else None
        model = mode.build_for_pricing(meta_model(src, input_size, num_classes), meta_model(dst, input_size,
                                                                                            num_classes),
                                       gap, m and m.adapter, m and m.resize, input_size)
        macs = _stitch_macs(model, src, dst, input_size, num_classes) if isinstance(model, StitchedModel) else \
            count_macs(model, input_size)
        return macs / 1e9, count_params(model), count_params(model, trainable_only=True)


def stitch_costs(src: str, dst: str, gap: str, method: str, input_size: int,
                 num_classes: int | None = None) -> tuple[float, int, int]:
    """GMACs, parameters and trainable parameters of one stitch, priced on the meta device; ``num_classes``: the
    models' head size (a zoo trained on 10 classes costs less in its heads than at ImageNet's 1,000)."""
    return _costs("stitch", src, dst, gap, method, input_size, num_classes)


@functools.lru_cache(maxsize=None)
def parallel_costs(srcs: tuple[str, ...], dst: str, gap: str, method: str, input_size: int,
                   num_classes: int | None = None) -> tuple[float, int, int]:
    """GMACs, parameters and trainable parameters of a parallel stitch (a ``parallel_*`` method), on the meta
    device: every front, every chain, the fusion and the back, counted whole."""
    from ..parallel import create_parallel

    m = get_method(method)
    with torch.device("meta"):
        model = create_parallel([meta_model(s, input_size, num_classes) for s in srcs],
                                meta_model(dst, input_size, num_classes), gap, fusion=m.fusion, adapter=m.adapter,
                                resize=m.resize, input_size=input_size, check=False)
        return count_macs(model, input_size) / 1e9, count_params(model), count_params(model, trainable_only=True)


_PART_MACS: dict[tuple, tuple[int, torch.Tensor]] = {}


def _stitch_macs(model, src: str, dst: str, input_size: int, num_classes: int | None = None) -> int:
    """The stitch's MACs as front + adapters + back. A grid has a few dozen distinct fronts and backs (model, cut)
    but a thousand stitches: each part is counted once, on the meta device, and only the adapters per stitch."""
    def part(key: tuple, module, inputs: torch.Tensor) -> tuple[int, torch.Tensor]:
        if key not in _PART_MACS:
            with torch.no_grad():
                output = module(inputs)
            _PART_MACS[key] = (count_macs_on(module, inputs), output)
        return _PART_MACS[key]

    model.eval()  # as count_macs measures: BatchNorm with running statistics (a 1x1 map has no batch statistics)
    image = torch.zeros(1, 3, input_size, input_size, device="meta")
    front, features = part(("front", src, model.config.src_cut, input_size, num_classes), model.front, image)
    with torch.no_grad():
        bridged = model.bridge(features)
    bridge = count_macs_on(model.bridge, features)
    back, _ = part(("back", dst, model.config.dst_cut, tuple(bridged.shape), input_size, num_classes), model.back,
                   bridged)
    return front + bridge + back


def cell_costs(sweep: Sweep, cell: Cell) -> dict:
    """``{"gmacs", "params", "trainable_params"}`` of one cell (``None`` values for skipped cells)."""
    if cell.skip_reason:
        return {"gmacs": None, "params": None, "trainable_params": None}
    size = sweep.base.get("data", {}).get("input_size", 224)
    sources = cell.settings.get("model", {}).get("src")
    if isinstance(sources, list):
        gmacs, params, trainable = parallel_costs(tuple(sources), cell.dst, cell.gap, cell.method, size)
    else:
        gmacs, params, trainable = _costs(cell.kind, cell.src, cell.dst, cell.gap, cell.method, size)
    return {"gmacs": gmacs, "params": params, "trainable_params": trainable}


def dry_run_table(sweep: Sweep, with_costs: bool = True) -> str:
    """A plain-text table of every cell and the totals."""
    header = f"{'kind':8} {'pair':58} {'gap':4} {'method':26} {'seed':>4} {'lr':>7} {'GMACs':>7} {'params':>8} {'train':>8}  note"
    lines = [header, "-" * len(header)]
    for cell in sweep.cells:
        costs = cell_costs(sweep, cell) if with_costs else {}
        gmacs = f"{costs['gmacs']:.3f}" if costs.get("gmacs") is not None else "-"
        params = f"{costs['params'] / 1e6:.2f}M" if costs.get("params") is not None else "-"
        trainable = f"{costs['trainable_params'] / 1e6:.2f}M" if costs.get("trainable_params") is not None else "-"
        lr = f"{cell.lr:g}" if cell.lr is not None else "-"
        note = f"skipped: {cell.skip_reason}" if cell.skip_reason else ""
        lines.append(f"{cell.kind:8} {cell.pair[:58]:58} {cell.gap or '-':4} {cell.method[:26]:26} {cell.seed:>4} "
                     f"{lr:>7} {gmacs:>7} {params:>8} {trainable:>8}  {note}")
    runnable = len(sweep.runnable)
    by_kind = {}
    for cell in sweep.runnable:
        by_kind[cell.kind] = by_kind.get(cell.kind, 0) + 1
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(by_kind.items()))
    lines.append(f"total: {len(sweep.cells)} cells, {runnable} to run ({kinds}), {len(sweep.cells) - runnable} skipped")
    if sweep.group_by_front:
        groups = sweep.groups(sweep.runnable)
        shared = sum(len(g) for g in groups if len(g) > 1)
        lines.append(f"group_by_front: {len(groups)} passes; {shared} stitches share a front in "
                     f"{sum(len(g) > 1 for g in groups)} of them (largest {max((len(g) for g in groups), default=0)})")
    return "\n".join(lines)
