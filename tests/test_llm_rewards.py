"""Rewards as users bring them: a transformers sequence classifier with num_labels 1 (the form TRL's
RewardTrainer writes and `proximo llm rm` now saves) scores as transformers scores it and drives GRPO and
PPO-RLHF; reward functions drive PPO-RLHF too; several rewards weigh together in both; proximo's older
reward folders still load; a module:function reward is found in the current directory; a classifier with
more than one label is one line and exit 2."""
import csv
import json
import random
import sys
import uuid

import pytest
import torch

from proximo.cli import main
from proximo.errors import ProximoError
from proximo.llm.generation import pad_responses
from proximo.llm.models import ScalarHead, hidden_size, load_model, save_model
from proximo.llm.reward_model import RewardModel
from proximo.llm.rewards import RewardModelReward, load_reward
from proximo.llm.run import encode_prompts
from proximo.llm.tasks import get_task

pytest.importorskip("tokenizers", reason="the llm extra (tokenizers via transformers) is not installed")

TASK = get_task("add", 2)
QUIET = ["--quiet", "--no-tensorboard"]
TINY_RL = ["--steps", "1", "--prompts-per-step", "4", "--max-new-tokens", "3", "--eval-every", "0"]
REWARD = """
def has_digit(prompts, completions, **columns):
    return [float(any(ch.isdigit() for ch in c[0]["content"])) for c in completions]
"""


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    """A tiny Llama + BPE tokenizer (pad token, chat template) as `proximo llm new-model` writes it."""
    from proximo.llm.modeldir import make_model_dir, task_texts
    return make_model_dir(tmp_path_factory.mktemp("policy") / "llama", task_texts(TASK, 1000), hidden=32, layers=2,
                          heads=2, vocab_size=300)


def _classifier_dir(policy_dir, target, labels=1, seed=0):
    """A reward model in the form TRL's RewardTrainer saves (AutoModelForSequenceClassification with
    num_labels 1, config.pad_token_id set, tokenizer files, and its pickled training_args.bin beside them,
    which proximo must never open), on the policy's trunk with a random score layer."""
    from transformers import AutoModelForSequenceClassification
    model, tokenizer, _ = load_model(policy_dir)
    torch.manual_seed(seed)
    classifier = AutoModelForSequenceClassification.from_pretrained(str(policy_dir), num_labels=labels)
    classifier.config.pad_token_id = tokenizer.pad_id
    torch.nn.init.normal_(classifier.score.weight, std=1.0)
    classifier.save_pretrained(str(target))
    tokenizer.save(target)
    torch.save({"not": "read"}, target / "training_args.bin")
    return target


