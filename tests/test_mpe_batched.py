"""env_backend batched: the NumPy twin of mpe2's simple_spread (proximo/envs/mpe_spread.py) against mpe2
itself, its lanes against AgentVectorEnv's, its snapshots, a run's resume, and the refusals."""
import json

import numpy as np
import pytest
import torch

pytest.importorskip("mpe2", reason="the batched twin's tests compare with mpe2 (pip install -e '.[multiagent]')")

from proximo.cli import main  # noqa: E402
from proximo.config import make_config  # noqa: E402
from proximo.envs.atari import GAME_KEY  # noqa: E402
from proximo.envs.mpe_spread import SpreadBatch  # noqa: E402
from proximo.multiagent.batched import BatchedAgentVectorEnv, twin_maker  # noqa: E402
from proximo.multiagent.envs import EnvMaker, build_layout, make_checked  # noqa: E402
from proximo.multiagent.trainer import MultiAgentTrainer  # noqa: E402
from proximo.multiagent.vector import AgentVectorEnv  # noqa: E402
from proximo.saved import list_checkpoints  # noqa: E402

ENV = "pettingzoo:mpe2.simple_spread_v3"


def _copy_world(twin: SpreadBatch, row: int, env) -> None:
    """Put mpe2 env's current positions and velocities into copy row of the twin."""
    world = env.unwrapped.world
    twin.pos[row] = np.stack([a.state.p_pos for a in world.agents])
    twin.vel[row] = np.stack([a.state.p_vel for a in world.agents])
    twin.landmarks[row] = np.stack([lm.state.p_pos for lm in world.landmarks])
    twin.steps[row] = env.unwrapped.steps


@pytest.mark.parametrize("n,local_ratio", [(3, 0.5), (4, 0.25)])
def test_twin_steps_exactly_as_mpe2_through_collisions(n, local_ratio):
    from mpe2 import simple_spread_v3
    env = simple_spread_v3.parallel_env(N=n, local_ratio=local_ratio)
    twin, rng, collided = SpreadBatch(1, n, local_ratio), np.random.default_rng(7), 0
    for episode in range(4):
        obs, _ = env.reset(seed=episode)
        world = env.unwrapped.world
        for agent in world.agents:  # start the agents crowded so that contact forces and penalties happen
            agent.state.p_pos = agent.state.p_pos * 0.15
        obs = {a: env.unwrapped.observe(a) for a in env.agents}
        _copy_world(twin, 0, env)
        assert np.array_equal(twin.observations()[0], np.stack([obs[a] for a in env.possible_agents]))
        for t in range(25):
            actions = rng.integers(0, 5, n)
            obs, rewards, terminated, truncated, _ = env.step({a: int(actions[i])
                                                              for i, a in enumerate(env.possible_agents)})
            mine, ended = twin.step(actions[None])
            expected = np.array([rewards[a] for a in env.possible_agents])
            assert np.array_equal(mine[0], expected), (episode, t)
            assert np.array_equal(twin.observations()[0], np.stack([obs[a] for a in env.possible_agents]))
            assert bool(ended[0]) == all(truncated.values()) == (t == 24) and not any(terminated.values())
            collided += int(np.ptp(expected) > 0)  # the coverage term is shared: only collisions split them
    assert collided > 0  # some step had an agent penalized for a collision, others not


def test_twin_resets_draw_uniform_positions():
    twin = SpreadBatch(4000)
    twin.reset(np.arange(4000), np.random.default_rng(0))
    for array in (twin.pos, twin.landmarks):
        assert -1 <= array.min() and array.max() <= 1 and abs(array.mean()) < 0.02 and abs(array.std() - 1 / 3 ** 0.5) < 0.01
    assert not twin.vel.any() and not twin.steps.any()


