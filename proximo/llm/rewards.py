"""Reward functions: your own `f(prompts, completions, **columns) -> list[float | None]`, built-in
verifiable checks, and the weighted sum of several of them.

A reward function gets, for a batch of B samples: prompts (the dataset's `prompt` values: strings, or
lists of chat messages), completions (strings; for chat prompts one assistant message each,
[{"role": "assistant", "content": text}], as in TRL) and every other dataset column as a keyword
argument holding B values. A function that declares **kwargs gets every column, one that names some
columns gets those, and a two-argument f(prompts, completions) gets none (the older signature).

None as a reward: that function does not score that sample. A sample's reward is the weighted sum over
the functions that scored it; a sample no function scores is skipped: it has no reward, gets advantage 0
and loss mask 0, and is left out of group means/stds, the reward statistics and evaluation accuracy.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import re
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from proximo.errors import ProximoError
from proximo.llm.data import render_prompt
from proximo.llm.precision import resolve_llm_device
from proximo.llm.reward_model import RewardModel, is_reward_model_dir
from proximo.llm.tokenizer import same_tokenizer

BUILTIN_REWARDS = ("exact_match", "numeric_match", "format_regex=PATTERN", "length_penalty=N")


def completion_text(completion: Any) -> str:
    """The text of a completion: the string itself, or the content of a chat completion's last message."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    raise ProximoError(f"a completion must be a string or a list of chat messages, got {completion!r}")


def _answers(answer: Sequence[Any] | None, name: str) -> Sequence[Any]:
    if answer is None:
        raise ProximoError(f"the {name} reward compares with an 'answer' column; the dataset has none "
                           f"(add an 'answer' column or use another reward)")
    return answer


def exact_match(prompts: list, completions: list, answer: Sequence[Any] | None = None, **_: Any) -> list[float | None]:
    """1.0 where the completion, stripped, equals str(answer) stripped, else 0.0 (None where answer is None)."""
    answers = _answers(answer, "exact_match")
    return [None if a is None else float(completion_text(c).strip() == str(a).strip())
            for c, a in zip(completions, answers)]


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def numeric_match(prompts: list, completions: list, answer: Sequence[Any] | None = None,
                  **_: Any) -> list[float | None]:
    """1.0 where the last number in the completion equals the answer as a number (to 1e-6 relative), else 0.0."""
    out: list[float | None] = []
    for c, a in zip(completions, _answers(answer, "numeric_match")):
        if a is None:
            out.append(None)
            continue
        try:
            target = float(str(a).replace(",", ""))
        except ValueError:
            raise ProximoError(f"numeric_match: answer {a!r} is not a number; use exact_match for text answers") from None
        found = _NUMBER.findall(completion_text(c).replace(",", ""))
        out.append(float(bool(found) and math.isclose(float(found[-1]), target, rel_tol=1e-6, abs_tol=1e-9)))
    return out


def format_regex(pattern: str) -> Callable[..., list[float]]:
    """A reward: 1.0 where the whole stripped completion matches the regular expression pattern, else 0.0."""
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ProximoError(f"format_regex: {pattern!r} is not a regular expression ({exc})") from None

    def format_reward(prompts: list, completions: list) -> list[float]:
        return [float(compiled.fullmatch(completion_text(c).strip()) is not None) for c in completions]
    format_reward.__name__ = f"format_regex={pattern}"
    return format_reward


def length_penalty(limit: int) -> Callable[..., list[float]]:
    """A reward: -max(0, characters - limit) / limit per completion (0 up to limit characters)."""
    if limit < 1:
        raise ProximoError(f"length_penalty needs a positive character limit, got {limit}")

    def length_reward(prompts: list, completions: list) -> list[float]:
        return [-max(0, len(completion_text(c)) - limit) / limit for c in completions]
    length_reward.__name__ = f"length_penalty={limit}"
    return length_reward


def _builtin(name: str, arg: str | None) -> Callable:
    if name in ("exact_match", "numeric_match"):
        if arg is not None:
            raise ProximoError(f"proximo:{name} takes no argument (got ={arg})")
        return exact_match if name == "exact_match" else numeric_match
    if name in ("format_regex", "length_penalty"):
        if arg is None:
            raise ProximoError(f"proximo:{name} needs an argument: proximo:{name}="
                               f"{'PATTERN' if name == 'format_regex' else 'N'}")
        if name == "format_regex":
            return format_regex(arg)
        try:
            return length_penalty(int(arg))
        except ValueError:
            raise ProximoError(f"proximo:length_penalty=N needs an integer N, got {arg!r}") from None
    raise ProximoError(f"unknown built-in reward proximo:{name}; built-ins: "
                       f"{', '.join('proximo:' + b for b in BUILTIN_REWARDS)}")


