"""Fitting real hardware: micro-batches with gradient accumulation give the minibatch's gradient
exactly, bf16/fp16 autocast runs with fp32 master weights (and recomputes the old log-probs), fp16 loss
scaling skips an overflowing step, gradient checkpointing changes no gradient, long prompts are cut and
counted, an outside sampler gets the weights each step, and bad device/dtype input is one line."""
import copy

import pytest
import torch

from proximo.cli import main
from proximo.errors import ConfigError
from proximo.learners.optimizer import FlatOptimizer
from proximo.llm import GRPO, RLHF, train_reward_model
from proximo.llm.generation import KVCacheSampler
from proximo.llm.losses import aggregate_loss, loss_normalizer
from proximo.llm.precision import Precision
from proximo.llm.rl import micro_batches
from proximo.llm.run import prompt_token_ids

FAST = dict(num_eval_prompts=2, tensorboard=False, steps=1, prompts_per_step=4, group_size=4, max_new_tokens=4,
            eval_every=0, device="cpu")
PROMPTS = ["ab", "ba", "aa", "bb"]


def _length(prompts, completions):
    return [float(len(c)) for c in completions]


def _params(trainer) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).float() for p in trainer.trainable_parameters()])


def _one_update(trainer, batch) -> list[torch.Tensor]:
    """The gradient of every optimizer step of one learn() (Adam's steps amplify float noise on
    near-zero gradients, so the gradients are compared, not the weights after)."""
    grads = []
    step = trainer.precision.step

    def recording_step(optimizer, max_grad_norm):
        grads.append(optimizer.grad.clone())
        return step(optimizer, max_grad_norm)
    trainer.precision.step = recording_step
    torch.manual_seed(123)  # the same minibatch shuffle on both sides
    trainer.learn(batch, trainer.make_optimizer())
    return grads


