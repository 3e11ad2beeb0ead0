"""The sections of the results page. Each measures, then returns a `Section`.

Every figure on the page is written here from a measurement of the same run; nothing is typed
by hand. Times are medians of several runs where a single run would be noisy.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from .util import REPO, Section, md_table, median_time, timed_command

PAPER = {
    "lenet-300-100": {"error": 1.58, "ratio": 40, "baseline_error": 1.64},
    "lenet-5": {"error": 0.74, "ratio": 39, "baseline_error": 0.80},
}
PY = sys.executable


# ---------------------------------------------------------------------------------------------
# 1. Compression


def compression(work: Path, data_dir: str, plots: Path) -> Section:
    from compress.dcz import format_table

    rows, per_layer, data = [], [], {}
    for arch in ("lenet-300-100", "lenet-5"):
        out = work / arch
        dt, _ = timed_command([PY, "-m", "compress", "pipeline", "--arch", arch, "--data",
                               data_dir, "--seed", "0", "--no-progress", "--out", str(out)])
        s = json.loads((out / "summary.json").read_text())
        err = s["errors"]
        sizes = s["layer_sizes"]
        tot = sizes[-1]
        ratio_pqh = s["ratio"]
        ratio_pq = 100.0 / tot["rate_pq_pct"]
        # pruning alone: float32 values plus the same fixed-width relative indices (with fillers)
        ratio_p = 32.0 / (tot["kept_pct"] / 100 * (32 + tot["index_bits_pq"]))
        dcz = out / "model.dcz"
        how = (f"`{dcz.stat().st_size:,}`-byte .dcz file" if dcz.exists() else
               f"{s['dcz_bytes']:,} bytes: conv layers are not in the .dcz format yet, so this is "
               "the sum of each layer coded alone plus one file header")
        per_layer.append(f"**{arch}** ({how})\n\n```\n{format_table(sizes)}\n```")
        final = err.get("integer", err["quantized"])["test"]
        data[arch] = {"summary": s, "wall_s": dt, "final_error": final}
        p = PAPER[arch]
        rows.append([arch, f"{err['dense']['test']:.2f}%", f"{err['pruned']['test']:.2f}%",
                     f"{err['quantized']['test']:.2f}%",
                     f"{err['integer']['test']:.2f}%" if "integer" in err else "n/a (conv)",
                     f"{ratio_p:.1f}x", f"{ratio_pq:.1f}x", f"**{ratio_pqh:.1f}x**",
                     f"{p['baseline_error']:.2f}% -> {p['error']:.2f}% at {p['ratio']}x",
                     f"{dt:.0f} s"])
        png = out / "weights.png"
        if png.exists():
            (plots / f"weights-{arch}.png").write_bytes(png.read_bytes())
    md = md_table(
        ["network", "dense error", "pruned", "pruned + quantized (float)", "integer (golden)",
         "size ratio: pruning", "+ quantization", "+ Huffman (.dcz file)", "paper (Deep Compression)",
         "pipeline wall time"], rows)
    md += ("\n\nErrors on the full 10k MNIST test set; recipes were chosen on a validation split of "
           "the training set. The `.dcz` ratio is 4 x (weights + biases) bytes over the size of the "
           "file on disk; 'pruning' and '+ quantization' are computed from the same streams at fixed "
           "width (float32 values or 4-bit indices, plus fixed-width relative indices with fillers). "
           "Command: `python -m compress pipeline --arch ARCH --data $MNIST_DIR --seed 0`.\n\n"
           "Per layer, in the paper's columns (bits per non-zero weight; rate = % of 32-bit dense):\n\n"
           + "\n\n".join(per_layer)
           + "\n\n![weights](results/weights-lenet-300-100.png)")
    return Section("1. Compression", md, data)


# ---------------------------------------------------------------------------------------------
# 2. Engine cycles


def engine(plots: Path, *, count: int = 20, pes_list=(1, 2, 4, 8, 16),
           depths=(1, 2, 4, 8, 16), rel_bits_list=(4, 5, 6), sim: str | None = None) -> Section:
    """The engine's cycle counters over `count` sample digits; `sim` the simulator ("icarus"
    or "verilator"; None: $TB_SIM, else Icarus: many short builds favour Icarus)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from images.eie import EieParams, build_rom
    from tb.analysis import breakdown, utilisation
    from tb.cli import load_model_and_inputs
    from tb.cli import SIM_NAMES
    from tb.sim import build, check_sim, default_sim, simulate

    sim = default_sim() if sim is None else check_sim(sim)
    qnet, x, _labels, notes, _mnist = load_model_and_inputs(None, None, 4)
    x = x[:count]
    rows, data, sim_rate = [], {"pes": {}, "depth": {}}, []
    runs = {}

    def run(pes, *, depth=8, rel_bits=4, balance=True):
        """(rom, result) of the sparse engine over x; each configuration simulated once."""
        key = (pes, depth, rel_bits, balance)
        if key not in runs:
            rom = build_rom(qnet, pes=pes, rel_bits=rel_bits, balance=balance)
            b = build(rom, EieParams(queue_depth=depth), sim=sim)
            t0 = time.perf_counter()
            r = simulate(b, x)
            sim_rate.append(float(r.cycles.sum()) / (time.perf_counter() - t0))
            runs[key] = (rom, r)
        return runs[key]

    for pes in pes_list:
        rom, r = run(pes)
        d = simulate(build(rom, EieParams(sparse=False), sim=sim), x[:1])
        br = breakdown(qnet, rom, x, r.layer_cycles)
        util, ideal = utilisation(qnet, rom, x, r.layer_cycles)
        dense = d.layer_cycles[0]
        data["pes"][pes] = {"layers": br, "utilisation": util, "ideal": ideal,
                            "dense_layer_cycles": dense.tolist(),
                            "cycles": float(r.cycles.mean())}
        for b in br:
            rows.append([pes, f"l{b['layer']}", f"{b['cycles']:.0f}", f"{b['ideal']:.0f}",
                         f"{100 * b['ideal'] / b['cycles']:.0f}%" if b["cycles"] else "-",
                         f"{dense[b['layer']]}", f"{dense[b['layer']] / b['cycles']:.1f}x"])
        rows.append([pes, "**all**", f"{r.layer_cycles.sum(axis=1).mean():.0f}",
                     f"{sum(b['ideal'] for b in br):.0f}", f"{100 * util:.0f}%",
                     f"{dense.sum()}", f"**{dense.sum() / r.layer_cycles.sum(axis=1).mean():.1f}x**"])
    for depth in depths:
        rom8, r = run(8, depth=depth)
        util, ideal = utilisation(qnet, rom8, x, r.layer_cycles)
        data["depth"][depth] = {"utilisation": util, "ideal": ideal,
                                "compute_cycles": float(r.layer_cycles.sum(axis=1).mean())}
    # 8 PEs, queue depth 8: row placement (balanced ROM vs plain interleaving) and rel_bits
    data["variants"] = []
    for balance, rb in [(False, 4)] + [(True, rb) for rb in rel_bits_list]:
        rom, r = run(8, rel_bits=rb, balance=balance)
        util, ideal = utilisation(qnet, rom, x, r.layer_cycles)
        data["variants"].append({
            "balanced": balance, "rel_bits": rb, "utilisation": util, "ideal": ideal,
            "entries": int(sum(len(e) for e in rom.entries)),
            "fillers": int(sum(sum(rl.fillers) for rl in rom.layers)),
            "busiest_pe_entries": int(max(len(e) for e in rom.entries)),
            "compute_cycles": float(r.layer_cycles.sum(axis=1).mean()),
            "layers": breakdown(qnet, rom, x, r.layer_cycles)})
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(depths, [100 * data["depth"][d]["utilisation"] for d in depths], "o-",
            label="MAC utilisation (measured)")
    ax.plot(depths, [100 * data["depth"][d]["ideal"] for d in depths], "--",
            label="ideal (load imbalance only)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(depths), [str(d) for d in depths])
    ax.set_xlabel("activation queue depth")
    ax.set_ylabel("% of PE-cycles doing a useful MAC")
    ax.set_ylim(0, 100)
    ax.set_title(f"LeNet-300-100, 8 PEs, {len(x)} MNIST digits")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(plots / "queue-depth.png", dpi=120)
    plt.close(fig)
    md = md_table(["PEs", "layer", "cycles (mean)", "ideal = useful MACs / PEs", "of ideal",
                   "dense engine", "speedup"], rows)
    br8 = data["pes"][8]["layers"] if 8 in data["pes"] else []
    lost = [[f"l{b['layer']}", f"{b['cycles']:.1f}", f"{b['ideal']:.1f}",
             f"{100 * b['utilisation']:.1f}%", f"{b['imbalance']:.1f}", f"{b['fillers']:.1f}",
             f"{b['frontend']:.1f}", f"{b['output']:.1f}", f"{b['other']:.1f}"] for b in br8]
    var = [["balanced" if v["balanced"] else "interleaved (`--no-balance`)", v["rel_bits"],
            f"{v['entries']:,} ({v['fillers']:,})", f"{v['busiest_pe_entries']:,}",
            f"{v['compute_cycles']:.1f}",
            ", ".join(f"{b['cycles']:.0f}" for b in v["layers"]),
            f"**{100 * v['utilisation']:.1f}%**", f"{100 * v['ideal']:.1f}%"]
           for v in data["variants"]]
    md += ("\n\n" + "; ".join(notes) + f"; {len(x)} digits, queue depth 8, 4-bit relative "
           "indices, balanced row placement (the ROM default), the front end's default issue "
           "width (2 from 4 PEs). Cycles are the engine's own "
           f"per-layer counters read in cocotb ({SIM_NAMES[sim]}); the dense engine is the "
           "same PEs and datapath with zero skipping off.\n\n"
           "Where the cycles go with 8 PEs (mean per inference; cycles = ideal + imbalance + "
           "fillers + front end + output + other, `tb/analysis.py`): imbalance = the busiest "
           "PE's useful MACs above the mean; fillers = its filler entries; front end = what the "
           "front end's issue rate (two non-zero activations a cycle from 4 PEs up, one below: "
           "docs/engine.md) needs beyond that PE; output = the last "
           "layer's drain; other = pipeline fill, waiting for the previous layer's drain and "
           "queue stalls.\n\n"
           + md_table(["layer", "cycles", "ideal", "utilisation", "imbalance", "fillers",
                       "front end", "output", "other"], lost)
           + "\n\nRow placement and relative-index bits (8 PEs, queue depth 8; `python -m "
           "compress export-rom --balance/--no-balance --rel-bits R`):\n\n"
           + md_table(["rows", "rel_bits", "entries (fillers)", "busiest PE entries",
                       "compute cycles", "per layer", "MAC utilisation", "ideal"], var)
           + "\n\nQueue depth (8 PEs, balanced, rel_bits 4):\n\n"
           + md_table(["queue depth", "MAC utilisation", "ideal"],
                      [[d, f"{100 * data['depth'][d]['utilisation']:.1f}%",
                        f"{100 * data['depth'][d]['ideal']:.1f}%"] for d in depths])
           + "\n\n![queue depth](results/queue-depth.png)")
    data["sim_cycles_per_second"] = float(np.median(sim_rate))
    data["simulator"] = sim
    l5_md, data["lenet-5"] = lenet5_engine()
    md += "\n\n" + l5_md
    return Section("2. Engine cycles", md, data)


def lenet5_engine(*, count: int = 20, pes: int = 8, dense_count: int = 1) -> tuple[str, dict]:
    """The shipped LeNet-5 (conv layers) on the EIE engine: cycles per image per layer, MAC
    utilisation, the dense engine's cycles and the golden model's CPU time per image. The
    sparse engine in cocotb + Verilator over `count` sample digits, the dense baseline (every
    weight an entry, every lane of every window sent: data-independent) in Icarus over
    `dense_count`."""
    from compress.golden import golden
    from images.eie import EieParams, build_rom
    from tb.analysis import breakdown, utilisation
    from tb.cli import load_model_and_inputs
    from tb.sim import build, simulate

    model = REPO / "compress" / "models" / "lenet-5.qnet.npz"
    qnet, x, _labels, notes, _mnist = load_model_and_inputs(str(model), None, 4)
    rom = build_rom(qnet, pes=pes)
    r = simulate(build(rom, EieParams(), sim="verilator"), x[:count])
    np.testing.assert_array_equal(r.outputs, golden(qnet, x[:count]))
    br = breakdown(qnet, rom, x[:count], r.layer_cycles)
    util, ideal = utilisation(qnet, rom, x[:count], r.layer_cycles)
    dense = None
    if dense_count:
        d = simulate(build(rom, EieParams(sparse=False), sim="icarus"), x[:dense_count])
        np.testing.assert_array_equal(d.outputs, golden(qnet, x[:dense_count]))
        dense = d.layer_cycles.mean(axis=0)
    conv = [b for b in br if qnet.layers[b["layer"]].kind == "conv"]
    conv_util = (sum(b["useful_macs"] for b in conv) / (pes * sum(b["cycles"] for b in conv))
                 if conv else 0.0)
    t0 = time.process_time()
    golden(qnet, x)
    golden_cpu = (time.process_time() - t0) / len(x)
    rows = []
    for b in br:
        i = b["layer"]
        rows.append([f"l{i} {qnet.layers[i].kind}", f"{b['cycles']:.0f}",
                     f"{b['useful_macs']:.0f}", f"{b['ideal']:.0f}",
                     f"{100 * b['utilisation']:.1f}%",
                     "-" if dense is None else f"{dense[i]:.0f}",
                     "-" if dense is None else f"{dense[i] / b['cycles']:.1f}x"])
    total = float(r.layer_cycles.sum(axis=1).mean())
    rows.append(["**all**", f"{total:.0f}", f"{sum(b['useful_macs'] for b in br):.0f}",
                 f"{sum(b['ideal'] for b in br):.0f}", f"**{100 * util:.1f}%**",
                 "-" if dense is None else f"{dense.sum():.0f}",
                 "-" if dense is None else f"**{dense.sum() / total:.1f}x**"])
    cyc = float(r.cycles.mean())
    ls_md, ls_data = _lenet5_lockstep(qnet, x[:count], pes)
    board_md, board_data = _lenet5_board(qnet, x[:count], pes)
    data = {"pes": pes, "digits": count, "layers": br, "utilisation": util, "ideal": ideal,
            "lockstep": ls_data, "board": board_data,
            "conv_utilisation": conv_util, "cycles": cyc, "compute_cycles": total,
            "dense_layer_cycles": None if dense is None else dense.tolist(),
            "golden_cpu_seconds_per_image": golden_cpu,
            "images_per_second_at_33mhz": 33e6 / cyc}
    md = (f"**LeNet-5** (the shipped `lenet-5.qnet.npz`: two conv layers with 2x2 max pooling, "
          f"then fc 800-500-10; docs/conv.md) on the EIE engine, {pes} PEs, {count} sample "
          f"digits, bit-exact; the dense engine over {dense_count} digit(s):\n\n"
          + md_table(["layer", "cycles (mean)", "useful MACs", "ideal = useful / PEs",
                      "MAC utilisation", "dense engine", "speedup"], rows)
          + f"\n\nMAC utilisation on the conv layers: **{100 * conv_util:.1f}%**; "
          f"{cyc:.0f} cycles per image in all (input and output words included): "
          f"{33e6 / cyc:,.0f} images/s at 33 MHz back to back. The golden model "
          f"(`compress.golden`, numpy) takes {1e3 * golden_cpu:.2f} CPU ms per image "
          f"(batch of {len(x)}).\n\n" + ls_md + "\n\n" + board_md)
    return md, data


def _lenet5_board(qnet, x, pes: int) -> tuple[str, dict]:
    """LeNet-5 on the iCEBreaker's design: the lockstep engine's one-map layout
    (`images.lockstep.board_options`) with the board's parameters (queue depth 2, drain_share
    2), in cocotb + Verilator, bit-exact: cycles, slot cycles and MAC utilisation per layer,
    images/s at the board's clock for a CNN (no cycle model of this layout yet)."""
    from compress.golden import golden, run_layers
    from fpga.flow.build import ice40_conv_clock
    from images.lockstep import LockstepParams, board_options, build_lockstep, lockstep_cycles
    from tb.analysis import useful_macs
    from tb.sim import build, simulate

    params = LockstepParams(queue_depth=2, drain_share=2)
    img = build_lockstep(qnet, pes, **board_options(qnet, pes))
    r = simulate(build(img, params, sim="verilator"), x)
    np.testing.assert_array_equal(r.outputs, golden(qnet, x))
    lc = r.layer_cycles.mean(axis=0)
    useful = np.array([u.mean() for u in useful_macs(qnet, x)])
    slots = lockstep_cycles(img, [x] + run_layers(qnet, x)[:-1]).mean(axis=0)
    conv = np.array([ly.kind == "conv" for ly in qnet.layers])
    conv_util = float(useful[conv].sum() / (pes * lc[conv].sum()))
    rows = [[f"l{i} {qnet.layers[i].kind}", f"{lc[i]:.0f}", f"{slots[i]:.0f}",
             f"{100 * useful[i] / (pes * lc[i]):.1f}%"] for i in range(len(lc))]
    rows.append(["**all**", f"{lc.sum():.0f}", f"{slots.sum():.0f}",
                 f"**{100 * useful.sum() / (pes * lc.sum()):.1f}%**"])
    cyc = float(r.cycles.mean())
    mhz = ice40_conv_clock()
    md = (f"The **board's design** (the lockstep engine's one-map layout, {pes} PEs, queue depth "
          f"2, drain_share 2: what `make bitstream BOARD=icebreaker MODEL=.../lenet-5.qnet.npz` "
          f"builds; docs/lockstep.md, \"On the board\"), the same {len(x)} digits, bit-exact:\n\n"
          + md_table(["layer", "cycles (mean)", "slot cycles", "MAC utilisation"], rows)
          + f"\n\nMAC utilisation on the conv layers: **{100 * conv_util:.1f}%**; {cyc:.0f} "
          f"cycles per image with its input and output words (the bench offers an input after "
          f"the previous result): **{mhz * 1e6 / cyc:,.0f} images/s at the board's {mhz:g} "
          f"MHz**.")
    return md, {"layer_cycles": lc.tolist(), "slot_cycles": slots.tolist(),
                "conv_utilisation": conv_util, "cycles": cyc, "clock_mhz": mhz,
                "images_per_second": mhz * 1e6 / cyc}


def _lenet5_lockstep(qnet, x, pes: int) -> tuple[str, dict]:
    """LeNet-5 on the lockstep engine (queue depth 8, drain_share 1: the RTL benches' defaults)
    in cocotb + Verilator, bit-exact: cycles and MAC utilisation per layer, its slot cycles
    and its cycle model (`images.lanes.lockstep_cycle_model`)."""
    from compress.golden import golden, run_layers
    from images.lanes import lockstep_cycle_model
    from images.lockstep import LockstepParams, build_lockstep, lockstep_cycles
    from tb.analysis import useful_macs
    from tb.sim import build, simulate

    params = LockstepParams(queue_depth=8)
    img = build_lockstep(qnet, pes)
    r = simulate(build(img, params, sim="verilator"), x)
    np.testing.assert_array_equal(r.outputs, golden(qnet, x))
    lc = r.layer_cycles.mean(axis=0)
    useful = np.array([u.mean() for u in useful_macs(qnet, x)])
    slots = lockstep_cycles(img, [x] + run_layers(qnet, x)[:-1]).mean(axis=0)
    model = lockstep_cycle_model(img, x, params).mean(axis=0)
    conv = np.array([ly.kind == "conv" for ly in qnet.layers])
    conv_util = float(useful[conv].sum() / (pes * lc[conv].sum())) if conv.any() else 0.0
    rows = [[f"l{i} {qnet.layers[i].kind}", f"{lc[i]:.0f}", f"{slots[i]:.0f}", f"{model[i]:.0f}",
             f"{100 * useful[i] / (pes * lc[i]):.1f}%"] for i in range(len(lc))]
    rows.append(["**all**", f"{lc.sum():.0f}", f"{slots.sum():.0f}", f"{model.sum():.0f}",
                 f"**{100 * useful.sum() / (pes * lc.sum()):.1f}%**"])
    cyc = float(r.cycles.mean())
    md = (f"On the **lockstep engine** ({pes} PEs, queue depth 8, drain_share 1; "
          f"docs/lockstep.md, \"Conv layers\"), the same {len(x)} digits, bit-exact:\n\n"
          + md_table(["layer", "cycles (mean)", "slot cycles", "cycle model",
                      "MAC utilisation"], rows)
          + f"\n\nMAC utilisation on the conv layers: **{100 * conv_util:.1f}%** (its slots "
          f"bind: a column costs its busiest PE's entries); {cyc:.0f} cycles per image: "
          f"{33e6 / cyc:,.0f} images/s at 33 MHz back to back.")
    return md, {"layer_cycles": lc.tolist(), "slot_cycles": slots.tolist(),
                "model_cycles": model.tolist(), "conv_utilisation": conv_util,
                "cycles": cyc}


# ---------------------------------------------------------------------------------------------
# 3. FPGA and the CPU beside it


def fpga(engine_pes: dict | None) -> Section:
    import torch

    from compress.models import build as build_model

    dt, log = timed_command([PY, "-m", "fpga", "build", "--board", "icebreaker"])
    rep = json.loads((REPO / "build" / "icebreaker" / "report.json").read_text())
    torch.manual_seed(0)
    model = build_model("lenet-300-100").eval()
    xb = torch.rand(1, 1, 28, 28)
    torch.set_num_threads(1)
    with torch.no_grad():
        t1, _ = median_time(lambda: model(xb), repeat=2000, warmup=200)
    # On-chip cycles per inference of the board's own engine and PE count: the lockstep board
    # is simulated (RTL, pins only, real MNIST digits, the UART at the bitstream's divisor) and
    # its cycle counters read back over the simulated UART; the same run measures the digits
    # per second end to end (frames streamed) and computes them from frame bytes and baud.
    # Back to back: the engine alone with the board's parameters, the next input pushed as soon
    # as the engine takes it (its second input bank), interval cycles between results.
    from images import get

    run_log = None
    uart = end_to_end = b2b = None
    engine = get(rep["engine"])
    if engine.overlap:  # an engine that streams: simulated on the board, and back to back
        model = _board_model(rep)
        _, run_log = timed_command([PY, "-m", "fpga", "run", "--sim", "--no-spram", "--count",
                                    "20", "--engine", engine.name, "--pes", str(rep["pes"]),
                                    "--model", model,
                                    "--clock-mhz", f"{rep['clock_mhz']:g}",
                                    "--baud", str(rep.get("baud", 3_000_000))])
        line = next(ln for ln in run_log.splitlines() if ln.startswith("engine compute cycles"))
        cycles = float(line.split("mean ")[1].split(",")[0])
        for ln in run_log.splitlines():
            if ln.startswith("UART at"):
                uart = float(ln.rsplit(": ", 1)[1].split()[0])
            elif ln.startswith("end to end:"):
                end_to_end = float(ln.split(":")[1].split()[0])
        b2b = _back_to_back_cycles(engine.name, rep["pes"], 20, model)
    else:
        eng = (engine_pes or {}).get(str(rep["pes"]))
        cycles = eng["cycles"] if eng else None
    ips = rep["clock_mhz"] * 1e6 / cycles if cycles else None
    rows = [[k, rep.get(k)] for k in ("board", "device", "engine", "pes", "model", "clock_mhz",
                                       "fmax_mhz", "lc_used", "lc_total", "dsp_used", "ebr_used",
                                       "spram_used")]
    rows.append(["build wall time", f"{dt:.0f} s"])
    if ips:
        src = ("20 MNIST test digits through the simulated board, `python -m fpga run --sim "
               "--no-spram --count 20`" if run_log else "section 2")
        rows.append([f"inferences / s at the clock ({cycles:,.0f} engine cycles per inference "
                     f"with {rep['pes']} PEs, {src}; UART transfer not included)", f"{ips:,.0f}"])
    if b2b:
        rows.append([f"inferences / s at the clock, inputs back to back ({b2b:,.0f} cycles between "
                     f"results, the engine with the board's parameters, 20 digits, the next "
                     f"input loading while the current one computes)",
                     f"{rep['clock_mhz'] * 1e6 / b2b:,.0f}"])
    if uart:
        rows.append([f"digits / s over the UART at {rep.get('baud', 0):,} baud, computed from "
                     f"the PACKED frames' bytes and the baud (the same 20 digits)", f"{uart:,.0f}"])
    if end_to_end:
        rows.append(["digits / s end to end, measured on the simulated board (frames streamed, "
                     "UART at the bitstream's divisor)", f"{end_to_end:,.0f}"])
    rows.append(["PyTorch dense float LeNet-300-100, batch 1, 1 thread, this CPU",
                 f"{1e6 * t1:.1f} us ({1 / t1:,.0f} inferences / s, median of 2000)"])
    md = md_table(["figure", "value"], rows)
    md += ("\n\nFrom nextpnr's own report (`make bitstream BOARD=icebreaker`, "
           "`build/icebreaker/report.json`).")
    return Section("3. FPGA (iCEBreaker, iCE40UP5K)", md,
                   {"report": rep, "build_s": dt, "cpu_batch1_s": t1, "cycles": cycles,
                    "inferences_per_s": ips, "back_to_back_cycles": b2b, "uart_per_s": uart,
                    "end_to_end_per_s": end_to_end, "board_run": run_log})


def _board_model(rep: dict) -> str:
    """The network the bitstream was built for (report.json's "model"), as a --model spec."""
    m = rep.get("model") or ""
    if not m or m.startswith("synthetic"):
        return m or "synthetic"
    return str(Path(m) if Path(m).is_absolute() else REPO / m)


def _back_to_back_cycles(engine: str, pes: int, count: int, model: str) -> float:
    """Mean cycles between results of the board's engine fed back to back (after the first)."""
    from compress.golden import golden, mnist_to_input
    from compress.shipped import SAMPLE_DIGITS, load_model
    from fpga.boards import engine_params
    from images import build_image
    from tb.sim import build, simulate

    qnet, _ = load_model(model)
    d = np.load(SAMPLE_DIGITS, allow_pickle=False)
    x = mnist_to_input(d["images"][:count], qnet.input_frac)
    img = build_image(qnet, engine, pes)
    r = simulate(build(img, engine_params(img)), x, back_to_back=True)
    if not np.array_equal(r.outputs, golden(qnet, x)):
        raise RuntimeError("the board's engine fed back to back is not bit-exact")
    return float(r.cycles[1:].mean())


# ---------------------------------------------------------------------------------------------
# 4. Tooling at scale


def tooling(*, sample: int = 200_000, k: int = 32) -> Section:
    from sklearn.cluster import KMeans

    from bench.scale import make_layer
    from compress.kmeans import kmeans_1d

    logs = {}
    for variant, extra in (("pruned to 4%", []), ("dense, every weight clustered", ["--dense"])):
        _, logs[variant] = timed_command([PY, "-m", "bench.scale", "--k", str(k), *extra])
    w = make_layer(0, 0.04)
    nz = w[w != 0]
    del w
    rng = np.random.default_rng(0)
    s = rng.choice(nz, size=min(sample, nz.size), replace=False)
    t_sk, _ = median_time(lambda: KMeans(n_clusters=k - 1, n_init=1, random_state=0)
                          .fit(s.reshape(-1, 1)), repeat=3, warmup=0)
    t_ours, _ = median_time(lambda: kmeans_1d(s, k - 1, init="linear"), repeat=5)
    ratio = t_sk / t_ours
    md = "".join(
        f"`python -m bench.scale --k {k}{' --dense' if 'dense' in v else ''}` (a VGG-16 "
        f"fc6-sized layer, 25088 x 4096 = 102.8M weights, {v}), as printed:\n\n```\n"
        f"{log.strip()}\n```\n\n" for v, log in logs.items())
    md += md_table(["k-means on the same %s-point sample of its weights" % f"{s.size:,}",
                    "time (median)"],
                   [["scikit-learn KMeans (n_init=1)", f"{t_sk:.3f} s"],
                    ["ours (`compress.kmeans.kmeans_1d`)", f"{t_ours:.4f} s"],
                    ["ratio", f"**{ratio:.0f}x**"]])
    return Section("4. Tooling: a 103M-weight layer", md,
                   {"bench_scale_logs": logs, "sklearn_s": t_sk, "ours_s": t_ours, "ratio": ratio})


# ---------------------------------------------------------------------------------------------
# 5. Simulation speed and the wall time of the make targets


def simulator_speed(work: Path, *, count: int = 50) -> tuple[list[list[str]], dict]:
    """Rows of simulated engine cycles per second, each simulator on each engine, measured one
    after the other in one run of `python -m tb speed` (also checked bit-exact and equal)."""
    from tb.cli import SIM_NAMES

    out = work / "speed.json"
    _, log = timed_command([PY, "-m", "tb", "speed", "--count", str(count), "--out", str(out)])
    sp = json.loads(out.read_text())
    rows = []
    for r in sp["rows"]:
        rows.append([f"cocotb + {SIM_NAMES[r['simulator']]}, {r['engine']} engine "
                     f"({sp['pes']} PEs, {r['inputs']} digits; build {r['build_s']:.0f} s"
                     f"{', cached' if r['cached'] else ''})",
                     f"{r['cycles_per_s']:,.0f} cycles / s per run, "
                     f"{r['cycles_per_s_after_startup']:,.0f} after start-up"])
    sp["log"] = log
    return rows, sp


def simulation(sim_rate: float | None) -> Section:
    from tb.sim import default_sim

    env = {"MNIST_DIR": os.environ.get("MNIST_DIR", "")}
    load = os.getloadavg()[0]
    speed_rows, speed = simulator_speed(REPO / "build" / "bench")
    t_sim, _ = timed_command(["make", "sim"], env=env)
    t_test, out = timed_command(["make", "test"], env=env)
    summary = [ln for ln in out.splitlines() if " passed" in ln][-1:]
    rows = [["`make sim` (warm .venv)", f"{t_sim:.0f} s"],
            ["`make test` (warm .venv)", f"{t_test:.0f} s ({summary[0].strip() if summary else ''})"]]
    if sim_rate:
        name = {"icarus": "Icarus", "verilator": "Verilator"}[default_sim()]
        rows.insert(0, [f"cocotb + {name} on the engine (8 PEs and others, section 2)",
                        f"{sim_rate:,.0f} cycles / s"])
    md = md_table(["figure", "value"], speed_rows + rows)
    md += ("\n\nCycles per second: the shipped LeNet-300-100 on sample digits, each simulator "
           "in turn on the same Verilog and inputs, `python -m tb speed` (which also checks that "
           "both give the golden outputs and the same cycle counts); 'after start-up' leaves out "
           "the fixed cost of a run (simulator and Python start-up), measured with one digit.")
    md += (f"\n\nLoad average {load:.1f} when the timing started, {os.getloadavg()[0]:.1f} at the "
           f"end, on {os.cpu_count()} CPUs: wall times are inflated by whatever else ran.")
    return Section("5. Simulation", md,
                   {"make_sim_s": t_sim, "make_test_s": t_test, "sim_cycles_per_s": sim_rate,
                    "simulator_speed": speed, "load_average_start": load})
