"""What a stitched model (or a fine-tuning baseline) is, as data: where it is cut, its adapter chain, parameters and
MACs next to the models it was made from. ``stitchkit inspect`` prints it; the same dict is its ``--json``."""
from __future__ import annotations

import functools

from .compute import count_macs, count_params
from .finetune import FinetuneBaseline
from .stitching import StitchedModel
from .zoo import create_model


@functools.lru_cache(maxsize=32)
def model_macs(name: str, input_size: int, num_classes: int | None = None) -> int:
    """MACs of the whole model ``name`` at ``input_size`` (built with random weights; remembered, as a sweep asks
    for the same few models again and again), with a head of ``num_classes`` (0: none; None: the library's). A
    network is compared with its models at its own head: a stitch with a new 10-class head against a 1000-class
    source looked cheaper than it is (45% of the source where it was 97%, for a small model at 32 px)."""
    model = create_model(name, input_size=input_size, **({} if num_classes is None else {"num_classes": num_classes}))
    return count_macs(model, (3, input_size, input_size))


def head_classes(model) -> int:
    """The classes ``model``'s head predicts, 0 for none: what :func:`model_macs` builds the whole models with."""
    from .zoo.models import classes_or_none

    return classes_or_none(model) or 0


def _adapter_rows(steps) -> list[dict]:
    """An adapter chain's steps as records: channels and map size in and out, resizing, stride."""
    return [{"in": [s.in_channels, *s.in_size], "out": [s.out_channels, *s.out_size], "resize": s.resize,
             "stride": s.stride} for s in steps]


def describe_stitch(model: StitchedModel, src: str, dst: str, input_size: int) -> dict:
    """The cuts, the adapter chain, parameters and MACs (against the two whole models, built with random weights)."""
    macs = count_macs(model, input_size)
    classes = head_classes(model)
    src_macs = model_macs(src, input_size, classes)
    dst_macs = src_macs if dst == src else model_macs(dst, input_size, classes)
    x, y = model.config.gap
    dst_cut = model.dst_spec.cut(*model.config.dst_cut)
    return {
        "src": src,
        "dst": dst,
        "gap": f"{x}:{y}",
        "adapter": model.config.adapter,
        "resize": model.config.resize,
        "start": model.config.adapter_norm,
        "input_size": input_size,
        "src_cut": {"stage": x, "position": "first", "after": model.src_spec.cut(*model.config.src_cut).module,
                    "feature": model.bridge.src.describe()},
        "dst_cut": {"stage": model.config.dst_cut[0], "position": model.config.dst_cut[1], "after": dst_cut.module,
                    "feature": dst_cut.feature.describe()},
        "adapters": _adapter_rows(model.steps),
        "params": count_params(model),
        "trainable_params": count_params(model, trainable_only=True),
        "trained": model.trained_parts(),
        "gmacs": macs / 1e9,
        "gmacs_src": src_macs / 1e9,
        "gmacs_dst": dst_macs / 1e9,
        "macs_vs_src": macs / src_macs,
        "macs_vs_dst": macs / dst_macs,
        "note": costlier_note(model, src, dst, macs, src_macs),
    }


def costlier_note(model, src: str, dst: str, macs: float, src_macs: float) -> str | None:
    """A stitch is usually meant to cost less than the model it starts from: when it does not, one line that says
    so and why (its destination running at the source's resolution, a costlier destination, costly adapters)."""
    if macs <= src_macs:
        return None
    more = (f"this stitch costs more compute than {src} itself ({macs / 1e9:.3f} vs {src_macs / 1e9:.3f} GMACs, "
            f"{100 * (macs / src_macs - 1):.0f}% more)")
    bridge = getattr(model, "bridge", None)
    if bridge is not None:
        (eh, ew), (dh, dw) = bridge.exit_spec.size, bridge.dst.size
        if eh * ew > dh * dw:
            return (f"{more}: {dst}'s later stages run at {eh}x{ew} instead of its own {dh}x{dw} (resize="
                    f"'{model.config.resize}' keeps the source's resolution); resize='bilinear' or 'integrated' "
                    "brings it down")
    if dst != src:
        return (f"{more}: {dst}'s later stages cost more than {src}'s; a later source cut or a smaller destination "
                "costs less")
    return f"{more}: its adapters cost more than the blocks they stand in for; a lighter adapter costs less"


def describe_parallel(model, input_size: int) -> dict:
    """A parallel stitch's fronts (each cut and adapter chain), its fusion, parameters and MACs, against the
    destination and each source whole (built with random weights)."""
    macs = count_macs(model, input_size)
    first = model.config.stitches[0]
    classes = head_classes(model)
    dst_macs = model_macs(first.dst, input_size, classes)
    fronts = []
    for config, spec, bridge in zip(model.config.stitches, model.src_specs, model.bridges):
        x, y = config.gap
        fronts.append({
            "src": config.src, "gap": f"{x}:{y}", "gmacs_src": model_macs(config.src, input_size, classes) / 1e9,
            "src_cut": {"stage": x, "after": spec.cut(*config.src_cut).module, "feature": bridge.src.describe()},
            "adapters": _adapter_rows(bridge.steps),
            "steps": [s.describe() for s in bridge.steps],
        })
    dst_cut = model.dst_spec.cut(*first.dst_cut)
    return {
        "srcs": [f["src"] for f in fronts], "dst": first.dst, "fusion": model.config.fusion,
        "adapter": first.adapter, "resize": first.resize, "start": first.adapter_norm, "input_size": input_size,
        "fronts": fronts,
        "dst_cut": {"stage": first.dst_cut[0], "position": first.dst_cut[1], "after": dst_cut.module,
                    "feature": dst_cut.feature.describe()},
        "params": count_params(model), "trainable_params": count_params(model, trainable_only=True),
        "fusion_params": count_params(model.fusion), "trained": model.trained_parts(),
        "gmacs": macs / 1e9, "gmacs_dst": dst_macs / 1e9, "macs_vs_dst": macs / dst_macs,
    }


def describe_finetune(baseline: FinetuneBaseline, name: str, gap: str, input_size: int) -> dict:
    """The blocks the baseline keeps and removes, its parameters and its MACs against the whole model."""
    macs = count_macs(baseline, input_size)
    return {"model": name, "gap": gap, "kept_blocks": list(baseline.kept_blocks),
            "removed_blocks": list(baseline.removed_blocks), "params": count_params(baseline),
            "gmacs": macs / 1e9, "macs_vs_model": macs / model_macs(name, input_size, head_classes(baseline))}
