"""The engine registry: one record per engine, the one place that names the engines.

An `Engine` record holds everything the rest of the house needs to know about an engine:

* `name`: what `--engine` takes, report.json names and the board reports in PING;
* `protocol_id`: the engine's number in the board protocol's PING reply (fpga/protocol.py);
* `image_type`, `build`: the image the engine is built from and its builder
  (`build(qnet, pes, *, index_bits=4, rel_bits="auto", balance=True)`);
* `memory_map`: `memory_map(image, params)`, every memory the engine makes, in its order;
  `memory_bound(nonzeros, shape, pes, ...)`, the same at its least from the non-zero counts
  alone (before any row placement: a network that cannot fit is told at once), and `unplaced`,
  the image options of a quick placement without search;
* `component`: where its Amaranth component is, "module:Class" (imported by `hw.make_engine`
  only when an engine is made, so this registry stays numpy only); the class takes the image,
  the fields of `params` as keywords and `memories`, and has a classmethod `check(image,
  **params)` that refuses what it cannot build before anything is made;
* `params`: its typed parameter dataclass (a subclass of `images.params.EngineParams`) and
  `defaults`, the parameters and PE count per board (a board name, else its FPGA family, else
  "sim": the RTL benches of tb);
* `cycle_model`: `cycle_model(image, x, params)`, its compute cycles [batch, layers] without
  Verilog;
* what the rest of the house adapts to: `layer_kinds` (the layer kinds it runs,
  `images.layers`; `board_layer_kinds`, those it runs on the boards when fewer), `overlap` (it
  takes the next input while computing), `no_rw_check` (it never uses a read of the word
  written in the same cycle), `codebook_in_logic` (its codebooks
  are constants in logic), `logic_of`/`padded` (what of an image is logic, and the image padded
  to its shape's memory depths: networks of one shape share one compiled simulator).

`register(record)` adds an engine: a new engine is an image module, a component package and one
`register` call (tests/test_engine_registry.py does it with a stand-in). Everything else asks
here: `get(name)`, `engine_of(image)`, `names()`, `registered()`, `build_image`,
`memory_specs`, `MAX_PES`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from compress.errors import InputError
from compress.qnet import DEFAULT_INDEX_BITS

from . import eie, lanes, lockstep
from .csc import DEFAULT_REL_BITS
from .layers import check_kinds
from .memmap import MemorySpec
from .params import EngineParams

# The most PEs any engine and any command line takes: the one PE limit.
MAX_PES = 64

# The engine the RTL benches (tb: `make sim`, `tb run`) run when not told which.
SIM_ENGINE = "eie"
SIM = "sim"  # the defaults' key for the RTL benches


@dataclass(frozen=True)
class Defaults:
    """An engine's parameters on a board, and its PEs there (None: as many as fit)."""

    params: EngineParams
    pes: int | None = 8


@dataclass(frozen=True)
class Engine:
    name: str
    protocol_id: int
    summary: str  # one line: what the engine is (help texts)
    image_type: type
    build: Callable
    memory_map: Callable[..., list[MemorySpec]]
    component: str | type
    params: type
    defaults: Mapping[str, Defaults]
    cycle_model: Callable
    logic_of: Callable[..., dict]
    padded: Callable
    memory_bound: Callable[..., list[MemorySpec]] | None = None
    unplaced: Mapping[str, object] = field(default_factory=dict)
    # build options under which the engine's logic depends on the network's shape alone, not
    # on its weights (`tb.randomnets`: one Verilog per shape)
    fixed_shape: Mapping[str, object] = field(default_factory=dict)
    layer_kinds: tuple[str, ...] = ("fc",)
    board_layer_kinds: tuple[str, ...] | None = None  # on the boards (None: layer_kinds)
    overlap: bool = False
    no_rw_check: bool = False
    codebook_in_logic: bool = False
    title: Callable[[EngineParams], str] = field(default=lambda p: "engine")
    # the image options the boards build a network with (qnet, pes) -> dict (None: none), and
    # the matching `memory_bound` options before any placement
    board_options: Callable[..., dict] | None = None
    board_bound: Callable[..., dict] | None = None

    def defaults_for(self, board: str = SIM, family: str | None = None) -> Defaults:
        """The parameters and PEs on `board` (else its `family`, else the RTL benches')."""
        for key in (board, family, SIM):
            if key in self.defaults:
                return self.defaults[key]
        return Defaults(self.params())

    def params_for(self, board: str = SIM, family: str | None = None, **values) -> EngineParams:
        """The defaults on `board` with `values` for the fields this engine has."""
        return self.defaults_for(board, family).params.with_values(**values)

    @property
    def has_dense(self) -> bool:
        """Whether the engine has a dense baseline (`sparse=False`)."""
        return "sparse" in self.params.names()


_ENGINES: dict[str, Engine] = {}


def register(record: Engine) -> Engine:
    """Add an engine; its name, protocol id and image type must be new."""
    for other in _ENGINES.values():
        if record.name == other.name or record.protocol_id == other.protocol_id \
                or record.image_type is other.image_type:
            raise ValueError(f"engine {record.name!r} clashes with {other.name!r} (name, "
                             f"protocol id or image type)")
    if not issubclass(record.params, EngineParams):
        raise TypeError(f"engine {record.name!r}: params must subclass EngineParams")
    _ENGINES[record.name] = record
    return record


def unregister(name: str) -> None:
    """Remove an engine (a test's stand-in)."""
    _ENGINES.pop(name, None)


def names() -> tuple[str, ...]:
    return tuple(_ENGINES)


def registered() -> tuple[Engine, ...]:
    """Every engine's record, in registration order."""
    return tuple(_ENGINES.values())


