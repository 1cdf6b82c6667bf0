"""Tasks: loss + metrics per job, kept apart from the model (see ``molequi.tasks.base.Task``).

Tasks are registered by name in ``molequi.config.TASKS`` ("name" -> "module:Class"); ``get_task_class``
imports one only when asked, so inference never imports the training stack.
"""

from molequi.tasks.base import RunningSums, Task


def get_task_class(name: str):
    """The task class registered under ``name`` in ``molequi.config.TASKS`` (ConfigError otherwise)."""
    from molequi.config import get_task_class as _get

    return _get(name)


__all__ = ["Task", "RunningSums", "get_task_class"]
