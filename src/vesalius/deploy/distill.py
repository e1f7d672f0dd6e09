"""Knowledge distillation: a small student learns from a large teacher's soft targets and, optionally, its features.

Soft targets (Hinton et al. 2015): the loss is ``(1 - alpha) * supervised + alpha * T^2 * KL(p_teacher || p_student)``
with both distributions softened by the temperature ``T``; the ``T^2`` keeps the soft term's gradients on the
scale of the supervised one. Segmentation takes the KL per voxel. Ordinal and multi-label heads are sigmoids, so
their soft term is the binary cross-entropy against ``sigmoid(teacher / T)``.

Feature hints (Romero et al. 2015, FitNets): a 1x1 convolution maps the student's feature map at a hint layer to
the teacher's channel count; the squared difference to the teacher's map, divided by the teacher map's mean
square (so ``hint_weight`` does not depend on the feature scale), is added with weight ``hint_weight``.

``Distillation`` is a ``Guidance``: the task trainers call it with each batch, so a student trains in the same
loop, with the same augmentation, sampling and model selection, as any model of its plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch.nn import functional
from torch.utils.hooks import RemovableHandle

from vesalius.core.errors import InputError

Activation = Literal["softmax", "sigmoid"]
HINT_LAYERS = ("backbone.layer4", "bottleneck")  # a ResNet's last stage, a U-Net's bottleneck

__all__ = ["Distillation", "DistillationSettings", "default_hint_layer"]


@dataclass(frozen=True)
class DistillationSettings:
    """``alpha`` weighs the soft targets against the labels; ``hint_weight`` 0 turns feature hints off.
    ``temperature`` None takes the task's default (``vesalius.deploy.compress``: 4 for a classifier, as Hinton;
    1 for a segmenter, whose per-voxel logits are so large that softening by 4 barely flattens them but still
    multiplies the soft term's gradients)."""

    temperature: float | None = None
    alpha: float = 0.5
    hint_weight: float = 0.0
    student_layer: str | None = None
    teacher_layer: str | None = None

    def __post_init__(self) -> None:
        if (self.temperature is not None and self.temperature <= 0) or not 0 <= self.alpha <= 1 or self.hint_weight < 0:
            raise InputError(
                f"distillation needs temperature > 0, 0 <= alpha <= 1 and hint_weight >= 0; got temperature "
                f"{self.temperature}, alpha {self.alpha}, hint_weight {self.hint_weight}"
            )


def default_hint_layer(network: torch.nn.Module) -> str:
    """The deepest feature map both a student and its teacher of the same family have."""
    names = dict(network.named_modules())
    for name in HINT_LAYERS:
        if name in names:
            return name
    raise InputError(f"no default hint layer in {type(network).__name__}; name one ({', '.join(HINT_LAYERS)} ...)")


def _module(network: torch.nn.Module, name: str, role: str) -> torch.nn.Module:
    modules = dict(network.named_modules())
    if name not in modules:
        nearby = [n for n in modules if n.count(".") <= 1 and n][:12]
        raise InputError(f"the {role} has no layer {name!r}; layers include {', '.join(nearby)}")
    module: torch.nn.Module = modules[name]
    return module


def soft_target_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float, activation: Activation
) -> torch.Tensor:
    """``T^2`` times the divergence of the softened student from the softened teacher, averaged over the batch
    and, for maps, over voxels."""
    if student.shape != teacher.shape:
        raise InputError(f"student output {tuple(student.shape)} and teacher output {tuple(teacher.shape)} differ")
    scaled_student, scaled_teacher = student.float() / temperature, teacher.float() / temperature
    if activation == "sigmoid":
        loss = functional.binary_cross_entropy_with_logits(scaled_student, torch.sigmoid(scaled_teacher))
        return loss * temperature**2
    log_student = functional.log_softmax(scaled_student, dim=1)
    log_teacher = functional.log_softmax(scaled_teacher, dim=1)
    per_item = (log_teacher.exp() * (log_teacher - log_student)).sum(dim=1)
    return per_item.mean() * temperature**2


class Distillation:
    """A teacher network guiding a student's training (see the module notes). ``example_shape`` is one input's
    shape (batch included), used once to size the hint adapter."""

    def __init__(
        self,
        teacher: torch.nn.Module,
        settings: DistillationSettings,
        activation: Activation,
        example_shape: tuple[int, ...],
    ) -> None:
        self.teacher = teacher.eval()
        for parameter in self.teacher.parameters():
            parameter.requires_grad_(False)
        self.settings = settings
        self.activation = activation
        self.example_shape = example_shape
        self.adapter: torch.nn.Module | None = None
        self._features: dict[str, torch.Tensor] = {}
        self._hooks: list[RemovableHandle] = []

    def _capture(self, role: str) -> object:
        def hook(_module: torch.nn.Module, _inputs: object, output: object) -> None:
            self._features[role] = output if isinstance(output, torch.Tensor) else output[0]  # type: ignore[index]

        return hook

    def attach(self, network: torch.nn.Module) -> list[torch.nn.Parameter]:
        """Move the teacher beside the student and, with hints on, hook both and build the adapter."""
        device = next(network.parameters()).device
        self.teacher.to(device)
        if self.settings.hint_weight == 0:
            return []
        student_layer = self.settings.student_layer or default_hint_layer(network)
        teacher_layer = self.settings.teacher_layer or default_hint_layer(self.teacher)
        for handle in self._hooks:
            handle.remove()
        self._hooks = [
            _module(network, student_layer, "student").register_forward_hook(self._capture("student")),  # type: ignore[arg-type]
            _module(self.teacher, teacher_layer, "teacher").register_forward_hook(self._capture("teacher")),  # type: ignore[arg-type]
        ]
        was_training = network.training
        network.eval()
        with torch.no_grad():
            example = torch.zeros(self.example_shape, device=device)
            network(example)
            self.teacher(example)
        network.train(was_training)
        student, teacher = self._features["student"], self._features["teacher"]
        convolution = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}[student.dim() - 2]
        self.adapter = convolution(student.shape[1], teacher.shape[1], kernel_size=1).to(device)
        return list(self.adapter.parameters())

    def _hint_loss(self) -> torch.Tensor:
        assert self.adapter is not None
        student, teacher = self.adapter(self._features["student"].float()), self._features["teacher"].float()
        if student.shape[2:] != teacher.shape[2:]:
            student = functional.interpolate(student, size=teacher.shape[2:], mode="nearest")
        return functional.mse_loss(student, teacher) / teacher.pow(2).mean().clamp_min(1e-8)

    def loss(self, images: torch.Tensor, outputs: torch.Tensor, supervised: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_outputs = self.teacher(images)
        soft = soft_target_loss(outputs, teacher_outputs, self.settings.temperature or 1.0, self.activation)
        total = (1 - self.settings.alpha) * supervised + self.settings.alpha * soft
        if self.adapter is not None:
            total = total + self.settings.hint_weight * self._hint_loss()
        return total
