"""Your data and your reward: prompt datasets from JSONL/JSON/CSV/Parquet/save_to_disk, chat prompts
through a template, reward functions with columns, weights and None, the built-in checks, and the CLI
on a JSONL file with a reward module; bad input is one line and exit 2."""
import json
import math

import pytest

from proximo.cli import main
from proximo.errors import ProximoError
from proximo.llm import GRPO
from proximo.llm.data import PromptDataset, render_default_chat, render_prompt
from proximo.llm.rewards import (
    RewardSet, exact_match, format_regex, length_penalty, load_reward, numeric_match,
)

ROWS = [{"prompt": "1+2=", "answer": "3"}, {"prompt": "2+2=", "answer": "4"}, {"prompt": "3+4=", "answer": "7"}]
CHAT = [{"prompt": [{"role": "user", "content": r["prompt"]}], "answer": r["answer"]} for r in ROWS]


def test_every_file_format_reads_the_same_rows(tmp_path):
    import datasets
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in CHAT))
    (tmp_path / "p.json").write_text(json.dumps(ROWS))
    (tmp_path / "p.csv").write_text("prompt,answer\n" + "".join(f"{r['prompt']},{r['answer']}\n" for r in ROWS))
    datasets.Dataset.from_list(ROWS).to_parquet(str(tmp_path / "p.parquet"))
    datasets.Dataset.from_list(CHAT).save_to_disk(str(tmp_path / "saved"))
    assert PromptDataset.load(tmp_path / "p.jsonl").rows == CHAT
    assert PromptDataset.load(tmp_path / "saved").rows == CHAT
    for name in ("p.json", "p.parquet"):
        assert PromptDataset.load(tmp_path / name).rows == ROWS, name
    csv_rows = PromptDataset.load(tmp_path / "p.csv").rows   # CSV infers the answer column as integers
    assert [r["prompt"] for r in csv_rows] == [r["prompt"] for r in ROWS]
    loaded = PromptDataset.load(tmp_path / "p.jsonl")
    assert loaded.conversational and loaded.column_names == ["answer"]
    assert loaded.columns([2, 0]) == {"answer": ["7", "3"]}


def test_bad_datasets_name_the_problem(tmp_path):
    (tmp_path / "q.jsonl").write_text(json.dumps({"question": "1+1=", "answer": "2"}) + "\n")
    with pytest.raises(ProximoError, match="has no 'prompt' column; its columns are: question, answer"):
        PromptDataset.load(tmp_path / "q.jsonl")
    with pytest.raises(ProximoError, match="row 1: prompt must be a string or a list of chat messages"):
        PromptDataset([{"prompt": "a"}, {"prompt": 5}])
    (tmp_path / "x.txt").write_text("a")
    with pytest.raises(ProximoError, match="unknown dataset format '.txt'"):
        PromptDataset.load(tmp_path / "x.txt")
    with pytest.raises(ProximoError, match="no dataset at"):
        PromptDataset.load(tmp_path / "missing.jsonl")


def test_eval_fraction_holds_out_disjoint_rows():
    rows = [{"prompt": str(i)} for i in range(20)]
    train, held = PromptDataset(rows).split(0.25, seed=3)
    assert len(held) == 5 and len(train) == 15
    assert not {r["prompt"] for r in train.rows} & {r["prompt"] for r in held.rows}
    assert held.rows == PromptDataset(rows).split(0.25, seed=3)[1].rows   # seeded


def test_chat_prompts_use_the_default_template_or_the_tokenizer_own():
    from proximo.llm.tokenizer import CharTokenizer
    messages = [{"role": "system", "content": "add"}, {"role": "user", "content": "12+34="}]
    assert render_default_chat(messages) == "system: add user: 12+34= assistant:"
    tokenizer = CharTokenizer()
    assert render_prompt(messages, tokenizer) == "system: add user: 12+34= assistant:"
    tokenizer.encode(render_prompt(messages, tokenizer))   # only characters the char tokenizer has
    assert render_prompt("12+34=", tokenizer) == "12+34="

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from proximo.llm.tokenizer import HFTokenizer
    words = Tokenizer(models.WordLevel({"<eos>": 0, "[UNK]": 1, "hi": 2}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=words, eos_token="<eos>")
    fast.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
                          "{% if add_generation_prompt %}<assistant>{% endif %}")
    assert render_prompt(messages, HFTokenizer(fast)) == "<system>add<user>12+34=<assistant>"


