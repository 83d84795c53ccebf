"""Sweep files and their expansion into cells.

A sweep file names the grid::

    base:            # training settings, as for `stitchkit train` (nested or dotted keys); each cell takes those
                     # its mode uses (a stitch's model.adapter_norm stays out of the baselines' cells)
      data: {root: /data/imagenet}
    pairs:           # [src, dst]; the same model twice stitches a model to itself
      - [resnet50.a1_in1k, torchvision:swin_t]
      - [[resnet50.a1_in1k, vit_small_patch16_224], resnet50.a1_in1k]   # a parallel stitch: parallel_* methods
    gaps: ["1:1", "1:2"]            # default: the paper's nine
    methods: [downsample_bottleneck] # default: every paper method that applies
    baselines:
      finetune: {lrs: [0.01, 0.002, 0.0002]}   # for pairs of one model with itself
      scratch: {models: [resnet18, resnet34]}
    seeds: [0, 1, 2]
    group_by_front: true   # or N: train stitches that share a source front N at a time, in one pass

Each cell is one training run. Its run directory name is derived from its settings alone, as its mode uses them
(readable parts plus a digest of every setting that changes results; a stitch's settings in the base name no
baseline cell), so rerunning a sweep finds the same directories, skips finished cells and resumes interrupted ones. Methods that do not apply to a pair (a ViT block between image layouts, a
fine-tuning baseline across architectures) become cells with a skip reason, never errors mid-sweep; a sweep file
with no cell that applies is refused when loaded.
"""
from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..chain import PAPER_GAPS, parse_gap
from ..errors import StitchkitError, close_matches
from ..training.config import Config, _parse_yaml, flatten, load_config
from ..training.identity import NOT_IDENTITY, settings_digest
from .methods import PAPER_METHODS, get_method

TOP_LEVEL_KEYS = ("base", "pairs", "gaps", "methods", "baselines", "seeds", "group_by_front")
BASELINE_KEYS = {"finetune": ("lrs",), "scratch": ("models",)}


@dataclass(frozen=True)
class Cell:
    """One run of a sweep."""

    kind: str  # stitch | finetune | scratch
    src: str
    dst: str
    gap: str | None
    method: str  # a method name, "finetune" or "scratch"
    seed: int
    lr: float | None
    name: str  # run directory, relative to the sweep's output folder
    settings: dict = field(default_factory=dict, hash=False, compare=False)  # the cell's config layer
    skip_reason: str | None = None
    # The name stitchkit up to 0.12.0 gave this cell, where it differs: its digest took the base's settings that
    # the cell's mode does not use (a stitch's model.init_images in a fine-tuning cell). A run made under it is
    # taken up again, not retrained (:func:`stitchkit.sweeps.runner.adopt_earlier_runs`).
    earlier_name: str | None = field(default=None, compare=False)

    @property
    def pair(self) -> str:
        return f"{self.src} -> {self.dst}"

    def describe(self) -> dict[str, Any]:
        x, y = parse_gap(self.gap) if self.gap else (None, None)
        return {"name": self.name, "kind": self.kind, "pair": self.pair, "src": self.src, "dst": self.dst,
                "gap": self.gap, "src_stage": x, "dst_stage": y, "method": self.method, "seed": self.seed,
                "lr": self.lr, "skip_reason": self.skip_reason}


