"""Loss and gradients of one global batch on 1 device vs 8 simulated CPU devices.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/multidevice_check.py \
        data8 data2_fsdp4

Run by tests/core/test_sharding.py in a subprocess (the XLA flag must be set before jax is
imported).
Computes, as `train_step` does (dropout and BatchNorm batch statistics on, hungarian_scipy
matcher), the loss, the `num_boxes` metric and the gradients of a tiny DETR (tests/conftest.py,
no encoder layer, backbone trained from layer3 on) on one global batch of 8 images, first on a
1-device mesh, then on each named 8-device mesh, and prints one JSON line: per mesh the relative
loss difference, the largest per-leaf gradient difference relative to that leaf's largest
1-device gradient (`grad_rel_max`, over leaves whose gradient is not ~0), the largest difference
on the ~0 leaves relative to the largest gradient of all (`grad_zero_abs`; the attention key
biases: softmax ignores them, so their true gradient is exactly 0 and what is left is rounding
noise; and the frozen stages), and the PartitionSpec of the largest parameter and of its
gradient.

The state is initialised once and put on each mesh with `sharding.state_shardings`, so every mesh
starts from identical values; one jit (compile) per mesh.
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax
import numpy as np
from jax.sharding import Mesh

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # conftest, detr_jax

from conftest import tiny_config  # noqa: E402
from ml_collections import ConfigDict  # noqa: E402

from detr_jax import data, train  # noqa: E402
from detr_jax.core import sharding  # noqa: E402
from detr_jax.losses import build_criterion  # noqa: E402
from detr_jax.models import build_model  # noqa: E402

MESHES = {"data8": {"data": -1, "fsdp": 1}, "data2_fsdp4": {"data": 2, "fsdp": 4}}
ZERO_GRAD = 1e-6  # leaves whose largest 1-device gradient is below this x the global largest


def _flat(tree) -> dict:
    return {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def compare(grads: dict, ref: dict) -> dict:
    """Per-leaf gradient differences of `grads` vs `ref` (flat dicts of numpy arrays)."""
    top = max(float(np.max(np.abs(g))) for g in ref.values())
    live, zero = [(0.0, "")], [(0.0, "")]
    for key, g_ref in ref.items():
        scale = float(np.max(np.abs(g_ref)))
        diff = float(np.max(np.abs(grads[key] - g_ref)))
        if scale > ZERO_GRAD * top:
            live.append((diff / scale, key))
        else:
            zero.append((diff / top, key))
    norm = lambda t: float(np.sqrt(sum(np.sum(np.square(g, dtype=np.float64)) for g in t)))
    return {
        "grad_rel_max": max(live)[0],
        "grad_rel_where": max(live)[1],
        "grad_zero_abs": max(zero)[0],
        "grad_zero_leaves": len(zero) - 1,
        "grad_norm_rel": abs(norm(grads.values()) - norm(ref.values())) / norm(ref.values()),
    }


def main(names: list[str]) -> None:
    assert jax.device_count() == 8, jax.devices()
    t0 = time.time()
    # Cheap to compile: the backbone's backward pass is what costs, so it stops after layer2
    # (BatchNorm still normalises with the global batch statistics in every stage).
    config = tiny_config(**{"batch_size": 8, "model.transformer.enc_layers": 0,
                            "model.transformer.dec_layers": 2, "model.backbone.frozen_stages": 3,
                            "matcher.name": "hungarian_scipy"})  # the default: a host callback
    model = build_model(config)
    rng = jax.random.PRNGKey(0)
    tx, _ = train.make_optimizer_for(config, model, rng)
    host_state = jax.device_get(train.create_train_state(config, model, tx, rng))
    host_batch = next(data.train_batches(
        data.build_dataset(config), global_batch_size=8, start_step=0,
        buckets=config.image_buckets, max_boxes=config.max_boxes))
    criterion = build_criterion(config)

    def loss_and_grads(state, batch):
        step_rng = jax.random.fold_in(state.rng, state.step)

        def f(params):
            outputs, _ = train._apply(model, state, params, batch, True, step_rng)
            return criterion(outputs, batch)

        (loss, metrics), grads = jax.value_and_grad(f, has_aux=True)(state.params)
        return loss, metrics["num_boxes"], grads

    big = max(_flat(host_state.params).items(), key=lambda kv: kv[1].size)[0]
    meshes = {"one_device": Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), sharding.MESH_AXES)}
    meshes.update({n: sharding.make_mesh(ConfigDict(MESHES[n])) for n in names})
    out: dict = {"batch_boxes": int(host_batch["box_valid"].sum()), "big_leaf": big}
    ref = None
    for name, mesh in meshes.items():
        state_sh = sharding.state_shardings(host_state, mesh)
        batch_sh = sharding.batch_sharding(mesh)
        rep = sharding.replicated(mesh)
        fn = jax.jit(loss_and_grads, in_shardings=(state_sh, batch_sh),
                     out_shardings=(rep, rep, state_sh.params))
        state = jax.device_put(host_state, state_sh)
        loss, num_boxes, grads = fn(state, train.to_global(host_batch, batch_sh))
        row = {
            "devices": int(mesh.devices.size),
            "mesh": dict(mesh.shape),
            "loss": float(loss),
            "num_boxes": float(num_boxes),
            "param_spec": str(_flat(state.params)[big].sharding.spec),
            "grad_spec": str(_flat(grads)[big].sharding.spec),
            "sharded_leaves": sum(
                any(a is not None for a in s.spec) for s in jax.tree.leaves(state_sh)
            ),
        }
        host_grads = {k: np.asarray(v) for k, v in _flat(jax.device_get(grads)).items()}
        if ref is None:
            ref = (float(loss), host_grads)
        else:
            row.update(loss_rel=abs(float(loss) - ref[0]) / abs(ref[0]),
                       **compare(host_grads, ref[1]))
        out[name] = row
    out["seconds"] = time.time() - t0
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:] or list(MESHES))
