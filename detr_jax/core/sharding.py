"""The device mesh and the shardings of the train state and of the batches, from `config.mesh`.

The mesh is 2-D with axes ``("data", "fsdp")`` over every device of every process:

- ``config.mesh.fsdp`` (default 1): devices that split the parameters and optimiser state
  between them (ZeRO-3 / FSDP style). Keep it within one host (or one TPU slice): XLA gathers
  each layer's parameters over this axis in the forward and backward pass and reduce-scatters the
  gradients over it, so it is the bandwidth-hungry axis. It is the last (fastest-varying) mesh
  axis, so with the default device order a group of ``fsdp`` devices lies on one process.
- ``config.mesh.data`` (default -1 = all remaining devices): replicas of that (sharded) state.

``data * fsdp`` must equal the device count (`config_validation` says so in one line).

Batches: every device gets a distinct slice of the global batch, i.e. the batch dimension is
split over both axes, ``P(("data", "fsdp"))``. This is standard FSDP: the ``fsdp`` devices do not
compute on the same images, they only share the parameter storage. So ``batch_size`` (and
``eval.batch_size``) must be divisible by ``data * fsdp`` = the device count.

State: with ``fsdp == 1`` everything is replicated. With ``fsdp > 1`` each leaf of the params and
optimiser state (and batch statistics) with at least ``MIN_SHARDED_SIZE`` elements is split on its
largest dimension that ``fsdp`` divides (ties: the last such dimension, usually the output
features); smaller leaves, scalars and leaves without such a dimension stay replicated. The
sharding tree is built from the shapes alone (`jax.eval_shape`), so the full state never has to
exist on one device: `create_sharded_state` initialises it directly in its sharded layout.

Nothing here depends on the number of processes: the jitted steps see global arrays, so sums in
the loss (e.g. the number of target boxes) and the metrics are global reductions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from detr_jax.core.compile_options import jit_once

MESH_AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")  # the batch dimension is split over both mesh axes
MIN_SHARDED_SIZE = 2**14  # leaves with fewer elements stay replicated


def mesh_shape(mesh_config: Any, num_devices: int) -> tuple[int, int]:
    """(data, fsdp) for `config.mesh` on `num_devices` devices; data=-1 takes the rest.

    Raises ValueError (one line naming the field) when the mesh does not fit the device count;
    `config_validation.mesh_problems` reports the same problems at start-up.
    """
    problems = mesh_problems(mesh_config, num_devices)
    if problems:
        raise ValueError(problems[0])
    fsdp = int(mesh_config.fsdp)
    data = int(mesh_config.data)
    return (num_devices // fsdp if data == -1 else data), fsdp


def mesh_problems(mesh_config: Any, num_devices: int) -> list[str]:
    """One line per problem of `config.mesh` on `num_devices` devices (empty when it fits)."""
    data, fsdp = mesh_config.data, mesh_config.fsdp
    if not (isinstance(fsdp, int) and fsdp >= 1):
        return [f"mesh.fsdp={fsdp!r} must be a positive integer"]
    if not (isinstance(data, int) and (data >= 1 or data == -1)):
        return [f"mesh.data={data!r} must be a positive integer or -1 (all remaining devices)"]
    if num_devices % fsdp:
        return [f"mesh.fsdp={fsdp} must divide the device count {num_devices}"]
    if data != -1 and data * fsdp != num_devices:
        return [
            f"mesh.data={data} * mesh.fsdp={fsdp} = {data * fsdp} must equal the device count "
            f"{num_devices} (mesh.data=-1 takes all remaining devices)"
        ]
    return []


def make_mesh(mesh_config: Any = None, devices: list | None = None) -> Mesh:
    """The ("data", "fsdp") mesh over `devices` (default: every device of every process).

    `mesh_config` is `config.mesh` (None: data=-1, fsdp=1). The axes are Auto (sharding
    propagation by XLA under jit), as `jax.jit` with in/out shardings expects. On TPU the device
    order follows the physical topology (`mesh_utils.create_device_mesh`); elsewhere it is
    `jax.devices()` order, i.e. process-major, so each ``fsdp`` group lies on one host.
    """
    devices = list(jax.devices() if devices is None else devices)
    if mesh_config is None:
        shape = (len(devices), 1)
    else:
        shape = mesh_shape(mesh_config, len(devices))
    try:
        grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
    except (ValueError, NotImplementedError, AssertionError):  # topologies it cannot map
        grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, MESH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batch arrays [B, ...]: B split over every device (``P(("data", "fsdp"))``)."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def leaf_spec(shape: tuple[int, ...], fsdp: int, min_size: int = MIN_SHARDED_SIZE) -> P:
    """The PartitionSpec of one state leaf of `shape` for an ``fsdp``-way split.

    Examples with fsdp=4: [3, 3, 256, 512] -> P(None, None, None, "fsdp"); [2048, 256] ->
    P("fsdp", None); [256] -> P() (too small); [5, 7, 1001] with 35035 elements -> P() (no
    dimension divisible by 4).
    """
    if fsdp <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    candidates = [i for i, d in enumerate(shape) if d % fsdp == 0]
    if not candidates:
        return P()
    axis = max(candidates, key=lambda i: (shape[i], i))  # largest; ties -> the last
    return P(*[("fsdp" if i == axis else None) for i in range(len(shape))])


def state_shardings(state: Any, mesh: Mesh, min_size: int = MIN_SHARDED_SIZE) -> Any:
    """A tree of NamedShardings like `state` (arrays or `jax.ShapeDtypeStruct`s, any pytree).

    Replicated everywhere when the mesh's ``fsdp`` axis has size 1; otherwise per `leaf_spec`.
    """
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(
        lambda x: NamedSharding(mesh, leaf_spec(tuple(np.shape(x)), fsdp, min_size)), state
    )


def create_sharded_state(init_fn: Callable[[jax.Array], Any], rng: jax.Array, mesh: Mesh) -> Any:
    """`init_fn(rng)` evaluated under jit straight into `state_shardings` (returns (state, tree)).

    The shapes come from `jax.eval_shape(init_fn, rng)`; with fsdp > 1 each device only ever
    holds its own part of the state. Compiled like any run-once function
    (`compile_options.jit_once`: XLA backend optimisation level 0).
    """
    abstract = jax.eval_shape(init_fn, rng)
    shardings = state_shardings(abstract, mesh)
    state = jit_once(init_fn, out_shardings=shardings)(rng)
    return state, shardings


def describe(state: Any, shardings: Any) -> str:
    """One line: how many state elements are sharded vs replicated (for the start-up log)."""
    sharded = replicated_n = 0
    for x, s in zip(jax.tree.leaves(state), jax.tree.leaves(shardings), strict=True):
        n = int(np.prod(np.shape(x), dtype=np.int64))
        if any(a is not None for a in s.spec):
            sharded += n
        else:
            replicated_n += n
    return f"state: {sharded:,} elements sharded over fsdp, {replicated_n:,} replicated"


def to_global(batch: dict[str, np.ndarray], batch_sharding: NamedSharding) -> dict[str, jax.Array]:
    """Assembles this process's share of the batch into global arrays split over all devices."""
    return {
        k: jax.make_array_from_process_local_data(batch_sharding, v) for k, v in batch.items()
    }
