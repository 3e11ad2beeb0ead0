"""The engine's memories against the iCE40UP5K budget (docs/fpga.md, "Resource analysis").

`analyse(img)` takes every memory the engine of the image creates (`images.memmap.memory_specs`:
name, kind, width, depth, ports, read from the image of either engine, no engine made) and
counts the EBR blocks yosys gives each (`yosys_ebr`: the cost rule of yosys' `memory_libmap`,
which also leaves a small memory to logic when that is cheaper). With `spram`, the four ROMs of
`fpga.memories.spram_plan` (written over the UART after configuration) need no EBR. The link
and UART use no memory (fpga/link.py streams the outputs), so the engine's blocks are the
board's.

`fit_bound(qnet, engine, pes)` is the check made before any placement: the same memories with
the depths that depend on the row placement at their least (from the non-zero counts alone), so
a network that cannot fit is told at once, with the memory that binds, in its own units, and
what would fit (`fit_message`).
"""

from __future__ import annotations

import re
from collections import defaultdict

import numpy as np

UP5K = {"lc": 5280, "ebr": 30, "ebr_bits": 4096, "spram": 4, "spram_bits": 16384 * 16, "dsp": 8}
EBR_SHAPES = ((16, 256), (8, 512), (4, 1024), (2, 2048))
SPRAM_WORDS = 16384
PE_CHOICES = (1, 2, 4, 8, 16)

# yosys memory_libmap (yosys 0.40+, synth_ice40): an EBR (SB_RAM40_4K, 2**11 addresses of 2
# bits down to 2**8 of 16) costs 64, a read mux 0.5 a bit and bank; a memory left to logic costs
# 1/16 a bit as a ROM and 1 a bit as a RAM, compared as a whole number. The memory goes to the
# cheapest (the logic when no EBR mapping is strictly cheaper).
EBR_COST = 64
MUX_COST = 0.5
LOGIC_COST_ROM = 1 / 16
LOGIC_COST_RAM = 1.0