@dataclass
class Sweep:
    name: str
    base: dict
    cells: list[Cell]

    group_by_front: bool = False
    max_group_size: int | None = None  # with group_by_front: at most this many runs per pass (None: no limit)

    @property
    def runnable(self) -> list[Cell]:
        return [c for c in self.cells if c.skip_reason is None]

    def skipped_summary(self) -> str | None:
        """``N cells skipped (inapplicable): REASON`` (the first cell's reason, and how many cells have others), or
        None when every cell can run; said at the start of every sweep that skips some."""
        skipped = [c for c in self.cells if c.skip_reason]
        if not skipped:
            return None
        first = skipped[0].skip_reason
        others = [c for c in skipped if c.skip_reason != first]
        reasons = len({c.skip_reason for c in others})
        return (f"{len(skipped)} cell{'s' if len(skipped) != 1 else ''} skipped (inapplicable): {first}"
                + (f" ({len(skipped) - len(others)} cell{'s' if len(skipped) - len(others) != 1 else ''}); "
                   f"{len(others)} more for {reasons} other "
                   f"reason{'s' if reasons != 1 else ''} (--dry-run lists each cell's)" if others else ""))

    def groups(self, cells: list[Cell]) -> list[list[Cell]]:
        """``cells`` in the groups that train in one pass (see :mod:`stitchkit.training.grouped`): with
        ``group_by_front``, stitches that share the source front, the data and the loop; otherwise one cell each."""
        from ..training.grouped import group_key, partition

        if not self.group_by_front:
            return [[c] for c in cells]
        keys = [group_key(_settings(self.base, c.settings)) for c in cells]
        return [[cells[i] for i in group] for group in partition(keys, self.max_group_size)]

    def config(self, cell: Cell, runs_dir: Path) -> Config:
        """The cell's full training config, writing into its run directory under ``runs_dir``. The base applies to
        each cell as far as its mode uses it: a stitch's settings there (model.adapter_norm, init_images, ...) stay
        out of the baselines' cells, which would refuse them (:meth:`~stitchkit.training.modes.Mode.refuse_unused`)."""
        layers = [("the sweep's base", self.base), (f"cell {cell.name}", cell.settings)]
        unused = ("the settings its mode does not use, at their defaults", _unused_at_defaults(self.base, cell.settings))
        return load_config(None, [f"output.dir={runs_dir / cell.name}"], layers=[*layers, unused])


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def _nest(flat_or_nested: dict) -> dict:
    """Turn dotted keys (``train.epochs: 1``) into nested dicts, keeping nested ones."""
    out: dict = {}
    for key, value in flat_or_nested.items():
        target = out
        parts = str(key).split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        if isinstance(value, dict):
            target.setdefault(parts[-1], {}).update(_nest(value))
        else:
            target[parts[-1]] = value
    return out


@functools.lru_cache(maxsize=1)
def _defaults() -> dict[str, Any]:
    return flatten(Config())


