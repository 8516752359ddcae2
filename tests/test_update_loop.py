"""One update for both worlds: every optimizer step of classic PPO, GRPO and PPO-RLHF is taken by a Learner
called from proximo.ppo.run_update (the one epoch/minibatch loop), and every optimizer step of any proximo
trainer (SFT and the reward model too) ends in FlatOptimizer.clip_and_step (the one step tail)."""
import sys

import pytest

from proximo.learners.optimizer import FlatOptimizer


def _proximo_frames() -> list[tuple[str, str]]:
    """(module file relative to proximo/, function name) of every proximo frame on the stack, innermost first."""
    frames, frame = [], sys._getframe(2)
    while frame is not None:
        path = frame.f_code.co_filename.replace("\\", "/")
        if "/proximo/" in path and "/tests/" not in path:
            frames.append((path.rsplit("/proximo/", 1)[1], frame.f_code.co_name))
        frame = frame.f_back
    return frames


@pytest.fixture
def steps(monkeypatch):
    """The proximo stack of every optimizer step taken while the test runs."""
    seen: list[list[tuple[str, str]]] = []
    step = FlatOptimizer.step

    def recording_step(self):
        seen.append(_proximo_frames())
        return step(self)
    monkeypatch.setattr(FlatOptimizer, "step", recording_step)
    return seen


def _loop_and_tail(stack: list[tuple[str, str]]) -> tuple[int, bool]:
    """How many run_update frames hold this step, and whether clip_and_step took it."""
    return stack.count(("ppo.py", "run_update")), ("learners/optimizer.py", "clip_and_step") in stack


def _assert_one_loop(seen, updates: int, per_update: int, learner_file: str) -> None:
    assert len(seen) == updates * per_update, len(seen)
    for stack in seen:
        assert _loop_and_tail(stack) == (1, True), stack
        # the learner's step is what run_update calls, and run_update is what calls it
        below_loop = stack[:stack.index(("ppo.py", "run_update"))]
        assert below_loop[-1] == (learner_file, "step"), stack


def test_classic_ppo_steps_only_inside_the_one_update_loop(steps):
    from proximo import PPO
    agent = PPO("CartPole-v1", n_steps=16, num_envs=2, batch_size=8, n_epochs=2, eval_episodes=1, seed=3,
                learner="torch")
    agent.learn(64)
    _assert_one_loop(steps, updates=2, per_update=2 * 4, learner_file="learners/torch.py")


def test_grpo_steps_only_inside_the_one_update_loop(steps, tmp_path):
    from proximo.llm import GRPO
    trainer = GRPO("tiny", reward_fn=lambda prompts, completions: [float(len(c)) for c in completions],
                   prompts=["ab", "ba"], run_dir=tmp_path, steps=2, prompts_per_step=2, group_size=2,
                   num_minibatches=2, n_epochs=2, max_new_tokens=3, num_eval_prompts=1, eval_every=0,
                   tensorboard=False, device="cpu")
    trainer.train()
    _assert_one_loop(steps, updates=2, per_update=2 * 2, learner_file="llm/learners.py")


def test_rlhf_sft_and_reward_model_step_through_the_one_tail(steps, tmp_path):
    from proximo.llm import RLHF, SFT, train_reward_model
    SFT("tiny", run_dir=tmp_path / "sft", max_steps=2, batch_size=4, eval_every=0, num_eval_prompts=2,
        tensorboard=False).train()
    rm = train_reward_model("tiny", run_dir=tmp_path / "rm", max_steps=2, batch_size=4, train_pairs=8,
                            eval_pairs=4, num_eval_prompts=2, tensorboard=False)
    assert len(steps) == 4 and all(_loop_and_tail(stack) == (0, True) for stack in steps)  # no PPO loop there
    steps.clear()
    RLHF("tiny", reward_model=rm["run_dir"], run_dir=tmp_path / "rlhf", steps=1, prompts_per_step=4,
         num_minibatches=2, n_epochs=2, max_new_tokens=3, num_eval_prompts=1, eval_every=0, tensorboard=False,
         device="cpu").train()
    _assert_one_loop(steps, updates=1, per_update=2 * 2, learner_file="llm/learners.py")
