"""Distillation: the soft-target term is Hinton's, the weights mix it with the labels as asked, hints train an
adapter, and a student trained on soft targets alone comes to agree with its teacher."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional

from tests.deploy.test_onnx import classification_package
from vesalius.core.errors import InputError
from vesalius.deploy.distill import Distillation, DistillationSettings, default_hint_layer, soft_target_loss
from vesalius.deploy.student import parse_spec, student_plan
from vesalius.engines.classification.networks import ClassificationNetwork
from vesalius.engines.classification.plan import ClassificationPlan
from vesalius.engines.classification.trainer import ImageSet, train_classifier
from vesalius.engines.common.package import load_package

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


def test_soft_targets_are_t_squared_times_the_kl_divergence() -> None:
    torch.manual_seed(0)
    student, teacher = torch.randn(5, 3), torch.randn(5, 3)
    expected = functional.kl_div(
        functional.log_softmax(student / 4, dim=1), functional.log_softmax(teacher / 4, dim=1),
        log_target=True, reduction="batchmean",
    ) * 16  # fmt: skip
    assert soft_target_loss(student, teacher, 4.0, "softmax").item() == pytest.approx(expected.item(), rel=1e-5)
    assert soft_target_loss(teacher, teacher, 4.0, "softmax").item() == pytest.approx(0.0, abs=1e-6)


def test_soft_targets_per_voxel_and_for_sigmoid_heads_are_smallest_at_the_teacher() -> None:
    torch.manual_seed(1)
    teacher = torch.randn(2, 3, 4, 4, 4)
    student = teacher.clone().requires_grad_(True)
    soft_target_loss(student, teacher, 2.0, "softmax").backward()
    assert student.grad is not None
    assert student.grad.abs().max() < 1e-6
    ordinal = torch.randn(6, 3)
    at_teacher = soft_target_loss(ordinal, ordinal, 2.0, "sigmoid")
    assert at_teacher < soft_target_loss(ordinal + 0.5, ordinal, 2.0, "sigmoid")
    with pytest.raises(InputError, match="differ"):
        soft_target_loss(torch.zeros(2, 3), torch.zeros(2, 4), 1.0, "softmax")


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> ClassificationPlan:
    folder = classification_package(tmp_path_factory.mktemp("teacher") / "package")
    return ClassificationPlan.model_validate(load_package(folder).manifest.plan)


def teacher_network(plan: ClassificationPlan, seed: int = 3) -> torch.nn.Module:
    torch.manual_seed(seed)
    return ClassificationNetwork.build(plan.network)


def test_alpha_mixes_labels_and_soft_targets(plan: ClassificationPlan) -> None:
    images = torch.randn(4, 1, 32, 32)
    outputs = torch.randn(4, 2)
    supervised = torch.tensor(0.7)
    teacher = teacher_network(plan)
    with torch.no_grad():
        soft = soft_target_loss(outputs, teacher.eval()(images), 4.0, "softmax")
    for alpha in (0.0, 0.3, 1.0):
        guidance = Distillation(teacher, DistillationSettings(4.0, alpha), "softmax", (1, 1, 32, 32))
        assert guidance.attach(ClassificationNetwork.build(plan.network)) == []  # no hint, nothing to train
        mixed = guidance.loss(images, outputs, supervised)
        assert mixed.item() == pytest.approx(((1 - alpha) * supervised + alpha * soft).item(), rel=1e-5)


def test_settings_and_hint_layers_are_checked(plan: ClassificationPlan) -> None:
    for bad in ({"temperature": 0.0}, {"alpha": 1.5}, {"hint_weight": -1.0}):
        with pytest.raises(InputError, match="distillation needs"):
            DistillationSettings(**bad)  # type: ignore[arg-type]
    assert default_hint_layer(teacher_network(plan)) == "backbone.layer4"
    with pytest.raises(InputError, match="no default hint layer"):
        default_hint_layer(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    guidance = Distillation(
        teacher_network(plan),
        DistillationSettings(hint_weight=1.0, student_layer="backbone.nope"),
        "softmax",
        (1, 1, 32, 32),
    )
    with pytest.raises(InputError, match=r"the student has no layer 'backbone\.nope'"):
        guidance.attach(ClassificationNetwork.build(plan.network))


def toy_set(count: int, seed: int) -> ImageSet:
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(count, 1, 32, 32)).astype(np.float32)
    return ImageSet([f"i{i}" for i in range(count)], images, rng.integers(0, 2, count).astype(np.int64))


def agreement(student: torch.nn.Module, teacher: torch.nn.Module, images: np.ndarray) -> float:
    with torch.no_grad():
        tensor = torch.from_numpy(images)
        return float((student.eval()(tensor).argmax(1) == teacher.eval()(tensor).argmax(1)).float().mean())


def test_a_student_on_soft_targets_alone_learns_its_teacher_and_its_hint_adapter_trains(
    plan: ClassificationPlan, tmp_path: Path
) -> None:
    """Labels here are noise; with alpha = 1 only the teacher is a signal, so agreement must rise above what a
    student trained on the noise reaches."""
    teacher = teacher_network(plan)
    with torch.no_grad():  # a teacher with a real preference between the classes
        teacher.heads["main"].bias.copy_(torch.tensor([0.0, 0.0]))
        teacher.heads["main"].weight.mul_(20)
    student = student_plan(plan, "width=0.125").model_copy(
        update={"epochs": 6, "batch_size": 16, "learning_rate": 3e-3}
    )
    train, held_out = toy_set(96, 0), toy_set(64, 1)
    settings = DistillationSettings(alpha=1.0, temperature=2.0, hint_weight=0.5)
    guidance = Distillation(teacher, settings, "softmax", (1, 1, 32, 32))
    guided = train_classifier(
        student, train, held_out, tmp_path / "guided", device="cpu", precision="fp32", guidance=guidance
    )
    assert guidance.adapter is not None
    assert tuple(guidance.adapter.weight.shape[:2]) == (128, 64)  # last stage: student 64 -> teacher 128 channels
    assert guidance.adapter.weight.grad is not None
    assert guidance.adapter.weight.grad.abs().sum() > 0
    plain = train_classifier(student, train, held_out, tmp_path / "plain", device="cpu", precision="fp32")
    network = ClassificationNetwork.build(student.network)
    scores = {}
    for name, result in (("guided", guided), ("plain", plain)):
        network.load_state_dict(result.state_dict)
        scores[name] = agreement(network, teacher, held_out.images)
    assert scores["guided"] > scores["plain"]
    assert scores["guided"] >= 0.75


def test_student_specs_name_an_architecture_and_settings(plan: ClassificationPlan) -> None:
    assert parse_spec("resnet10, width=0.25") == ("resnet10", {"width": "0.25"})
    student = student_plan(plan, "resnet18,width=0.125,dropout=0.2")
    assert (student.network.architecture, student.network.width, student.network.dropout) == ("resnet18", 0.125, 0.2)
    assert student.input_size == plan.input_size
    assert student.class_names == plan.class_names
    for spec, message in (
        ("", "empty"),
        ("resnet10,resnet18", "two architectures"),
        ("depth=3", "unknown key"),
        ("width=wide", "must be a number"),
        ("alexnet", "unknown architecture"),
    ):
        with pytest.raises(InputError, match=message):
            student_plan(plan, spec)
