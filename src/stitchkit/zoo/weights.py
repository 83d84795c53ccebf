"""Whether a model's pretrained weights can be had before asking for them: in the local cache, or from a host that
answers. Without this, a machine with no network spends about a minute in the Hub client's retries before failing
with a message about a setting stitchkit does not have; with it, the failure is one line in well under 5 seconds."""
from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from ..errors import WeightsUnavailableError

FIX = ("train without them with model.pretrained=false (pretrained=False in Python), or give local weights with "
       "model.src_checkpoint=PATH / model.dst_checkpoint=PATH (checkpoint_path=PATH)")
HUB_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def _reachable(host: str, timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _hub_cached(repo: str, filename: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    files = (filename,) if filename else HUB_FILES
    return any(isinstance(try_to_load_from_cache(repo, f), str) for f in files)


def _url_cached(url: str) -> bool:
    import torch

    return (Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)).is_file()


def require_timm_weights(name: str) -> None:
    """Return when timm can load ``name``'s pretrained weights (cached, a local file, or a reachable host); otherwise
    raise one line naming the fix. Unknown configurations are left to timm."""
    from huggingface_hub import constants
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(name, allow_unregistered=False)
    except (RuntimeError, ValueError, KeyError):
        return
    if cfg is None or cfg.file or cfg.state_dict:
        return
    if cfg.hf_hub_id and (cfg.source in (None, "hf-hub") or not cfg.url):
        repo = cfg.hf_hub_id.split("@")[0]
        if _hub_cached(repo, cfg.hf_hub_filename):
            return
        if constants.HF_HUB_OFFLINE:
            raise WeightsUnavailableError(f"the pretrained weights of {name} are not in the Hugging Face cache and "
                                          "HF_HUB_OFFLINE is set", FIX)
        host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    elif cfg.url:
        if _url_cached(cfg.url):
            return
        host = urlparse(cfg.url).hostname or ""
    else:
        return
    if not _reachable(host):
        raise WeightsUnavailableError(f"the pretrained weights of {name} are not cached here and {host} cannot be "
                                      "reached (offline?)", FIX)


def require_url_weights(name: str, url: str) -> None:
    """The same for weights downloaded from ``url`` into torch's hub cache (torchvision)."""
    if _url_cached(url):
        return
    host = urlparse(url).hostname or ""
    if not _reachable(host):
        raise WeightsUnavailableError(f"the pretrained weights of {name} are not cached here and {host} cannot be "
                                      "reached (offline?)", FIX)
