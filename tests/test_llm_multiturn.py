"""Several turns and tools (proximo/llm/multiturn.py): tool schemas, tool-call parsing and the answers to
bad calls, the response mask over policy and environment tokens, a loss blind to environment tokens, and
multi-turn GRPO end to end through the CLI."""
import json
import time

import pytest
import torch

from proximo.cli import main
from proximo.errors import ProximoError
from proximo.llm.generation import Rollout, generate, response_logprobs
from proximo.llm.losses import grpo_token_loss, truncated_rows
from proximo.llm.modeldir import make_model_dir
from proximo.llm.models import forward_hidden, load_model, save_model
from proximo.llm.multiturn import (
    Environment,
    Reply,
    Tool,
    ToolCall,
    ToolEnvironment,
    add_environment_rewards,
    calculator,
    call_tool,
    load_tools,
    parse_tool_calls,
    render_reply,
    run_episodes,
    tool_schema,
)
from proximo.llm.tokenizer import CharTokenizer

QUIET = ["--quiet", "--no-tensorboard"]


def lookup(city: str, units: str = "metric") -> str:
    """Weather of a city.

    Args:
        city: the city's name
        units: metric or imperial
    """
    return f"sunny in {city}"


def boom(x: int) -> int:
    """Always fails.

    Args:
        x: anything
    """
    raise ValueError("no luck")


def slow(seconds: float) -> str:
    """Sleeps.

    Args:
        seconds: how long
    """
    time.sleep(seconds)
    return "woke"


def test_schema_of_a_documented_function_and_of_an_undocumented_one():
    assert tool_schema(lookup) == {"type": "function", "function": {
        "name": "lookup", "description": "Weather of a city.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "description": "the city's name"},
            "units": {"type": "string", "description": "metric or imperial"}}, "required": ["city"]},
        "return": {"type": "string"}}}

    def bare(a, b: int = 2):
        """Adds."""
    # No type hint on a: transformers refuses it; the minimal schema from inspect stands in.
    assert tool_schema(bare)["function"] == {"name": "bare", "description": "Adds.", "parameters": {
        "type": "object", "properties": {"a": {}, "b": {"type": "integer"}}, "required": ["a"]}}


def _answer(text, timeout=5.0):
    tools = {t.name: t for t in map(Tool, (lookup, boom, slow, calculator))}
    return [call_tool(tools, c, timeout) for c in parse_tool_calls(text)]


def test_each_kind_of_call_gets_its_answer():
    good = '<tool_call>{"name": "lookup", "arguments": {"city": "oslo"}}</tool_call>'
    assert _answer(good) == ["sunny in oslo"]
    assert _answer('<tool_call>{"name": "calculator", "arguments": {"expression": "123x456"}}</tool_call>') == ["56088"]
    # Arguments written as a JSON string (OpenAI's layout) are read too; two calls give two answers in order.
    two = good + '<tool_call>{"name": "calculator", "arguments": "{\\"expression\\": \\"2**10\\"}"}</tool_call>'
    assert _answer(two) == ["sunny in oslo", "1024"]
    assert _answer('<tool_call>{"name": "lookup", "arguments": {"city": oslo}}</tool_call>')[0].startswith(
        "error: the tool call is not valid JSON")
    assert _answer('<tool_call>["lookup"]</tool_call>') == [
        'error: a tool call must be {"name": "TOOL", "arguments": {...}}']
    assert _answer('<tool_call>{"name": "weather", "arguments": {}}</tool_call>') == [
        "error: unknown tool 'weather'; tools: lookup, boom, slow, calculator"]
    assert _answer('<tool_call>{"name": "lookup", "arguments": {"town": "oslo"}}</tool_call>')[0].startswith(
        "error: wrong arguments for lookup:")
    assert _answer('<tool_call>{"name": "boom", "arguments": {"x": 1}}</tool_call>') == [
        "error: boom raised ValueError: no luck"]
    assert _answer('<tool_call>{"name": "calculator", "arguments": {"expression": "import os"}}</tool_call>'
                   )[0].startswith("error: calculator raised ValueError")
    assert _answer(good.replace("</tool_call>", "")) == ["error: <tool_call> without its closing </tool_call>"]
    assert _answer("just an answer: 42") == []
    started = time.perf_counter()
    assert _answer('<tool_call>{"name": "slow", "arguments": {"seconds": 3}}</tool_call>', timeout=0.2) == [
        "error: slow timed out after 0.2 s"]
    assert time.perf_counter() - started < 2.0  # the run went on at the limit, not when the tool finished


