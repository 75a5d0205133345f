"""The bytes that cross HBM (analysis/hlo_cost.py, hbm=True), apart from XLA's
bytes accessed: only arrays in device memory count, a copy between HBM and
VMEM once. Small hand-written programs everywhere; small programs compiled
for a v5e where libtpu is installed."""

import importlib.util

import jax
import jax.numpy as jnp
import pytest

from smallgpt_jax.analysis import aot, hlo_cost, hlo_text

needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None,
    reason='no libtpu: pip install -e ".[tpu]" to compile for TPU targets')

# x goes to VMEM by an async copy; the exponential reads it there and writes
# its result to HBM; the sum reads that back from HBM.
COPIED = """HloModule m
%sum (p0: f32[64,128]) -> f32[64] {
  %p0 = f32[64,128]{1,0:T(8,128)} parameter(0)
  %z = f32[] constant(0)
  ROOT %r = f32[64]{0:T(256)} reduce(%p0, %z), dimensions={1}, to_apply=%add
}
ENTRY %main (x: f32[64,128]) -> f32[64] {
  %x = f32[64,128]{1,0:T(8,128)} parameter(0)
  %copy-start = (f32[64,128]{1,0:T(8,128)S(1)}, f32[64,128]{1,0:T(8,128)}, u32[]{:S(2)}) copy-start(%x)
  %copy-done = f32[64,128]{1,0:T(8,128)S(1)} copy-done(%copy-start)
  %e = f32[64,128]{1,0:T(8,128)} exponential(%copy-done)
  ROOT %s = f32[64]{0:T(256)} fusion(%e), kind=kInput, calls=%sum
}
"""


def program_bytes(text: str, hbm: bool) -> float:
    comps = hlo_text.parse(text)
    runs, _ = hlo_cost.multiplicities(comps)
    if hbm:
        return hlo_cost.hbm_bytes(comps, runs)
    return sum(n * hlo_cost.instruction_bytes(i, comps[c], comps)
               for c, n in runs.items() for i in comps[c].instrs)


def test_a_copy_to_vmem_crosses_hbm_once_and_vmem_operands_not_at_all():
    size = 64 * 128 * 4
    assert hlo_text.in_hbm("1,0:T(8,128)") and not hlo_text.in_hbm("1,0:T(8,128)S(1)")
    # The copy's HBM end, the exponential's output, the sum's input and output.
    assert program_bytes(COPIED, hbm=True) == size + size + size + 64 * 4
    # XLA's way: the copy at both ends (twice each), the exponential's
    # input too, though it is on chip.
    assert program_bytes(COPIED, hbm=False) == 4 * size + 2 * size + size + 64 * 4


def test_a_slice_copied_to_vmem_crosses_hbm_with_the_slice_not_its_source():
    """A slice-start's output names the whole source array first: each of the
    four slices of [4, 128] moves one row out of HBM, not all four."""
    text = """HloModule m
ENTRY %main (w: f32[4,128]) -> f32[1,128] {
  %w = f32[4,128]{1,0:T(8,128)} parameter(0)
""" + "".join(f"""  %slice-start.{i} = ((f32[4,128]{{1,0:T(8,128)}}), f32[1,128]{{1,0:T(8,128)S(1)}}, s32[]{{:S(2)}}) slice-start(%w), slice={{[{i}:{i + 1}], [0:128]}}
  %slice-done.{i} = f32[1,128]{{1,0:T(8,128)S(1)}} slice-done(%slice-start.{i})
""" for i in range(4)) + """  ROOT %n = f32[1,128]{1,0:T(8,128)S(1)} negate(%slice-done.0)
}
"""
    assert program_bytes(text, hbm=True) == 4 * 128 * 4


def _compiled_text(fn, *shapes) -> tuple[str, float]:
    mesh = jax.sharding.Mesh(aot.devices(aot.target("tpu:v5e-1")), ("d",))
    replicated = jax.NamedSharding(mesh, jax.P())
    args = [jax.ShapeDtypeStruct(s, jnp.bfloat16, sharding=replicated) for s in shapes]
    compiled = jax.jit(fn).lower(*args).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return compiled.as_text(), float(cost["bytes accessed"])


@needs_libtpu
def test_a_matmul_alone_moves_its_inputs_and_output_through_hbm():
    text, _ = _compiled_text(lambda a, b: a @ b, (256, 384), (384, 512))
    assert program_bytes(text, hbm=True) == 2 * (256 * 384 + 384 * 512 + 256 * 512)


@needs_libtpu
def test_an_mlp_gradient_kept_in_vmem_moves_only_its_arguments_and_results():
    """XLA keeps the [N, 4D] hidden and its gradient in VMEM and copies the
    input there: XLA's bytes accessed counts all of that, HBM only the
    arguments read and the gradients written."""
    def grads(w1, w2, x):
        loss = lambda w1, w2: jnp.sum((jax.nn.gelu(x @ w1) @ w2).astype(jnp.float32) ** 2)
        return jax.grad(loss, argnums=(0, 1))(w1, w2)
    N, D = 4096, 384
    text, xla_bytes = _compiled_text(grads, (D, 4 * D), (4 * D, D), (N, D))
    assert "S(1)" in text  # What the test is about: on-chip arrays.
    hbm = program_bytes(text, hbm=True)
    assert hbm == 2 * (N * D + 4 * (4 * D * D))  # x, w1, w2 read; dw1, dw2 written.
    assert xla_bytes > 3 * hbm
