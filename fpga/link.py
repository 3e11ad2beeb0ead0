"""The board side of the framed UART protocol (fpga/protocol.py, docs/fpga.md).

`Link` sits between the UART byte streams and the engine's activation streams. It is one FSM
that receives a request, acts on it and sends the reply, so it needs no memory at all: the
INFER payload goes into the engine word by word as it arrives, and the engine's output words go
straight into the reply as it is sent (the engine's `o_act` waits on `ready`). The CRC verdict
is known before the first output word, so the reply header can go first: a good INFER is
answered with its outputs streamed, a bad one has its outputs drained and dropped, then ERROR.
The FSM's states are built in two pieces, each a few stages: the frame receiver (`_receiver`,
`_rx_*`) and the reply sender (`_sender`, `_tx_*`).

A bad frame cannot turn the link:

* bytes outside a frame are dropped until a SYNC byte;
* a frame refused from its header (unknown command, a length that does not match it, INFER
  before the weights are loaded, a LOAD to a memory or address range that does not exist or out
  of order) is discarded to its declared end: exactly LEN payload bytes and the CRC byte are
  dropped, or fewer if the line goes quiet for `timeout` cycles first. Only then the ERROR
  reply goes out. Payload bytes are never parsed as requests, and a refused request has no
  effect at all (no engine run, no write, no flag changed);
* every gap between two bytes of a frame is timed: after `timeout` clock cycles the frame is
  abandoned; if an INFER payload was under way the missing words are fed to the engine as zeros
  so the engine finishes its inference and is drained, then the ERROR reply goes out;
* an INFER with a bad CRC is likewise run to completion and drained, and answered with ERROR;
* bytes that arrive while a request is being answered are dropped, and then the link waits for
  a quiet line (`timeout` cycles without a byte) before it hunts for SYNC again, so the tail of
  a frame cut by the reply is never read as a request.

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

from . import protocol as P

LOAD_ADDR_BITS = 14  # SPRAM: 16K words


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


class Link(wiring.Component):
    """Request/reply protocol engine; see the module docstring.

    Ports: `rx` (in: request bytes from the UART), `tx` (out: reply bytes to the UART),
    `act_out` (out: input words to the engine's `i_act`), `act_in` (in: output words from the
    engine's `o_act`), `cycles`, `layer_cycles`, `busy` (in: the engine's counters, sent in
    COUNT and INFER replies, and its busy flag); `load_mem`, `load_addr`, `load_data`,
    `load_we` (out: LOAD frames' writes into the SPRAM memories, used when loads > 0);
    `digit`, `inferences`, `errors`, `active`, `error_flag` (out: status for the LEDs: the
    argmax of the last good inference, two counters, a frame is being handled, the last reply
    was an error).

    Parameters: in_features, out_features, num_layers, pes (the engine's shape, also sent in
    the PING reply); clock_hz (sent in PING); timeout, the inter-byte timeout in clock cycles;
    lockstep, which image the host must load (PING flags bit 1); `loads`, the number of
    loadable (SPRAM) memories, or the list of their depths in words (load-id order); a bare
    number means every memory is a whole SPRAM (16K words).
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
        lockstep: bool = False,
    ):
        for name, v, lo in (
            ("in_features", in_features, 1),
            ("out_features", out_features, 1),
            ("num_layers", num_layers, 1),
            ("pes", pes, 1),
            ("timeout", timeout, 2),
        ):
            if not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, not {v!r}")
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
        if isinstance(loads, int):
            if not 0 <= loads <= 255:
                raise ValueError(f"loads must be 0..255 loadable memories, not {loads!r}")
            loads = [1 << LOAD_ADDR_BITS] * loads
        depths = [int(d) for d in loads]
        if len(depths) > 255 or any(not 1 <= d <= 1 << LOAD_ADDR_BITS for d in depths):
            raise ValueError(f"load depths must be 1..{1 << LOAD_ADDR_BITS} words, not {depths}")
        self.load_depths = depths
        self.loads = len(depths)
        self.lockstep = bool(lockstep)  # PING flags bit 1: which image the host must load
        super().__init__(
            {
                "rx": In(stream.Signature(8)),
                "tx": Out(stream.Signature(8)),
                "act_out": Out(stream.Signature(signed(16))),  # to the engine's i_act
                "act_in": In(stream.Signature(signed(16))),  # from the engine's o_act
                "cycles": In(32),
                "layer_cycles": In(data.ArrayLayout(32, num_layers)),
                "busy": In(1),
                # LOAD frames write SPRAM memories through this port (loads > 0)
                "load_mem": Out(8),
                "load_addr": Out(LOAD_ADDR_BITS),
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
        s.cmd = Signal(8)
        s.err = Signal(8)  # error code of the reply, 0 = none
        s.loaded = Signal(init=0 if self.loads else 1)
        s.rx_take = Signal()  # a byte is transferred from rx this cycle
        s.rx_hold = Signal()  # rx not ready this cycle
        s.in_frame = Signal()  # the inter-byte timer runs
        s.timed_out = Signal()
        s.dropped = Signal()  # a byte came in while answering (cleared in GAP)
        m.d.comb += [s.rx_take.eq(self.rx.valid & self.rx.ready), self.rx.ready.eq(~s.rx_hold)]

        # Inter-byte timer: runs inside a frame (and while waiting for a quiet line).
        timer = Signal(range(self.timeout + 1))
        m.d.comb += s.timed_out.eq(timer == self.timeout)
        with m.If(~s.in_frame | s.rx_take):
            m.d.sync += timer.eq(0)
        with m.Elif(~s.timed_out):
            m.d.sync += timer.eq(timer + 1)

        with m.FSM() as fsm:
            self._receiver(m, s)
            self._sender(m, s)
        m.d.comb += self.active.eq(~fsm.ongoing("IDLE"))
        return m

    # -- the frame receiver ------------------------------------------------------------------
    # IDLE .. CRC: hunt, header, payload (INFER, LOAD), discard of refused frames. Each stage
    # adds its states to the FSM in order (the order fixes the state encoding).

    def _receiver(self, m, s):
        """The receiver's states, stage by stage (signals in `s`, shared with the sender)."""
        self._rx_signals(m, s)
        if self.loads:
            self._rx_load_port(m, s)
        self._rx_header(m, s)
        self._rx_length(m, s)
        self._rx_skip_payload(m, s)
        if self.loads:
            self._rx_load(m, s)
        self._rx_crc(m, s)

    def _rx_signals(self, m, s):
        """The receiver's registers, and its ways out of a state (into `s`)."""
        rx_byte, err = self.rx.payload, s.err
        crc = Signal(8, init=0xFF)
        left = Signal(16)  # payload bytes still to come (LEN, counted down)
        words_left = Signal(range(self.in_features + 1))
        lo_byte = Signal(8)
        have_lo = Signal()
        s.crc, s.left, s.words_left, s.lo_byte, s.have_lo = crc, left, words_left, lo_byte, have_lo

        def refuse(code):
            """A refused frame: drop the rest of what it declared (`left` + CRC), then ERROR."""
            m.d.sync += err.eq(code)
            m.next = "SKIP"

        def reply(code):
            m.d.sync += err.eq(code)
            m.next = "REPLY"

        def discard(code):
            """An INFER that will not be answered: drop the engine's outputs, then ERROR."""
            m.d.sync += err.eq(code)
            m.next = "DISCARD"

        def crc_in():
            m.d.sync += crc.eq(crc8_step(crc, rx_byte))

        s.refuse, s.reply, s.discard, s.crc_in = refuse, reply, discard, crc_in

    def _rx_load_port(self, m, s):
        """LOAD's registers, the load cursor and the load port (loads > 0)."""
        loads = self.loads
        l_idx = Signal(2)  # LOAD payload: 0 mem, 1 addr lo, 2 addr hi, 3 words
        l_addr = Signal(LOAD_ADDR_BITS)
        l_big = Signal()  # the address does not fit LOAD_ADDR_BITS
        l_last = Signal()  # the LOAD ends at its memory's last word
        cur_mem = Signal(range(loads + 1))  # the load cursor (module docstring)
        cur_addr = Signal(LOAD_ADDR_BITS)
        s.l_idx, s.l_addr, s.l_big, s.l_last = l_idx, l_addr, l_big, l_last
        s.cur_mem, s.cur_addr = cur_mem, cur_addr
        # The load port is driven straight from the frame (no copy registers): the word is
        # written in the cycle its high byte is taken.
        m.d.comb += [self.load_addr.eq(l_addr), self.load_data.eq(Cat(s.lo_byte, self.rx.payload))]
        # Depth of the addressed memory (0 past the last: never fits).
        k = max(1, (loads - 1).bit_length())
        s.depth = Array(Const(d, LOAD_ADDR_BITS + 1)
                        for d in self.load_depths + [0] * ((1 << k) - loads))[self.load_mem[:k]]
        end = Signal(LOAD_ADDR_BITS + 1)  # address after the frame's last word
        m.d.comb += end.eq(l_addr + s.left[1:])  # in LCHK, left = 2 x words
        s.end = end

    def _rx_header(self, m, s):
        """IDLE (hunt for SYNC), CMD and the low byte of LEN."""
        rx_byte, rx_take, timed_out = self.rx.payload, s.rx_take, s.timed_out
        with m.State("IDLE"):
            m.d.sync += [s.crc.eq(0xFF), s.have_lo.eq(0), s.cmd.eq(0), s.err.eq(0)]
            with m.If(rx_take & (rx_byte == P.SYNC_REQ)):
                m.next = "CMD"

        with m.State("CMD"):
            m.d.comb += s.in_frame.eq(1)
            with m.If(rx_take):
                m.d.sync += s.cmd.eq(rx_byte)
                s.crc_in()
                m.next = "LEN0"
            with m.Elif(timed_out):
                s.reply(P.ERR_TIMEOUT)

        with m.State("LEN0"):
            m.d.comb += s.in_frame.eq(1)
            with m.If(rx_take):
                m.d.sync += s.left[:8].eq(rx_byte)
                s.crc_in()
                m.next = "LEN1"
            with m.Elif(timed_out):
                s.reply(P.ERR_TIMEOUT)

    def _rx_length(self, m, s):
        """LEN1: the whole header is in; the command and its length decide the next stage."""
        n_in, loads = self.in_features, self.loads
        rx_byte, left, refuse = self.rx.payload, s.left, s.refuse
        with m.State("LEN1"):
            m.d.comb += s.in_frame.eq(1)
            full = Cat(left[:8], rx_byte)
            with m.If(s.rx_take):
                m.d.sync += left[8:].eq(rx_byte)
                s.crc_in()
                m.d.sync += s.words_left.eq(n_in)
                with m.Switch(s.cmd):
                    with m.Case(P.CMD_PING, P.CMD_COUNT, *((P.CMD_COMMIT,) if loads else ())):
                        with m.If(full == 0):
                            m.next = "CRC"
                        with m.Else():
                            refuse(P.ERR_LENGTH)
                    with m.Case(P.CMD_INFER):
                        with m.If(full != 2 * n_in):
                            refuse(P.ERR_LENGTH)
                        with m.Elif(~s.loaded):
                            refuse(P.ERR_NOT_LOADED)
                        with m.Else():
                            m.next = "PAYLOAD"
                    if loads:
                        with m.Case(P.CMD_LOAD):
                            max_load = 3 + 2 * P.MAX_LOAD_WORDS
                            with m.If(full[0] & (full >= 5) & (full <= max_load)):
                                m.d.sync += s.l_idx.eq(0)
                                m.next = "LOAD"
                            with m.Else():
                                refuse(P.ERR_LENGTH)
                    with m.Default():
                        refuse(P.ERR_COMMAND)
            with m.Elif(s.timed_out):
                s.reply(P.ERR_TIMEOUT)

    def _rx_skip_payload(self, m, s):
        """SKIP (a refused frame's rest) and PAYLOAD (INFER's words into the engine)."""
        rx_byte, rx_take, timed_out = self.rx.payload, s.rx_take, s.timed_out
        left, lo_byte, have_lo, words_left = s.left, s.lo_byte, s.have_lo, s.words_left
        with m.State("SKIP"):
            # A refused frame: its remaining payload bytes, then its CRC byte, are dropped.
            m.d.comb += s.in_frame.eq(1)
            with m.If(rx_take):
                m.d.sync += left.eq(left - 1)
                with m.If(left == 0):
                    m.next = "REPLY"
            with m.Elif(timed_out):
                m.next = "REPLY"

        with m.State("PAYLOAD"):
            # INFER input words straight into the engine, low byte first.
            m.d.comb += s.in_frame.eq(1)
            m.d.comb += [self.act_out.payload.eq(Cat(lo_byte, rx_byte))]
            with m.If(~have_lo):
                with m.If(rx_take):
                    m.d.sync += [lo_byte.eq(rx_byte), have_lo.eq(1)]
                    s.crc_in()
            with m.Else():
                # High byte: pass it on only when the engine takes the word.
                m.d.comb += [self.act_out.valid.eq(self.rx.valid)]
                m.d.comb += s.rx_hold.eq(~self.act_out.ready)
                with m.If(rx_take):
                    m.d.sync += have_lo.eq(0)
                    s.crc_in()
                    m.d.sync += words_left.eq(words_left - 1)
                    with m.If(words_left == 1):
                        m.next = "CRC"
            with m.If(timed_out & ~rx_take):
                m.d.sync += s.err.eq(P.ERR_TIMEOUT)
                m.next = "PAD"

    def _rx_load(self, m, s):
        """LOAD (header bytes, then words written as they arrive) and LCHK (header checks)."""
        rx_byte, left, lo_byte, have_lo = self.rx.payload, s.left, s.lo_byte, s.have_lo
        l_idx, l_addr = s.l_idx, s.l_addr
        with m.State("LOAD"):
            # mem, address (then LCHK), then words written one by one as their high byte
            # arrives.
            m.d.comb += s.in_frame.eq(1)
            with m.If(s.rx_take):
                s.crc_in()
                m.d.sync += left.eq(left - 1)
                with m.Switch(l_idx):
                    with m.Case(0):
                        m.d.sync += [self.load_mem.eq(rx_byte), l_idx.eq(1)]
                    with m.Case(1):
                        m.d.sync += [l_addr[:8].eq(rx_byte), l_idx.eq(2)]
                    with m.Case(2):
                        m.d.sync += [l_addr[8:].eq(rx_byte), l_idx.eq(3), have_lo.eq(0),
                                     s.l_big.eq(rx_byte[LOAD_ADDR_BITS - 8:] != 0)]
                        m.next = "LCHK"
                    with m.Default():
                        with m.If(~have_lo):
                            m.d.sync += [lo_byte.eq(rx_byte), have_lo.eq(1)]
                        with m.Else():
                            m.d.comb += self.load_we.eq(1)
                            m.d.sync += [l_addr.eq(l_addr + 1), have_lo.eq(0)]
                        with m.If(left == 1):
                            m.next = "CRC"
            with m.Elif(s.timed_out):
                s.reply(P.ERR_TIMEOUT)

        with m.State("LCHK"):
            # The LOAD header, checked before any word is written (one cycle, no byte
            # taken): an existing memory, the words inside it, at the cursor or at 0/0.
            m.d.comb += [s.in_frame.eq(1), s.rx_hold.eq(1)]
            restart = (self.load_mem == 0) & (l_addr == 0)
            at_cursor = (self.load_mem == s.cur_mem) & (l_addr == s.cur_addr)
            with m.If((self.load_mem < self.loads) & ~s.l_big & (restart | at_cursor)
                      & (s.end <= s.depth)):
                m.d.sync += [s.loaded.eq(0), s.cur_mem.eq(self.load_mem),
                             s.cur_addr.eq(l_addr), s.l_last.eq(s.end == s.depth)]
                m.next = "LOAD"
            with m.Else():
                s.refuse(P.ERR_ADDRESS)

    def _rx_crc(self, m, s):
        """CRC (the verdict: which reply, and LOAD's cursor / COMMIT's flag) and GAP."""
        loads, cmd, reply, discard = self.loads, s.cmd, s.reply, s.discard
        with m.State("CRC"):
            m.d.comb += s.in_frame.eq(1)
            ok = Signal()
            m.d.comb += ok.eq(self.rx.payload == s.crc)
            with m.If(s.rx_take):
                with m.If((cmd == P.CMD_INFER) & ~ok):
                    discard(P.ERR_CRC)
                with m.Elif(~ok):
                    reply(P.ERR_CRC)
                if loads:
                    with m.Elif(cmd == P.CMD_LOAD):
                        # A good LOAD moves the cursor past its words.
                        with m.If(s.l_last):
                            m.d.sync += [s.cur_mem.eq(s.cur_mem + 1), s.cur_addr.eq(0)]
                        with m.Else():
                            m.d.sync += s.cur_addr.eq(s.l_addr)
                        reply(0)
                    with m.Elif((cmd == P.CMD_COMMIT) & (s.cur_mem != loads)):
                        reply(P.ERR_NOT_LOADED)
                    with m.Elif(cmd == P.CMD_COMMIT):
                        m.d.sync += s.loaded.eq(1)
                        reply(0)
                with m.Else():
                    reply(0)  # a good INFER: its outputs stream into the reply
            with m.Elif(s.timed_out):
                with m.If(cmd == P.CMD_INFER):
                    discard(P.ERR_TIMEOUT)
                with m.Else():
                    reply(P.ERR_TIMEOUT)

        with m.State("GAP"):
            # Bytes came in while a reply went out: wait for a quiet line before hunting.
            m.d.comb += s.in_frame.eq(1)
            m.d.sync += s.dropped.eq(0)
            with m.If(s.timed_out):
                m.next = "IDLE"

    # -- the reply sender --------------------------------------------------------------------
    # PAD, DISCARD (an INFER's leftovers), REPLY, T_*: the reply, byte by byte.

    def _sender(self, m, s):
        """The sender's states, stage by stage (signals in `s`, shared with the receiver)."""
        self._tx_signals(m, s)
        self._tx_drain(m, s)
        self._tx_choose(m, s)
        self._tx_header(m, s)
        self._tx_payload(m, s)
        self._tx_crc(m, s)

    def _tx_signals(self, m, s):
        """The reply's table of 32-bit words and the sender's registers (into `s`)."""
        n_out, n_l = self.out_features, self.num_layers
        s.best = Signal(signed(16), name="best")
        s.best_idx = Signal.like(self.digit, name="best_idx")
        dropped = s.dropped

        def answering():
            m.d.sync += dropped.eq(dropped | s.rx_take)

        s.answering = answering
        # The reply payload: the engine's output words (INFER only, streamed from act_in), then
        # 32-bit words from one table, sent LSB first through a 24-bit shift register. Each
        # reply starts at its own place in the table: INFER's words are the tail of COUNT's.
        ping_bytes = bytes([P.VERSION, self.pes, n_l]) + self.in_features.to_bytes(2, "little")
        ping_bytes += n_out.to_bytes(2, "little")
        ping_bytes += (self.clock_hz & 0xFFFFFFFF).to_bytes(4, "little")
        assert len(ping_bytes) == 11
        s.ping_len = len(ping_bytes)
        ping_words = [int.from_bytes(ping_bytes[i:i + 4], "little") for i in (0, 4, 8)]
        flags = Cat(s.loaded, Const(int(self.lockstep), 1))
        table = [Cat(s.err, s.cmd),  # ERROR: the code and the command it refuses
                 Const(ping_words[0], 32), Const(ping_words[1], 32),
                 Cat(Const(ping_words[2], 24), flags),
                 self.inferences, self.errors, self.cycles,
                 *[self.layer_cycles[i] for i in range(n_l)]]
        words = Array(Signal(32, name=f"tail{i}") for i in range(len(table)))
        for w, v in zip(words, table):
            m.d.comb += w.eq(v)
        s.words = words

        r_cmd = Signal(8)
        max_reply = max(2 * n_out + 4 + 4 * n_l, 12 + 4 * n_l, 12)
        r_len = Signal(range(max_reply + 1))
        r_k = Signal(range(max(max_reply, n_out) + 1))  # payload byte; output word (DISCARD)
        r_w = Signal(range(len(table)))  # the table word sent next
        r_b = Signal(2)  # byte within the table word
        o_left = Signal(range(n_out + 1))  # output words still to come from the engine
        r_byte = Signal(8)
        wreg = Signal(24)
        r_crc = Signal(8)
        s.r_cmd, s.r_len, s.r_k, s.r_w, s.r_b = r_cmd, r_len, r_k, r_w, r_b
        s.o_left, s.r_byte, s.wreg, s.r_crc = o_left, r_byte, wreg, r_crc
        # One CRC step for every byte sent (the states only choose the byte).
        s.tx_crc = crc8_step(r_crc, self.tx.payload)

    def _tx_drain(self, m, s):
        """PAD and DISCARD: an INFER answered with ERROR still runs through the engine."""
        words_left, r_k = s.words_left, s.r_k
        with m.State("PAD"):
            # Abandoned INFER: complete the engine's input with zeros.
            s.answering()
            m.d.comb += [self.act_out.valid.eq(1), self.act_out.payload.eq(0)]
            with m.If(self.act_out.ready):
                m.d.sync += words_left.eq(words_left - 1)
                with m.If(words_left == 1):
                    m.next = "DISCARD"

        with m.State("DISCARD"):
            # The engine's outputs of an INFER answered with ERROR: taken and dropped.
            s.answering()
            m.d.comb += self.act_in.ready.eq(1)
            with m.If(self.act_in.valid):
                m.d.sync += r_k.eq(r_k + 1)
                with m.If(r_k == self.out_features - 1):
                    m.next = "REPLY"

    def _tx_choose(self, m, s):
        """REPLY: choose the reply's command, payload length and where in the table it starts."""
        n_out, n_l, cmd, err = self.out_features, self.num_layers, s.cmd, s.err
        W_ERROR, W_PING, W_COUNT, W_INFER = 0, 1, 4, 6
        with m.State("REPLY"):
            s.answering()
            m.d.sync += [s.r_k.eq(0), s.r_b.eq(0), s.r_crc.eq(0xFF), s.o_left.eq(0)]
            with m.If(err != 0):
                m.d.sync += [s.r_cmd.eq(P.CMD_ERROR), s.r_len.eq(2), s.r_w.eq(W_ERROR)]
                m.d.sync += [self.errors.eq(self.errors + 1), self.error_flag.eq(1)]
            with m.Else():
                m.d.sync += [s.r_cmd.eq(cmd), self.error_flag.eq(0)]
                with m.Switch(cmd):
                    with m.Case(P.CMD_PING):
                        m.d.sync += [s.r_len.eq(s.ping_len + 1), s.r_w.eq(W_PING)]
                    with m.Case(P.CMD_COUNT):
                        m.d.sync += [s.r_len.eq(12 + 4 * n_l), s.r_w.eq(W_COUNT)]
                    with m.Case(P.CMD_LOAD, P.CMD_COMMIT):
                        m.d.sync += s.r_len.eq(0)
                    with m.Default():  # INFER
                        m.d.sync += [s.r_len.eq(2 * n_out + 4 + 4 * n_l), s.r_w.eq(W_INFER),
                                     s.o_left.eq(n_out)]
                        m.d.sync += self.inferences.eq(self.inferences + 1)
            m.next = "T_SYNC"

    def _tx_header(self, m, s):
        """T_SYNC .. T_LEN1: the reply's header bytes."""

        def send(value, nxt, *, add_crc=True):
            s.answering()
            m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(value)]
            with m.If(self.tx.ready):
                if add_crc:
                    m.d.sync += s.r_crc.eq(s.tx_crc)
                m.next = nxt

        with m.State("T_SYNC"):
            send(P.SYNC_REP, "T_CMD", add_crc=False)
        with m.State("T_CMD"):
            send(s.r_cmd, "T_LEN0")
        with m.State("T_LEN0"):
            send(s.r_len & 0xFF, "T_LEN1")
        with m.State("T_LEN1"):
            send(s.r_len >> 8, "T_LOAD")

    def _tx_payload(self, m, s):
        """T_LOAD / T_BODY: the payload, one byte per pair (output words, then table words)."""
        r_k, r_b, r_w, o_left, r_byte, wreg = s.r_k, s.r_b, s.r_w, s.o_left, s.r_byte, s.wreg
        words, best, best_idx = s.words, s.best, s.best_idx
        with m.State("T_LOAD"):
            # The next payload byte into r_byte: the low byte of an output word as the
            # engine delivers it (the high byte waits in wreg), or a byte of a table word.
            # The table words of an INFER (its cycle counters) wait until the engine is idle.
            s.answering()
            is_out = o_left != 0
            with m.If(r_k == s.r_len):
                m.next = "T_CRC"
            with m.Elif(is_out & ~r_k[0]):
                m.d.comb += self.act_in.ready.eq(1)
                with m.If(self.act_in.valid):
                    y = self.act_in.payload
                    m.d.sync += [r_byte.eq(y[:8]), wreg.eq(y[8:])]
                    m.next = "T_BODY"
            with m.Elif(is_out):
                m.d.sync += [r_byte.eq(wreg[:8]), o_left.eq(o_left - 1)]
                m.next = "T_BODY"
            with m.Elif(~self.busy):
                m.d.sync += r_b.eq(r_b + 1)
                with m.If(r_b == 0):
                    m.d.sync += [r_byte.eq(words[r_w][:8]), wreg.eq(words[r_w][8:]),
                                 r_w.eq(r_w + 1)]
                with m.Else():
                    m.d.sync += [r_byte.eq(wreg[:8]), wreg.eq(wreg >> 8)]
                m.next = "T_BODY"
        with m.State("T_BODY"):
            s.answering()
            m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(r_byte)]
            with m.If(self.tx.ready):
                m.d.sync += [s.r_crc.eq(s.tx_crc), r_k.eq(r_k + 1)]
                m.next = "T_LOAD"
                # The argmax for the LEDs, from the output word just registered (not from
                # the engine's output multiplexer: that path limited the board's clock).
                with m.If((o_left != 0) & ~r_k[0]):
                    y = Cat(r_byte, wreg[:8]).as_signed()
                    newbest = (r_k[1:] == 0) | (y > best)
                    with m.If(newbest):
                        m.d.sync += [best.eq(y), best_idx.eq(r_k[1:])]
                    with m.If(r_k[1:] == self.out_features - 1):
                        m.d.sync += self.digit.eq(Mux(newbest, r_k[1:], best_idx))

    def _tx_crc(self, m, s):
        """T_CRC: the reply's last byte; then IDLE, or GAP if bytes came in meanwhile."""
        with m.State("T_CRC"):
            s.answering()
            m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(s.r_crc)]
            with m.If(self.tx.ready):
                m.d.sync += s.r_k.eq(0)  # DISCARD counts output words from 0
                # Bytes came in during the reply: the tail of some frame; wait for quiet.
                with m.If(s.dropped | s.rx_take):
                    m.next = "GAP"
                with m.Else():
                    m.next = "IDLE"