def test_tool_specs_load_from_files_and_refuse_bad_ones(tmp_path):
    (tmp_path / "mytools.py").write_text("def shout(text: str) -> str:\n    \"\"\"Upper case.\n\n    Args:\n"
                                         "        text: what to shout\n    \"\"\"\n    return text.upper()\n")
    tools = load_tools(f"proximo:calculator,{tmp_path / 'mytools.py'}:shout")
    assert [t.name for t in tools] == ["calculator", "shout"] and tools[1].func("hi") == "HI"
    with pytest.raises(ProximoError, match="has no nope"):
        load_tools(f"{tmp_path / 'mytools.py'}:nope")
    with pytest.raises(ProximoError, match="unknown built-in tool"):
        load_tools("proximo:abacus")
    with pytest.raises(ProximoError, match="names two tools 'calculator'"):
        load_tools("proximo:calculator,proximo:calculator")


class Scripted(Environment):
    """Answers every turn with a fixed user text, done after `replies` answers; a reward at the end."""

    def __init__(self, replies):
        self.replies = replies

    def reset(self, prompt):
        return {"left": self.replies}

    def step(self, state, turn_text, stop_text=""):
        if state["left"] == 0:
            return Reply(done=True, reward=0.5)
        state["left"] -= 1
        return Reply("ok go ")


def test_response_mask_is_zero_exactly_on_the_environment_tokens():
    tok = CharTokenizer()
    eos = tok.eos_id
    # Scripted policy turns: row 0 writes "12<eos>", then "3<eos>", then "45<eos>"; row 1 one turn "7<eos>".
    script = {0: [[4, 5, eos], [6, eos], [7, 8, eos]], 1: [[10, eos]]}
    env = ScriptedForRows({0: 2, 1: 0})
    calls = []

    def generate_fn(ids, mask, repeats):
        turn = len(calls)
        calls.append(ids.shape[0])
        rows = [r for r in (0, 1) if len(script[r]) > turn][:ids.shape[0]]
        width = max(len(script[r][turn]) for r in rows)
        out = torch.zeros((len(rows), width), dtype=torch.long)
        mask_out = torch.zeros_like(out)
        for k, r in enumerate(rows):
            out[k, :len(script[r][turn])] = torch.tensor(script[r][turn])
            mask_out[k, :len(script[r][turn])] = 1
        return Rollout(ids, mask, out, mask_out, -0.25 * mask_out.float())
    prompts = ["1+1=", "2+2="]
    episodes = run_episodes(generate_fn, tok, env, [tok.encode(p, add_bos=True) for p in prompts], prompts,
                            repeats=1, max_turns=5, max_new_tokens=4)
    assert calls == [2, 1, 1]  # the finished episode sat out turns 2 and 3
    reply = tok.encode("ok go ")
    r = episodes.rollout
    row0 = [4, 5, eos] + reply + [6, eos] + reply + [7, 8, eos]
    expected_policy = [1, 1, 1] + [0] * len(reply) + [1, 1] + [0] * len(reply) + [1, 1, 1]
    assert r.response_ids[0].tolist() == row0
    assert r.response_mask[0].tolist() == expected_policy
    assert r.attention[0].tolist() == [1] * len(row0)
    assert r.logprobs[0].tolist() == [-0.25 * m for m in expected_policy]
    width = len(row0)
    assert r.response_ids[1, :2].tolist() == [10, eos]
    assert r.response_mask[1].tolist() == [1, 1] + [0] * (width - 2) == r.attention[1].tolist()
    assert r.attention_mask[0].tolist() == r.prompt_mask[0].tolist() + [1] * width
    assert episodes.completions == ["45", "7"] and episodes.turns == [3, 1]
    assert episodes.rewards.tolist() == [0.5, 0.5]
    # Overlong masking reads the last policy turn: row 0 ended it with <eos>; cut after an ended first turn is cut.
    assert truncated_rows(r.response_ids, r.response_mask, tok.stop_ids).tolist() == [False, False]
    cut_last = r.response_mask.clone()
    cut_last[0, width - 1] = 0  # as if the last turn had stopped one token short of its <eos>
    assert truncated_rows(r.response_ids, cut_last, tok.stop_ids).tolist() == [True, False]
    # At max_turns the episode ends: the environment's answer to the last turn is not appended.
    calls.clear()
    capped = run_episodes(generate_fn, tok, ScriptedForRows({0: 2, 1: 0}), [tok.encode(p, add_bos=True)
                          for p in prompts], prompts, repeats=1, max_turns=2, max_new_tokens=4)
    assert capped.rollout.response_ids[0].tolist() == [4, 5, eos] + reply + [6, eos]
    assert capped.turns == [2, 1] and capped.completions == ["3", "7"]
    # The environment's final reward adds to the reward functions' sum, and scores an unscored row.
    assert add_environment_rewards(torch.tensor([1.0, float("nan")]), episodes.rewards).tolist() == [1.5, 0.5]


