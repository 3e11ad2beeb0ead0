"""Designs through tools: the bitstream (`build`), the resource estimate (`resources`), the
simulated board (`bench`, its cocotb bench `cocotb_board`) and the gate-level netlist (`gate`,
its cocotb bench `cocotb_gate`)."""
