"""Find the layer chain inside a user's `nn.Module` with `torch.fx`; fold its BatchNorms.

The engine's networks are chains: fully connected layers, or convolution layers then fully
connected ones (docs/formats.md section 7). A user's model is any module class whose forward
is such a chain: `nn.Sequential`, a custom class, or a class holding Sequentials.
`network_chain` traces the forward with `torch.fx.symbolic_trace` and walks the graph: the data
must flow through one path from the input to the output, and every node on it must be one of

* `Linear`; `Conv2d` (groups 1, dilation 1, zero padding; before every Linear and every
  flatten), each optionally followed by
* `BatchNorm1d/2d` directly after it (folded into its weights and bias, `fold_batchnorm`),
* `ReLU` (module, function or method) and, after a conv, one `MaxPool2d` / `max_pool2d` whose
  window equals its stride (no padding, dilation 1, floor), before or after the ReLU;
* a flatten / view / reshape (before the first Linear: the per-example flatten of the input or
  of the last conv map);
* `Dropout` and `Identity` (no-ops at inference: passed over);
* a final `Softmax` / `LogSoftmax` over the classes (dropped: the argmax is the same).

Anything else is refused with one line naming the node and why, e.g.
``model: op 'sigmoid' at node 'sigmoid' is not a layer the engine runs``, or
``model: BatchNorm 'bn' at node 'bn' follows a ReLU; only a BatchNorm directly after a
Linear/Conv2d can be folded``. `linear_chain` is the same walk for fully connected networks
only (what the engine ran before convolution layers).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from .errors import InputError


@dataclass(frozen=True)
class ChainLayer:
    name: str  # the module's qualified name, as in model.named_modules()
    module: nn.Module  # nn.Linear or nn.Conv2d
    relu: bool = False
    pool: tuple[int, int] = (1, 1)  # max pooling fused after the layer (conv only)
    bn: str | None = None  # qualified name of a BatchNorm right after it, to fold

    @property
    def linear(self) -> nn.Module:
        """The layer's module (the name from when every layer was a Linear)."""
        return self.module

    @property
    def kind(self) -> str:
        return "conv" if isinstance(self.module, nn.Conv2d) else "fc"


@dataclass
class Chain:
    """The layers of a network in order, and what the walk passed over or will drop."""

    layers: list[ChainLayer]
    softmax: str | None = None  # node of a final Softmax/LogSoftmax (dropped)
    softmax_module: str | None = None  # its module's qualified name, if it is a module
    softmax_log: bool = False  # a LogSoftmax
    passed: list[str] = field(default_factory=list)  # Dropout / Identity nodes
    input_shape: tuple[int, ...] | None = None  # one example entering the first layer

    def __iter__(self):
        return iter(self.layers)

    def __len__(self):
        return len(self.layers)

    def __getitem__(self, i):
        return self.layers[i]

    @property
    def has_conv(self) -> bool:
        return any(c.kind == "conv" for c in self.layers)


_RELU_FUNCS = {torch.relu, torch.nn.functional.relu, torch.relu_}
_FLATTEN_FUNCS = {torch.flatten, torch.reshape}
_RELU_METHODS = {"relu", "relu_"}
_FLATTEN_METHODS = {"flatten", "view", "reshape"}
_POOL_FUNCS = {torch.nn.functional.max_pool2d, torch.max_pool2d}
_SOFTMAX_FUNCS = {torch.softmax, torch.log_softmax, torch.nn.functional.softmax,
                  torch.nn.functional.log_softmax}
_SOFTMAX_METHODS = {"softmax", "log_softmax"}
_DROPOUT_FUNCS = {torch.nn.functional.dropout, torch.nn.functional.dropout1d,
                  torch.nn.functional.dropout2d, torch.nn.functional.alpha_dropout,
                  torch.dropout}
# Shape arithmetic feeding a reshape: x.size(0), x.shape[0], -1 ... (not on the data path).
_SHAPE_METHODS = {"size", "dim"}
_SHAPE_FUNCS = {getattr, operator.getitem, operator.mul, operator.floordiv, operator.neg}
# What a traced function or method call is, first match wins (torch.reshape is a flatten).
_FUNCTION_KINDS = ((_RELU_FUNCS, "relu"), (_FLATTEN_FUNCS, "flatten"), (_POOL_FUNCS, "pool"),
                   (_SOFTMAX_FUNCS, "softmax"), (_DROPOUT_FUNCS, "noop"), (_SHAPE_FUNCS, "shape"))