class ScriptedForRows(Environment):
    """Row-specific number of replies: reset sees the prompt, rows are told apart by it."""

    def __init__(self, replies_by_row):
        self.by_prompt = {"1+1=": replies_by_row[0], "2+2=": replies_by_row[1]}

    def reset(self, prompt):
        return {"left": self.by_prompt[prompt]}

    def step(self, state, turn_text, stop_text=""):
        if state["left"] == 0:
            return Reply(done=True, reward=0.5)
        state["left"] -= 1
        return Reply("ok go ")


def _tiny_episodes(seed=0):
    model, tok, _ = load_model("tiny", seed=seed)
    # Every character but a letter ends a turn: the random policy ends most turns (not cut at the limit),
    # so that its episodes go on for several turns.
    tok.stop_ids = (tok.eos_id, *(i for i in range(3, tok.vocab_size) if not tok.chars[i - 3].isalpha()))
    torch.manual_seed(seed)
    prompts = ["12+34=", "5+6="]
    episodes = run_episodes(
        lambda ids, mask, times: generate(model, ids, mask, 8, tok.stop_ids, tok.pad_id, repeats=times),
        tok, Scripted(2), [tok.encode(p, add_bos=True) for p in prompts], prompts, repeats=2, max_turns=3,
        max_new_tokens=8, max_length=64)
    return model, tok, episodes


def test_sampled_logprobs_of_every_turn_equal_one_forward_pass_of_the_whole_episode():
    model, _, episodes = _tiny_episodes()
    r = episodes.rollout
    env = r.attention.bool() & ~r.response_mask.bool()
    assert env.any() and r.response_mask.any()
    with torch.no_grad():
        logp, _, _ = response_logprobs(model, r.input_ids, r.attention_mask, r.prompt_ids.shape[1])
    policy = r.response_mask.bool()
    torch.testing.assert_close(logp[policy], r.logprobs[policy], atol=2e-5, rtol=0)


def test_grpo_loss_and_its_gradient_ignore_environment_tokens():
    model, _, episodes = _tiny_episodes(seed=1)
    r = episodes.rollout
    width = r.prompt_ids.shape[1]
    env = r.attention.bool() & ~r.response_mask.bool()
    mask = r.response_mask
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])

    def loss_of(logits_fn):
        _, hidden = forward_hidden(model, r.input_ids[:, :-1], r.attention_mask[:, :-1], with_logits=False)
        logits = model.get_output_embeddings()(hidden[:, width - 1:, :]).float()
        logits = logits_fn(logits)
        logits.retain_grad()
        logp = torch.log_softmax(logits, -1).gather(-1, r.response_ids[..., None]).squeeze(-1)
        old = r.logprobs.detach() + 0.01 * mask  # a ratio off 1 so that the clip acts on some tokens
        loss, _, _ = grpo_token_loss(logp, old, old.clone(), advantages, mask, 0.2, 0.2, 0.1, "bnpo")
        loss.backward()
        return loss.detach(), logits.grad
    loss, grad = loss_of(lambda x: x)
    assert torch.count_nonzero(grad[env]) == 0 and torch.count_nonzero(grad[mask.bool()]) > 0
    # Any logits at the environment's positions: the same loss, the same gradient everywhere else.
    noise = torch.randn(env.sum(), grad.shape[-1]) * 5.0
    loss2, grad2 = loss_of(lambda x: x.masked_scatter(env[..., None].expand_as(x), noise + x[env]))
    assert torch.equal(loss, loss2) and torch.equal(grad[mask.bool()], grad2[mask.bool()])
    # Log-probs at the environment's positions (new, old, reference) do not enter the loss either.
    logp = torch.randn(mask.shape, requires_grad=True)
    old = torch.randn(mask.shape)
    base, _, _ = grpo_token_loss(logp, old, old, advantages, mask, 0.2, 0.2, 0.1, "grpo")
    changed = torch.where(env, torch.randn(mask.shape) * 3, old)
    logp2 = torch.where(env, torch.randn(mask.shape) * 3, logp.detach()).requires_grad_()
    other, _, _ = grpo_token_loss(logp2, changed, changed, advantages, mask, 0.2, 0.2, 0.1, "grpo")
    g1, = torch.autograd.grad(base, logp)
    g2, = torch.autograd.grad(other, logp2)
    assert torch.equal(base.detach(), other.detach()) and torch.equal(g1, g2) and torch.count_nonzero(g1[env]) == 0


