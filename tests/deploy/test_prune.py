"""Structured pruning: channel groups go whole, the weakest first, and what is left is the plan's narrower network.

The key check: a wide network whose extra channels are dead (zero weights in and out) computes exactly what the
narrow network inside it computes; pruning it must find those channels, across residual streams, U-Net skip
concatenations and deep-supervision heads, and give back the narrow network's weights exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.deploy.test_onnx import classification_package
from tests.engines.common.msd_factory import blob_case, write_msd
from tests.engines.segmentation.test_preprocess import tiny_plan
from tests.engines.segmentation.test_trainer import tiny_plan as small_segmentation_plan
from vesalius.core.errors import InputError
from vesalius.deploy.prune import pruned_state
from vesalius.deploy.student import narrower_plan, student_plan
from vesalius.engines.classification.networks import ClassificationNetwork
from vesalius.engines.classification.plan import ClassificationPlan
from vesalius.engines.classification.trainer import ImageSet, train_classifier
from vesalius.engines.common.package import load_package
from vesalius.engines.segmentation.trainer import train_fold

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


def _place(wide: torch.Tensor, narrow: torch.Tensor, name: str) -> None:
    """Copy ``narrow`` into the leading block of ``wide``; a U-Net decoder's first convolution reads the
    concatenation (upsampled, skip), so each half of its input channels gets its own leading block."""
    if ".conv_block.conv1." in name and name.endswith("weight") and "upsample" in name:
        half_wide, half_narrow = wide.shape[1] // 2, narrow.shape[1] // 2
        _place(wide[:, :half_wide], narrow[:, :half_narrow], "")
        _place(wide[:, half_wide:], narrow[:, half_narrow:], "")
        return
    wide[tuple(slice(0, size) for size in narrow.shape)] = narrow


def embed(narrow: torch.nn.Module, wide: torch.nn.Module) -> None:
    """Put ``narrow``'s weights in the leading channels of ``wide`` and make every other channel dead."""
    torch.manual_seed(0)
    for module in narrow.modules():  # live batch-norm statistics, so the test sees them carried over
        if isinstance(module, torch.nn.BatchNorm2d) and module.running_mean is not None:
            module.running_mean.uniform_(-0.3, 0.3)
    small, state = narrow.state_dict(), {}
    for name, value in wide.state_dict().items():
        filled = torch.ones_like(value) if name.endswith("running_var") else torch.zeros_like(value)
        if value.dim() == 0:
            filled = small[name].clone()
        else:
            _place(filled, small[name], name)
        state[name] = filled
    wide.load_state_dict(state)


def deep_supervision_outputs(network: torch.nn.Module, images: torch.Tensor) -> object:
    out = network.output_block(network.skip_layers(images))  # type: ignore[operator]
    return [out, *network.heads]  # type: ignore[misc]


def test_a_resnet_with_dead_channels_prunes_back_to_its_live_network(tmp_path: Path) -> None:
    plan = ClassificationPlan.model_validate(
        load_package(classification_package(tmp_path / "p")).manifest.plan  # type: ignore[operator]
    )
    narrow_plan = narrower_plan(plan, 0.5)
    assert narrow_plan.network.width == pytest.approx(plan.network.width / 2)
    torch.manual_seed(1)
    narrow = ClassificationNetwork.build(narrow_plan.network).eval()
    wide = ClassificationNetwork.build(plan.network).eval()
    embed(narrow, wide)
    images = torch.randn(2, 1, 32, 32)
    assert torch.allclose(wide(images), narrow(images), atol=1e-5)  # the dead channels change nothing
    before = {k: v.clone() for k, v in wide.state_dict().items()}
    state = pruned_state(wide, ClassificationNetwork.build(narrow_plan.network), images[:1], keep=("heads",))
    for name, value in narrow.state_dict().items():
        assert torch.equal(state[name], value), name
    assert all(torch.equal(before[k], v) for k, v in wide.state_dict().items())  # the input is left alone


