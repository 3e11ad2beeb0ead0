"""What runs on the host: the protocol client and its transports (`client`) and the runner
of `python -m fpga run` (`runner`). The protocol itself is `fpga.protocol` (the gateware uses
its constants too)."""
