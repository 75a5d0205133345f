"""Reading XLA's HLO text into computations and instructions, and the bytes
of a shape as printed there (`hlo_cost` counts a program's bytes and FLOPs
from it).

An instruction line reads `name = SHAPE opcode(operands), attributes`; a
shape carries its layout in braces, on TPU with the tiling and the memory
space: `bf16[16384,384]{1,0:T(8,128)(2,1)S(1)}` is an array tiled in 8 x 128
blocks that lives in VMEM (`S(1)`), the chip's on-chip memory.
"""

from __future__ import annotations

import dataclasses
import math
import re

ITEMSIZE = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2,
             "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8,
             "f64": 8, "c64": 8, "c128": 16}
_ARRAY = re.compile(r"\b(pred|[su](?:4|8|16|32|64)|bf16|f16|f32|f64|c64|c128|f8\w*)"
                    r"\[([\d,]*)\](?:\{([^}]*)\})?")
_INSTR = re.compile(r"^\s+(?:ROOT )?%?([\w.\-]+) = (.*)$")
_HEADER = re.compile(r"^(ENTRY )?%?([\w.\-]+) .*\{$")


@dataclasses.dataclass
class Instr:
    name: str
    shape: str  # The output shape as printed, layouts included.
    opcode: str
    operands: list[str]  # Operand names (or literals, for a constant).
    attrs: str  # Everything after the operands.

    def attr(self, key: str) -> str | None:
        m = re.search(rf"\b{key}=%?([\w.\-]+)", self.attrs)
        return m.group(1) if m else None

    @property
    def op_name(self) -> str:
        m = re.search(r'op_name="([^"]*)"', self.attrs)
        return m.group(1) if m else ""


@dataclasses.dataclass
class Computation:
    name: str
    entry: bool
    instrs: list[Instr]

    def __post_init__(self):
        self.by_name = {i.name: i for i in self.instrs}


def _balanced(text: str, start: int) -> int:
    """The index just past the parenthesis that closes text[start] == '('."""
    depth = 0
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return i + 1
    return len(text)


def split_top(text: str) -> list[str]:
    """`text` split at the commas that are outside any brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _instruction(name: str, rest: str) -> Instr | None:
    if rest.startswith("("):  # A tuple shape, which may hold parentheses (tiles).
        end = _balanced(rest, 0)
    else:
        end = rest.find(" ")
    shape, after = rest[:end], rest[end:].lstrip()
    m = re.match(r"([\w\-]+)\(", after)
    if not m:
        return None
    close = _balanced(after, m.end() - 1)
    operands = [p.split()[-1].lstrip("%") for p in split_top(after[m.end():close - 1])]
    return Instr(name, shape, m.group(1), operands, after[close:])


def parse(text: str) -> dict[str, Computation]:
    """{computation name: Computation} of an HLO module's text."""
    comps, current = {}, None
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header and not line.startswith(" "):
            current = Computation(header.group(2), bool(header.group(1)), [])
            comps[current.name] = current
            continue
        m = _INSTR.match(line) if current is not None else None
        if m:
            instr = _instruction(m.group(1), m.group(2))
            if instr:
                current.instrs.append(instr)
        elif line.rstrip() == "}":  # The computation ends.
            current = None
        elif current is not None and current.instrs and line and not line[0].isspace():
            # The program before optimisation prints a kernel's backend
            # config (its cost estimate) over several lines.
            current.instrs[-1].attrs += line
    for c in comps.values():
        c.__post_init__()
    return comps


def arrays(shape: str) -> list[tuple[str, tuple[int, ...], str]]:
    """(dtype, dims, layout) of every array in a (tuple) shape."""
    return [(m.group(1), tuple(int(d) for d in m.group(2).split(",") if d), m.group(3) or "")
            for m in _ARRAY.finditer(shape)]


def in_hbm(layout: str) -> bool:
    """Whether an array of this layout lives in device memory (HBM): a TPU
    layout names any other memory space, e.g. '1,0:T(8,128)(2,1)S(1)' for
    VMEM; S(0) or none is the default, HBM (or a CPU's memory)."""
    space = re.search(r"S\((\d+)\)", layout)
    return space is None or space.group(1) == "0"


def shape_bytes(shape: str, padded: bool = False, hbm: bool = False) -> float:
    """Bytes of a shape; `padded`: with its minor dimensions rounded up to the
    first tile of its layout (e.g. T(8,128) on TPU), as memory holds it;
    `hbm`: only its arrays in HBM."""
    total = 0.0
    for dtype, dims, layout in arrays(shape):
        if hbm and not in_hbm(layout):
            continue
        dims = list(dims)
        if padded and ":" in layout:
            minor_to_major, tiling = layout.split(":", 1)
            order = [int(d) for d in minor_to_major.split(",") if d]
            tile = re.match(r"T\(([\d,]+)\)", tiling)
            if tile and order:
                sizes = [int(t) for t in tile.group(1).split(",")][::-1]
                for dim, size in zip(order, sizes):
                    dims[dim] = -(-dims[dim] // size) * size
        total += math.prod(dims) * ITEMSIZE.get(dtype, 1)
    return total
