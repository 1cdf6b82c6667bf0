"""Tasks: loss + metrics per job, kept apart from the model (see ``molequi.tasks.base.Task``).

Tasks are registered by name in ``TASKS`` ("name" -> "module:Class", a lazy ``molequi.registry.Registry``);
``get_task_class`` imports one only when asked, so inference never imports the training stack.
"""

from molequi.registry import Registry
from molequi.tasks.base import RunningSums, Task

# name -> "module:Class"; add a line here to register a task
TASKS = Registry("task", {
    "energy_forces": "molequi.tasks.energy_forces:EnergyForcesTask",
    "property": "molequi.tasks.property:PropertyTask",
    "hamiltonian": "molequi.tasks.hamiltonian:HamiltonianTask",
    "diffusion": "molequi.tasks.diffusion:DiffusionTask",
})

# the task class registered under a name (ConfigError listing the valid names otherwise)
get_task_class = TASKS.load


__all__ = ["TASKS", "Task", "RunningSums", "get_task_class"]