class RewardModelReward:
    """A trained reward model (`proximo llm rm`, TRL's RewardTrainer or any transformers sequence classifier
    with one label) as a reward function: its score of each prompt (chat prompts through its tokenizer's
    template) and completion, in batches, without gradients. A trainer whose policy shares the reward
    model's tokenizer hands it the sampled token ids instead (score_tokens): no decode and re-encode."""

    __name__ = "reward_model"

    def __init__(self, model: Any, batch_size: int = 256, source: str | None = None) -> None:
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.batch_size = batch_size
        self.source = source  # the folder it was read from, if any
        self.autocast = nullcontext  # a trainer sets its precision's autocast (prepare_reward_models)

    @classmethod
    def load(cls, directory: str | Path) -> "RewardModelReward":
        """The reward model saved in directory (a run directory of `proximo llm rm` or its model/ folder,
        or a transformers sequence-classifier folder), on the GPU when torch sees one."""
        return cls(RewardModel.load(directory).to(resolve_llm_device("auto")), source=str(directory))

    def reads_tokens_of(self, tokenizer: Any) -> bool:
        """True when tokenizer is the reward model's own (same vocabulary, specials and chat template)."""
        return same_tokenizer(self.model.tokenizer, tokenizer)

    def score_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Scores [B] (float32, CPU) of sequences in the reward model's own ids [B, L] with their mask."""
        scores = []
        with torch.inference_mode(), self.autocast():
            for start in range(0, input_ids.shape[0], self.batch_size):
                end = start + self.batch_size
                scores.append(self.model.score(input_ids[start:end], attention_mask[start:end]).float().cpu())
        return torch.cat(scores)

    def __call__(self, prompts: list, completions: list) -> list[float]:
        """Scores [B] of the completions of prompts."""
        texts = [render_prompt(p, self.model.tokenizer) for p in prompts]
        answers = [completion_text(c) for c in completions]
        scores: list[float] = []
        with torch.inference_mode(), self.autocast():
            for start in range(0, len(texts), self.batch_size):
                end = start + self.batch_size
                scores += self.model.score_texts(texts[start:end], answers[start:end]).tolist()
        return scores


def _put_cwd_on_path() -> None:
    """Put the current directory on sys.path, as `python -m` has it and uvicorn or gunicorn put it (the
    `proximo` console script starts without it). It stays there: a reward module may import its
    neighbours when it is called."""
    cwd = str(Path.cwd())
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def load_reward(spec: str) -> Callable:
    """The reward function named by spec: proximo:NAME[=ARG] (a built-in), package.module:function (found on
    sys.path or in the current directory), path/to/file.py:function, or a reward-model directory (from
    `proximo llm rm`, or a transformers sequence classifier with num_labels 1 such as TRL writes)."""
    if Path(spec).is_dir():
        if not is_reward_model_dir(spec):
            raise ProximoError(f"--reward {spec}: a directory works as a reward only if it holds a reward model "
                               f"(a transformers sequence classifier with one label, or a `proximo llm rm` run); "
                               f"give module:function otherwise")
        return RewardModelReward.load(spec)
    if spec.startswith("proximo:"):
        # Split at the first '=' only: a built-in's argument (a regex) may hold ':' and '='.
        name, eq, arg = spec[len("proximo:"):].partition("=")
        return _builtin(name, arg if eq else None)
    return load_function(spec, "--reward", "module:function (or proximo:exact_match)")


