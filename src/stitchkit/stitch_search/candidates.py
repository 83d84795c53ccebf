"""The candidates of a search: every (source, destination, gap, method) stitch of a zoo, priced without building it.

Prices come from the sweep dry run (:mod:`stitchkit.sweeps.dryrun`) of the cell that would train the candidate
(:mod:`stitchkit.stitch_search.cells`), with the search's settings: models built on PyTorch's meta device, each
front and back counted once, so a zoo of a dozen models and hundreds of stitches is priced in seconds. A model that
cannot be cut, a method that does not apply to a pair (a ViT block between image layouts) or a stitch whose shapes
do not join are candidates with a reason, listed, never errors that stop the others.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..chain import PAPER_GAPS, parse_gap
from ..errors import StitchkitError
from ..sweeps.methods import get_method

DEFAULT_METHODS = ("downsample_linear", "downsample_bottleneck")


@dataclass(frozen=True)
class Candidate:
    """One stitch a search may train."""

    src: str
    dst: str
    gap: str  # "x:y"
    method: str  # a sweep method: adapter x resize (stitchkit methods)

    @property
    def key(self) -> str:
        """A name for files: the candidate's proxies are cached under it."""
        return f"{self.src}--{self.dst}--{self.gap.replace(':', 'to')}--{self.method}"

    def record(self) -> dict:
        return asdict(self)


def method_names(adapters: list[str] | None) -> list[str]:
    """Method names from ``--adapters``: method names as they are (``integrated_bottleneck``), adapter names with
    bilinear downsampling (``bottleneck`` -> ``downsample_bottleneck``; the paper's best resizing). A search ranks
    single stitches (one source, one destination): the ``parallel_*`` methods, which fuse several sources, are
    refused rather than priced as one stitch and then skipped by the sweep that was to train them."""
    names = []
    for name in adapters or DEFAULT_METHODS:
        try:
            method = get_method(name)
        except StitchkitError:
            try:
                method = get_method(f"downsample_{name}")
            except StitchkitError:
                get_method(name)  # the error with the close method names
        if method.parallel:
            raise StitchkitError(f"--adapters {name}: a parallel_* method fuses several sources, but a search ranks "
                                 "single stitches; drop it (train parallel stitches with stitchkit sweep, pairs "
                                 "[[A, B], C])")
        names.append(method.name)
    return list(dict.fromkeys(names))


def check_models(models: list[str], input_size: int) -> tuple[list[str], dict[str, str]]:
    """The models stitchkit can cut at ``input_size`` and, for the others, why not. An unknown name is an error
    (with close matches): it is a typo, not a model to skip."""
    from ..zoo.models import family_for_name
    from ..zoo.spec import model_spec
    from ..sweeps.dryrun import meta_model

    if len(models) < 1:
        raise StitchkitError("a search needs at least one model (--models A,B,...)")
    usable, reasons = [], {}
    for name in dict.fromkeys(models):
        try:
            family_for_name(name)  # unknown names raise with close matches
        except StitchkitError as err:
            if "cannot cut" not in str(err):
                raise
            reasons[name] = str(err)
            continue
        try:
            model_spec(meta_model(name, input_size), input_size, name)
        except Exception as err:  # noqa: BLE001 -- any failure to cut is this model's reason, not the search's end
            reasons[name] = f"cannot be cut at {input_size} px: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
            continue
        usable.append(name)
    return usable, reasons


def enumerate_candidates(models: list[str], input_size: int, gaps: list[str] | None = None,
                         adapters: list[str] | None = None) -> list[Candidate]:
    """Every ordered pair of ``models`` (a model with itself included) at every gap with every method."""
    gaps = [f"{x}:{y}" for x, y in (parse_gap(str(g)) for g in (gaps or [f"{x}:{y}" for x, y in PAPER_GAPS]))]
    methods = method_names(adapters)
    return [Candidate(src, dst, gap, method) for src in models for dst in models for gap in gaps for method in methods]


def price(sweep, cell, data_classes: int | None = None) -> dict:
    """``{"gmacs", "params", "trainable_params"}`` of the sweep ``cell`` that trains a candidate (as the sweep's dry
    run prices it, with the run's own settings; ``data_classes``: the data's, where the search has counted them), or
    ``{"skip_reason"}`` when it cannot be built (a method for token layouts between image models, shapes that do
    not join)."""
    from ..sweeps.dryrun import cell_costs

    if cell.skip_reason:
        return {"skip_reason": cell.skip_reason}
    try:
        return cell_costs(sweep, cell, data_classes)
    except StitchkitError as err:
        return {"skip_reason": str(err).splitlines()[0]}