def test_a_unet_with_dead_channels_prunes_back_through_skips_and_deep_supervision() -> None:
    plan = tiny_plan()
    narrow_plan = narrower_plan(plan, 0.5)
    assert narrow_plan.network.filters == [4, 4, 8]  # never below 4 filters a stage
    torch.manual_seed(2)
    narrow, wide = narrow_plan.network.build(), plan.network.build()
    embed(narrow, wide)
    state = pruned_state(
        wide,
        narrow_plan.network.build(),
        torch.zeros(1, 1, 16, 16, 16),
        keep=("output_block", "deep_supervision_heads"),
        forward=deep_supervision_outputs,
    )
    assert state.keys() == narrow.state_dict().keys()
    for name, value in narrow.state_dict().items():
        assert torch.equal(state[name], value), name
    rebuilt = narrow_plan.network.build()
    rebuilt.load_state_dict(state)
    images = torch.randn(1, 1, 16, 16, 16)
    for network in (rebuilt, wide):
        network.train()  # deep-supervision outputs too
    assert torch.allclose(rebuilt(images), wide(images), atol=1e-5)


def test_the_weakest_channels_go_first() -> None:
    """Two 1-layer networks differing only in which output channel is strong keep different channels."""
    network = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    with torch.no_grad():
        network[0].weight.copy_(
            torch.arange(1.0, 5.0).view(4, 1, 1, 1).expand(4, 1, 3, 3) * torch.tensor([1, 9, 1, 9]).view(4, 1, 1, 1)
        )
        network[2].weight.fill_(0.1)
    narrow = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.Conv2d(2, 2, 1))
    state = pruned_state(network, narrow, torch.zeros(1, 1, 8, 8), keep=("2",))
    kept = state["0.weight"][:, 0, 0, 0]
    assert kept.tolist() == [18.0, 36.0]  # channels 1 and 3: 2 x 9 and 4 x 9


def test_pruning_refuses_what_it_cannot_express(tmp_path: Path) -> None:
    plan = ClassificationPlan.model_validate(
        load_package(classification_package(tmp_path / "p")).manifest.plan  # type: ignore[operator]
    )
    for ratio in (0.0, 1.0, -0.2):
        with pytest.raises(InputError, match="between 0 and 1"):
            narrower_plan(plan, ratio)
    with pytest.raises(InputError, match="removes no channel"):
        narrower_plan(plan, 0.001)
    densenet = student_plan(plan, "densenet121")
    with pytest.raises(InputError, match="ResNet classifiers"):
        narrower_plan(densenet, 0.5)


def test_fine_tuning_starts_from_the_given_weights(tmp_path: Path) -> None:
    """With a learning rate of 0 the trainers must hand back exactly the weights they were given."""
    plan = ClassificationPlan.model_validate(load_package(classification_package(tmp_path / "p")).manifest.plan)
    frozen = plan.model_copy(update={"learning_rate": 0.0, "epochs": 1, "batch_size": 4})
    torch.manual_seed(7)
    given = ClassificationNetwork.build(plan.network).state_dict()
    rng = np.random.default_rng(0)
    data = ImageSet([f"i{i}" for i in range(8)], rng.normal(size=(8, 1, 32, 32)).astype(np.float32), np.arange(8) % 2)
    result = train_classifier(frozen, data, data, tmp_path / "run", device="cpu", precision="fp32", initial_state=given)
    for name, value in given.items():
        if name.endswith("weight"):
            assert torch.equal(result.state_dict[name], value), name

    cases = [blob_case(f"case_{n}", (24, 24, 20), (1.0, 1.0, 1.0), seed=n) for n in range(6)]
    dataset = write_msd(tmp_path / "Blobs", cases)
    segmentation = small_segmentation_plan(dataset)
    segmentation = segmentation.model_copy(update={"optimizer": segmentation.optimizer.model_copy(update={"lr": 0.0})})
    torch.manual_seed(8)
    start = segmentation.network.build().state_dict()
    package = train_fold(
        dataset, segmentation, 0, tmp_path / "seg", epochs=1, iterations_per_epoch=2, initial_state=start
    )
    for name, value in load_package(package.package).state_dict().items():
        assert torch.equal(value, start[name].half().float()), name  # packages store float16
