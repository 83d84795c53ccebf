"""A trained run's model found again, wherever the run is now: for ``stitchkit eval``, ``predict`` and ``export``.

What it is built from: the run's ``config.yaml`` (the settings as saved; the weight files and data folder they name
found from any directory, :meth:`RunDir.candidates`; ``data.root=DIR`` where the data moved), and its weights: the
last checkpoint (``checkpoints/last.pt``, verified against the settings' digest), or, for a finished run whose
checkpoints were deleted, the trained weights it saved at the end (``adapters.pt`` or ``model.pt``: the same weights
as its last checkpoint).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..errors import StitchkitError
from ..rundir import RunDir, tried
from ..stitching import StitchedModel
from .checkpoint import load_checkpoint
from .config import Config, from_yaml_file, load_config
from .identity import accepted_digests
from .modes import LOAD_CUTS_FIX, build_model, check_run_cuts, load_trainable_state
from .runtime import cuda_missing, resolve_device
from .settings import keys_of_kind


@dataclass
class Progress:
    """How far the run had trained when its weights were saved: ``step`` of ``total_steps`` (None: a checkpoint
    written before checkpoints said it), and the run's state (:meth:`RunDir.state`)."""

    step: int
    total_steps: int | None
    run_status: str

    @property
    def finished(self) -> bool:
        return self.run_status == "finished"


@dataclass
class TrainedRun:
    run: RunDir
    config: Config  # as saved, with its files located and this process's device and workers
    digests: tuple[str, ...]  # what its checkpoint must carry: of the settings as saved

    def model(self, num_classes: int) -> tuple[nn.Module, Progress]:
        """The run's network with its trained weights, on the run's device, in eval mode."""
        config, run = self.config, self.run
        torch.manual_seed(config.train.seed)
        model = build_model(config, num_classes)
        result = run.read_result() or {}
        if run.last_checkpoint.is_file():
            state = load_checkpoint(run.last_checkpoint, self.digests)
            written_by = state.get("stitchkit_version") or (result.get("versions") or {}).get("stitchkit")
            check_run_cuts(model, state.get("architecture"), source=f"the run in {str(run.path)!r}",
                           written_by=written_by, fix=LOAD_CUTS_FIX)
            load_trainable_state(model, state["model"])
            step = state["counters"]["step"]
            finished_steps = (run.read_result() or {}).get("steps") if run.state() == "finished" else None
            progress = Progress(step, state.get("total_steps", finished_steps), run.state())
        else:  # a finished run (read_run checked): its checkpoints were deleted, its trained weights were not
            check_run_cuts(model, result.get("architecture"), source=f"the run in {str(run.path)!r}",
                           written_by=(result.get("versions") or {}).get("stitchkit"), fix=LOAD_CUTS_FIX)
            _load_saved_weights(model, run)
            steps = (run.read_result() or {}).get("steps")
            progress = Progress(steps, steps, "finished")
        return model.to(resolve_device(config.train.device)).eval(), progress


def read_run(run_dir: str | Path, device: str | None = None, workers: int | None = None,
             locations: Sequence[str] = ()) -> TrainedRun:
    """The run in ``run_dir`` with its settings, refusing one that has no weights to evaluate. ``locations``:
    ``key=value`` location settings (``data.root=DIR``: where its data is now), the only ones that may change."""
    run = RunDir(run_dir)
    if not run.config.is_file():
        raise StitchkitError(f"{str(run_dir)!r} is not a run directory (no config.yaml); pass the output.dir of a run")
    _check_locations(locations)
    config = from_yaml_file(run.config)
    digests = accepted_digests(config)  # of the settings as saved: before locations change and paths are located
    if locations:
        config = load_config(run.config, locations, saved=True)
    if device is not None:
        config.train.device = device
    elif cuda_missing(config.train.device):
        # Where the run trained is how it ran, not what its model needs: a run copied to a machine without a GPU
        # evaluates and predicts on the CPU (said, since it is slower and in full precision).
        print(f"note: the run in {str(run_dir)!r} ran on {config.train.device} and no CUDA device is visible: using "
              "the CPU (--device chooses)", file=sys.stderr)
        config.train.device = "cpu"
    if workers is not None:
        config.train.workers = workers
    _check_weights(run, str(run_dir))
    located = {key: str(run.locate(key, given)) if given else None  # from any directory, in a moved runs tree
               for key, given in config.model.checkpoint_files().items()}
    src = [v for k, v in located.items() if k.startswith("model.src_checkpoint")]
    config.model.src_checkpoint = src if isinstance(config.model.src_checkpoint, (list, tuple)) else src[0]
    config.model.dst_checkpoint = located["model.dst_checkpoint"]
    if config.data.root and not any(item.startswith("data.root=") for item in locations):
        config.data.root = str(_locate_data(run, config.data.root))
    return TrainedRun(run, config, digests)


