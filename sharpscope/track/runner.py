"""Training runner: full-batch GD or mini-batch training, tracked, checkpointed and resumable.

The model, data, optimizer and tracker of a config are built by :mod:`sharpscope.track.build`;
this module runs the loop, writes the checkpoints and records, and opens or resumes the run directory.

Step convention. ``θ_t`` are the parameters after ``t`` optimizer steps. At each ``t`` the runner,
in this order: measures (if ``t % measure_every == 0`` or ``t == steps``), checkpoints (if
``t % checkpoint_every == 0`` or ``t == steps``), stops if ``t == steps``, and otherwise takes
step ``t → t+1``. A record at step ``t`` therefore describes ``θ_t`` (an ``"alignment"`` record, with
``alignment=True``, describes the update ``θ_t → θ_{t+1}`` taken right after that measurement, and so
does an ``"update_curvature"`` record: ``θ_t`` is captured after checkpoint ``t``, so a resumed run
captures it again and recomputes the record identically).

Full batch. The gradient is accumulated over fixed physical batches ``b`` of the training set,

    ∇L(θ) = Σ_b (n_b / N) ∇ℓ_b(θ),      ℓ_b = mean loss over batch b,

which is exactly the gradient of the tracker's objective when the probe set is the training set,
so the measured ``λ_max`` is the one that ``2/η`` bounds. SAM recomputes this
full-batch gradient in its second (perturbed) pass.

Determinism. The model is initialised inside ``torch.random.fork_rng`` with ``seed`` (the
caller's global RNG is untouched); mini-batches come from a :class:`ShuffledLoader` with its own
generator; training runs under a forked global RNG (for dropout) whose state is checkpointed.
Checkpoints hold the weights, optimizer state, loader position, RNG states and the tracker's
warm-start vectors, so on CPU a run killed at any point and started again produces records
identical to an uninterrupted run (only wall-clock fields differ).

Divergence. A non-finite training loss at step ``t`` stops the run before the update: a record
(:class:`~sharpscope.io.records.Divergence`, ``{"kind": "diverged", "step": t, ...}``) is written, the
parameters ``θ_t`` are checkpointed and ``summary.json`` says ``"status": "diverged"`` with the step
(``sharpscope train`` then exits with code 3). An ``OSError`` while writing (full disk, read-only mount)
ends the run with one :class:`~sharpscope.errors.StorageError` line; what was written before is intact
and the same call resumes.

Data parallel. Under a ``torch.distributed`` process group (``torchrun``; see
:mod:`sharpscope.parallel`) every rank builds the same model from the same seed and keeps a
contiguous shard of the training, probe and test sets (of each mini-batch, in mini-batch mode:
every rank draws the same batch and keeps its part). Each rank back-propagates
``Σ_{b on the rank} (n_b / N) ℓ_b`` with ``N`` counting all ranks' examples and the gradients are
summed across ranks before every optimizer use, SAM's first pass included, so the update is the
single-process one on the union (up to rounding), for full-batch SAM too (its ascent uses the
full gradient; SA's per-example gradients come from the whole training set, which every rank
holds). BatchNorm in training mode normalises with per-rank batch statistics; the running
statistics are rank 0's, broadcast after every step as DDP does. Only rank 0 touches the run
directory: it decides new/resume/refuse, reads the checkpoint for every rank and writes records,
checkpoints (with every rank's RNG state) and the summary.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sharpscope.curvature.operators.distributed import broadcast_buffers, sum_across_ranks, sum_gradients, world_size
from sharpscope.data import ShuffledLoader, fresh_label_noise
from sharpscope.errors import CheckpointError, ConfigError, StorageError, os_error_text
from sharpscope.io import fit_state_dict
from sharpscope.io.jsonsafe import as_number
from sharpscope.io.records import (
    MEASUREMENT,
    SAM_BATCH,
    UPDATE_CURVATURE,
    Divergence,
    Measurement,
    RunRecord,
    RunSummary,
    UpdateReading,
    is_measurement,
    record_kind,
)
from sharpscope.io.rundir import RunDirectory
from sharpscope.losses import accuracy, get_loss
from sharpscope.models.registry import DTYPES
from sharpscope.optim import RS, SA, PerturbedOptimizer
from sharpscope.parallel import (
    gather_to_rank0,
    local_device,
    on_rank0,
    rank,
    resolve_device,
    shard_bounds,
    shard_dataset,
    sharding,
)
from sharpscope.track.build import (
    build_data,
    build_model,
    build_optimizer,
    build_tracker,
    check_model_fits,
    check_optimizer_options,
    load_initial_weights,
)
from sharpscope.track.config import OUTPUT_FIELDS, TrainConfig
from sharpscope.track.logs import check_packages, close_logs, new_wandb_id, open_logs
from sharpscope.track.thresholds import bounded_sharpness
from sharpscope.track.update_curvature import resolve_method
from sharpscope.validation import offset_seed

__all__ = ["build_data", "build_model", "build_optimizer", "resolve_device", "storage_error", "train"]

Progress = Callable[[int, int, "Measurement | None"], None]


# ------------------------------------------------------------------------------ session
class _Session:
    """One process's part of a run: set up, maybe restore, train to the end, summarise."""

    def __init__(self, cfg: TrainConfig, run: RunDirectory, progress: Progress | None) -> None:
        self.cfg, self.run, self.progress = cfg, run, progress
        self.device = local_device(resolve_device(cfg.device))
        self.dtype = DTYPES[cfg.dtype]
        self.lead = rank() == 0  # only rank 0 writes the run directory
        check_optimizer_options(cfg)  # a bad option fails before the data and the model load
        train_set, test_set = build_data(cfg)
        self.data_info = {"train": {"name": train_set.name, "examples": len(train_set), **train_set.meta},
                          "test": None if test_set is None else {"name": test_set.name, "examples": len(test_set),
                                                                 **test_set.meta}}
        self.train_set = train_set.to(self.device, self.dtype)
        test_set = None if test_set is None else test_set.to(self.device, self.dtype)
        self.model, self.spec = build_model(cfg, self.device, self.dtype)
        self.init_info = None if cfg.init_from is None else load_initial_weights(cfg.init_from, self.model, self.spec)
        self.loss_fn = get_loss(cfg.loss)
        for data in (self.train_set, test_set):
            if data is not None:
                check_model_fits(self.model, self.loss_fn, data, cfg.curvature.k)
        self.optimizer = build_optimizer(cfg, self.model, self.train_set, self.loss_fn)
        if isinstance(self.optimizer, (RS, SA)):
            self.optimizer.set_example_closure(self._example_closure)
        self.num_classes = int(self.train_set.y.max()) + 1 if cfg.label_noise is not None else 0
        self.loader: ShuffledLoader | None = None
        self.batch: tuple[Tensor, Tensor] | None = None  # the mini-batch of the latest gradient pass
        if cfg.batch_sharpness and world_size() > 1:
            raise ConfigError("batch_sharpness runs in one process (the mini-batch is not sharded); got "
                              f"{world_size()} ranks", argument="batch_sharpness")
        if cfg.batch_size is not None:
            self.loader = ShuffledLoader(self.train_set, cfg.batch_size, torch.Generator().manual_seed(offset_seed(cfg.seed, 1)))
        n, pb = len(self.train_set), cfg.physical_batch_size
        own = shard_dataset(self.train_set)  # this rank's examples (all of them in one process)
        self.batches = [(own.x[i:i + pb], own.y[i:i + pb]) for i in range(0, len(own), pb)]
        probe = self.train_set if cfg.probe_n is None else self.train_set.subset(min(cfg.probe_n, n))
        test_set = None if test_set is None else shard_dataset(test_set)
        self.tracker = build_tracker(cfg, shard_dataset(probe), test_set, self.loss_fn,
                                     sink=self.record if self.lead else None)
        self.logs: list[Any] = []  # cfg.log's sinks, opened once the resume point is known (rank 0)
        self.wandb_id: str | None = None
        self.stats: tuple[float, float | None] = (math.nan, None)

    # -- global RNG (dropout and any other implicit draw during training) ------------------
    def _rng_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def _set_rng_state(self, state: Mapping[str, Any]) -> None:
        torch.set_rng_state(state["cpu"])
        if self.device.type == "cuda" and "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"], self.device)

    # -- checkpoints -------------------------------------------------------------------------
    def save(self, step: int) -> None:
        rngs = gather_to_rank0(self._rng_state())  # dropout draws differ between shards
        if rngs is None:
            return
        state: dict[str, Any] = {"optimizer": self.optimizer.state_dict(), "rng": rngs[0],
                 "loader": None if self.loader is None else self.loader.state_dict(),
                 "tracker": self.tracker.state_dict(), "format": "sharpscope-run-1",
                 "logs": {"wandb_id": self.wandb_id}}
        if len(rngs) > 1:
            state["rng_ranks"] = rngs
        self.run.save_checkpoint(step, self.model, spec=self.spec, state=state,
                                 keep_older=self.cfg.keep_checkpoints)

    def restore(self) -> int | None:
        raw = on_rank0(self.run.load_checkpoint)  # every rank restores rank 0's reading
        if raw is None:
            return None
        extra = raw.extra
        if raw.spec != self.spec:
            raise CheckpointError(f"{raw.path}: model spec {raw.spec} differs from the config's {self.spec}")
        fit_state_dict(self.model, raw.state_dict, source=str(raw.path))
        try:
            self.optimizer.load_state_dict(extra["optimizer"])
            rngs = extra.get("rng_ranks") or []
            self._set_rng_state(rngs[rank()] if len(rngs) == world_size() else extra["rng"])
            if self.loader is not None:
                self.loader.load_state_dict(extra["loader"])
            self.tracker.load_state_dict(extra["tracker"])
            self.wandb_id = (extra.get("logs") or {}).get("wandb_id")
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{raw.path}: cannot restore the training state ({type(e).__name__}: {e}); "
                                  "pass force=True to start the run again", argument="force") from None
        return int(extra["step"])

    # -- records -----------------------------------------------------------------------------
    def record(self, record: RunRecord) -> bool:
        """Append ``record`` (its stored form, ``record.to_json()``) to ``metrics.jsonl`` and, when it is new
        there, send it to the ``log`` sinks (a record a resumed run computes again reaches them once)."""
        new = self.run.append_metric(record.to_json())
        if new:
            for sink in self.logs:
                sink(record)
        return new

    def open_logs(self, step: int | None) -> None:
        """Open the config's ``log`` sinks and bring each in line with the kept records (see
        :mod:`sharpscope.track.sinks`); ``step`` is the checkpoint resumed from (None: from the start)."""
        if not self.lead or not self.cfg.log:
            return
        if step is None or self.wandb_id is None:
            self.wandb_id = new_wandb_id()
        config = {k: v for k, v in self.cfg.to_dict().items() if k not in OUTPUT_FIELDS}
        self.logs = open_logs(self.cfg.log, config=config, run_name=self.run.path.resolve().name,
                              wandb_id=self.wandb_id)
        kept = self.run.read_metrics() if step is not None else []
        for sink in self.logs:
            sink.catch_up(kept, step)

    # -- one step ----------------------------------------------------------------------------
    def _closure(self, batch: tuple[Tensor, Tensor] | None) -> Callable[[], Tensor]:
        """Zero the gradients, back-propagate the (full-batch or mini-batch) mean loss, return it.

        Also stores ``(loss, accuracy)`` of the pass in ``self.stats``.
        """
        batches = self.batches if batch is None else [self._own_part(batch)]
        batches = [(x, y) for x, y in batches if x.shape[0] > 0]
        total = len(self.train_set) if batch is None else int(batch[0].shape[0])  # all ranks' examples

        def closure() -> Tensor:
            self.optimizer.zero_grad(set_to_none=True)
            loss_sum, acc_sum, scores = 0.0, 0.0, True
            for x, y in batches:
                w = x.shape[0] / total
                out = self.model(x)
                loss = self.loss_fn(out, y)
                (loss * w).backward()
                loss_sum += w * float(loss.detach())
                scores = scores and out.ndim == 2 and out.shape[1] > 1
                if scores:
                    acc_sum += w * accuracy(out.detach(), y)
            sum_gradients(self.model.parameters())
            loss_sum, acc_sum, no_scores = sum_across_ranks(torch.tensor(  # NCCL sums CUDA tensors only
                [loss_sum, acc_sum, float(bool(batches) and not scores)], dtype=torch.float64,
                device=self.device)).tolist()
            self.stats = (loss_sum, acc_sum if no_scores == 0 else None)
            return torch.tensor(loss_sum)

        return closure

    def _own_part(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """The contiguous part, on this rank, of a mini-batch that every rank drew alike (may be empty)."""
        lo, hi = shard_bounds(int(batch[0].shape[0]))
        return batch[0][lo:hi], batch[1][lo:hi]

    def _example_closure(self, indices: Tensor) -> Tensor:
        """SA's per-example (or per-B-batch) loss: zero grads, mean loss over ``indices``, backward."""
        self.optimizer.zero_grad(set_to_none=True)
        idx = indices.to(self.device)
        loss = self.loss_fn(self.model(self.train_set.x[idx]), self.train_set.y[idx])
        loss.backward()
        return loss.detach()

    def gradient_pass(self, step: int) -> tuple[Callable[[], Tensor], float, float | None]:
        """Gradients at ``θ_t`` (full batch, or the next mini-batch with fresh label noise if asked);
        returns the closure, loss and accuracy."""
        batch = self.loader.next_batch() if self.loader is not None else None
        if batch is not None and self.cfg.label_noise is not None:
            batch = (batch[0], fresh_label_noise(batch[1], self.cfg.label_noise, self.num_classes,
                                                 seed=self.cfg.seed, step=step))
        self.batch = batch
        closure = self._closure(batch)
        with torch.enable_grad():
            closure()
        return closure, *self.stats

    def apply(self, closure: Callable[[], Tensor]) -> None:
        """The update ``θ_t → θ_{t+1}`` from the gradients of :meth:`gradient_pass` (already in
        ``.grad``): ``torch.optim`` optimizers step on them; the perturbation optimizers re-evaluate
        ``closure`` at the points they move to (:meth:`PerturbedOptimizer.step_from_gradient`)."""
        if isinstance(self.optimizer, PerturbedOptimizer):
            self.optimizer.step_from_gradient(closure)
            self.optimizer.zero_grad(set_to_none=True)
        else:
            self.optimizer.step()

    # -- the loop ----------------------------------------------------------------------------
    def measure(self, step: int) -> Measurement:
        stored = on_rank0(lambda: self.run.find_metric(MEASUREMENT, step)
                          if self.run.has_metric(MEASUREMENT, step) else None)
        if stored is not None:  # measured before a crash: its SAM batch record may still be missing
            if not on_rank0(lambda: self.run.has_metric(SAM_BATCH, step)):
                self.tracker.expect_batch_record(step, self.optimizer)
            return Measurement.from_json(stored)
        return self.tracker.measure(step, self.model, self.optimizer)

    def ensure_checkpoint(self, step: int) -> None:
        latest = on_rank0(self.run.latest_checkpoint)
        if latest is None or latest[0] != step:
            self.save(step)

    def train(self, resume: bool) -> RunSummary:
        cfg = self.cfg
        started = time.perf_counter()
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(offset_seed(cfg.seed, 2))
            start = self.restore() if resume else None
            self.open_logs(start)
            t = start or 0
            self.model.train()
            status, event = "completed", None
            while True:
                measured = None
                if self.tracker.due(t) or t == cfg.steps:
                    measured = self.measure(t)
                if t % cfg.checkpoint_every == 0 or t == cfg.steps:
                    self.ensure_checkpoint(t)
                if t >= cfg.steps:
                    break
                reached = _reached(cfg, measured.train_loss, measured.train_acc) \
                    if self.loader is not None and measured is not None else None
                if reached is not None:
                    status = reached
                    break
                closure, loss, acc = self.gradient_pass(t)
                if not math.isfinite(loss):
                    status = "diverged"
                    event = Divergence.made({"step": t, "train_loss": loss, "train_acc": acc,
                                             "batch": "full" if self.loader is None else "mini-batch"})
                    if self.lead:
                        self.record(event)
                    break
                reached = _reached(cfg, loss, acc) if self.loader is None else None
                if reached is not None:
                    status = reached
                    self.measure(t)
                    break
                sharp = None
                if cfg.batch_sharpness and self.batch is not None and self.tracker.wants_batch_record(t):
                    sharp = self.tracker.batch_sharpness(t, self.model, self.batch)  # at θ_t, before the step
                self.tracker.before_step(t, self.model)  # θ_t for the update curvature, after checkpoint t
                self.apply(closure)
                broadcast_buffers(self.model)
                self.tracker.after_step(t, self.model, self.optimizer, sharp)  # alignment / SAM batch records of θ_t → θ_{t+1}
                t += 1
                if self.progress is not None:
                    self.progress(t, cfg.steps, self.tracker.last)
            self.ensure_checkpoint(t)
        seconds = time.perf_counter() - started
        return on_rank0(lambda: self.summary(t, status, event, start, seconds))

    def summary(self, step: int, status: str, event: Divergence | None, start: int | None,
                seconds: float) -> RunSummary:
        """Write ``summary.json`` from the stored records and return it as stored (:meth:`RunSummary.from_json`)."""
        records = self.run.read_metrics()
        measured = [Measurement.from_json(r) for r in records if is_measurement(r)]
        updates = [UpdateReading.from_json(r) for r in records if record_kind(r) == UPDATE_CURVATURE]
        best: tuple[float, int] | None = None
        crossing = None
        for m in measured:
            lam = m.lambda_max
            if lam is None or not math.isfinite(lam):
                continue
            if best is None or lam > best[0]:
                best = (lam, m.step)
            edge = as_number(m.edge)
            _, bounded = bounded_sharpness(m)
            if crossing is None and math.isfinite(edge) and bounded is not None and bounded >= edge:
                crossing = m.step
        latest = self.run.latest_checkpoint()
        summary = RunSummary(
            status=status, step=step, steps_requested=self.cfg.steps, recipe=self.cfg.recipe, scale=self.cfg.scale,
            diverged_at_step=None if event is None else event.step,
            nonfinite_loss=None if event is None else event.train_loss,
            measurements=len(measured),
            final=measured[-1].summary_part() if measured else {},
            max_sharpness=None if best is None else {"value": best[0], "step": best[1]},
            first_step_at_or_above_edge=crossing,
            hvps_total=sum(m.total_hvps for m in measured),
            measure_seconds_total=sum(m.total_seconds for m in measured),
            update_curvature=None if resolve_method(self.cfg.update_curvature) is None else {
                "method": resolve_method(self.cfg.update_curvature), "every": self.cfg.update_every, "readings": len(updates),
                "hvps": sum(u.hvps for u in updates), "forwards": sum(u.forwards for u in updates)},
            session={"resumed_from_step": start, "seconds": seconds, "notes": list(self.run.notes)},
            data=self.data_info, sharding=sharding(len(self.train_set)), init=self.init_info,
            checkpoint=None if latest is None else str(latest[1]), run_dir=str(self.run.path)).to_json()
        self.run.write_summary(summary)
        return RunSummary.from_json(summary)


def _reached(cfg: TrainConfig, loss: float | None, acc: float | None) -> str | None:
    """The stopping status when the training accuracy reached ``stop_at_train_acc`` (``"reached_train_acc"``) or the
    training loss fell to ``stop_at_train_loss`` (``"reached_train_loss"``); None otherwise."""
    if cfg.stop_at_train_acc is not None and acc is not None and acc >= cfg.stop_at_train_acc:
        return "reached_train_acc"
    if cfg.stop_at_train_loss is not None and loss is not None and loss <= cfg.stop_at_train_loss:
        return "reached_train_loss"
    return None


def train(config: TrainConfig | Mapping[str, Any], out_dir: str | Path, *, force: bool = False,
          progress: Progress | None = None) -> RunSummary:
    """Run ``config`` into the run directory ``out_dir`` and return its summary (a
    :class:`~sharpscope.io.records.RunSummary`; ``summary.to_json()`` is ``summary.json``).

    A new or empty ``out_dir`` starts the run; a directory holding the same config resumes it from
    its latest checkpoint (or returns the stored summary if the run has finished); any other
    existing directory raises :class:`ConfigError` unless ``force`` (which deletes the old run's
    files first). ``progress(step, steps, last_measurement)`` is called after every step. Data, model
    and optimizer are built (and so checked) before the folder is touched, so a bad config leaves
    no trace. Under a process group every rank calls this with the same arguments (see the module
    docstring); all return rank 0's summary.
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    cfg.validate()
    check_packages(cfg.log)
    session = _Session(cfg, RunDirectory(out_dir), progress)
    try:
        with contextlib.ExitStack() as held:
            state, done = on_rank0(lambda: _open_run(session.run, cfg, force, held))
            if done is not None:
                return RunSummary.from_json(done).returned_again()
            return session.train(resume=state == "resume")
    except OSError as e:
        raise storage_error(e, session.run.path) from None
    finally:
        close_logs(session.logs)


def storage_error(error: OSError, run_dir: Path) -> StorageError:
    """One line for an ``OSError`` met while writing the run: the path, the errno, and that the
    records and checkpoints written before it are intact (every write is atomic or an fsynced
    append, which a resume repairs)."""
    where = error.filename or run_dir
    return StorageError(f"{where}: {os_error_text(error)}; the run stopped there and nothing it had "
                        "written was lost: fix the cause (free space, a writable mount, permissions) and rerun "
                        "the same command to resume")


def _open_run(run: RunDirectory, cfg: TrainConfig, force: bool,
              held: contextlib.ExitStack) -> tuple[str, dict[str, Any] | None]:
    """Lock ``run`` until ``held`` closes, create or recognise the run, prepare a resume; the stored
    summary if the run has finished."""
    held.enter_context(run.lock())
    state = run.create(cfg.to_dict(), force=force, defaults=TrainConfig.defaults(), outputs=OUTPUT_FIELDS)
    done = run.finished_summary() if state == "resume" else None
    if state == "resume" and done is None:
        run.prepare_resume()
    return state, done
