"""Deep Compression tooling: pruning, trained quantization, Huffman coding, the qnet file,
the PyTorch golden model and the EIE ROM images."""
