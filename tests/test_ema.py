"""EMA of the params (detr_jax/ema.py): the recursion by hand, the warm-up formula, evaluation
with the EMA params, exact resume with the EMA on, checkpoint layouts with and without EMA,
init_from taking the EMA params, and the start-up check of the decay."""

from __future__ import annotations

import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import tiny_config

from detr_jax import ema, pretrained, train
from detr_jax.config_validation import ConfigError, validate_config
from detr_jax.core import checkpointing
from detr_jax.data.batching import collate
from detr_jax.data.shapes import STANDARD_SHAPES, generate_sample
from detr_jax.models import build_model

DECAY = 0.9
EMA_FIELDS = {"optim.ema_decay": DECAY, "optim.param_rules": [("^class_embed/", "frozen")]}


def _batch(config, seed=0):
    samples = [generate_sample(STANDARD_SHAPES, 123 + seed, i) for i in range(config.batch_size)]
    batch, _ = collate(samples, buckets=config.image_buckets, max_boxes=config.max_boxes)
    return {k: jnp.asarray(v) for k, v in batch.items()}


def _flat(tree):
    return {jax.tree_util.keystr(p): np.asarray(x)
            for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_warmup_formula_by_hand():
    for n in (0, 1, 5, 50, 10_000, 100_000):
        hand = min(0.9997, (1 + n) / (10 + n))
        np.testing.assert_allclose(float(ema.decay_at(n, 0.9997)), hand, rtol=1e-6)
        assert float(ema.decay_at(n, 0.9997, warmup=False)) == np.float32(0.9997)
    assert float(ema.decay_at(0, 0.9997)) == pytest.approx(0.1)
    assert float(ema.decay_at(10**6, 0.9997)) == pytest.approx(0.9997)


@pytest.fixture(scope="module")
def steps():
    """The tiny model with the EMA on (class_embed frozen) and its jitted train/eval steps."""
    config = tiny_config(**EMA_FIELDS, **{"model.transformer.dropout": 0.0})
    model = build_model(config)
    rng = jax.random.PRNGKey(config.seed)
    tx, schedule = train.make_optimizer_for(config, model, rng)
    fresh = lambda: train.create_train_state(config, model, tx, rng)  # noqa: E731 (donated)
    p_train, p_eval, _, _ = train.make_steps(
        config, model, tx, schedule, train.make_mesh(), fresh())
    return config, fresh, p_train, p_eval


@pytest.mark.slow  # 35 s alone on 2 cores (2026-12-02; default budget 6 min)
def test_ema_after_n_steps_equals_the_recursion_by_hand(steps):
    config, fresh, p_train, _ = steps
    state = fresh()
    host = jax.device_get(state)
    assert jax.tree.structure(host.ema_params) == jax.tree.structure(host.params)
    hand = _flat(host.params)  # the EMA starts at the initial params
    assert all(np.array_equal(hand[k], v) for k, v in _flat(host.ema_params).items())
    params_seen, decays = [], []
    for i in range(3):
        state, metrics = p_train(state, _batch(config, i))
        params_seen.append(_flat(jax.device_get(state.params)))
        decays.append(float(metrics["ema_decay"]))
    for n, params in enumerate(params_seen):  # update n is made after n earlier ones
        d = min(DECAY, (1 + n) / (10 + n))
        assert decays[n] == pytest.approx(d, rel=1e-6)
        hand = {k: d * hand[k] + (1 - d) * params[k] for k in hand}
    got = _flat(jax.device_get(state.ema_params))
    moved = 0
    for k, v in got.items():
        if "class_embed" in k:  # frozen: copied, bitwise equal to the params
            assert np.array_equal(v, params_seen[-1][k]), k
            continue
        np.testing.assert_allclose(v, hand[k], rtol=1e-5, atol=1e-7, err_msg=k)
        moved += not np.allclose(v, params_seen[-1][k])
    assert moved > 10  # the EMA lags behind the params


def test_eval_uses_the_ema_params(steps):
    config, fresh, p_train, p_eval = steps
    state, _ = p_train(fresh(), _batch(config))
    state, _ = p_train(state, _batch(config, 1))
    host = jax.device_get(state)
    batch = _batch(config, 2)
    with_ema = p_eval(host, batch)
    as_params = p_eval(host.replace(params=host.ema_params), batch)  # the EMA as the params
    raw = p_eval(host.replace(ema_params=host.params), batch)  # "EMA" = the raw params
    assert train.eval_params(host) is host.ema_params
    for a, b in zip(jax.tree.leaves(with_ema), jax.tree.leaves(as_params), strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert float(with_ema[1]["loss"]) != float(raw[1]["loss"])
    assert not np.array_equal(np.asarray(with_ema[0]["scores"]), np.asarray(raw[0]["scores"]))


def _load(workdir, step):
    manager = ocp.CheckpointManager(f"{workdir}/checkpoints")
    args = ocp.args.Composite(state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore())
    out = manager.restore(step, args=args)
    return out["state"], out["meta"]


@pytest.mark.slow  # three short training runs of the tiny model
def test_resume_with_ema_is_bitwise_equal_to_a_straight_run(tmp_path, caplog):
    fields = dict(EMA_FIELDS, total_steps=4, checkpoint_every=2, log_every=2)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    with caplog.at_level(logging.INFO):
        train.train_and_evaluate(tiny_config(**fields), str(straight))
    train.train_and_evaluate(tiny_config(**dict(fields, total_steps=2)), str(resumed))
    train.train_and_evaluate(tiny_config(**fields), str(resumed))
    assert "EMA of the params: decay 0.9" in caplog.text
    (a, meta), (b, _) = _load(straight, 4), _load(resumed, 4)
    assert meta["has_ema_params"] is True and set(a) >= {"params", "ema_params"}
    assert int(a["step"]) == int(b["step"]) == 4
    fa, fb = _flat(a), _flat(b)  # params, ema_params, opt_state, batch_stats, rng, step
    assert fa.keys() == fb.keys()
    for k in fa:
        assert fa[k].dtype == fb[k].dtype and np.array_equal(fa[k], fb[k]), k
    ev_a = json.loads((straight / "eval_results.json").read_text())
    ev_b = json.loads((resumed / "eval_results.json").read_text())
    assert ev_a["metrics"] == ev_b["metrics"]
    logged = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert any("ema_decay" in m for m in logged)


def _tiny_state(with_ema: bool, value: float = 1.0):
    params = {"w": jnp.full((2, 3), value)}
    return train.TrainState(
        step=jnp.asarray(3, jnp.int32), params=params, batch_stats={}, opt_state={"mu": params},
        rng=jnp.zeros((2,), jnp.uint32),
        ema_params={"w": jnp.full((2, 3), 2 * value)} if with_ema else None)


def test_checkpoint_without_ema_keeps_the_old_layout_and_resumes_either_way(tmp_path, caplog):
    manager = checkpointing.make_manager(str(tmp_path), every=1, keep=2)
    checkpointing.save(manager, 3, _tiny_state(False), "{}", force=True)
    manager.wait_until_finished()
    saved, meta = _load(tmp_path, 3)
    assert set(saved) == {"step", "params", "batch_stats", "opt_state", "rng"}  # as before EMA
    assert meta["has_ema_params"] is False
    restored, _ = checkpointing.restore_latest(manager, _tiny_state(False, 0.0))
    assert restored.ema_params is None and float(restored.params["w"][0, 0]) == 1.0
    with caplog.at_level(logging.WARNING):  # EMA on, checkpoint without: EMA = its params
        restored, _ = checkpointing.restore_latest(manager, _tiny_state(True, 0.0))
    assert "holds no EMA params" in caplog.text
    assert "starts from its params at step 3" in caplog.text
    assert np.array_equal(restored.ema_params["w"], restored.params["w"])


def test_checkpoint_written_before_the_ema_resumes(tmp_path):
    """The old save wrote the state dataclass itself, with no `has_ema_params` metadata."""
    manager = checkpointing.make_manager(str(tmp_path), every=1, keep=2)
    old = _tiny_state(False)
    old_tree = {k: getattr(old, k) for k in ("step", "params", "batch_stats", "opt_state", "rng")}
    meta = {"detr_jax_version": "0.2.0", "config": "{}", "param_shapes": {"w": [2, 3]}}
    manager.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave(old_tree),
                                            meta=ocp.args.JsonSave(meta)), force=True)
    manager.wait_until_finished()
    restored, _ = checkpointing.restore_latest(manager, _tiny_state(False, 0.0))
    assert isinstance(restored, train.TrainState) and restored.ema_params is None
    assert float(restored.params["w"][0, 0]) == 1.0 and int(restored.step) == 3


