"""The run skeleton and its hooks: collect -> learn -> after-update callbacks, for every trainer.

    PPO("CartPole-v1").learn(100_000, callback=StopAtReturn(475))
    PPO("CartPole-v1").learn(100_000, callback=lambda row: row["episode_return_mean"] < 475)

A callback is a callable taking the update's metrics row, or an object with any of the hooks of
`Callback`; a hook that returns False stops training after that update (the run then finishes
as usual: final checkpoint, evaluation, summary). proximo's own checkpointing, health monitor,
progress display and periodic evaluation are callbacks on the same loop.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Iterable

from proximo.checkpoint import atomic_write_json


class Callback:
    """Hooks into a run, in the shape Stable-Baselines3 users know. `self.trainer` is the run's
    trainer once training starts (its global_step, policy, config, run_dir...)."""

    trainer: Any = None

    @property
    def num_timesteps(self) -> int:
        """The run's step counter, global_step: env steps (classic), updates (GRPO, PPO-RLHF) or optimizer
        steps (SFT, reward model) so far."""
        return int(getattr(self.trainer, "global_step", 0))

    def init_callback(self, trainer: Any) -> None:
        """Attach to a trainer (called once, before the first rollout)."""
        self.trainer = trainer

    def on_training_start(self) -> None:
        """Before the first rollout of this learn()/train() call."""

    def on_rollout_start(self) -> None:
        """Before each rollout."""

    def on_rollout_end(self) -> bool | None:
        """After a rollout, before learning from it; False stops without that update."""

    def on_update_end(self, row: dict[str, Any]) -> bool | None:
        """After each update with its metrics row (callbacks earlier in the list may have added to it)."""

    def on_training_end(self) -> None:
        """After the last update (also when a callback or an error stopped training)."""

    def state_dict(self) -> dict[str, Any]:
        """What this callback must remember across a resume (nothing by default)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what state_dict() returned."""


class FunctionCallback(Callback):
    """A plain function of the update's metrics row; returning False stops training."""

    def __init__(self, function: Callable[[dict[str, Any]], Any]) -> None:
        self.function = function

    def on_update_end(self, row: dict[str, Any]) -> bool | None:
        """Call the function with the row."""
        return False if self.function(row) is False else None


class CallbackList(Callback):
    """Several callbacks called in order; one False stops training, after the rest have run."""

    def __init__(self, callbacks: Iterable[Callback]) -> None:
        self.callbacks = list(callbacks)
        self.stopped_by: str | None = None

    def init_callback(self, trainer: Any) -> None:
        """Attach every callback to the trainer."""
        self.trainer = trainer
        for callback in self.callbacks:
            callback.init_callback(trainer)

    def on_training_start(self) -> None:
        """Every callback's on_training_start."""
        for callback in self.callbacks:
            callback.on_training_start()

    def on_rollout_start(self) -> None:
        """Every callback's on_rollout_start."""
        for callback in self.callbacks:
            callback.on_rollout_start()

    def on_rollout_end(self) -> bool | None:
        """Every callback's on_rollout_end; False if any said stop."""
        return self._all(lambda callback: callback.on_rollout_end())

    def on_update_end(self, row: dict[str, Any]) -> bool | None:
        """Every callback's on_update_end; False if any said stop."""
        return self._all(lambda callback: callback.on_update_end(row))

    def on_training_end(self) -> None:
        """Every callback's on_training_end."""
        for callback in self.callbacks:
            callback.on_training_end()

    def _all(self, hook: Callable[[Callback], bool | None]) -> bool | None:
        keep_going = True
        for callback in self.callbacks:
            if hook(callback) is False and keep_going:
                keep_going = False
                self.stopped_by = getattr(callback, "reason", None) or type(callback).__name__
        return None if keep_going else False


def as_callbacks(callback: Any) -> list[Callback]:
    """A list of Callback objects from None, a callable, a Callback or a list of either."""
    if callback is None:
        return []
    if isinstance(callback, Callback):
        return [callback]
    if isinstance(callback, (list, tuple)):
        return [item for entry in callback for item in as_callbacks(entry)]
    if callable(callback):
        return [FunctionCallback(callback)]
    raise TypeError(f"callback must be a function of the metrics row, a proximo.callbacks.Callback or a list of "
                    f"them, got {type(callback).__name__}")


