"""Deep Compression tooling: pruning, trained quantization, Huffman coding, the qnet file,
the PyTorch golden model and the EIE ROM images.

For your own network: `compress.compress_model` and `compress.encode_inputs` (see
`compress.api`); they are imported on first use so that `import compress` stays cheap.
"""

__all__ = ["compress_model", "encode_inputs"]


def __getattr__(name):
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'compress' has no attribute {name!r}")