_METHOD_KINDS = ((_RELU_METHODS, "relu"), (_FLATTEN_METHODS, "flatten"),
                 (_SOFTMAX_METHODS, "softmax"), (_SHAPE_METHODS, "shape"))
_NOOP_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout, nn.Identity)
_BN_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d)
_AVG_POOLS = (nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
              nn.AdaptiveMaxPool2d, nn.LPPool2d)
_WHAT = "Linear/Conv2d/ReLU/MaxPool2d/BatchNorm/Flatten"


def _op_name(node) -> str:
    t = node.target
    if node.op in ("call_module", "call_method"):
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
                         f"({msg[:160]}); its forward must be a chain of {_WHAT} "
                         "layers") from None


def linear_chain(model: nn.Module) -> list[ChainLayer]:
    """The (name, Linear, relu) layers of a fully connected network; InputError otherwise."""
    return list(_walk(model, fc_only=True))


def network_chain(model: nn.Module) -> Chain:
    """The layers (Linear or Conv2d, with ReLU, pooling and a BatchNorm to fold) the model's
    forward applies, in order; InputError (one line naming the node and why) otherwise."""
    return _walk(model, fc_only=False)


def _module_desc(node, modules) -> str:
    return f"module '{node.target}' ({type(modules.get(node.target)).__name__})"


