"""The engine in a Verilator testbench with no Python in the loop (docs/verification.md).

The engine's Verilog comes from the same path as the cocotb bench's (`tb.sim.engine_verilog`);
every memory's initial contents are then taken out of it: each `initial` block that fills a
memory word by word becomes a `$readmemh` of `<mems>/<memory>.hex`,
`<mems>` given at run time (`+mems=DIR`). What is left (the "template", engine.sv) is the logic
alone, so networks that differ only in their memories' contents run on one binary. The bench
(tb/verilog/engine_tb.cpp, a C++ main around tb/verilog/engine_top.sv) streams the input vectors
in from a hex file and writes outputs and the engine's cycle counters per vector to a text file;
`verilator --cc --exe --build` builds them into one executable.

Builds are cached under build/fastbench/ (or $FASTBENCH_BUILD_DIR):

* `bin/<t>/`: one binary per template, t = sha256 of engine.sv, the bench and the build flags;
  made under a file lock (parallel test workers), with `meta.json` (the top's sizes and every
  memory: name, width, depth). The C++ objects are deleted once the binary is linked.
* `keys/<k>.json`: image digest + engine parameters + the sources that make the Verilog
  (`tb.sim.build_key`) -> t, so an unchanged image is not converted again.

`build(image, params)` gives a `FastBuild`; `write_mems(fb, image, params, dir)` writes the
image's memories for it (from `images.memory_specs`: no Verilog needed, each checked
against the binary's width and depth); `run(fb, mems_dir, x)` runs vectors. `build(..., key=K)`
indexes a binary under a key of the caller's: `tb.randomnets.shape_key` names what must be equal
for two images to share a binary without converting the second one (`template_of` gives the
exact answer by conversion).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compress.atomic import check_build_dir, file_lock
from compress.errors import InputError
from images import EngineParams, memory_specs
from images.conv import engine_in_features, engine_out_features

from . import verilator as vl
from .sim import (REPO, build_key, default_params, engine_verilog, loadable, run_in_group,
                  shape_key, shape_template, write_mem_files)

TB_SOURCE = Path(__file__).resolve().parent / "verilog" / "engine_tb.cpp"  # the C++ main
TB_TOP = TB_SOURCE.with_name("engine_top.sv")  # the engine with its reset from a flip-flop
TOP = "engine_top"
# A C++ main clocks the model itself (no `--timing` scheduler, one eval() a half cycle): four
# times the cycles per CPU second of the SystemVerilog bench it replaced (docs/verification.md).
FLAGS = ("--cc", "--exe", "--build", "-O3", "--x-assign", "fast", "--x-initial", "fast",
         "--top-module", TOP, *vl.BUILD_ARGS,
         "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-Wno-CASEINCOMPLETE", "-Wno-UNOPTFLAT")


# The C++ optimisation of the model's hot code (Verilator's OPT_FAST; its other code is built
# at -O0). Measured on Alex-6's 64-PE loadable engine (docs/RESULTS.md section 6): -Os compiles
# in 195 s and simulates 4 vectors in 5.5 s, -O1 217 s / 4.8 s, -O0 116 s / 12.6 s. A network's
# own binary (run for many vectors: make verify-mnist) keeps -Os; a loadable engine's shape
# (a few vectors a network in bench.eie) gets -O0 unless FASTBENCH_OPT says otherwise.
OPTS = ("-O0", "-O1", "-Os", "-O2")
DEFAULT_OPT = "-Os"
SHAPE_OPT = "-O0"
# `make verify-mnist` runs one binary for 10,000 digits: -O2 simulates LeNet-5 11-14% faster
# than -Os (EIE engine 1.14 M cycles a CPU second against 0.98, lockstep 2.88 against 2.56) for
# about 10 s more of compiling.
LONG_RUN_OPT = "-O2"


def build_root() -> Path:
    return Path(os.environ.get("FASTBENCH_BUILD_DIR") or REPO / "build" / "fastbench")


# ---- the template: the engine's Verilog without its memories' contents ------------------------

_DECL = re.compile(r"^\s*reg \[(\d+):0\] (\w+) \[(\d+):0\];$", re.M)
_INIT = re.compile(
    r"^  initial begin\n((?:    \w+\[\d+\] = \d+'[hdb][0-9a-fA-FxXzZ_]+;\n)+)  end\n", re.M)
_WORD = re.compile(r"(\w+)\[(\d+)\] = (\d+)'([hdb])([0-9a-fA-F_]+);")
_BASE = {"h": 16, "d": 10, "b": 2}


def _load_block(name: str, depth: int) -> str:
    return (f"  initial begin : {name}__load\n"
            f"    string d;\n"
            f"    if (!$value$plusargs(\"mems=%s\", d)) d = \".\";\n"
            f"    $readmemh({{d, \"/{name}.hex\"}}, {name}, 0, {depth - 1});\n"
            f"  end\n")


def split_memories(text: str) -> tuple[str, dict[str, dict]]:
    """(template, memories): every memory's init block replaced by a `$readmemh` and the words
    it held: {name: {"width", "depth", "words": [int, ...] (depth of them)}}."""
    decls = {name: (int(msb) + 1, int(hi) + 1) for msb, name, hi in _DECL.findall(text)}
    mems: dict[str, dict] = {}

    def repl(mt):
        words = _WORD.findall(mt.group(1))
        name = words[0][0]
        if any(w[0] != name for w in words) or name not in decls or name in mems:
            raise RuntimeError(f"unexpected memory initialisation in the Verilog ({name})")
        width, depth = decls[name]
        vals = [0] * depth
        for _n, idx, _w, base, digits in words:
            vals[int(idx)] = int(digits.replace("_", ""), _BASE[base])
        mems[name] = {"width": width, "depth": depth, "words": vals}
        return _load_block(name, depth)

    template = _INIT.sub(repl, text)
    missing = set(decls) - set(mems)
    if missing:  # a memory the bench could not fill: its contents would be baked in
        raise RuntimeError(f"memories without an init block: {', '.join(sorted(missing))}")
    return template, mems


def template_of(image, params: EngineParams | None = None) -> tuple[str, dict]:
    """The engine's Verilog for `image` split by `split_memories` (one Amaranth conversion)."""
    return split_memories(engine_verilog(image, params, name="engine"))