def _chat_rows(path, n, seed=0):
    rows = [{"prompt": [{"role": "user", "content": p}], "answer": TASK.answer(p)}
            for p in TASK.sample_prompts(random.Random(seed), n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_classifier_reward_model_scores_where_transformers_reads_it(policy_dir, tmp_path, monkeypatch):
    from transformers import AutoModelForSequenceClassification
    folder = _classifier_dir(policy_dir, tmp_path / "rm")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    reward = load_reward(str(folder))
    assert isinstance(reward, RewardModelReward) and reward.model.pad_id == reward.model.tokenizer.pad_id
    classifier = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    tok = reward.model.tokenizer
    prompts = ["<s><|user|>12+34=<|end|><|assistant|>", "<s><|user|>1+2=<|end|><|assistant|>"]
    completions = ["46", "3"]
    ours = reward(prompts, completions)
    for prompt, completion, score in zip(prompts, completions, ours):
        ids = torch.tensor([tok.encode(prompt, add_bos=True) + tok.encode(completion) + [tok.eos_id]])
        with torch.no_grad():
            assert score == pytest.approx(float(classifier(input_ids=ids).logits[0, 0]), abs=1e-5)


def test_pooling_skips_pad_like_transformers_when_pad_is_eos(tmp_path):
    """A tokenizer without a pad token pads with eos (TRL sets pad = eos too): the score is read at the last
    token that is not pad, the token before the eos, in a left- and right-padded batch alike."""
    from transformers import GPT2Config, GPT2ForSequenceClassification
    torch.manual_seed(0)
    classifier = GPT2ForSequenceClassification(GPT2Config(vocab_size=20, n_positions=32, n_embd=16, n_layer=1,
                                                          n_head=2, num_labels=1, pad_token_id=2)).eval()
    model = RewardModel.from_classifier(classifier, tokenizer=None)
    rows = [[1, 5, 6, 7, 2], [1, 8, 2]]  # bos ... eos, eos = pad = 2
    ids, mask = pad_responses(rows, 2)
    with torch.no_grad():
        right = model.score(ids, mask)
        expected = torch.stack([classifier(input_ids=torch.tensor([r])).logits[0, 0] for r in rows])
        assert torch.allclose(right, expected, atol=1e-5)
        assert torch.allclose(model.pool_index(ids, mask), torch.tensor([3, 1]))


def test_rm_saves_transformers_form_and_older_proximo_folders_still_load(tmp_path):
    from transformers import AutoModelForSequenceClassification
    from proximo.llm import train_reward_model
    train_reward_model("tiny", run_dir=tmp_path / "rm", max_steps=2, batch_size=4, train_pairs=16, eval_pairs=8,
                       num_eval_prompts=2, tensorboard=False)
    config = json.loads((tmp_path / "rm" / "model" / "config.json").read_text())
    assert config["architectures"] == ["GPT2ForSequenceClassification"] and len(config["id2label"]) == 1
    ours = RewardModel.load(tmp_path / "rm")
    theirs = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "rm" / "model")).eval()
    ids, mask = encode_prompts(ours.tokenizer, ["12+34=46"])
    ids = torch.cat([ids, torch.tensor([[ours.tokenizer.eos_id]])], 1)
    with torch.no_grad():
        assert float(ours.score_texts(["12+34="], ["46"])[0]) == pytest.approx(float(theirs(input_ids=ids).logits[0, 0]),
                                                                              abs=1e-5)
    # proximo's older form: a causal LM with reward_head.safetensors beside it
    backbone, tokenizer, _ = load_model("tiny", seed=3)
    head = ScalarHead(hidden_size(backbone), init_std=0.5)
    save_model(backbone, tokenizer, tmp_path / "old" / "model", {"reward": head})
    old = load_reward(str(tmp_path / "old"))
    with torch.no_grad():
        expected = RewardModel(backbone, tokenizer, head).score_texts(["1+2="], ["3"])
    assert old(["1+2="], ["3"]) == pytest.approx(expected.tolist(), abs=1e-6)


def test_classifier_reward_model_and_functions_drive_grpo_and_rlhf(policy_dir, tmp_path, capsys):
    rm = _classifier_dir(policy_dir, tmp_path / "rm")
    data = _chat_rows(tmp_path / "train.jsonl", 16)
    (tmp_path / "my_reward.py").write_text(REWARD)
    digit = f"{tmp_path / 'my_reward.py'}:has_digit"
    # GRPO: the reward model and a function, weighted
    grpo = tmp_path / "grpo"
    assert main(["llm", "grpo", "--model", str(policy_dir), "--dataset", str(data), "--reward", str(rm),
                 "--reward", digit, "--reward-weights", "1", "0.5", "--group-size", "2", *TINY_RL,
                 "--run-dir", str(grpo), *QUIET]) == 0
    config = json.loads((grpo / "config.json").read_text())
    assert config["rewards"] == ["reward_model", "has_digit"] and config["reward_weights"] == [1.0, 0.5]
    assert config["reward_specs"] == [str(rm.resolve()), digit]
    # PPO-RLHF: the same reward model plus exact match, weighted; its critic starts from the reward model
    rlhf = tmp_path / "rlhf"
    assert main(["llm", "rlhf", "--init", str(policy_dir), "--reward-model", str(rm), "--reward",
                 "proximo:exact_match", "--reward-weights", "1", "2", "--dataset", str(data),
                 "--num-minibatches", "2", *TINY_RL, "--run-dir", str(rlhf), *QUIET]) == 0
    out = capsys.readouterr().out
    assert "training reward (mean weighted reward (1 x reward_model + 2 x exact_match))" in out
    with open(rlhf / "metrics.csv") as handle:
        step = [r for r in csv.DictReader(handle) if r["global_step"] == "1"][0]
    assert step["score"] != "" and step["value_loss"] != ""
    # PPO-RLHF on reward functions alone: no reward model, so the critic is a value head (critic auto)
    alone = tmp_path / "rlhf-fn"
    assert main(["llm", "rlhf", "--init", str(policy_dir), "--reward", digit, "--dataset", str(data),
                 "--num-minibatches", "2", *TINY_RL, "--run-dir", str(alone), *QUIET]) == 0
    assert (alone / "model" / "value_head.safetensors").is_file()
    assert json.loads((alone / "config.json").read_text())["rewards"] == ["has_digit"]