def test_reward_set_passes_columns_weights_and_skips_none():
    def two_args(prompts, completions):
        return [1.0] * len(completions)

    def named(prompts, completions, answer):
        return [float(c == a) for c, a in zip(completions, answer)]

    def only_some(prompts, completions, **columns):
        assert set(columns) == {"answer", "level"}
        return [None if level == "skip" else 2.0 for level in columns["level"]]

    rewards = RewardSet([two_args, named, only_some], [0.5, 1.0, 0.25])
    got, means = rewards.score(["p"] * 3, ["3", "x", "4"], {"answer": ["3", "3", "4"], "level": ["a", "skip", "b"]})
    # 0.5 x 1 + 1 x match + 0.25 x 2 where scored; row 1 lacks only the third function
    assert got.tolist() == pytest.approx([0.5 + 1 + 0.5, 0.5 + 0.0, 0.5 + 1 + 0.5])
    assert means == {"two_args": 1.0, "named": pytest.approx(2 / 3), "only_some": 2.0}
    nobody = RewardSet(lambda p, c: [None, 1.0])
    got, _ = nobody.score(["a", "b"], ["x", "y"])
    assert math.isnan(got[0].item()) and got[1].item() == 1.0
    assert nobody(["a", "b"], ["x", "y"]) == [None, 1.0]   # a RewardSet is a reward function too


def test_reward_function_errors_name_the_function_and_the_row():
    def breaks_on_seven(prompts, completions, answer):
        return [1.0 / (int(a) - 7) for a in answer]

    rewards = RewardSet([breaks_on_seven])
    with pytest.raises(ProximoError, match=r"reward function breaks_on_seven raised ZeroDivisionError: .* on dataset "
                                           r"row 12$"):
        rewards.score(["p"] * 3, ["a", "b", "c"], {"answer": ["1", "7", "2"]}, rows=[10, 12, 14])
    with pytest.raises(ProximoError, match="reward function short returned 1 rewards for 2 completions"):
        def short(prompts, completions):
            return [1.0]
        RewardSet(short).score(["a", "b"], ["x", "y"])
    with pytest.raises(ProximoError, match="reward function text returned 'good' for dataset row 5"):
        def text(prompts, completions):
            return ["good"]
        RewardSet(text).score(["a"], ["x"], rows=[5])
    with pytest.raises(ProximoError, match="2 reward weights for 1 reward functions"):
        RewardSet([text], [1.0, 2.0])


def test_loading_rewards_by_name(tmp_path):
    module = tmp_path / "my_rewards.py"
    module.write_text("def longer(prompts, completions):\n    return [float(len(c)) for c in completions]\n")
    assert load_reward(f"{module}:longer")(["a"], ["xyz"]) == [3.0]
    assert load_reward("proximo:exact_match") is exact_match
    assert load_reward("proximo:numeric_match") is numeric_match
    assert load_reward(r"proximo:format_regex=\d+")(["a", "b"], ["12", "1a"]) == [1.0, 0.0]
    assert load_reward("proximo:format_regex=a:b=c")([], ["a:b=c", "a"]) == [1.0, 0.0]   # ':' and '=' in the regex
    assert load_reward("json:dumps") is json.dumps   # any importable package.module:function
    for spec, message in [("no_such_module_xyz:f", "cannot import no_such_module_xyz"),
                          (f"{module}:shorter", "has no shorter; its functions: longer"),
                          ("proximo:nope", "unknown built-in reward proximo:nope"),
                          ("proximo:length_penalty", "needs an argument"),
                          ("justaname", "is not of the form module:function")]:
        with pytest.raises(ProximoError, match=message):
            load_reward(spec)


def test_builtin_rewards():
    chat = [[{"role": "assistant", "content": " 42 "}], [{"role": "assistant", "content": "41"}]]
    assert exact_match([], chat, answer=["42", "42"]) == [1.0, 0.0]
    assert exact_match([], ["7", "7"], answer=["7", None]) == [1.0, None]
    assert numeric_match([], ["so it is 1,000.0", "x = 3", "none"], answer=["1000", "3.0", "1"]) == [1.0, 1.0, 0.0]
    assert format_regex(r"\d+")([], ["123", "12 3"]) == [1.0, 0.0]
    assert length_penalty(4)([], ["abc", "abcdefgh"]) == [0.0, -1.0]
    with pytest.raises(ProximoError, match="'answer' column"):
        exact_match([], ["1"])