def test_chat_template_renders_the_tool_message_and_plain_format_without_one(tool_model):
    _, tok, _ = load_model(tool_model)
    call = '<tool_call>{"name": "calculator", "arguments": {"expression": "2x3"}}</tool_call>'
    # The policy's own <|end|> closed its turn: the reply starts with the tool turn.
    assert render_reply(tok, "tool", ["6"], call, "<|end|>") == "<|tool|>6<|end|><|assistant|>"
    # Ended by </s> instead: the template's end of the assistant turn comes first.
    assert render_reply(tok, "tool", ["6"], call, "</s>") == "<|end|><|tool|>6<|end|><|assistant|>"
    assert render_reply(CharTokenizer(), "tool", ["6", "7"], call, "") == (
        "<tool_response>6</tool_response><tool_response>7</tool_response>")


CALL = '<tool_call>{{"name": "calculator", "arguments": {{"expression": "{a}x{b}"}}}}</tool_call>'
PAIRS = [(12, 34), (56, 78), (91, 23)]


@pytest.fixture(scope="module")
def tool_model(tmp_path_factory):
    """A tiny GPT-2 + BPE model dir whose policy has memorized, for three prompts, a calculator call in
    turn 1 and the tool's result as the answer in turn 2 (a few seconds of teacher forcing), so that a
    GRPO run on it takes real multi-turn episodes."""
    texts = [f"<|user|>{a}x{b}=<|end|><|assistant|>" + CALL.format(a=a, b=b) + f"<|end|><|tool|>{a * b}<|end|>"
             f"<|assistant|>{a * b}" for a in range(10, 99, 3) for b in range(10, 99, 11)]
    folder = make_model_dir(tmp_path_factory.mktemp("toolmodel"), texts, family="gpt2", vocab_size=400, hidden=64,
                            layers=2, heads=2, max_positions=128, end_of_turn_stops=True)
    model, tok, _ = load_model(folder)
    end = tok.stop_ids[1]
    sequences, masks = [], []
    for a, b in PAIRS:
        prompt = tok.encode(tok.apply_chat_template([{"role": "user", "content": f"{a}x{b}="}]), add_bos=True)
        call = tok.encode(CALL.format(a=a, b=b)) + [end]
        reply = tok.encode(render_reply(tok, "tool", [str(a * b)], CALL.format(a=a, b=b), "<|end|>"))
        answer = tok.encode(str(a * b)) + [end]
        sequences.append(prompt + call + reply + answer)
        masks.append([0] * len(prompt) + [1] * len(call) + [0] * len(reply) + [1] * len(answer))
    width = max(map(len, sequences))
    ids = torch.tensor([s + [tok.pad_id] * (width - len(s)) for s in sequences])
    train = torch.tensor([m + [0] * (width - len(m)) for m in masks])[:, 1:].bool()
    attention = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(150):
        logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits[train], ids[:, 1:][train])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05, loss.item()
    save_model(model.eval(), tok, folder)
    return folder


