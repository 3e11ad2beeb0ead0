"""What goes on the chip: the board top and core (`top`), the protocol link (`link`), the UART
(`uart`, with `simuart`, its bit-level driver for the Amaranth simulator), and the reset every
family's clock shares once its PLL runs (`clocking`)."""