def spec_words(image, params: EngineParams | None = None) -> dict[str, tuple[int, int, list]]:
    """{verilog memory name: (width, spec depth, init words)} from the image's memory map."""
    out = {}
    for s in memory_specs(image, default_params(image) if params is None else params):
        out[s.name.replace(".", "_")] = (s.width, s.depth, list(s.init))
    return out


# ---- builds ----------------------------------------------------------------------------------

@dataclass
class FastBuild:
    dir: Path
    binary: Path
    in_features: int
    out_features: int
    layers: int
    mems: dict  # name -> {"width", "depth"}
    lanes: int  # words a beat on i_act and o_act
    build_seconds: float  # 0 when the cached binary was used


@functools.cache
def _bench_hash() -> str:
    """The bench's sources and flags, hashed once per process (what this process runs)."""
    h = hashlib.sha256(TB_SOURCE.read_bytes() + TB_TOP.read_bytes())
    h.update(Path(__file__).read_bytes())
    h.update(json.dumps([vl.VERSION, FLAGS]).encode())
    return h.hexdigest()


def _lanes(image, params: EngineParams | None = None) -> int:
    """Words a beat on i_act and o_act (an EIE engine's `io_lanes`; 1 for every other)."""
    from images.eie import EieParams, RomImage, io_lanes

    if isinstance(image, RomImage) and isinstance(params, EieParams):
        return io_lanes(image, params)
    return 1


