"""Structured channel pruning: remove whole convolution channels, smallest L1 norm first, down to the widths of a
narrower network of the same plan.

Channels that must go together (a ResNet's residual stream, both sides of a U-Net's skip concatenation, the norm
after a convolution, the heads reading a feature map) are found by Torch-Pruning's dependency graph (Fang et al.
2023, DepGraph) and removed from every layer at once; each group is ranked by the mean L1 norm of its weights
across those layers. Every group is cut to the channel count of the same layer in ``narrower``, so the result
loads into a network the plan builds: a pruned model is an ordinary package, and predict, ONNX export, INT8 and
bench need nothing new.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch

from vesalius.core.errors import InputError

ForwardFunction = Callable[[torch.nn.Module, torch.Tensor], object]
PRUNABLE = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)

__all__ = ["PRUNABLE", "ForwardFunction", "pruned_state"]


def _channels(module: torch.nn.Module) -> int:
    return int(module.out_channels)  # type: ignore[arg-type]


def pruned_state(
    network: torch.nn.Module,
    narrower: torch.nn.Module,
    example: torch.Tensor,
    *,
    keep: Sequence[str] = (),
    forward: ForwardFunction | None = None,
) -> dict[str, torch.Tensor]:
    """The weights of ``network`` with its lowest-L1 channel groups removed, shaped as ``narrower``'s.

    ``keep``: name prefixes of output layers whose channels are the task's (classes), never pruned.
    ``forward``: how to call the network so every output layer is traced (a U-Net's deep-supervision heads).
    ``network`` itself is not changed."""
    import torch_pruning as tp

    model = copy.deepcopy(network).float().cpu()
    for module in model.modules():  # in-place activations hide the graph from the tracer
        if hasattr(module, "inplace"):
            setattr(module, "inplace", False)  # noqa: B010 - an attribute of some modules only
    names = {module: name for name, module in model.named_modules()}
    targets = dict(narrower.named_modules())
    ignored = [module for module, name in names.items() if name and any(name.startswith(k) for k in keep)]
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example.float().cpu(), forward_fn=forward)
    importance = tp.importance.GroupMagnitudeImportance(p=1)
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=list(PRUNABLE)):  # lazily: each
        # group is built after the previous one was pruned, so its indices are current
        dependency = group[0].dep
        root = dependency.target.module
        target = targets.get(names[root])
        if target is None:
            raise InputError(f"layer {names[root]!r} of the network has no counterpart in the narrower network")
        surplus = _channels(root) - _channels(target)
        if surplus < 0:
            raise InputError(f"layer {names[root]!r}: {_channels(target)} channels asked, only {_channels(root)} there")
        if surplus == 0:
            continue
        scores = importance(group)
        weakest = torch.argsort(scores)[:surplus].tolist()
        graph.get_pruning_group(root, dependency.handler, idxs=weakest).prune()
    state, wanted = model.state_dict(), narrower.state_dict()
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in wanted.items() if state[k].shape != v.shape]
    if wrong or set(state) != set(wanted):
        raise InputError(
            f"pruning did not reach the narrower network's shapes: {'; '.join(wrong[:3]) or 'names differ'}"
        )
    return {name: value.detach().clone() for name, value in state.items()}