@pytest.mark.parametrize("critic,agent_id", [("global", True), ("own", False), ("joint", False)])
def test_lanes_equal_agent_vector_env_over_mpe2(critic, agent_id):
    maker = EnvMaker(ENV)
    probe = make_checked(maker)
    layout = build_layout(probe, critic, agent_id)
    twin = twin_maker(probe)(4)
    probe.close()
    reference = AgentVectorEnv(maker, 4, layout)
    batched = BatchedAgentVectorEnv(twin, layout)
    obs, _ = reference.reset(seed=1)
    batched.reset(seed=1)
    for c, env in enumerate(reference.envs):
        _copy_world(twin, c, env)
    batched.obs = batched._lanes(twin.observations())
    assert np.array_equal(batched.obs, obs)
    rng = np.random.default_rng(3)
    for t in range(25):
        actions = rng.integers(0, 5, 12)
        ref = reference.step(actions)
        got = batched.step(actions)
        for a, b in zip(ref[1:4], got[1:4]):  # rewards, terminated, truncated
            assert np.array_equal(a, b), t
        if t < 24:
            assert np.array_equal(ref[0], got[0]) and not got[4]
    assert got[3].all()  # every copy ended at max_cycles: final observations and whole-game statistics
    assert all(np.array_equal(a, b) for a, b in zip(ref[4]["final_obs"], got[4]["final_obs"]))
    for key in ("r", "l"):
        assert np.array_equal(ref[4]["final_info"][GAME_KEY][key], got[4]["final_info"][GAME_KEY][key])
    assert got[4]["final_info"][GAME_KEY]["l"].tolist() == [25] * 12
    assert len(batched.rollout_acting) == 25 and all(a.all() for a in batched.rollout_acting)


def test_snapshot_restores_the_copies_exactly():
    probe = make_checked(EnvMaker(ENV))
    layout = build_layout(probe, "global")
    envs = BatchedAgentVectorEnv(twin_maker(probe)(6), layout)
    probe.close()
    envs.reset(seed=5)
    rng = np.random.default_rng(0)
    for _ in range(17):
        envs.step(rng.integers(0, 5, 18))
    snapshot = json.loads(json.dumps(envs.proximo_vector_snapshot()))
    actions = [rng.integers(0, 5, 18) for _ in range(30)]
    first = [envs.step(a)[:4] for a in actions]
    envs.proximo_vector_restore(snapshot)
    again = [envs.step(a)[:4] for a in actions]
    for x, y in zip(first, again):
        assert all(np.array_equal(a, b) for a, b in zip(x, y))


def _trainer(run_dir, **overrides):
    settings = dict(num_envs=12, n_steps=25, batch_size=150, n_epochs=2, critic="global", seed=3,
                    eval_episodes=2, env_backend="batched")
    config = make_config(None, **{**settings, **overrides})
    return MultiAgentTrainer(ENV, config, run_dir, verbose=False, tensorboard=False)


def test_batched_run_resumes_bitwise_and_evaluates_on_mpe2(tmp_path):
    whole = _trainer(tmp_path / "whole", total_steps=1800)
    summary = whole.train()
    assert isinstance(whole.envs, BatchedAgentVectorEnv)
    first = _trainer(tmp_path / "split", total_steps=900, save_every=900)
    first.train()
    resumed = _trainer(tmp_path / "split", total_steps=1800, save_every=900)
    resumed.load_training_state(list_checkpoints(tmp_path / "split")[-1])
    resumed.train()
    for key, value in whole.policy.state_dict().items():
        assert torch.equal(value, resumed.policy.state_dict()[key]), key
    assert list(whole.collector.episodes.returns) == list(resumed.collector.episodes.returns)
    # simple_spread returns are negative sums of distances over 25 steps; the evaluation played mpe2 itself
    assert -200 < summary["eval_return_mean"] < 0 and summary["train_return_last100_mean"] < 0


def test_a_sync_checkpoint_does_not_resume_a_batched_run(tmp_path):
    first = _trainer(tmp_path, total_steps=900, save_every=900, env_backend="sync")
    first.train()
    resumed = _trainer(tmp_path, total_steps=1800)
    with pytest.raises(Exception, match="does not fit this run"):
        resumed.load_training_state(list_checkpoints(tmp_path)[-1])


def test_batched_backend_refusals_are_one_line_and_exit_2(tmp_path, capsys):
    cases = [
        (["CartPole-v1", "--env-backend", "batched"], "is a gymnasium env"),
        (["pettingzoo:classic.tictactoe_v3", "--env-backend", "batched", "--num-envs", "2"], "has none"),
        (["pettingzoo:mpe2.simple_spread_v3", "--env-backend", "batched", "--num-envs", "3",
          "--env-kwargs", '{"continuous_actions": true}'], "has none"),
    ]
    for argv, text in cases:
        assert main(["train", *argv, "--total-steps", "64", "--run-dir", str(tmp_path / "r"), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and text in err, err