def _shape(image, params: EngineParams | None = None):
    """The bench's IN, OUT, LAYERS and LANES: the engine's vector sizes (`images.conv`), or for
    a loadable engine (vector sizes given at run time) the most its activation buffers hold."""
    lanes = _lanes(image, params)
    if loadable(image, params):
        from images.eie import sizes_of

        most = image.pes * sizes_of(image, params).act_words
        return most, most, image.num_layers, lanes
    return engine_in_features(image), engine_out_features(image), image.num_layers, lanes


def compile_template(template: str, image, *, jobs: int = 1, mems: dict | None = None,
                     params: EngineParams | None = None, opt: str = DEFAULT_OPT) -> FastBuild:
    """The binary of `template` (cached by its hash); `jobs` compiler processes; `mems` the
    memories it loads (default: read from its `$readmemh` lines, `split_memories_decls`);
    `opt` the C++ compiler's optimisation of the model's code (`OPTS`)."""
    if opt not in OPTS:
        raise ValueError(f"C++ optimisation {opt!r} is not one of {', '.join(OPTS)}")
    n_in, n_out, n_layers, lanes = _shape(image, params)
    t = hashlib.sha256((template + _bench_hash()
                        + f"{n_in},{n_out},{n_layers},{lanes},{opt}").encode())
    d = check_build_dir(build_root() / "bin", "FASTBENCH_BUILD_DIR") / t.hexdigest()[:20]
    meta_path = d / "meta.json"
    t0 = time.monotonic()
    with file_lock(d.parent / f"{d.name}.lock"):
        if not meta_path.exists():
            env = vl.env()
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
            (d / "engine.sv").write_text(template)
            obj = d / "obj"
            sizes = (f"-DTB_IN={n_in} -DTB_OUT={n_out} -DTB_LAYERS={n_layers} "
                     f"-DTB_LANES={lanes}")
            cmd = [str(vl.require() / "verilator"), *FLAGS, f"-GLAYERS={n_layers}",
                   f"-GLANES={lanes}", "-CFLAGS", sizes, "--Mdir", str(obj), "-o", "Vtb",
                   "--build-jobs", str(max(1, int(jobs))), "-MAKEFLAGS", f"OPT_FAST={opt}",
                   str(TB_TOP), str(d / "engine.sv"), str(TB_SOURCE)]
            with open(d / "build.log", "w") as f:
                rc = run_in_group(cmd, cwd=d, env=env, stdout=f)
            if rc != 0 or not (obj / "Vtb").exists():
                tail = (d / "build.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"verilator build failed (exit {rc}) in {d}:\n{tail}")
            os.replace(obj / "Vtb", d / "Vtb")
            shutil.rmtree(obj, ignore_errors=True)  # ~100 MB of objects and headers
            mems = {k: {"width": v["width"], "depth": v["depth"]}
                    for k, v in (mems or split_memories_decls(template)).items()}
            tmp = d / ".meta.json.tmp"
            tmp.write_text(json.dumps({"in": n_in, "out": n_out, "layers": n_layers,
                                       "lanes": lanes, "mems": mems}, indent=1, sort_keys=True))
            os.replace(tmp, meta_path)
            seconds = time.monotonic() - t0
        else:
            seconds = 0.0
    return _load(d, seconds)


_LOAD = re.compile(r"\$readmemh\(\{d, \"/(\w+)\.hex\"\}, \w+, 0, (\d+)\);")


def split_memories_decls(template: str) -> dict[str, dict]:
    """The memories a template loads: {name: {"width", "depth"}}."""
    decls = {name: int(msb) + 1 for msb, name, _hi in _DECL.findall(template)}
    return {name: {"width": decls[name], "depth": int(last) + 1}
            for name, last in _LOAD.findall(template)}


def _key_file(image, params: EngineParams | None, key: str | None) -> Path:
    params = default_params(image) if params is None else params
    key = key or build_key(image, params, False)
    key = hashlib.sha256((key + _bench_hash()).encode()).hexdigest()[:20]  # and this bench
    return build_root() / "keys" / f"{key}.json"


def _load(d: Path, build_seconds: float = 0.0) -> FastBuild:
    meta = json.loads((d / "meta.json").read_text())
    return FastBuild(dir=d, binary=d / "Vtb", in_features=meta["in"], out_features=meta["out"],
                     layers=meta["layers"], mems=meta["mems"], lanes=meta.get("lanes", 1),
                     build_seconds=build_seconds)


def lookup(image, params: EngineParams | None = None, *, key: str | None = None
           ) -> FastBuild | None:
    """The cached binary for `image` and `params` (or for `key`), or None."""
    kfile = _key_file(image, params, key)
    if not kfile.exists():
        return None
    d = build_root() / "bin" / json.loads(kfile.read_text())["bin"]
    if not ((d / "meta.json").exists() and (d / "Vtb").exists()):
        return None
    return _load(d)


def remember(image, params: EngineParams | None, fb: FastBuild, *, key: str | None = None
             ) -> None:
    """Index `fb` under the key of `image` and `params` (or `key`)."""
    kfile = _key_file(image, params, key)
    kfile.parent.mkdir(parents=True, exist_ok=True)
    tmp = kfile.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps({"bin": fb.dir.name}))
    os.replace(tmp, kfile)


