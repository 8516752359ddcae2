"""Recurrent policies and action masking: masked distributions, sequence minibatches, exact replay of
the rollout, predict with state, save/load, resume, learning on memory and legality, and bad input."""
import json
import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from proximo import PPO
from proximo.config import make_config
from proximo.errors import ConfigError
from proximo.nn.distributions import CategoricalDist, MultiCategoricalDist, categorical_backward_np, categorical_np
from proximo.nn.policy import ActorCritic, RolloutActor
from proximo.nn.recurrent import RecurrentCore
from proximo.ppo import _columns, _shuffled_minibatches
from proximo.train import ResumeWarning, Trainer, list_checkpoints
from tests.envs import CueEnv, MaskedGridEnv, TinyFramesEnv

ROOT = Path(__file__).resolve().parents[1]


# masked distributions -------------------------------------------------------------------------------
def test_masked_categorical_is_the_renormalized_distribution_and_never_samples_illegal():
    torch.manual_seed(0)
    logits = torch.randn(5, 6, requires_grad=True)
    mask = torch.rand(5, 6) < 0.5
    mask[:, 2] = True
    dist = CategoricalDist(logits, mask)
    legal_probs = torch.where(mask, logits.exp(), torch.zeros(())) / torch.where(mask, logits.exp(), 0).sum(1, True)
    assert torch.allclose(dist.log_probs.exp(), legal_probs, atol=1e-6)
    expected_entropy = -(legal_probs * torch.where(mask, legal_probs.log(), torch.zeros(()))).sum(1)
    assert torch.allclose(dist.entropy(), expected_entropy, atol=1e-6)
    samples = torch.stack([dist.sample() for _ in range(2000)])
    assert mask.gather(1, samples.t()).all()
    assert mask[torch.arange(5), dist.mode()].all()
    actions = torch.tensor([2, 2, 2, 2, 2])
    (dist.log_prob(actions).sum() + dist.entropy().sum()).backward()
    assert torch.all(logits.grad[~mask] == 0) and torch.all(torch.isfinite(logits.grad))
    assert (logits.grad[mask] != 0).any()


def test_masked_multidiscrete_masks_each_dimension():
    logits = torch.zeros(3, 7)
    mask = torch.tensor([[1, 0, 0, 0, 0, 1, 0], [0, 1, 1, 0, 1, 1, 1], [1, 1, 1, 1, 0, 0, 1]], dtype=torch.bool)
    dist = MultiCategoricalDist(logits, [4, 3], mask)
    for _ in range(200):
        actions = dist.sample()
        assert mask[torch.arange(3), actions[:, 0]].all() and mask[torch.arange(3), 4 + actions[:, 1]].all()
    # uniform over the legal choices: entropy = sum of log(#legal) per dimension
    expected = torch.tensor([np.log(1) + np.log(1), np.log(2) + np.log(3), np.log(4) + np.log(1)], dtype=torch.float32)
    assert torch.allclose(dist.entropy(), expected, atol=1e-6)


def test_numpy_masked_categorical_matches_autograd():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((8, 5)).astype(np.float32)
    mask = rng.random((8, 5)) < 0.6
    mask[np.arange(8), rng.integers(0, 5, 8)] = True
    actions = np.array([np.flatnonzero(row)[0] for row in mask])
    grad_lp, grad_ent = rng.standard_normal(8).astype(np.float32), 0.3
    log_probs, entropy, cache = categorical_np(logits, actions, mask)
    grad = categorical_backward_np(cache, actions, grad_lp, grad_ent)
    t_logits = torch.tensor(logits, requires_grad=True)
    dist = CategoricalDist(t_logits, torch.tensor(mask))
    t_lp, t_ent = dist.log_prob(torch.tensor(actions)), dist.entropy()
    ((t_lp * torch.tensor(grad_lp)).sum() + grad_ent * t_ent.sum()).backward()
    assert np.allclose(log_probs, t_lp.detach().numpy(), atol=1e-5)
    assert np.allclose(entropy, t_ent.detach().numpy(), atol=1e-5)
    assert np.allclose(grad, t_logits.grad.numpy(), atol=1e-5)
    assert np.all(grad[~mask] == 0)


def test_fast_rollout_actor_never_draws_an_illegal_action_even_at_u_near_one():
    space = gym.spaces.Box(-1, 1, (3,), np.float32)
    policy = ActorCritic(space, gym.spaces.Discrete(5))
    actor = RolloutActor(policy)
    actor.draw(1, 4)
    actor.noise[0] = np.array([0.0, 0.5, 0.999999999, 1.0 - 1e-16])
    masks = np.array([[0, 1, 0, 1, 0], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0]], dtype=bool)
    actions, log_probs, _ = actor(np.zeros((4, 3), np.float32), 0, masks)
    assert masks[np.arange(4), actions].all()
    dist = policy.distribution(torch.zeros(4, 3), torch.tensor(masks))
    assert np.allclose(log_probs, dist.log_prob(torch.tensor(actions)).detach().numpy(), atol=1e-5)


