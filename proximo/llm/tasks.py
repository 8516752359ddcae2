"""Built-in verifiable tasks: prompts, exact answers, programmatic rewards, held-out prompt sets and
synthetic preference pairs. A task's reward has the user-facing signature reward(prompts, completions).

add:  "123+456=" -> "579"      (operands below 10**digits)
sort: "sort 52813=" -> "12358"  (digits characters to sort ascending)
mul:  "123x456=" -> "56088"    (operands of digits digits: too long to multiply in a tiny model's head;
                                the task a calculator tool serves, proximo/llm/multiturn.py)

Train and held-out prompts are disjoint: a fixed hash of each problem puts about 1 in 16 problems
in the held-out partition, and the training sampler never draws from it.
"""
from __future__ import annotations

import random

from proximo.errors import ProximoError

TASKS = ("add", "sort", "mul")


def _held_out(key: int) -> bool:
    # A fixed multiplicative hash: stable across runs and Python versions (unlike hash()).
    return ((key * 2654435761) >> 7) % 16 == 0


class Task:
    """A verifiable task: sample_prompts, held_out_prompts, answer, reward, preference_pairs."""

    name = "task"
    max_new_tokens = 8

    def __init__(self, digits: int) -> None:
        self.digits = digits

    def _problem(self, rng: random.Random) -> tuple[str, int]:
        raise NotImplementedError

    def answer(self, prompt: str) -> str:
        """The exact correct completion of prompt (no <eos>)."""
        raise NotImplementedError

    def sample_prompts(self, rng: random.Random, n: int) -> list[str]:
        """n training prompts, never from the held-out partition."""
        out = []
        while len(out) < n:
            prompt, key = self._problem(rng)
            if not _held_out(key):
                out.append(prompt)
        return out

    def held_out_prompts(self, n: int) -> list[str]:
        """The first n distinct held-out prompts (the same list on every call)."""
        rng = random.Random(12345)
        seen: dict[str, None] = {}
        for _ in range(10_000_000):
            prompt, key = self._problem(rng)
            if _held_out(key):
                seen.setdefault(prompt)
                if len(seen) == n:
                    break
        return list(seen)

    def reward(self, prompts: list[str], completions: list[str]) -> list[float]:
        """1.0 for an exact answer, else 0.0."""
        if len(prompts) != len(completions):
            raise ProximoError(f"got {len(prompts)} prompts but {len(completions)} completions; pass one each")
        return [1.0 if c.strip() == self.answer(p) else 0.0 for p, c in zip(prompts, completions)]

    def corrupt(self, answer: str, rng: random.Random) -> str:
        """A wrong but plausible answer: half the time a digit off by one (a carry slip, the error a
        half-trained model makes most), else a digit changed, dropped, added or two digits swapped."""
        while True:
            if rng.random() < 0.5:
                i = rng.randrange(len(answer))
                digit = (int(answer[i]) + rng.choice((-1, 1))) % 10
                wrong = (answer[:i] + str(digit) + answer[i + 1:]).lstrip("0") or "0"
                if wrong != answer:
                    return wrong
                continue
            kind = rng.randrange(4)
            chars = list(answer)
            i = rng.randrange(len(chars))
            if kind == 0:
                chars[i] = str((int(chars[i]) + rng.randrange(1, 10)) % 10)
            elif kind == 1 and len(chars) > 1:
                del chars[i]
            elif kind == 2:
                chars.insert(i, str(rng.randrange(10)))
            elif kind == 3 and len(chars) > 1:
                j = rng.randrange(len(chars))
                chars[i], chars[j] = chars[j], chars[i]
            wrong = "".join(chars)
            if wrong and wrong != answer:
                return wrong

    def preference_pairs(self, rng: random.Random, n: int, held_out: bool = False) -> list[tuple[str, str, str]]:
        """n (prompt, chosen, rejected) triples: chosen is the exact answer, rejected a corruption."""
        prompts = self.held_out_prompts(n) if held_out else self.sample_prompts(rng, n)
        return [(p, self.answer(p), self.corrupt(self.answer(p), rng)) for p in prompts]


class AddTask(Task):
    """Addition of two operands below 10**digits, answer in ordinary digit order."""

    name = "add"

    def __init__(self, digits: int = 3) -> None:
        super().__init__(digits)
        self.max_new_tokens = digits + 2   # the sum has at most digits + 1 characters, then <eos>

    def _problem(self, rng: random.Random) -> tuple[str, int]:
        high = 10 ** self.digits
        a, b = rng.randrange(high), rng.randrange(high)
        return f"{a}+{b}=", a * high + b

    def answer(self, prompt: str) -> str:
        """The sum of the two operands of 'a+b='."""
        try:
            left, right = prompt.rstrip("=").split("+")
            return str(int(left) + int(right))
        except ValueError:
            raise ProximoError(f"prompt {prompt!r} is not of the form 'a+b=' of the add task") from None


class SortTask(Task):
    """Sort a string of digits ascending."""

    name = "sort"

    def __init__(self, digits: int = 5) -> None:
        super().__init__(digits)
        self.max_new_tokens = digits + 1

    def _problem(self, rng: random.Random) -> tuple[str, int]:
        text = "".join(str(rng.randrange(10)) for _ in range(self.digits))
        return f"sort {text}=", int("1" + text)

    def answer(self, prompt: str) -> str:
        """The digits of 'sort DIGITS=' in ascending order."""
        if not (prompt.startswith("sort ") and prompt.endswith("=")):
            raise ProximoError(f"prompt {prompt!r} is not of the form 'sort DIGITS=' of the sort task")
        return "".join(sorted(prompt[5:-1]))


class MulTask(Task):
    """Multiplication of two operands of exactly digits digits ('x' is the sign: the character tokenizer's
    alphabet has no '*'); the answer has up to 2 * digits digits."""

    name = "mul"

    def __init__(self, digits: int = 3) -> None:
        super().__init__(digits)
        self.max_new_tokens = 2 * digits + 1

    def _problem(self, rng: random.Random) -> tuple[str, int]:
        low, high = 10 ** (self.digits - 1), 10 ** self.digits
        a, b = rng.randrange(low, high), rng.randrange(low, high)
        return f"{a}x{b}=", a * high + b

    def answer(self, prompt: str) -> str:
        """The product of the two operands of 'axb='."""
        try:
            left, right = prompt.rstrip("=").split("x")
            return str(int(left) * int(right))
        except ValueError:
            raise ProximoError(f"prompt {prompt!r} is not of the form 'axb=' of the mul task") from None


def get_task(name: str, digits: int | None = None) -> Task:
    """The built-in task called name ('add', 'sort' or 'mul'), with digits if given."""
    if name == "add":
        task: Task = AddTask() if digits is None else AddTask(digits)
    elif name == "sort":
        task = SortTask() if digits is None else SortTask(digits)
    elif name == "mul":
        task = MulTask() if digits is None else MulTask(digits)
    else:
        raise ProximoError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    if not 1 <= task.digits <= 12:
        raise ProximoError(f"digits must lie in 1..12 for task {name!r}, got {task.digits}")
    return task
