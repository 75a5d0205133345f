"""pyproject's jax pins: one range everywhere, the installed jax inside it,
and a CUDA 12 and a CUDA 13 choice on every Python."""

import tomllib

import jax
from packaging.requirements import Requirement

from conftest import ROOT

with open(f"{ROOT}/pyproject.toml", "rb") as f:
    PROJECT = tomllib.load(f)["project"]


def jax_pins(requirements: list[str]) -> dict[str, Requirement]:
    """{marker text: requirement} of the jax lines."""
    pins = [Requirement(r) for r in requirements]
    return {str(r.marker): r for r in pins if r.name == "jax"}


def test_every_jax_pin_is_the_same_range_and_holds_the_installed_jax():
    base = jax_pins(PROJECT["dependencies"])
    assert set(base) == {'python_version < "3.12"', 'python_version >= "3.12"'}
    for extra in ("cuda12", "cuda13", "tpu"):
        pins = jax_pins(PROJECT["optional-dependencies"][extra])
        assert {m: str(r.specifier) for m, r in pins.items()} == {
            m: str(r.specifier) for m, r in base.items()}, extra
        assert all(r.extras for r in pins.values())  # jax[cuda12], jax[tpu], ...
    # The code needs jax.lax.pcast (shard_map's gradients): the floor must have it.
    assert hasattr(jax.lax, "pcast")
    assert any(r.specifier.contains(jax.__version__) and r.marker.evaluate()
               for r in base.values()), jax.__version__


def test_a_cuda12_and_a_cuda13_extra_on_every_python():
    extras = PROJECT["optional-dependencies"]
    for cuda in ("cuda12", "cuda13"):
        pins = jax_pins(extras[cuda])
        assert all(r.extras == {cuda} for r in pins.values())
        for python in ("3.11", "3.12", "3.13"):
            assert any(r.marker.evaluate({"python_version": python}) for r in pins.values())
    assert extras["cuda"] == ["smallgpt_jax[cuda13]"]  # The plain name: current drivers.