def _walk(model: nn.Module, *, fc_only: bool) -> Chain:
    gm = trace(model)
    modules = dict(model.named_modules())
    what = "Linear/ReLU/Flatten" if fc_only else "a layer the engine runs"
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise InputError(f"model: forward takes {len(placeholders)} inputs; the engine's "
                         "networks take one")
    data = placeholders[0]  # the node currently holding the data tensor
    on_path = {data}  # every node that held the data tensor
    chain = Chain(layers=[])
    layers = chain.layers
    since: list[str] = []  # what followed the current layer: "bn", "relu", "pool"
    flat = False  # a flatten after the conv layers
    seen: set[int] = set()
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "get_attr"):
            if node.op == "get_attr":
                raise InputError(f"model: node '{node.name}' reads parameter '{node.target}' "
                                 f"directly; only {_WHAT} modules are supported")
            continue
        if node.op == "output":
            if node.args[0] is not data:
                raise InputError(f"model: the forward's output is not the end of a single "
                                 f"chain of {_WHAT} layers")
            break
        kind = _classify(node, modules)
        if fc_only and kind in ("conv", "bn", "pool", "softmax"):
            kind = None
        if kind == "shape":
            # x.size(0), x.shape[0] * 4 feed a reshape; x[:, 0] or x * 2 compute on the data.
            if not _is_shape_read(node) and _depends_on(node, on_path):
                raise InputError(f"model: op '{_op_name(node)}' at node '{node.name}' "
                                 f"is not {what}")
            continue
        if kind is None:
            if sum(_depends_on(a, on_path) for a in node.all_input_nodes) > 1:
                raise InputError(f"model: op '{_op_name(node)}' at node '{node.name}' combines "
                                 "two tensors (a residual add?); the engine runs a single chain")
            if node.op == "call_module":
                m = modules.get(node.target)
                why = " (average pooling is not supported: only max pooling)" if isinstance(
                    m, _AVG_POOLS) else ""
                raise InputError(f"model: {_module_desc(node, modules)} at node '{node.name}' "
                                 f"is not {what}{why}")
            raise InputError(f"model: op '{_op_name(node)}' at node '{node.name}' is not {what}")
        if not node.args or node.args[0] is not data:
            raise InputError(f"model: node '{node.name}' ({_op_name(node)}) does not take the "
                             "previous layer's output: the engine runs a single chain")
        others = [a for a in node.all_input_nodes if a is not node.args[0]]
        if any(_depends_on(a, on_path) for a in others):
            raise InputError(f"model: node '{node.name}' combines two tensors (a residual "
                             "add?); the engine runs a single chain")
        if chain.softmax is not None and kind != "noop":
            raise InputError(f"model: '{_op_name(node)}' at node '{node.name}' follows the "
                             f"Softmax at node '{chain.softmax}'; a Softmax is only dropped "
                             "as the last op")
        where = f"at node '{node.name}'"
        if kind in ("linear", "conv"):
            m = modules[node.target]
            if id(m) in seen:
                raise InputError(f"model: module '{node.target}' is applied twice ({where}); "
                                 "each layer's weights are its own")
            seen.add(id(m))
            if kind == "conv":
                _check_conv(node.target, m, where)
                if any(c.kind == "fc" for c in layers):
                    raise InputError(f"model: Conv2d '{node.target}' {where} follows a Linear "
                                     "layer; conv layers come first")
                if flat:
                    raise InputError(f"model: Conv2d '{node.target}' {where} follows a "
                                     "flatten; conv layers take [C, H, W] maps")
            elif layers and layers[-1].kind == "conv" and not flat:
                raise InputError(f"model: Linear '{node.target}' {where} takes a conv map; "
                                 "flatten it first (nn.Flatten or x.flatten(1))")
            layers.append(ChainLayer(str(node.target), m))
            since = []
        elif kind == "bn":
            m = modules[node.target]
            name = f"BatchNorm '{node.target}' {where}"
            if not layers:
                raise InputError(f"model: {name} comes before any Linear/Conv2d layer; only a "
                                 "BatchNorm directly after one can be folded")
            if since:
                after = {"bn": "another BatchNorm", "relu": "a ReLU",
                         "pool": "a MaxPool2d"}[since[-1]]
                raise InputError(f"model: {name} follows {after}; only a BatchNorm directly "
                                 "after a Linear/Conv2d can be folded into it")
            _check_bn(name, m, layers[-1])
            layers[-1] = replace(layers[-1], bn=str(node.target))
            since.append("bn")
        elif kind == "relu":
            if not layers:
                raise InputError(f"model: ReLU at node '{node.name}' before the first Linear "
                                 "(the engine's input is not rectified)")
            layers[-1] = replace(layers[-1], relu=True)
            since.append("relu")
        elif kind == "pool":
            pool = _pool_window(node, modules, where)
            if not layers or layers[-1].kind != "conv" or flat:
                raise InputError(f"model: MaxPool2d {where} does not follow a Conv2d layer (its "
                                 "BatchNorm or ReLU): pooling is fused into a conv layer")
            if "pool" in since:
                raise InputError(f"model: a second MaxPool2d {where} after '{layers[-1].name}'; "
                                 "one pooling per conv layer")
            layers[-1] = replace(layers[-1], pool=pool)
            since.append("pool")
        elif kind == "flatten":
            if any(c.kind == "fc" for c in layers):
                raise InputError(f"model: '{_op_name(node)}' at node '{node.name}' after a "
                                 "Linear layer; only the input (or the last conv map) may be "
                                 "flattened")
            if layers:
                flat = True
        elif kind == "softmax":
            if not _softmax_over_classes(node):
                raise InputError(f"model: Softmax {where} is not over the class axis (dim 1 "
                                 "or -1)")
            chain.softmax = node.name
            if node.op == "call_module":
                chain.softmax_module = str(node.target)
                chain.softmax_log = isinstance(modules[node.target], nn.LogSoftmax)
            else:
                chain.softmax_log = node.target in (torch.log_softmax,
                                                    torch.nn.functional.log_softmax,
                                                    "log_softmax")
        elif kind == "noop":
            chain.passed.append(node.name)
        data = node
        on_path.add(node)
    if not layers:
        raise InputError(f"model: {type(model).__name__} has no Linear"
                         f"{'' if fc_only else ' or Conv2d'} layer on its forward path")
    for a, b in zip(layers, layers[1:]):
        if a.kind == "fc" and a.module.out_features != b.module.in_features:
            raise InputError(f"model: layer {a.name} has {a.module.out_features} outputs but "
                             f"{b.name} takes {b.module.in_features}")
        if a.kind == "conv" and b.kind == "conv" and a.module.out_channels != b.module.in_channels:
            raise InputError(f"model: layer {a.name} has {a.module.out_channels} channels but "
                             f"{b.name} takes {b.module.in_channels}")
    return chain


