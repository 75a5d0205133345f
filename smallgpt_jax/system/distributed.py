"""Joining a multi-process (multi-host) job on JAX's own distributed runtime.

The same command runs on every host. Each process calls
`jax.distributed.initialize()`, which connects it to a coordinator (process
0) and makes every device of every host visible: `jax.devices()` is global,
`jax.local_devices()` is this host's, collectives such as `pmean` span all.

When does `maybe_initialize()` join a job? When the environment says so:
- JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES=N, JAX_PROCESS_ID=i
  (all three; `./launch.sh --coordinator=... --num_processes=... --process_id=...`
  sets them);
- SLURM with more than one task, or Open MPI with more than one rank: JAX
  reads everything it needs from the environment;
- SMALLGPT_DISTRIBUTED=auto (`./launch.sh --multihost`): let JAX detect
  the cluster itself, e.g. on every worker of a Cloud TPU pod slice.
SMALLGPT_DISTRIBUTED=off never joins. Otherwise the run is single-process.
"""

from __future__ import annotations

import logging
import os
from typing import Mapping

import jax

from smallgpt_jax.system.errors import UserError

log = logging.getLogger("smallgpt_jax")

_EXPLICIT = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def explicit_settings(environ: Mapping[str, str]) -> dict | None:
    """The coordinator settings given in the environment, or None if none are.

    Raises UserError when only some of the three are set or they are malformed:
    a half-configured job would otherwise hang waiting for its peers.
    """
    given = {k: environ[k] for k in _EXPLICIT if environ.get(k)}
    if not given:
        return None
    missing = [k for k in _EXPLICIT if k not in given]
    if missing:
        raise UserError(f"multi-process settings are incomplete: {', '.join(given)} "
                        f"set but {', '.join(missing)} not; set all three.")
    address = given["JAX_COORDINATOR_ADDRESS"]
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"JAX_COORDINATOR_ADDRESS={address!r} must look like host:port.")
    try:
        num_processes = int(given["JAX_NUM_PROCESSES"])
        process_id = int(given["JAX_PROCESS_ID"])
    except ValueError:
        raise UserError("JAX_NUM_PROCESSES and JAX_PROCESS_ID must be integers, got "
                        f"{given['JAX_NUM_PROCESSES']!r} and {given['JAX_PROCESS_ID']!r}.")
    if not 0 <= process_id < num_processes:
        raise UserError(f"JAX_PROCESS_ID={process_id} must be in [0, "
                        f"JAX_NUM_PROCESSES={num_processes}).")
    return {"coordinator_address": address, "num_processes": num_processes,
            "process_id": process_id}


def _count(environ: Mapping[str, str], name: str) -> int:
    try:
        return int(environ.get(name, "1"))
    except ValueError:
        return 1


def cluster_detected(environ: Mapping[str, str]) -> bool:
    """True inside a multi-process SLURM step or Open MPI job, where JAX
    finds the coordinator, process count and id on its own."""
    slurm = "SLURM_JOB_ID" in environ and _count(environ, "SLURM_NTASKS") > 1
    mpi = _count(environ, "OMPI_COMM_WORLD_SIZE") > 1
    return slurm or mpi


def maybe_initialize(environ: Mapping[str, str] | None = None) -> bool:
    """Calls `jax.distributed.initialize` if the environment describes a
    multi-process job (see the module docstring); returns whether it did.

    Must run before anything else touches JAX devices.
    """
    environ = os.environ if environ is None else environ
    mode = environ.get("SMALLGPT_DISTRIBUTED", "").strip().lower()
    if mode not in ("", "auto", "off"):
        raise UserError(f"SMALLGPT_DISTRIBUTED={mode!r} must be 'auto', 'off' or unset.")
    if mode == "off":
        return False
    if jax.distributed.is_initialized():
        return True
    settings = explicit_settings(environ)
    if settings is None and not (mode == "auto" or cluster_detected(environ)):
        return False
    where = (f"coordinator {settings['coordinator_address']}, process "
             f"{settings['process_id']} of {settings['num_processes']}"
             if settings else "settings detected by JAX")
    try:
        jax.distributed.initialize(**(settings or {}))
    except (RuntimeError, ValueError, TypeError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"could not join the multi-process job ({where}): {first_line}")
    log.info("joined a multi-process job as process %d of %d (%d of its %d devices "
             "are here; %s)", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count(), where)
    return True
