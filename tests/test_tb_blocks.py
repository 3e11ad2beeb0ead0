"""Per-block cocotb benches on the generated Verilog (Icarus): front end, queue, pointer read,
codebook decoder, MAC, one PE and the output stage, each against a Python reference model with
random valid/ready stalls where the block has streams (tb/blocks.py, tb/cocotb_blocks.py).

Every case is one cached build (build/tb-blocks/<key>/) and one simulator run; the bench
returns what it checked and the test insists that the corners were reached.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compress.golden import layer_output, run_layers, wrap
from compress.qnet import Layer
from images.eie import build_rom, pe_images, physical_qnet
from compress.synthetic import random_inputs, random_qnet
from tb.blocks import build_block, pe_params, run_block


def _run(block, params, seed, data=None, **options):
    return run_block(build_block(block, params), seed=seed, data=data, **options)


@pytest.mark.parametrize("depth", [1, 8])
def test_queue_against_fifo_model(depth):
    s = _run("queue", {"depth": depth}, seed=depth, cycles=600)
    assert s["pushes"] > 100 and s["pops"] > 100
    assert s["full"] > 10 and s["empty"] > 10 and s["refused"] > 0
    # a full queue refuses a push even while it pops, so depth 1 never does both in a cycle
    assert (s["push_and_pop"] > 0) == (depth > 1)


@pytest.mark.parametrize("pes,words,sparse", [(3, 9, True), (8, 5, True), (4, 6, False)])
def test_front_end_broadcasts_non_zeros_in_order(pes, words, sparse):
    s = _run("frontend", {"pes": pes, "words": words, "sparse": sparse}, seed=pes, vectors=30)
    assert s["vectors"] == 30
    assert s["gated"] > 5 and s["stalled"] > 5 and s["rate_checked"] > 0
    assert s["zero_groups"] > 0 and s["partial_last_group"] > 0 and s["words"] > 60


def test_pointer_read_against_pointer_arrays():
    s = _run("pointer", {"words": 32, "ptr_bits": 9, "col_bits": 5}, seed=7, arrays=6,
             cycles=150)
    assert s["arrays"] == 6
    assert s["columns"] > 200 and s["dropped"] > 50 and s["refused"] > 10 and s["odd_p"] > 100


@pytest.mark.parametrize("index_bits,layers", [(2, 3), (4, 4)])
def test_codebook_decoder_every_entry(index_bits, layers):
    s = _run("codebook", {"index_bits": index_bits, "layers": layers}, seed=index_bits,
             codebooks=3)
    assert s["codebooks"] == 3
    assert s["lookups"] == 2 * s["entries"]  # every (layer, v) once, as many again at random


@pytest.mark.parametrize("rows,acc_bits,sparse", [(5, 20, True), (1, 24, True), (16, 48, False)])
def test_mac_against_wrapping_model(rows, acc_bits, sparse):
    s = _run("mac", {"rows": rows, "acc_bits": acc_bits, "sparse": sparse}, seed=rows,
             rounds=5, hits=150)
    assert s["rounds"] == 5 and s["hits"] > 500 and s["zero_weight"] > 50
    assert s["back_to_back_same_row"] > 50 and s["same_row_two_apart"] > 50


# id, sizes (2 layers), pes, pe, weight density, rel_bits, queue depth, sparse, stall, acc_bits
PE_CASES = [
    ("1pe-3rows-bypass", (24, 3, 2), 1, 0, 0.8, 4, 2, True, 0.3, 32),
    ("3pe-fillers-rel2-depth1", (30, 60, 9), 3, 2, 0.06, 2, 1, True, 0.5, 32),
    ("2pe-dense-acc24", (16, 10, 6), 2, 1, 0.4, 4, 4, False, 0.0, 24),
]


@pytest.mark.parametrize("case", PE_CASES, ids=[c[0] for c in PE_CASES])
def test_pe_against_golden_rows(case):
    _id, sizes, pes, pe, density, rel_bits, depth, sparse, stall, acc_bits = case
    qnet = random_qnet(sizes, seed=pes, density=density, shift=[7, 5],
                       weight_scale=32767 if acc_bits < 32 else 2000)
    rng = np.random.default_rng(pes)
    x = np.concatenate([np.zeros((1, sizes[0]), np.int16)] + [
        random_inputs(1, sizes[0], seed=int(rng.integers(1 << 30)), density=float(d))
        for d in rng.uniform(0.05, 1.0, 11)])
    rom = build_rom(qnet, pes=pes, rel_bits=rel_bits)
    # rows as the ROM places them: row r in PE r % pes as local row r // pes
    y0, y1 = run_layers(physical_qnet(rom), x, acc_bits=acc_bits)
    img = pe_images(rom, sparse=sparse)[pe]
    params = pe_params(img, col_bits=max(sizes).bit_length(),
                       row_bits=max(1, max(img.rows).bit_length()), queue_depth=depth,
                       acc_bits=acc_bits, sparse=sparse)
    data = {"in0": x, "in1": y0, "want0": y0[:, pe::pes], "want1": y1[:, pe::pes]}
    s = _run("pe", params, seed=pes, data=data, stall=stall)
    assert s["vectors"] == len(x)
    assert s["rows"] == len(x) * (y0[:, pe::pes].shape[1] + y1[:, pe::pes].shape[1])


@pytest.mark.parametrize("acc_bits", [20, 40])
def test_output_stage_against_golden(acc_bits):
    shifts = [0, 1, 2, 7, 12, 15, 16, acc_bits - 1, acc_bits, acc_bits + 1, 62]
    rng = np.random.default_rng(acc_bits)
    half = 1 << (acc_bits - 1)
    acc = np.concatenate([rng.integers(-half, half, 200, dtype=np.int64),
                          [-half, half - 1, 0, -1, 1, 32767, 32768, -32768, -32769]])
    acc = wrap(torch.from_numpy(acc), acc_bits)
    want = np.zeros((len(acc), len(shifts), 2), np.int16)
    for k, s in enumerate(shifts):
        for relu in (0, 1):
            layer = Layer(codebook=np.zeros(1, np.int16), index=np.zeros((1, 1), np.uint8),
                          bias=np.zeros(1, np.int32), shift=s, relu=bool(relu))
            want[:, k, relu] = layer_output(layer, acc).numpy()
    s = _run("output", {"acc_bits": acc_bits, "shifts": shifts}, seed=acc_bits,
             data={"acc": acc.numpy(), "want": want})
    assert s["values"] == len(acc) and s["checks"] == len(acc) * len(shifts) * 2
