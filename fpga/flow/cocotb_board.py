"""cocotb bench of the board core, driven only through its UART pins (run by fpga/flow/bench.py).

The bench is a byte bridge: it connects to the TCP port in BOARD_PORT on 127.0.0.1, and every
byte the host writes there is sent on the `rx` pin as an 8N1 frame; every 8N1 frame seen on the
`tx` pin is decoded mid-bit and written back to the socket. So the host side is the same code
whether the board is real (a serial port) or this simulation. BOARD_DIVISOR is clock cycles per
bit; the bench ends when the host closes the connection (or after BOARD_MAX_NS of simulated time).

Nothing inside the design is touched: only clk, rst, rx and tx (the RTL and the gate-level
netlist have the same four pins).

With BOARD_TIMES set, the bench writes there (JSON) the clock cycle at which every byte from
the host started on `rx` and every byte from the board ended on `tx`: the host measures the
end-to-end rate of the simulated board in its own clock cycles from them.
"""

import json
import os
import socket

import cocotb
from cocotb.clock import Clock
from cocotb.simtime import get_sim_time
from cocotb.triggers import ClockCycles, FallingEdge, Timer

PERIOD_NS = 10


def _cycle() -> int:
    return int(get_sim_time("ns")) // PERIOD_NS


async def _tx_monitor(dut, sock, bit_ns, ends):
    while True:
        await FallingEdge(dut.tx)
        await Timer(bit_ns // 2, unit="ns")
        if int(dut.tx.value) != 0:
            continue  # a glitch, not a start bit
        value = 0
        for i in range(8):
            await Timer(bit_ns, unit="ns")
            value |= int(dut.tx.value) << i
        await Timer(bit_ns, unit="ns")
        if int(dut.tx.value) != 1:
            raise AssertionError("the board sent a frame with a low stop bit")
        ends.append(_cycle())
        sock.sendall(bytes([value]))


async def _send_byte(dut, value, bit_ns):
    for b in [0] + [(value >> i) & 1 for i in range(8)] + [1]:
        dut.rx.value = b
        await Timer(bit_ns, unit="ns")


@cocotb.test()
async def uart_bridge(dut):
    divisor = int(os.environ["BOARD_DIVISOR"])
    port = int(os.environ["BOARD_PORT"])
    max_ns = int(os.environ.get("BOARD_MAX_NS", str(10**12)))
    bit_ns = divisor * PERIOD_NS

    sock = socket.create_connection(("127.0.0.1", port))
    sock.setblocking(False)
    Clock(dut.clk, PERIOD_NS, unit="ns").start()
    dut.rx.value = 1
    dut.rst.value = 1
    await ClockCycles(dut.clk, 4)
    dut.rst.value = 0
    await ClockCycles(dut.clk, 4)
    starts, ends = [], []
    mon = cocotb.start_soon(_tx_monitor(dut, sock, bit_ns, ends))
    elapsed = 0
    try:
        while elapsed < max_ns:
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                data = None
            if data == b"":
                break  # the host hung up
            if data:
                for b in data:
                    starts.append(_cycle())
                    await _send_byte(dut, b, bit_ns)
                    elapsed += 10 * bit_ns
            else:
                # Idle: let a few byte times pass (the board may be computing or replying).
                await Timer(20 * bit_ns, unit="ns")
                elapsed += 20 * bit_ns
    finally:
        mon.cancel()
        sock.close()
        if os.environ.get("BOARD_TIMES"):
            with open(os.environ["BOARD_TIMES"], "w") as f:
                json.dump({"rx_start": starts, "tx_end": ends}, f)
