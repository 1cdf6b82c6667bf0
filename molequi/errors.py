"""The named exceptions molequi raises for bad input, in one place.

Every error says *where* (file, frame or line) and *what to do*. Catch ``MolequiError`` to catch them all.

    MolequiError
    ├── InputError                 bad user input in general
    │   ├── FormatError            a file does not follow its format (malformed line, wrong shape, corrupt)
    │   │   └── MissingKeyError    a required field (energy / forces / ...) is absent or misnamed
    │   ├── ValueRangeError        NaN / inf, unknown element, singular cell, atoms too close, empty
    │   └── DatasetError           a dataset layout / split / name problem (missing split files, bad name)
    ├── ConfigError                an invalid configuration (unknown key, wrong type)
    ├── CheckpointError            a checkpoint that cannot be loaded
    │   └── ForeignModelError      another program's model file refused at import (says file and origin)
    │       └── UnsupportedModelError   ... because it uses options molequi does not implement (listed)
    └── ModelError                 a model asked to do what it cannot (unknown element, etc.)
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class MolequiError(Exception):
    """Base class of every error molequi raises on purpose."""


class InputError(MolequiError, ValueError):
    """Bad input given by the user."""

    def __init__(self, message: str, *, source: str | None = None, frame: int | None = None,
                 line: int | None = None, hint: str | None = None):
        self.source, self.frame, self.line, self.hint = source, frame, line, hint
        where = []
        if source is not None:
            where.append(str(source))
        if frame is not None:
            where.append(f"frame {frame}")
        if line is not None:
            where.append(f"line {line}")
        text = (", ".join(where) + ": " if where else "") + message
        if hint:
            text += f" ({hint})"
        super().__init__(text)


class FormatError(InputError):
    """A file does not follow the layout of its format."""


class MissingKeyError(FormatError, KeyError):
    """A required property key is absent from a record."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return Exception.__str__(self)


class ValueRangeError(InputError):
    """A value is present but physically unusable (NaN, unknown element, overlapping atoms, ...)."""


class DatasetError(InputError):
    """A dataset's layout, split files or name are wrong."""


class ConfigError(MolequiError, ValueError):
    """A configuration is invalid."""


class MissingE0Error(ConfigError):
    """An element of the training data has no reference energy E0 under the chosen ``task.E0s``."""


class CheckpointError(MolequiError, RuntimeError):
    """A checkpoint cannot be read or does not match what is asked of it."""


class ForeignModelError(CheckpointError):
    """A model file written by another program (e.g. mace-torch) cannot be imported; names file and origin."""

    def __init__(self, message: str, *, source: str | None = None, origin: str | None = None):
        self.source, self.origin = source, origin
        where = f"{source}" + (f" ({origin})" if origin else "") + ": " if source is not None else ""
        super().__init__(where + message)


class UnsupportedModelError(ForeignModelError):
    """A foreign model uses options molequi does not implement; ``options`` lists every one of them."""

    def __init__(self, options: list[str], *, source: str | None = None, origin: str | None = None):
        self.options = list(options)
        super().__init__("uses options molequi does not implement, refused rather than dropped: "
                         + "; ".join(self.options), source=source, origin=origin)


class ModelError(MolequiError, ValueError):
    """A model was asked to handle input it cannot (for example an element it was not trained on)."""


def suggest(word: str, valid: Iterable[str]) -> str:
    """Return a "did you mean ...?" phrase for ``word`` among ``valid`` (empty string if none is close)."""
    match = difflib.get_close_matches(word, list(valid), n=1, cutoff=0.5)
    return f"did you mean '{match[0]}'?" if match else ""


__all__ = [
    "MolequiError",
    "InputError",
    "FormatError",
    "MissingKeyError",
    "ValueRangeError",
    "DatasetError",
    "ConfigError",
    "MissingE0Error",
    "CheckpointError",
    "ForeignModelError",
    "UnsupportedModelError",
    "ModelError",
    "suggest",
]
