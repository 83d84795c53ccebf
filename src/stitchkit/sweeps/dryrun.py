"""What a sweep will cost, without training: GMACs and parameters of every cell.

Models are built on PyTorch's ``meta`` device (shapes only, no memory, no weights) and counted with the same
FLOP counter as trained runs. Each distinct cell is priced once (seeds share it), and a stitch as the sum of its
front, adapters and back, with each model's fronts and backs counted once per cut: the paper's 3,267 runnable cells
come down to about a thousand adapter chains and a few dozen model parts.
"""
from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from ..compute import count_macs, count_macs_on, count_params
from ..errors import StitchkitError
from ..stitching import StitchedModel, create_stitched
from ..training.modes import STITCH_SETTINGS, get_mode
from ..zoo import input_channels
from ..zoo.models import classes_or_none, create_model, fit_head, wants_new_head
from .grid import Cell, Sweep
from .methods import get_method


@functools.lru_cache(maxsize=64)
def meta_model(name: str, input_size: int, num_classes: int | None = None):
    """The model ``name`` on the meta device: shapes only, no memory, no weights (remembered: build on it through
    :func:`_model`); ``num_classes``: its head's size (default: the model's own)."""
    kwargs = {"num_classes": num_classes} if num_classes else {}
    try:
        with torch.device("meta"):
            return create_model(name, input_size=input_size, **kwargs)
    except (NotImplementedError, StitchkitError) as err:
        if not isinstance(err, NotImplementedError) and not isinstance(err.__cause__, NotImplementedError):
            raise
        # A constructor that computes with tensors (torchvision's RegNets: their widths) needs values: built on the
        # CPU once (remembered; the CPU whatever device the caller builds on), then moved to the meta device
        with torch.device("cpu"):
            return create_model(name, input_size=input_size, **kwargs).to("meta")


def _model(name: str, input_size: int, num_classes: int | None = None, copy_it: bool = False):
    """:func:`meta_model` to build a network from, every weight trainable again. Building a network freezes
    weights of its models (which, remembered, would count as frozen in the next cell's network: a scratch run
    priced after a stitch counted the stitch's frozen weights as not trained); a head is never resized here, as
    :func:`_head_model` picks the remembered model with the head a run ends up with. ``copy_it``: a copy (a second
    instance of one model, or a build that changes the model otherwise). Copying every model every time would
    make the paper grid's dry run several times slower."""
    model = meta_model(name, input_size, num_classes)
    if copy_it:
        model = copy.deepcopy(model)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model


def _head_model(name: str, input_size: int, own: int | None, classes: int | None, new_head: bool,
                copy_it: bool = False) -> tuple[object, bool | None]:
    """``(model, new_head)`` for a build that asks for a head of ``classes`` (None: the model's own) on a model
    built with the head ``own``: the remembered model that already has the head the run's model ends up with, and
    whether the build must make it a new one (as :func:`~stitchkit.zoo.models.fit_head` decides for the run)."""
    has = classes_or_none(meta_model(name, input_size, own))
    new = wants_new_head(has, classes, new_head or None)
    return _model(name, input_size, classes if new and classes else own, copy_it), new or None


@dataclass(frozen=True)
class Heads:
    """What a run's settings make of its models' heads, and so of its parameters (training builds them so, in
    :mod:`stitchkit.training.modes`). The default: each model as it is, no new head."""

    num_classes: int | None = None  # model.num_classes
    data_classes: int | None = None  # the data's classes, where the settings tell them (an image folder's do not)
    new_head: bool = False  # model.new_head
    train_head: bool | None = None  # model.train_head
    unfreeze_last: int = 0  # model.unfreeze_last
    # The heads the source and the destination are built with: a checkpoint's (taken to be for this data: the
    # file may not exist before the sweep runs), else the library's (None).
    own: tuple[int | None, int | None] = (None, None)
    one_model: bool = True  # a model stitched to itself is one model (unless its two ends load other checkpoints)

    @property
    def stitch_classes(self) -> int | None:
        """The ``num_classes`` a stitch is built with (as :meth:`Stitch.build` passes it)."""
        return self.num_classes or (self.data_classes if self.new_head else None)


