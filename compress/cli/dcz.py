"""`python -m compress pack | unpack | info`: the .dcz model file on the command line."""

from __future__ import annotations

import json

from .registry import command


def _pack_args(p):
    p.add_argument("qnet", help="qnet .npz to compress")
    p.add_argument("--out", required=True, help="where to write the .dcz")
    p.add_argument(
        "--index-bits", type=int, default=8, help="largest codebook index bits (default 8)"
    )
    p.add_argument("--table", action="store_true", help="print the paper's per-layer table")
    p.add_argument("--dcz-version", type=int, choices=(1, 2, 3), default=None,
                   help="file format version (default: 2, or 3 for a qnet with conv layers; "
                        "1: Huffman only, for old readers)")


@command("pack", "compress a qnet into a .dcz model file")(_pack_args)
def _pack(args):
    from ..atomic import refuse_same_path
    from ..dcz import format_table, layer_sizes, write_dcz
    from ..qnet import load_qnet

    refuse_same_path(args.out, args.qnet)
    qnet = load_qnet(args.qnet, index_bits=args.index_bits)
    size = write_dcz(qnet, args.out, what="--out", version=args.dcz_version)
    params = sum(ly.index.size + ly.bias.size for ly in qnet.layers)
    print(f"wrote {args.out}: {size:,} bytes, {4 * params / size:.1f}x smaller than float32")
    if args.table:
        print(format_table(layer_sizes(qnet)))


def _unpack_args(p):
    p.add_argument("dcz", help=".dcz model file")
    p.add_argument("--out", required=True, help="where to write the qnet .npz")


@command("unpack", "decode a .dcz back to the exact qnet it was made from")(_unpack_args)
def _unpack(args):
    from ..atomic import refuse_same_path
    from ..dcz import read_dcz
    from ..qnet import save_qnet

    refuse_same_path(args.out, args.dcz)
    qnet = read_dcz(args.dcz)
    save_qnet(qnet, args.out, what="--out")
    print(f"wrote {args.out}: {qnet.num_layers} layers, sha256 {qnet.checksum()[:16]}")


def _info_args(p):
    p.add_argument("dcz", help=".dcz model file")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")


@command("info", "show the sections, sizes and compression ratio of a .dcz")(_info_args)
def _info(args):
    from ..dcz import read_file, info

    d = info(read_file(args.dcz))
    if args.json:
        print(json.dumps(d, indent=2))
        return
    print(f"{args.dcz}: .dcz version {d['version']} ({d['kind']}), {d['bytes']:,} bytes, "
          f"{d['num_layers']} layers, input_frac {d['input_frac']}"
          + (f", input {'x'.join(map(str, d['input_shape']))}" if "input_shape" in d else ""))
    for s in d["sections"]:
        print(f"  {s['name']:<10} {s['bytes']:>9,} bytes")
    print(f"  framing    {d['overhead_bytes']:>9,} bytes (magic, version, file crc32)")
    for i, ly in enumerate(d["layers"]):
        conv = (f" conv {ly['kernel'][0]}x{ly['kernel'][1]} stride {ly['stride'][0]}x"
                f"{ly['stride'][1]} padding {ly['padding'][0]}x{ly['padding'][1]} pool "
                f"{ly['pool'][0]}x{ly['pool'][1]}," if ly.get("kind") == "conv" else "")
        print(f"  l{i}: {'x'.join(map(str, ly['shape']))},{conv} {ly['nnz']:,} non-zero, "
              f"codebook {ly['codebook']}, {ly['coding']} coded")
        if "parts" in ly:  # bytes of each stream (fractions: arithmetic coding shares bytes)
            print("      " + ", ".join(f"{k} {v:,.1f}" for k, v in ly["parts"].items())
                  + " bytes")
    print(f"  float32 size {d['float32_bytes']:,} bytes -> ratio {d['ratio']:.1f}x")
    if "sha256" in d:
        print(f"  qnet sha256 {d['sha256']}")
