"""Tensors that stay at the site (FedBN's normalisation layers) and the site's own state folder.

A site that keeps layers local removes them from every payload before it
writes one, saves them in its state folder after training, and puts them
back into the model after loading each new global model. The state folder
contains safetensors files only, written by atomic rename.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

logger = logging.getLogger(__name__)

# Module types whose weights and running statistics FedBN keeps at each site.
# `_NormBase` covers BatchNorm1d/2d/3d, SyncBatchNorm and InstanceNorm1d/2d/3d.
NORMALISATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
)
STATE_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


def local_layer_keys(
    model: nn.Module, *, normalisation: bool, patterns: Iterable[str] = ()
) -> frozenset[str]:
    """Return the state-dict keys that stay at the site.

    With `normalisation`, every parameter and buffer of a normalisation
    module is local. `patterns` adds keys by fnmatch pattern, such as 'head.*'.
    """
    keys: set[str] = set()
    state_keys = list(model.state_dict())
    if normalisation:
        for module_name, module in model.named_modules():
            if isinstance(module, NORMALISATION_TYPES):
                prefix = f"{module_name}." if module_name else ""
                keys.update(key for key in state_keys if key.startswith(prefix) and "." not in key[len(prefix):])
    for pattern in patterns:
        keys.update(fnmatch.filter(state_keys, pattern))
    return frozenset(keys)


def split_state(
    state: dict[str, torch.Tensor], local_keys: frozenset[str]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split a state dict into the part that may leave the site and the part that stays."""
    shared = {name: tensor for name, tensor in state.items() if name not in local_keys}
    local = {name: tensor for name, tensor in state.items() if name in local_keys}
    return shared, local


class SiteStateStore:
    """Named groups of tensors kept in the site's state folder, one folder per federation."""

    def __init__(self, state_dir: Path, federation_id: str) -> None:
        if not STATE_NAME_PATTERN.match(federation_id):
            raise ValueError(f"federation id {federation_id!r} is not a valid folder name")
        self.folder = state_dir / "federations" / federation_id

    def _path(self, name: str) -> Path:
        if not STATE_NAME_PATTERN.match(name):
            raise ValueError(f"state name {name!r} may contain only letters, digits, '_', '.' and '-'")
        return self.folder / f"{name}.safetensors"

    def save(self, name: str, tensors: dict[str, torch.Tensor]) -> Path:
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        save_file({key: value.detach().cpu().contiguous() for key, value in tensors.items()}, str(partial))
        partial.replace(path)
        return path

    def load(self, name: str) -> dict[str, torch.Tensor] | None:
        """Return the saved tensors, or None when this federation has not saved `name` yet."""
        path = self._path(name)
        if not path.is_file():
            return None
        return load_file(str(path))