def get(name: str) -> Engine:
    """The engine called `name`; InputError naming the engines there are."""
    if name not in _ENGINES:
        raise InputError(f"unknown engine {name!r}: the engines are {', '.join(_ENGINES)}")
    return _ENGINES[name]


def engine_of(image) -> Engine:
    """The engine an image is for (by its type)."""
    for rec in _ENGINES.values():
        if isinstance(image, rec.image_type):
            return rec
    raise TypeError(f"not an image of a known engine: {type(image).__name__}")


def by_protocol_id(pid: int) -> Engine:
    for rec in _ENGINES.values():
        if rec.protocol_id == pid:
            return rec
    raise KeyError(pid)


def dense_baseline() -> Engine:
    """The engine whose dense baseline the benches compare against."""
    return next(rec for rec in _ENGINES.values() if rec.has_dense)


def check_pes(pes, what: str = "--pes") -> int:
    """`pes` if an engine can have that many PEs, else InputError naming the limit."""
    if isinstance(pes, bool) or not isinstance(pes, int) or not 1 <= pes <= MAX_PES:
        raise InputError(f"{what} must be 1..{MAX_PES}, not {pes!r}")
    return pes


def build_image(qnet, engine: str, pes: int, **options):
    """The image of `qnet` for `pes` PEs of `engine` (options: index_bits, rel_bits, and the
    engine's own: balance for eie; placement, perms, seed for lockstep)."""
    rec = get(engine)
    check_kinds(qnet, rec.layer_kinds, rec.name)
    return rec.build(qnet, pes, **options)


def memory_specs(image, params: EngineParams | None = None) -> list[MemorySpec]:
    """Every memory the engine of `image` makes with `params` (default: its own defaults)."""
    rec = engine_of(image)
    return rec.memory_map(image, rec.params() if params is None else params)


# ---- the two engines -------------------------------------------------------------------------


def _build_lockstep(qnet, pes, *, index_bits=DEFAULT_INDEX_BITS, rel_bits=eie.REL_BITS_AUTO,
                    balance=True, **options):
    """The lockstep image; rel_bits "auto" is its default (4). The rows of its hidden layers are
    placed by its own search (`placement`), which `balance` does not change."""
    rb = eie.parse_rel_bits(rel_bits)
    if rb == eie.REL_BITS_FAST:
        # its cycles are its slots (docs/lanes.md), not a PE's entries: no speed search here
        raise InputError("--rel-bits fast is for the EIE engine; the lockstep engine takes auto "
                         "(4) or an integer 1..12")
    return lockstep.build_lockstep(qnet, pes, index_bits=index_bits,
                                   rel_bits=DEFAULT_REL_BITS if rb == eie.REL_BITS_AUTO else rb,
                                   **options)


def _build_eie(qnet, pes, **options):
    return eie.build_rom(qnet, pes=pes, **options)


EIE = register(Engine(
    name="eie", protocol_id=0,
    summary="the EIE engine: every PE with its own column queue and memories (hw/eie)",
    image_type=eie.RomImage, build=_build_eie, memory_map=eie.memory_map,
    component="hw.eie:Engine", params=eie.EieParams,
    defaults={SIM: Defaults(eie.EieParams()),
              # the queues are flip-flops: at depth 8 two PEs do not fit the UP5K
              "ice40": Defaults(eie.EieParams(queue_depth=4), pes=None),
              # ECP5 (ULX3S 85F): the engine at full size, the front end pipelined for the
              # clock and four columns a cycle, queues of 20 (LeNet-300-100's layers 2 and 3
              # were bound by two columns a cycle; 20 is where the cycle model stops gaining),
              # the image's relative index `fast` (`fpga.boards.ecp5.FOUR_WIDE`): 76 % MAC
              # utilisation at 50 MHz, docs/fpga.md section 7
              "ecp5": Defaults(eie.EieParams(pipelined=True, issue_width=4, queue_depth=20),
                               pes=16)},
    cycle_model=eie.cycle_model, logic_of=eie.logic_of, padded=eie.padded,
    memory_bound=eie.memory_bound, unplaced={"rel_bits": 4, "balance": False},
    layer_kinds=("fc", "conv"), title=lambda p: "EIE engine"))

LOCKSTEP = register(Engine(
    name="lockstep", protocol_id=1,
    summary="the lockstep engine: all PEs on one column, memories shared (hw/lockstep.py)",
    image_type=lockstep.LockstepImage, build=_build_lockstep, memory_map=lockstep.memory_map,
    component="hw.lockstep:LockstepEngine", params=lockstep.LockstepParams,
    defaults={SIM: Defaults(lockstep.LockstepParams(queue_depth=8)),
              # one output stage per 2 PEs saves 4 of 8 stages; per 4 PEs would save 2 more
              # for ~105 more DRAIN cycles per LeNet inference (1,197 against 1,092 between
              # results back to back) and only ~11 LCs since the drain's rework
              "ice40": Defaults(lockstep.LockstepParams(queue_depth=2, drain_share=2), pes=8)},
    cycle_model=lanes.lockstep_cycle_model, logic_of=lockstep.logic_of, padded=lockstep.padded,
    memory_bound=lockstep.memory_bound, unplaced={"placement": "interleave"},
    fixed_shape={"trim": False}, overlap=True,
    # conv layers in RTL (docs/lockstep.md, "Conv layers"); on the boards a CNN takes the
    # one-map layout (docs/lockstep.md, "On the board")
    layer_kinds=("fc", "conv"), board_options=lockstep.board_options,
    board_bound=lockstep.board_bound,
    no_rw_check=True, codebook_in_logic=True,
    title=lambda p: f"lockstep engine (drain_share {p.drain_share})"))
