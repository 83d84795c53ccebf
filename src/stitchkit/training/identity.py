"""What makes two runs the same run: digests of their settings, each leaving out the classes of settings (see
``KINDS`` in :mod:`stitchkit.training.config`) that do not matter for its question. One helper,
:func:`settings_digest`, makes every digest."""
from __future__ import annotations

import hashlib
from typing import Any, Iterable, Mapping

from .config import Config, flatten
from .settings import added_later, changed_defaults, keys_of_kind

_CHANGED = changed_defaults()


def _at_later_defaults(settings: Mapping[str, Any]) -> set[str]:
    """Settings added after 0.2 that are at their default: digests leave them out (see ``since`` in settings.py)."""
    return {k for k, default in added_later().items() if k in settings and settings[k] == default}


def _as_before(settings: Mapping[str, Any]) -> Mapping[str, Any]:
    """A stitch's setting whose default changed, at that default in a run of another mode (which does not use it):
    its earlier default, as that run's digest had it (see ``earlier_default`` in settings.py)."""
    if settings.get("mode") == "stitch":
        return settings
    earlier = {k: before for k, (now, before) in _CHANGED.items() if k in settings and settings[k] == now}
    return {**settings, **earlier} if earlier else settings


def settings_digest(settings: Mapping[str, Any], skip: Iterable[str] = (), length: int = 16) -> str:
    """The one digest of a run's settings (flat ``key: value``), without the ``skip`` keys: the same relevant
    settings give the same digest. What is relevant is each caller's choice of KINDS."""
    settings = _as_before(settings)
    skip = set(skip) | _at_later_defaults(settings)
    relevant = sorted((k, v) for k, v in settings.items() if k not in skip)
    return hashlib.sha256(repr(relevant).encode()).hexdigest()[:length]


# Settings that may change between a run and its resumption without changing its results.
RESUMABLE_CHANGES = keys_of_kind("run", "speed")
# Settings a sweep cell's folder name does not depend on (move the data, change the speed settings: same cells).
NOT_IDENTITY = keys_of_kind("run", "speed", "location")


def config_digest(config: Config) -> str:
    """Digest of the settings a resumed run must keep: matches checkpoints to their run."""
    return settings_digest(flatten(config), RESUMABLE_CHANGES)


def accepted_digests(config: Config) -> tuple[str, str]:
    """This version's :func:`config_digest` and the one stitchkit 0.2 wrote into checkpoints (other text, same
    settings), so runs trained before 0.3 still resume and evaluate."""
    flat = _as_before(flatten(config))
    legacy_skip = RESUMABLE_CHANGES - keys_of_kind("speed")  # 0.2 refused speed changes on resume
    legacy_skip = legacy_skip | _at_later_defaults(flat)
    legacy = "\n".join(f"{k}={v!r}" for k, v in sorted(flat.items()) if k not in legacy_skip)
    return config_digest(config), hashlib.sha256(legacy.encode()).hexdigest()[:16]


def settings_id(config: Config) -> str:
    """Shared by runs that differ only in their seed (and in how they ran): reports average seeds within it, never
    across other settings. Speed settings count (a bf16 run is not averaged with an fp32 one)."""
    return settings_digest(flatten(config), keys_of_kind("run") | {"train.seed"})


def resume_differences(saved: Config, current: Config) -> list[str]:
    """Human-readable ``key: saved -> current`` lines for settings that would change the run's results."""
    a, b = flatten(saved), flatten(current)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(a.keys() | b.keys())
            if k not in RESUMABLE_CHANGES and a.get(k) != b.get(k)]