def run_loop(collect: Callable[[], Any], learn: Callable[[Any], dict[str, Any]], done: Callable[[], bool],
             callbacks: CallbackList) -> str | None:
    """The run skeleton: until done(), collect a batch, learn from it, hand the row to the callbacks.

    Returns what stopped training early (a callback's name or reason), or None when done() did.
    """
    callbacks.on_training_start()
    try:
        while not done():
            callbacks.on_rollout_start()
            batch = collect()
            if callbacks.on_rollout_end() is False:
                return callbacks.stopped_by
            row = learn(batch)
            if callbacks.on_update_end(row) is False:
                return callbacks.stopped_by
        return None
    finally:
        callbacks.on_training_end()


class LogMetrics(Callback):
    """Every log_every updates (0: none), the row into metrics.csv, updates.jsonl and TensorBoard (and the
    tracker); a row for which always(row) is true is written whenever it comes (an LLM run's evaluation rows)."""

    def __init__(self, writer: Any, every: int, always: Callable[[dict[str, Any]], bool] | None = None) -> None:
        self.writer, self.every, self.always = writer, every, always

    def on_update_end(self, row: dict[str, Any]) -> None:
        """Write the row when due."""
        if (self.every and int(row["update"]) % self.every == 0) or (self.always is not None and self.always(row)):
            self.writer.write(row)

    def on_training_end(self) -> None:
        """Close the files."""
        self.writer.close()


class WatchHealth(Callback):
    """The live health monitor (proximo/diagnostics.py): names PPO's failure modes as they happen."""

    def __init__(self, monitor: Any) -> None:
        self.monitor = monitor

    def on_update_end(self, row: dict[str, Any]) -> None:
        """Judge the row; warn on the terminal and in diagnostics.jsonl when a rule fires."""
        self.monitor.observe_and_report(row, self.trainer.run_dir, echo=self.trainer.verbose)


class ShowProgress(Callback):
    """The progress bar (or periodic lines when stderr is not a terminal): the step count, the row's speed
    and its headline figure (classic: env steps/s and the recent mean return; LLM runs name theirs); a
    row without them shows the last ones seen."""

    def __init__(self, progress: Any, speed: str = "sps", headline: str = "episode_return_mean") -> None:
        self.progress, self.speed, self.headline = progress, speed, headline
        self.last = (0.0, float("nan"))

    def on_update_end(self, row: dict[str, Any]) -> None:
        """Show steps, speed and the headline figure."""
        speed, headline = row.get(self.speed), row.get(self.headline)
        self.last = (self.last[0] if speed is None else speed, self.last[1] if headline is None else headline)
        self.progress.update(row["global_step"], *self.last)

    def on_training_end(self) -> None:
        """Stop the bar."""
        self.progress.close()