def build(image, params: EngineParams | None = None, *, key: str | None = None
          ) -> FastBuild:
    """The bench binary for `image` (cached): `key` names the template in the key index
    (default: `shape_key` for a loadable engine, converted without contents by
    `shape_template`, so a second network of its shape is neither converted nor compiled;
    else `tb.sim.build_key`, the image digest, parameters and sources)."""
    vl.require()
    shaped = key is None and loadable(image, params)
    opt = os.environ.get("FASTBENCH_OPT") or SHAPE_OPT
    if shaped:
        key = f"{shape_key(image, params)}{opt}"
    hit = lookup(image, params, key=key)
    if hit is not None:
        return hit
    t0 = time.monotonic()
    if shaped:
        template, mems = shape_template(image, params, share_pes=True)
        fb = compile_template(template, image, mems=mems, params=params,
                              jobs=int(os.environ.get("FASTBENCH_JOBS", "1")), opt=opt)
    else:
        template, _mems = template_of(image, params)
        fb = compile_template(template, image)
    if fb.build_seconds:
        fb.build_seconds = time.monotonic() - t0
    remember(image, params, fb, key=key)
    return fb


def write_mems(fb: FastBuild, image, params: EngineParams | None, d: Path) -> None:
    """The image's memory contents as `<name>.hex` files in `d`, for the binary `fb`."""
    write_mem_files(image, default_params(image) if params is None else params, d, fb.mems)


# ---- runs ------------------------------------------------------------------------------------

@dataclass
class FastResult:
    outputs: np.ndarray  # int16[batch, out]
    cycles: np.ndarray  # int64[batch]
    layer_cycles: np.ndarray  # int64[batch, layers]
    seconds: float  # wall time of the simulator process
    sim_cycles: int  # clock cycles the bench simulated (resets and gaps included)
    cpu_seconds: float  # CPU time of the simulator process
    last_word: np.ndarray  # int64[batch]: the clock cycle of each vector's last output word

    @property
    def period(self) -> np.ndarray:
        """Cycles between consecutive vectors' last output words (int64[batch - 1]): the
        engine's time per input in a stream (the bench offers each vector as soon as the
        previous one's last output word is taken)."""
        return np.diff(self.last_word)


def write_inputs(x: np.ndarray, path: Path) -> None:
    """int16 vectors as hex words, one a line (what the bench's `$fscanf("%h")` reads)."""
    u = np.ascontiguousarray(x, dtype=np.int16).view(np.uint16).reshape(-1)
    table = np.array([f"{i:04x}\n" for i in range(1 << 16)], dtype=object)
    path.write_text("".join(table[u]))


