"""Reading XLA's HLO text: which operations move the bytes of a step, and how
many times a loop body runs.

`compiled.cost_analysis()` gives one total per program and counts the body of
a `while` loop once, however many times it runs (`nn.scan` over layers,
gradient accumulation). This module reads the program's text
(`compiled.as_text()`, or `lowered.as_text(dialect="hlo")` before
optimisation) to put those right:
- `hlo_text.parse` splits it into computations and instructions;
- `multiplicities` says how many times each computation runs per step (a
  loop body: its trip count, read from the loop's condition);
- `instruction_bytes` is what one instruction reads and writes in memory
  (its operands and its output; a fusion's internal values stay on chip);
- `dot_flops` counts matrix-multiply FLOPs (2 per multiply-add);
- `declared_cost` is what a kernel (a Pallas/Mosaic `tpu_custom_call`)
  declares it costs (`pl.CostEstimate`), which XLA's totals count in its
  place; `undeclared_kernels` counts the kernels that declare nothing, whose
  cost is then unknown.
The figures are estimates of the same kind as XLA's own: they assume every
operand is read once and every output written once.

Two ways to count bytes. XLA's "bytes accessed" counts every operand and
output of every operation wherever it lives, the TPU's on-chip VMEM
included, and an async copy at both its start and its end; that is the
default here too, so the loop corrections add to XLA's total in its own
units. With `hbm=True` only the arrays in HBM (device memory) count: on TPU
the compiled program's layouts name the memory space, `S(1)` for VMEM (none
for HBM), and a copy between the two crosses HBM once. That is the traffic
the memory bandwidth limits.
"""

from __future__ import annotations

import math
import re

from smallgpt_jax.analysis.hlo_text import Computation, Instr, arrays, in_hbm, shape_bytes, split_top

# Opcodes that move no data of their own (their called computations are
# counted where they run) or only rename a buffer.
_FREE = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while",
         "call", "conditional", "after-all", "partition-id", "replica-id",
         "opt-barrier", "add-dependency"}
# TPU custom calls that only reserve a buffer or view adjacent slices as one.
_FREE_CALL = re.compile(r'custom_call_target="(AllocateBuffer|ConcatBitcast)"')
# Custom calls that run a kernel of their own (Pallas on TPU): XLA cannot see
# inside them and counts only what they declare.
_KERNEL_CALL = re.compile(r'custom_call_target="tpu_custom_call"')
_COST = re.compile(r'"cost_estimate":\s*\{([^}]*)\}')


def trip_count(while_instr: Instr, comps: dict[str, Computation]) -> int | None:
    """How many times a `while` runs its body: XLA's own known_trip_count, else
    the N of a condition `i < N` on a counter from 0 (how lax.scan and
    fori_loop lower); None if neither is there."""
    known = re.search(r'"known_trip_count":\{"n":"(\d+)"', while_instr.attrs)
    if known:
        return int(known.group(1))
    cond = comps.get(while_instr.attr("condition") or "")
    if cond is None or not cond.instrs:
        return None
    root = cond.instrs[-1]
    direction = re.search(r"direction=(\w+)", root.attrs)
    if root.opcode != "compare" or not direction or len(root.operands) != 2:
        return None
    side = {"LT": 1, "GT": 0}.get(direction.group(1))
    const = cond.by_name.get(root.operands[side]) if side is not None else None
    if const is None or const.opcode != "constant":
        return None
    try:
        return int(const.operands[0])
    except (ValueError, IndexError):
        return None


def multiplicities(comps: dict[str, Computation]) -> tuple[dict[str, int], bool]:
    """({computation: runs per program run}, every loop's trip count known).
    Only computations that run as a sequence of operations are listed (the
    entry, loop bodies and conditions, called and branch computations), not
    the insides of fusions or reductions."""
    entry = next(c for c in comps.values() if c.entry)
    runs, known, todo = {entry.name: 1}, True, [entry.name]
    while todo:
        comp = comps[todo.pop()]
        for instr in comp.instrs:
            called = []
            if instr.opcode == "while":
                n = trip_count(instr, comps)
                known &= n is not None
                called = [(instr.attr("body"), n or 1), (instr.attr("condition"), n or 1)]
            elif instr.opcode in ("call", "async-start"):
                called = [(instr.attr("to_apply") or instr.attr("calls"), 1)]
            elif instr.opcode == "conditional":
                names = re.search(r"branch_computations=\{([^}]*)\}", instr.attrs)
                branches = ([b.strip().lstrip("%") for b in names.group(1).split(",")]
                            if names else [instr.attr("true_computation"),
                                           instr.attr("false_computation")])
                called = [(b, 1) for b in branches]
            for name, n in called:
                if name in comps and name not in runs:
                    runs[name] = runs[comp.name] * n
                    todo.append(name)
    return runs, known