def load_function(spec: str, flag: str, form: str = "module:function") -> Callable:
    """The function a user names as package.module:function (found on sys.path or in the current
    directory) or path/to/file.py:function; errors name flag (--reward, --tools) in one line."""
    module_name, sep, func_name = spec.rpartition(":")
    if not sep or not module_name or not func_name:
        raise ProximoError(f"{flag} {spec!r} is not of the form {form}")
    path = Path(module_name)
    try:
        if module_name.endswith(".py") or path.is_file():
            if not path.is_file():
                raise ProximoError(f"{flag} {spec!r}: no file {module_name}")
            module_key = f"proximo_user_{abs(hash(str(path.resolve())))}"
            loader = importlib.util.spec_from_file_location(module_key, path)
            module = importlib.util.module_from_spec(loader)
            sys.modules[module_key] = module
            loader.loader.exec_module(module)
        else:
            _put_cwd_on_path()
            module = importlib.import_module(module_name)
    except ProximoError:
        raise
    except Exception as exc:  # the user's module failed to import: say which and why, in one line
        raise ProximoError(f"{flag} {spec!r}: cannot import {module_name} ({type(exc).__name__}: {exc}); "
                           f"run from the folder that holds it, put it on PYTHONPATH or give a path to the .py "
                           f"file") from None
    func = getattr(module, func_name, None)
    if func is None:
        names = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise ProximoError(f"{flag} {spec!r}: {module_name} has no {func_name}; its functions: "
                           f"{', '.join(names) or 'none'}")
    if not callable(func):
        raise ProximoError(f"{flag} {spec!r}: {module_name}.{func_name} is not callable")
    return func


def _reward_name(func: Callable) -> str:
    return getattr(func, "__name__", None) or type(func).__name__


def reward_spec(source: Any) -> str | None:
    """How to load a reward source again (for `proximo llm eval`): a spec string with its file or folder
    made absolute, the folder a reward model was read from, or None for a Python object."""
    if isinstance(source, RewardModelReward):
        return None if source.source is None else str(Path(source.source).resolve())
    if not isinstance(source, (str, Path)):
        return None
    spec = str(source)
    if spec.startswith("proximo:") or Path(spec).is_dir():
        return str(Path(spec).resolve()) if Path(spec).is_dir() else spec
    module_name, _, func_name = spec.rpartition(":")
    if module_name.endswith(".py") or Path(module_name).is_file():
        return f"{Path(module_name).resolve()}:{func_name}"
    return spec


