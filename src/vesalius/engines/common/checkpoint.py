"""Resumable training checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint folder holds ``model.safetensors`` (the network's state dict), ``optimizer.safetensors`` (the
optimizer's tensors, e.g. SGD momentum buffers, flattened to ``state.<param>.<name>``) and ``state.json``
(epoch, history, optimizer hyper-parameters, AMP scaler, anything else the trainer wants back). Each file is
written to a temporary name and renamed, and ``state.json`` last, so a crash mid-save leaves the previous
checkpoint readable. ``best.safetensors`` beside them holds the weights of the best validated epoch so far, and
``averaged.safetensors`` a trainer's running weight average (written before ``state.json``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from vesalius.core.errors import InputError

MODEL = "model.safetensors"
OPTIMIZER = "optimizer.safetensors"
BEST = "best.safetensors"
AVERAGED = "averaged.safetensors"
STATE = "state.json"


@dataclass(frozen=True)
class Checkpoint:
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    state: dict[str, Any]
    best: dict[str, torch.Tensor] | None = None


def _flatten_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param, entries in state_dict["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{param}.{name}"] = value.detach().cpu().clone()
            else:
                scalars.setdefault(str(param), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, param, name = key.split(".", 2)
        state.setdefault(int(param), {})[name] = value
    for param, entries in meta.get("scalars", {}).items():
        state.setdefault(int(param), {}).update(entries)
    return {"state": state, "param_groups": meta["param_groups"]}


def _replace(temporary: Path, final: Path) -> None:
    os.replace(temporary, final)


def save_checkpoint(
    folder: Path | str, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> Path:
    """Write model, optimizer and JSON state atomically (state last)."""
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    # cloned: networks such as DynUNet register one tensor under two names, which safetensors refuses
    weights = {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()}
    save_file(weights, str(target / f".{MODEL}.tmp"))
    _replace(target / f".{MODEL}.tmp", target / MODEL)
    tensors, meta = _flatten_optimizer(optimizer.state_dict())
    save_file(tensors, str(target / f".{OPTIMIZER}.tmp"))
    _replace(target / f".{OPTIMIZER}.tmp", target / OPTIMIZER)
    (target / f".{STATE}.tmp").write_text(json.dumps({"optimizer": meta, **state}, indent=1))
    _replace(target / f".{STATE}.tmp", target / STATE)
    return target


def load_checkpoint(folder: Path | str) -> Checkpoint | None:
    """The checkpoint in ``folder``, or None when there is none to resume from."""
    source = Path(folder)
    if not (source / STATE).is_file():
        return None
    try:
        state = json.loads((source / STATE).read_text())
        model = load_file(str(source / MODEL))
        optimizer = _unflatten_optimizer(load_file(str(source / OPTIMIZER)), state.pop("optimizer"))
    except (OSError, ValueError, KeyError) as error:
        raise InputError(f"{source}: unreadable checkpoint ({error}); delete the folder to start again") from error
    best = load_file(str(source / BEST)) if (source / BEST).is_file() else None
    return Checkpoint(model=model, optimizer=optimizer, state=state, best=best)


def resume_checkpoint(
    folder: Path | str, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> Checkpoint | None:
    """Load the checkpoint in ``folder`` into ``model`` and ``optimizer``; None (and nothing loaded) without one."""
    checkpoint = load_checkpoint(folder)
    if checkpoint is not None:
        model.load_state_dict(checkpoint.model)
        optimizer.load_state_dict(checkpoint.optimizer)
    return checkpoint


def save_weights(folder: Path | str, model: torch.nn.Module, file: str) -> dict[str, torch.Tensor]:
    """Write ``model``'s current weights to ``folder/file`` atomically; return them as CPU copies."""
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    weights = {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()}
    save_file(weights, str(target / f".{file}.tmp"))
    _replace(target / f".{file}.tmp", target / file)
    return weights


def load_weights(folder: Path | str, file: str) -> dict[str, torch.Tensor] | None:
    """The weights ``save_weights`` wrote, or None when the file is absent."""
    path = Path(folder) / file
    return load_file(str(path)) if path.is_file() else None


def save_best(folder: Path | str, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Keep ``model``'s current weights as the best so far, on disk and as returned CPU copies."""
    return save_weights(folder, model, BEST)