def _part_read(comps: dict, fused: Computation | None, index: int,
               padded: bool) -> float | None:
    """Bytes a fusion reads of its operand `index` when it reads only slices
    of it (a scanned layer's row of stacked weights or activations), looking
    through bitcasts and nested fusions; None when it may read all of it.
    An operand it updates in place counts nothing here (see `_writes`)."""
    if fused is None:
        return None
    param = next((i for i in fused.instrs if i.opcode == "parameter"
                  and i.operands == [str(index)]), None)
    return None if param is None else _read_of(comps, fused, param, padded, 0)


def _read_of(comps: dict, comp: Computation, value: Instr, padded: bool,
             depth: int) -> float | None:
    users = [u for u in comp.instrs if value.name in u.operands]
    if not users or depth > 8:
        return None
    total = 0.0
    for u in users:
        if u.opcode in ("slice", "dynamic-slice") and u.operands[0] == value.name:
            part = shape_bytes(u.shape, padded)
        elif u.opcode == "dynamic-update-slice" and u.operands[0] == value.name:
            part = 0.0
        elif u.opcode == "bitcast":
            part = _read_of(comps, comp, u, padded, depth + 1)
        elif u.opcode == "fusion" and u.attr("calls") in comps:
            nested = comps[u.attr("calls")]
            part = 0.0
            for k in (k for k, o in enumerate(u.operands) if o == value.name):
                inner = _part_read(comps, nested, k, padded)
                part = None if inner is None or part is None else part + inner
        else:
            part = None
        if part is None:
            return None
        total += part
    return min(total, shape_bytes(value.shape, padded))


def _through_bitcasts(comp: Computation, instr: Instr | None) -> Instr | None:
    while instr is not None and instr.opcode == "bitcast":
        instr = comp.by_name.get(instr.operands[0])
    return instr


def _writes(instr: Instr, fused: Computation | None, padded: bool,
            hbm: bool = False) -> tuple[float, set]:
    """(bytes a fusion writes, indices of operands it updates in place). A
    dynamic-update-slice of a fusion parameter (a scan writing its step's row
    of a stacked result) writes only the update and reads nothing of the rest
    of the buffer; every other output is written whole. `hbm`: only outputs
    in HBM, by the fusion's own output layouts (those inside a fusion need
    not name the memory space)."""
    if fused is None or not fused.instrs:
        return shape_bytes(instr.shape, padded, hbm), set()
    root = fused.instrs[-1]
    parts = ([fused.by_name.get(o) for o in root.operands] if root.opcode == "tuple"
             else [root])
    outs = arrays(instr.shape)
    written, in_place = 0.0, set()
    for k, part in enumerate(parts):
        counts = not hbm or len(outs) != len(parts) or in_hbm(outs[k][2])
        dus = _through_bitcasts(fused, part)
        buffer = (_through_bitcasts(fused, fused.by_name.get(dus.operands[0]))
                  if dus is not None and dus.opcode == "dynamic-update-slice" else None)
        if buffer is not None and buffer.opcode == "parameter":
            in_place.add(int(buffer.operands[0]))
            written += counts * shape_bytes(fused.by_name[dus.operands[1]].shape, padded)
        elif part is not None:
            written += counts * shape_bytes(part.shape, padded)
    return written, in_place