def _check_conv(name: str, m: nn.Conv2d, where: str) -> None:
    desc = f"model: Conv2d '{name}' {where}"
    if m.groups != 1:
        raise InputError(f"{desc} has groups={m.groups}; only groups=1 is supported")
    if tuple(m.dilation) != (1, 1):
        raise InputError(f"{desc} has dilation={tuple(m.dilation)}; only 1 is supported")
    if m.padding_mode != "zeros":
        raise InputError(f"{desc} pads with {m.padding_mode!r}; only zero padding is supported")
    if isinstance(m.padding, str):
        if m.padding == "same" and any(k % 2 == 0 for k in m.kernel_size):
            raise InputError(f"{desc} has padding='same' with an even kernel "
                             f"{tuple(m.kernel_size)} (not the same on both sides)")


def conv_padding(m: nn.Conv2d) -> tuple[int, int]:
    """A Conv2d's zeros on each side, [ph, pw] ('valid' is 0, 'same' half the odd kernel)."""
    if isinstance(m.padding, str):
        if m.padding == "valid":
            return (0, 0)
        return tuple((k - 1) // 2 for k in m.kernel_size)
    return (int(m.padding[0]), int(m.padding[1]))


def _check_bn(name: str, m, layer: ChainLayer) -> None:
    want = nn.BatchNorm2d if layer.kind == "conv" else nn.BatchNorm1d
    if not isinstance(m, want):
        raise InputError(f"model: {name} is a {type(m).__name__} after a "
                         f"{type(layer.module).__name__}; expected a {want.__name__}")
    n = layer.module.out_channels if layer.kind == "conv" else layer.module.out_features
    if m.num_features != n:
        raise InputError(f"model: {name} has {m.num_features} features, '{layer.name}' gives "
                         f"{n}")
    if m.running_mean is None or m.running_var is None:
        raise InputError(f"model: {name} keeps no running statistics "
                         "(track_running_stats=False): there is nothing to fold")


def _pair(v) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        return (int(v[0]), int(v[1])) if len(v) == 2 else (int(v[0]), int(v[0]))
    return (int(v), int(v))


def _pool_window(node, modules, where: str) -> tuple[int, int]:
    """The window of a max pooling whose stride equals it; InputError for any other."""
    if node.op == "call_module":
        m = modules[node.target]
        k, s, p, d = m.kernel_size, m.stride, m.padding, m.dilation
        ceil, ret = m.ceil_mode, m.return_indices
    else:
        names = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode",
                 "return_indices")
        vals = dict(zip(names, node.args))
        vals.update(node.kwargs)
        k, s = vals.get("kernel_size"), vals.get("stride")
        p, d = vals.get("padding", 0), vals.get("dilation", 1)
        ceil, ret = vals.get("ceil_mode", False), vals.get("return_indices", False)
        if any(isinstance(v, torch.fx.Node) for v in (k, s, p, d, ceil, ret)):
            raise InputError(f"model: max_pool2d {where} has computed arguments; give them "
                             "as numbers")
    k = _pair(k)
    s = k if s is None or (isinstance(s, (list, tuple)) and not s) else _pair(s)
    bad = []
    if s != k:
        bad.append(f"stride {s} differs from the window {k}")
    if _pair(p) != (0, 0):
        bad.append(f"padding {_pair(p)}")
    if _pair(d) != (1, 1):
        bad.append(f"dilation {_pair(d)}")
    if ceil:
        bad.append("ceil_mode")
    if ret:
        bad.append("return_indices")
    if bad:
        raise InputError(f"model: MaxPool2d {where}: {', '.join(bad)}; only a window equal to "
                         "its stride, no padding, floor, is supported")
    return k