class RewardSet:
    """Several reward functions with weights: score(prompts, completions, columns, rows) gives the
    weighted sum per sample (NaN where no function scored it) with per-function means. A source is a
    function, a spec string (see load_reward), a RewardModel or a RewardModelReward; specs records how
    to load each one again (None for a Python object)."""

    def __init__(self, funcs: Callable | Sequence[Callable | str], weights: Sequence[float] | None = None) -> None:
        funcs = [funcs] if callable(funcs) or isinstance(funcs, (str, Path)) else list(funcs)
        if not funcs:
            raise ProximoError("pass at least one reward function")
        self.funcs = [load_reward(str(f)) if isinstance(f, (str, Path)) else
                      RewardModelReward(f) if isinstance(f, RewardModel) else f for f in funcs]
        self.specs = [reward_spec(f) if isinstance(f, (str, Path)) else reward_spec(g)
                      for f, g in zip(funcs, self.funcs)]
        for f in self.funcs:
            if not callable(f):
                raise ProximoError(f"a reward function must be callable as f(prompts, completions, **columns), "
                                   f"got {f!r}")
        if weights is None:
            weights = [1.0] * len(self.funcs)
        weights = [float(w) for w in weights]
        if len(weights) != len(self.funcs):
            raise ProximoError(f"{len(weights)} reward weights for {len(self.funcs)} reward functions; "
                               f"give one weight per --reward")
        if not all(math.isfinite(w) for w in weights):
            raise ProximoError(f"reward weights must be finite numbers, got {weights}")
        self.weights = weights
        names = [_reward_name(f) for f in self.funcs]
        # Two sources of one name (two reward models, say) keep apart in the per-function statistics.
        self.names = [name if names.count(name) == 1 else f"{name}_{names[:k + 1].count(name)}"
                      for k, name in enumerate(names)]
        self._wanted = [self._columns_wanted(f) for f in self.funcs]

    @staticmethod
    def _columns_wanted(func: Callable) -> set[str] | None:
        """None: every column (the function takes **kwargs); else the names it declares beyond two."""
        try:
            params = list(inspect.signature(func).parameters.values())
        except (TypeError, ValueError):
            return set()
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return None
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        return {p.name for p in positional[2:]} | {p.name for p in params if p.kind is p.KEYWORD_ONLY}

    def _call(self, k: int, prompts: list, completions: list, columns: dict[str, list]) -> Any:
        wanted = self._wanted[k]
        kwargs = columns if wanted is None else {n: v for n, v in columns.items() if n in wanted}
        return self.funcs[k](prompts, completions, **kwargs)

    def _first_failing_row(self, k: int, prompts, completions, columns, rows) -> str:
        # The batch call raised: rerun one sample at a time to name the row that breaks it.
        for i in range(len(prompts)):
            try:
                self._call(k, prompts[i:i + 1], completions[i:i + 1], {n: v[i:i + 1] for n, v in columns.items()})
            except Exception:  # noqa: BLE001 - looking for the row, the error was already caught
                return f" on dataset row {rows[i]}" if rows is not None else f" on sample {i}"
        return ""

    def __call__(self, prompts: list, completions: list, **columns: list) -> list[float | None]:
        """The weighted sum per sample (None where no function scored it): a reward function itself."""
        rewards, _ = self.score(prompts, completions, columns)
        return [None if math.isnan(r) else r for r in rewards.tolist()]

    def reward_models(self) -> list[RewardModelReward]:
        """The reward models among the sources, in order."""
        return [f for f in self.funcs if isinstance(f, RewardModelReward)]

    def score(self, prompts: list, completions: list, columns: dict[str, list] | None = None,
              rows: Sequence[int] | None = None, tokens: tuple | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """(rewards [B] float with NaN where no function scored the sample, {name: mean of its scores});
        rows [B] (optional) are the dataset rows of the samples, named in errors. tokens (optional):
        (input_ids [B, L], attention_mask [B, L], tokenizer) of the sampled sequences; a reward model that
        reads that tokenizer scores them as sampled instead of re-encoding the text."""
        columns = columns or {}
        batch = len(completions)
        total = torch.zeros(batch, dtype=torch.float64)
        scored = torch.zeros(batch, dtype=torch.bool)
        means: dict[str, float] = {}
        for k, (name, weight) in enumerate(zip(self.names, self.weights)):
            func = self.funcs[k]
            try:
                if tokens is not None and isinstance(func, RewardModelReward) and func.reads_tokens_of(tokens[2]):
                    values = func.score_tokens(tokens[0], tokens[1]).tolist()
                else:
                    values = self._call(k, prompts, completions, columns)
            except ProximoError:
                raise
            except Exception as exc:  # a user's function failed: name it, the row and the error, no traceback
                where = self._first_failing_row(k, prompts, completions, columns, rows)
                raise ProximoError(f"reward function {name} raised {type(exc).__name__}: {exc}{where}") from None
            try:
                values = list(values)
            except TypeError:
                raise ProximoError(f"reward function {name} returned {type(values).__name__}, not a list; "
                                   f"return one number (or None) per completion") from None
            if len(values) != batch:
                raise ProximoError(f"reward function {name} returned {len(values)} rewards for {batch} completions; "
                                   f"return one number (or None) per completion")
            got = []
            for i, v in enumerate(values):
                if v is None:
                    continue
                try:
                    number = float(v)
                except (TypeError, ValueError):
                    number = math.nan
                if not math.isfinite(number):
                    where = f"dataset row {rows[i]}" if rows is not None else f"sample {i}"
                    raise ProximoError(f"reward function {name} returned {v!r} for {where}; return a finite "
                                       f"number or None")
                total[i] += weight * number
                scored[i] = True
                got.append(number)
            means[name] = sum(got) / len(got) if got else math.nan
        rewards = torch.where(scored, total, torch.full_like(total, math.nan)).to(torch.float32)
        return rewards, means


def score_samples(rewards: RewardSet, dataset: Any, rows: Sequence[int] | None, texts: list[str],
                  completions: list[str], tokens: tuple | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """rewards.score of completions of prompt texts; with a dataset (a PromptDataset), the raw prompts and
    other columns of rows go to the functions, and the completions of chat prompts as one assistant message
    each (TRL's convention). Training and `proximo llm eval` score through this one function."""
    if dataset is None:
        return rewards.score(texts, completions, tokens=tokens)
    raw = dataset.prompts(rows)
    completions = [c if isinstance(p, str) else [{"role": "assistant", "content": c}]
                   for p, c in zip(raw, completions)]
    return rewards.score(raw, completions, dataset.columns(rows), rows, tokens=tokens)
