"""`python -m compress golden`: the golden model (export-rom is images.cli's)."""

from __future__ import annotations

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
