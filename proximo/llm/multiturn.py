"""Episodes of several turns for GRPO: the policy writes, an environment answers (a tool's output, a user
turn, or nothing and a final reward), until the environment says done or a limit is reached. Only the
policy's tokens are trained: the environment's tokens sit in the response with response_mask 0 (and
Rollout.attention 1, so later turns attend to them), so log-probs, KL, advantages and the loss never
count them.

Tools are plain Python functions. Their schema comes from the signature and the Google-style docstring
(transformers.utils.get_json_schema, the function transformers' chat templates read; a function it
cannot describe gets a minimal schema from inspect). The policy calls them in the Hermes / Qwen2.5
format, one JSON object per call:

    <tool_call>{"name": "calculator", "arguments": {"expression": "123*456"}}</tool_call>

Each result goes back as a message of role "tool", rendered by the tokenizer's chat template when it
has one (the text the template puts between the assistant's turn and the next assistant turn), else as
the plain "<tool_response>RESULT</tool_response>". A tool that raises, bad JSON, an unknown tool, wrong
arguments and a call past its time limit are answered to the model as "error: ..." results; the run
goes on. A timed-out call's thread is left running in the background (Python cannot stop a thread):
give tools that may hang their own internal time limits too.

Batched: every episode of a batch advances one turn at a time through the sampler's KV-cache generate()
(turn 1 with one shared prefill per prompt group); episodes that are done sit out the later turns.
"""
from __future__ import annotations

import ast
import inspect
import json
import math
import operator
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from proximo.errors import ProximoError
from proximo.llm.generation import Rollout, generate, pad_prompts
from proximo.llm.models import position_limit
from proximo.llm.rewards import load_function  # the loader of --reward (the current directory on the path)

TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
PLAIN_TOOL_RESPONSE = "<tool_response>{content}</tool_response>"
BUILTIN_TOOLS = ("calculator",)


