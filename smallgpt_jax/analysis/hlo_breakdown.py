"""The bytes of a compiled step by operation (`--breakdown` of the compile
check): each top-level instruction of the optimised program, times its runs,
grouped by the JAX operation it comes from, so that a change to the model is
attributed to the operations whose traffic it changes. The counting itself is
hlo_cost's.
"""

from __future__ import annotations

import math
import re

from smallgpt_jax.analysis.hlo_cost import instruction_bytes, multiplicities
from smallgpt_jax.analysis.hlo_text import ITEMSIZE, Computation, Instr, arrays, parse


def _short(op_name: str) -> str:
    """A JAX op path, shortened: the step's wrappers dropped, every layer's
    index made '*' so the layers' copies of an operation group together."""
    name = op_name.split(";")[0]
    for wrapper in ("jit(train_body)/", "jit(eval_body)/", "while/body/", "closed_call/",
                    "jit(shmap_body)/", "shard_map/"):
        name = name.replace(wrapper, "")
    name = name.replace("transpose(jvp(GPT))", "backward").replace("jvp(GPT)", "forward")
    name = re.sub(r"block_\d+", "block_*", name)
    # Under remat the backward pass names the forward it runs again inside
    # it: the recomputation, and the backward of what was recomputed.
    name = re.sub(r"^backward/block_\*/forward/block_\*/checkpoint/rematted_computation/",
                  "recomputed/block_*/", name)
    return re.sub(r"^backward/block_\*/forward/block_\*/checkpoint/", "backward/block_*/", name)


def _largest_array(instr: Instr, comp: Computation) -> str:
    """The largest array `instr` reads or writes, as 'in f32[64,6,256,256]' or
    'out ...': a fusion whose first output is a scalar or a row of sums is
    named by the [B, H, T, S] array it streams through."""
    found = [("out", a) for a in arrays(instr.shape)]
    for name in instr.operands:
        source = comp.by_name.get(name)
        found += [("in", a) for a in arrays(source.shape)] if source else []
    if not found:
        return ""
    side, (dtype, dims, _) = max(found, key=lambda f: math.prod(f[1][1]) * ITEMSIZE.get(
        f[1][0], 1))
    return f"{side} {dtype}[{','.join(map(str, dims))}]"


def contributors(text: str) -> list[dict]:
    """Bytes per step by operation, largest first: each top-level instruction
    of the optimised program (fusions whole) times its runs, grouped by JAX op
    path, instruction kind and output shape, with the largest array each
    group's instructions read or write; 'bytes' as XLA counts them,
    'hbm_bytes' those that cross HBM."""
    comps = parse(text)
    runs, _ = multiplicities(comps)
    groups: dict[tuple, dict] = {}
    for cname, n in runs.items():
        comp = comps[cname]
        for instr in comp.instrs:
            moved = instruction_bytes(instr, comp, comps)
            if not moved:
                continue
            out = arrays(instr.shape)
            shape = (f"{out[0][0]}[{','.join(map(str, out[0][1]))}]" if out else instr.shape)
            shape += f" +{len(out) - 1}" if len(out) > 1 else ""
            kind = re.sub(r"\.\d+$", "", instr.name)
            op, source = instr.op_name, instr
            for _ in range(6):  # A copy (start, done, slices) is named by its source.
                if op or not source.operands or source.operands[0] not in comp.by_name:
                    break
                source = comp.by_name[source.operands[0]]
                op = source.op_name
            key = (_short(op), kind, shape)
            g = groups.setdefault(key, {"op": key[0], "kind": kind, "shape": shape,
                                        "dtype": out[0][0] if out else "",
                                        "largest": _largest_array(instr, comp),
                                        "bytes": 0.0, "padded_bytes": 0.0, "hbm_bytes": 0.0,
                                        "count": 0})
            g["bytes"] += n * moved
            g["hbm_bytes"] += n * instruction_bytes(instr, comp, comps, hbm=True)
            g["padded_bytes"] += n * instruction_bytes(instr, comp, comps, padded=True)
            g["count"] += n
    return sorted(groups.values(), key=lambda g: -g["bytes"])
