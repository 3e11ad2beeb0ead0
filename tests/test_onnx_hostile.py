"""The ONNX importer against hostile and malformed files (each case built from its
description in tests/onnx_cases.py): every one is refused before anything of its declared
size is made, with exit status 2 and one line naming the node, within a few MB and well under
a second of CPU; non-finite and out-of-range weights and data are refused before training."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from compress import limits
from compress.cli import main
from compress.errors import InputError
from compress.onnx_import import load_onnx

from . import onnx_cases as C
from .conftest import REPO

# A child process measures each case on its own: peak RSS growth (VmHWM reset through
# /proc/self/clear_refs) and CPU time, under an address-space cap so that a bomb that is not
# refused fails the test instead of the machine.
_CHILD = textwrap.dedent("""
    import json, resource, sys, time, warnings
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
    resource.setrlimit(resource.RLIMIT_CPU, (120, 120))
    from compress.onnx_import import load_onnx
    from compress.errors import InputError

    def kb(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1])

    load_onnx(sys.argv[1])  # warm up (lazy imports, first layers)
    out = {}
    for path in sys.argv[2:]:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # the peak RSS starts again from the current RSS
        rss0, t = kb("VmRSS:"), time.process_time()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                load_onnx(path)
                res = "ok"
            except InputError as e:
                res = "refused: " + str(e)
            except BaseException as e:
                res = "ERROR " + type(e).__name__ + ": " + str(e)[:200]
        out[path] = {"result": res, "cpu": time.process_time() - t,
                     "mb": (kb("VmHWM:") - rss0) / 1024, "warnings": len(caught)}
    print(json.dumps(out))
