"""Find the Linear/ReLU chain inside a user's `nn.Module` with `torch.fx`.

The engine runs a chain of fully connected layers with an optional ReLU after each. A user's
model is any module class whose forward is such a chain: `nn.Sequential`, a custom class, or a
class holding Sequentials. `linear_chain` traces the forward with `torch.fx.symbolic_trace` and
walks the graph: the data must flow through one path from the input to the output, and every
node on it must be a Linear, a ReLU (module, function or method) or a flatten / view / reshape
(allowed only before the first Linear, where it is the per-example flatten of the input).
Dropout and Identity are no-ops at inference and are passed over. Anything else is refused with
one line naming the node and the op, e.g.
``model: op 'sigmoid' at node 'sigmoid' is not Linear/ReLU/Flatten``.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch import nn

from .errors import InputError


@dataclass(frozen=True)
class ChainLayer:
    name: str  # the module's qualified name, as in model.named_modules()
    linear: nn.Linear
    relu: bool


_RELU_FUNCS = {torch.relu, torch.nn.functional.relu, torch.relu_}
_FLATTEN_FUNCS = {torch.flatten, torch.reshape}
_RELU_METHODS = {"relu", "relu_"}
_FLATTEN_METHODS = {"flatten", "view", "reshape"}
# Shape arithmetic feeding a reshape: x.size(0), x.shape[0], -1 ... (not on the data path).
_SHAPE_METHODS = {"size", "dim"}
_SHAPE_FUNCS = {getattr, operator.getitem, operator.mul, operator.floordiv, operator.neg}
_NOOP_MODULES = (nn.Dropout, nn.Identity)


def _op_name(node) -> str:
    t = node.target
    if node.op == "call_module":
        return str(t)
    if node.op == "call_method":
        return str(t)
    return getattr(t, "__name__", str(t))


def trace(model: nn.Module):
    """torch.fx graph module of the model; InputError (one line) when it cannot be traced."""
    import torch.fx

    if not isinstance(model, nn.Module):
        raise InputError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    try:
        return torch.fx.symbolic_trace(model)
    except Exception as e:  # noqa: BLE001 - fx raises many types; report one line
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"model: {type(model).__name__} cannot be traced with torch.fx "
                         f"({msg[:160]}); its forward must be a Linear/ReLU chain") from None


def linear_chain(model: nn.Module) -> list[ChainLayer]:
    """The (name, Linear, relu) layers the model's forward applies, in order; InputError else."""
    gm = trace(model)
    modules = dict(model.named_modules())
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise InputError(f"model: forward takes {len(placeholders)} inputs; the engine's "
                         "networks take one")
    data = placeholders[0]  # the node currently holding the data tensor
    on_path = {data}  # every node that held the data tensor
    chain: list[ChainLayer] = []
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "get_attr"):
            if node.op == "get_attr":
                raise InputError(f"model: node '{node.name}' reads parameter '{node.target}' "
                                 "directly; only Linear/ReLU/Flatten are supported")
            continue
        if node.op == "output":
            out = node.args[0]
            if out is not data:
                raise InputError("model: the forward's output is not the end of a single "
                                 "Linear/ReLU chain")
            break
        kind = _classify(node, modules)
        if kind == "shape":
            # x.size(0), x.shape[0] * 4 feed a reshape; x[:, 0] or x * 2 compute on the data.
            if not _is_shape_read(node) and _depends_on(node, on_path):
                raise InputError(f"model: op '{_op_name(node)}' at node '{node.name}' "
                                 "is not Linear/ReLU/Flatten")
            continue
        if kind is None:
            what = (f"module '{node.target}' ({type(modules.get(node.target)).__name__})"
                    if node.op == "call_module" else f"op '{_op_name(node)}'")
            raise InputError(f"model: {what} at node '{node.name}' is not Linear/ReLU/Flatten")
        if not node.args or node.args[0] is not data:
            raise InputError(f"model: node '{node.name}' ({_op_name(node)}) does not take the "
                             "previous layer's output: the engine runs a single chain")
        others = [a for a in node.all_input_nodes if a is not node.args[0]]
        if any(_depends_on(a, on_path) for a in others):
            raise InputError(f"model: node '{node.name}' combines two tensors; the engine "
                             "runs a single chain")
        if kind == "linear":
            chain.append(ChainLayer(str(node.target), modules[node.target], False))
        elif kind == "relu":
            if not chain:
                raise InputError(f"model: ReLU at node '{node.name}' before the first Linear "
                                 "(the engine's input is not rectified)")
            last = chain[-1]
            chain[-1] = ChainLayer(last.name, last.linear, True)
        elif kind == "flatten" and chain:
            raise InputError(f"model: '{_op_name(node)}' at node '{node.name}' after a Linear "
                             "layer; only the input may be flattened")
        data = node
        on_path.add(node)
    if not chain:
        raise InputError(f"model: {type(model).__name__} has no Linear layer on its forward path")
    for a, b in zip(chain, chain[1:]):
        if a.linear.out_features != b.linear.in_features:
            raise InputError(f"model: layer {a.name} has {a.linear.out_features} outputs but "
                             f"{b.name} takes {b.linear.in_features}")
    return chain


def _is_shape_read(node) -> bool:
    if node.op == "call_method":
        return node.target in _SHAPE_METHODS
    return node.op == "call_function" and node.target is getattr and len(node.args) > 1 \
        and node.args[1] == "shape"


def _depends_on(node, on_path: set) -> bool:
    """Whether `node` is computed from a data-path node other than through its shape."""
    seen, stack = set(), [node]
    while stack:
        n = stack.pop()
        if n in on_path:
            return True
        if n in seen or _is_shape_read(n):
            continue  # x.size(...) / x.shape is shape, not data
        seen.add(n)
        stack.extend(n.all_input_nodes)
    return False


def _classify(node, modules) -> str | None:
    if node.op == "call_module":
        m = modules.get(node.target)
        if isinstance(m, nn.Linear):
            return "linear"
        if isinstance(m, nn.ReLU):
            return "relu"
        if isinstance(m, nn.Flatten):
            return "flatten"
        if isinstance(m, _NOOP_MODULES):
            return "noop"
        return None
    if node.op == "call_function":
        if node.target in _RELU_FUNCS:
            return "relu"
        if node.target in _FLATTEN_FUNCS:
            return "flatten"
        if node.target in (torch.nn.functional.dropout,):
            return "noop"
        if node.target in _SHAPE_FUNCS:
            return "shape"
        return None
    if node.op == "call_method":
        if node.target in _RELU_METHODS:
            return "relu"
        if node.target in _FLATTEN_METHODS:
            return "flatten"
        if node.target in _SHAPE_METHODS:
            return "shape"
        return None
    return None


def run_chain(chain: list[ChainLayer], x: torch.Tensor) -> torch.Tensor:
    """The chain's float output on x flattened per example (what the engine computes)."""
    a = x.reshape(len(x), -1)
    for layer in chain:
        a = layer.linear(a)
        if layer.relu:
            a = torch.relu(a)
    return a


def has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


__all__ = ["ChainLayer", "linear_chain", "run_chain", "trace", "has_conv"]
