"""The memory map of an engine: every memory it creates, computed from its image alone.

A `MemorySpec` names a memory (unique within an engine), its kind ("rom": init only, never
written; "ram": written by the engine), width, depth, initial words and port needs
(hw/memory.py builds them). `memory_specs(image, acc_bits=...)` lists the memories the engine of
`image` makes, in its order, without making the engine: the board's SPRAM plan, the weight load
of the host and the resource estimate read it from here. tests/test_images.py checks it against
the engines' own `memory_specs`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["MemorySpec", "memory_specs"]


@dataclass(frozen=True)
class MemorySpec:
    name: str  # e.g. "pe3.entries", unique within an engine
    kind: str  # "rom" or "ram"
    width: int  # bits per word
    depth: int  # words (>= 1)
    init: tuple[int, ...] = field(default=(), repr=False)  # unsigned words, len <= depth
    read_ports: int = 1
    write_ports: int = 0

    def __post_init__(self):
        if self.kind not in ("rom", "ram"):
            raise ValueError(f"memory {self.name}: kind must be 'rom' or 'ram', not {self.kind!r}")
        if self.width < 1 or self.depth < 1:
            raise ValueError(f"memory {self.name}: width and depth must be >= 1, "
                             f"not {self.width!r} x {self.depth!r}")
        if len(self.init) > self.depth:
            raise ValueError(
                f"memory {self.name}: {len(self.init)} init words > depth {self.depth}")

    @property
    def bits(self) -> int:
        return self.width * self.depth

    @property
    def addr_width(self) -> int:
        return max(1, (self.depth - 1).bit_length())


def _bits(n: int) -> int:
    return max(1, int(n).bit_length())


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _act_words(image) -> int:
    n = image.pes
    widths = [image.layers[0].in_features] + [layer.out_features for layer in image.layers]
    return max(_ceil_div(w, n) for w in widths)


def _eie_specs(rom, acc_bits: int) -> list[MemorySpec]:
    """hw.eie.Engine (sparse): per PE entries, pointer banks, biases, codebook, two
    accumulator banks; then per PE its activation buffer (two banks of act_words)."""
    from .eie import default_issue_width

    L = rom.num_layers
    k = 1 << rom.index_bits
    ptr_ports = default_issue_width(rom.pes)  # one per column the front end sends a cycle
    specs = []
    for pe in range(rom.pes):
        entries, ptr, bias = rom.entries[pe], rom.ptr[pe], rom.bias[pe]
        ptr_bits = _bits(max(len(entries), 1))
        words = [int(x) for x in ptr]
        rows = max(rl.rows[pe] for rl in rom.layers)
        specs += [
            MemorySpec(f"pe{pe}.entries", "rom", rom.index_bits + rom.rel_bits,
                       max(1, len(entries)), tuple(int(x) for x in entries)),
            MemorySpec(f"pe{pe}.ptr_even", "rom", ptr_bits, max(1, (len(words) + 1) // 2),
                       tuple(words[0::2] or [0]), read_ports=ptr_ports),
            MemorySpec(f"pe{pe}.ptr_odd", "rom", ptr_bits, max(1, len(words) // 2),
                       tuple(words[1::2] or [0]), read_ports=ptr_ports),
            MemorySpec(f"pe{pe}.bias", "rom", 32, max(1, len(bias)),
                       tuple(int(x) & 0xFFFFFFFF for x in bias)),
            MemorySpec(f"pe{pe}.codebook", "rom", 16, max(1, L * k),
                       tuple(int(x) & 0xFFFF for x in rom.codebook)),
            *(MemorySpec(f"pe{pe}.acc{b}", "ram", acc_bits, max(1, rows), (),
                         read_ports=1, write_ports=1) for b in range(2)),
        ]
    aw = _act_words(rom)
    specs += [MemorySpec(f"pe{pe}.act", "ram", 16, 2 * aw, (), read_ports=1, write_ports=1)
              for pe in range(rom.pes)]
    return specs


def _lockstep_specs(img, acc_bits: int) -> list[MemorySpec]:
    """hw.lockstep.LockstepEngine: the lane ROMs (the slot words of PE pairs), the column
    pointer banks, per PE an accumulator RAM (rows, then the biases) and an activation RAM
    with two input banks."""
    n = img.pes
    e = img.entry_bits
    slots = max(1, img.num_slots)
    specs = [MemorySpec(f"lane{j}", "rom", e * min(2, n - 2 * j), slots,
                        tuple(int(w) for w in words) or (0,))
             for j, words in enumerate(img.lanes())]
    ptr_bits = _bits(img.num_slots)
    ptr = [int(p) for p in img.col_ptr]
    specs += [
        MemorySpec("colptr_even", "rom", ptr_bits, max(1, len(ptr[0::2])), tuple(ptr[0::2])),
        MemorySpec("colptr_odd", "rom", ptr_bits, max(1, len(ptr[1::2])),
                   tuple(ptr[1::2]) or (0,)),
    ]
    mask = (1 << acc_bits) - 1
    rows = max(layer.rows_per_pe for layer in img.layers)
    bias = np.asarray(img.bias)
    specs += [MemorySpec(f"pe{k}.acc", "ram", acc_bits, rows + bias.shape[1],
                         tuple([0] * rows + [int(b) & mask for b in bias[k]]),
                         read_ports=1, write_ports=1) for k in range(n)]
    specs += [MemorySpec(f"pe{k}.act", "ram", 16, lockstep_act_depth(img), (), read_ports=1,
                         write_ports=1) for k in range(n)]
    return specs


def lockstep_act_bank_bits(img) -> int:
    """Word-address bits of one input bank of the lockstep engine's activation RAMs: bank b
    starts at b << bits, so the bank is an address bit, not an adder."""
    return _bits(_act_words(img) - 1)


def lockstep_act_depth(img) -> int:
    """Two banks (the next input loads while the current one computes): bank 1 at
    1 << lockstep_act_bank_bits, act_words deep."""
    return (1 << lockstep_act_bank_bits(img)) + _act_words(img)


def memory_specs(image, *, acc_bits: int = 32) -> list[MemorySpec]:
    """Every memory the engine of `image` creates (the EIE engine: its sparse form)."""
    from . import kind_of

    if kind_of(image) == "eie":
        return _eie_specs(image, acc_bits)
    return _lockstep_specs(image, acc_bits)
