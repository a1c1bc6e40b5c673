"""Checkpoints: a MetaState together with everything needed to adapt and predict later (the model
config, the algorithm's name and hyper-parameters), in one ``torch.save`` file of plain tensors,
numbers and strings (loadable with ``weights_only=True``). Written atomically and durably
(:func:`tasks.cache.atomic_write`), so a crash never leaves a half-written checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

from algorithms.base import Algorithm, MetaState
from algorithms.models import ModelConfig, build_model
from algorithms.registry import create
from tasks.cache import atomic_write

FORMAT = "fewshot-cellseg-checkpoint/1"
_KEYS = ("format", "algorithm", "hparams", "model_config", "params", "extra", "optimizer", "step")


def save_checkpoint(path: Path | str, algorithm: Algorithm, state: MetaState) -> None:
    path = Path(path)
    payload = {
        "format": FORMAT,
        "algorithm": algorithm.name,
        "hparams": algorithm.hparams(),
        "model_config": algorithm.model.config.to_dict(),
        "params": {k: v.detach().cpu() for k, v in state.params.items()},
        "extra": {k: v.detach().cpu() for k, v in state.extra.items()},
        "optimizer": state.optimizer,
        "step": state.step,
    }
    atomic_write(path, lambda f: torch.save(payload, f), durable=True)


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> tuple[Algorithm, MetaState]:
    """Rebuild the algorithm (with its model) and the state saved by :func:`save_checkpoint`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: not a readable checkpoint ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path}: not a {FORMAT} checkpoint (format {found!r})")
    missing = [k for k in _KEYS if k not in payload]
    if missing:
        raise ValueError(f"{path}: checkpoint lacks {', '.join(missing)}")
    model = build_model(ModelConfig.from_dict(payload["model_config"]))
    algorithm = create(payload["algorithm"], model, **payload["hparams"])
    state = MetaState(payload["params"], payload["extra"], payload["optimizer"], payload["step"])
    return algorithm, state
