"""``trainer.compile``: the model of a training run under ``torch.compile``.

Force training needs the gradient of a loss on forces F = -dE/dx, a second derivative. Eager molequi takes F by
``torch.autograd.grad(create_graph=True)`` and back-propagates through that graph; a compiled graph cannot do
this (Dynamo does not trace ``torch.autograd.grad``, and AOTAutograd's compiled backward has no backward of
its own). What works (torch 2.13): take the derivatives with ``torch.func.grad`` INSIDE the compiled function
(``molequi.response.functional_energy_response``), so energy, forces and stress are outputs of one compiled
forward graph, and the loss needs only that graph's first-order backward, which AOTAutograd compiles. Force
fields (``EnergyModel``) run this way (``EnergyModel.compile_training``): EGNN's, MACE's and molequi's
EquiformerV2-style variant's (``equiformer_v2_molequi``) parameter gradients equal eager ones (float64, 1e-10;
MACE's under Inductor in float32, 1e-5: tests/models/test_compile.py). A model that cannot trace into one graph
says why in ``EnergyModel.compile_refusal`` and is refused with a ConfigError (EquiformerV2 as fairchem
defines it, ``equiformer_v2``: its strict ``max_neighbors`` cut has data-dependent sizes).
MACE's were wrong (max abs difference 2.6) while its gather / scatter were custom autograd.Functions, whose
second derivative Dynamo gets wrong under torch.func.grad (torch 2.13); compiled code uses plain ops
(``molequi.nn.scatter.plain_autograd``). A force field found wrong or not checked would be listed in
``UNVERIFIED`` and refused with a ConfigError rather than trained with wrong gradients.

Other models have no derivative in their forward; everything below compiles with ``fullgraph=True``. A
model's ``compile_forward(backend)`` says what to compile: the Hamiltonian models their ``predict`` (the
integer pair structure is built outside the graph, on the CPU batch: ``prepare_batch``). A generative model
builds its integer structure (fully connected edges, size and class counts, bonds) in ``prepare_batch`` too, so
the device part of its ``training_loss`` (``device_loss``: noise, denoiser, loss) is compiled whole; its
denoiser, named in ``compile_target``, is compiled as well, for sampling and for calls with a ``generator``
(which stay outside the compiled loss). Both are recompiled once with dynamic sizes when a batch of new sizes
comes (``dynamic=True`` from the start hit a Dynamo internal error on EDM's). Measured on CPU (EDM denoiser
hidden 64, 4 blocks, 16 molecules, float32, 1 thread, load ~6, medians of 9 interleaved steps): training step
73.4 ms CPU eager, 43.4 ms with the denoiser compiled, 42.8 ms with the whole device loss compiled. Under
Inductor the compiled loss draws its noise from Inductor's generator, not eager's stream (same
distributions). Any other model's ``forward`` is compiled as it is.

Compiled functions (the generative denoiser included) run without duck sizing and with size-oblivious sizes of
1 (``molequi.models.base.without_duck_sizing``), so a first batch of 1, 2 or 3 structures does not tie the
structure count to a constant 1, 2 or 3 and recompile at the next size: MACE's compiled training step compiles
once for 1 -> 2 -> 5 structures (was twice).
"""

from __future__ import annotations

import torch

from molequi.errors import ConfigError


#: force fields whose compiled training was found wrong or not yet checked against eager gradients (torch 2.13)
UNVERIFIED: dict[str, str] = {}  # none at present: MACE and equiformer_v2_molequi checked (module docstring)


def backend_of(setting: bool | str) -> str:
    """``trainer.compile`` -> a ``torch.compile`` backend (true: Inductor)."""
    return "inductor" if setting is True else str(setting)


def compile_for_training(model: torch.nn.Module, setting: bool | str) -> torch.nn.Module:
    """Compile ``model`` in place for ``trainer.compile: setting`` and return it (unchanged when false)."""
    from molequi.models.base import EnergyModel, ForceField

    if not setting:
        return model
    backend = backend_of(setting)
    if isinstance(model, EnergyModel):
        reason = UNVERIFIED.get(type(model).__name__)
        if reason is not None:
            raise ConfigError(f"trainer.compile: {type(model).__name__} {reason}; set trainer.compile: false "
                              "(MolequiCalculator(compile=True) compiles its inference)")
        return model.compile_training(backend=backend)
    if isinstance(model, ForceField):
        raise ConfigError(f"trainer.compile: {type(model).__name__} is a force field whose forces are not the "
                          "autograd of per-atom energies (not an EnergyModel), so it has no compiled training "
                          "path; set trainer.compile: false")
    hook = getattr(model, "compile_forward", None)
    if hook is not None:  # the model's tensor computation, without its host-side integer work
        hook(backend=backend)
        return model
    target = getattr(model, "compile_target", None)
    if target is not None:  # a generative model: its denoiser, and the device part of its training loss
        from molequi.models.base import without_duck_sizing

        denoiser = getattr(model, target)  # as nn.Module.compile does, with duck sizing off around each call
        denoiser._compiled_call_impl = without_duck_sizing(torch.compile(denoiser._call_impl, fullgraph=True,
                                                                         backend=backend))
        model._compiled_loss = without_duck_sizing(torch.compile(model.device_loss, fullgraph=True, backend=backend))
        return model
    model.compile(fullgraph=True, backend=backend)
    return model


__all__ = ["compile_for_training", "backend_of"]