def ebr_blocks(width: int, depth: int) -> int:
    """EBR blocks for one width x depth memory with one read port (the fewest of any shape)."""
    return min(-(-width // w) * -(-depth // d) for w, d in EBR_SHAPES)


def yosys_ebr(spec) -> int:
    """EBR blocks yosys' memory_libmap gives `spec` (a `MemorySpec`), 0 when it leaves it to
    logic: what the build's report counts (docs/fpga.md, "Resource analysis").

    In each EBR shape the memory takes mult = ceil(depth / shape depth) address banks, whose
    bits yosys packs side by side: ceil(mult * width / shape width) blocks (a RAM's write
    enables allow the same packing), each read port on its own copy. Cost: 64 a block plus
    0.5 per bit of each read port's bank mux ((mult - 1) x width) and of each write port's
    bank enables; the cheapest shape wins unless the logic is not dearer (1/16 a bit for a
    ROM, 1 a bit for a RAM, as a whole number): small ROMs go to logic.
    """
    logic = int(spec.width * spec.depth * (LOGIC_COST_ROM if spec.kind == "rom"
                                           else LOGIC_COST_RAM))
    best = None
    for w, d in EBR_SHAPES:
        mult = -(-spec.depth // d)
        blocks = -(-(mult * spec.width) // w) * max(1, spec.read_ports)
        cost = EBR_COST * blocks + MUX_COST * (mult - 1) * spec.width * spec.read_ports
        if mult > 1:
            cost += MUX_COST * mult * spec.write_ports
        if best is None or cost < best[0]:
            best = (cost, blocks)
    return best[1] if best[0] < logic else 0


def group_of(name: str) -> str:
    """The kind of memory: "pe3.acc" -> "acc" (one per PE), "lane2" -> "lane", "colptr"."""
    return name.split(".", 1)[1] if "." in name else re.sub(r"\d+$", "", name)


def _tally(specs, *, spram: bool) -> dict:
    """Memories by kind with the EBR blocks yosys gives each; with `spram`, the SPRAM plan's
    ROMs need none. `too_deep`: ROMs SPRAM would take but for their depth (16,384 words)."""
    from .memories import SPRAM_COUNT, SPRAM_DEPTH, spram_ok, spram_plan

    in_spram = {s.name for s in spram_plan(specs)} if spram else set()
    groups = defaultdict(lambda: {"count": 0, "bits": 0, "ebr": 0, "spram": 0, "logic": 0,
                                  "depths": []})
    for s in specs:
        g = groups[group_of(s.name)]
        g["count"] += 1
        g["bits"] += s.bits
        if s.name in in_spram:
            g["spram"] += 1
        else:
            blocks = yosys_ebr(s)
            g["ebr"] += blocks
            g["logic"] += blocks == 0
        g["depths"].append(s.depth)
        g["kind"] = s.kind
        g["width"] = s.width
    for g in groups.values():
        lo, hi = min(g["depths"]), max(g["depths"])
        g["shape"] = f"{g['width']} x {lo}" + (f"..{hi}" if hi != lo else "")
    too_deep = []
    if spram:
        # the ROMs the plan would take if SPRAM were deep enough: the largest of those that
        # fit its width and ports
        from dataclasses import replace

        shallow = [replace(s, depth=min(s.depth, SPRAM_DEPTH), init=()) for s in specs]
        wanted = {s.name for s in spram_plan(shallow, count=SPRAM_COUNT)}
        too_deep = [s for s in specs if s.name in wanted and not spram_ok(s)
                    and s.depth > SPRAM_DEPTH]
    return {
        "groups": dict(groups),
        "total_bits": sum(g["bits"] for g in groups.values()),
        "total_ebr": sum(g["ebr"] for g in groups.values()),
        "spram_used": len(in_spram),
        "spram_names": sorted(in_spram),
        "too_deep": [(s.name, s.depth) for s in too_deep],
        "ebr_available": UP5K["ebr"],
        "ebr_bits_available": UP5K["ebr"] * UP5K["ebr_bits"],
        "spram_bits_available": UP5K["spram"] * UP5K["spram_bits"],
    }


def analyse(img, *, spram: bool = False, acc_bits: int = 32) -> dict:
    """Memories by kind, EBR blocks each needs; with `spram`, the SPRAM plan's ROMs need none."""
    from images import kind_of
    from images.memmap import memory_specs

    a = _tally(memory_specs(img, acc_bits=acc_bits), spram=spram)
    return {"engine": kind_of(img), "pes": img.pes, "bound": False, **a}


def fits(a: dict) -> bool:
    """An analysis (`analyse` or `fit_bound`) within the device: EBR and SPRAM depth."""
    return a["total_ebr"] <= a["ebr_available"] and not a["too_deep"]


# ---------------------------------------------------------------------------------------------
# Before any placement: the memories at their least, from the non-zero counts


def _bits(n: int) -> int:
    return max(1, int(n).bit_length())


def _cdiv(a, b):
    return -(-a // b)


def bound_specs(nonzeros: list[np.ndarray], shape: list[int], engine: str, pes: int, *,
                acc_bits: int = 32, index_bits: int = 4, rel_bits: int = 4) -> list:
    """The memories of `engine` with `pes` PEs for a network of layer sizes `shape` (in_0,
    out_0, ...) whose layer i has nonzeros[i][c] non-zero weights in column c, with every depth
    the row placement decides at its least.

    The lockstep engine: a lane ROM word per slot, and a column takes at least
    ceil(non-zeros / PEs) slots (fillers and the spread over PEs only add); the column pointers,
    accumulators (rows and biases) and activations do not depend on the placement. The EIE
    engine: every PE's entries at an even share of the non-zeros (the balanced placement's aim;
    fillers only add), the rest exact. `index_bits + rel_bits` bits an entry.
    """
    from images.eie import default_issue_width
    from images.memmap import MemorySpec, lockstep_act_depth

    L = len(nonzeros)
    widths = list(shape)
    act_words = max(_cdiv(w, pes) for w in widths)
    outs = shape[1:]
    e = index_bits + rel_bits
    specs = []
    if engine == "lockstep":
        slots = max(1, sum(int(np.sum(_cdiv(np.asarray(c, dtype=np.int64), pes)))
                           for c in nonzeros))
        specs += [MemorySpec(f"lane{j}", "rom", e * min(2, pes - 2 * j), slots)
                  for j in range(_cdiv(pes, 2))]
        ptrs = sum(shape[:-1]) + 1
        specs += [MemorySpec("colptr_even", "rom", _bits(slots), _cdiv(ptrs, 2)),
                  MemorySpec("colptr_odd", "rom", _bits(slots), max(1, ptrs // 2))]
        rows = [_cdiv(o, pes) for o in outs]
        specs += [MemorySpec(f"pe{k}.acc", "ram", acc_bits, max(rows) + sum(rows),
                             read_ports=1, write_ports=1) for k in range(pes)]

        class _Shape:  # what lockstep_act_depth reads of an image
            layers = [type("L", (), {"in_features": shape[0], "out_features": o})
                      for o in outs]

        _Shape.pes = pes
        specs += [MemorySpec(f"pe{k}.act", "ram", 16, lockstep_act_depth(_Shape), read_ports=1,
                             write_ports=1) for k in range(pes)]
        return specs
    total = sum(int(np.sum(c)) for c in nonzeros)
    ports = default_issue_width(pes)
    for k in range(pes):
        ent = max(1, total // pes + (k < total % pes))
        words = sum(i + 1 for i in shape[:-1])
        rows = [len(range(k, o, pes)) for o in outs]
        specs += [
            MemorySpec(f"pe{k}.entries", "rom", e, ent),
            MemorySpec(f"pe{k}.ptr_even", "rom", _bits(ent), max(1, (words + 1) // 2),
                       read_ports=ports),
            MemorySpec(f"pe{k}.ptr_odd", "rom", _bits(ent), max(1, words // 2),
                       read_ports=ports),
            MemorySpec(f"pe{k}.bias", "rom", 32, max(1, sum(rows))),
            MemorySpec(f"pe{k}.codebook", "rom", 16, max(1, L << index_bits)),
            *(MemorySpec(f"pe{k}.acc{b}", "ram", acc_bits, max(1, max(rows)), read_ports=1,
                         write_ports=1) for b in range(2)),
        ]
    specs += [MemorySpec(f"pe{k}.act", "ram", 16, 2 * act_words, read_ports=1, write_ports=1)
              for k in range(pes)]
    return specs


def _counts(qnet) -> tuple[list[np.ndarray], list[int]]:
    nz = [np.count_nonzero(layer.index, axis=0) for layer in qnet.layers]
    return nz, [qnet.in_features] + [layer.out_features for layer in qnet.layers]


def fit_bound(qnet, engine: str, pes: int, *, spram: bool = True, acc_bits: int = 32,
              index_bits: int = 4, rel_bits: int = 4, keep: float = 1.0) -> dict:
    """`analyse` of the memories at their least (`bound_specs`), before any placement: when
    this does not fit, no placement can make it fit (for the EIE engine, no even one). `keep`
    scales the non-zero counts (0: the memories no density changes)."""
    nz, shape = _counts(qnet)
    if keep != 1.0:
        nz = [np.floor(c * keep).astype(np.int64) for c in nz]
    specs = bound_specs(nz, shape, engine, pes, acc_bits=acc_bits, index_bits=index_bits,
                        rel_bits=rel_bits)
    return {"engine": engine, "pes": pes, "bound": True, **_tally(specs, spram=spram)}


def binding(a: dict) -> dict | None:
    """What stops an analysis from fitting, in that memory's own units; None when it fits.

    SPRAM first (a ROM meant for SPRAM deeper than its 16,384 words lands in EBR and makes the
    EBR count meaningless), then the EBR blocks."""
    if a["too_deep"]:
        name, depth = max(a["too_deep"], key=lambda t: t[1])
        what = group_of(name)
        noun = {"lane": "lane ROMs", "entries": "entry ROMs"}.get(what, f"{what} ROMs")
        return {"memory": noun, "unit": "words", "need": depth, "capacity": SPRAM_WORDS,
                "where": "an SPRAM", "count": len(a["too_deep"])}
    if a["total_ebr"] > a["ebr_available"]:
        top = sorted(a["groups"].items(), key=lambda kv: -kv[1]["ebr"])[:2]
        return {"memory": "EBR", "unit": "blocks", "need": a["total_ebr"],
                "capacity": a["ebr_available"], "where": "the iCE40UP5K",
                "largest": ", ".join(f"{n} {g['ebr']}" for n, g in top if g["ebr"])}
    return None


def _thin(qnet, keep: float, seed: int = 0):
    """The network with each non-zero kept with probability `keep` (the same draw for every
    `keep`, so a smaller keep removes a superset)."""
    from compress.qnet import Layer, QNet

    rng = np.random.default_rng(seed)
    layers = []
    for layer in qnet.layers:
        u = rng.random(layer.index.shape)
        layers.append(Layer(codebook=layer.codebook, index=np.where(u < keep, layer.index, 0)
                            .astype(layer.index.dtype), bias=layer.bias, shift=layer.shift,
                            relu=layer.relu))
    return QNet(layers=layers, input_frac=qnet.input_frac)


def _quick(qnet, engine: str, pes: int, *, spram: bool) -> dict:
    """The analysis of an image placed without search (interleaved rows, rel_bits 4): about
    what the real placement needs, or a little more."""
    from images import build_image

    if engine == "lockstep":
        img = build_image(qnet, engine, pes, placement="interleave")
    else:
        img = build_image(qnet, engine, pes, rel_bits=4, balance=False)
    return analyse(img, spram=spram)


def what_fits(qnet, engine: str, pes: int, *, spram: bool = True, quick: bool = True) -> dict:
    """What would fit: {"pes": the PE counts whose memories could fit (`fit_bound`),
    "floor": `fit_bound` with no non-zeros at `pes` PEs (when it does not fit, no density
    does), "nonzeros": about how many non-zeros fit at `pes` PEs, or None}.

    The non-zeros: the largest share of them, kept at random, with which the memories fit,
    by bisection on images placed without search (`_quick`: about what the real placement
    needs, or a little more); quick=False: on `fit_bound` (an upper limit, no image built).
    """
    from compress import limits

    pe_ok = [n for n in PE_CHOICES
             if n <= limits.get().max_pes and fits(fit_bound(qnet, engine, n, spram=spram))]
    floor = fit_bound(qnet, engine, pes, spram=spram, keep=0.0)
    total = sum(int(np.count_nonzero(layer.index)) for layer in qnet.layers)
    if not fits(floor):
        return {"pes": pe_ok, "floor": floor, "nonzeros": None, "keep": 0.0}

    def ok(keep):
        if not quick:
            return fits(fit_bound(qnet, engine, pes, spram=spram, keep=keep))
        return fits(_quick(_thin(qnet, keep), engine, pes, spram=spram))

    lo, hi = 0.0, 1.0
    for _ in range(7 if quick else 14):  # 1 % steps are enough for advice
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return {"pes": pe_ok, "floor": floor, "nonzeros": int(total * lo), "keep": lo}


def _pes(n: int) -> str:
    return f"{n} PE" + ("" if n == 1 else "s")


def fit_message(qnet, a: dict, advice: dict) -> str:
    """One line: the memory that binds in its own units, the network's need, the board's
    capacity, and what would fit (PE counts, non-zeros and density)."""
    b = binding(a)
    weights = sum(layer.index.size for layer in qnet.layers)
    total = sum(int(np.count_nonzero(layer.index)) for layer in qnet.layers)
    least = "at least " if a["bound"] else ""
    parts = []
    if b["unit"] == "words":
        each = " each" if b["count"] > 1 else ""
        parts.append(f"the {b['memory']} need {least}{b['need']:,} words{each}"
                     + (" (a word a slot; a column takes at least its non-zeros / PEs)"
                        if a["bound"] and b["memory"] == "lane ROMs" else "")
                     + f", {b['where']} holds {b['capacity']:,}")
    floor = advice["floor"]
    if not fits(floor):
        fb = binding(floor)
        parts.append(f"{'and ' if parts else ''}at any density the memories need "
                     f"{fb['need']} EBR blocks ({fb['largest']}), the iCE40UP5K has "
                     f"{fb['capacity']}")
    elif b["unit"] == "blocks":
        parts.append(f"the memories need {least}{b['need']} EBR blocks ({b['largest']}), "
                     f"{b['where']} has {b['capacity']}")
    head = f"{a['engine']} engine, {_pes(a['pes'])}: does not fit: " + "; ".join(parts)
    others = [n for n in advice["pes"] if n != a["pes"]]
    tail = []
    if others:
        tail.append(f"{'/'.join(map(str, others))} PEs could fit")
    if advice["nonzeros"] is not None:
        n = advice["nonzeros"]
        tail.append(f"{_pes(a['pes'])} fit about {n:,} non-zeros of its {total:,} (density "
                    f"{100 * n / weights:.2f} % against {100 * total / weights:.2f} %): prune "
                    "further")
    elif not others:
        widest = max(layer.out_features for layer in qnet.layers)
        tail.append(f"no PE count or density fits this network: narrower layers would (the "
                    f"widest has {widest:,} outputs)")
    return head + ". " + "; ".join(tail)


def format_analysis(a: dict) -> str:
    lines = [f"{'memory':<11} {'kind':<4} {'n':>3} {'width x depth':<17} {'kbit':>7} {'EBR':>5}"
             f" {'SPRAM':>5} {'logic':>5}"]
    for name, g in a["groups"].items():
        lines.append(f"{name:<11} {g['kind']:<4} {g['count']:>3} {g['shape']:<17} "
                     f"{g['bits'] / 1024:>7.1f} {g['ebr']:>5} {g['spram']:>5} {g['logic']:>5}")
    lines.append(f"{'total':<11} {'':<4} {'':>3} {'':<17} {a['total_bits'] / 1024:>7.1f} "
                 f"{a['total_ebr']:>5} {a['spram_used']:>5}")
    lines.append(f"iCE40UP5K: {a['ebr_available']} EBR ({a['ebr_bits_available'] // 1024} kbit), "
                 f"4 SPRAM of {SPRAM_WORDS:,} x 16 ({a['spram_bits_available'] // 1024} kbit, "
                 "no initial contents, single port); logic: memories yosys leaves to logic cells")
    what = "at least " if a["bound"] else ""
    if a["too_deep"]:
        name, depth = max(a["too_deep"], key=lambda t: t[1])
        verdict = (f"does NOT fit: {name} needs {what}{depth:,} words, an SPRAM holds "
                   f"{SPRAM_WORDS:,}")
    else:
        verdict = (f"{'fits' if fits(a) else 'does NOT fit'} in EBR ({what}{a['total_ebr']} of "
                   f"{a['ebr_available']} blocks"
                   + (f", {a['spram_used']} ROMs in SPRAM" if a["spram_used"] else "") + ")")
    lines.append(f"{a['engine']} engine, {_pes(a['pes'])}: {verdict}")
    return "\n".join(lines)


def check_board_fit(qnet, engine: str, pes: int, *, spram: bool = True, img=None) -> dict:
    """The analysis of `img` (or, without it, `fit_bound`: before any placement); InputError
    with `fit_message` when the memories do not fit the UP5K. For commands that need the
    board's network to fit (the simulated board) and print no table."""
    from compress.errors import InputError

    if img is None:
        a = fit_bound(qnet, engine, pes, spram=spram)
        quick = False
    else:
        a = analyse(img, spram=spram)
        quick = True
    if not fits(a):
        raise InputError(fit_message(qnet, a, what_fits(qnet, engine, pes, spram=spram,
                                                        quick=quick)))
    return a