def _data_classes(settings: dict) -> int | None:
    if settings.get("data.classes"):
        return len(settings["data.classes"])
    if settings.get("data.name") == "synthetic":
        return settings.get("data.synthetic_classes")
    if settings.get("data.name") == "fashion_mnist":
        from ..training.data import FASHION_MNIST_CLASSES

        return len(FASHION_MNIST_CLASSES)
    root = settings.get("data.root")
    if settings.get("data.name") == "imagefolder" and root:
        # As training counts them (ImageFolderSource: train/'s subfolders), without reading an image; relative to
        # where the dry run is made, as the runs will read it. A missing folder is training's to refuse.
        train = Path(root).expanduser() / "train"
        if train.is_dir():
            return sum(1 for d in train.iterdir() if d.is_dir()) or None
    return None


def cell_heads(sweep: Sweep, cell: Cell, data_classes: int | None = None) -> Heads:
    """The :class:`Heads` of a cell, from its settings (the sweep's base under the cell's own); ``data_classes``:
    the data's classes where the caller has counted them (an image folder's, which the settings do not tell)."""
    from .grid import _settings

    settings = _settings(sweep.base, cell.settings)
    classes, data = settings.get("model.num_classes"), data_classes or _data_classes(settings)
    checkpoints = settings.get("model.src_checkpoint"), settings.get("model.dst_checkpoint")
    own = tuple(classes or data if checkpoint else None for checkpoint in checkpoints)
    return Heads(num_classes=classes, data_classes=data, new_head=bool(settings.get("model.new_head")),
                 train_head=settings.get("model.train_head"), unfreeze_last=settings.get("model.unfreeze_last") or 0,
                 own=own, one_model=checkpoints[0] == checkpoints[1])


def cell_stitch_settings(sweep: Sweep, cell: Cell) -> tuple[tuple[str, object], ...]:
    """The model settings a cell's stitch is built with besides its heads (:data:`STITCH_SETTINGS`, as training
    passes them), as ``(name, value)`` pairs: remembered prices are keyed by them."""
    from .grid import _settings

    settings = _settings(sweep.base, cell.settings)
    return tuple((name, settings[f"model.{name}"]) for name in STITCH_SETTINGS)


def _build(kind: str, src: str, dst: str, gap: str | None, method: str, input_size: int, heads: Heads,
           settings: tuple[tuple[str, object], ...] = ()):
    """The network a run of ``kind`` trains, on the meta device, with the heads its settings give it and, for a
    stitch, its other model settings (:func:`cell_stitch_settings`; mirrors each mode's ``build``, from remembered
    models instead of names)."""
    copy_it = heads.num_classes == 0  # no classifier: the build drops the model's own head, a change a copy takes
    if kind == "stitch":
        m = get_method(method)
        back, new = _head_model(dst, input_size, heads.own[1], heads.stitch_classes, heads.new_head, copy_it)
        front = back if src == dst and heads.one_model else \
            _model(src, input_size, heads.own[0], copy_it=copy_it or src == dst)
        return create_stitched(front, back, gap, m.adapter, m.resize, input_size=input_size, check=False,
                               num_classes=heads.stitch_classes, new_head=new, train_head=heads.train_head,
                               unfreeze_last=heads.unfreeze_last, **dict(settings))
    if kind == "scratch":  # a new network, its head for the data unless model.num_classes says otherwise
        return _model(src, input_size, heads.num_classes or heads.data_classes, copy_it)
    if kind == "probe":
        from ..probe import create_probe

        model, new = _head_model(src, input_size, heads.own[0], heads.data_classes, heads.new_head, copy_it)
        return create_probe(model, num_classes=heads.data_classes, new_head=new, unfreeze_last=heads.unfreeze_last,
                            input_size=input_size)
    # finetune: the head matched to the data as training does
    classes = heads.num_classes or (heads.data_classes if heads.new_head else None)
    model, new = _head_model(src, input_size, heads.own[0], classes, heads.new_head, copy_it)
    if new:
        fit_head(model, classes, True)
    return get_mode(kind).build_for_pricing(model, model, gap, None, None, input_size)