def test_ema_checkpoint_resumes_with_ema_and_init_from_takes_the_ema(tmp_path, caplog):
    manager = checkpointing.make_manager(str(tmp_path), every=1, keep=2)
    checkpointing.save(manager, 3, _tiny_state(True), "{}", force=True)
    manager.wait_until_finished()
    restored, _ = checkpointing.restore_latest(manager, _tiny_state(True, 0.0))
    assert float(restored.ema_params["w"][0, 0]) == 2.0
    with caplog.at_level(logging.WARNING):
        restored, _ = checkpointing.restore_latest(manager, _tiny_state(False, 0.0))
    assert restored.ema_params is None and "they are dropped" in caplog.text
    params, _, meta = pretrained.load_params_checkpoint(str(tmp_path), prefer_ema=True)
    assert float(params["w"][0, 0]) == 2.0 and meta["params_from"] == "ema_params"
    params, _, meta = pretrained.load_params_checkpoint(str(tmp_path))
    assert float(params["w"][0, 0]) == 1.0 and meta["params_from"] == "params"


@pytest.mark.parametrize("decay", [1.0, -0.1, 1.5])
def test_bad_decay_is_one_clear_config_line(decay):
    with pytest.raises(ConfigError) as err:
        validate_config(tiny_config(**{"optim.ema_decay": decay}), 1)
    lines = str(err.value).splitlines()[1:]
    assert len(lines) == 1 and lines[0].strip().startswith(f"optim.ema_decay={decay!r}")
    assert "[0, 1)" in lines[0]


def test_ema_off_changes_nothing_in_the_state():
    config = tiny_config()
    model = build_model(config)
    rng = jax.random.PRNGKey(0)
    tx, _ = train.make_optimizer_for(config, model, rng)
    state = jax.eval_shape(lambda r: train.create_train_state(config, model, tx, r), rng)
    assert state.ema_params is None
    on = tiny_config(**{"optim.ema_decay": 0.9997})
    state_on = jax.eval_shape(lambda r: train.create_train_state(on, model, tx, r), rng)
    assert len(jax.tree.leaves(state_on)) == len(jax.tree.leaves(state)) + len(
        jax.tree.leaves(state.params))