def _check_locations(locations: Sequence[str]) -> None:
    """Refuse any setting but a location: a run is evaluated with the settings it trained with."""
    allowed = sorted(keys_of_kind("location"))
    for item in locations:
        if item.partition("=")[0].strip() not in allowed:
            raise StitchkitError(f"{item!r}: a run is evaluated with its own settings; only where its data is may "
                                 f"change ({', '.join(f'{key}=...' for key in allowed)})")


def _locate_data(run: RunDir, given: str) -> Path:
    """The run's data folder, found as its weight files are (:meth:`RunDir.candidates`): ``data.root`` as given from
    here, else where the run recorded it (absolute, then relative to the run)."""
    candidates = run.candidates("data.root", given)
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise StitchkitError(f"the data of the run in {str(run.path)!r} is not found (data.root: tried "
                         f"{tried(candidates)}); name its folder: stitchkit eval {run.path} data.root=DIR")


def load_trained(run_dir: str | Path, device: str | None = None, workers: int | None = None):
    """A finished run's model with its trained weights, without its data: ``(run, config, model, progress)``. Its
    number of classes is what the run recorded in result.json; an unfinished or failed run is refused (export and
    predict take only trained models; ``stitchkit eval`` measures an unfinished run's last checkpoint)."""
    trained = read_run(run_dir, device, workers)
    result = trained.run.read_result() or {}
    if result.get("status") == "failed":  # its weights are where it stopped: NaN, or a crash part-way
        why = str(result.get("error") or "no reason recorded").splitlines()[0]
        raise StitchkitError(f"the run in {str(run_dir)!r} failed ({why}), so it has no trained model; train it "
                             "again with `stitchkit train ... --overwrite` (in a sweep: --retry-failed)")
    num_classes = result.get("classes")
    if num_classes is None:
        raise StitchkitError(f"the run in {str(run_dir)!r} is not finished (no result.json saying how many classes it "
                             "predicts); finish it with `stitchkit train ... --resume` (`stitchkit eval` measures its "
                             "last checkpoint meanwhile)")
    return (trained.run, trained.config, *trained.model(num_classes))


def _check_weights(run: RunDir, name: str) -> None:
    """Refuse a run with no weights to load, saying why."""
    if run.last_checkpoint.is_file():
        return
    if run.state() != "finished":
        raise StitchkitError(f"{name!r} has no checkpoints/last.pt: the run never reached a checkpoint; train it "
                             "(stitchkit train ... --resume starts it again)")
    if not (run.adapter_weights.is_file() or run.model_weights.is_file()):
        raise StitchkitError(f"the run in {name!r} is finished, but its checkpoints/last.pt and its trained weights "
                             "(adapters.pt or model.pt) were deleted: nothing is left to load; train it again "
                             "(stitchkit train ... --overwrite)")


def _load_saved_weights(model: nn.Module, run: RunDir) -> None:
    """What ``export_weights`` saved at the end of the run: a stitch's ``adapters.pt`` (its trained parts), or a
    whole ``model.pt`` state dict."""
    stitch = isinstance(model, StitchedModel)
    path = run.adapter_weights if stitch else run.model_weights
    if not path.is_file():
        raise StitchkitError(f"the run in {str(run.path)!r} has neither checkpoints/last.pt nor {path.name}: nothing "
                             "is left to load; train it again (stitchkit train ... --overwrite)")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a torn or foreign file: never half-load it
        raise StitchkitError(f"{str(path)!r} is unreadable ({err}); train the run again (stitchkit train ... "
                             "--overwrite)") from None
    try:
        if stitch:
            load_trainable_state(model, saved["adapters"])
        else:
            model.load_state_dict(saved)
    except (KeyError, TypeError, RuntimeError) as err:
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise StitchkitError(f"{str(path)!r} does not fit the run's model ({first_line}); train the run again "
                             "(stitchkit train ... --overwrite)") from None