def _flat(nested: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in nested.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _coerce(default: Any, value: Any) -> Any:
    """A YAML value in the type of the setting's default (``2e-3`` is a string to YAML, a float here)."""
    if isinstance(default, bool) or value is None:
        return value
    if isinstance(default, (int, float)) and isinstance(value, (str, int, float)):
        try:
            return type(default)(value)
        except ValueError:
            return value
    return value


def _settings(*layers: dict) -> dict[str, Any]:
    """The flat ``key: value`` settings of the typed defaults under these layers."""
    settings = dict(_defaults())
    for layer in layers:
        for key, value in _flat(layer).items():
            settings[key] = _coerce(settings.get(key), value)
    return settings


def _unused_at_defaults(*layers: dict) -> dict:
    """A layer that puts back at their defaults the model settings these layers set that their mode does not use
    (:meth:`~stitchkit.training.modes.Mode.unused_settings`); empty for an unknown mode, which loading names."""
    return {"model": _unused_in(_settings(*layers))}


def _unused_in(settings: dict[str, Any]) -> dict[str, Any]:
    """``{model setting: its default}`` for the model settings of ``settings`` (flat, over the defaults) that their
    mode does not use; empty for an unknown mode."""
    from types import SimpleNamespace

    from ..training.modes import MODES, PARALLEL_STITCH
    from ..training.settings import ModelConfig

    if settings["mode"] not in MODES:
        return {}
    model = SimpleNamespace(**{key.split(".", 1)[1]: value for key, value in settings.items()
                               if key.startswith("model.")})
    mode = MODES.get(settings["mode"])
    if mode.joins_models and isinstance(model.src, (list, tuple)):
        mode = PARALLEL_STITCH
    defaults = ModelConfig()
    return {key: getattr(defaults, key) for key in mode.unused_settings(model)}


def _identity(*layers: dict) -> str:
    """Digest of every setting that changes a run's results: the same settings give the same run directory.

    Computed on plain dicts over the typed defaults (building an OmegaConf config per cell would make expanding
    the paper's 4,000 cells take minutes).
    """
    return settings_digest(_settings(*layers), NOT_IDENTITY, length=8)


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> Sweep:
    """Read and expand a sweep file; ``overrides`` (``key=value``) apply to ``base``."""
    path = Path(path)
    if not path.is_file():
        raise StitchkitError(f"sweep file {str(path)!r} does not exist; check the path")
    spec = _parse_yaml(path.read_text(), f"sweep file {str(path)!r}") or {}
    if not isinstance(spec, dict):
        raise StitchkitError(f"sweep file {str(path)!r} must hold a mapping with keys {', '.join(TOP_LEVEL_KEYS)}")
    sweep = expand(spec, name=path.stem, overrides=overrides or [])
    if not sweep.cells:  # a file whose grid is empty is a mistake: running it would "succeed" having done nothing
        raise StitchkitError(f"sweep file {str(path)!r} lists no runs; add pairs: [[src, dst], ...] (with methods or "
                             "baselines.finetune.lrs), or baselines.scratch.models")
    if not sweep.runnable:  # every cell inapplicable: as empty, and the reason says which pair or method to change
        first = sweep.cells[0].skip_reason
        more = len({c.skip_reason for c in sweep.cells}) - 1
        raise StitchkitError(f"sweep file {str(path)!r} has nothing to run: none of its {len(sweep.cells)} cells "
                             f"applies; {first}" + (f" (and {more} other reason{'s' if more != 1 else ''})" if more
                                                    else "")
                             + ". Add pairs or methods that apply to each other (`stitchkit methods` says what each "
                             "method joins), or remove the ones that do not")
    return sweep


def expand(spec: dict, name: str = "sweep", overrides: list[str] | None = None) -> Sweep:
    """The cells of a parsed sweep file."""
    for key in spec:
        if key not in TOP_LEVEL_KEYS:
            hint = close_matches(str(key), TOP_LEVEL_KEYS, n=1)
            raise StitchkitError(f"unknown sweep key {key!r}" + (f"; did you mean {hint[0]!r}?" if hint else
                                                                 f"; valid keys: {', '.join(TOP_LEVEL_KEYS)}"))
    group_by_front = spec.get("group_by_front", False)
    if isinstance(group_by_front, bool):
        max_group_size = None
    elif isinstance(group_by_front, int) and group_by_front >= 1:
        group_by_front, max_group_size = True, spec["group_by_front"]
    else:
        raise StitchkitError(f"group_by_front must be true, false or the most runs per pass (an integer >= 1), got "
                             f"{group_by_front!r}")
    file_base, command_line = _nest(_mapping(spec.get("base"), "base")), {}
    for item in overrides or []:
        if "=" not in item:
            raise StitchkitError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        command_line = merge_settings(command_line, _nest({key: _parse_yaml(value, f"the value of {key}")}))
    # The base alone must be a valid config. Checked as two layers, so that a bad key or value is reported where
    # it was written: in the file's base or among the command's key=value overrides.
    load_config(layers=[("the sweep's base", file_base), ("the command line", command_line)])
    base = merge_settings(file_base, command_line)

    pairs = _listed(spec.get("pairs"), "pairs", [])
    for pair in pairs:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and isinstance(pair[1], str)
                and (isinstance(pair[0], str) or (isinstance(pair[0], (list, tuple)) and len(pair[0]) >= 2
                                                  and all(isinstance(s, str) for s in pair[0])))):
            raise StitchkitError(f"each entry of pairs must be [src, dst], or [[src, src, ...], dst] for a parallel "
                                 f"stitch (two sources or more), got {pair!r}")
    gaps = [f"{x}:{y}" for x, y in (parse_gap(str(g)) for g in
                                    _listed(spec.get("gaps"), "gaps", []) or [f"{x}:{y}" for x, y in PAPER_GAPS])]
    method_names = _listed(spec.get("methods"), "methods", list(PAPER_METHODS))  # [] means none
    seen = set()
    for method in method_names:
        if method in seen:
            raise StitchkitError(f"method {method!r} is listed twice in the sweep file; list each method once")
        seen.add(method)
        get_method(method)
    seeds = _listed(spec.get("seeds"), "seeds", [0])
    # bool is an int to Python; `seeds: [true]` is a slip, not seed 1.
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds) or len(set(seeds)) != len(seeds):
        raise StitchkitError(f"seeds must be a list of distinct integers, got {spec.get('seeds')!r}")
    baselines = _mapping(spec.get("baselines"), "baselines")
    unknown = set(baselines) - set(BASELINE_KEYS)
    if unknown:
        raise StitchkitError(f"unknown baseline {sorted(unknown)[0]!r}; baselines are finetune and scratch")
    for kind, keys in BASELINE_KEYS.items():
        for key in _mapping(baselines.get(kind), f"baselines.{kind}"):
            if key not in keys:  # `lr:` for `lrs:` would otherwise drop the baseline without a word
                raise StitchkitError(f"unknown key {key!r} under baselines.{kind}; it takes {', '.join(keys)}")
    finetune_lrs = _learning_rates(_mapping(baselines.get("finetune"), "baselines.finetune").get("lrs"))
    scratch_models = _listed(_mapping(baselines.get("scratch"), "baselines.scratch").get("models"),
                             "baselines.scratch.models", [])
    if not all(isinstance(m, str) for m in scratch_models):
        raise StitchkitError(f"baselines.scratch.models must be a list of model names, got {scratch_models!r}")

    cells: list[Cell] = []
    from ..zoo.models import is_token_model  # here, not at the top: expanding a sweep file must not import timm

    input_size = _settings(base)["data.input_size"]
    tokens = {name: is_token_model(name, input_size) for pair in pairs for name in _names(pair)}
    for sources, dst in pairs:
        parallel = not isinstance(sources, str)
        src = "+".join(sources) if parallel else sources  # a parallel stitch's sources, as its result records them
        for gap in gaps:
            for method_name in method_names:
                method = get_method(method_name)
                skip = None
                if method.needs_tokens and not (all(tokens[s] for s in _names([sources, dst]))):
                    skip = f"{method.name} joins token layouts only (ViT to ViT); {src} -> {dst} is not"
                elif method.parallel != parallel:
                    skip = (f"{method.name} fuses several sources; {src} -> {dst} has one (write the pair as "
                            f"[[A, B], {dst}])" if method.parallel else
                            f"{method.name} stitches one source; {src} -> {dst} has {len(sources)}: use a "
                            "parallel_* method (`stitchkit methods` lists them)")
                model = {"src": list(sources) if parallel else src, "dst": dst, "gap": gap,
                         "adapter": method.adapter, "resize": method.resize}
                if method.parallel:
                    model["fusion"] = method.fusion
                cells += _seeded(base, {"mode": "stitch", "model": model}, "stitch", src, dst, gap, method.name,
                                 None, seeds, skip)
            for lr in finetune_lrs:
                skip = None if src == dst else (
                    f"the fine-tuning baseline needs one model stitched to itself; {src} -> {dst} crosses models")
                settings = {"mode": "finetune", "model": {"src": src, "dst": None, "gap": gap}, "optim": {"lr": lr}}
                cells += _seeded(base, settings, "finetune", src, dst, gap, "finetune", lr, seeds, skip)
    for model in scratch_models:
        settings = {"mode": "scratch", "model": {"src": model}}
        cells += _seeded(base, settings, "scratch", model, model, None, "scratch", None, seeds, None)
    names = [c.name for c in cells]
    if len(set(names)) != len(names):
        duplicate = next(n for n in names if names.count(n) > 1)
        raise StitchkitError(f"the sweep lists the same run twice ({duplicate}); remove the repeated pair or value")
    return Sweep(name=name, base=base, cells=cells, group_by_front=group_by_front, max_group_size=max_group_size)