def read_outputs(path: Path, n: int, layers: int, out: int) -> tuple:
    """(outputs, cycles, layer_cycles, last-word cycle) of the bench's output file."""
    text = path.read_text().split()
    w = 1 + layers + out + 1
    a = np.array(text, dtype=np.int64).reshape(n, w) if n else np.zeros((0, w), np.int64)
    return a[:, 1 + layers:-1].astype(np.int16), a[:, 0], a[:, 1:1 + layers], a[:, -1]


def run(fb: FastBuild, mems: Path, x: np.ndarray, *, stall_in: float = 0.0,
        stall_out: float = 0.0, seed: int = 0, reset_mid: bool = False,
        max_cycles: int | None = None, workdir: Path | None = None,
        out_features: int | None = None) -> FastResult:
    """Run int16 vectors x[batch, in] through the binary with the memories in `mems`;
    out_features: the words of an output (default: the bench's OUT; a loadable engine's
    bench takes any vector sizes up to its IN and OUT)."""
    x = np.ascontiguousarray(x, dtype=np.int16)
    n_out = fb.out_features if out_features is None else int(out_features)
    n_in_ok = x.ndim == 2 and (x.shape[1] == fb.in_features if out_features is None
                               else 1 <= x.shape[1] <= fb.in_features)
    if x.ndim != 2 or not n_in_ok or not 1 <= n_out <= fb.out_features:
        raise InputError(f"inputs must be [batch, {fb.in_features}], not {list(x.shape)}")
    own = workdir is None
    wd = Path(tempfile.mkdtemp(prefix="run-", dir=_runs())) if own else Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    try:
        write_inputs(x, wd / "inputs.hex")
        cmd = [str(fb.binary), f"+inputs={wd / 'inputs.hex'}", f"+out={wd / 'outputs.txt'}",
               f"+n={len(x)}", f"+mems={Path(mems).resolve()}",
               f"+stall_in={round(stall_in * 1000)}", f"+stall_out={round(stall_out * 1000)}",
               f"+seed={int(seed) & 0x7FFFFFFF}", f"+reset_mid={int(bool(reset_mid))}",
               f"+n_in={x.shape[1]}", f"+n_out={n_out}"]
        if max_cycles:
            cmd.append(f"+max_cycles={int(max_cycles)}")
        t0 = time.monotonic()
        with open(wd / "sim.log", "w") as f:
            rc = run_in_group(cmd, cwd=wd, env=dict(os.environ), stdout=f)
        seconds = time.monotonic() - t0
        if rc != 0 or not (wd / "outputs.txt").exists():
            log = (wd / "sim.log").read_text(errors="replace")[-2000:]
            own = False  # keep it for inspection
            raise RuntimeError(f"bench failed (exit {rc}) in {wd}:\n{log}")
        y, cycles, lc, last_word = read_outputs(wd / "outputs.txt", len(x), fb.layers, n_out)
        if len(y) != len(x):
            own = False
            raise RuntimeError(f"bench wrote {len(y)} of {len(x)} vectors in {wd}")
        m = re.search(r"engine_tb: \d+ vectors, (\d+) clock cycles simulated, ([\d.]+) CPU",
                      (wd / "sim.log").read_text(errors="replace"))
        return FastResult(outputs=y, cycles=cycles, layer_cycles=lc, seconds=seconds,
                          sim_cycles=int(m.group(1)) if m else 0,
                          cpu_seconds=float(m.group(2)) if m else seconds, last_word=last_word)
    finally:
        if own:
            shutil.rmtree(wd, ignore_errors=True)


def _runs() -> Path:
    return check_build_dir(build_root() / "runs", "FASTBENCH_BUILD_DIR")


def simulate(image, x: np.ndarray, params: EngineParams | None = None, **kw) -> FastResult:
    """Build (cached) and run: the image's memories written to a temporary directory."""
    fb = build(image, params)
    with tempfile.TemporaryDirectory(prefix="mems-", dir=_runs()) as td:
        write_mems(fb, image, params, Path(td))
        return run(fb, Path(td), x, out_features=image.layers[-1].out_features, **kw)
