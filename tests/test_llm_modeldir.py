"""A model directory as a user's looks (transformers Llama from a config, a BPE tokenizer trained here,
its own chat template): `proximo llm new-model` writes one, the chat template's bos is not doubled, and
`proximo llm grpo` trains it from a JSONL of chat prompts with a reward module, LoRA, bf16, micro-batches
and gradient checkpointing, end to end."""
import json
import random

import pytest

from proximo.cli import main
from proximo.llm.data import render_prompt
from proximo.llm.models import load_model
from proximo.llm.tasks import get_task

pytest.importorskip("tokenizers", reason="the llm extra (tokenizers via transformers) is not installed")

REWARD = """
def correct_sum(prompts, completions, answer, **columns):
    return [float(c[0]["content"].strip() == a) for c, a in zip(completions, answer)]
"""


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "bpe-llama"
    assert main(["llm", "new-model", str(path), "--task", "add", "--digits", "2", "--vocab-size", "300"]) == 0
    return path


def test_new_model_writes_a_transformers_directory_with_its_own_tokenizer(model_dir):
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (model_dir / name).is_file(), name
    assert json.loads((model_dir / "config.json").read_text())["model_type"] == "llama"
    model, tokenizer, _ = load_model(model_dir)
    assert type(tokenizer).__name__ == "HFTokenizer" and tokenizer.chat_template
    text = render_prompt([{"role": "user", "content": "12+34="}], tokenizer)
    ids = tokenizer.encode(text, add_bos=True)
    assert ids[0] == tokenizer.bos_id and ids.count(tokenizer.bos_id) == 1  # the template's bos, not two
    assert tokenizer.decode(tokenizer.encode("46") + [tokenizer.eos_id]) == "46"
    assert model.config.vocab_size == tokenizer.vocab_size


def test_new_model_refuses_a_non_empty_directory(model_dir, capsys):
    assert main(["llm", "new-model", str(model_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not empty" in err


def test_grpo_cli_on_a_jsonl_dataset_with_a_reward_module_lora_and_bf16(model_dir, tmp_path, capsys):
    task, rng = get_task("add", 2), random.Random(0)
    with open(tmp_path / "train.jsonl", "w") as f:
        for prompt in task.sample_prompts(rng, 40):
            f.write(json.dumps({"prompt": [{"role": "user", "content": prompt}], "answer": task.answer(prompt)}) + "\n")
    (tmp_path / "my_reward.py").write_text(REWARD)
    run = tmp_path / "run"
    code = main(["llm", "grpo", "--model", str(model_dir), "--dataset", str(tmp_path / "train.jsonl"),
                 "--eval-fraction", "0.25", "--reward", f"{tmp_path / 'my_reward.py'}:correct_sum",
                 "--lora-r", "4", "--dtype", "bfloat16", "--device", "cpu", "--micro-batch-size", "4",
                 "--gradient-checkpointing", "true", "--steps", "2", "--prompts-per-step", "4", "--group-size", "2",
                 "--max-new-tokens", "3", "--eval-every", "0", "--run-dir", str(run), "--quiet", "--no-tensorboard"])
    out = capsys.readouterr()
    assert code == 0, out.err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["lora"]["r"] == 4
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["dtype"] == "bfloat16" and config["micro_batch_size"] == 4
    merged, tokenizer, _ = load_model(run)  # the merged policy loads as a plain model directory
    assert type(tokenizer).__name__ == "HFTokenizer"


def test_new_model_trains_its_tokenizer_on_any_text_column_of_a_dataset(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "hi"}]},
            {"prompt": "2+2=", "chosen": "4", "rejected": "5"}]
    (tmp_path / "texts.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    target = tmp_path / "model"
    assert main(["llm", "new-model", str(target), "--texts", str(tmp_path / "texts.jsonl"), "--family", "gpt2",
                 "--hidden", "32", "--layers", "1", "--heads", "2", "--vocab-size", "300"]) == 0
    _, tokenizer, _ = load_model(target)
    assert tokenizer.decode(tokenizer.encode("hello there")) == "hello there"