class CheckpointEvery(Callback):
    """trainer.save_checkpoint() every `every` steps of the run's global_step: config.save_every."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.next_save = 0

    def on_training_start(self) -> None:
        """The first save falls on the next multiple of every."""
        self.next_save = (self.trainer.global_step // self.every + 1) * self.every

    def on_update_end(self, row: dict[str, Any]) -> None:
        """Save when the step count passed the next multiple."""
        if self.trainer.global_step >= self.next_save:
            self.trainer.save_checkpoint()
            self.next_save += self.every


class StopAtReturn(Callback):
    """Stop once the mean return of the recent training episodes (episode_return_mean) reaches a threshold."""

    def __init__(self, threshold: float, key: str = "episode_return_mean") -> None:
        self.threshold, self.key = float(threshold), key
        self.reason: str | None = None

    def on_update_end(self, row: dict[str, Any]) -> bool | None:
        """False once row[key] >= threshold."""
        value = row.get(self.key)
        if value is not None and math.isfinite(value) and value >= self.threshold:
            self.reason = f"{self.key} {value:.4g} reached {self.threshold:g} at step {self.num_timesteps:,}"
            return False
        return None


class EvalCallback(Callback):
    """Evaluate the deterministic policy on a separate env every eval_every env steps.

    The policy's observation normalization statistics are frozen during evaluation (they move
    only with training rollouts), and the evaluation's env is seeded apart from training, so a
    run with evaluation trains exactly as one without. Writes eval_return_mean / eval_return_std
    into the update's row; saves the best policy to best_model_dir (default <run>/best when the
    run has a directory); stops training when the mean reaches stop_at_return or after patience
    evaluations without an improvement of more than min_delta (0: never).
    """

    def __init__(self, eval_env: Any = None, eval_every: int = 10_000, episodes: int | None = None,
                 stop_at_return: float | None = None, patience: int = 0, min_delta: float = 0.0,
                 best_model_dir: str | Path | None = None, env_kwargs: dict | None = None, seed: int | None = None,
                 verbose: bool = True) -> None:
        if eval_every < 1:
            raise ValueError(f"eval_every must be at least 1 env step, got {eval_every}")
        self.eval_env, self.eval_every, self.episodes = eval_env, int(eval_every), episodes
        self.stop_at_return, self.patience, self.min_delta = stop_at_return, int(patience), float(min_delta)
        self.best_model_dir = None if best_model_dir is None else Path(best_model_dir)
        self.env_kwargs, self.seed, self.verbose = env_kwargs, seed, verbose
        self.best_return, self.best_step, self.evaluations_since_best = -math.inf, -1, 0
        self.next_eval: int | None = None
        self.history: list[tuple[int, float]] = []
        self.reason: str | None = None

    def on_training_start(self) -> None:
        """The first evaluation falls eval_every steps after the step training starts from."""
        if self.next_eval is None:
            self.next_eval = (self.num_timesteps // self.eval_every + 1) * self.eval_every

    def on_update_end(self, row: dict[str, Any]) -> bool | None:
        """Evaluate when due; False when a stopping rule is met."""
        if self.next_eval is None or self.num_timesteps < self.next_eval:
            return None
        while self.next_eval <= self.num_timesteps:
            self.next_eval += self.eval_every
        mean, std = self.evaluate()
        row.update(eval_return_mean=mean, eval_return_std=std)
        step = self.num_timesteps
        self.history.append((step, mean))
        improved = mean > self.best_return + self.min_delta
        if improved:
            self.best_return, self.best_step, self.evaluations_since_best = mean, step, 0
            self.save_best()
        else:
            self.evaluations_since_best += 1
        self._say(f"proximo: eval at step {step:,}: return {mean:.4g} +- {std:.3g}"
                  f"{' (best)' if improved else f' (best {self.best_return:.4g} at step {self.best_step:,})'}")
        if self.stop_at_return is not None and mean >= self.stop_at_return:
            self.reason = f"eval return {mean:.4g} reached --stop-at-return {self.stop_at_return:g} at step {step:,}"
            return False
        if self.patience and self.evaluations_since_best >= self.patience:
            self.reason = (f"no eval improvement in {self.patience} evaluations (best {self.best_return:.4g} at step "
                           f"{self.best_step:,})")
            return False
        return None

    def evaluate(self) -> tuple[float, float]:
        """(mean, std) of the deterministic policy's true returns over the evaluation episodes.

        The trainer plays them (Trainer.evaluate_episodes on the run's own env, Trainer.evaluate_on on eval_env or
        other env_kwargs): playing an env is the classic trainer's part, so the run skeleton imports no env code."""
        import numpy as np

        trainer, config = self.trainer, self.trainer.config
        env = self.eval_env if self.eval_env is not None else trainer.env
        kwargs = self.env_kwargs if self.env_kwargs is not None else trainer.env_kwargs
        seed = self.seed if self.seed is not None else config.seed + 20_000
        if self.eval_env is None and self.env_kwargs is None:
            returns, _ = trainer.evaluate_episodes(self.episodes or config.eval_episodes, seed)  # the run's own env
            return float(np.mean(returns)), float(np.std(returns))
        returns, _ = trainer.evaluate_on(env, kwargs, self.episodes or config.eval_episodes, seed)
        return float(np.mean(returns)), float(np.std(returns))

    def save_best(self) -> None:
        """Write the policy to best_model_dir (or <run>/best), if there is somewhere to write."""
        trainer = self.trainer
        folder = self.best_model_dir or (trainer.run_dir / "best" if getattr(trainer, "writes", False) else None)
        if folder is None:
            return
        trainer.save_policy_to(folder)
        atomic_write_json(folder / "eval.json", {"global_step": self.best_step, "eval_return_mean": self.best_return})

    def state_dict(self) -> dict[str, Any]:
        """The best evaluation so far and when the next one falls."""
        return {"best_return": None if math.isinf(self.best_return) else self.best_return,
                "best_step": self.best_step, "evaluations_since_best": self.evaluations_since_best,
                "next_eval": self.next_eval, "history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue with the saved best evaluation and schedule."""
        best = state.get("best_return")
        self.best_return = -math.inf if best is None else float(best)
        self.best_step = int(state.get("best_step", -1))
        self.evaluations_since_best = int(state.get("evaluations_since_best", 0))
        self.next_eval = state.get("next_eval")
        self.history = [tuple(item) for item in state.get("history", [])]

    def _say(self, line: str) -> None:
        import sys

        trainer = self.trainer
        if self.verbose and getattr(trainer, "verbose", False):
            print(line, file=sys.stderr, flush=True)