def _listed(value: Any, key: str, default: list) -> list:
    """The list a sweep file gives under ``key`` (``default`` when it is absent); one value alone stands for a list
    of it (``gaps: "1:3"``, ``lrs: 0.01``). A string must not be iterated: "1:3" is one gap, not three."""
    if value is None:
        return list(default)
    if isinstance(value, dict):
        raise StitchkitError(f"{key} must be a list, got a mapping {value!r}; write {key}: [...]")
    return list(value) if isinstance(value, (list, tuple)) else [value]


# How each mapping of a sweep file is written, for the message when it is not one.
_MAPPING_EXAMPLES = {"base": "base: {train: {epochs: 10}}", "baselines": "baselines: {finetune: {lrs: [0.01]}}",
                     "baselines.finetune": "finetune: {lrs: [0.01]}",
                     "baselines.scratch": "scratch: {models: [resnet18]}"}


def _mapping(value: Any, key: str) -> dict:
    """The mapping a sweep file gives under ``key`` ({} when it is absent or empty)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise StitchkitError(f"{key} must be a mapping, got {value!r}; write it as {_MAPPING_EXAMPLES[key]}")
    return value


def _learning_rates(value: Any) -> list[float]:
    """``baselines.finetune.lrs`` as floats. YAML 1.1 reads ``2e-3`` (no dot) as a string: it is a number here, as
    in ``base``; anything that is not a positive number is refused where it is written, not when a cell trains."""
    lrs = []
    for item in _listed(value, "baselines.finetune.lrs", []):
        try:
            lr = float(item) if not isinstance(item, bool) and isinstance(item, (int, float, str)) else None
        except ValueError:
            lr = None
        if lr is None or not math.isfinite(lr) or lr <= 0:
            raise StitchkitError(f"baselines.finetune.lrs must be positive numbers, got {item!r}; write e.g. "
                                 "lrs: [0.01, 0.002]")
        lrs.append(lr)
    return lrs


def _names(pair) -> list[str]:
    """Every model a sweep pair names (a parallel stitch's sources each)."""
    sources, dst = pair
    return [sources, dst] if isinstance(sources, str) else [*sources, dst]


def _seeded(base, settings, kind, src, dst, gap, method, lr, seeds, skip) -> list[Cell]:
    """One cell per seed. Its name's digest is of the settings as the cell trains with them (:meth:`Sweep.config`):
    the base's settings that its mode does not use are at their defaults there, so a stitch-only setting in the base
    (model.init_images, model.adapter_norm) leaves the baselines' names alone. Where no such setting is in the base
    that layer is empty, and the names are those of every earlier version."""
    cells = []
    folder = cell_folder(kind, src, dst, gap, method, lr)
    for seed in seeds:
        layer = merge_settings(settings, {"train": {"seed": seed}})
        given = _settings(base, layer)
        unused = _unused_in(given)
        used = {**given, **{f"model.{key}": value for key, value in unused.items()}}
        name = f"{folder}/seed{seed}-{settings_digest(used, NOT_IDENTITY, length=8)}"
        earlier = f"{folder}/seed{seed}-{settings_digest(given, NOT_IDENTITY, length=8)}" if unused else name
        cells.append(Cell(kind, src, dst, gap, method, seed, lr, name, layer, skip,
                          earlier_name=earlier if earlier != name else None))
    return cells


def cell_folder(kind: str, src, dst, gap: str | None, method: str, lr: float | None = None) -> str:
    """The folder, under a sweep's runs folder, of the cells of one (kind, pair, gap, method, lr), one per seed and
    settings: ``stitch/SRC--DST/1to3/downsample_linear``."""
    from ..training.modes import get_mode

    parts = [kind, f"{_slug(src)}--{_slug(dst)}" if get_mode(kind).has_gap else _slug(src)]
    if gap:
        parts.append(gap.replace(":", "to"))
    parts.append(method if lr is None else f"{method}-lr{lr:g}")
    return "/".join(parts)


def merge_settings(a: dict, b: dict) -> dict:
    """``a`` with ``b`` merged over it, mapping into mapping (a config layer over another); neither is changed."""
    out = dict(a)
    for key, value in b.items():
        out[key] = merge_settings(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out

