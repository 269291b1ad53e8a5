"""Training-loop callbacks for PyTorch Lightning and Hugging Face transformers.

Importing this module imports neither framework: ``lightning_callback()`` and
``huggingface_callback()`` import theirs when called and build a subclass of its callback base
class, driving a :class:`~otel_gpu.session.tracker.TrainingTracker` (a new one on the global
providers when none is given).

What is measured, since neither framework has a hook around the fetch of a batch:

Lightning (``lightning.pytorch`` or ``pytorch_lightning``)
    A step is one training batch: from the end of the previous batch (``on_train_batch_end``) to
    this batch's ``on_train_batch_end``. Its data wait is the gap from the previous batch's
    ``on_train_batch_end`` to this batch's ``on_train_batch_start``: fetching the batch from the
    dataloader, moving it to the device, and Lightning's per-batch bookkeeping. For the first
    batch of an epoch the gap starts at ``on_train_epoch_start`` (so it includes starting the
    dataloader's workers); after a validation run it starts at ``on_validation_end``, so
    validation is not counted. Work done by callbacks that run after this one in
    ``on_train_batch_end`` (e.g. saving a checkpoint every n steps) also falls in the gap. Its
    compute is ``on_train_batch_start`` to ``on_train_batch_end``: forward, backward and, under
    automatic optimization, the optimizer step. With gradient accumulation every micro-batch is a
    step. Samples come from the batch (:func:`~otel_gpu.session.tracker.batch_size_of`). Each
    training epoch is one epoch span, numbered by ``trainer.current_epoch``.

Hugging Face ``Trainer``
    A step is one optimizer update (``state.global_step``). Its data wait is the gap from the
    previous ``on_step_end`` to this ``on_step_begin``, in which the Trainer fetches the batch
    (from version 4.46 on, all the micro-batches of a gradient-accumulation group). For the first
    step of an epoch the gap starts at ``on_epoch_begin``; logging, evaluation and checkpoint
    saving are excluded by restarting the gap at ``on_log``, ``on_evaluate`` and ``on_save``. Its
    compute is ``on_step_begin`` to ``on_step_end``. Samples are
    ``args.train_batch_size * args.gradient_accumulation_steps`` per process (the last step of an
    epoch may hold fewer). Each epoch is one epoch span, numbered by ``round(state.epoch)``.
"""

from __future__ import annotations

from typing import Any

from otel_gpu.session.tracker import TrainingTracker, batch_size_of

__all__ = ["huggingface_callback", "lightning_callback"]

_classes: dict[tuple[str, type], type] = {}


def lightning_callback(tracker: TrainingTracker | None = None) -> Any:
    """A ``lightning.pytorch.Callback`` that reports training steps through ``tracker``."""
    try:
        from lightning.pytorch import Callback
    except ImportError:
        try:
            from pytorch_lightning import Callback
        except ImportError as exc:
            raise ImportError(
                "otel_gpu.frameworks.lightning_callback() needs PyTorch Lightning: "
                "pip install lightning (or pytorch-lightning)"
            ) from exc
    cls = _build("lightning", Callback, _LightningHooks)
    return cls(tracker if tracker is not None else TrainingTracker())


def huggingface_callback(tracker: TrainingTracker | None = None) -> Any:
    """A ``transformers.TrainerCallback`` that reports training steps through ``tracker``."""
    try:
        from transformers import TrainerCallback
    except ImportError as exc:
        raise ImportError(
            "otel_gpu.frameworks.huggingface_callback() needs Hugging Face transformers: "
            "pip install transformers"
        ) from exc
    cls = _build("huggingface", TrainerCallback, _HuggingFaceHooks)
    return cls(tracker if tracker is not None else TrainingTracker())


def _build(kind: str, base: type, hooks: type) -> type:
    cls = _classes.get((kind, base))
    if cls is None:
        cls = type(hooks.__name__.lstrip("_"), (hooks, base), {"__module__": __name__})
        _classes[(kind, base)] = cls
    return cls


class _Hooks:
    """State shared by both callbacks: the open epoch, step and data wait."""

    def __init__(self, tracker: TrainingTracker) -> None:
        self.tracker = tracker
        self._epoch: Any = None
        self._step: Any = None
        self._wait: Any = None

    def _begin_epoch(self, n: int) -> None:
        self._end_epoch()
        self._epoch = self.tracker.epoch(n)
        self._wait = self.tracker.data_wait()

    def _end_epoch(self) -> None:
        self._step = None
        self._wait = None
        epoch, self._epoch = self._epoch, None
        if epoch is not None:
            epoch.end()

    def _begin_step(self) -> None:
        wait, self._wait = self._wait, None
        if wait is not None:
            wait.end()
        self._step = self.tracker.step()

    def _end_step(self, samples: int | None) -> None:
        step, self._step = self._step, None
        if step is not None:
            step.end(samples)
        self._wait = self.tracker.data_wait()

    def _restart_wait(self) -> None:
        if self._step is None:
            self._wait = self.tracker.data_wait()


class _LightningHooks(_Hooks):
    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._begin_epoch(int(getattr(trainer, "current_epoch", 0) or 0))

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, *args: Any) -> None:
        self._begin_step()

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, *args: Any
    ) -> None:
        self._end_step(batch_size_of(batch))

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._end_epoch()

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self._wait = None

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        self._restart_wait()

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._end_epoch()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._end_epoch()


class _HuggingFaceHooks(_Hooks):
    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._begin_epoch(round(getattr(state, "epoch", 0) or 0))

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._begin_step()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._end_step(_hf_samples(args))

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._end_epoch()

    def on_log(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._restart_wait()

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._restart_wait()

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._restart_wait()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._end_epoch()


def _hf_samples(args: Any) -> int | None:
    try:
        return int(args.train_batch_size) * int(args.gradient_accumulation_steps or 1)
    except Exception:
        return None
