"""The board side of the framed UART protocol (fpga/protocol.py, docs/fpga.md).

`Link` sits between the UART byte streams and the engine's activation streams. It has two
FSMs that run at the same time, so the host can stream requests without waiting for replies:

* the frame receiver (`_receiver`, `_rx_*`) reads requests, feeds INFER and PACKED inputs into
  the engine word by word as they arrive (PACKED frames are expanded into the dense stream,
  zeros included), writes LOAD words, and at the end of each frame pushes a *job* (which reply,
  its error code, a PACKED tag) into a small queue;
* the reply sender (`_sender`, `_tx_*`) takes the jobs in order and sends their replies; an
  INFER's outputs go from the engine's `o_act` straight into the reply (no output buffer).

The queue holds `window` jobs, the number of requests the host may have in flight (PING
reports it): the receiver never has to wait for the sender while the host keeps that limit.
The words into the engine pass one register (`w_`), so nothing combinational runs from the
engine's `i_act.ready` to the UART; the load port is registered too. For the board's clock the
rest is kept shallow as well: the sender's byte, its CRC input and the reply table's word
are registers, the engine's `o_act.ready` is a flip-flop set for the sender's output states,
the LED argmax runs a cycle after the output word is taken, the LOAD header check takes three
registered steps, and the receiver's `left == 0`, `idx == in_features` and timeout tests are
flip-flops.
The receiver reads each byte from a register of its own, with every test of it (SYNC, the
command, the length, the format, the address, the CRC) decoded into flip-flops as it comes in
(`_rx_byte`), and its error code's enable is the state alone (`err_code`).

A bad frame cannot turn the link:

* bytes outside a frame are dropped until a SYNC byte;
* a frame refused from its header (unknown command, a length that does not match it, INFER
  before the weights are loaded, an unknown PACKED format, a LOAD to a memory or address range
  that does not exist or out of order) is discarded to its declared end: exactly LEN payload
  bytes and the CRC byte are dropped, or fewer if the line goes quiet for `timeout` cycles
  first. Only then is the ERROR reply queued. Payload bytes are never parsed as requests, and
  a refused request has no effect at all (no engine run, no write, no flag changed);
* every gap between two bytes of a frame is timed (the timer stops while a byte waits to be
  taken): after `timeout` clock cycles the frame is abandoned; if an input was under way the
  missing words are fed to the engine as zeros so the engine finishes its inference, and the
  sender drains its outputs before the ERROR reply;
* an INFER with a bad CRC, or a PACKED frame whose length does not match its contents, is
  likewise run to completion and drained, and answered with ERROR.

LOAD is a staged commit (there is no room for a frame buffer): its header (memory, address, word
count) is checked before the first word is written, and the words are then written as they
arrive, before the CRC is known. So that a bad LOAD can never be used, the link keeps a load
cursor: a LOAD must start where the last good LOAD ended (memory by memory in load-id order,
addresses ascending, each memory to its full depth), or at memory 0 address 0 to start over.
Any accepted LOAD clears the loaded flag; only a LOAD whose CRC checks moves the cursor; and
COMMIT is refused until the cursor has passed the end of the last memory. The words of a LOAD
refused for its CRC or a timeout lie at or after the cursor, where the next good LOAD must
write again before any COMMIT.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .. import protocol as P

# the words a loadable memory holds at most: 2**14 unless the board says otherwise (BoardCore
# passes its family's `LOAD_ADDR_BITS`; a LOAD frame's address is 16 bits)
LOAD_ADDR_BITS = 14
MAX_WINDOW = 8  # PING carries window - 1 in 3 bits


def _crc8_bit_sources() -> list[list[int]]:
    """For each bit of the next CRC, the bits of (crc ^ byte) that XOR into it (CRC is linear)."""
    cols = [P.crc8(b"\x00", 1 << i) ^ P.crc8(b"\x00", 0) for i in range(8)]
    return [[i for i in range(8) if (cols[i] >> j) & 1] for j in range(8)]


_CRC8_SOURCES = _crc8_bit_sources()


def crc8_step(crc, byte):
    """Amaranth expression: CRC-8 (poly 0x07, MSB first) of `crc` after one more byte."""
    x = crc ^ byte
    bits = []
    for srcs in _CRC8_SOURCES:
        v = x[srcs[0]]
        for i in srcs[1:]:
            v = v ^ x[i]
        bits.append(v)
    return Cat(*bits)


# A job: what the sender must answer for one received frame.
JOB = data.StructLayout({
    "run": 1,  # the engine ran this frame's inputs: its outputs must be taken
    "err": 3,  # error code of the reply, 0 = none
    "packed": 1,  # a PACKED request: `field` is its tag
    "loaded": 1,  # the loaded flag when the frame ended (PING's reply)
    "field": 8,  # the command byte, or the PACKED tag
})


class Link(wiring.Component):
    """Request/reply protocol engine; see the module docstring.

    Ports: `rx` (in: request bytes from the UART), `tx` (out: reply bytes to the UART),
    `act_out` (out: input words to the engine's `i_act`), `act_in` (in: output words from the
    engine's `o_act`), `cycles`, `layer_cycles` (in: the engine's counters of the inference
    whose last output word was taken, sent in COUNT and INFER replies); `load_mem`,
    `load_addr`, `load_data`, `load_we` (out, registered: LOAD frames' writes into the SPRAM
    memories, used when loads > 0); `digit`, `inferences`, `errors`, `active`, `error_flag`
    (out: status for the LEDs: the argmax of the last good inference, two counters, a frame is
    being handled, the last reply was an error).

    Parameters: in_features, out_features, num_layers, pes (the engine's shape, also sent in
    the PING reply); clock_hz (sent in PING); timeout, the inter-byte timeout in clock cycles;
    engine_id, the engine's protocol id (`images.engines`; PING flags bit 1 and bits 5-7: which
    image the host must load); `loads`, the number of
    loadable memories (SPRAM on iCE40), or the list of their depths in words (load-id order); a
    bare number means every memory is 2**load_addr_bits words; load_addr_bits, the width of the
    load port's address (the board's family's); window, the requests the host may
    have in flight (1..8, sent in PING): 1 for an engine that takes no input while it computes.
    """

    def __init__(
        self,
        *,
        in_features: int,
        out_features: int,
        num_layers: int,
        pes: int,
        clock_hz: int,
        timeout: int,
        loads=0,
        load_addr_bits: int = LOAD_ADDR_BITS,
        engine_id: int = 0,
        window: int = 1,
    ):
        for name, v, lo in (
            ("in_features", in_features, 1),
            ("out_features", out_features, 1),
            ("num_layers", num_layers, 1),
            ("pes", pes, 1),
            ("timeout", timeout, 2),
            ("window", window, 1),
        ):
            if not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, not {v!r}")
        if window > MAX_WINDOW:
            raise ValueError(f"window must be 1..{MAX_WINDOW}, not {window!r}")
        if not isinstance(load_addr_bits, int) or not 9 <= load_addr_bits <= 16:
            raise ValueError(f"load_addr_bits must be 9..16, not {load_addr_bits!r}")
        self.load_addr_bits = abits = load_addr_bits
        if not isinstance(engine_id, int) or not 0 <= engine_id <= P.MAX_ENGINE_ID:
            raise ValueError(f"engine_id must be 0..{P.MAX_ENGINE_ID}, not {engine_id!r}")
        if 2 * in_features > P.MAX_PAYLOAD:
            raise ValueError(f"in_features {in_features} does not fit one frame")
        if out_features > 0xFFFF or num_layers > 255 or pes > 255:
            raise ValueError("out_features, num_layers or pes too large for the PING reply")
        self.in_features = in_features
        self.out_features = out_features
        self.num_layers = num_layers
        self.pes = pes
        self.clock_hz = int(clock_hz)
        self.timeout = timeout
        self.window = window
        if isinstance(loads, int):
            if not 0 <= loads <= 255:
                raise ValueError(f"loads must be 0..255 loadable memories, not {loads!r}")
            loads = [1 << abits] * loads
        depths = [int(d) for d in loads]
        if len(depths) > 255 or any(not 1 <= d <= 1 << abits for d in depths):
            raise ValueError(f"load depths must be 1..{1 << abits} words, not {depths}")
        self.load_depths = depths
        self.loads = len(depths)
        self.engine_id = engine_id  # PING flags: which image the host must load
        super().__init__(
            {
                "rx": In(stream.Signature(8)),
                "tx": Out(stream.Signature(8)),
                "act_out": Out(stream.Signature(signed(16))),  # to the engine's i_act
                "act_in": In(stream.Signature(signed(16))),  # from the engine's o_act
                "cycles": In(32),
                "layer_cycles": In(data.ArrayLayout(32, num_layers)),
                # LOAD frames write SPRAM memories through this port (loads > 0)
                "load_mem": Out(8),
                "load_addr": Out(abits),
                "load_data": Out(16),
                "load_we": Out(1),
                # status for the LEDs
                "digit": Out(range(max(out_features, 2))),  # argmax of the last good inference
                "inferences": Out(32),
                "errors": Out(32),
                "active": Out(1),  # a frame is being received or answered
                "error_flag": Out(1),  # the last reply was an error
            }
        )

    def elaborate(self, platform):
        m = Module()
        s = SimpleNamespace()
        s.loaded = Signal(init=0 if self.loads else 1)
        self._jobs(m, s)
        self._rx_signals(m, s)
        self._rx_words(m, s)
        if self.loads:
            self._rx_load_port(m, s)
        self._tx_signals(m, s)
        with m.FSM(name="rx_fsm") as rx_fsm:
            self._receiver(m, s)
        with m.FSM(name="tx_fsm") as tx_fsm:
            self._sender(m, s)
        m.d.comb += self.active.eq(~rx_fsm.ongoing("IDLE") | ~tx_fsm.ongoing("REPLY"))
        return m

    def _jobs(self, m, s):
        """The job queue between receiver and sender: `window` entries, the head at 0."""
        n = self.window
        q = [Signal(JOB, name=f"job{i}") for i in range(n)]
        level = Signal(range(n + 1))
        s.push, s.pop = Signal(), Signal()
        s.new = Signal(JOB)
        s.full = Signal()
        s.head, s.have_job = q[0], Signal()
        m.d.comb += [s.full.eq(level == n), s.have_job.eq(level != 0)]
        for i in range(n):
            # A pop shifts every entry down; a push writes the first free entry after that.
            with m.If(s.pop):
                with m.If(s.push & (level == i + 1)):
                    m.d.sync += q[i].eq(s.new)
                if i + 1 < n:
                    with m.Elif(level > i + 1):
                        m.d.sync += q[i].eq(q[i + 1])
            with m.Elif(s.push & (level == i)):
                m.d.sync += q[i].eq(s.new)
        m.d.sync += level.eq(level + s.push - s.pop)

    # -- the frame receiver ------------------------------------------------------------------
    # IDLE .. CRC: hunt, header, payload (INFER / PACKED inputs, LOAD), discard of refused
    # frames, the job push. Each stage adds its states to the FSM in order.

    def _receiver(self, m, s):
        """The receiver's states, stage by stage (signals in `s`)."""
        self._rx_header(m, s)
        self._rx_length(m, s)
        self._rx_skip(m, s)
        self._rx_packed(m, s)
        self._rx_inputs(m, s)
        if self.loads:
            self._rx_load(m, s)
        self._rx_crc(m, s)

    def _rx_signals(self, m, s):
        """The receiver's registers, the inter-byte timer and its ways out of a state."""
        s.cmd = Signal(8)
        s.err = Signal(3)  # error code of the reply, 0 = none
        s.run = Signal()  # this frame's inputs went into the engine
        s.tag = Signal(8)
        s.crc = Signal(8, init=0xFF)
        s.left = Signal(16)  # payload bytes still to come (LEN, counted down)
        s.left0 = Signal()  # left == 0, kept beside it (a flip-flop, not a 16-bit compare)
        s.lo_byte = Signal(8)
        s.have_lo = Signal()
        s.has_mask = Signal()  # PACKED format: groups with a mask byte
        s.wide = Signal()  # int16 values (else one byte + base)
        s.base = Signal(16)
        s.mask = Signal(8)  # the current group's mask, shifted as its inputs go
        s.m_need = Signal()  # the next payload byte is a group's mask
        s.rx_want = Signal()  # the state takes a byte this cycle if one is there
        s.in_frame = Signal()  # the inter-byte timer runs
        s.timed_out = Signal()
        self._rx_byte(m, s)

        # Inter-byte timer: runs inside a frame while no byte is waiting.
        timer = Signal(range(self.timeout + 1))
        # timed_out is a flip-flop (timer == timeout), set as the timer gets there: every
        # state's way out reads it, so no wide compare sits in front of the FSM.
        with m.If(~s.in_frame | s.got | self.rx.valid):
            m.d.sync += [timer.eq(0), s.timed_out.eq(0)]
        with m.Elif(~s.timed_out):
            m.d.sync += [timer.eq(timer + 1), s.timed_out.eq(timer == self.timeout - 1)]

        # The error code is read only in SKIP, PAD and PUSH, which never write it: every other
        # state writes it in every cycle (`err_code`), with the code it leaves with if it
        # leaves now (a don't-care while it stays). Its enable is then the state alone, not
        # every state's way out (each flag into that enable limited the board's clock).
        def err_code(code):
            m.d.sync += s.err.eq(code)

        def refuse(code):
            """A refused frame: drop the rest of what it declared (`left` + CRC), then ERROR
            (`code`, which the state's `err_code` writes)."""
            m.next = "SKIP"

        def reply(code):
            """The frame's job next, with `code` (written by the state's `err_code`)."""
            m.next = "PUSH"

        # One decrement of `left`, shared by every state (yosys would build one per use
        # otherwise).
        left_dec = Signal(16)
        m.d.comb += left_dec.eq(s.left - 1)

        def count_down():
            """One payload byte fewer to come."""
            m.d.sync += [s.left.eq(left_dec), s.left0.eq(s.left1), s.left1.eq(s.left == 2)]
        s.count_down = count_down

        def take():
            """Take a payload byte (if one is there): CRC and the count of bytes left."""
            m.d.comb += [s.in_frame.eq(1), s.rx_want.eq(1)]
            with m.If(s.got):
                count_down()

        s.refuse, s.reply, s.take, s.err_code = refuse, reply, take, err_code

    def _rx_byte(self, m, s):
        """The received byte's register (`rb`, `got`) and what it says, decoded as it enters.

        The receiver reads the byte from this register, not from the UART: every test of it
        (SYNC, the command, the length's cases, the format, the address's range, the CRC) is a
        flip-flop set as the byte comes in, so no compare sits between the byte and the FSM's
        enables (a received byte -> the state and the error code's enable was the board's
        critical path). What they compare with (`left`'s low byte, the CRC) changes only when
        a byte is taken, and a byte comes in only while the register is empty, a cycle after
        the last one was taken at the earliest. The byte waits a cycle more than it did; a
        byte comes every 10 bit times (at least 80 cycles).

        The CRC takes each byte as it comes in, too: IDLE sets it to its start while it looks
        for SYNC (a byte that comes in meanwhile is taken by IDLE the next cycle, which sets it
        again), and the frame's bytes come in in order after that, each once, whatever the
        receiver then does with them. So its enable is the UART's valid and IDLE, not every
        state's way of taking a byte; the CRC byte is compared as it comes in (`b_crc`), and
        what it adds to the CRC is never used (the next frame starts in IDLE).
        """
        rx = self.rx
        s.rb = Signal(8)  # the byte, while `got`
        s.got = Signal()  # a byte is there: the state that wants one takes it (rx_want)
        m.d.comb += rx.ready.eq(~s.got)
        s.left1 = Signal()  # left == 1, beside left0
        # the byte's tests (valid with `got`) and the command's (set in CMD)
        s.b_sync, s.b_crc, s.b_fmt_bad, s.b_big = Signal(), Signal(), Signal(), Signal()
        s.b_len0, s.b_len1 = Signal(), Signal()
        # in LEN1: the header's verdict, the error code (0: accepted) and whether it is one
        s.b_hdr_err, s.b_hdr_bad = Signal(3), Signal()
        kinds = ("short", "infer", "packed", "load", "commit")
        b_cmd = {k: Signal(name=f"b_cmd_{k}") for k in kinds}
        s.k = SimpleNamespace(**{k: Signal(name=f"k_{k}") for k in kinds})
        s.b_cmd = b_cmd
        byte = rx.payload
        full = Cat(s.left[:8], byte)  # in LEN1: the payload's length
        max_load = 3 + 2 * P.MAX_LOAD_WORDS
        short = [P.CMD_PING, P.CMD_COUNT] + ([P.CMD_COMMIT] if self.loads else [])
        # The header's verdict from the command's kind (set in CMD), the length and the
        # loaded flag (neither changes while a frame's header comes in).
        k = s.k
        hdr_err = Signal(3)
        with m.If(k.short):
            m.d.comb += hdr_err.eq(Mux(full == 0, 0, P.ERR_LENGTH))
        with m.Elif(k.infer | k.packed):
            length_ok = Mux(k.infer, full == 2 * self.in_features, full >= 2)
            m.d.comb += hdr_err.eq(Mux(~length_ok, P.ERR_LENGTH,
                                       Mux(~s.loaded, P.ERR_NOT_LOADED, 0)))
        with m.Elif(k.load):
            ok = full[0] & (full >= 5) & (full <= max_load)
            m.d.comb += hdr_err.eq(Mux(ok, 0, P.ERR_LENGTH))
        with m.Else():
            m.d.comb += hdr_err.eq(P.ERR_COMMAND)
        with m.If(~s.got):
            with m.If(rx.valid):
                m.d.sync += [
                    s.rb.eq(byte), s.got.eq(1), s.crc.eq(crc8_step(s.crc, byte)),
                    s.b_sync.eq(byte == P.SYNC_REQ), s.b_crc.eq(byte == s.crc),
                    s.b_fmt_bad.eq(byte[2:] != 0),
                    s.b_big.eq(byte[self.load_addr_bits - 8:] != 0),
                    s.b_len0.eq(full == 0), s.b_len1.eq(full == 1),
                    s.b_hdr_err.eq(hdr_err), s.b_hdr_bad.eq(hdr_err != 0),
                    b_cmd["short"].eq(Cat(*(byte == c for c in short)).any()),
                    b_cmd["infer"].eq(byte == P.CMD_INFER),
                    b_cmd["packed"].eq(byte == P.CMD_PACKED),
                ]
                if self.loads:  # else LOAD and COMMIT are unknown commands
                    m.d.sync += [b_cmd["load"].eq(byte == P.CMD_LOAD),
                                 b_cmd["commit"].eq(byte == P.CMD_COMMIT)]
        with m.Elif(s.rx_want):
            m.d.sync += s.got.eq(0)

    def _rx_words(self, m, s):
        """The input word register in front of the engine's `i_act`, and the input counter."""
        s.w_valid = Signal()
        s.w_data = Signal(16)
        s.idx = Signal(range(self.in_features + 1))  # input words produced so far
        s.idx_end = Signal()  # idx == in_features (a flip-flop beside idx)
        s.in_dec = Signal()  # INPUTS has decided its next step (`_rx_inputs`)
        s.in_steps = tuple(Signal(name=f"a_{n}")
                           for n in ("fin", "long", "short", "mask", "zero", "lo", "val"))
        s.w_free = ~s.w_valid
        m.d.comb += [self.act_out.valid.eq(s.w_valid), self.act_out.payload.eq(s.w_data)]
        with m.If(self.act_out.ready):
            m.d.sync += s.w_valid.eq(0)

        def produce(value):
            """The next input word (only while `w_free`)."""
            m.d.sync += [s.w_data.eq(value), s.w_valid.eq(1), s.idx.eq(s.idx + 1),
                         s.idx_end.eq(s.idx == self.in_features - 1)]

        s.produce = produce

    def _rx_load_port(self, m, s):
        """LOAD's registers, the load cursor and the (registered) load port (loads > 0)."""
        loads = self.loads
        s.l_idx = Signal(2)  # LOAD payload: 0 mem, 1 addr lo, 2 addr hi, 3 words
        s.l_big = Signal()  # the address does not fit load_addr_bits
        s.l_last = Signal()  # the LOAD ends at its memory's last word
        s.l_hi = Signal(8)
        s.cur_mem = Signal(range(loads + 1))  # the load cursor (module docstring)
        s.cur_addr = Signal(self.load_addr_bits)
        # A good LOAD's CRC sets cur_go; the cursor moves the cycle after, from registers (the
        # cursor's enable behind the CRC state's decode limited the board's clock). Nothing
        # reads the cursor that soon: the next frame's header or CRC is bytes away.
        s.cur_go = Signal()
        m.d.sync += s.cur_go.eq(0)  # CRC sets it (a later assignment wins)
        with m.If(s.cur_go):
            with m.If(s.l_last):
                m.d.sync += [s.cur_mem.eq(s.cur_mem + 1), s.cur_addr.eq(0)]
            with m.Else():
                m.d.sync += s.cur_addr.eq(self.load_addr)
        # The word is written the cycle after its high byte came, from registers only; the
        # address moves on after the write.
        m.d.comb += self.load_data.eq(Cat(s.lo_byte, s.l_hi))
        m.d.sync += self.load_we.eq(0)
        with m.If(self.load_we):
            m.d.sync += self.load_addr.eq(self.load_addr + 1)
        # Depth of the addressed memory (0 past the last: never fits).
        k = max(1, (loads - 1).bit_length())
        s.depth = Array(Const(d, self.load_addr_bits + 1)
                        for d in self.load_depths + [0] * ((1 << k) - loads))[self.load_mem[:k]]
        s.end = Signal(self.load_addr_bits + 1)  # address after the frame's last word
        m.d.comb += s.end.eq(self.load_addr + s.left[1:])  # in LCHK, left = 2 x words

    def _rx_header(self, m, s):
        """IDLE (hunt for SYNC), CMD and the low byte of LEN."""
        rx_byte, timed_out = s.rb, s.timed_out
        with m.State("IDLE"):
            m.d.comb += s.rx_want.eq(1)
            m.d.sync += [s.crc.eq(0xFF), s.cmd.eq(0), s.err.eq(0), s.run.eq(0),
                         s.have_lo.eq(0), s.idx.eq(0), s.idx_end.eq(0),
                         s.m_need.eq(1), s.in_dec.eq(0), *(f.eq(0) for f in s.in_steps),
                         *(getattr(s.k, k).eq(0) for k in s.b_cmd)]
            with m.If(s.got & s.b_sync):
                m.next = "CMD"

        with m.State("CMD"):
            m.d.comb += [s.in_frame.eq(1), s.rx_want.eq(1)]
            s.err_code(P.ERR_TIMEOUT)
            with m.If(s.got):
                m.d.sync += [s.cmd.eq(rx_byte),
                             *(getattr(s.k, k).eq(b) for k, b in s.b_cmd.items())]
                m.next = "LEN0"
            with m.Elif(timed_out):
                s.reply(P.ERR_TIMEOUT)

        with m.State("LEN0"):
            m.d.comb += [s.in_frame.eq(1), s.rx_want.eq(1)]
            s.err_code(P.ERR_TIMEOUT)
            with m.If(s.got):
                m.d.sync += s.left[:8].eq(rx_byte)
                m.next = "LEN1"
            with m.Elif(timed_out):
                s.reply(P.ERR_TIMEOUT)

    def _rx_length(self, m, s):
        """LEN1: the whole header is in; the command and its length decide the next stage."""
        k = s.k
        rx_byte, left = s.rb, s.left
        with m.State("LEN1"):
            # The header's verdict is a flip-flop (`_rx_byte`): refused, or the command's kind.
            m.d.comb += [s.in_frame.eq(1), s.rx_want.eq(1)]
            s.err_code(Mux(s.got, s.b_hdr_err, P.ERR_TIMEOUT))
            with m.If(s.got):
                m.d.sync += [left[8:].eq(rx_byte), s.left0.eq(s.b_len0), s.left1.eq(s.b_len1)]
                with m.If(s.b_hdr_bad):
                    s.refuse(s.b_hdr_err)
                with m.Elif(k.short):  # PING, COUNT, COMMIT: no payload
                    m.next = "CRC"
                with m.Elif(k.infer):
                    # dense int16: every input has a value, no mask
                    m.d.sync += [s.has_mask.eq(0), s.wide.eq(1), s.run.eq(1)]
                    m.next = "INPUTS"
                with m.Elif(k.packed):
                    m.next = "P_TAG"
                if self.loads:
                    with m.Elif(k.load):  # (any other command is refused)
                        m.d.sync += s.l_idx.eq(0)
                        m.next = "LOAD"
            with m.Elif(s.timed_out):
                s.reply(P.ERR_TIMEOUT)

    def _rx_skip(self, m, s):
        """SKIP (the rest of a refused frame), PAD (an abandoned input completed with zeros)
        and PUSH (the frame's job into the queue)."""
        with m.State("SKIP"):
            # A refused frame: its remaining payload bytes, then its CRC byte, are dropped.
            m.d.comb += [s.in_frame.eq(1), s.rx_want.eq(1)]
            with m.If(s.got):
                s.count_down()
                with m.If(s.left0):
                    m.next = "PUSH"
            with m.Elif(s.timed_out):
                m.next = "PUSH"

        with m.State("PAD"):
            # The engine must get all its inputs to finish (its outputs are then dropped).
            with m.If(s.idx_end):
                with m.If(s.err == P.ERR_TIMEOUT):
                    m.next = "PUSH"  # the line is quiet already
                with m.Else():
                    m.next = "SKIP"  # a length error: the rest of the frame, then its CRC
            with m.Elif(s.w_free):
                s.produce(0)

        with m.State("PUSH"):
            m.d.comb += [s.new.run.eq(s.run), s.new.err.eq(s.err), s.new.loaded.eq(s.loaded),
                         s.new.packed.eq(s.k.packed),
                         s.new.field.eq(Mux(s.k.packed, s.tag, s.cmd))]
            with m.If(~s.full):
                m.d.comb += s.push.eq(1)
                m.next = "IDLE"

    def _rx_packed(self, m, s):
        """P_TAG, P_FMT, P_BASE0/1: a PACKED frame's header, before its inputs."""
        rx_byte = s.rb

        def payload_byte(then, code=P.ERR_TIMEOUT):
            """Take the next payload byte; none left (the CRC comes): a length error. `code`:
            the error code if `then` refuses the byte."""
            s.err_code(Mux(s.left0, P.ERR_LENGTH, Mux(s.got, code, P.ERR_TIMEOUT)))
            with m.If(s.left0):
                s.refuse(P.ERR_LENGTH)  # SKIP drops the CRC byte
            with m.Else():
                s.take()
                with m.If(s.got):
                    then()
                with m.Elif(s.timed_out):
                    s.reply(P.ERR_TIMEOUT)

        with m.State("P_TAG"):
            def tag():
                m.d.sync += s.tag.eq(rx_byte)
                m.next = "P_FMT"
            payload_byte(tag)

        with m.State("P_FMT"):
            def fmt():
                m.d.sync += [s.has_mask.eq(rx_byte[0]), s.wide.eq(rx_byte[1])]
                with m.If(s.b_fmt_bad):
                    s.refuse(P.ERR_FORMAT)
                with m.Elif(rx_byte[1]):
                    m.d.sync += s.run.eq(1)
                    m.next = "INPUTS"
                with m.Else():
                    m.next = "P_BASE0"
            payload_byte(fmt, P.ERR_FORMAT)

        with m.State("P_BASE0"):
            def base0():
                m.d.sync += s.base[:8].eq(rx_byte)
                m.next = "P_BASE1"
            payload_byte(base0)

        with m.State("P_BASE1"):
            def base1():
                m.d.sync += [s.base[8:].eq(rx_byte), s.run.eq(1)]
                m.next = "INPUTS"
            payload_byte(base1)

    def _rx_inputs(self, m, s):
        """INPUTS: the engine's input words from the payload (mask bytes, values, zeros).

        Each step (a mask byte, a zero input, a low byte, a value, the end with or without
        payload left, too little payload) is decided a cycle before it is taken, into one-hot
        flip-flops (`a_*`, set with `dec`): what decides it (idx, the mask, left0, have_lo)
        changes only when a step is taken, which clears `dec` and the step's flag (IDLE
        clears them all). The input word's enable is then a flag, `w_free` and `got`, not the
        priority chain below (the board's critical path, 31.2-31.6 MHz), and no flag is
        ANDed with `dec` (the flags into the error code's enable limited the clock next). A
        byte comes every 10 bit times (at least 80 cycles), so the extra cycle costs nothing.
        """
        rx_byte = s.rb
        mask, m_need = s.mask, s.m_need
        dec = s.in_dec  # the a_* flags hold the next step (IDLE clears it)
        a_fin, a_long, a_short, a_mask, a_zero, a_lo, a_val = flags = s.in_steps
        with m.State("INPUTS"):
            # too much or too little payload, or the line went quiet (below)
            s.err_code(Mux(~s.got & s.timed_out & ~s.idx_end, P.ERR_TIMEOUT, P.ERR_LENGTH))
            with m.If(~dec):
                # decide: the step, in the order of priority
                m.d.comb += s.in_frame.eq(1)
                m.d.sync += [dec.eq(1), *(f.eq(0) for f in flags)]
                with m.If(s.idx_end):  # all inputs in: the CRC next, or too much payload
                    m.d.sync += [a_fin.eq(s.left0), a_long.eq(~s.left0)]
                with m.Elif(s.has_mask & (s.idx[:3] == 0) & m_need):
                    with m.If(s.left0):
                        m.d.sync += a_short.eq(1)
                    with m.Else():
                        m.d.sync += a_mask.eq(1)
                with m.Elif(s.has_mask & ~mask[0]):
                    m.d.sync += a_zero.eq(1)
                with m.Elif(s.left0):
                    m.d.sync += a_short.eq(1)
                with m.Elif(s.wide & ~s.have_lo):
                    m.d.sync += a_lo.eq(1)
                with m.Else():
                    m.d.sync += a_val.eq(1)
            # take it (the flags are one-hot, and clear while ~dec: no priority between them)
            with m.If(a_fin):
                m.d.comb += s.in_frame.eq(1)
                m.next = "CRC"
            with m.If(a_long):
                s.refuse(P.ERR_LENGTH)  # more payload than inputs: drop it, then ERROR
            with m.If(a_short):
                m.next = "PAD"  # ERR_LENGTH
            with m.If(a_mask):
                s.take()
                with m.If(s.got):
                    m.d.sync += [mask.eq(rx_byte), m_need.eq(0), dec.eq(0), a_mask.eq(0)]
            with m.If(a_zero & s.w_free):  # a zero input: no byte
                s.produce(0)
                m.d.sync += [mask.eq(mask >> 1), m_need.eq(s.idx[:3] == 7), dec.eq(0),
                             a_zero.eq(0)]
            with m.If(a_lo):
                s.take()
                with m.If(s.got):
                    m.d.sync += [s.lo_byte.eq(rx_byte), s.have_lo.eq(1), dec.eq(0), a_lo.eq(0)]
            with m.If(a_val):
                with m.If(s.w_free):
                    # A value: int16 (its high byte) or one byte + base.
                    s.take()
                    with m.If(s.got):
                        s.produce(Mux(s.wide, Cat(s.lo_byte, rx_byte), rx_byte + s.base))
                        m.d.sync += [s.have_lo.eq(0), mask.eq(mask >> 1),
                                     m_need.eq(s.idx[:3] == 7), dec.eq(0), a_val.eq(0)]
                with m.Else():
                    m.d.comb += s.in_frame.eq(1)  # a byte may be waiting: the timer holds
            # The line went quiet while inputs were still to come (a byte that is there wins,
            # as in every state; the timer stops while one waits).
            with m.If(~s.got & s.timed_out & ~s.idx_end):
                m.next = "PAD"  # ERR_TIMEOUT

    def _rx_load(self, m, s):
        """LOAD (header bytes, then words written as they arrive) and LCHK (header checks)."""
        rx_byte, lo_byte, have_lo = s.rb, s.lo_byte, s.have_lo
        l_idx, addr = s.l_idx, self.load_addr
        with m.State("LOAD"):
            # mem, address (then LCHK), then words written one by one as their high byte
            # arrives.
            m.d.comb += [s.in_frame.eq(1), s.rx_want.eq(1)]
            s.err_code(P.ERR_TIMEOUT)
            with m.If(s.got):
                s.count_down()
                with m.Switch(l_idx):
                    with m.Case(0):
                        m.d.sync += [self.load_mem.eq(rx_byte), l_idx.eq(1)]
                    with m.Case(1):
                        m.d.sync += [addr[:8].eq(rx_byte), l_idx.eq(2)]
                    with m.Case(2):
                        m.d.sync += [addr[8:].eq(rx_byte), l_idx.eq(3), have_lo.eq(0),
                                     s.l_big.eq(s.b_big)]
                        m.next = "LCHK"
                    with m.Default():
                        with m.If(~have_lo):
                            m.d.sync += [lo_byte.eq(rx_byte), have_lo.eq(1)]
                        with m.Else():
                            m.d.sync += [s.l_hi.eq(rx_byte), self.load_we.eq(1), have_lo.eq(0)]
                        with m.If(s.left1):
                            m.next = "CRC"
            with m.Elif(s.timed_out):
                s.reply(P.ERR_TIMEOUT)

        # The LOAD header, checked before any word is written (three cycles, no byte taken):
        # an existing memory, the words inside it, at the cursor or at 0/0. Each step acts
        # on the registers of the one before (the compares once limited the board's clock).
        c_ok, c_end, c_depth, c_go = Signal(), Signal.like(s.end), Signal.like(s.end), Signal()
        with m.State("LCHK"):
            m.d.comb += s.in_frame.eq(1)
            s.err_code(P.ERR_ADDRESS)
            restart = (self.load_mem == 0) & (addr == 0)
            at_cursor = (self.load_mem == s.cur_mem) & (addr == s.cur_addr)
            m.d.sync += [c_ok.eq((self.load_mem < self.loads) & ~s.l_big & (restart | at_cursor)),
                         c_end.eq(s.end), c_depth.eq(s.depth)]
            m.next = "LCHK_CMP"
        with m.State("LCHK_CMP"):
            m.d.comb += s.in_frame.eq(1)
            s.err_code(P.ERR_ADDRESS)
            m.d.sync += [c_go.eq(c_ok & (c_end <= c_depth)), s.l_last.eq(c_end == c_depth)]
            m.next = "LCHK_GO"
        with m.State("LCHK_GO"):
            m.d.comb += s.in_frame.eq(1)
            s.err_code(P.ERR_ADDRESS)
            with m.If(c_go):
                m.d.sync += [s.loaded.eq(0), s.cur_mem.eq(self.load_mem), s.cur_addr.eq(addr)]
                m.next = "LOAD"
            with m.Else():
                s.refuse(P.ERR_ADDRESS)

    def _rx_crc(self, m, s):
        """CRC: the verdict (which reply, and LOAD's cursor / COMMIT's flag)."""
        loads, reply = self.loads, s.reply
        with m.State("CRC"):
            m.d.comb += [s.in_frame.eq(1), s.rx_want.eq(1)]
            ok = s.b_crc
            if loads:
                verdict = Mux(~ok, P.ERR_CRC,
                              Mux(s.k.commit & (s.cur_mem != loads), P.ERR_NOT_LOADED, 0))
            else:
                verdict = Mux(ok, 0, P.ERR_CRC)
            s.err_code(Mux(s.got, verdict, P.ERR_TIMEOUT))
            with m.If(s.got):
                with m.If(~ok):
                    reply(P.ERR_CRC)  # an INFER's inputs went in: the sender drains it
                if loads:
                    with m.Elif(s.k.load):
                        # A good LOAD moves the cursor past its words (`cur_go`: its last
                        # write was two cycles before at the latest, the address is past it).
                        m.d.sync += s.cur_go.eq(1)
                        reply(0)
                    with m.Elif(s.k.commit & (s.cur_mem != loads)):
                        reply(P.ERR_NOT_LOADED)
                    with m.Elif(s.k.commit):
                        m.d.sync += s.loaded.eq(1)
                        reply(0)
                with m.Else():
                    reply(0)
            with m.Elif(s.timed_out):
                reply(P.ERR_TIMEOUT)

    # -- the reply sender --------------------------------------------------------------------
    # REPLY (wait for a job), DISCARD (a failed inference's outputs), T_*: the reply, byte by
    # byte; the job leaves the queue after the reply's last byte.

    def _sender(self, m, s):
        """The sender's states, stage by stage (signals in `s`, the job at the queue's head)."""
        self._tx_choose(m, s)
        self._tx_header(m, s)
        self._tx_payload(m, s)
        self._tx_crc(m, s)

    def _tx_signals(self, m, s):
        """The reply's table of 32-bit words and the sender's registers (into `s`)."""
        n_out, n_l = self.out_features, self.num_layers
        s.best = Signal(signed(16), name="best")
        s.best_idx = Signal.like(self.digit, name="best_idx")
        job = s.head
        s.job_cmd = Mux(job.packed, P.CMD_PACKED, job.field)
        # The reply payload: a PACKED reply's tag, the engine's output words (INFER, PACKED:
        # streamed from act_in), then 32-bit words from one table, sent LSB first through a
        # 24-bit shift register. Each reply starts at its own place in the table: INFER's
        # words are the tail of COUNT's.
        ping_bytes = bytes([P.VERSION, self.pes, n_l]) + self.in_features.to_bytes(2, "little")
        ping_bytes += n_out.to_bytes(2, "little")
        ping_bytes += (self.clock_hz & 0xFFFFFFFF).to_bytes(4, "little")
        assert len(ping_bytes) == 11
        s.ping_len = len(ping_bytes)
        ping_words = [int.from_bytes(ping_bytes[i:i + 4], "little") for i in (0, 4, 8)]
        # the engine id's low bit in bit 1, its high bits (if any) in bits 5-7
        high = [Const(self.engine_id >> 1, 3)] if self.engine_id >> 1 else []
        flags = Cat(job.loaded, Const(self.engine_id & 1, 1), Const(self.window - 1, 3), *high)
        table = [Cat(job.err, Const(0, 5), s.job_cmd),  # ERROR: the code, the command refused
                 Const(ping_words[0], 32), Const(ping_words[1], 32),
                 Cat(Const(ping_words[2], 24), flags),
                 self.inferences, self.errors, self.cycles,
                 *[self.layer_cycles[i] for i in range(n_l)]]
        words = Array(Signal(32, name=f"tail{i}") for i in range(len(table)))
        for w, v in zip(words, table):
            m.d.comb += w.eq(v)
        # The word at r_w, registered: the table's multiplexer is off the path into r_byte.
        # r_w moves once per 4 bytes sent and the words hold still while a reply's table part
        # is sent (the counters change when the sender takes an output word), so the register
        # has caught up whenever it is read.
        s.r_w = Signal(range(len(table)))  # the table word sent next
        s.t_word = Signal(32)
        m.d.sync += s.t_word.eq(words[s.r_w])

        s.r_cmd = Signal(8)
        max_reply = max(1 + 2 * n_out + 4 + 4 * n_l, 12 + 4 * n_l, 12)
        s.r_len = Signal(range(max_reply + 1))
        s.r_k = Signal(range(max_reply + 1))  # payload bytes sent
        s.r_b = Signal(2)  # byte within the table word
        s.r_tag = Signal()  # the tag byte comes next
        s.o_idx = Signal(range(n_out + 1))  # output words taken (n_out: none to come)
        s.o_hi = Signal()  # the output word's high byte comes next
        # o_act.ready, a flip-flop: set on the way into T_OUT and DISCARD, cleared on the way
        # out (its decode from the sender's state, merged into the engine's output logic, led
        # a path into the engine's cycle counter on the MLP board)
        s.o_rdy = Signal()
        m.d.comb += self.act_in.ready.eq(s.o_rdy)
        s.r_byte = Signal(8)  # the byte on tx (every state that sends loads it a state ahead)
        s.wreg = Signal(24)
        s.r_crc = Signal(8)
        # The byte sent is always r_byte, so the CRC step reads registers only.
        m.d.comb += self.tx.payload.eq(s.r_byte)
        s.tx_crc = crc8_step(s.r_crc, s.r_byte)
        # The argmax for the LEDs, the cycle after T_OUT took an output word (`am_go`), from
        # registers only: r_byte, wreg and o_idx hold the word then (they change only in
        # T_LOAD, a cycle later at the earliest). No FSM state or UART handshake feeds the
        # compare's enable (that path limited the board's clock twice).
        s.am_go = am_go = Signal()
        best, best_idx, o_idx = s.best, s.best_idx, s.o_idx
        m.d.sync += am_go.eq(0)  # T_OUT sets it (a later assignment wins)
        with m.If(am_go):
            y = Cat(s.r_byte, s.wreg[:8]).as_signed()
            newbest = (o_idx == 0) | (y > best)
            with m.If(newbest):
                m.d.sync += [best.eq(y), best_idx.eq(o_idx)]
            with m.If(o_idx == n_out - 1):
                m.d.sync += self.digit.eq(Mux(newbest, o_idx, best_idx))

    def _tx_choose(self, m, s):
        """REPLY: wait for a job; its reply's command, payload length, where in the table it
        starts; DISCARD: the outputs of an inference answered with ERROR, taken and dropped."""
        n_out, n_l, job = self.out_features, self.num_layers, s.head
        W_ERROR, W_PING, W_COUNT, W_INFER = 0, 1, 4, 6
        infer_len = 2 * n_out + 4 + 4 * n_l
        with m.State("REPLY"):
            m.d.sync += [s.r_k.eq(0), s.r_b.eq(0), s.r_crc.eq(0xFF), s.o_idx.eq(n_out),
                         s.o_hi.eq(0), s.r_tag.eq(0), s.r_byte.eq(P.SYNC_REP)]
            with m.If(s.have_job & (job.err != 0)):
                m.d.sync += [s.r_cmd.eq(P.CMD_ERROR), s.r_len.eq(2), s.r_w.eq(W_ERROR)]
                m.d.sync += [self.errors.eq(self.errors + 1), self.error_flag.eq(1)]
                with m.If(job.run):
                    m.d.sync += [s.o_idx.eq(0), s.o_rdy.eq(1)]
                    m.next = "DISCARD"
                with m.Else():
                    m.next = "T_SYNC"
            with m.Elif(s.have_job):
                m.d.sync += [s.r_cmd.eq(s.job_cmd), self.error_flag.eq(0)]
                with m.If(job.packed):
                    m.d.sync += [s.r_len.eq(1 + infer_len), s.r_w.eq(W_INFER), s.o_idx.eq(0),
                                 s.r_tag.eq(1), self.inferences.eq(self.inferences + 1)]
                with m.Else():
                    with m.Switch(job.field):
                        with m.Case(P.CMD_PING):
                            m.d.sync += [s.r_len.eq(s.ping_len + 1), s.r_w.eq(W_PING)]
                        with m.Case(P.CMD_COUNT):
                            m.d.sync += [s.r_len.eq(12 + 4 * n_l), s.r_w.eq(W_COUNT)]
                        with m.Case(P.CMD_INFER):
                            m.d.sync += [s.r_len.eq(infer_len), s.r_w.eq(W_INFER),
                                         s.o_idx.eq(0), self.inferences.eq(self.inferences + 1)]
                        with m.Default():  # LOAD, COMMIT
                            m.d.sync += s.r_len.eq(0)
                m.next = "T_SYNC"

        with m.State("DISCARD"):  # o_act.ready (o_rdy) is set
            with m.If(self.act_in.valid):
                m.d.sync += s.o_idx.eq(s.o_idx + 1)
                with m.If(s.o_idx == n_out - 1):
                    m.d.sync += s.o_rdy.eq(0)
                    m.next = "T_SYNC"

    def _tx_header(self, m, s):
        """T_SYNC .. T_LEN1: the reply's header bytes."""

        def send(following, nxt, *, add_crc=True):
            """Send r_byte; `following` (the next state's byte) into it once taken."""
            m.d.comb += self.tx.valid.eq(1)
            with m.If(self.tx.ready):
                if add_crc:
                    m.d.sync += s.r_crc.eq(s.tx_crc)
                if following is not None:
                    m.d.sync += s.r_byte.eq(following)
                m.next = nxt

        with m.State("T_SYNC"):  # r_byte = SYNC_REP (from REPLY)
            send(s.r_cmd, "T_CMD", add_crc=False)
        with m.State("T_CMD"):
            send(s.r_len & 0xFF, "T_LEN0")
        with m.State("T_LEN0"):
            send(s.r_len >> 8, "T_LEN1")
        with m.State("T_LEN1"):
            send(None, "T_LOAD")  # T_LOAD chooses the next byte

    def _tx_payload(self, m, s):
        """T_LOAD / T_BODY: the payload, one byte per pair (tag, outputs, table words)."""
        r_k, r_b, r_w, o_idx, r_byte, wreg = s.r_k, s.r_b, s.r_w, s.o_idx, s.r_byte, s.wreg
        t_word, n_out = s.t_word, self.out_features
        is_out = o_idx != n_out
        am_go = s.am_go
        with m.State("T_LOAD"):
            # The next payload byte into r_byte: the tag, the low byte of an output word as
            # the engine delivers it (the high byte waits in wreg), or a byte of a table word
            # (the engine's counters hold the inference whose last output word was taken).
            with m.If(r_k == s.r_len):
                m.d.sync += r_byte.eq(s.r_crc)  # final: the last byte's step was taken
                m.next = "T_CRC"
            with m.Elif(s.r_tag):
                m.d.sync += [r_byte.eq(s.head.field), s.r_tag.eq(0)]
                m.next = "T_BODY"
            with m.Elif(is_out & ~s.o_hi):
                m.d.sync += s.o_rdy.eq(1)
                m.next = "T_OUT"
            with m.Elif(is_out):
                m.d.sync += [r_byte.eq(wreg[:8]), s.o_hi.eq(0), o_idx.eq(o_idx + 1)]
                m.next = "T_BODY"
            with m.Else():
                m.d.sync += r_b.eq(r_b + 1)
                with m.If(r_b == 0):
                    m.d.sync += [r_byte.eq(t_word[:8]), wreg.eq(t_word[8:]), r_w.eq(r_w + 1)]
                with m.Else():
                    m.d.sync += [r_byte.eq(wreg[:8]), wreg.eq(wreg >> 8)]
                m.next = "T_BODY"
        with m.State("T_OUT"):
            # An output word from the engine: ready is a flip-flop (o_rdy) set for this state.
            with m.If(self.act_in.valid):
                y = self.act_in.payload
                m.d.sync += [r_byte.eq(y[:8]), wreg.eq(y[8:]), s.o_hi.eq(1), am_go.eq(1),
                             s.o_rdy.eq(0)]
                m.next = "T_BODY"
        with m.State("T_BODY"):
            m.d.comb += self.tx.valid.eq(1)
            with m.If(self.tx.ready):
                m.d.sync += [s.r_crc.eq(s.tx_crc), r_k.eq(r_k + 1)]
                m.next = "T_LOAD"

    def _tx_crc(self, m, s):
        """T_CRC: the reply's last byte; the job leaves the queue."""
        with m.State("T_CRC"):
            m.d.comb += self.tx.valid.eq(1)  # r_byte = the CRC (from T_LOAD)
            with m.If(self.tx.ready):
                m.d.comb += s.pop.eq(1)
                m.next = "REPLY"
