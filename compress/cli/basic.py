"""`python -m compress golden | export-rom`: the golden model and the EIE ROM images."""

from __future__ import annotations

import argparse

from ..atomic import save_npy
from .registry import command

# ---------------------------------------------------------------------------------------------


def _golden_args(p):
    p.add_argument("--model", required=True, help="qnet .npz")
    p.add_argument("--inputs", required=True, help="int16[batch, in_0] .npy")
    p.add_argument("--out", required=True, help="where to write int16[batch, out] .npy")
    p.add_argument("--acc-bits", type=int, default=32, help="accumulator width (default 32)")
    p.add_argument("--index-bits", type=int, default=4, help="codebook index bits (default 4)")


@command("golden", "run the PyTorch golden model on a batch of inputs")(_golden_args)
def _golden(args):
    from ..atomic import refuse_same_path
    from ..golden import golden
    from ..qnet import load_inputs, load_qnet

    refuse_same_path(args.out, args.model, args.inputs)
    qnet = load_qnet(args.model, index_bits=args.index_bits)
    x = load_inputs(args.inputs, qnet.in_features)
    y = golden(qnet, x, acc_bits=args.acc_bits)
    save_npy(args.out, y)
    print(f"wrote {args.out}: int16{list(y.shape)}, {len(x)} inputs through the golden model")


def _export_args(p):
    p.add_argument("--model", required=True, help="qnet .npz")
    p.add_argument("--pes", type=int, required=True, help="number of processing elements (>= 1)")
    p.add_argument("--out", required=True, help="output directory for the ROM images (a new "
                   "or empty directory; see --force)")
    p.add_argument("--force", action="store_true",
                   help="write into an existing non-empty --out: the files this command writes "
                        "are replaced, nothing else is touched")
    p.add_argument("--index-bits", type=int, default=4, help="codebook index bits (default 4)")
    p.add_argument("--rel-bits", default="auto",
                   help="relative row index bits 1..12, or auto (default): the width that makes "
                        "the entry memories smallest")
    p.add_argument("--balance", action=argparse.BooleanOptionalAction, default=True,
                   help="permute the rows of hidden layers to even out the PEs' work (default "
                        "on); --no-balance: plain interleaving, row r in PE r %% N")


@command("export-rom", "write the EIE ROM images the engine is built from")(_export_args)
def _export_rom(args):
    from ..atomic import check_dir_output, refuse_same_path
    from ..qnet import load_qnet
    from images.eie import export_rom

    refuse_same_path(args.out, args.model)
    check_dir_output(args.out, force=args.force, what="--out")  # before any work
    from ..progress import step

    qnet = load_qnet(args.model, index_bits=args.index_bits)
    with step(f"placing the rows over {args.pes} PEs and writing {args.out}"):
        m = export_rom(qnet, args.out, pes=args.pes, index_bits=args.index_bits,
                       rel_bits=args.rel_bits, balance=args.balance, force=args.force,
                       keep=[args.model], what="--out")
    t = m["totals"]
    print(
        f"wrote {args.out}: {m['num_layers']} layers, {args.pes} PEs, "
        f"{sum(t['entries'])} entries ({sum(t['fillers'])} fillers), rel_bits {m['rel_bits']}, "
        f"busiest PE {max(t['entries'])} entries, "
        f"rows {'balanced' if args.balance else 'interleaved'}, {len(m['files'])} files"
    )
