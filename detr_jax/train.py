"""Training: state creation, plain `train_step` / `eval_step`, and the `train_and_evaluate` loop.

The state is a pytree (`TrainState`) on the ("data", "fsdp") mesh of `config.mesh`: replicated
when `mesh.fsdp` is 1, its large leaves split over `fsdp` otherwise; batches are split over every
device (detr_jax/core/sharding.py). Both steps are jitted with in/out NamedShardings over global
arrays, which works the same on 1 device, on N and on N processes; the train step donates the
state.
With `optim.ema_decay` > 0 the state also holds `ema_params` (detr_jax/ema.py), updated in the
train step; evaluation and the final evaluation then use them (the eval step reads
`eval_params(state)`).
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import Mesh

from detr_jax import data, ema, optim, transfer
from detr_jax.config_validation import validate_config
from detr_jax.core import checkpointing, distributed, fileio, preemption, sharding
from detr_jax.core.compile_options import jit_once, step_compiler_options
from detr_jax.core.nonfinite import NonFiniteMonitor, NonFiniteStop  # noqa: F401 (re-exported)
from detr_jax.core.sharding import to_global  # noqa: F401 (re-exported)
from detr_jax.core.writers import MetricWriter
from detr_jax.data.prefetch import device_prefetch
from detr_jax.evaluation.evaluator import Evaluator
from detr_jax.inference import class_activation, make_predict_fn
from detr_jax.losses import build_criterion
from detr_jax.models import build_model, init_variables, variable_shapes


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar
    params: Any
    batch_stats: Any  # {} unless the backbone uses trainable BatchNorm
    opt_state: Any
    rng: jax.Array  # uint32[2] raw key
    # EMA of params (detr_jax/ema.py), like `params`; None (no leaves) with optim.ema_decay = 0.
    ema_params: Any = None


def eval_params(state: Any) -> Any:
    """The params evaluation uses: the EMA params when the state has them, else the params."""
    ema_params = getattr(state, "ema_params", None)
    return state.params if ema_params is None else ema_params


def make_mesh(config: Any = None) -> Mesh:
    """The ("data", "fsdp") mesh of `config.mesh` over every device of every process.

    Without a config (or a config without `mesh`): data = all devices, fsdp = 1.
    """
    return sharding.make_mesh(None if config is None else config.get("mesh"))


def make_optimizer_for(config: Any, model: nn.Module, rng: jax.Array) -> tuple[Any, Any]:
    """(tx, schedule) for `model` as the train loop builds them: the parameter-group rules of
    detr_jax/optim.py (freeze preset, the parts' rules, `optim.param_rules`), checked against
    the model's real parameter paths."""
    del rng
    params_shape = variable_shapes(model, tuple(config.image_buckets[0]))["params"]
    rules = optim.optimizer_rules(config, model, params_shape)
    return optim.make_optimizer(
        config.optim,
        config.total_steps,
        params_shape,
        rules,
        freeze_backbone_steps=config.freeze_backbone_steps,
    )


def create_train_state(
    config: Any, model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array
) -> TrainState:
    def create(rng):
        init_rng, state_rng = jax.random.split(rng)
        variables = init_variables(model, config.image_buckets[0], init_rng)
        params = variables["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables.get("batch_stats", {}),
            opt_state=tx.init(params),
            rng=state_rng,
            ema_params=ema.copy_params(params) if ema.ema_on(config) else None,
        )

    return jit_once(create)(rng)  # one cheap compile; eager init dispatches every op separately


_TARGET_KEYS = ("labels", "boxes", "box_valid")


def _apply(model, state, params, batch, train, rng=None):
    variables = {"params": params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    kwargs = {}
    if train:
        kwargs["targets"] = {k: batch[k] for k in _TARGET_KEYS}
        dropout_rng, droppath_rng = jax.random.split(rng)
        kwargs["rngs"] = {"dropout": dropout_rng, "droppath": droppath_rng}
        if state.batch_stats:
            return model.apply(
                variables,
                batch["image"],
                batch["pixel_mask"],
                train=True,
                mutable=["batch_stats"],
                **kwargs,
            )
    return model.apply(variables, batch["image"], batch["pixel_mask"], train=train, **kwargs), {}


def train_step(
    state, batch, *, model, tx, schedule, criterion, ema_decay=0.0, ema_warmup=True, frozen=None
):
    """One optimisation step on a global batch. Returns (new_state, metrics of scalars).

    A non-finite loss or gradient norm skips the update (params, statistics, optimiser state and
    EMA are kept) and reports `nonfinite` = 1. When the state has `ema_params`, they are updated
    with decay `ema.decay_at(state.step, ema_decay, ema_warmup)` (logged as `ema_decay`);
    `frozen` (bool pytree like params, or None) marks the params the EMA copies as they are.
    """
    rng = jax.random.fold_in(state.rng, state.step)
    # The loss's own randomness (the mask terms' sampled points), apart from the model's.
    loss_batch = dict(batch, loss_rng=jax.random.fold_in(rng, 1))

    def loss_fn(params):
        outputs, new_vars = _apply(model, state, params, batch, True, rng)
        loss, metrics = criterion(outputs, loss_batch)
        return loss, (metrics, new_vars)

    (loss, (metrics, new_vars)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grad_norm = optax.global_norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    batch_stats = new_vars.get("batch_stats", state.batch_stats)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    def keep_if_finite(new, old):
        return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)

    new_state = state.replace(
        step=state.step + 1,
        params=keep_if_finite(params, state.params),
        batch_stats=keep_if_finite(batch_stats, state.batch_stats),
        opt_state=keep_if_finite(opt_state, state.opt_state),
    )
    metrics = dict(
        metrics,
        grad_norm=grad_norm,
        lr=schedule(state.step),
        nonfinite=1.0 - finite.astype(jnp.float32),
    )
    if state.ema_params is not None:
        decay = ema.decay_at(state.step, ema_decay, ema_warmup)
        new_ema = ema.update(state.ema_params, new_state.params, decay, frozen)
        new_state = new_state.replace(ema_params=keep_if_finite(new_ema, state.ema_params))
        metrics["ema_decay"] = decay
    return new_state, metrics


def eval_step(state, batch, *, predict_fn, criterion):
    """`predict_fn`'s "bbox" predictions for a batch (pixels of each original image, with the
    batch's `image_id`, `image_valid`, `orig_size`; the mask postprocessors' outputs under their
    names, "segm" / "panoptic") and the eval losses on its raw outputs, with `eval_params(state)`
    (the EMA params when it has them)."""
    variables = {"params": eval_params(state)}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    predictions, outputs = predict_fn(variables, batch)
    valid_q = jnp.broadcast_to(batch["image_valid"][:, None], outputs["pred_logits"].shape[1:3])
    _, metrics = criterion(outputs, batch, query_valid=valid_q)
    post = dict(predictions["bbox"], image_id=batch["image_id"], image_valid=batch["image_valid"],
                orig_size=batch["orig_size"])
    post.update({name: p for name, p in predictions.items() if name != "bbox"})
    return post, metrics


def eval_top_k(config: Any, model: Any) -> int:
    """Detections kept per image in evaluation: `eval.top_k`, at most one per query for softmax
    heads (the best class of each query); sigmoid heads rank (query, class) pairs."""
    if class_activation(model) == "sigmoid":
        return int(config.eval.top_k)
    return min(int(config.eval.top_k), int(config.model.queries.num_queries))


def make_steps(config, model, tx, schedule, mesh, state):
    """Jitted train/eval steps with NamedShardings; returns (train, eval, state_sh, batch_sh).

    `state` (arrays or `jax.eval_shape` structs) gives the state's structure: its sharding is
    `sharding.state_shardings` (replicated unless mesh fsdp > 1); batches are split over all
    devices; the metrics and eval outputs come back replicated.
    """
    criterion = build_criterion(config)
    replicated = sharding.replicated(mesh)
    data_sharding = sharding.batch_sharding(mesh)
    state_sharding = sharding.state_shardings(state, mesh)
    options = step_compiler_options(config.get("xla_cpu_ynnpack", False))
    ema_kwargs = {}
    if getattr(state, "ema_params", None) is not None:
        labels = optim.param_labels(
            state.params, optim.optimizer_rules(config, model, state.params)
        )
        ema_kwargs = dict(
            ema_decay=ema.ema_decay(config),
            ema_warmup=ema.ema_warmup(config),
            frozen=jax.tree.map(lambda label: label == optim.FROZEN, labels),
        )
    p_train = jax.jit(
        functools.partial(
            train_step, model=model, tx=tx, schedule=schedule, criterion=criterion, **ema_kwargs
        ),
        in_shardings=(state_sharding, data_sharding),
        out_shardings=(state_sharding, replicated),
        donate_argnums=(0,),
        compiler_options=options,
    )
    p_eval = jax.jit(
        functools.partial(
            eval_step,
            predict_fn=make_predict_fn(
                model, top_k=eval_top_k(config, model),
                postprocessors=tuple(config.eval.get("postprocessors", ("bbox",))),
                options={"panoptic": {"object_mask_threshold": float(
                    config.eval.get("panoptic_object_threshold", 0.8))}}),
            criterion=criterion,
        ),
        in_shardings=(state_sharding, data_sharding),
        out_shardings=(replicated, replicated),
        compiler_options=options,
    )
    return p_train, p_eval, state_sharding, data_sharding


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains `config.total_steps` steps (resuming from `workdir`), evaluates; returns metrics.

    Stops early, with a checkpoint at the step where it stops, on SIGTERM/SIGINT (returns {}; the
    next start resumes), and raises NonFiniteStop after `config.max_consecutive_nonfinite`
    consecutive skipped steps.
    """
    validate_config(config, jax.device_count(), workdir=workdir)
    with preemption.StopSignal(config.preemption_sync_every) as stop:
        return _train_and_evaluate(config, workdir, stop)


def _train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, stop: preemption.StopSignal
) -> dict[str, float]:
    fileio.makedirs(workdir)
    mesh = make_mesh(config)
    dataset = data.build_dataset(config)
    model = build_model(config)
    rng = jax.random.PRNGKey(config.seed)
    tx, schedule = make_optimizer_for(config, model, rng)
    state, _ = sharding.create_sharded_state(
        lambda r: create_train_state(config, model, tx, r), rng, mesh
    )
    p_train, p_eval, state_sharding, data_sharding = make_steps(
        config, model, tx, schedule, mesh, state
    )
    logging.info(
        "params: %d; mesh %s over %d process(es); %s",
        sum(x.size for x in jax.tree.leaves(state.params)),
        dict(mesh.shape),
        jax.process_count(),
        sharding.describe(state, state_sharding),
    )
    if ema.ema_on(config):
        logging.info("EMA of the params: decay %g, warm-up %s (used for evaluation)",
                     ema.ema_decay(config), ema.ema_warmup(config))

    config_json = config.to_json()
    manager = checkpointing.make_manager(workdir, config.checkpoint_every, config.keep_checkpoints)
    restored = checkpointing.restore_latest(manager, state, config_json)
    if restored is not None:
        state = jax.device_put(restored[0], state_sharding)
        logging.info("resumed from %s at step %d", restored[1]["path"], int(state.step))
    elif config.init_from:  # a fresh run starts from pretrained weights
        state = jax.device_put(transfer.init_from_checkpoint(config, state), state_sharding)
    start_step = int(state.step)
    if jax.process_index() == 0:
        with fileio.open_file(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config_json)
        # Label -> (COCO category id, name), read by detr_jax.predict for this workdir's weights.
        with fileio.open_file(os.path.join(workdir, "categories.json"), "w") as f:
            json.dump(data.category_records(dataset), f, indent=1)

    writer = MetricWriter(workdir, use_tensorboard=config.use_tensorboard)
    evaluator = Evaluator(config, dataset, p_eval, data_sharding, workdir, writer)
    batches = data.train_batches(
        dataset,
        global_batch_size=config.batch_size,
        start_step=start_step,
        buckets=config.image_buckets,
        max_boxes=config.max_boxes,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        agree=lambda local: distributed.agree_on_buckets(
            local, config.image_buckets, f"train/{start_step}"
        ),
    )
    batches = device_prefetch(batches, data_sharding, size=2)  # sharded, 2 steps ahead
    monitor = NonFiniteMonitor(config.max_consecutive_nonfinite)
    report_progress = writer.progress_hook(config.total_steps)
    pending: list[dict[str, jax.Array]] = []
    previous: tuple[int, dict[str, jax.Array]] | None = None  # its flag is read one step late
    t_last, step_last, train_time = time.time(), start_step, 0.0
    eval_metrics: dict[str, float] = {}
    preempted = False
    for step in range(start_step + 1, config.total_steps + 1):
        with jax.profiler.StepTraceAnnotation("train", step_num=step):
            state, metrics = p_train(state, next(batches))
        if previous is not None:
            monitor.observe(previous[0], float(previous[1]["nonfinite"]))
        previous = (step, metrics)
        pending.append(metrics)
        report_progress(step)
        if monitor.exceeded:
            writer.flush()
            raise monitor.error(manager, step)
        if step % config.log_every == 0 or step == config.total_steps:
            summary = {
                k: float(np.mean([m[k] for m in jax.device_get(pending)])) for k in pending[0]
            }
            summary["nonfinite"] *= len(pending)  # skipped steps in this interval
            now = time.time()
            train_time += now - t_last
            summary["steps_per_sec"] = (step - step_last) / (now - t_last)
            summary["train_time_s"] = train_time
            writer.write_scalars(step, summary)
            logging.info(
                "step %d/%d loss %.4f (%.2f steps/s)",
                step,
                config.total_steps,
                summary["loss"],
                summary["steps_per_sec"],
            )
            pending, t_last, step_last = [], now, step
        # No periodic save during a non-finite streak: it would rotate out good checkpoints.
        if monitor.streak == 0 and checkpointing.save(manager, step, state, config_json):
            logging.info("saving checkpoint at step %d", step)
        if stop.should_stop(step):
            if manager.latest_step() != step:
                checkpointing.save(manager, step, state, config_json, force=True)
            manager.wait_until_finished()
            logging.warning(
                "stopped by signal after step %d; checkpoint %s saved; rerun the same command "
                "to resume",
                step,
                checkpointing.step_path(manager, step),
            )
            preempted = True
            break
        final = step == config.total_steps
        if final or (config.eval_every > 0 and step % config.eval_every == 0):
            eval_metrics = evaluator.run(state, step, write_files=True, draw=final)
            writer.write_scalars(step, {f"eval/{k}": v for k, v in eval_metrics.items()})
            writer.write_scalars(step, {"train_time_s": train_time})
            t_last = time.time()  # evaluation time is not training time
    if previous is not None and not preempted:
        monitor.observe(previous[0], float(previous[1]["nonfinite"]))
    if restored is not None and start_step >= config.total_steps:
        eval_metrics = evaluator.run(state, start_step, write_files=True, draw=True)
    manager.wait_until_finished()
    if manager.latest_step() != int(state.step):
        checkpointing.save(manager, int(state.step), state, config_json, force=True)
        manager.wait_until_finished()
    writer.flush()
    if jax.process_index() == 0:
        summary = {
            "step": int(state.step),
            "train_time_s": train_time,
            "skipped_steps": monitor.total,
            "preempted": preempted,
            **eval_metrics,
        }
        with fileio.open_file(os.path.join(workdir, "train_summary.json"), "w") as f:
            json.dump(summary, f)
    return eval_metrics
