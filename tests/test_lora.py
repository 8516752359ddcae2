"""LoRA through peft: only the adapter trains, the reference is the base model with the adapter off
(no second copy), and the saved model is the merged policy."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("peft", reason="LoRA needs peft (pip install -e '.[llm]')")

from proximo.errors import ProximoError  # noqa: E402
from proximo.llm.generation import response_logprobs  # noqa: E402
from proximo.llm.grpo import GRPO  # noqa: E402
from proximo.llm.models import load_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["12+3=", "4+56=", "7+8=", "99+1="]


def longer(prompts, completions):
    """A reward that varies within groups of a random model."""
    return [float(len(c)) for c in completions]


def _grpo(tmp_path, **overrides):
    settings = dict(reward_fn=longer, prompts=PROMPTS, prompts_per_step=2, group_size=4, num_minibatches=1,
                    learning_rate=1e-2, max_new_tokens=5, num_eval_prompts=4, eval_every=0, tensorboard=False,
                    lora_r=4, lora_alpha=8.0, run_dir=tmp_path / "run")
    settings.update(overrides)
    return GRPO("tiny", **settings)


def test_lora_trains_only_the_adapter_and_the_reference_is_the_base_model(tmp_path):
    base, _, _ = load_model("tiny", seed=1)
    trainer = _grpo(tmp_path, kl_coef=0.1)
    assert trainer.reference is trainer.model  # one copy of the weights
    trainable, total = trainer.lora.counts()
    assert 0 < trainable < total / 10
    trainer.train(2)
    ids = torch.tensor([[1, 5, 6, 7, 8, 9]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        expected, _, _ = response_logprobs(base, ids, mask, 3)
        with trainer.reference_mode():
            reference, _, _ = response_logprobs(trainer.reference, ids, mask, 3)
        policy, _, _ = response_logprobs(trainer.model, ids, mask, 3)
    assert torch.allclose(reference, expected, atol=1e-6)  # the adapter off gives the untouched base model
    assert (policy - expected).abs().max() > 1e-4  # the adapter trained
    base_weights = {k: v for k, v in base.state_dict().items()}
    for name, value in trainer.model.state_dict().items():
        if "lora_" in name:
            continue
        key = name.replace(".base_layer", "")
        assert torch.equal(value, base_weights[key]), name  # frozen base weights


def test_the_saved_model_is_the_merged_policy_and_the_adapter_is_kept(tmp_path):
    trainer = _grpo(tmp_path)
    summary = trainer.train(1)
    run = tmp_path / "run"
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert summary["lora"]["targets"] == ["c_attn"] and summary["lora"]["r"] == 4
    saved, _, _ = load_model(run / "model")
    ids = torch.tensor([[1, 5, 6, 7, 8, 9]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        merged, _, _ = response_logprobs(saved, ids, mask, 3)
        live, _, _ = response_logprobs(trainer.model, ids, mask, 3)
    assert torch.allclose(merged, live, atol=1e-5)
    assert not any("lora_" in name for name in saved.state_dict())


def test_a_saved_adapter_loads_onto_the_base_model_and_equals_the_merged_policy(tmp_path):
    from proximo.llm.lora import LoRA
    trainer = _grpo(tmp_path, seed=1)
    trainer.train(1)
    base, _, _ = load_model("tiny", seed=1)  # the same base weights the run started from
    adapter = LoRA.load(base, tmp_path / "run" / "adapter")
    assert adapter.targets == ["c_attn"]
    assert not adapter.trainable_parameters()  # loaded for inference unless asked
    merged, _, _ = load_model(tmp_path / "run" / "model")
    ids = torch.tensor([[1, 5, 6, 7, 8, 9]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        via_adapter, _, _ = response_logprobs(adapter.model, ids, mask, 3)
        via_merged, _, _ = response_logprobs(merged, ids, mask, 3)
    assert torch.allclose(via_adapter, via_merged, atol=1e-5)


def test_an_adapter_folder_without_safetensors_is_refused(tmp_path):
    from proximo.llm.lora import LoRA
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_model.bin").write_bytes(b"not loaded")
    base, _, _ = load_model("tiny", seed=1)
    with pytest.raises(ProximoError, match="only as safetensors"):
        LoRA.load(base, tmp_path / "adapter")


def test_rlhf_with_lora_and_a_value_head_on_the_shared_trunk(tmp_path):
    from proximo.llm.reward_model import train_reward_model
    from proximo.llm.rlhf import RLHF

    train_reward_model("tiny", run_dir=tmp_path / "rm", tensorboard=False, max_steps=2, batch_size=8, train_pairs=32,
                       eval_pairs=8, eval_every=0)
    trainer = RLHF("tiny", reward_model=tmp_path / "rm" / "model", run_dir=tmp_path / "rlhf", tensorboard=False,
                   prompts_per_step=4, num_eval_prompts=4, eval_every=0, lora_r=2, critic="head")
    head = [value.clone() for value in trainer.value_head.state_dict().values()]
    trainer.train(1)
    after = list(trainer.value_head.state_dict().values())
    assert not all(torch.equal(a, b) for a, b in zip(head, after))  # the critic head trains beside the adapter
    assert trainer.reference is trainer.model


def test_a_lora_target_the_model_lacks_is_one_line():
    with pytest.raises(ProximoError, match=r"LoRA target module 'q_proj' is not in this gpt2 model; its linear "
                                           r"modules are .*c_attn.*: pick --lora-target from those"):
        GRPO("tiny", reward_fn=longer, prompts=PROMPTS, lora_r=4, lora_target="q_proj", tensorboard=False,
             run_dir=None)
    done = subprocess.run([sys.executable, "-m", "proximo", "llm", "grpo", "--init", "tiny", "--lora-r", "4",
                           "--lora-target", "nope", "--steps", "1"], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert done.returncode == 2 and "LoRA target module 'nope'" in done.stderr
    assert done.stderr.strip().count("\n") == 0, done.stderr


def test_a_model_directory_with_only_pickle_weights_is_refused_in_one_line(tmp_path):
    """proximo never unpickles: a .bin-only directory is named with the fix, before anything is loaded."""
    model, tokenizer, _ = load_model("tiny", seed=1)
    folder = tmp_path / "bin-only"
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save(folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")  # the name is what matters here
    with pytest.raises(ProximoError, match=r"holds only pickle weights \(pytorch_model.bin\); proximo loads only "
                                           r"safetensors"):
        load_model(folder)
    done = subprocess.run([sys.executable, "-m", "proximo", "llm", "grpo", "--init", str(folder), "--steps", "1"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2 and "only safetensors" in done.stderr and done.stderr.strip().count("\n") == 0