def test_python_api_with_a_dataset_several_rewards_and_held_out_rows(tmp_path):
    rows = [{"prompt": [{"role": "user", "content": f"{i}+{i}="}], "answer": str(2 * i)} for i in range(12)]
    seen = {}

    def spy(prompts, completions, answer):
        seen["prompt"], seen["completion"] = prompts[0], completions[0]
        return [0.0] * len(completions)

    trainer = GRPO("tiny", reward_fn=[spy, "proximo:exact_match"], reward_weights=[1.0, 2.0], dataset=rows,
                   eval_fraction=0.25, run_dir=tmp_path, steps=1, prompts_per_step=2, group_size=2,
                   max_new_tokens=3, tensorboard=False)
    assert len(trainer.dataset) == 9 and len(trainer.eval_dataset) == 3
    assert trainer.train_texts[0].endswith(" assistant:")
    trainer.train()
    assert isinstance(seen["prompt"], list) and seen["completion"][0]["role"] == "assistant"
    row = trainer.history[0]
    assert {"reward_spy", "reward_exact_match"} <= set(row)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["rewards"] == ["spy", "exact_match"] and config["reward_weights"] == [1.0, 2.0]
    with pytest.raises(ProximoError, match="a dataset needs reward functions"):
        GRPO("tiny", dataset=rows)


def _write_task(tmp_path):
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": f"{i}+1="}], "answer": str(i + 1)})
                            + "\n" for i in range(8)))
    module = tmp_path / "user_reward.py"
    module.write_text("def has_digit(prompts, completions, **columns):\n"
                      "    return [float(any(ch.isdigit() for ch in c[0]['content'])) for c in completions]\n"
                      "def broken(prompts, completions, answer):\n"
                      "    return [1.0 / (int(a) - 5) for a in answer]\n")
    return data, module


def test_cli_grpo_on_a_jsonl_dataset_with_a_reward_module(tmp_path, capsys):
    data, module = _write_task(tmp_path)
    code = main(["llm", "grpo", "--model", "tiny", "--dataset", str(data), "--reward", f"{module}:has_digit",
                 "--reward", "proximo:exact_match", "--reward-weights", "0.5", "1", "--eval-fraction", "0.25",
                 "--steps", "1", "--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "3",
                 "--loss-aggregation", "dapo", "--advantage-estimator", "rloo", "--num-iterations", "2",
                 "--steps-per-generation", "2", "--run-dir", str(tmp_path / "run"), "--quiet", "--no-tensorboard"])
    assert code == 0, capsys.readouterr().err
    # the figure says what it is: the weighted reward, not an accuracy
    assert "mean weighted reward (0.5 x has_digit + 1 x exact_match) on 2 held-out prompts:" in capsys.readouterr().out
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["config"]["n_epochs"] == 2 and config["config"]["num_minibatches"] == 2
    assert config["dataset"] == str(data)


@pytest.mark.parametrize("extra, message", [
    (["--reward", "{module}:broken"], "reward function broken raised ZeroDivisionError: float division by zero on "
                                      "dataset row 4"),
    (["--reward", "nowhere_module:f"], "cannot import nowhere_module"),
    (["--reward", "{module}:missing"], "has no missing; its functions: broken, has_digit"),
    (["--reward", "proximo:exact_match", "--reward-weights", "1", "2"], "2 reward weights for 1 reward functions"),
    (["--dataset", "{tmp}/noprompt.jsonl", "--reward", "proximo:exact_match"],
     "has no 'prompt' column; its columns are: question"),
    ([], "--dataset needs at least one --reward"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys, extra, message):
    data, module = _write_task(tmp_path)
    (tmp_path / "noprompt.jsonl").write_text(json.dumps({"question": "1+1="}) + "\n")
    extra = [e.format(module=module, tmp=tmp_path) for e in extra]
    argv = ["llm", "grpo", "--model", "tiny", "--steps", "1", "--prompts-per-step", "2", "--group-size", "2",
            "--max-new-tokens", "2", "--run-dir", str(tmp_path / "run"), "--quiet", "--no-tensorboard",
            "--num-eval-prompts", "8"]
    if "--dataset" not in extra:
        argv += ["--dataset", str(data)]
    # the held-out rows are scored before training: a row the function cannot score stops it there
    assert main(argv + extra) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