def test_rlhf_reward_model_and_function_sum_with_their_weights(policy_dir, tmp_path):
    from proximo.llm import RLHF
    rm = _classifier_dir(policy_dir, tmp_path / "rm")
    trainer = RLHF(policy_dir, reward_model=rm, reward_fn=lambda prompts, completions: [1.0] * len(completions),
                   reward_weights=[2.0, 0.5], dataset=str(_chat_rows(tmp_path / "d.jsonl", 8)), prompts_per_step=4,
                   num_minibatches=2, max_new_tokens=3, tensorboard=False, run_dir=tmp_path / "run")
    batch = trainer.collect()
    scorer = trainer.train_rewards.reward_models()[0]
    expected = 2.0 * scorer.score_tokens(batch.input_ids, batch.attention) + 0.5
    assert torch.allclose(batch.scores.cpu(), expected, atol=1e-5)
    assert trainer.critic is not None  # critic auto: the reward model reads the policy's tokens


def test_more_than_one_label_is_one_line_and_exit_2(policy_dir, tmp_path, capsys):
    rm = _classifier_dir(policy_dir, tmp_path / "rm2", labels=2)
    data = _chat_rows(tmp_path / "d.jsonl", 4)
    for argv in (["llm", "rlhf", "--init", str(policy_dir), "--reward-model", str(rm)],
                 ["llm", "grpo", "--init", str(policy_dir), "--dataset", str(data), "--reward", str(rm)]):
        assert main(argv + ["--run-dir", str(tmp_path / "run"), *QUIET]) == 2
        err = capsys.readouterr().err.strip()
        assert "is a sequence classifier with 2 labels; a reward model has one" in err and len(err.splitlines()) == 1
    with pytest.raises(ProximoError, match="holds a sequence-classification model"):
        load_model(tmp_path / "rm2")  # nor is a reward model taken for a policy


def test_a_reward_module_in_the_current_directory_is_found(tmp_path, monkeypatch, capsys):
    name = f"myreward_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("def exact(prompts, completions, answer):\n"
                                         "    return [float(c.strip() == a) for c, a in zip(completions, answer)]\n")
    rows = [{"prompt": p, "answer": TASK.answer(p)} for p in TASK.sample_prompts(random.Random(0), 4)]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.chdir(tmp_path)
    # as the `proximo` console script starts: the current directory is not on sys.path
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    assert main(["llm", "grpo", "--model", "tiny", "--dataset", "p.jsonl", "--reward", f"{name}:exact",
                 "--group-size", "2", *TINY_RL, "--prompts-per-step", "2", "--run-dir", "run", *QUIET]) == 0, \
        capsys.readouterr().err
    assert json.loads((tmp_path / "run" / "config.json").read_text())["rewards"] == ["exact"]


def test_llm_eval_refuses_what_it_cannot_score_in_one_line(tmp_path, capsys):
    from proximo.llm import GRPO
    GRPO("tiny", reward_fn=lambda p, c: [1.0] * len(c), dataset=[{"prompt": "1+2="}, {"prompt": "3+4="}],
         steps=1, prompts_per_step=2, group_size=2, max_new_tokens=2, eval_every=0, tensorboard=False,
         run_dir=tmp_path / "py").train()
    model, tokenizer, _ = load_model("tiny", seed=0)
    save_model(model, tokenizer, tmp_path / "plain")
    cases = [([str(tmp_path / "py")], "the run's prompts were given in Python, not as a file"),
             ([str(tmp_path / "py"), "--dataset", str(_chat_rows(tmp_path / "d.jsonl", 2))],
              "the run's reward <lambda> was a Python object"),
             ([str(tmp_path / "plain")], "say what to score on: --task NAME, or --dataset FILE with --reward")]
    for argv, message in cases:
        assert main(["llm", "eval", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert main(["llm", "eval", str(tmp_path / "plain"), "--task", "add", "--digits", "2", "--prompts", "4"]) == 0
    out = capsys.readouterr().out
    assert "prompts: 4 held-out prompts of the add task (digits 2)" in out
    assert "accuracy (exact answers of the add task), mean over the scored samples:" in out
