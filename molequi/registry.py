"""Name -> object tables (models, tasks, datasets) with one lookup and one error message.

A ``Registry`` maps lower-case names to either an object or a lazy ``"module:attribute"`` string that is
imported only when the name is asked for, so listing or validating names never imports a model's
dependencies (and inference never imports the training stack)::

    MODELS = Registry("model", {"mace": "molequi.models.mace:MACE", ...})
    MODELS.load("mace")     # -> the MACE class
    MODELS.load("macee")    # ConfigError: unknown model 'macee'; valid models: ... did you mean 'mace'?

It is a ``MutableMapping`` of name -> entry (``"mace" in MODELS``, ``sorted(MODELS)``); a plugin registers
itself with ``MODELS["mine"] = "my.module:MyModel"``.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

from molequi.errors import ConfigError, suggest


class Registry(MutableMapping):
    """Named entries of one kind; ``load(name)`` resolves an entry (ConfigError naming the valid names)."""

    def __init__(self, kind: str, entries: Mapping[str, Any], *, valid_label: str | None = None):
        self.kind = kind
        self.valid_label = valid_label or f"{kind}s"
        self._entries = {str(k).lower(): v for k, v in entries.items()}

    def __getitem__(self, name: str) -> Any:
        return self._entries[name]

    def __setitem__(self, name: str, entry: Any) -> None:
        self._entries[str(name).lower()] = entry

    def __delitem__(self, name: str) -> None:
        del self._entries[str(name).lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def key(self, name: str) -> str:
        """The registered (lower-case) key of ``name``; ConfigError with a suggestion when unknown."""
        key = str(name).lower()
        if key not in self._entries:
            raise ConfigError(f"unknown {self.kind} '{name}'; valid {self.valid_label}: "
                              f"{', '.join(sorted(self._entries))}. {suggest(key, self._entries)}".strip())
        return key

    def load(self, name: str) -> Any:
        """The object registered under ``name``, importing a ``"module:attribute"`` entry on first use."""
        key = self.key(name)
        entry = self._entries[key]
        if not isinstance(entry, str):
            return entry
        module, attribute = entry.split(":")
        try:
            return getattr(importlib.import_module(module), attribute)
        except ModuleNotFoundError as exc:
            raise ConfigError(f"{self.kind} '{name}' is registered as {entry} but the module {exc.name} "
                              "cannot be imported (is an optional dependency missing?)") from exc


__all__ = ["Registry"]