""")


def _measure(tmp_path, cases: dict[str, bytes]) -> dict:
    paths = {}
    for name, data in cases.items():
        paths[name] = tmp_path / f"{name}.onnx"
        paths[name].write_bytes(data)
    good = tmp_path / "warmup.onnx"
    good.write_bytes(C.small_valid())
    p = subprocess.run([sys.executable, "-c", _CHILD, str(good), *map(str, paths.values())],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    got = json.loads(p.stdout)
    return {name: got[str(path)] for name, path in paths.items()}


def test_bombs_refused_before_they_cost(tmp_path):
    """Item 1: the Concat doubling, the pads and the pooling-work bombs, and 33 MB of empty
    nodes: refused with one line, a few MB and a fraction of a second each (they took 2.3 GB,
    ran past 400 s, and 2.7 GB before)."""
    cases = {"concat": C.concat_bomb(27), "pads": C.pads_bomb(1000),
             "pool_work": C.pool_work_bomb(400, 401), "empty_nodes": C.empty_nodes(33)}
    assert len(cases["pads"]) < 300 and len(cases["concat"]) < 1500
    got = _measure(tmp_path, cases)
    want = {"concat": ("'cat3' (Concat)", "max_rank"),
            "pads": ("Conv node", "[1, 2001, 2001]", "max_activations"),
            "pool_work": ("MaxPool node", "max_ops"),
            "empty_nodes": ("max_onnx_nodes",)}
    for name, r in got.items():
        assert r["result"].startswith("refused: "), (name, r)
        assert "\n" not in r["result"] and r["warnings"] == 0, (name, r)
        for word in want[name]:
            assert word in r["result"], (name, r)
        assert r["cpu"] < 0.5, (name, r)  # CPU time, with headroom (measured: < 0.05 s)
        size_mb = len(cases[name]) / 2**20
        assert r["mb"] < 8 + 1.5 * size_mb, (name, r)  # the file itself, then a few MB


def test_empty_nodes_refused_by_the_wire_scan_at_any_limit(tmp_path):
    """The node count is taken from the protobuf before it is parsed: raising the limit
    refuses the same file on its other entries instead."""
    path = tmp_path / "e.onnx"
    path.write_bytes(C.empty_nodes(0.05))  # 26,214 empty nodes
    with pytest.raises(InputError, match=r"more than 4,096 nodes.*max_onnx_nodes"):
        load_onnx(path)
    with limits.override(max_onnx_nodes=1 << 15):
        with pytest.raises(InputError, match=r"'' node|op '' is not supported|node.*\(''\)"):
            load_onnx(path)


@pytest.mark.parametrize("case,words", [
    ("alpha_string", ("'fc' (Gemm)", "alpha must be a float, not a string")),
    ("alpha_tensor", ("'fc' (Gemm)", "alpha must be a float, not a tensor")),
    ("alpha_graph", ("'fc' (Gemm)", "alpha must be a float, not a graph")),
    ("alpha_ints", ("'fc' (Gemm)", "alpha must be a float, not integers")),
    ("relu_no_output", ("'bad' (Relu)", "no output")),
    ("flatten_no_output", ("'bad' (Flatten)", "no output")),
    ("constant_no_output", ("'c' (Constant)", "no output")),
    ("segment", ("initializer 'W'", "segmented")),
    ("axes70", ("initializer 'W'", "70 axes", "max_rank")),
    ("type999", ("initializer 'W'", "data type 999")),
    ("shape_start", ("'shape' (Shape)", "start must be an integer, not a string")),
    ("zero_outputs", ("'fc' (Gemm)", "[0, 4]", "no outputs")),
])
def test_malformed_refused_in_one_line(tmp_path, case, words):
    """Item 2: each gave exit 1 with a Python exception (five lines for 0 outputs)."""
    data = {"alpha_string": C.gemm_alpha("string"), "alpha_tensor": C.gemm_alpha("tensor"),
            "alpha_graph": C.gemm_alpha("graph"), "alpha_ints": C.gemm_alpha("ints"),
            "relu_no_output": C.no_outputs("Relu"),
            "flatten_no_output": C.no_outputs("Flatten"),
            "constant_no_output": C.no_outputs("Constant"),
            "segment": C.initializer("segment"), "axes70": C.initializer("axes70"),
            "type999": C.initializer("type999"), "shape_start": C.shape_start("a"),
            "zero_outputs": C.initializer("zero-outputs")}[case]
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    with pytest.raises(InputError) as e:
        load_onnx(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg, msg
    for w in words:
        assert w in msg, msg


def _cli(argv, capsys):
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("command", ["pipeline", "sensitivity"])
@pytest.mark.parametrize("case,words", [
    ("w_nan", ("'fc' (Gemm)", "NaN or infinite")),
    ("w_inf", ("'fc' (Gemm)", "NaN or infinite")),
    ("w_3e38", ("'fc' (Gemm)", "3e+38", "2**31")),
    ("alpha_inf", ("'fc' (Gemm)", "alpha=inf", "not a finite number")),
    ("alpha_1e38", ("'fc' (Gemm)", "1e+38", "2**31")),
    ("x_3e38", ("x_train", "3e+38", "2**31")),
    ("x_1e300_float64", ("x_train", "1e+300", "2**31")),
    ("overflow", ("outputs on train x are not finite",)),
])
def test_non_finite_and_extreme_values_refused_before_training(tmp_path, capsys, command, case,
                                                               words):
    """Item 3: NaN/Inf/3e38 weights, an alpha of inf or 1e38, data of 3e38 (float32) or 1e300
    (float64), and finite weights whose float32 outputs overflow: exit 2, one line, nothing
    written (they gave exit 1 after the work, or a numpy warning with its source line)."""
    model = tmp_path / "m.onnx"
    if case.startswith("w_"):
        model.write_bytes(C.initializer(case[2:]))
    elif case.startswith("alpha_"):
        model.write_bytes(C.gemm_alpha(case[6:]))
    elif case == "overflow":
        # four layers of weights 2**30 (each within range): the output overflows float32
        inits, nodes, cur = [], [], "x"
        for i in range(4):
            inits.append(numpy_helper.from_array(np.full((4, 4), 2.0**30, np.float32), f"W{i}"))
            nodes.append(helper.make_node("Gemm", [cur, f"W{i}"], [f"h{i}" if i < 3 else "y"],
                                          name=f"fc{i}", transB=1))
            cur = f"h{i}"
        g = helper.make_graph(nodes, "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=inits)
        model.write_bytes(helper.make_model(
            g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    else:
        model.write_bytes(C.initializer("none"))
    x_value = {"x_3e38": 3e38, "x_1e300_float64": 1e300}.get(case)
    data = C.data_npz(tmp_path / "d.npz", x_value,
                      dtype=np.float64 if case.endswith("float64") else np.float32)
    out = tmp_path / "out"
    argv = [command, "--model", model, "--data", data, "--out", out, "--no-progress"]
    if command == "pipeline":
        argv += ["--max-steps", "2"]
    rc, err = _cli(argv, capsys)
    if command == "sensitivity" and case == "overflow":
        # sensitivity trains nothing: the overflowing outputs only make its accuracies low
        assert rc == 0 and "Traceback" not in err and "warning" not in err, err
        return
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err
    assert not out.exists()


@pytest.mark.parametrize("size,k,s,p", [(7, 2, 2, 1), (5, 3, 2, 1), (8, 3, 2, 1), (6, 3, 3, 0)])
def test_ceil_mode_window_sizes_are_torchs(tmp_path, size, k, s, p):
    """The importer's derived sizes are the ones torch computes (a ceil_mode window that would
    start in the padding is dropped): the network it returns runs on its declared input."""
    import torch
    from torch import nn

    from .test_onnx_import import export

    torch.manual_seed(0)
    conv, pool = nn.Conv2d(1, 2, 1), nn.MaxPool2d(k, s, padding=p, ceil_mode=True)
    with torch.no_grad():
        n = pool(conv(torch.zeros(1, 1, size, size))).numel()
    model = nn.Sequential(conv, pool, nn.Flatten(), nn.Linear(n, 3))
    imported = load_onnx(export(model, torch.randn(2, 1, size, size), tmp_path / "m.onnx"))
    x = torch.randn(4, 1, size, size)
    with torch.no_grad():
        assert torch.allclose(imported(x), model(x), atol=1e-5)


def test_evaluation_batches_shrink_with_the_feature_maps():
    """Sensitivity and accuracy evaluate 4096 examples a batch: a network whose examples each
    make millions of activations gets fewer a batch (at most EVAL_VALUES values in all)."""
    import torch
    from torch import nn

    from compress.train import EVAL_VALUES, eval_batch

    small = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))
    assert eval_batch(small, torch.zeros(1, 4, 4), 4096) == 4096
    wide = nn.Sequential(nn.Conv2d(1, 64, 3, padding=1), nn.ReLU())  # 2 x 64 x 256 x 256
    n = eval_batch(wide, torch.zeros(1, 1, 256, 256), 4096)
    assert n == EVAL_VALUES // (2 * 64 * 256 * 256) == 8