# the recurrent core and sequence minibatches -------------------------------------------------------
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_recurrent_core_with_resets_equals_a_step_by_step_loop(kind):
    torch.manual_seed(0)
    core = RecurrentCore(kind, 3, 5, 2)
    features = torch.randn(7, 4, 3)
    starts = torch.rand(7, 4) < 0.3
    state = torch.randn(4, core.state_size)
    out, final = core(features, state, starts)
    step_state = state
    for t in range(7):
        o, step_state = core(features[t:t + 1], step_state, starts[t:t + 1])
        assert torch.allclose(o[0], out[t], atol=1e-6)
    assert torch.allclose(step_state, final, atol=1e-6)
    # a start zeroes the state: the output does not depend on what came before
    fresh, _ = core(features[:1], torch.zeros(4, core.state_size), torch.zeros(1, 4, dtype=torch.bool))
    reset, _ = core(features[:1], state, torch.ones(1, 4, dtype=torch.bool))
    assert torch.equal(fresh, reset)


def test_sequence_minibatches_keep_time_order_and_their_starting_states():
    # obs value = 100 * env + t, so every sample says where it came from
    t_steps, n_envs, length = 8, 3, 4
    obs = (torch.arange(n_envs)[None, :] * 100 + torch.arange(t_steps)[:, None]).float()[..., None]
    starts = torch.zeros(t_steps, n_envs, dtype=torch.bool)
    starts[5, 1] = True
    states = torch.arange(t_steps // length * n_envs, dtype=torch.float32).view(t_steps // length, n_envs, 1)

    class Buffer:
        pass
    buffer = Buffer()
    for name in ("actions", "log_probs", "values", "advantages", "returns"):
        setattr(buffer, name, torch.zeros(t_steps, n_envs))
    buffer.obs, buffer.action_masks, buffer.episode_starts, buffer.rnn_states = obs, None, starts, states
    columns = _columns(buffer)
    generator = torch.Generator().manual_seed(0)
    batches = list(_shuffled_minibatches(columns, 8, length, False,
                                         lambda n: torch.randperm(n, generator=generator), None))
    assert len(batches) == 3
    seen = set()
    for mb in batches:
        for s, sequence in enumerate(mb.obs.view(-1, length)):
            env, t0 = int(sequence[0]) // 100, int(sequence[0]) % 100
            assert torch.equal(sequence, torch.arange(t0, t0 + length, dtype=torch.float32) + 100 * env)
            assert t0 % length == 0
            assert float(mb.rnn_states[s]) == float(states[t0 // length, env])
            assert torch.equal(mb.episode_starts.view(-1, length)[s], starts[t0:t0 + length, env])
            seen.add((env, t0))
    assert len(seen) == n_envs * t_steps // length


# replaying the rollout at the old parameters --------------------------------------------------------
CASES = {
    "lstm-masked-board": ("proximo/TicTacToe-v0", dict(recurrent="lstm", bptt_len=8)),
    "gru-multidiscrete": (MaskedGridEnv, dict(recurrent="gru", rnn_layers=2, shared_network=True)),
    "lstm-cartpole-whole": ("proximo/CartPoleNoVel-v1", dict(recurrent="lstm", normalize_obs=True)),
    "lstm-dict-mask": ("proximo/TicTacToe-v0", dict(recurrent="lstm", bptt_len=16)),
    "gru-box-actions": ("Pendulum-v1", dict(recurrent="gru", bptt_len=8, normalize_obs=True)),
    "lstm-frames": (TinyFramesEnv, dict(recurrent="lstm", rnn_hidden=16, bptt_len=8)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_update_replays_the_rollout_exactly_at_the_old_parameters(case):
    env, extra = CASES[case]
    kwargs = {"mask_in": "observation"} if case == "lstm-dict-mask" else {}
    config = make_config(None, num_envs=3, n_steps=32, batch_size=32, n_epochs=1, eval_episodes=1, seed=4, **extra)
    trainer = Trainer(env, config, None, kwargs, verbose=False, tensorboard=False)
    for _ in range(2):  # the second rollout starts mid-episode, from a carried state
        buffer = trainer.collector.collect()
    assert buffer.rnn_states.abs().sum() > 0  # the stored sequence-start states are not all fresh zeros
    buffer.compute_advantages(0.99, 0.95)
    columns = _columns(buffer)
    batches = list(_shuffled_minibatches(columns, 32, buffer.sequence_length, True, torch.randperm, None))
    with torch.no_grad():
        for mb in batches:
            log_probs, _, values = trainer.policy.evaluate(mb.obs, mb.actions, mb.action_masks, mb.rnn_states,
                                                           mb.episode_starts)
            assert torch.allclose(log_probs - mb.old_log_probs, torch.zeros(()), atol=1e-6)
            assert torch.allclose(values, mb.old_values, atol=1e-5)
            if mb.action_masks is not None:
                a = mb.actions.view(len(mb.actions), -1)
                if a.shape[1] == 1:
                    assert mb.action_masks[torch.arange(len(a)), a[:, 0]].all()


# predict, save/load, resume ---------------------------------------------------------------------------
def test_predict_carries_state_in_sb3_shape_and_save_load_keeps_it(tmp_path):
    agent = PPO("proximo/TicTacToe-v0", recurrent="lstm", rnn_hidden=16, rnn_layers=2, num_envs=2, n_steps=16,
                batch_size=32, n_epochs=1, eval_episodes=1)
    agent.learn(64)
    env = gym.make("proximo/TicTacToe-v0")
    obs, _ = env.reset(seed=0)
    masks = env.unwrapped.action_masks()
    action, state = agent.predict(obs, episode_start=np.array([True]), action_masks=masks)
    assert len(state) == 2 and all(part.shape == (2, 1, 16) for part in state)
    assert masks[action]
    agent.save(tmp_path / "saved")
    loaded = PPO.load(tmp_path / "saved")
    for _ in range(3):
        a1, s1 = agent.predict(obs, state=state, action_masks=masks)
        a2, s2 = loaded.predict(obs, state=state, action_masks=masks)
        assert a1 == a2 and all(np.array_equal(x, y) for x, y in zip(s1, s2))
        state = s1
    batch_obs = np.stack([obs, obs, obs])
    actions, state = loaded.predict(batch_obs, state=None, episode_start=np.ones(3, bool), action_masks=[masks] * 3)
    assert actions.shape == (3,) and state[0].shape == (2, 3, 16) and masks[actions].all()
    with pytest.raises(Exception, match="state must be 2 array"):
        loaded.predict(obs, state=(np.zeros((1, 1, 16)),))


def test_recurrent_masked_resume_is_bitwise_exact(tmp_path):
    config = make_config(None, num_envs=2, n_steps=16, batch_size=16, bptt_len=8, n_epochs=2, eval_episodes=1,
                         seed=5, recurrent="lstm", rnn_hidden=16)
    n = 2 * config.rollout_size
    whole = Trainer("proximo/TicTacToe-v0", config.replace(total_steps=2 * n), tmp_path / "whole", verbose=False,
                    tensorboard=False)
    whole.train()
    first = Trainer("proximo/TicTacToe-v0", config.replace(total_steps=n), tmp_path / "split", verbose=False,
                    tensorboard=False)
    first.train()
    resumed = Trainer("proximo/TicTacToe-v0", config.replace(total_steps=2 * n), tmp_path / "split", verbose=False,
                      tensorboard=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResumeWarning)
        resumed.load_training_state(list_checkpoints(tmp_path / "split")[-1])
    resumed.train()
    a, b = whole.policy.state_dict(), resumed.policy.state_dict()
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert torch.equal(whole.collector.rnn_state, resumed.collector.rnn_state)
    assert list(whole.collector.episodes.returns) == list(resumed.collector.episodes.returns)


# learning -----------------------------------------------------------------------------------------------
def test_lstm_learns_a_cue_an_mlp_cannot_remember():
    # Fixed seed 1. The best a memoryless policy can do is 0 on average (a coin flip, +1 or -1); the
    # LSTM reached ~0.95 here in 12k steps, so 0.6 leaves a margin; the MLP stays below 0.35.
    settings = dict(num_envs=8, n_steps=16, batch_size=128, n_epochs=10, learning_rate=3e-3, gamma=0.99,
                    gae_lambda=0.95, ent_coef=0.01, eval_episodes=50, seed=1, net_arch=[32])
    lstm = PPO(CueEnv, recurrent="lstm", rnn_hidden=32, **settings).learn(12_000)
    mlp = PPO(CueEnv, **settings).learn(12_000)
    assert lstm.summary["eval_return_mean"] >= 0.6, lstm.summary
    assert mlp.summary["eval_return_mean"] <= 0.35, mlp.summary


def test_masked_agent_beats_a_random_opponent_and_never_plays_an_illegal_move():
    # Fixed seed 2. Random X against random O wins ~58% of games; the masked agent won 95% of its last
    # training games in 20k steps here, so a mean evaluation return of 0.6 leaves a wide margin.
    agent = PPO("proximo/TicTacToe-v0", preset="cartpole", ent_coef=0.01, eval_episodes=100, seed=2,
                total_steps=20_000).learn()
    assert agent.summary["eval_return_mean"] >= 0.6, agent.summary
    env = gym.make("proximo/TicTacToe-v0")
    illegal = 0
    for episode in range(50):
        obs, info = env.reset(seed=episode)
        done = False
        while not done:
            action, _ = agent.predict(obs, action_masks=env.unwrapped.action_masks())
            obs, _, terminated, truncated, info = env.step(action)
            illegal += info["illegal"]
            done = terminated or truncated
    assert illegal == 0


def test_multidiscrete_masks_from_info_are_obeyed_in_every_rollout_step():
    agent = PPO(lambda: MaskedGridEnv("info"), num_envs=2, n_steps=16, batch_size=16, n_epochs=1, eval_episodes=1)
    assert agent._trainer.learner.name == "torch" and agent._trainer.mask_source.source == "info"
    buffer = agent._trainer.collector.collect()
    masks, actions = buffer.action_masks.view(-1, 7), buffer.actions.view(-1, 2)
    rows = torch.arange(len(actions))
    assert masks[rows, actions[:, 0]].all() and masks[rows, 4 + actions[:, 1]].all()
    assert torch.all(buffer.rewards > 0)  # every step was legal


# bad input ------------------------------------------------------------------------------------------------
def test_config_rejects_a_bptt_len_that_does_not_divide_n_steps():
    with pytest.raises(ConfigError, match="bptt_len 7 does not divide n_steps 32"):
        make_config(None, n_steps=32, recurrent="lstm", bptt_len=7)
    with pytest.raises(ConfigError, match="whole number of 32-step sequences"):
        make_config(None, n_steps=32, num_envs=4, batch_size=48, recurrent="gru")


def test_bad_masks_stop_with_one_line_naming_env_and_step():
    from proximo.envs.masks import ActionMaskError

    with pytest.raises(ActionMaskError, match=r"shape \(5,\).*needs 7 entries"):
        PPO(lambda: MaskedGridEnv("method", bad="shape"), num_envs=2, n_steps=8, batch_size=16)
    agent = PPO(lambda: MaskedGridEnv("method", bad="empty"), num_envs=2, n_steps=8, batch_size=16)
    with pytest.raises(ActionMaskError, match="allows no action in action dimension 1 at rollout step 1"):
        agent._trainer.collector.collect()


def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "proximo", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


@pytest.mark.parametrize("args, message", [
    (["train", "Pendulum-v1", "--action-masking", "on"], "masking applies to Discrete and MultiDiscrete"),
    (["train", "CartPole-v1", "--action-masking", "on"], "exposes no action mask"),
    (["train", "CartPole-v1", "--policy", "lstm", "--n-steps", "32", "--bptt-len", "7"],
     "bptt_len 7 does not divide n_steps 32"),
    (["train", "CartPole-v1", "--policy", "rnn"], "recurrent"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    done = _cli(*args, "--run-dir", str(tmp_path / "run"), "--total-steps", "64")
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_cli_trains_and_evaluates_a_recurrent_masked_agent(tmp_path):
    run = tmp_path / "run"
    done = _cli("train", "proximo/TicTacToe-v0", "--policy", "gru", "--rnn-hidden", "16", "--num-envs", "2",
                "--n-steps", "16", "--batch-size", "32", "--total-steps", "64", "--eval-episodes", "2",
                "--run-dir", str(run), "--quiet")
    assert done.returncode == 0, done.stderr
    config = json.loads((run / "config.json").read_text())
    assert config["recurrent"] == "gru" and "method" in config["resolved"]["action_masks"]
    done = _cli("eval", str(run), "--episodes", "3")
    assert done.returncode == 0 and "return" in done.stdout, done.stderr


def test_the_docs_example_of_a_recurrent_masked_agent_runs():
    text = (ROOT / "docs" / "guides" / "recurrent-masked.md").read_text()
    section = text[text.index("# Recurrent and masked policies"):]
    code = section[section.index("```python") + len("```python"):section.index("```", section.index("```python") + 9)]
    assert "agent.learn(30_000)" in code
    namespace: dict = {}
    exec(code.replace("agent.learn(30_000)", "agent.learn(512)"), namespace)  # the same code, a shorter run
    assert namespace["done"] and namespace["info"]["illegal"] is False
