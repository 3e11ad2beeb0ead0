"""The engine's memories against the iCE40UP5K budget (docs/fpga.md, "Resource analysis").

`analyse(img)` takes every memory the engine of the image creates (`images.memory_specs`:
name, kind, width, depth, ports, read from the image of either engine, no engine made) and counts the EBR blocks each needs in its cheapest EBR shape (256x16, 512x8, 1024x4,
2048x2), which is what yosys' memory_libmap picks for a memory of one read and one write port.
With `spram`, the four ROMs of `fpga.memories.spram_plan` (written over the UART after
configuration) need no EBR. The link and UART use no memory (fpga/link.py streams the outputs),
so the engine's blocks are the board's.
"""

from __future__ import annotations

import re
from collections import defaultdict

UP5K = {"lc": 5280, "ebr": 30, "ebr_bits": 4096, "spram": 4, "spram_bits": 16384 * 16, "dsp": 8}
EBR_SHAPES = ((16, 256), (8, 512), (4, 1024), (2, 2048))


def ebr_blocks(width: int, depth: int) -> int:
    """EBR blocks for one width x depth memory with one read port (the cheapest shape)."""
    return min(-(-width // w) * -(-depth // d) for w, d in EBR_SHAPES)


def group_of(name: str) -> str:
    """The kind of memory: "pe3.acc" -> "acc" (one per PE), "lane2" -> "lane", "colptr"."""
    return name.split(".", 1)[1] if "." in name else re.sub(r"\d+$", "", name)


def analyse(img, *, spram: bool = False, acc_bits: int = 32) -> dict:
    """Memories by kind, EBR blocks each needs; with `spram`, the SPRAM plan's ROMs need none."""
    from images import engine_of, memory_specs

    from .memories import spram_plan

    specs = memory_specs(img, engine_of(img).params(acc_bits=acc_bits))
    in_spram = {s.name for s in spram_plan(specs)} if spram else set()
    groups = defaultdict(lambda: {"count": 0, "bits": 0, "ebr": 0, "spram": 0, "depths": []})
    for s in specs:
        g = groups[group_of(s.name)]
        g["count"] += 1
        g["bits"] += s.bits
        if s.name in in_spram:
            g["spram"] += 1
        else:
            g["ebr"] += ebr_blocks(s.width, s.depth)
        g["depths"].append(s.depth)
        g["kind"] = s.kind
        g["width"] = s.width
    for g in groups.values():
        lo, hi = min(g["depths"]), max(g["depths"])
        g["shape"] = f"{g['width']} x {lo}" + (f"..{hi}" if hi != lo else "")
    total_bits = sum(g["bits"] for g in groups.values())
    total_ebr = sum(g["ebr"] for g in groups.values())
    return {
        "engine": engine_of(img).name,
        "pes": img.pes,
        "groups": dict(groups),
        "total_bits": total_bits,
        "total_ebr": total_ebr,
        "spram_used": len(in_spram),
        "spram_names": sorted(in_spram),
        "ebr_available": UP5K["ebr"],
        "ebr_bits_available": UP5K["ebr"] * UP5K["ebr_bits"],
        "spram_bits_available": UP5K["spram"] * UP5K["spram_bits"],
    }


def format_analysis(a: dict) -> str:
    lines = [f"{'memory':<10} {'kind':<4} {'n':>3} {'width x depth':<16} {'kbit':>7} {'EBR':>5}"
             f" {'SPRAM':>5}"]
    for name, g in a["groups"].items():
        lines.append(f"{name:<10} {g['kind']:<4} {g['count']:>3} {g['shape']:<16} "
                     f"{g['bits'] / 1024:>7.1f} {g['ebr']:>5} {g['spram']:>5}")
    lines.append(f"{'total':<10} {'':<4} {'':>3} {'':<16} {a['total_bits'] / 1024:>7.1f} "
                 f"{a['total_ebr']:>5} {a['spram_used']:>5}")
    lines.append(f"iCE40UP5K: {a['ebr_available']} EBR ({a['ebr_bits_available'] // 1024} kbit), "
                 f"4 SPRAM ({a['spram_bits_available'] // 1024} kbit, no initial contents, "
                 f"single port)")
    fits = a["total_ebr"] <= a["ebr_available"]
    lines.append(f"{a['engine']} engine, {a['pes']} PEs: {'fits' if fits else 'does NOT fit'} "
                 f"in EBR ({a['total_ebr']} of {a['ebr_available']} blocks"
                 + (f", {a['spram_used']} ROMs in SPRAM" if a["spram_used"] else "") + ")")
    return "\n".join(lines)