def _softmax_over_classes(node) -> bool:
    if node.op == "call_module":
        return True  # its dim was checked when it was classified
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    return dim in (1, -1)


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
        if isinstance(m, nn.Conv2d):
            return "conv"
        if isinstance(m, nn.ReLU):
            return "relu"
        if isinstance(m, nn.Flatten):
            return "flatten"
        if isinstance(m, _BN_MODULES):
            return "bn"
        if isinstance(m, nn.MaxPool2d):
            return "pool"
        if isinstance(m, (nn.Softmax, nn.LogSoftmax)):
            return "softmax" if m.dim in (1, -1, None) else None
        if isinstance(m, _NOOP_MODULES):
            return "noop"
        return None
    table = {"call_function": _FUNCTION_KINDS, "call_method": _METHOD_KINDS}.get(node.op, ())
    return next((kind for targets, kind in table if node.target in targets), None)


# ---------------------------------------------------------------------------------------------
# BatchNorm folding and the chain's own forward


@torch.no_grad()
def fold_batchnorm(model: nn.Module, chain: Chain) -> Chain:
    """Fold each BatchNorm of the chain into the layer before it, in place: with
    s = gamma / sqrt(running_var + eps), W' = W * s (per output row or channel) and
    b' = (b - running_mean) * s + beta, then the BatchNorm module becomes an `nn.Identity`.
    At inference the model computes the same (up to float rounding); returns the chain
    without BatchNorms."""
    modules = dict(model.named_modules())
    out = []
    for c in chain.layers:
        if c.bn is None:
            out.append(c)
            continue
        bn = modules[c.bn]
        m = c.module
        s = bn.running_var.double().add(bn.eps).rsqrt()
        beta = torch.zeros_like(s)
        if bn.affine:
            s = s * bn.weight.double()
            beta = bn.bias.double()
        w = m.weight.double() * s.reshape(-1, *([1] * (m.weight.ndim - 1)))
        b = m.bias.double() if m.bias is not None else torch.zeros_like(s)
        b = (b - bn.running_mean.double()) * s + beta
        m.weight.copy_(w.to(m.weight.dtype))
        if m.bias is None:
            m.bias = nn.Parameter(b.to(m.weight.dtype))
        else:
            m.bias.copy_(b.to(m.bias.dtype))
        _set_module(model, c.bn, nn.Identity())
        out.append(replace(c, bn=None))
    return replace(chain, layers=out, passed=list(chain.passed))


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def drop_softmax(model: nn.Module, chain: Chain) -> nn.Module:
    """The model without its final Softmax/LogSoftmax: the module replaced by an Identity, or
    for a function (F.log_softmax in the forward) the traced graph without that node."""
    if chain.softmax is None:
        return model
    if chain.softmax_module is not None:
        _set_module(model, chain.softmax_module, nn.Identity())
        return model
    gm = trace(model)
    for node in gm.graph.nodes:
        if node.name == chain.softmax:
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            break
    gm.recompile()
    return gm


def input_shape(chain: Chain, model: nn.Module, x: torch.Tensor) -> tuple[int, ...]:
    """One example's shape entering the first layer (measured on x): (C, H, W) for a conv
    first layer, (in_features,) for a Linear."""
    first = chain.layers[0]
    if first.kind == "fc":
        return (int(first.module.in_features),)
    got = {}

    def hook(m, args):
        got["shape"] = tuple(args[0].shape[1:])

    h = first.module.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            model(x[:2])
    finally:
        h.remove()
    shape = got.get("shape")
    if shape is None or len(shape) != 3:
        raise InputError(f"model: the first conv layer {first.name} takes "
                         f"{list(shape) if shape else 'nothing'} per example, expected "
                         "[C, H, W]")
    return tuple(int(d) for d in shape)


def run_chain(chain, x: torch.Tensor, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """The chain's float output on x as the engine computes it: the example reshaped to
    `shape` (flat when None), conv layers (with ReLU and pooling), a flatten, fc layers."""
    a = x.reshape(len(x), *(shape or (-1,)))
    for layer in chain:
        if layer.kind == "conv":
            a = layer.module(a)
        else:
            a = layer.module(a.reshape(len(a), -1))
        if layer.relu:
            a = torch.relu(a)
        if tuple(layer.pool) != (1, 1):
            a = torch.nn.functional.max_pool2d(a, layer.pool)
    return a.reshape(len(a), -1)


def has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


__all__ = ["Chain", "ChainLayer", "linear_chain", "network_chain", "run_chain", "trace",
           "has_conv", "fold_batchnorm", "drop_softmax", "input_shape", "conv_padding"]
