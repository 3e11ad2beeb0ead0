"""`python -m compress export-rom`: the EIE ROM images, a command of this package.

The command line of compress (`compress.cli`) takes the commands of the stages after it from the
`deepcomp_eie.commands` entry points (pyproject.toml), so compress imports nothing of images
while `python -m compress export-rom` stays where users look for it. `add_image_args` declares
the image options (`--index-bits`, `--rel-bits`, `--balance`) of every command line that builds
images: this one and `python -m tb`.
"""

from __future__ import annotations

import argparse

from compress.atomic import check_dir_output, refuse_same_path
from compress.cli.registry import command
from compress.progress import step
from compress.qnet import load_qnet

from .eie import export_rom


def add_image_args(p, *, rel_bits_help: str) -> None:
    """The options every image builder takes: index bits, relative index bits, balance."""
    p.add_argument("--index-bits", type=int, default=4, help="codebook index bits (default 4)")
    p.add_argument("--rel-bits", default="auto", help=rel_bits_help)
    p.add_argument("--balance", action=argparse.BooleanOptionalAction, default=True,
                   help="permute the rows of hidden layers to even out the PEs' work (default "
                        "on); --no-balance: plain interleaving, row r in PE r %% N")


def _export_args(p):
    p.add_argument("--model", required=True, help="qnet .npz")
    p.add_argument("--pes", type=int, required=True, help="number of processing elements (>= 1)")
    p.add_argument("--out", required=True, help="output directory for the ROM images (a new "
                   "or empty directory; see --force)")
    p.add_argument("--force", action="store_true",
                   help="write into an existing non-empty --out: the files this command writes "
                        "are replaced, nothing else is touched")
    add_image_args(p, rel_bits_help="relative row index bits 1..12, auto (default): the width "
                                    "that makes the entry memories smallest, or fast: the width "
                                    "with the fewest cycles by entries")


@command("export-rom", "write the EIE ROM images the engine is built from")(_export_args)
def _export_rom(args):
    refuse_same_path(args.out, args.model)
    check_dir_output(args.out, force=args.force, what="--out")  # before any work
    qnet = load_qnet(args.model, index_bits=args.index_bits).require_fc("the engines' ROMs")
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