# ----------------------------------------------------------------------------------------------- tools
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression exactly.

    Args:
        expression: integers and decimals with + - * / // % ** and parentheses; x also multiplies (12x34).
    """
    text = expression.replace("x", "*").replace("×", "*").replace(",", "")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise ValueError(f"cannot read {expression!r} as arithmetic") from None
    value = _arithmetic(tree.body)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}


def _arithmetic(node: ast.AST) -> int | float:
    """The value of an expression tree of numbers and arithmetic operators (anything else: ValueError)."""
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _arithmetic(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _arithmetic(node.left), _arithmetic(node.right)
        # A bounded power: 9**9**9 would hold the tool (and its thread) for minutes.
        if isinstance(node.op, ast.Pow) and (abs(right) > 64 or abs(left) > 10 ** 12):
            raise ValueError("power too large (exponent at most 64, base at most 10**12)")
        return _OPS[type(node.op)](left, right)
    raise ValueError(f"only numbers and + - * / // % ** ( ) are allowed, got {ast.unparse(node)!r}")


def tool_schema(func: Callable) -> dict[str, Any]:
    """The JSON schema of a tool function ({"type": "function", "function": {name, description, parameters}}):
    transformers.utils.get_json_schema's, from type hints and a Google-style docstring; lacking those, a
    minimal one from inspect (the docstring's first line, parameters typed from their annotations)."""
    try:
        from transformers.utils import get_json_schema
        return get_json_schema(func)
    except Exception:  # noqa: BLE001 - no transformers, or a function it cannot describe: the minimal schema
        pass
    kinds = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object"}
    properties, required = {}, []
    for name, param in inspect.signature(func).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        kind = kinds.get(param.annotation)
        properties[name] = {"type": kind} if kind else {}
        if param.default is param.empty:
            required.append(name)
    doc = (inspect.getdoc(func) or "").strip().splitlines()
    return {"type": "function", "function": {
        "name": func.__name__, "description": doc[0] if doc else "",
        "parameters": {"type": "object", "properties": properties, "required": required}}}


@dataclass
class Tool:
    """A callable tool: its name (the function's), the function and its JSON schema."""

    func: Callable
    name: str = ""
    schema: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not callable(self.func):
            raise ProximoError(f"a tool must be a function, got {self.func!r}")
        self.name = self.name or getattr(self.func, "__name__", type(self.func).__name__)
        self.schema = self.schema or tool_schema(self.func)


def load_tools(spec: str | Sequence[Callable | str | Tool]) -> list[Tool]:
    """Tools from a comma-separated spec (module:function, path/to/file.py:function or proximo:calculator,
    the --tools syntax) or a list of functions, specs and Tools; ProximoError in one line for a bad one."""
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    tools = []
    for item in items:
        if isinstance(item, Tool):
            tools.append(item)
            continue
        if callable(item):
            tools.append(Tool(item))
            continue
        if not item:
            raise ProximoError(f"--tools {spec!r} has an empty entry; give module:function[,module:function]")
        if item.startswith("proximo:"):
            name = item[len("proximo:"):]
            if name not in BUILTIN_TOOLS:
                raise ProximoError(f"--tools: unknown built-in tool {item!r}; built-ins: "
                                   f"{', '.join('proximo:' + b for b in BUILTIN_TOOLS)}")
            tools.append(Tool(calculator))
            continue
        tools.append(Tool(load_function(item, "--tools", "module:function[,module:function] (or proximo:calculator)")))
    names = [t.name for t in tools]
    for name in names:
        if names.count(name) > 1:
            raise ProximoError(f"--tools names two tools {name!r}; the model calls tools by name, give each once")
    if not tools:
        raise ProximoError("--tools names no tool; give module:function[,module:function]")
    return tools


@dataclass
class ToolCall:
    """One parsed call: the tool's name and arguments, or the error to answer instead (name may be '')."""

    name: str
    arguments: dict[str, Any]
    error: str | None = None


def parse_tool_calls(text: str) -> list[ToolCall]:
    """The <tool_call>{"name": ..., "arguments": {...}}</tool_call> blocks of a policy turn, in order; a block
    that is not such JSON (or a <tool_call> left open) becomes a ToolCall carrying its error."""
    calls = []
    for match in TOOL_CALL.finditer(text):
        body = match.group(1).strip()
        try:
            data = json.loads(body)
        except json.JSONDecodeError as exc:
            calls.append(ToolCall("", {}, f"error: the tool call is not valid JSON ({exc.msg} at character "
                                          f"{exc.pos}); write {{\"name\": ..., \"arguments\": {{...}}}}"))
            continue
        arguments = data.get("arguments", {}) if isinstance(data, dict) else None
        if isinstance(arguments, str):  # some models write the arguments as a JSON string (OpenAI's layout)
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                arguments = None
        if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not isinstance(arguments, dict):
            calls.append(ToolCall("", {}, "error: a tool call must be {\"name\": \"TOOL\", \"arguments\": {...}}"))
            continue
        calls.append(ToolCall(data["name"], arguments))
    tail = TOOL_CALL.sub("", text)
    if "<tool_call>" in tail:
        calls.append(ToolCall("", {}, "error: <tool_call> without its closing </tool_call>"))
    return calls


def call_tool(tools: dict[str, Tool], call: ToolCall, timeout_s: float) -> str:
    """The text answered to the model for one call: the tool's result (str, or JSON for other values), or
    'error: ...' for a parse error, an unknown tool, wrong arguments, an exception or a call past timeout_s."""
    if call.error is not None:
        return call.error
    tool = tools.get(call.name)
    if tool is None:
        return f"error: unknown tool {call.name!r}; tools: {', '.join(tools) or 'none'}"
    try:
        inspect.signature(tool.func).bind(**call.arguments)
    except TypeError as exc:
        return f"error: wrong arguments for {call.name}: {exc}"
    except ValueError:
        pass  # a builtin without a signature: let the call say
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = tool.func(**call.arguments)
        except BaseException as exc:  # noqa: BLE001 - whatever the user's tool raises goes back to the model
            box["error"] = exc
    # A daemon thread: a tool that never returns is abandoned at the limit and does not keep the process alive.
    thread = threading.Thread(target=run, daemon=True, name=f"proximo-tool-{call.name}")
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        return f"error: {call.name} timed out after {timeout_s:g} s"
    if "error" in box:
        exc = box["error"]
        return f"error: {call.name} raised {type(exc).__name__}: {exc}"
    value = box.get("value")
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return str(value)


# ----------------------------------------------------------------------------------------- environments
@dataclass
class Reply:
    """The environment's answer to one policy turn: text to append (None: nothing), done, and an optional
    final reward (added to the reward functions' sum for the episode)."""

    text: str | None = None
    done: bool = False
    reward: float | None = None
    results: list[str] = field(default_factory=list)  # the tool results answered (for the logs' counts)


class Environment:
    """A multi-turn environment: reset(prompt) -> state for one episode, step(state, turn_text) -> Reply
    for each policy turn (the text of the turn, up to its stop token). Subclass it for user turns, games or
    graders; ToolEnvironment answers tool calls."""

    def reset(self, prompt: str) -> Any:
        """The state of a new episode on prompt (the rendered prompt text)."""
        return None

    def step(self, state: Any, turn_text: str, stop_text: str = "") -> Reply:
        """The answer to the policy's turn (stop_text: the text of the stop token that ended it, '' if cut)."""
        raise NotImplementedError


def render_reply(tokenizer, role: str, contents: Sequence[str], turn_text: str, stop_text: str) -> str:
    """The text that follows a policy turn when messages of role (one per content) answer it: through the
    tokenizer's chat template when it has one (what the template writes after the assistant's content, minus
    the stop token the policy wrote itself, then the messages and the next assistant prompt), else each
    content in PLAIN_TOOL_RESPONSE (role tool) or as 'ROLE: CONTENT ' (any other role)."""
    template = getattr(getattr(tokenizer, "tok", None), "apply_chat_template", None)
    if getattr(tokenizer, "chat_template", None) and template is not None:
        base = [{"role": "user", "content": "q"}, {"role": "assistant", "content": turn_text}]
        answers = [{"role": role, "content": c} for c in contents]
        try:
            before = template(base, tokenize=False)
            after = template(base + answers, tokenize=False, add_generation_prompt=True)
        except Exception:  # noqa: BLE001 - a template that refuses this role: the plain format below
            before = after = None
        if before is not None and after.startswith(before):
            at = before.rfind(turn_text) if turn_text else -1
            tail = before[at + len(turn_text):] if at >= 0 else ""
            # The policy's own stop token (<|im_end|>, <|end|>) already closed the turn: do not write it twice.
            if stop_text and tail.startswith(stop_text):
                tail = tail[len(stop_text):]
            return tail + after[len(before):]
    if role == "tool":
        return "".join(PLAIN_TOOL_RESPONSE.format(content=c) for c in contents)
    return "".join(f"{role}: {c} " for c in contents)


class ToolEnvironment(Environment):
    """Answers each turn's tool calls with their results (role tool); a turn without a call ends the episode."""

    def __init__(self, tools: str | Sequence[Callable | str | Tool], tokenizer=None, timeout_s: float = 5.0) -> None:
        self.tools = {t.name: t for t in load_tools(tools)}
        self.tokenizer = tokenizer
        if not timeout_s > 0:
            raise ProximoError(f"the tool time limit must be positive, got {timeout_s}")
        self.timeout_s = timeout_s

    @property
    def schemas(self) -> list[dict[str, Any]]:
        """The JSON schemas of the tools (what a chat template's tools= argument takes)."""
        return [t.schema for t in self.tools.values()]

    def step(self, state: Any, turn_text: str, stop_text: str = "") -> Reply:
        """Run the turn's tool calls and answer their results; no call: done."""
        calls = parse_tool_calls(turn_text)
        if not calls:
            return Reply(done=True)
        results = [call_tool(self.tools, c, self.timeout_s) for c in calls]
        return Reply(render_reply(self.tokenizer, "tool", results, turn_text, stop_text), results=results)


# ------------------------------------------------------------------------------------------ the episodes
@dataclass
class Episodes:
    """A batch of finished episodes: the Rollout (response = policy and environment tokens side by side,
    response_mask 1 on the policy's, attention 1 on both), the text of each episode's last policy turn (what
    the rewards score), the environment's final rewards (NaN: none) and counts for the logs."""

    rollout: Rollout
    completions: list[str]
    rewards: torch.Tensor
    turns: list[int]
    tool_calls: int = 0
    tool_errors: int = 0
    cut: int = 0  # episodes ended by the token or position limit, not by the environment or max_turns

    def stats(self) -> dict[str, float]:
        """Mean policy turns, tool calls and failed calls per episode, fraction of episodes cut by a limit."""
        n = max(len(self.turns), 1)
        return {"turns": sum(self.turns) / n, "tool_calls": self.tool_calls / n,
                "tool_errors": self.tool_errors / n, "episodes_cut_fraction": self.cut / n}


def run_episodes(generate_fn: Callable[[torch.Tensor, torch.Tensor, int], Rollout], tokenizer, env: Environment,
                 prompt_ids: list[list[int]], prompts: list[str], repeats: int, max_turns: int,
                 max_new_tokens: int, max_length: int | None = None) -> Episodes:
    """repeats episodes per prompt (rows grouped by prompt, [B = len(prompts) * repeats]), each of up to
    max_turns policy turns of up to max_new_tokens tokens. generate_fn(ids [b, P], mask [b, P], repeats) ->
    Rollout samples one turn for left-padded contexts (the sampler's KV-cache generate). An episode ends when
    the environment says done, after max_turns turns, at a turn cut without a stop token, or when its next
    turn would pass max_length positions (prompt + every turn and reply). The environment's step sees every
    turn the policy ended with a stop token, the last one included."""
    if max_turns < 1:
        raise ProximoError(f"max_turns must be at least 1, got {max_turns}")
    rows = [r for r in range(len(prompts)) for _ in range(repeats)]
    batch = len(rows)
    states = [env.reset(prompts[r]) for r in rows]
    context = [list(prompt_ids[r]) for r in rows]
    # Per episode: the response so far as (token ids, log-probs, written by the policy?) segments.
    segments: list[list[tuple[list[int], list[float], bool]]] = [[] for _ in range(batch)]
    last_text, turns = [""] * batch, [0] * batch
    env_reward = torch.full((batch,), math.nan)
    alive = list(range(batch))
    stops = set(tokenizer.stop_ids)
    calls = errors = cut = 0
    for turn in range(max_turns):
        if not alive:
            break
        if turn == 0:
            ids, mask = pad_prompts([list(p) for p in prompt_ids], tokenizer.pad_id)
            out = generate_fn(ids, mask, repeats)
        else:
            ids, mask = pad_prompts([context[e] for e in alive], tokenizer.pad_id)
            out = generate_fn(ids, mask, 1)
        lengths = out.response_mask.sum(1).tolist()
        tokens, logps = out.response_ids.tolist(), out.logprobs.tolist()
        still = []
        for k, e in enumerate(alive):
            n = int(lengths[k])
            written, logp = tokens[k][:n], logps[k][:n]
            segments[e].append((written, logp, True))
            context[e] += written
            turns[e] += 1
            ended = bool(written) and written[-1] in stops
            text = tokenizer.decode(written)
            last_text[e] = text
            if not ended:
                cut += 1
                continue
            # The environment sees every turn the policy ends, the last one too (a grader's final reward);
            # what it answers after turn max_turns is not appended.
            reply = env.step(states[e], text, _token_text(tokenizer, written[-1]))
            calls += len(reply.results)
            errors += sum(r.startswith("error:") for r in reply.results)
            if reply.reward is not None:
                env_reward[e] = float(reply.reward)
            if reply.done or turn == max_turns - 1:
                continue
            answer = tokenizer.encode(reply.text) if reply.text else []
            if max_length is not None and len(context[e]) + len(answer) + max_new_tokens > max_length:
                cut += 1  # no room for the reply and a whole next turn
                continue
            if answer:
                segments[e].append((answer, [0.0] * len(answer), False))
                context[e] += answer
            still.append(e)
        alive = still
    return Episodes(_rollout(prompt_ids, rows, segments, tokenizer.pad_id), last_text, env_reward, turns,
                    calls, errors, cut)


def episode_sampler(model, tokenizer, env: Environment, max_new_tokens: int, max_turns: int,
                    temperature: float = 1.0, greedy: bool = False) -> Callable:
    """The sample= of proximo.llm.run.evaluate for episodes: sample(prompts, ids [n, P], mask [n, P]) ->
    (rollout, last policy turn texts), each turn by generate() (greedy or at temperature)."""
    def one_turn(ids: torch.Tensor, mask: torch.Tensor, times: int) -> Rollout:
        return generate(model, ids, mask, max_new_tokens, tokenizer.stop_ids, tokenizer.pad_id,
                        temperature=temperature, greedy=greedy, repeats=times)

    def sample(prompts: list[str], ids: torch.Tensor, mask: torch.Tensor) -> tuple[Rollout, list[str]]:
        token_ids = [row[m.bool()].tolist() for row, m in zip(ids, mask)]  # the prompts as evaluate cut them
        episodes = run_episodes(one_turn, tokenizer, env, token_ids, prompts, 1, max_turns, max_new_tokens,
                                position_limit(model))
        return episodes.rollout, episodes.completions
    return sample


def _token_text(tokenizer, token: int) -> str:
    """The text of one token with special tokens written out ('' for a tokenizer that cannot say)."""
    tok = getattr(tokenizer, "tok", None)
    if tok is not None:
        return tok.decode([token], skip_special_tokens=False)
    return ""


def _rollout(prompt_ids: list[list[int]], rows: list[int], segments, pad_id: int) -> Rollout:
    """The Rollout of finished episodes: prompts left-padded, each response the concatenation of its segments."""
    ids, mask = pad_prompts([list(prompt_ids[r]) for r in rows], pad_id)
    width = max(1, max(sum(len(s[0]) for s in segs) for segs in segments))
    batch = len(rows)
    response = torch.full((batch, width), pad_id, dtype=torch.long)
    policy = torch.zeros((batch, width), dtype=torch.long)
    attention = torch.zeros((batch, width), dtype=torch.long)
    logprobs = torch.zeros((batch, width))
    for e, segs in enumerate(segments):
        at = 0
        for tokens, logp, own in segs:
            n = len(tokens)
            response[e, at:at + n] = torch.tensor(tokens, dtype=torch.long)
            attention[e, at:at + n] = 1
            if own:
                policy[e, at:at + n] = 1
                logprobs[e, at:at + n] = torch.tensor(logp)
            at += n
    return Rollout(ids, mask, response, policy, logprobs, attention=attention)


def add_environment_rewards(rewards: torch.Tensor, env_rewards: torch.Tensor) -> torch.Tensor:
    """rewards [B] (NaN: unscored) plus the environment's final rewards [B] (NaN: none) where given."""
    given = ~torch.isnan(env_rewards)
    base = torch.where(torch.isnan(rewards) & given, torch.zeros_like(rewards), rewards)
    return torch.where(given, base + env_rewards.to(rewards.dtype), rewards)