@functools.lru_cache(maxsize=None)
def _costs(kind: str, src: str, dst: str, gap: str | None, method: str, input_size: int,
           heads: Heads = Heads(), settings: tuple[tuple[str, object], ...] = ()) -> tuple[float, int, int]:
    with torch.device("meta"):
        model = _build(kind, src, dst, gap, method, input_size, heads, settings)
        macs = _stitch_macs(model, src, dst, input_size, heads) if isinstance(model, StitchedModel) else \
            count_macs(model, input_size)
        return macs / 1e9, count_params(model), count_params(model, trainable_only=True)


@functools.lru_cache(maxsize=None)
def parallel_costs(srcs: tuple[str, ...], dst: str, gap: str, method: str, input_size: int,
                   num_classes: int | None = None, heads: Heads | None = None,
                   settings: tuple[tuple[str, object], ...] = ()) -> tuple[float, int, int]:
    """GMACs, parameters and trainable parameters of a parallel stitch (a ``parallel_*`` method), on the meta
    device: every front, every chain, the fusion and the back, counted whole. ``num_classes``: the models' own
    head size, kept; ``heads``: a sweep cell's (:func:`cell_heads`), instead; ``settings``: its other model
    settings (:func:`cell_stitch_settings`)."""
    from ..parallel import create_parallel

    heads = heads or Heads(own=(num_classes, num_classes))
    m = get_method(method)
    with torch.device("meta"):
        back, new = _head_model(dst, input_size, heads.own[1], heads.stitch_classes, heads.new_head)
        # a source named as the destination is its model, as training builds it (create_parallel)
        model = create_parallel([back if s == dst and heads.one_model else _model(s, input_size, heads.own[0])
                                 for s in srcs], back, gap,
                                fusion=m.fusion, adapter=m.adapter, resize=m.resize, input_size=input_size,
                                check=False, num_classes=heads.stitch_classes, new_head=new,
                                train_head=heads.train_head, unfreeze_last=heads.unfreeze_last, **dict(settings))
        return count_macs(model, input_size) / 1e9, count_params(model), count_params(model, trainable_only=True)


_PART_MACS: dict[tuple, tuple[int, torch.Tensor]] = {}


def _stitch_macs(model, src: str, dst: str, input_size: int, heads: Heads = Heads()) -> int:
    """The stitch's MACs as front + adapters + back. A grid has a few dozen distinct fronts and backs (model, cut)
    but a thousand stitches: each part is counted once, on the meta device, and only the adapters per stitch."""
    def part(key: tuple, module, inputs: torch.Tensor) -> tuple[int, torch.Tensor]:
        if key not in _PART_MACS:
            with torch.no_grad():
                output = module(inputs)
            _PART_MACS[key] = (count_macs_on(module, inputs), output)
        return _PART_MACS[key]

    model.eval()  # as count_macs measures: BatchNorm with running statistics (a 1x1 map has no batch statistics)
    image = torch.zeros(1, input_channels(model), input_size, input_size, device="meta")
    front, features = part(("front", src, model.config.src_cut, input_size, heads), model.front, image)
    with torch.no_grad():
        bridged = model.bridge(features)
    bridge = count_macs_on(model.bridge, features)
    back, _ = part(("back", dst, model.config.dst_cut, tuple(bridged.shape), input_size, heads), model.back, bridged)
    return front + bridge + back


def cell_costs(sweep: Sweep, cell: Cell, data_classes: int | None = None) -> dict:
    """``{"gmacs", "params", "trainable_params"}`` of one cell (``None`` values for skipped cells): what its run
    records, its heads (:func:`cell_heads`, with ``data_classes``) and other model settings included."""
    if cell.skip_reason:
        return {"gmacs": None, "params": None, "trainable_params": None}
    size = sweep.base.get("data", {}).get("input_size", 224)
    heads, settings = cell_heads(sweep, cell, data_classes), cell_stitch_settings(sweep, cell)
    sources = cell.settings.get("model", {}).get("src")
    if isinstance(sources, list):
        gmacs, params, trainable = parallel_costs(tuple(sources), cell.dst, cell.gap, cell.method, size, heads=heads,
                                                  settings=settings)
    else:
        gmacs, params, trainable = _costs(cell.kind, cell.src, cell.dst, cell.gap, cell.method, size, heads, settings)
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