def instruction_bytes(instr: Instr, comp: Computation, comps: dict[str, Computation],
                      padded: bool = False, hbm: bool = False) -> float:
    """Bytes one run of `instr` reads and writes in memory (0 for those that
    move nothing: parameters, tuples, loops whose bodies count on their own);
    `hbm`: only those in HBM (see the module's docstring)."""
    if instr.opcode == "copy-start" and hbm:
        # Its output tuple holds both ends (and a u32[] context in sync-flag
        # memory): one read or write where an end is in HBM. Counted here,
        # not again at its -done.
        return shape_bytes(instr.shape, padded, hbm)
    if instr.opcode == "slice-start" and hbm:
        # ((the whole source), the slice, context): the slice's size, read
        # where the source is in HBM and written where the slice is.
        source, part = split_top(instr.shape[1:-1])[:2]
        ends = bool(shape_bytes(source, hbm=True)) + bool(shape_bytes(part, hbm=True))
        return ends * shape_bytes(part, padded)
    if instr.opcode in ("copy-done", "slice-done"):
        # XLA's total counts an async copy (on TPU, most move arrays between
        # HBM and on-chip VMEM) again where it ends: its output read and written.
        return 0.0 if hbm else 2 * shape_bytes(instr.shape, padded)
    if (instr.opcode in _FREE or instr.opcode.endswith("-done")
            or _FREE_CALL.search(instr.attrs)):
        return 0.0
    if instr.opcode == "slice-start":  # Reads its slice, writes it elsewhere (VMEM on TPU).
        return 2 * shape_bytes(split_top(instr.shape[1:-1])[1], padded)
    declared = declared_cost(instr)
    if declared is not None:  # A kernel: XLA counts what it declares.
        return declared["bytes_accessed"]
    if instr.opcode == "dynamic-update-slice":  # In place: the update is read and written.
        update = comp.by_name.get(instr.operands[1])
        if update is None:
            return 0.0
        if not hbm:
            return 2 * shape_bytes(update.shape, padded)
        return (shape_bytes(update.shape, padded, hbm)
                + shape_bytes(update.shape, padded) * (shape_bytes(instr.shape, hbm=True) > 0))
    fused = comps.get(instr.attr("calls") or "") if instr.opcode == "fusion" else None
    written, in_place = _writes(instr, fused, padded, hbm)
    read = 0.0
    for k, name in enumerate(instr.operands):
        source = comp.by_name.get(name)
        if source is None or k in in_place or (hbm and not shape_bytes(source.shape, hbm=True)):
            continue
        sliced = _part_read(comps, fused, k, padded)
        read += sliced if sliced is not None else shape_bytes(source.shape, padded, hbm)
    if instr.opcode.endswith("-start"):  # An async copy: read once, written once.
        return read + written if hbm else 2 * read
    return read + written


def dot_flops(instr: Instr, comp: Computation) -> float:
    """2 x (output elements) x (contracted size) for a `dot`, else 0."""
    if instr.opcode != "dot":
        return 0.0
    lhs = comp.by_name.get(instr.operands[0])
    dims = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", instr.attrs)
    if lhs is None or not dims or not arrays(lhs.shape) or not arrays(instr.shape):
        return 0.0
    lhs_dims = arrays(lhs.shape)[0][1]
    contracted = math.prod(lhs_dims[int(d)] for d in dims.group(1).split(",") if d)
    return 2.0 * math.prod(arrays(instr.shape)[0][1]) * contracted


def hbm_bytes(comps: dict[str, Computation], runs: dict[str, int]) -> float:
    """Bytes that cross HBM per run of the program: every operation's
    operands and outputs in HBM, times the runs of its computation."""
    return sum(n * instruction_bytes(i, comps[c], comps, hbm=True)
               for c, n in runs.items() for i in comps[c].instrs)


def is_kernel(instr: Instr) -> bool:
    """Whether `instr` runs a kernel XLA cannot look into (a Pallas call)."""
    return instr.opcode == "custom-call" and _KERNEL_CALL.search(instr.attrs) is not None


def declared_cost(instr: Instr) -> dict[str, float] | None:
    """A kernel's declared cost ({'flops', 'transcendentals',
    'bytes_accessed'}), or None: not a kernel, or one that declares none."""
    m = _COST.search(instr.attrs) if is_kernel(instr) else None
    if m is None:
        return None
    found = dict(re.findall(r'"(\w+)":\s*"?(\d+)"?', m.group(1)))
    return {k: float(found.get(k, 0)) for k in ("flops", "transcendentals", "bytes_accessed")}


def kernel_flops(instr: Instr) -> float:
    """The FLOPs a kernel declares; 0 for any other instruction."""
    declared = declared_cost(instr)
    return declared["flops"] if declared else 0.0


def undeclared_kernels(comps: dict[str, Computation]) -> int:
    """How many kernels declare no cost: XLA counts them as 0 FLOPs and
    only their operands' and outputs' bytes, so a program's totals are
    unknown, not those figures."""
    return sum(is_kernel(i) and declared_cost(i) is None
               for c in comps.values() for i in c.instrs)
