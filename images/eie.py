"""ROM images for the EIE engine: the sparse format, its writer, reader and decoder.

Layout (documented in docs/rom-format.md):

* Rows are placed over N PEs: PE k holds the physical rows p with p % N == k, as local rows
  p // N. Physical row p of layer i is logical row perm_i[p]: a permutation chosen to even out
  the work of the PEs (`images.placement.place_balanced`; the identity with balance off and for the last layer).
  Layer i+1's columns are permuted by the same perm_i, so the engine, which writes physical row
  p where the next layer reads physical column p, computes exactly the logical network.
* Per PE, all layers are concatenated in one compressed-sparse-column array of entries.
  An entry is ``v | (z << index_bits)``: v is the codebook index (0 = filler), z the number
  of this PE's zero rows before the entry in its column. A gap longer than
  2**rel_bits - 1 gets filler entries (v = 0, z = 2**rel_bits - 1).
* Per PE, a column-pointer array: for layer i, in_i + 1 pointers (absolute offsets into that
  PE's entry array), so column j of layer i is entries[ptr[b + j] : ptr[b + j + 1]] with b the
  layer's pointer base.
* Per PE, the biases of its rows, layer after layer (int32).
* One codebook file: layer i's codebook at offset i * 2**index_bits, padded with zeros.
* One permutation file: every layer's perm_i, layer after layer (`perm_base`).
* manifest.json: format version, every parameter, per-layer bases and counts, and the sha256,
  size, word width and depth of every file. Each array is written as $readmemh hex (one word a
  line) and raw little-endian binary.

This module is the ROM image format: the EIE engine (`hw.eie`) is built from a `RomImage`
(made by `build_rom` or read back and verified by `read_rom`) and its `physical_qnet`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from compress import limits
from compress.atomic import atomic_dir
from compress.errors import InputError
from compress.infile import read_input, read_text
from compress.qnet import DEFAULT_INDEX_BITS, QNet

from . import conv
from .csc import DEFAULT_REL_BITS, decode_csc, encode_csc, pe_rows  # noqa: F401 (re-exported)
from .lanes import simulate_layer
from .layers import LAYER_KINDS, layer_kind
from .memmap import MemorySpec, bits, ceil_div
from .params import EngineParams
from .placement import place_balanced

ROM_FORMAT = "eie-rom"
ROM_VERSION = 2  # 2: row permutations (perm file, perm_base)


def _permute(qnet: QNet, perms: list[np.ndarray], pes: int) -> QNet:
    """The physical network: layer i's rows by perm_i, its columns in physical order
    (`images.conv.physical_layers`: by perm_{i-1}, and a conv map's channels by PE). Its conv
    layers keep their geometry but hold physical matrices: the golden model cannot run them."""
    mats, _cols = conv.physical_layers(qnet, perms, pes)
    layers = [layer_kind(layer).with_matrix(layer, mats[i], layer.bias[perms[i]])
              for i, layer in enumerate(qnet.layers)]
    return QNet(layers=layers, input_frac=qnet.input_frac, input_shape=qnet.input_shape)


def _unpermute(phys: QNet, perms: list[np.ndarray], cols: list[np.ndarray],
               in_logical: list[int]) -> QNet:
    """Inverse of `_permute`: the logical network from the physical one (`cols`: the column
    maps, `in_logical`: the logical column counts)."""
    layers = []
    for i, layer in enumerate(phys.layers):
        kind = layer_kind(layer)
        try:
            matrix = conv.logical_matrix(kind.matrix(layer), cols[i], in_logical[i])
        except ValueError as e:
            raise InputError(f"ROM layer l{i}: {e}") from None
        index = np.empty_like(matrix)
        index[perms[i]] = matrix
        bias = np.empty_like(layer.bias)
        bias[perms[i]] = layer.bias
        layers.append(kind.with_matrix(layer, index, bias))
    return QNet(layers=layers, input_frac=phys.input_frac, input_shape=phys.input_shape)


def check_perms(perms: list[np.ndarray], outs: list[int]) -> None:
    """ValueError unless perm_i is a permutation of 0..out_i-1 and the last one the identity."""
    if len(perms) != len(outs):
        raise ValueError(f"{len(perms)} row permutations for {len(outs)} layers")
    for i, (p, out) in enumerate(zip(perms, outs)):
        p = np.asarray(p)
        if p.shape != (out,) or not np.array_equal(np.sort(p), np.arange(out)):
            raise ValueError(f"layer l{i}: the row permutation is not a permutation of "
                             f"0..{out - 1}")
        if i == len(outs) - 1 and not np.array_equal(p, np.arange(out)):
            raise ValueError(f"layer l{i}: the last layer's row permutation must be the identity "
                             "(outputs come out in logical order)")


# ---------------------------------------------------------------------------------------------
# The image of a whole network


@dataclass
class RomLayer:
    in_features: int
    out_features: int
    shift: int
    relu: bool
    codebook_size: int
    perm_base: int  # offset of this layer's row permutation in the perm array
    rows: list[int]  # per PE: rows held
    entries: list[int]  # per PE: entries incl. fillers
    nonzeros: list[int]  # per PE: real entries
    fillers: list[int]  # per PE: filler entries
    entries_base: list[int]  # per PE: offset of this layer in the PE's entry array
    ptr_base: list[int]  # per PE: offset of this layer's in+1 pointers
    bias_base: list[int]  # per PE: offset of this layer's biases
    kind: str = "fc"  # the layer's kind (`images.layers`)
    geom: tuple = ()  # conv: `images.conv.ConvGeom.as_tuple()` (empty for fc)

    @property
    def conv(self) -> "conv.ConvGeom | None":
        return conv.ConvGeom(*self.geom) if self.geom else None


@dataclass
class RomImage:
    pes: int
    index_bits: int
    rel_bits: int
    input_frac: int
    layers: list[RomLayer]
    entries: list[np.ndarray] = field(repr=False)  # per PE: uint32 entry words
    ptr: list[np.ndarray] = field(repr=False)  # per PE: int64 absolute pointers
    bias: list[np.ndarray] = field(repr=False)  # per PE: int32
    codebook: np.ndarray = field(repr=False)  # int16[L * 2**index_bits]
    perm: list[np.ndarray] = field(repr=False)  # per layer: physical row p = logical perm[p]
    balanced: bool = True  # perm chosen by place_balanced (else the identity)
    input_shape: tuple | None = None  # the qnet's input_shape ((in_0,) or (C, H, W))

    @property
    def perm_bits(self) -> int:
        return max(1, max(rl.out_features for rl in self.layers) - 1).bit_length()

    @property
    def entry_bits(self) -> int:
        return self.index_bits + self.rel_bits

    @property
    def ptr_bits(self) -> int:
        return max(1, max(len(e) for e in self.entries).bit_length())

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def v(self, pe: int) -> np.ndarray:
        return (self.entries[pe] & ((1 << self.index_bits) - 1)).astype(np.uint8)

    def z(self, pe: int) -> np.ndarray:
        return (self.entries[pe] >> self.index_bits).astype(np.uint16)

    @property
    def in_features(self) -> int:
        """The engine's input width (the input map flattened)."""
        return conv.engine_in_features(self)

    @property
    def out_features(self) -> int:
        """The engine's output width (the last layer's output flattened)."""
        return conv.engine_out_features(self)

    def layer_codebook(self, i: int) -> np.ndarray:
        k = 1 << self.index_bits
        return self.codebook[i * k : i * k + self.layers[i].codebook_size]


REL_BITS_AUTO = "auto"  # the width with the smallest entry memories
REL_BITS_FAST = "fast"  # the width with the fewest cycles by entries (more memory allowed)


def parse_rel_bits(value) -> int | str:
    """A --rel-bits value: "auto", "fast" or an integer 1..12 (InputError otherwise)."""
    if value in (REL_BITS_AUTO, REL_BITS_FAST):
        return value
    try:
        rb = int(value)
    except (TypeError, ValueError):
        raise InputError(f"--rel-bits must be 'auto', 'fast' or an integer 1..12, "
                         f"not {value!r}") from None
    if not 1 <= rb <= 12 or str(value).strip() not in (str(rb), f"+{rb}"):
        raise InputError(f"--rel-bits must be 'auto', 'fast' or an integer 1..12, not {value!r}")
    return rb


def entries_bits(rom: "RomImage") -> int:
    """Bits of all PEs' entry memories: (index_bits + rel_bits) x entries, fillers included."""
    return rom.entry_bits * sum(len(e) for e in rom.entries)


def choose_rel_bits(qnet: QNet, *, pes: int, index_bits: int = DEFAULT_INDEX_BITS,
                    balance: bool = True) -> RomImage:
    """The ROM whose entry memories are smallest over rel_bits (ties: fewer bits an entry).

    One more relative-index bit widens every entry by a bit but halves the reach a gap needs
    before a filler entry: a network with few non-zeros per PE and column (uniform random
    sparsity) needs 5 bits, a trained LeNet 4 (docs/rom-format.md). The size is unimodal in
    rel_bits in practice, so the search walks up from 4 while the size falls, else down.
    Fillers also cost the engine a cycle each, so the smallest memory is the faster one too.
    """
    def build(rb):
        return build_rom(qnet, pes=pes, index_bits=index_bits, rel_bits=rb, balance=balance)

    # every width needs at least one entry per non-zero: a width whose entries alone are not
    # smaller than the best memory so far cannot win, so it is not built (a build places and
    # orders the rows: seconds on a large network)
    nonzeros = sum(int(np.count_nonzero(layer.index)) for layer in qnet.layers)
    best = build(DEFAULT_REL_BITS)
    for step in (1, -1):
        rb, moved = DEFAULT_REL_BITS + step, False
        # past zero fillers a wider entry only adds bits
        while 1 <= rb <= 12 and not (step > 0 and sum(sum(l.fillers) for l in best.layers) == 0):
            if step > 0 and nonzeros * (index_bits + rb) >= entries_bits(best):
                break  # as the comparison below would, without the build
            cand = build(rb)
            # ties go to the narrower width: stop on a tie upwards, go on through one downwards
            if (entries_bits(cand) >= entries_bits(best) if step > 0
                    else entries_bits(cand) > entries_bits(best)):
                break
            best, moved, rb = cand, True, rb + step
        if moved:
            break
    return best


def busiest_entries(rom: "RomImage") -> int:
    """The sum over layers of the busiest PE's entries (fillers included): the cycles a layer
    cannot go below when every activation is non-zero (a PE spends a cycle an entry)."""
    total = 0
    for rl in rom.layers:
        total += max(int(rom.ptr[k][rl.ptr_base[k] + rl.in_features])
                     - int(rom.ptr[k][rl.ptr_base[k]]) for k in range(rom.pes))
    return total


def choose_rel_bits_fast(qnet: QNet, *, pes: int, index_bits: int = DEFAULT_INDEX_BITS,
                         balance: bool = True) -> RomImage:
    """The ROM with the fewest busiest-PE entries (`busiest_entries`) over rel_bits from the
    smallest-memory width (`choose_rel_bits`) up, a wider width taken only for at least 1%
    fewer a bit it adds: a filler costs its PE a cycle, and the smallest memory can keep
    fillers a wider index would not need (docs/RESULTS.md section 6 measures the trade).
    Widths stop where fillers are gone."""
    def build(rb):
        return build_rom(qnet, pes=pes, index_bits=index_bits, rel_bits=rb, balance=balance)

    best = choose_rel_bits(qnet, pes=pes, index_bits=index_bits, balance=balance)
    cand, rb = best, best.rel_bits
    while rb < 12 and sum(sum(layer.fillers) for layer in cand.layers):
        rb += 1
        cand = build(rb)
        # a wider width must cut the busiest PE's entries by at least 1% a bit: past that a
        # bit of every entry (10-15% of the memory) buys next to nothing
        if busiest_entries(cand) * 100 <= busiest_entries(best) * (100 - (rb - best.rel_bits)):
            best = cand
    return best


def build_rom(
    qnet: QNet,
    *,
    pes: int,
    index_bits: int = DEFAULT_INDEX_BITS,
    rel_bits: int | str = REL_BITS_AUTO,
    balance: bool = True,
) -> RomImage:
    """Encode a qnet into ROM images for `pes` processing elements.

    rel_bits: the relative row index width, 1..12, "auto" (the default): the width with the
    smallest entry memories (`choose_rel_bits`), or "fast": the fewest cycles by entries
    (`choose_rel_bits_fast`). balance=True permutes the rows of every layer
    but the last (`place_balanced`); False keeps plain interleaving (physical row = logical row).
    """
    if not isinstance(pes, int) or pes < 1:
        raise InputError(f"--pes must be an integer >= 1, not {pes!r}")
    limits.check("max_pes", pes, "--pes")  # what read_rom takes back
    conv.check_pes(qnet, pes)
    rel_bits = parse_rel_bits(rel_bits)
    if rel_bits == REL_BITS_AUTO:
        return choose_rel_bits(qnet, pes=pes, index_bits=index_bits, balance=balance)
    if rel_bits == REL_BITS_FAST:
        return choose_rel_bits_fast(qnet, pes=pes, index_bits=index_bits, balance=balance)
    qnet.validate(index_bits=index_bits)
    L = qnet.num_layers
    perms = [place_balanced(layer_kind(layer).matrix(layer), pes, rel_bits=rel_bits)
             if balance and i < L - 1
             else np.arange(layer.out_features, dtype=np.int64)
             for i, layer in enumerate(qnet.layers)]
    geoms = conv.network_geometries(qnet)
    input_shape = tuple(int(v) for v in qnet.input_shape) if qnet.input_shape else None
    qnet = _permute(qnet, perms, pes)  # from here on: the physical network
    perm_base = np.concatenate(([0], np.cumsum([len(p) for p in perms]))).astype(int).tolist()
    k = 1 << index_bits
    entries = [[] for _ in range(pes)]
    ptrs = [[] for _ in range(pes)]
    biases = [[] for _ in range(pes)]
    ent_len = [0] * pes
    ptr_len = [0] * pes
    bias_len = [0] * pes
    layers = []
    codebook = np.zeros(k * qnet.num_layers, dtype=np.int16)
    for i, layer in enumerate(qnet.layers):
        codebook[i * k : i * k + len(layer.codebook)] = layer.codebook
        kind = layer_kind(layer)
        matrix = kind.matrix(layer)
        rl = RomLayer(
            in_features=layer.in_features,
            out_features=layer.out_features,
            shift=int(layer.shift),
            relu=bool(layer.relu),
            codebook_size=len(layer.codebook),
            perm_base=perm_base[i],
            rows=[], entries=[], nonzeros=[], fillers=[],
            entries_base=[], ptr_base=[], bias_base=[],
            kind=kind.name, geom=geoms[i].as_tuple() if geoms[i] is not None else (),
        )
        for pe in range(pes):
            sub = matrix[pe::pes, :]
            v, z, ptr = encode_csc(sub, rel_bits=rel_bits)
            rl.rows.append(sub.shape[0])
            rl.entries.append(len(v))
            rl.nonzeros.append(int(np.count_nonzero(v)))
            rl.fillers.append(int(len(v) - np.count_nonzero(v)))
            rl.entries_base.append(ent_len[pe])
            rl.ptr_base.append(ptr_len[pe])
            rl.bias_base.append(bias_len[pe])
            entries[pe].append(v.astype(np.uint32) | (z.astype(np.uint32) << index_bits))
            ptrs[pe].append(ptr + ent_len[pe])
            biases[pe].append(layer.bias[pe::pes].astype(np.int32))
            ent_len[pe] += len(v)
            ptr_len[pe] += len(ptr)
            bias_len[pe] += sub.shape[0]
        layers.append(rl)
    cat = lambda parts, dt: np.concatenate(parts).astype(dt) if parts else np.zeros(0, dt)  # noqa: E731
    return RomImage(
        pes=pes,
        index_bits=index_bits,
        rel_bits=rel_bits,
        input_frac=int(qnet.input_frac),
        layers=layers,
        entries=[cat(e, np.uint32) for e in entries],
        ptr=[cat(p, np.int64) for p in ptrs],
        bias=[cat(b, np.int32) for b in biases],
        codebook=codebook,
        perm=perms,
        balanced=bool(balance),
        input_shape=input_shape,
    )


def rom_geoms(rom) -> list:
    """Each layer's `images.conv.ConvGeom` (None for fc) of an EIE or lockstep image."""
    return [conv.ConvGeom(*rl.geom) if rl.geom else None for rl in rom.layers]


def has_conv(img) -> bool:
    """Whether an image has conv layers (a loadable engine refuses them: `sizes_of`)."""
    return any(getattr(rl, "geom", ()) for rl in img.layers)


def column_maps_of(img) -> tuple[list[np.ndarray], list[int]]:
    """(column maps, logical column counts) of an image's layers (`images.conv`)."""
    geoms = rom_geoms(img)
    kinds = [rl.kind for rl in img.layers]
    logical = conv.logical_in_features(kinds, geoms, img.layers[0].in_features)
    for i, n in enumerate(logical):
        if n < 0:
            logical[i] = img.layers[i - 1].out_features
    perms = [np.asarray(p) for p in (img.perm if hasattr(img, "perm")
                                     else [ll.perm for ll in img.layers])]
    return conv.column_maps(kinds, logical, geoms, perms, img.pes), logical


def decode_rom(rom: RomImage) -> QNet:
    """Rebuild the logical qnet (index matrices, codebooks, biases, shifts, ReLU) from ROM images:
    exactly the qnet it was built from."""
    cols, logical = column_maps_of(rom)
    return _unpermute(physical_qnet(rom), rom.perm, cols, logical)


def physical_qnet(rom: RomImage) -> QNet:
    """The network as placed in the ROM: layer i's rows in physical order (physical row p is
    logical row perm_i[p], in PE p % N), its columns permuted by perm_{i-1}. Row r of it lives in
    PE r % N as local row r // N, as the engine computes it. A conv layer's columns are in
    physical order (`images.conv`): such a layer is a matrix, not one the golden model runs."""
    layers = []
    geoms = rom_geoms(rom)
    for i, rl in enumerate(rom.layers):
        index = np.zeros((rl.out_features, rl.in_features), dtype=np.uint8)
        bias = np.zeros(rl.out_features, dtype=np.int32)
        for pe in range(rom.pes):
            pb, eb, bb = rl.ptr_base[pe], rl.entries_base[pe], rl.bias_base[pe]
            ptr = rom.ptr[pe][pb : pb + rl.in_features + 1] - eb
            words = rom.entries[pe][eb : eb + rl.entries[pe]]
            v = words & ((1 << rom.index_bits) - 1)
            z = words >> rom.index_bits
            try:
                index[pe :: rom.pes, :] = decode_csc(v, z, ptr, rl.rows[pe])
            except ValueError as e:
                raise InputError(f"ROM layer l{i} PE {pe}: {e}") from None
            bias[pe :: rom.pes] = rom.bias[pe][bb : bb + rl.rows[pe]]
        layers.append(LAYER_KINDS[rl.kind].make(codebook=rom.layer_codebook(i).copy(),
                                                index=index, bias=bias, shift=rl.shift,
                                                relu=rl.relu, geom=geoms[i]))
    return QNet(layers=layers, input_frac=rom.input_frac, input_shape=rom.input_shape)



def default_issue_width(pes: int) -> int:
    """Columns the EIE engine's front end sends per cycle by default: 2 from 4 PEs up.

    With many PEs a PE has about one entry per non-zero column or fewer, so one column a cycle
    bounds the small layers (LeNet-300-100 with 8 PEs: l1 and l2); two need a second read port
    on each pointer bank (`images.memmap`). With 1-3 PEs the PEs' work is the bound and the
    port is not worth its memory (the board's EIE engine has 2 PEs).
    """
    return 2 if pes >= 4 else 1


def model_cycles(rom: RomImage, x: np.ndarray, *, queue_depth: int = 8, acc_bits: int = 32,
                 issue_width: int | None = None, pipelined: bool = False) -> np.ndarray:
    """Compute cycles [batch, layers] of the EIE engine on int16 inputs x[batch, in_0], by a
    cycle model (no Verilog): every PE spends its entries (fillers included) on each non-zero
    column and the front end stalls while a PE that needs the column has `queue_depth` queued,
    plus 6 fixed cycles a layer (pipeline, idle check, START) and the last layer's output drain
    (its drain rows and 2, at least 6: `drain_rows`). At issue width 1 the front end broadcasts one
    non-zero column per cycle and an all-zero group of N columns costs one
    (`images.lanes.simulate_layer`, one lane per PE); at
    width 2 (`simulate_wide`) two a cycle, across group boundaries. issue_width None: the
    engine's default for the image's PEs (`default_issue_width`); `pipelined`, the pipelined
    two-wide front end (`EieParams.pipelined`, `simulate_wide`). docs/engine.md gives its
    agreement with the Verilog (within 0.2 points of MAC utilisation on three LeNet-300-100-shaped
    networks)."""
    from compress.golden import run_layers as golden_layers  # torch: only when modelling

    width = default_issue_width(rom.pes) if issue_width is None else issue_width
    if width not in ISSUE_WIDTHS:
        raise InputError(f"issue width must be 1, 2 or 4, not {issue_width!r}")
    if pipelined and width not in PIPELINED_WIDTHS:
        raise InputError(f"the pipelined front end is the two-wide or four-wide one, not issue "
                         f"width {width}")
    if width == 4 and not pipelined:
        raise InputError("four columns a cycle is the pipelined front end's only (pipelined)")
    if any(rl.geom for rl in rom.layers):
        # the walk of a conv layer is not modelled: tb.analysis counts its work, the RTL its
        # cycles
        raise InputError("the EIE cycle model covers fully connected layers only, not conv")
    qnet = physical_qnet(rom)
    x = np.asarray(x)
    acts = [x] + golden_layers(qnet, x, acc_bits=acc_bits)[:-1]  # physical column order
    out = []
    for i, rl in enumerate(rom.layers):
        cost = np.stack([np.diff(rom.ptr[k][rl.ptr_base[k]:rl.ptr_base[k] + rl.in_features + 1])
                         for k in range(rom.pes)])
        nz = np.asarray(acts[i]) != 0
        if width == 1:
            c = simulate_layer(cost, nz, pes=rom.pes, depth=queue_depth, rows=0,
                               drain_share=0, preload=False, drain_tail=3)
        else:
            c = simulate_wide(cost, nz, pes=rom.pes, depth=queue_depth, pipelined=pipelined,
                              width=width)
            if i:  # the first groups come forwarded from the previous layer's drain (the
                # pipelined engine: through its register and the staged front end, later)
                c = c + (1 if pipelined else -2)
        # - 1: a PE is idle while its last hit is written (`hw.eie.mac.Mac.pending`); the last
        # layer's drain is not overlapped: its rows (`drain_rows`) and 2, at least 6 cycles
        # (pipelined: at least 3)
        last = (max(3 if pipelined else 6, drain_rows(rom)[-1] + 2)
                if i == rom.num_layers - 1 else 0)
        out.append(c - 1 + last)
    return np.stack(out, axis=1)


def drain_rows(rom: RomImage) -> list[int]:
    """Rows the engine drains after each fully connected layer (every PE at once: the most a
    PE holds of the layer's outputs or of layer i + 2's, which the drain preloads)."""
    n = rom.pes
    outs = [rl.out_features for rl in rom.layers] + [0, 0]
    return [max(ceil_div(outs[i], n), ceil_div(outs[i + 2], n))
            for i in range(rom.num_layers)]


def io_cycles(rom: RomImage, compute: np.ndarray, params: "EieParams | None" = None) -> dict:
    """The engine's cycles around the compute for one input, from its compute cycles
    `compute` [batch] (the RTL's or `cycle_model`'s summed over layers), fully connected
    networks (hw/eie/engine.py's sequencer):

    * "load": input beats, ceil(in / lanes) (`io_lanes` words a beat);
    * "output": output beats, ceil(out / lanes);
    * "preload": PRELOAD0 and PRELOAD1 between inferences (the biases of layers 0 and 1 into
      the two accumulator banks: a row per PE a cycle, and a cycle each to finish);
    * "total" [batch]: the engine's `cycles`, first input word to last output word, with the
      host at full speed: load + compute + output + 1;
    * "period" [batch]: the cycles per input of a stream (inputs back to back, each offered as
      the previous one's last output word is taken): total + preload.

    These are exact in the Verilator bench (tests/test_loadable.py) when the host never stalls."""
    n = rom.pes
    lanes = io_lanes(rom, EieParams() if params is None else params)
    outs = [rl.out_features for rl in rom.layers] + [0]
    load = ceil_div(rom.layers[0].in_features, lanes)
    output = ceil_div(rom.layers[-1].out_features, lanes)
    preload = sum(max(1, ceil_div(outs[b], n)) + 1 for b in range(2))
    total = np.asarray(compute, dtype=np.int64) + load + output + 1
    return {"load": load, "output": output, "preload": preload, "total": total,
            "period": total + preload}




# queue slots a pipelined PE has beyond the engine's queue depth (`hw.eie.pe.EXTRA_SLOTS`)
PIPELINED_EXTRA_SLOTS = 1
# columns a cycle the EIE engine's front ends send; four only pipelined (`hw.frontend`)
ISSUE_WIDTHS = (1, 2, 4)
PIPELINED_WIDTHS = (2, 4)


def full_credit(width: int, queue_depth: int) -> bool:
    """Whether the pipelined engine's credit takes the last cycle as having sent all `width`
    lanes, whatever it sent (from registers alone: `hw.eie.engine`, `_pipelined_broadcast`):
    four lanes into queues of 16 or more, where a PE is rarely within four slots of full
    (LeNet-300-100 at 16 PEs: 0.4 % more cycles at queues of 20, 1.4 % at 16, 13 % at 8)."""
    return width == 4 and queue_depth >= 16


def simulate_wide(cost: np.ndarray, nz: np.ndarray, *, pes: int, depth: int = 8,
                  pipelined: bool = False, width: int = 2) -> np.ndarray:
    """Cycles of one layer for every input of a batch with the two-wide front end
    (`hw.eie.frontend.WideFrontEnd`), in the time base of `images.lanes.simulate_layer`.

    cost: [PEs, cols] entries per PE and column; nz: bool [batch, cols]. Group j (N columns) is
    loaded in cycle L_j = max(the cycle group j-1 sent its last column, L_{j-1} + 1) (one read
    a cycle); its columns go from L_j on, at most two a cycle shared with the group before, each
    once every PE has a free slot (the engine's credit, `room`: queue depth less the columns
    queued and those in the pointer stage). A column sent in cycle t holds a slot of every PE
    from t (for a second column in the same cycle) to t + 1 (its pointer stage) when the PE has
    no entry for it, else until the PE's sequencer starts on it (when it is popped from the
    queue, or its bypass: it reaches the sequencer a cycle after it is sent when the PE has
    nothing queued); PEs skip columns with no entry. Slots are counted, not taken in order: a
    PE's empty columns free theirs while an earlier one still waits. The front end is done in
    cycle L_groups; then as `simulate_layer` (3 cycles of pipeline and idle check, START).

    pipelined (`EieParams.pipelined`): `_simulate_wide_pipelined`: a column reaches the PEs a
    cycle after it is sent (the broadcast register) and the credit is a cycle old; `width` 2 or
    4 columns a cycle (the plain front end: 2).
    """
    if depth < 1:
        raise InputError(f"queue depth must be >= 1, not {depth!r}")
    if pipelined:
        return _simulate_wide_pipelined(cost, nz, pes=pes,
                                        depth=depth + PIPELINED_EXTRA_SLOTS, width=width,
                                        full=full_credit(width, depth))
    if width != 2:
        raise InputError(f"the plain wide front end sends 2 columns a cycle, not {width!r}")
    batch, cols = nz.shape
    lanes = cost.shape[0]
    never = np.iinfo(np.int64).min // 4
    t = np.full(batch, never, dtype=np.int64)  # the last cycle a column was sent in
    slot = np.zeros(batch, dtype=np.int64)  # columns sent in cycle t
    load = np.full(batch, -1, dtype=np.int64)  # L_j of the current group
    done = np.zeros((batch, lanes), dtype=np.int64)  # each PE's next free cycle
    # the last cycle each PE's last `depth` columns with entries hold their slot (in order: the
    # sequencer takes them in order; older ones have left)
    held = np.full((batch, lanes, depth), never, dtype=np.int64)
    # the last 4 columns (two cycles of two): sent when, and empty for which PE
    recent_t = np.full((batch, 4), never, dtype=np.int64)
    recent_empty = np.zeros((batch, lanes, 4), dtype=bool)
    for g0 in range(0, cols, pes):
        last = np.full(batch, never, dtype=np.int64)  # this group's last column sent
        for c in range(g0, min(cols, g0 + pes)):
            m = nz[:, c]
            if not m.any():
                continue
            u = cost[:, c]
            used = u > 0
            tn = np.maximum(load, np.where(slot >= 2, t + 1, t))
            while True:  # the first cycle every PE has a free slot
                busy = ((held >= tn[:, None, None]).sum(axis=2)
                        + (recent_empty & (recent_t[:, None, :] + 1 >= tn[:, None, None]))
                        .sum(axis=2))
                wait = m & (busy >= depth).any(axis=1)
                if not wait.any():
                    break
                tn = np.where(wait, tn + 1, tn)
            slot = np.where(m, np.where(tn == t, slot + 1, 1), slot)
            # into an empty queue a column goes straight on to the sequencer (its bypass)
            start = np.maximum(done, tn[:, None] + 1)
            upd = m[:, None] & used[None, :]
            done = np.where(upd, start + u[None, :], done)
            until = np.maximum(start, tn[:, None] + 1)
            held = np.where(upd[:, :, None],
                            np.concatenate([held[:, :, 1:], until[:, :, None]], axis=2), held)
            recent_t = np.where(m[:, None], np.concatenate([recent_t[:, 1:], tn[:, None]], 1),
                                recent_t)
            empty = np.broadcast_to(~used[None, :, None], (batch, lanes, 1))
            recent_empty = np.where(m[:, None, None],
                                    np.concatenate([recent_empty[:, :, 1:], empty], axis=2),
                                    recent_empty)
            t = np.where(m, tn, t)
            last = np.where(m, tn, last)
        load = np.maximum(last, load + 1)
    end = np.maximum(done.max(axis=1), load + 2) + 3
    return end + 3 + 1


def _simulate_wide_pipelined(cost: np.ndarray, nz: np.ndarray, *, pes: int,
                             depth: int, width: int = 2, full: bool = False) -> np.ndarray:
    """`simulate_wide` for the pipelined front end (depth: its queue slots, the extra one
    included). A PE counts a column's slot from the broadcast register on (a cycle after it is
    sent) to its last cycle in the PE: an empty one two cycles on (the broadcast register, the
    pointer read), one with entries the cycle its sequencer takes it. The front end sees a
    PE's free slots a cycle late (`room_ge`), so a column may go in cycle X when every PE has
    fewer than `depth` columns counted in cycle X - 1 or sent since. Slots are counted, not
    taken in order, as in the RTL (`hw.eie.pe.PE`). `width`: columns a cycle (2 or 4), the
    same rules with that many lanes; `full` (`full_credit`): the cycle X - 1 counts as though
    it sent `width` columns, whatever it sent (the engine's credit from registers alone)."""
    lag = 1  # cycles from the front end to the PEs beyond the plain engine
    # cycles a column spends in the PE's second pointer register (`hw.eie.pointer.PointerRead`
    # `registered`) on its way to the queue; an empty column is dropped before it
    plag = 1
    batch, cols = nz.shape
    lanes = cost.shape[0]
    never = np.iinfo(np.int64).min // 4
    t = np.full(batch, never, dtype=np.int64)  # the last cycle a column was sent in
    slot = np.zeros(batch, dtype=np.int64)  # columns sent in cycle t
    # L_j of the current group; the pipelined front end reads its groups a cycle ahead into
    # registers (`hw.frontend.WideFrontEnd`, staged), so the first comes a cycle later
    load = np.full(batch, lag - 1, dtype=np.int64)
    # each PE's next free cycle (none yet: a layer with no column is the front end's alone)
    done = np.full((batch, lanes), never, dtype=np.int64)
    # the last cycle each PE counts its last `depth` columns with entries (the sequencer takes
    # them in order: older ones have left)
    held = np.full((batch, lanes, depth), never, dtype=np.int64)
    # the last columns sent (four cycles of `width`): when, and empty for which PE
    recent = 4 * width
    recent_t = np.full((batch, recent), never, dtype=np.int64)
    recent_empty = np.zeros((batch, lanes, recent), dtype=bool)
    for g0 in range(0, cols, pes):
        last = np.full(batch, never, dtype=np.int64)  # this group's last column sent
        for c in range(g0, min(cols, g0 + pes)):
            m = nz[:, c]
            if not m.any():
                continue
            u = cost[:, c]
            used = u > 0
            tn = np.maximum(load, np.where(slot >= width, t + 1, t))
            while True:  # the first cycle every PE has a free slot (also one the column has
                # no entry for: it holds a slot while in the pointer stage)
                seen = (tn - 1)[:, None, None]
                busy = ((held >= seen).sum(axis=2)
                        + (recent_empty & (recent_t[:, None, :] + 1 + lag >= seen)).sum(axis=2))
                if full:  # the last cycle counted as `width` columns
                    busy = busy + (width - (recent_t == seen[:, :, 0]).sum(axis=1))[:, None]
                wait = m & (busy >= depth).any(axis=1)
                if not wait.any():
                    break
                tn = np.where(wait, tn + 1, tn)
            slot = np.where(m, np.where(tn == t, slot + 1, 1), slot)
            # into an empty queue a column goes straight on to the sequencer (its bypass)
            start = np.maximum(done, tn[:, None] + 1 + lag + plag)
            upd = m[:, None] & used[None, :]
            done = np.where(upd, start + u[None, :], done)
            held = np.where(upd[:, :, None],
                            np.concatenate([held[:, :, 1:], start[:, :, None]], axis=2), held)
            recent_t = np.where(m[:, None], np.concatenate([recent_t[:, 1:], tn[:, None]], 1),
                                recent_t)
            empty = np.broadcast_to(~used[None, :, None], (batch, lanes, 1))
            recent_empty = np.where(m[:, None, None],
                                    np.concatenate([recent_empty[:, :, 1:], empty], axis=2),
                                    recent_empty)
            t = np.where(m, tn, t)
            last = np.where(m, tn, last)
        load = np.maximum(last, load + 1)
    # the staged front end is done with its last group sooner than the plain one (read ahead)
    # and a column with no entries anywhere still passes the broadcast register and the pointer
    # read before the PEs are idle
    end = np.maximum(np.maximum(done.max(axis=1), load - 2), t) + 3
    return end + 3 + 1


# ---------------------------------------------------------------------------------------------
# The engine: its parameters and its memory map (hw.eie is built from these)


@dataclass(frozen=True)
class EieSizes:
    """The memories of a loadable EIE engine, per PE: what networks it can take.

    entries: entry words (fillers included, all layers); pointers: column pointers (in_i + 1
    per layer); biases: bias words (the PE's rows of every layer); rows: accumulator rows (the
    most rows of one layer in a PE); act_words: activation words per bank (the widest layer
    input or output over N PEs). `image_sizes` gives what an image needs, `bucketed` rounds
    them up so that similar networks share one engine.
    """

    entries: int
    pointers: int
    biases: int
    rows: int
    act_words: int

    def as_dict(self) -> dict:
        return asdict(self)

    def covers(self, other: "EieSizes") -> bool:
        return all(getattr(self, f) >= getattr(other, f) for f in self.as_dict())


@dataclass(frozen=True)
class EieParams(EngineParams):
    """The EIE engine's parameters (`hw.eie.Engine` takes them as keywords).

    loadable: every per-network constant (layer sizes, shifts, ReLUs, bases) in small table
    memories beside the weights, so the engine's logic depends on its shape alone (PEs, layer
    count, index and relative-index bits, memory sizes) and one simulator serves every network
    of that shape; sizes: the memory sizes of a loadable engine (None: the image's own,
    `bucketed`). io_lanes: int16 words a beat on i_act and o_act, a divisor of the PEs (None:
    one per PE).
    """

    queue_depth: int = 8  # columns queued per PE (1..64)
    sparse: bool = True  # False: the dense baseline (every weight an entry, every column sent)
    # columns the front end sends a cycle (1, 2; 4 pipelined only); None: the default
    issue_width: int | None = None
    loadable: bool = False  # per-network constants in memories: logic by shape alone
    sizes: EieSizes | None = None  # a loadable engine's memory sizes (None: the image's)
    io_lanes: int | None = 1  # words a beat on i_act/o_act (None: one per PE)
    # the two-wide front end pipelined for a fast clock (`hw.eie.Engine`): its lanes, the PEs'
    # credit and the forwarded drain words registered; a few cycles a layer more
    pipelined: bool = False

    def fitted(self, pes: int):
        """At issue width 1 (the default for fewer than 4 PEs) there is no pipelined front end:
        the default's `pipelined` is dropped there, and its four lanes (the ECP5 default's) with
        it."""
        if self.pipelined and self.issue_width in (None, 4) and default_issue_width(pes) == 1:
            return replace(self, pipelined=False, issue_width=None)
        return self


@dataclass
class PEImage:
    """What one PE is built from (sparse or dense image of the same network)."""

    pe: int
    index_bits: int
    rel_bits: int
    entries: np.ndarray  # uint32 words v | z << index_bits, all layers
    ptr: np.ndarray  # absolute pointers, all layers (in_i + 1 each)
    bias: np.ndarray  # int32, all layers
    codebook: np.ndarray  # int16[L * 2**index_bits]
    ptr_base: list[int]  # per layer
    rows: list[int]  # per layer
    bias_base: list[int]  # per layer
    shift: list[int]  # per layer
    relu: list[bool]  # per layer
    # per layer: the geometry (`images.conv.ConvGeom.as_tuple()`, empty for fc)
    geoms: list[tuple] = field(default_factory=list)
    # per layer: accumulator rows used (`images.conv.acc_rows`) and rows drained (own rows for
    # fc; every PE's ceil(out_ch / N) for conv, absent channels written as zeros)
    acc_rows: list[int] = field(default_factory=list)
    out_rows: list[int] = field(default_factory=list)

    @property
    def ptr_bits(self) -> int:
        return bits(max(len(self.entries), 1))


def pe_images(rom: RomImage, *, sparse: bool = True) -> list[PEImage]:
    """Per-PE images: the ROM's own (sparse), or every weight as an entry (dense baseline)."""
    n = rom.pes
    L = rom.num_layers
    shifts = [rl.shift for rl in rom.layers]
    relus = [rl.relu for rl in rom.layers]
    geoms = rom_geoms(rom)

    def conv_rows(k):
        return dict(geoms=[rl.geom for rl in rom.layers],
                    acc_rows=[conv.acc_rows(g, rl.rows[k], n) for g, rl in zip(geoms, rom.layers)],
                    out_rows=[rl.rows[k] if g is None else conv.channel_groups(g.out_ch, n)
                              for g, rl in zip(geoms, rom.layers)])

    if sparse:
        return [
            PEImage(pe=k, index_bits=rom.index_bits, rel_bits=rom.rel_bits,
                    entries=rom.entries[k], ptr=rom.ptr[k], bias=rom.bias[k],
                    codebook=rom.codebook,
                    ptr_base=[rl.ptr_base[k] for rl in rom.layers],
                    rows=[rl.rows[k] for rl in rom.layers],
                    bias_base=[rl.bias_base[k] for rl in rom.layers],
                    shift=shifts, relu=relus, **conv_rows(k))
            for k in range(n)
        ]
    qnet = physical_qnet(rom)  # rows as placed (a balanced ROM permutes them)
    imgs = []
    for k in range(n):
        ents, ptrs, ptr_base = [], [], []
        base = pbase = 0
        for layer in qnet.layers:
            sub = layer_kind(layer).matrix(layer)[k::n, :]  # [rows, in]
            rows, cols = sub.shape
            ents.append(sub.T.reshape(-1).astype(np.uint32))  # column-major, z = 0
            ptrs.append(base + rows * np.arange(cols + 1, dtype=np.int64))
            ptr_base.append(pbase)
            base += rows * cols
            pbase += cols + 1
        imgs.append(PEImage(
            pe=k, index_bits=rom.index_bits, rel_bits=rom.rel_bits,
            entries=np.concatenate(ents), ptr=np.concatenate(ptrs), bias=rom.bias[k],
            codebook=rom.codebook, ptr_base=ptr_base,
            rows=[rl.rows[k] for rl in rom.layers],
            bias_base=[rl.bias_base[k] for rl in rom.layers],
            shift=shifts, relu=relus, **conv_rows(k)))
    assert all(len(i.ptr_base) == L for i in imgs)
    return imgs


def issue_width(rom: RomImage, params: EieParams) -> int:
    """The front end's columns per cycle: the parameter, else the default for the PEs."""
    return default_issue_width(rom.pes) if params.issue_width is None else params.issue_width


def io_lanes(rom: RomImage, params: EieParams) -> int:
    """int16 words a beat on i_act and o_act: the parameter, else one per PE."""
    return rom.pes if params.io_lanes is None else params.io_lanes


def image_sizes(rom: RomImage, *, sparse: bool = True) -> EieSizes:
    """The memory sizes the image needs (the dense baseline's from its dense PE images)."""
    imgs = pe_images(rom, sparse=sparse)
    return EieSizes(entries=max(1, max(len(i.entries) for i in imgs)),
                    pointers=max(1, max(len(i.ptr) for i in imgs)),
                    biases=max(1, max(len(i.bias) for i in imgs)),
                    rows=max(1, max(max(i.rows) for i in imgs)),
                    act_words=act_words(rom))


def bucket(n: int) -> int:
    """n rounded up to m * 2**k with m in 8..15 (at most 1/8 more; small n exact)."""
    n = max(1, int(n))
    if n <= 16:
        return n
    step = 1 << (n.bit_length() - 4)
    return -(-n // step) * step


def bucketed(sizes: EieSizes) -> EieSizes:
    """`sizes` with every field rounded up by `bucket`: networks whose needs differ by a few
    per cent get the same sizes, so one compiled simulator serves them all."""
    return EieSizes(**{k: bucket(v) for k, v in sizes.as_dict().items()})


def sizes_of(rom: RomImage, params: EieParams) -> EieSizes | None:
    """The memory sizes of the engine `params` make for `rom`: None unless loadable; the
    parameter's, else the image's own, bucketed."""
    if not params.loadable:
        return None
    if has_conv(rom):
        raise ValueError("the loadable EIE engine runs fully connected networks only: this one "
                         "has conv layers")
    return params.sizes or bucketed(image_sizes(rom, sparse=params.sparse))


def padded_images(rom: RomImage, sizes: EieSizes, *, sparse: bool = True) -> list[PEImage]:
    """The PE images with their entries, pointers and biases padded with zeros to `sizes`
    (never read: past the last pointer, past the last layer, past a PE's rows) and every PE's
    row count raised to sizes.rows for the memory map; ValueError naming what does not fit."""
    need = image_sizes(rom, sparse=sparse)
    if not sizes.covers(need):
        bad = [f"{k} {v:,} > {getattr(sizes, k):,}" for k, v in need.as_dict().items()
               if v > getattr(sizes, k)]
        raise ValueError(f"the network needs more than the engine's memories: {', '.join(bad)}")

    def pad(a, n, dtype):
        return np.concatenate([np.asarray(a, dtype), np.zeros(n - len(a), dtype)])

    return [replace(img, entries=pad(img.entries, sizes.entries, np.uint32),
                    ptr=pad(img.ptr, sizes.pointers, np.int64),
                    bias=pad(img.bias, sizes.biases, np.int32))
            for img in pe_images(rom, sparse=sparse)]


# The per-layer constants of a loadable engine, one table word per layer (field, bits): a PE's
# rows, first pointer and first bias of the layer, its shift and ReLU (`pe_table_fields`), and
# the engine's in_features, groups (ceil(in / N)), drain rows (max(ceil(out_i / N),
# ceil(out_{i+2} / N)): the drain of layer i also preloads layer i + 2), preload rows
# (max(1, ceil(out_i / N))) and out_features (`engine_table_fields`). Index i >= L reads a
# layer with no rows (0).
SHIFT_BITS = 6  # shifts 0..62


def pe_table_fields(sizes: EieSizes) -> list[tuple[str, int]]:
    return [("rows", bits(sizes.rows)), ("ptr_base", bits(sizes.pointers)),
            ("bias_base", bits(sizes.biases)), ("shift", SHIFT_BITS), ("relu", 1)]


def engine_table_fields(sizes: EieSizes, pes: int) -> list[tuple[str, int]]:
    w = bits(pes * sizes.act_words)
    g = bits(sizes.act_words)
    return [("in", w), ("groups", g), ("drain", g), ("pre", g), ("out", w)]


def _pack(fields: list[tuple[str, int]], rows: list[dict]) -> tuple[int, ...]:
    """Table words: the fields of each row, the first in the low bits."""
    out = []
    for r in rows:
        word, at = 0, 0
        for name, width in fields:
            v = int(r.get(name, 0))
            if not 0 <= v < (1 << width):
                raise ValueError(f"table field {name} = {v} does not fit {width} bits")
            word |= v << at
            at += width
        out.append(word)
    return tuple(out)


def pe_table(img: PEImage, sizes: EieSizes) -> MemorySpec:
    """The PE's table of per-layer constants (L + 2 words: the drain preloads layer i + 2)."""
    fields = pe_table_fields(sizes)
    L = len(img.rows)
    rows = [{"rows": img.rows[i], "ptr_base": img.ptr_base[i], "bias_base": img.bias_base[i],
             "shift": img.shift[i], "relu": int(img.relu[i])} for i in range(L)] + [{}, {}]
    return MemorySpec(f"pe{img.pe}.layers", "table", sum(w for _, w in fields), L + 2,
                      _pack(fields, rows), read_ports=4)


def engine_table(rom: RomImage, sizes: EieSizes) -> MemorySpec:
    """The engine's table of per-layer constants (max(L, 2) words: PRELOAD reads layer 1)."""
    n, L = rom.pes, rom.num_layers
    outs = [rl.out_features for rl in rom.layers] + [0, 0]
    rows = [{"in": rl.in_features, "groups": ceil_div(rl.in_features, n),
             "drain": max(ceil_div(outs[i], n), ceil_div(outs[i + 2], n)),
             "pre": max(1, ceil_div(outs[i], n)), "out": rl.out_features}
            for i, rl in enumerate(rom.layers)]
    if L < 2:
        rows.append({"pre": 1})
    fields = engine_table_fields(sizes, n)
    return MemorySpec("layers", "table", sum(w for _, w in fields), max(L, 2),
                      _pack(fields, rows), read_ports=5)


def pe_memory_map(img: PEImage, *, acc_bits: int = 32, issue_width: int = 1,
                  sizes: EieSizes | None = None) -> list[MemorySpec]:
    """The memories of one PE (`hw.eie.pe.PE`): entries, even/odd pointer banks (a read port
    per column looked up a cycle), biases, its codebook copy and two accumulator banks (layer i
    accumulates into bank i % 2 while the previous layer is drained from the other); with
    `sizes` (a loadable engine: `img` padded to them) its table of per-layer constants too."""
    L = len(img.rows)
    k = 1 << img.index_bits
    pe = img.pe
    words = [int(x) for x in img.ptr]
    # a loadable engine's (fc only) at its sizes; a conv layer's sub-position blocks
    rows = sizes.rows if sizes is not None else max(img.acc_rows or img.rows)
    specs = [
        MemorySpec(f"pe{pe}.entries", "rom", img.index_bits + img.rel_bits,
                   max(1, len(img.entries)), tuple(int(x) for x in img.entries)),
        MemorySpec(f"pe{pe}.ptr_even", "rom", img.ptr_bits, max(1, (len(words) + 1) // 2),
                   tuple(words[0::2] or [0]), read_ports=issue_width),
        MemorySpec(f"pe{pe}.ptr_odd", "rom", img.ptr_bits, max(1, len(words) // 2),
                   tuple(words[1::2] or [0]), read_ports=issue_width),
        MemorySpec(f"pe{pe}.bias", "rom", 32, max(1, len(img.bias)),
                   tuple(int(x) & 0xFFFFFFFF for x in img.bias)),
        MemorySpec(f"pe{pe}.codebook", "rom", 16, max(1, L * k),
                   tuple(int(x) & 0xFFFF for x in img.codebook)),
        *(MemorySpec(f"pe{pe}.acc{b}", "ram", acc_bits, max(1, rows), (),
                     read_ports=1, write_ports=1) for b in range(2)),
    ]
    if sizes is not None:
        specs.append(pe_table(img, sizes))
    return specs


def act_words(rom: RomImage) -> int:
    """Words per PE of one activation bank: the largest map (the input, every layer's output)
    over N PEs, a conv layer's output in the CHAN layout (`images.conv.act_words`)."""
    return conv.act_words(rom)


def engine_pe_images(rom: RomImage, params: EieParams) -> list[PEImage]:
    """The PE images the engine of `params` is built from: the image's (sparse or dense),
    padded to the engine's sizes when it is loadable."""
    sizes = sizes_of(rom, params)
    if sizes is None:
        return pe_images(rom, sparse=params.sparse)
    return padded_images(rom, sizes, sparse=params.sparse)


def memory_map(rom: RomImage, params: EieParams = EieParams()) -> list[MemorySpec]:
    """Every memory of `hw.eie.Engine` for `rom`, in the order it makes them: each PE's
    (`pe_memory_map`; the dense baseline's from its dense PE images), then each PE's
    activation buffer, two banks of `act_words` (a layer's input and output); a loadable
    engine's at its sizes (`sizes_of`), with the tables of per-layer constants (each PE's, then
    the engine's)."""
    width = issue_width(rom, params)
    sizes = sizes_of(rom, params)
    specs = [s for img in engine_pe_images(rom, params)
             for s in pe_memory_map(img, acc_bits=params.acc_bits, issue_width=width,
                                    sizes=sizes)]
    aw = act_words(rom) if sizes is None else sizes.act_words
    specs += [MemorySpec(f"pe{k}.act", "ram", 16, 2 * aw, (), read_ports=1, write_ports=1)
              for k in range(rom.pes)]
    if sizes is not None:
        specs.append(engine_table(rom, sizes))
    return specs


def memory_bound(nonzeros: list[np.ndarray], shape: list[int], pes: int, *,
                 acc_bits: int = 32, index_bits: int = DEFAULT_INDEX_BITS,
                 rel_bits: int = DEFAULT_REL_BITS) -> list[MemorySpec]:
    """The memories of the engine for a network of layer sizes `shape` (in_0, out_0, ...)
    whose layer i has nonzeros[i][c] non-zero weights in column c, every depth the row
    placement decides at its least: every PE's entries at an even share of the non-zeros (the
    balanced placement's aim; fillers only add), the rest exact; `index_bits + rel_bits` bits
    an entry."""
    L = len(nonzeros)
    e = index_bits + rel_bits
    outs = shape[1:]
    total = sum(int(np.sum(c)) for c in nonzeros)
    ports = default_issue_width(pes)
    specs = []
    for k in range(pes):
        ent = max(1, total // pes + (k < total % pes))
        words = sum(i + 1 for i in shape[:-1])
        rows = [len(range(k, o, pes)) for o in outs]
        specs += [
            MemorySpec(f"pe{k}.entries", "rom", e, ent),
            MemorySpec(f"pe{k}.ptr_even", "rom", bits(ent), max(1, (words + 1) // 2),
                       read_ports=ports),
            MemorySpec(f"pe{k}.ptr_odd", "rom", bits(ent), max(1, words // 2),
                       read_ports=ports),
            MemorySpec(f"pe{k}.bias", "rom", 32, max(1, sum(rows))),
            MemorySpec(f"pe{k}.codebook", "rom", 16, max(1, L << index_bits)),
            *(MemorySpec(f"pe{k}.acc{b}", "ram", acc_bits, max(1, max(rows)), read_ports=1,
                         write_ports=1) for b in range(2)),
        ]
    words = max(ceil_div(w, pes) for w in shape)
    return specs + [MemorySpec(f"pe{k}.act", "ram", 16, 2 * words, read_ports=1, write_ports=1)
                    for k in range(pes)]


def cycle_model(rom: RomImage, x: np.ndarray, params: EieParams = EieParams()) -> np.ndarray:
    """`model_cycles` with the engine's parameters: compute cycles [batch, layers]."""
    return model_cycles(rom, x, queue_depth=params.queue_depth, acc_bits=params.acc_bits,
                        issue_width=params.issue_width, pipelined=params.pipelined)


def logic_of(rom: RomImage) -> dict:
    """Everything of `rom` that is logic in the engine's Verilog rather than memory contents:
    two images with equal `logic_of` (and memories of equal depths) make the same Verilog but
    for what their memories hold."""
    return {"layers": [[rl.in_features, rl.out_features, rl.shift, bool(rl.relu), rl.rows,
                        rl.ptr_base, rl.bias_base, rl.kind, list(rl.geom)]
                       for rl in rom.layers],
            "input_shape": list(rom.input_shape or ()),
            "mems": [[len(e), len(p), len(b)] for e, p, b in zip(rom.entries, rom.ptr, rom.bias)],
            "codebook": len(rom.codebook)}


def padded(rom: RomImage) -> RomImage:
    """`rom` with every PE's entries padded to the bound of its shape, sum_i in_i * rows_i
    (a column never holds more entries than rows, fillers included): words past the last
    pointer, which are never read, so networks of one shape have memories of one depth."""
    ents = []
    for k, e in enumerate(rom.entries):
        bound = sum(rl.in_features * rl.rows[k] for rl in rom.layers)
        assert len(e) <= bound or bound == 0, (len(e), bound)
        ents.append(np.concatenate([e, np.zeros(bound - len(e), e.dtype)]))
    return replace(rom, entries=ents)


# ---------------------------------------------------------------------------------------------
# Files


def _to_words(a: np.ndarray, width: int) -> np.ndarray:
    """Two's complement words of `width` bits as unsigned int64."""
    return np.asarray(a).astype(np.int64) & ((1 << width) - 1)


def _hex_text(words: np.ndarray, width: int) -> bytes:
    digits = (width + 3) // 4
    return "".join(f"{int(w):0{digits}x}\n" for w in words).encode()


def _bin_bytes(words: np.ndarray, width: int) -> bytes:
    nbytes = (width + 7) // 8
    dt = {1: "<u1", 2: "<u2", 3: "<u4", 4: "<u4"}.get(nbytes, "<u8")
    if nbytes == 3:  # pack 24-bit words tightly
        return np.asarray(words, dtype="<u4").view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    return np.asarray(words, dtype=dt).tobytes()


def _from_bin(data: bytes, width: int, depth: int, signed: bool) -> np.ndarray:
    nbytes = (width + 7) // 8
    if len(data) != nbytes * depth:
        raise InputError(f"binary image holds {len(data)} bytes, expected {nbytes * depth}")
    if nbytes == 3:
        b = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3)
        w = b[:, 0].astype(np.int64) | (b[:, 1].astype(np.int64) << 8) | (b[:, 2].astype(np.int64) << 16)
    else:
        dt = {1: "<u1", 2: "<u2", 4: "<u4"}.get(nbytes, "<u8")
        w = np.frombuffer(data, dtype=dt).astype(np.int64)
    if signed:
        w = np.where(w >= (1 << (width - 1)), w - (1 << width), w)
    return w


def _arrays(rom: RomImage) -> dict[str, tuple[np.ndarray, int, bool]]:
    """name -> (values, width, signed) of every memory image."""
    arrays = {"codebook": (rom.codebook, 16, True)}
    for pe in range(rom.pes):
        arrays[f"pe{pe}.entries"] = (rom.entries[pe], rom.entry_bits, False)
        arrays[f"pe{pe}.ptr"] = (rom.ptr[pe], rom.ptr_bits, False)
        arrays[f"pe{pe}.bias"] = (rom.bias[pe], 32, True)
    return arrays


def write_rom(rom: RomImage, out_dir: str | Path, *, force: bool = False, keep=(),
              what: str | None = None) -> dict:
    """Write every image as .hex and .bin plus manifest.json, atomically; return the manifest.

    An existing non-empty `out_dir` is refused unless `force`; then only these files are
    replaced (see `compress.atomic.atomic_dir`; `keep`: inputs that must survive)."""
    files = {}
    memories = {}
    perm = np.concatenate([np.asarray(p, dtype=np.int64) for p in rom.perm])
    # The permutation is not an engine memory (the hardware never reads it): it has its own
    # manifest entry, and its files are checksummed like the others.
    images = {**_arrays(rom), "perm": (perm, rom.perm_bits, False)}
    with atomic_dir(out_dir, force=force, keep=keep, what=what) as tmp:
        for name, (values, width, signed) in images.items():
            words = _to_words(values, width)
            for ext, data in (("hex", _hex_text(words, width)), ("bin", _bin_bytes(words, width))):
                (tmp / f"{name}.{ext}").write_bytes(data)
                files[f"{name}.{ext}"] = {
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "bytes": len(data),
                }
            if name != "perm":
                memories[name] = {"width": width, "depth": int(len(values)), "signed": signed}
        manifest = {
            "format": ROM_FORMAT,
            "version": ROM_VERSION,
            "pes": rom.pes,
            "index_bits": rom.index_bits,
            "rel_bits": rom.rel_bits,
            "entry_bits": rom.entry_bits,
            "ptr_bits": rom.ptr_bits,
            "input_frac": rom.input_frac,
            "num_layers": rom.num_layers,
            "entry_layout": "v | (z << index_bits)",
            # the ROM files carry fully connected layers only (export-rom refuses conv ones):
            # no geometry field
            "layers": [{k: v for k, v in asdict(rl).items() if k != "geom"}
                       for rl in rom.layers],
            "totals": {
                "entries": [int(len(e)) for e in rom.entries],
                "nonzeros": [sum(rl.nonzeros[pe] for rl in rom.layers) for pe in range(rom.pes)],
                "fillers": [sum(rl.fillers[pe] for rl in rom.layers) for pe in range(rom.pes)],
            },
            "memories": memories,
            "perm": {"width": rom.perm_bits, "depth": int(len(perm)), "balanced": rom.balanced},
            "files": dict(sorted(files.items())),
        }
        text = json.dumps(manifest, indent=1) + "\n"
        # read_rom refuses a manifest over max_config_bytes: never write one it would refuse
        limits.check("max_config_bytes", len(text.encode()),
                     f"{out_dir}: the manifest for {rom.pes} PEs would be too large, bytes")
        (tmp / "manifest.json").write_text(text)
    return manifest


def read_rom(rom_dir: str | Path) -> RomImage:
    """Read and verify ROM images (manifest version, every file's size and sha256)."""
    rom_dir = Path(rom_dir)
    mpath = rom_dir / "manifest.json"
    text = read_text(mpath, limit="max_config_bytes", expected="a ROM manifest")
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{mpath}: not valid JSON ({e})") from None
    except RecursionError:
        raise InputError(f"{mpath}: not valid JSON (nested too deeply)") from None
    if not isinstance(manifest, dict):
        raise InputError(f"{mpath}: malformed manifest (not a JSON object)")
    if manifest.get("format") != ROM_FORMAT or manifest.get("version") != ROM_VERSION:
        raise InputError(
            f"{mpath}: not an {ROM_FORMAT} v{ROM_VERSION} manifest "
            f"(format {manifest.get('format')!r}, version {manifest.get('version')!r})"
        )
    try:
        return _read_rom_checked(rom_dir, mpath, manifest)
    except (KeyError, TypeError, AttributeError, IndexError) as e:
        raise InputError(f"{mpath}: malformed manifest ({type(e).__name__}: {e})") from None
    except ValueError as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"{mpath}: malformed manifest ({e})") from None


def _int_field(d: dict, key: str, where: str, lo: int, hi: int) -> int:
    v = d.get(key) if isinstance(d, dict) else None
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise InputError(f"{where}: {key} must be an integer in {lo}..{hi}, not {v!r}")
    return v


def _check_rom_sizes(rom_dir: Path, mpath: Path, manifest: dict) -> None:
    """Every size the manifest declares, checked against the limits and the files on disk
    before any image is read or decoded."""
    pes = _int_field(manifest, "pes", str(mpath), 1, 1 << 62)
    limits.check("max_pes", pes, f"{mpath}: pes")
    for key in ("files", "memories"):
        if not isinstance(manifest.get(key), dict):
            raise InputError(f"{mpath}: malformed manifest ({key} is not an object)")
    if not isinstance(manifest.get("layers"), list):
        raise InputError(f"{mpath}: malformed manifest (layers is not a list)")
    limits.check("max_layers", len(manifest["layers"]), f"{mpath}: layers")
    files = manifest["files"]
    if len(files) > 6 * pes + 16:  # hex and bin of 3 memories per PE, codebook, perm
        raise InputError(f"{mpath}: lists {len(files)} files, more than {pes} PEs have")
    for fname, info in files.items():
        if Path(fname).name != fname or fname.startswith("."):
            raise InputError(f"{mpath}: file name {fname!r} is not a plain name in {rom_dir}")
        declared = _int_field(info, "bytes", f"{mpath}: {fname}", 0, 1 << 62)
        limits.check("max_array_bytes", declared, f"{mpath}: {fname}: declared bytes")
        try:
            actual = (rom_dir / fname).stat().st_size
        except FileNotFoundError:
            continue  # reported as a missing image below
        if actual != declared:
            raise InputError(f"{rom_dir / fname}: holds {actual:,} bytes, the manifest "
                             f"declares {declared:,}")
    pm = manifest.get("perm")
    mems = dict(manifest["memories"])
    if isinstance(pm, dict):
        mems["perm"] = pm
    for name, mem in mems.items():
        where = f"{mpath}: memory {name}"
        width = _int_field(mem, "width", where, 1, 64)
        depth = _int_field(mem, "depth", where, 0, 1 << 62)
        limits.check("max_array_bytes", depth * ((width + 7) // 8), f"{where}: declared bytes")
        limits.check("max_weights", depth, f"{where}: declared depth")


def _read_rom_checked(rom_dir: Path, mpath: Path, manifest: dict) -> RomImage:
    _check_rom_sizes(rom_dir, mpath, manifest)
    data = {}
    for fname, info in manifest["files"].items():
        path = rom_dir / fname
        if not path.exists():
            raise InputError(f"{path}: missing ROM image")
        blob = read_input(path, max_bytes=int(info["bytes"]), limit="max_array_bytes",
                          expected="a ROM image file")
        if hashlib.sha256(blob).hexdigest() != info["sha256"]:
            raise InputError(f"{path}: sha256 mismatch, the ROM image is corrupted")
        data[fname] = blob
    arrays = {}
    for name, mem in manifest["memories"].items():
        try:
            arrays[name] = _from_bin(data[f"{name}.bin"], mem["width"], mem["depth"], mem["signed"])
        except KeyError:
            raise InputError(f"{rom_dir}: manifest lists memory {name} without {name}.bin") from None
    pes = manifest["pes"]
    if any(isinstance(rl, dict) and "geom" in rl for rl in manifest["layers"]):
        raise InputError(f"{mpath}: a layer with a conv geometry (ROM files carry fully "
                         f"connected layers only)")
    layers = [RomLayer(**rl) for rl in manifest["layers"]]
    for i, rl in enumerate(layers):
        if rl.kind not in LAYER_KINDS:
            raise InputError(f"{mpath}: layer l{i} has kind {rl.kind!r}, not one of "
                             f"{', '.join(LAYER_KINDS)}")
    pm = manifest.get("perm")
    if not isinstance(pm, dict) or "perm.bin" not in data:
        raise InputError(f"{mpath}: no row permutation (perm entry and perm.bin)")
    flat = _from_bin(data["perm.bin"], pm["width"], pm["depth"], False)
    perms = [flat[rl.perm_base : rl.perm_base + rl.out_features] for rl in layers]
    try:
        check_perms(perms, [rl.out_features for rl in layers])
    except ValueError as e:
        raise InputError(f"{rom_dir / 'perm.bin'}: {e}") from None
    return RomImage(
        pes=pes,
        index_bits=manifest["index_bits"],
        rel_bits=manifest["rel_bits"],
        input_frac=manifest["input_frac"],
        layers=layers,
        entries=[arrays[f"pe{pe}.entries"].astype(np.uint32) for pe in range(pes)],
        ptr=[arrays[f"pe{pe}.ptr"] for pe in range(pes)],
        bias=[arrays[f"pe{pe}.bias"].astype(np.int32) for pe in range(pes)],
        codebook=arrays["codebook"].astype(np.int16),
        perm=perms,
        balanced=bool(pm.get("balanced", False)),
    )


def export_rom(
    qnet: QNet,
    out_dir: str | Path,
    *,
    pes: int,
    index_bits: int = DEFAULT_INDEX_BITS,
    rel_bits: int | str = REL_BITS_AUTO,
    balance: bool = True,
    force: bool = False,
    keep=(),
    what: str | None = None,
) -> dict:
    """Encode a qnet and write its ROM images to `out_dir`; return the manifest."""
    rom = build_rom(qnet, pes=pes, index_bits=index_bits, rel_bits=rel_bits, balance=balance)
    return write_rom(rom, out_dir, force=force, keep=keep, what=what)
