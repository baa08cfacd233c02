"""A checkpoint written before the parameter-rule optimiser layout (detr_jax < 0.2) stops the
restore with one clear message that says what changed and how to keep its weights."""

from __future__ import annotations

import flax
import jax.numpy as jnp
import pytest

import detr_jax
from detr_jax.core import checkpointing


@flax.struct.dataclass
class _State:
    step: jnp.ndarray
    params: dict
    batch_stats: dict


def _state():
    return _State(step=jnp.zeros((), jnp.int32), params={"w": jnp.ones((2, 3))}, batch_stats={})


def test_pre_0_2_checkpoint_gives_a_clear_message(tmp_path, monkeypatch):
    manager = checkpointing.make_manager(str(tmp_path), every=1, keep=2)
    monkeypatch.setattr(detr_jax, "__version__", "0.1.0")
    checkpointing.save(manager, 1, _state(), "{}", force=True)
    manager.wait_until_finished()
    monkeypatch.undo()
    with pytest.raises(checkpointing.CheckpointMismatchError) as err:
        checkpointing.restore_latest(manager, _state())
    msg = str(err.value)
    assert "written by detr_jax 0.1.0" in msg and "optim.param_rules" in msg
    assert f"--config.init_from={tmp_path}" in msg and "\n" not in msg


def test_current_checkpoint_restores(tmp_path):
    manager = checkpointing.make_manager(str(tmp_path), every=1, keep=2)
    checkpointing.save(manager, 1, _state(), "{}", force=True)
    manager.wait_until_finished()
    restored, meta = checkpointing.restore_latest(manager, _state())
    assert meta["step"] == 1 and meta["detr_jax_version"] == detr_jax.__version__
    assert jnp.array_equal(restored.params["w"], jnp.ones((2, 3)))
