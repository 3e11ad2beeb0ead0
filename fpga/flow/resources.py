"""The engine's memories against the board's budget (docs/fpga.md, "Resource analysis").

`analyse(img, board=...)` takes every memory the engine of the image creates
(`images.memory_specs`: name, kind, width, depth, ports, read from the image of any engine, no
engine made) and counts the block RAMs the board's family gives each (iCE40: `block_rams`, the
cost rule of yosys' `memory_libmap`, which also leaves a small memory to logic when that is
cheaper), against the device's budget (the board record's). With `spram`, the ROMs of the
family's `load_plan` (SPRAM, written over the UART after configuration) need no EBR. The link
and UART use no memory (fpga/gateware/link.py streams the outputs), so the engine's blocks are the
board's.

`fit_bound(qnet, engine, pes)` is the check made before any placement: the same memories with
the depths that depend on the row placement at their least (from the non-zero counts alone), so
a network that cannot fit is told at once, with the memory that binds, in its own units, and
what would fit (`fit_message`).
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import replace

import numpy as np

from compress import limits
from compress.errors import InputError
from compress.qnet import Layer, QNet
from images import MAX_PES, build_image, engine_of, get, memory_specs, registered
from images.layers import kind_name

from ..boards import DEFAULT_BOARD, engine_params, get_board

PE_CHOICES = tuple(1 << i for i in range(MAX_PES.bit_length()) if 1 << i <= MAX_PES)

def group_of(name: str) -> str:
    """The kind of memory: "pe3.acc" -> "acc" (one per PE), "lane2" -> "lane", "colptr"."""
    return name.split(".", 1)[1] if "." in name else re.sub(r"\d+$", "", name)


def _plan(fam, specs, kinds, count=None):
    """The family's SPRAM plan for `specs` (with the activation banks a conv network of layer
    kinds `kinds` keeps there, where the family does that)."""
    kw = {} if count is None else {"count": count}
    if kinds is not None and hasattr(fam, "act_plan"):
        kw["kinds"] = kinds
    return fam.load_plan(specs, **kw)


def _tally(specs, *, spram: bool, board: str = DEFAULT_BOARD, kinds=None) -> dict:
    """Memories by kind with the EBR blocks the family gives each; with `spram`, the family's
    load plan's ROMs (SPRAM) need none, and an activation RAM with a bank in SPRAM (a conv
    network's, layer kinds `kinds`) needs the EBR of its other bank. `too_deep`: ROMs SPRAM
    would take but for their depth (16,384 words)."""
    b = get_board(board)
    fam = b.fam
    plan = _plan(fam, specs, kinds) if spram else []
    acts = getattr(plan, "acts", {})
    in_spram = {s.name for s in plan} | set(acts)
    groups = defaultdict(lambda: {"count": 0, "bits": 0, "ebr": 0, "spram": 0, "logic": 0,
                                  "depths": []})
    for s in specs:
        g = groups[group_of(s.name)]
        g["count"] += 1
        g["bits"] += s.bits
        if s.name in acts:  # one bank in SPRAM, the other in EBR (or the whole RAM)
            g["spram"] += 1
            if acts[s.name] != getattr(fam, "WHOLE", None):
                g["ebr"] += fam.block_rams(fam.act_half(s))
        elif s.name in in_spram:
            g["spram"] += 1
        elif s.name in getattr(plan, "blocks", ()):  # EBR by the plan (yosys' rom_style)
            g["ebr"] += fam.ebr_blocks(s.width, s.depth)
        else:
            blocks = fam.block_rams(s)
            g["ebr"] += blocks
            g["logic"] += blocks == 0
        g["depths"].append(s.depth)
        g["kind"] = s.kind
        g["width"] = s.width
    for g in groups.values():
        lo, hi = min(g["depths"]), max(g["depths"])
        g["shape"] = f"{g['width']} x {lo}" + (f"..{hi}" if hi != lo else "")
    too_deep = []
    if spram and fam.LOADS:  # a family with loadable memories (iCE40's SPRAM)
        # the ROMs the plan would take if SPRAM were deep enough: the largest of those that
        # fit its width and ports
        shallow = [replace(s, depth=min(s.depth, fam.LOADABLE_WORDS), init=()) for s in specs]
        wanted = {s.name for s in _plan(fam, shallow, kinds, count=fam.LOADS)}
        too_deep = [s for s in specs if s.name in wanted and not fam.loadable(s)
                    and s.depth > fam.LOADABLE_WORDS]
    return {
        "groups": dict(groups),
        "total_bits": sum(g["bits"] for g in groups.values()),
        "total_ebr": sum(g["ebr"] for g in groups.values()),
        "spram_used": len(in_spram),
        "spram_acts": len(acts),
        "spram_names": sorted(in_spram),
        "too_deep": [(s.name, s.depth) for s in too_deep],
        "device": b.device,
        "ebr_available": b.budget.ebr,
        "ebr_bits_available": b.budget.ebr * b.budget.ebr_bits,
        "spram_available": b.budget.spram,
        "spram_words": fam.LOADABLE_WORDS,
        "spram_bits_available": b.budget.spram * b.budget.spram_bits,
    }


def analyse(img, *, spram: bool = False, acc_bits: int = 32, board: str = DEFAULT_BOARD) -> dict:
    """Memories by kind, EBR blocks each needs on `board` (with the board's engine parameters:
    the ECP5's four columns a cycle read the pointer banks on four ports); with `spram`, the
    SPRAM plan's ROMs need none."""
    rec = engine_of(img)
    a = _tally(memory_specs(img, engine_params(img, board, acc_bits=acc_bits)), spram=spram,
               board=board, kinds=[getattr(rl, "kind", "fc") for rl in img.layers])
    return {"engine": rec.name, "pes": img.pes, "bound": False, **a}


def fits(a: dict) -> bool:
    """An analysis (`analyse` or `fit_bound`) within the device: EBR and SPRAM depth."""
    return a["total_ebr"] <= a["ebr_available"] and not a["too_deep"]


# ---------------------------------------------------------------------------------------------
# Before any placement: the memories at their least, from the non-zero counts


def bound_specs(nonzeros: list[np.ndarray], shape: list[int], engine: str, pes: int, *,
                acc_bits: int = 32, index_bits: int = 4, rel_bits: int = 4) -> list:
    """The memories of `engine` with `pes` PEs for a network of layer sizes `shape` (in_0,
    out_0, ...) whose layer i has nonzeros[i][c] non-zero weights in column c, with every depth
    the row placement decides at its least (the engine's `memory_bound`, `images.engines`)."""
    return get(engine).memory_bound(nonzeros, shape, pes, acc_bits=acc_bits,
                                    index_bits=index_bits, rel_bits=rel_bits)


def _counts(qnet) -> tuple[list[np.ndarray], list[int]]:
    nz = [np.count_nonzero(layer.index, axis=0) for layer in qnet.layers]
    return nz, [qnet.in_features] + [layer.out_features for layer in qnet.layers]


def fit_bound(qnet, engine: str, pes: int, *, spram: bool = True, acc_bits: int = 32,
              index_bits: int = 4, rel_bits: int = 4, keep: float = 1.0,
              board: str = DEFAULT_BOARD) -> dict:
    """`analyse` of the memories at their least (`bound_specs`), before any placement: when
    this does not fit, no placement can make it fit (for the EIE engine, no even one). `keep`
    scales the non-zero counts (0: the memories no density changes)."""
    nz, shape = _counts(qnet)
    if keep != 1.0:
        nz = [np.floor(c * keep).astype(np.int64) for c in nz]
    rec = get(engine)
    extra = rec.board_bound(qnet, pes, index_bits=index_bits) if rec.board_bound else {}
    if extra:  # the board's own layout of this network (`Engine.board_options`)
        specs = rec.memory_bound(nz, shape, pes, acc_bits=acc_bits, index_bits=index_bits,
                                 **extra)
    else:
        specs = bound_specs(nz, shape, engine, pes, acc_bits=acc_bits, index_bits=index_bits,
                            rel_bits=rel_bits)
    return {"engine": engine, "pes": pes, "bound": True,
            **_tally(specs, spram=spram, board=board,
                     kinds=[kind_name(layer) for layer in qnet.layers])}


def binding(a: dict) -> dict | None:
    """What stops an analysis from fitting, in that memory's own units; None when it fits.

    SPRAM first (a ROM meant for SPRAM deeper than its 16,384 words lands in EBR and makes the
    EBR count meaningless), then the EBR blocks."""
    if a["too_deep"]:
        name, depth = max(a["too_deep"], key=lambda t: t[1])
        what = group_of(name)
        noun = {"lane": "lane ROMs", "entries": "entry ROMs"}.get(what, f"{what} ROMs")
        return {"memory": noun, "unit": "words", "need": depth, "capacity": a["spram_words"],
                "where": "an SPRAM", "count": len(a["too_deep"])}
    if a["total_ebr"] > a["ebr_available"]:
        top = sorted(a["groups"].items(), key=lambda kv: -kv[1]["ebr"])[:2]
        return {"memory": "EBR", "unit": "blocks", "need": a["total_ebr"],
                "capacity": a["ebr_available"], "where": f"the {a['device']}",
                "largest": ", ".join(f"{n} {g['ebr']}" for n, g in top if g["ebr"])}
    return None


def _thin(qnet, keep: float, seed: int = 0):
    """The network with each non-zero kept with probability `keep` (the same draw for every
    `keep`, so a smaller keep removes a superset)."""
    rng = np.random.default_rng(seed)
    layers = []
    for layer in qnet.layers:
        u = rng.random(layer.index.shape)
        layers.append(Layer(codebook=layer.codebook, index=np.where(u < keep, layer.index, 0)
                            .astype(layer.index.dtype), bias=layer.bias, shift=layer.shift,
                            relu=layer.relu))
    return QNet(layers=layers, input_frac=qnet.input_frac)


def _quick(qnet, engine: str, pes: int, *, spram: bool, board: str = DEFAULT_BOARD) -> dict:
    """The analysis of an image placed without search (the engine's `unplaced` image options:
    interleaved rows, rel_bits 4): about what the real placement needs, or a little more."""
    rec = get(engine)
    opts = {**rec.unplaced, **(rec.board_options(qnet, pes) if rec.board_options else {})}
    return analyse(build_image(qnet, engine, pes, **opts), spram=spram, board=board)


def what_fits(qnet, engine: str, pes: int, *, spram: bool = True, quick: bool = True,
              board: str = DEFAULT_BOARD) -> dict:
    """What would fit: {"pes": the PE counts whose memories could fit (`fit_bound`),
    "floor": `fit_bound` with no non-zeros at `pes` PEs (when it does not fit, no density
    does), "nonzeros": about how many non-zeros fit at `pes` PEs, or None}.

    The non-zeros: the largest share of them, kept at random, with which the memories fit,
    by bisection on images placed without search (`_quick`: about what the real placement
    needs, or a little more); quick=False: on `fit_bound` (an upper limit, no image built).
    """
    pe_ok = [n for n in PE_CHOICES
             if n <= limits.get().max_pes
             and fits(fit_bound(qnet, engine, n, spram=spram, board=board))]
    floor = fit_bound(qnet, engine, pes, spram=spram, keep=0.0, board=board)
    total = sum(int(np.count_nonzero(layer.index)) for layer in qnet.layers)
    if not fits(floor):
        return {"pes": pe_ok, "floor": floor, "nonzeros": None, "keep": 0.0}

    def ok(keep):
        if not quick:
            return fits(fit_bound(qnet, engine, pes, spram=spram, keep=keep, board=board))
        return fits(_quick(_thin(qnet, keep), engine, pes, spram=spram, board=board))

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
                     f"{fb['need']} EBR blocks ({fb['largest']}), {fb['where']} has "
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
    lines.append(f"{a['device']}: {a['ebr_available']} EBR "
                 f"({a['ebr_bits_available'] // 1024} kbit), {a['spram_available']} SPRAM of "
                 f"{a['spram_words']:,} x 16 ({a['spram_bits_available'] // 1024} kbit, "
                 "no initial contents, single port); logic: memories yosys leaves to logic cells")
    what = "at least " if a["bound"] else ""
    if a["too_deep"]:
        name, depth = max(a["too_deep"], key=lambda t: t[1])
        verdict = (f"does NOT fit: {name} needs {what}{depth:,} words, an SPRAM holds "
                   f"{a['spram_words']:,}")
    else:
        verdict = (f"{'fits' if fits(a) else 'does NOT fit'} in EBR ({what}{a['total_ebr']} of "
                   f"{a['ebr_available']} blocks"
                   + (f", {a['spram_used'] - a.get('spram_acts', 0)} ROMs"
                      + (f" and {a['spram_acts']} activation bank"
                         + ("s" if a["spram_acts"] > 1 else "") if a.get("spram_acts") else "")
                      + " in SPRAM" if a["spram_used"] else "") + ")")
    lines.append(f"{a['engine']} engine, {_pes(a['pes'])}: {verdict}")
    return "\n".join(lines)


def check_board_fit(qnet, engine: str, pes: int, *, spram: bool = True, img=None,
                    board: str = DEFAULT_BOARD) -> dict:
    """The analysis of `img` (or, without it, `fit_bound`: before any placement); InputError
    with `fit_message` when the memories do not fit the board's device. For commands that need
    the board's network to fit (the simulated board) and print no table."""
    if img is None:
        a = fit_bound(qnet, engine, pes, spram=spram, board=board)
        quick = False
    else:
        a = analyse(img, spram=spram, board=board)
        quick = True
    if not fits(a):
        raise InputError(fit_message(qnet, a, what_fits(qnet, engine, pes, spram=spram,
                                                        quick=quick, board=board)))
    return a


def check_board_kinds(qnet, engine: str) -> None:
    """InputError (one line) unless `engine` runs every layer kind of `qnet` (a CNN runs on
    the board through the EIE engine only)."""
    from images.layers import check_kinds

    def on_board(rec):
        return rec.layer_kinds if rec.board_layer_kinds is None else rec.board_layer_kinds

    try:
        check_kinds(qnet, on_board(get(engine)), engine)
    except InputError as e:
        runs = [r.name for r in registered() if "conv" in on_board(r)]
        raise InputError(f"{e} (on the board a network with conv layers runs on "
                         f"--engine {'/'.join(runs)})") from None


def board_image(qnet, engine: str, pes: int, *, spram: bool = True,
                board: str = DEFAULT_BOARD):
    """The image the board runs: the engine's own (`build_image`), except that when an EIE
    entry ROM meant for SPRAM is deeper than an SPRAM (the relative index's fillers: LeNet-5 on
    1 PE has 18,097 entries at rel_bits 5), the next wider relative index whose entries fit
    (fewer fillers; 16,344 at rel_bits 6). The same rule on the build and on the host, so the
    weights loaded are the bitstream's."""
    rec = get(engine)
    own = rec.board_options(qnet, pes) if rec.board_options else {}
    # the family's own image options (ECP5: the EIE engine's relative index for speed), under
    # the engine's own board layout (the lockstep engine's one map for a CNN)
    opts = {**dict(getattr(get_board(board).fam, "IMAGE_OPTIONS", {}).get(engine, {})), **own}
    img = build_image(qnet, engine, pes, **opts)
    if own and spram and hasattr(img, "codebook_roms"):
        # the board's own layout: the block RAMs left give PEs their codebook as a ROM
        a = analyse(img, spram=True, board=board)
        free = a["ebr_available"] - a["total_ebr"]
        if free > 0:
            img = replace(img, codebook_roms=min(pes, free))
    if own or not spram or not hasattr(img, "rel_bits"):
        return img

    def entries_too_deep(img):  # per-PE entry ROMs (`pe<k>.entries`), not a lockstep lane
        deep = analyse(img, spram=True, board=board)["too_deep"]
        return bool(deep) and all(group_of(name) == "entries" for name, _ in deep)

    rb = img.rel_bits
    while rb < 12 and entries_too_deep(img):
        rb += 1
        img = build_image(qnet, engine, pes, **{**opts, "rel_bits": rb})
    return img


def default_pes(qnet, engine: str, board: str = DEFAULT_BOARD) -> int:
    """The PEs of `engine` on `board` when not told: the registry's, else ("as many as fit")
    the most of 8, 4, 2, 1 whose memories fit the device with the build's SPRAM plan (8 when
    none does: the caller then refuses with what binds)."""
    b = get_board(board)
    pes = get(engine).defaults_for(b.name, b.family).pes
    if pes is not None:
        return pes
    for n in (8, 4, 2, 1):
        if fits(fit_bound(qnet, engine, n, board=board)) and \
                fits(analyse(board_image(qnet, engine, n, board=board), spram=True,
                             board=board)):
            return n
    return 8
