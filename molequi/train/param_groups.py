"""Per-parameter-group learning rates (``optim.param_groups``): e.g. a fresh readout ("head") trained faster
than a pretrained body when fine-tuning, as mace-torch's ``--lr_params_factors`` does for its embedding,
interactions, products and readouts.

Each trainable parameter of the model goes to the first ``ParamGroup`` whose glob pattern (``fnmatch``)
matches its name (``model.named_parameters()``: ``embedding.*``, ``layers.0.*``, ``readouts.1.*`` for
MACE); the others form the default group (``optim.lr``, ``optim.weight_decay``). A group's learning rate is
``lr``, or ``optim.lr x lr_factor``, or ``optim.lr``. Every torch param group carries ``lr_scale`` = its
learning rate / ``optim.lr``: schedules that set a learning rate (the wall-time cosine) multiply by it, and
LambdaLR / ReduceLROnPlateau scale each group's own rate. A pattern that matches no trainable parameter is a
``ConfigError`` naming it (a frozen parameter is not trainable).
"""

from __future__ import annotations

from fnmatch import fnmatchcase

import torch

from molequi.config import OptimConfig
from molequi.errors import ConfigError


def _model_of(module: torch.nn.Module) -> torch.nn.Module:
    return getattr(module, "model", module)


def build_param_groups(task: torch.nn.Module, optim: OptimConfig) -> list[dict]:
    """torch optimiser param groups of ``task``'s trainable parameters as ``optim.param_groups`` says."""
    model = _model_of(task)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    owned = {id(p) for _, p in trainable}
    # parameters of the task outside its model (none for the force-field tasks) go to the default group
    extra = [p for p in task.parameters() if p.requires_grad and id(p) not in owned]
    groups = []
    taken: set[int] = set()
    for k, spec in enumerate(optim.param_groups):
        patterns = spec.patterns
        unmatched = [pat for pat in patterns if not any(fnmatchcase(n, pat) for n, _ in trainable)]
        if unmatched:
            frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
            raise ConfigError(
                f"optim.param_groups[{k}]: pattern(s) {', '.join(map(repr, unmatched))} match no trainable "
                f"parameter; parameter names look like {', '.join(n for n, _ in trainable[:6])}"
                + (f" ({len(frozen)} frozen by model.freeze are not trainable)" if frozen else ""))
        params = [p for n, p in trainable
                  if id(p) not in taken and any(fnmatchcase(n, pat) for pat in patterns)]
        taken.update(id(p) for p in params)
        factor = 1.0 if spec.lr_factor is None else spec.lr_factor
        lr = spec.lr if spec.lr is not None else optim.lr * factor
        decay = optim.weight_decay if spec.weight_decay is None else spec.weight_decay
        groups.append({"params": params, "lr": lr, "name": f"param_groups[{k}]",
                       "lr_scale": _scale(lr, optim), "weight_decay": decay})
    rest = [p for _, p in trainable if id(p) not in taken] + extra
    if rest or not groups:
        groups.append({"params": rest, "lr": optim.lr, "name": "default", "lr_scale": 1.0,
                       "weight_decay": optim.weight_decay})
    return [g for g in groups if g["params"]] or groups[-1:]


def _scale(lr: float, optim: OptimConfig) -> float:
    return lr / optim.lr if optim.lr > 0 else 1.0


__all__ = ["build_param_groups"]
