"""Codebook decoder: a codebook index v of layer `layer` -> its 16-bit signed weight.

Every layer has 2**index_bits codebook entries; the codebooks of all layers are one memory,
layer l's entry v at word l * 2**index_bits + v. The memory's read register is the pipeline
register: (layer, v) presented in one cycle (the `e_` stage of a PE) give `weight` in the next
(the `m_` stage). Entry 0 is the pruned weight (0 in every codebook made by `compress`); the PE
drops v == 0 before it gets here and the MAC drops a zero weight, so both kinds of zero skip.
"""

from __future__ import annotations

from amaranth.hdl import Module, signed
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out


class CodebookDecoder(wiring.Component):
    """Codebook index -> weight, through the codebook memory (module docstring).

    Ports: `layer`, `v` (in: the layer and index of a hit), `mem` (the codebook memory's read
    port, driven from here), `weight` (out: the weight of the previous cycle's (layer, v)).
    Parameters: index_bits (1..16), layers (how many codebooks), addr_bits (memory address).
    """

    def __init__(self, *, index_bits: int, layers: int, addr_bits: int):
        if not isinstance(index_bits, int) or not 1 <= index_bits <= 16:
            raise ValueError(f"index_bits must be an integer 1..16, not {index_bits!r}")
        if not isinstance(layers, int) or layers < 1:
            raise ValueError(f"layers must be a positive integer, not {layers!r}")
        self.index_bits = index_bits
        super().__init__({
            "layer": In(range(max(layers, 2))),
            "v": In(index_bits),
            "mem": In(memory.ReadPort.Signature(addr_width=addr_bits, shape=16)),
            "weight": Out(signed(16)),  # the weight of the (layer, v) of the previous cycle
        })

    def elaborate(self, platform):
        m = Module()
        m.d.comb += [
            self.mem.addr.eq(self.layer * (1 << self.index_bits) + self.v),
            self.weight.eq(self.mem.data.as_signed()),
        ]
        return m