def test_multi_turn_grpo_runs_two_steps_through_the_cli(tool_model, tmp_path, capsys):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": f"{a}x{b}="}],
                                        "answer": str(a * b)}) + "\n" for a, b in PAIRS))
    code = main(["llm", "grpo", "--init", str(tool_model), "--dataset", str(data), "--reward", "proximo:exact_match",
                 "--tools", "proximo:calculator", "--max-turns", "3", "--steps", "2", "--prompts-per-step", "2",
                 "--group-size", "2", "--max-new-tokens", "40", "--num-eval-prompts", "3", "--eval-every", "0",
                 "--temperature", "0.3", "--run-dir", str(tmp_path / "run"), *QUIET])
    assert code == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in (tmp_path / "run" / "updates.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r.get("global_step", 0) > 0]
    assert len(steps) == 2
    # The memorized policy calls the calculator and answers with its result: episodes of two turns.
    assert all(r["turns"] > 1.5 and r["tool_calls"] >= 1.0 and r["tool_errors"] == 0 for r in steps), steps
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["after"]["eval_greedy_accuracy"] == 1.0  # evaluated over whole episodes, tools included
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["config"]["tools"] == "proximo:calculator" and config["config"]["max_turns"] == 3
    # `llm eval` of the run scores whole episodes with the run's tools too.
    capsys.readouterr()
    assert main(["llm", "eval", str(tmp_path / "run")]) == 0
    assert "greedy: 1.000 (3 of 3 scored)" in capsys.readouterr().out


def test_chat_prompts_list_the_tools_where_the_template_has_a_place(tool_model, tmp_path):
    import shutil
    folder = tmp_path / "with_tools"
    shutil.copytree(tool_model, folder)
    # A template with a tools block, as Qwen2.5's and Llama-3.1's have one.
    (folder / "chat_template.jinja").write_text(
        "{{ bos_token }}{% if tools %}<|system|>{% for t in tools %}{{ t['function']['name'] }};{% endfor %}<|end|>"
        "{% endif %}{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>"
        "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
    rows = [{"prompt": [{"role": "user", "content": "12x34="}], "answer": "408"}]
    from proximo.llm import GRPO
    with_tools = GRPO(folder, reward_fn="proximo:exact_match", dataset=rows, environment=ToolEnvironment([lookup]),
                      tensorboard=False, run_dir=tmp_path / "a", num_eval_prompts=1)
    assert with_tools.train_texts == ["<s><|system|>lookup;<|end|><|user|>12x34=<|end|><|assistant|>"]
    by_spec = GRPO(folder, reward_fn="proximo:exact_match", dataset=rows, tools="proximo:calculator",
                   tensorboard=False, run_dir=tmp_path / "b", num_eval_prompts=1)
    assert by_spec.train_texts == ["<s><|system|>calculator;<|end|><|user|>12x34=<|end|><|assistant|>"]
    plain = GRPO(folder, reward_fn="proximo:exact_match", dataset=rows, tensorboard=False, run_dir=tmp_path / "c",
                 num_eval_prompts=1)
    assert plain.train_texts == ["<s><|user|>12x34=<|end|><|assistant|>"]


@pytest.mark.parametrize("spec, message", [
    ("nosuchmodule_xyz:f", "--tools 'nosuchmodule_xyz:f': cannot import nosuchmodule_xyz"),
    ("calculator", "--tools 'calculator' is not of the form module:function"),
    ("proximo:abacus", "unknown built-in tool 'proximo:abacus'"),
])
def test_a_bad_tools_spec_is_one_line_and_exit_2(spec, message, tmp_path, capsys):
    code = main(["llm", "grpo", "--init", "tiny", "--tools", spec, "--steps", "1", "--run-dir",
                 str(tmp_path / "run"), *QUIET])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err


def test_tool_environment_answers_the_policy_turn():
    env = ToolEnvironment([calculator], CharTokenizer())
    assert env.step(None, "no call here").done
    reply = env.step(None, '<tool_call>{"name": "calculator", "arguments": {"expression": "3x4"}}</tool_call>')
    assert not reply.done and reply.results == ["12"] and reply.text == "<tool_response>12</tool_response>"
    assert env.schemas == [tool_schema(calculator)]
    assert isinstance(parse_tool_calls("<tool_call>{}</tool_call>")[0], ToolCall)
