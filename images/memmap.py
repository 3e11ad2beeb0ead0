"""Memory specs: how an engine's memories are described, from its image alone.

A `MemorySpec` names a memory (unique within an engine), its kind ("rom": init only, never
written; "ram": written by the engine; "table": a few words of per-layer constants, never
written and read without a clock, asynchronously: logic, not block RAM), width, depth, initial
words and port needs
(hw/memory.py builds them). Each engine's image module lists the memories its engine makes, in
the engine's order (`images.eie.memory_map`, `images.lockstep.memory_map`), and the engines are
built from those lists, so the board's SPRAM plan, the weight load of the host and the resource
estimate read the same map without making an engine (`images.memory_specs(image)` picks the
engine's by the image, through the registry). Here also the two integer helpers every memory
map and engine sizes itself with.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["MemorySpec", "bits", "ceil_div"]


@dataclass(frozen=True)
class MemorySpec:
    name: str  # e.g. "pe3.entries", unique within an engine
    kind: str  # "rom", "ram" or "table" (read asynchronously)
    width: int  # bits per word
    depth: int  # words (>= 1)
    init: tuple[int, ...] = field(default=(), repr=False)  # unsigned words, len <= depth
    read_ports: int = 1
    write_ports: int = 0

    def __post_init__(self):
        if self.kind not in ("rom", "ram", "table"):
            raise ValueError(f"memory {self.name}: kind must be 'rom', 'ram' or 'table', "
                             f"not {self.kind!r}")
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


def bits(n: int) -> int:
    """Bits of an unsigned counter that holds 0..n."""
    return max(1, int(n).bit_length())


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)
