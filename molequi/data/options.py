"""Reading dataset-specific options from a ``DatasetConfig`` (``options`` dict) or a plain namespace."""

from __future__ import annotations


def dataset_option(cfg, name: str, default=None):
    """``cfg.options[name]``, else the attribute ``cfg.<name>``, else ``default``.

    ``cfg`` is a ``DatasetConfig`` or any namespace.
    """
    options = getattr(cfg, "options", None) or {}
    if name in options:
        return options[name]
    value = getattr(cfg, name, None)
    return default if value is None else value


__all__ = ["dataset_option"]