def _same_gradients(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    """The first optimizer steps' gradients agree to float32 rounding (1e-5 of the largest entry).
    Only the first: Adam's first step moves near-zero-gradient weights by a full +-lr whatever their
    sign noise, so later gradients are of slightly different weights."""
    assert len(a) == len(b) and a
    x, y = a[0], b[0]
    return float((x - y).abs().max()) <= 1e-5 * float(x.abs().max())


@pytest.mark.parametrize("mode", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_micro_batch_parts_sum_to_the_minibatch_loss(mode):
    torch.manual_seed(0)
    per, mask = torch.randn(6, 5), (torch.rand(6, 5) > 0.3).long()
    mask[2] = 0  # a row with no real token counts in no mode's rows
    whole = aggregate_loss(per, mask, mode, constant=5.0, batch_tokens=40.0, num_minibatches=2)
    idx = torch.arange(6)
    if mode == "dapo":
        norm = 40.0 / 2
    else:
        norm = loss_normalizer(mask, mode, constant=5.0)
    parts = [aggregate_loss(per[p], mask[p], mode, constant=5.0, batch_tokens=40.0, num_minibatches=2,
                            normalizer=norm) for p in micro_batches(idx, 4)]
    assert len(parts) == 2
    assert float(sum(parts)) == pytest.approx(float(whole), rel=1e-6)


@pytest.mark.parametrize("aggregation", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_grpo_micro_batches_give_the_same_update(tmp_path, aggregation):
    kwargs = dict(reward_fn=_length, prompts=PROMPTS, loss_aggregation=aggregation, num_minibatches=2,
                  ent_coef=0.01, kl_coef=0.05, **FAST)
    whole = GRPO("tiny", run_dir=tmp_path / "whole", **kwargs)
    parts = GRPO("tiny", run_dir=tmp_path / "parts", micro_batch_size=3, **kwargs)
    batch = whole.collect()
    assert torch.equal(_params(whole), _params(parts))
    whole_grads = _one_update(whole, batch)
    parts_grads = _one_update(parts, copy.deepcopy(batch))
    assert float(whole_grads[0].abs().max()) > 0
    assert _same_gradients(whole_grads, parts_grads)


def test_rlhf_micro_batches_give_the_same_update(tmp_path):
    rm = train_reward_model("tiny", run_dir=tmp_path / "rm", max_steps=2, batch_size=8, train_pairs=32,
                            eval_pairs=8, num_eval_prompts=2, tensorboard=False)
    kwargs = dict(reward_model=rm["run_dir"], steps=1, prompts_per_step=8, num_minibatches=2, n_epochs=1,
                  max_new_tokens=4, num_eval_prompts=2, tensorboard=False, eval_every=0, device="cpu")
    whole = RLHF("tiny", run_dir=tmp_path / "whole", **kwargs)
    parts = RLHF("tiny", run_dir=tmp_path / "parts", micro_batch_size=1, **kwargs)
    batch = whole.collect()
    assert _same_gradients(_one_update(whole, batch), _one_update(parts, copy.deepcopy(batch)))


def test_bfloat16_keeps_float32_master_weights_and_recomputes_old_logprobs(tmp_path):
    trainer = GRPO("tiny", reward_fn=_length, prompts=PROMPTS, run_dir=tmp_path, dtype="bfloat16", lora_r=4,
                   **FAST)
    trainable = trainer.trainable_parameters()
    frozen = [p for p in trainer.model.parameters() if not p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)  # the base under the adapter
    batch = trainer.collect()
    rollout = trainer.rollout(PROMPTS[:1], repeats=2)[0]
    assert rollout.logprobs.dtype == torch.float32
    assert trainer.old_logprobs(rollout) is not rollout.logprobs
    # the old log-probs are the learner's own pass, not the sampler's (bf16 incremental vs full pass)
    assert batch.old_logp.dtype == torch.float32 and batch.old_logp.shape == batch.mask.shape
    before = _params(trainer)
    row = trainer.learn(batch, trainer.make_optimizer())
    assert torch.isfinite(torch.tensor(row["policy_loss"]))
    assert not torch.equal(_params(trainer), before)


def test_old_logprobs_recomputed_for_an_outside_sampler_match_the_sampler_in_float32(tmp_path):
    class Outside(KVCacheSampler):
        exact_logprobs = False
        syncs = 0

        def sync_weights(self, model):
            type(self).syncs += 1

    sampler = Outside()
    trainer = GRPO("tiny", reward_fn=_length, prompts=PROMPTS, run_dir=tmp_path, sampler=sampler,
                   **{**FAST, "steps": 2})
    rollout, _, _ = trainer.rollout(PROMPTS, repeats=2)
    recomputed = trainer.old_logprobs(rollout)
    mask = rollout.response_mask.bool()
    assert recomputed is not rollout.logprobs
    assert torch.allclose(recomputed[mask], rollout.logprobs[mask], atol=1e-5)
    trainer.train()
    assert Outside.syncs == 2  # once before each step's rollouts


def test_float16_loss_scaling_skips_an_overflowing_step():
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = FlatOptimizer([weight], lr=0.1)
    precision = Precision(torch.device("cpu"), "float16", init_scale=2.0 ** 10)
    optimizer.zero_grad()
    precision.backward((weight * float("inf")).sum())
    assert precision.step(optimizer, 1.0) is False
    assert precision.scale == 2.0 ** 9 and precision.skipped_steps == 1
    assert torch.equal(weight.detach(), torch.ones(3))  # nothing stepped
    optimizer.zero_grad()
    precision.backward((weight * 2.0).sum())
    assert torch.allclose(optimizer.grad, torch.full((3,), 2.0 * 2.0 ** 9))  # scaled in backward
    assert precision.step(optimizer, None) is True
    assert weight.detach()[0] < 1.0  # unscaled, then stepped


def test_gradient_checkpointing_gives_the_same_update(tmp_path):
    kwargs = dict(reward_fn=_length, prompts=PROMPTS, num_minibatches=1, **FAST)
    plain = GRPO("tiny-llama", run_dir=tmp_path / "plain", **kwargs)
    checkpointed = GRPO("tiny-llama", run_dir=tmp_path / "ckpt", gradient_checkpointing=True, **kwargs)
    assert checkpointed.model.is_activation_checkpointing
    batch = plain.collect()
    assert _same_gradients(_one_update(plain, batch), _one_update(checkpointed, copy.deepcopy(batch)))
    assert not checkpointed.model.training  # back to eval mode for generation


def test_long_prompts_keep_bos_and_their_end_and_are_counted(tmp_path):
    trainer = GRPO("tiny", reward_fn=_length, prompts=["abcdefgh", "ab"], run_dir=tmp_path, max_prompt_tokens=4,
                   **{**FAST, "prompts_per_step": 2})
    ids, cut = prompt_token_ids(trainer.tokenizer, ["abcdefgh", "ab"], 4)
    assert cut == 1
    assert ids[0] == [trainer.tokenizer.bos_id] + trainer.tokenizer.encode("fgh")
    assert ids[1] == trainer.tokenizer.encode("ab", add_bos=True)
    trainer.rollout(["abcdefgh", "ab"])
    assert trainer.prompt_truncated_fraction == 0.5
    row = trainer.learn(trainer.collect(), trainer.make_optimizer())
    assert 0.0 <= row["prompt_truncated_fraction"] <= 1.0


def test_a_prompt_longer_than_the_model_names_the_row_and_the_fix(tmp_path):
    with pytest.raises(Exception, match=r"row 0: the prompt has .* max_prompt_tokens"):
        GRPO("tiny", reward_fn=_length, prompts=["a" * 70], run_dir=tmp_path, **FAST)


def test_bfloat16_on_a_device_without_it_is_one_line(tmp_path, capsys, monkeypatch):
    import proximo.llm.precision as precision
    monkeypatch.setattr(precision, "dtype_supported", lambda device, dtype: dtype == torch.float32)
    code = main(["llm", "grpo", "--init", "tiny", "--steps", "1", "--dtype", "bfloat16", "--device", "cpu",
                 "--run-dir", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "--dtype bfloat16" in err and "float32" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_on_a_machine_without_one_is_one_line(tmp_path, capsys):
    code = main(["llm", "grpo", "--init", "tiny", "--steps", "1", "--device", "cuda",
                 "--run-dir", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--device cuda" in err


def test_an_unknown_dtype_is_a_config_error():
    with pytest.raises(ConfigError, match="dtype must be one of float32, bfloat16, float16"):
        GRPO("tiny", reward_fn=_length, prompts=PROMPTS, dtype="int8", **FAST)


def test_grpo_holds_a_reference_copy_only_when_something_reads_it(tmp_path):
    plain = GRPO("tiny", reward_fn=_length, prompts=PROMPTS, run_dir=tmp_path / "a", **FAST)
    assert plain.reference is None  # kl_coef 0: no second copy of the weights
    row = plain.learn(plain.collect(), plain.make_optimizer())
    assert row["kl_ref"] is None
    with_kl = GRPO("tiny", reward_fn=_length, prompts=PROMPTS, run_dir=tmp_path / "b", kl_coef=0.1, **FAST)
    kept = GRPO("tiny", reward_fn=_length, prompts=PROMPTS, run_dir=tmp_path / "c", keep_reference=True, **FAST)
    for trainer in (with_kl, kept):
        assert trainer.reference is not None and trainer.reference is not trainer.model
        assert trainer.learn(trainer.collect(), trainer.make_optimizer())["kl_ref"] is not None


def test_sft_and_reward_model_train_in_the_dtype_and_on_the_device_asked(tmp_path, monkeypatch):
    """SFT and the reward model run their passes in config.dtype (autocast) on config.device, weights and Adam
    in float32: a bfloat16 step moves the weights other than the float32 step does."""
    from proximo.llm import SFT
    from proximo.llm.reward_model import RewardModelTrainer
    seen = []
    original = Precision.autocast
    monkeypatch.setattr(Precision, "autocast", lambda self: seen.append(self.name) or original(self))
    rows = [{"prompt": f"{a}+{b}=", "completion": str(a + b)} for a in range(3) for b in range(3)]

    def sft_weights(dtype):
        trainer = SFT("tiny", run_dir=tmp_path / f"sft-{dtype}", dataset=rows, max_steps=2, batch_size=4,
                      eval_every=5, num_eval_prompts=2, tensorboard=False, save_every=0, dtype=dtype, device="cpu")
        trainer.train()
        assert trainer.device == torch.device("cpu")
        assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
        return torch.cat([p.detach().reshape(-1) for p in trainer.model.parameters()])
    assert not torch.equal(sft_weights("float32"), sft_weights("bfloat16"))
    assert seen.count("bfloat16") == 2 and seen.count("float32") == 2  # one pass per step, in the dtype asked

    seen.clear()
    rm = RewardModelTrainer("tiny", run_dir=tmp_path / "rm", max_steps=2, batch_size=4, train_pairs=16,
                            eval_pairs=8, tensorboard=False, save_every=0, dtype="bfloat16", device="cpu")
    rm.train()
    assert seen == ["bfloat16", "bfloat16"] and all(p.dtype == torch.float32 for p in rm.rm.parameters())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
@pytest.mark.parametrize("command", ["sft", "rm"])
def test_sft_and_rm_on_a_missing_gpu_are_one_line(tmp_path, capsys, command):
    code = main(["llm", command, "--device", "cuda", "--max-steps", "1", "--run-dir", str(tmp_path / "run"),
                 "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--device cuda" in err
