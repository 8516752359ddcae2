"""Multi-agent runs (proximo/multiagent): crediting in turn-based games, masks per agent, agents that leave,
the centralized critic's split input, self-play resume, and the bad-input errors."""
import json
import time

import numpy as np
import pytest
import torch

pytest.importorskip("pettingzoo", reason="multi-agent tests need the multiagent extra (pip install -e '.[multiagent]')")

from proximo.cli import main  # noqa: E402
from proximo.config import make_config  # noqa: E402
from proximo.errors import ConfigError, ProximoError  # noqa: E402
from proximo.multiagent.trainer import MultiAgentTrainer  # noqa: E402
from proximo.nn.policy import ActorCritic, RolloutActor  # noqa: E402
from proximo.saved import list_checkpoints  # noqa: E402
from tests.multiagent_envs import LeaversParallel, RelayAEC  # noqa: E402


def _trainer(env, run_dir=None, **overrides):
    config = make_config(None, **{"n_epochs": 1, "eval_episodes": 2, "seed": 1, **overrides})
    trainer = MultiAgentTrainer(env, config, run_dir, verbose=False, tensorboard=False)
    # what train() sets before its first rollout, for tests that call _collect / _learn themselves
    trainer._total, trainer._start_step, trainer._train_started = config.total_steps, 0, time.perf_counter()
    return trainer


def _lane_moves(compact, lane_rows):
    """Split a compacted [M, 1] buffer's rewards and terminal flags into the lanes' runs of lengths lane_rows."""
    rewards, terminated = compact.rewards[:, 0].tolist(), compact.terminated[:, 0].tolist()
    out, start = [], 0
    for count in lane_rows:
        out.append(list(zip(rewards[start:start + count], terminated[start:start + count])))
        start += count
    return out


def test_turn_based_rewards_are_credited_to_the_move_that_earned_them():
    trainer = _trainer(RelayAEC, num_envs=2, n_steps=6, batch_size=6)
    first = trainer._collect()
    raw = trainer.collector.buffer
    acts = raw.actions[:, :].numpy().copy()  # [T, lanes]: lane 0 is a, lane 1 is b
    acting = np.stack(trainer.envs.rollout_acting)
    # a moves at steps 0, 2, 4 and b at 1, 3, 5; every other row of each lane is idle
    assert acting[:, 0].tolist() == [True, False] * 3 and acting[:, 1].tolist() == [False, True] * 3
    # a: 10 (b's reply + 1), arriving on b's turn; its second move also ends the game (+100); its third
    # move (step 4) waits for b's answer, and b's third move (step 5) for a's: both carried over.
    lane_a, lane_b = _lane_moves(first, [2, 2])
    assert lane_a == [(10.0 * (acts[1, 1] + 1), False), (10.0 * (acts[3, 1] + 1) + 100.0, True)]
    # b: its first reward (a's opening) came before b ever moved, so it counts for nothing
    assert lane_b == [(acts[2, 0] + 1.0, False), (-100.0, True)]
    assert first.next_values[0, 0] == raw.values[2, 0]  # a's successor is a's next move, not b's row
    assert trainer.open_moves.open.tolist() == [True, True]
    second = trainer._collect()
    acts2 = trainer.collector.buffer.actions.numpy()
    # the carried moves close first in each lane: a's (b answered at the old step 5, a moved again at new
    # step 0), b's (a answered at new step 0, b moved at new step 1); then whole moves, all closed by
    # the rollout's end: a at 0 (ends game 2), 2, 4 (ends game 3); b at 1 (ends game 2), 3, 5
    lane_a, lane_b = _lane_moves(second, [4, 4])
    assert lane_a == [(10.0 * (acts[5, 1] + 1), False), (10.0 * (acts2[1, 1] + 1) + 100.0, True),
                      (10.0 * (acts2[3, 1] + 1), False), (10.0 * (acts2[5, 1] + 1) + 100.0, True)]
    assert lane_b == [(acts2[0, 0] + 1.0, False), (-100.0, True), (acts2[4, 0] + 1.0, False), (-100.0, True)]
    assert not trainer.open_moves.open.any()


def test_agents_masks_differ_and_an_agent_that_leaves_stops_counting():
    trainer = _trainer(LeaversParallel, num_envs=4, n_steps=10, batch_size=20, agent_id=True)
    layout = trainer.layout
    assert layout.mask_width == 5 and layout.id_dim == 2
    trainer._collect()  # an illegal action would raise inside the env
    masks = trainer.collector.buffer.action_masks.numpy()
    acting = np.stack(trainer.envs.rollout_acting)
    p_lanes, q_lanes = [0, 2], [1, 3]
    assert not masks[:, p_lanes, 3:].any()  # p has 3 actions: the shared head's extra ones are masked off
    assert (masks[:, p_lanes][acting[:, p_lanes]].sum(axis=-1) == 2).all()  # one of p's 3 actions is illegal each step
    # q leaves after 2 steps, p after 5: each 5-step episode has q acting twice and p five times
    assert acting[:, q_lanes].sum() == 2 * 2 * 2 and acting[:, p_lanes].sum() == 2 * 2 * 5
    episodes = trainer.collector.episodes
    assert sorted(set(episodes.returns)) == [2.0, 5.0] and episodes.finished == 8
    obs = trainer.collector.buffer.obs.numpy()
    assert (obs[~acting] == 0).all()  # an idle lane shows zeros


def test_leaving_agents_idle_steps_are_left_out_of_the_update():
    trainer = _trainer(LeaversParallel, num_envs=2, n_steps=10, batch_size=10)
    compact = trainer._collect()
    assert compact.rewards.shape == (14, 1)  # 2 episodes x (5 moves of p + 2 of q)
    assert compact.terminated.sum() == 4 and (compact.rewards == 1.0).all()
    row = trainer._learn(compact)
    assert row["agent_moves"] == 14 and np.isfinite(row["policy_loss"])


@pytest.mark.parametrize("learner", ["numpy", "torch"])
def test_centralized_critic_reads_the_state_and_the_actor_does_not(learner):
    trainer = _trainer("pettingzoo:mpe2.simple_spread_v3", num_envs=6, n_steps=8, batch_size=48, critic="global",
                       learner=learner)
    policy, layout = trainer.policy, trainer.layout
    assert layout.critic == "state" and policy.actor_dim == 18 and layout.width == 18 + 54
    x = torch.randn(5, layout.width)
    changed = x.clone()
    changed[:, 18:] += 1.0
    with torch.no_grad():
        assert torch.equal(policy.distribution(x).log_probs, policy.distribution(changed).log_probs)
        assert not torch.equal(policy.value(x), policy.value(changed))
        actor = RolloutActor(policy)  # the fused NumPy actor agrees with the torch networks
        actor.draw(1, 5)
        _, _, values = actor(x.numpy(), 0)
        assert np.allclose(values, policy.value(x).numpy(), atol=1e-5)
    buffer = trainer._collect()
    row = trainer._learn(buffer)
    assert np.isfinite(row["value_loss"])


def test_numpy_and_torch_learners_agree_on_a_centralized_critic():
    config = make_config(None, critic="global", seed=3)
    from proximo.learners.numpy_mlp import NumpyMLPLearner
    from proximo.learners.torch import TorchLearner
    from proximo.learners.base import LossSettings, Minibatch
    from proximo.learners.optimizer import FlatOptimizer
    from gymnasium import spaces

    space = spaces.Box(-1, 1, (10,), np.float32)
    grads = []
    for cls in (NumpyMLPLearner, TorchLearner):
        torch.manual_seed(0)
        policy = ActorCritic(space, spaces.Discrete(4), actor_dim=6)
        optimizer = FlatOptimizer(policy, lr=1e-3)
        learner = cls(policy, optimizer)
        learner.begin_update()
        g = torch.Generator().manual_seed(1)
        batch = Minibatch(torch.randn(32, 10, generator=g), torch.randint(0, 4, (32,), generator=g),
                          -torch.rand(32, generator=g) - 1, torch.randn(32, generator=g), torch.randn(32, generator=g),
                          torch.randn(32, generator=g))
        learner.step(batch, LossSettings("clip", 0.2, None, 0.0, 0.01, 0.5, None))
        grads.append(optimizer.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-5)
    assert config.critic == "global"


def test_selfplay_resume_is_bitwise_exact_with_the_opponent_pool(tmp_path, capsys):
    settings = dict(selfplay=True, num_envs=4, n_steps=16, batch_size=32, snapshot_every=64, save_every=64,
                    opponent_sampling="pfsp", opponent_latest=0.3)
    env = "pettingzoo:classic.tictactoe_v3"
    whole = _trainer(env, tmp_path / "whole", total_steps=384, **settings)
    whole.train()
    first = _trainer(env, tmp_path / "split", total_steps=192, **settings)
    first.train()
    resumed = _trainer(env, tmp_path / "split", total_steps=384, **settings)
    resumed.load_training_state(list_checkpoints(tmp_path / "split")[-1])
    resumed.train()
    for key, value in whole.policy.state_dict().items():
        assert torch.equal(value, resumed.policy.state_dict()[key]), key
    table = [json.loads((tmp_path / name / "league" / "league.json").read_text()) for name in ("whole", "split")]
    assert table[0] == table[1] and len(table[0]["snapshots"]) == 7
    assert list(whole.collector.episodes.returns) == list(resumed.collector.episodes.returns)
    for name in table[0]["snapshots"]:
        a = (tmp_path / "whole" / "league" / name["name"] / "policy.safetensors").read_bytes()
        assert a == (tmp_path / "split" / "league" / name["name"] / "policy.safetensors").read_bytes()
    # the learner's rating per update is plotted from updates.jsonl (metrics.csv keeps the common columns)
    assert main(["plot", str(tmp_path / "whole"), "--y", "selfplay_rating", "-o", str(tmp_path / "r.png")]) == 0
    assert (tmp_path / "r.png").stat().st_size > 0
    capsys.readouterr()
    # proximo eval pits the run against a scripted player, or against one of its own snapshots
    first_snapshot = tmp_path / "whole" / "league" / table[0]["snapshots"][0]["name"]
    for against in ("lookahead", str(first_snapshot)):
        assert main(["eval", str(tmp_path / "whole"), "--against", against, "--episodes", "4"]) == 0
        out = capsys.readouterr().out
        assert "4 games against" in out and "95% CI" in out


def test_lookahead_player_beats_random_and_intervals_are_wilson():
    from proximo.multiagent.league import wilson_interval
    from proximo.multiagent.play import LookaheadPlayer, RandomPlayer, play_match
    from proximo.multiagent.trainer import layout_for

    maker, layout = layout_for("pettingzoo:classic.tictactoe_v3", {}, make_config(None))
    result = play_match(maker, LookaheadPlayer(layout), RandomPlayer(layout), 20, seed=0)
    assert result.wins >= 14 and result.losses <= 2  # 35 / 4 / 1 over 40 games with seed 0
    low, high = wilson_interval(8, 10)
    assert abs(low - 0.4902) < 1e-4 and abs(high - 0.9433) < 1e-4


def test_turn_based_resume_keeps_the_open_moves(tmp_path):
    settings = dict(num_envs=2, n_steps=6, batch_size=6, save_every=12)
    whole = _trainer(RelayAEC, None, total_steps=72, **settings)
    whole.train()
    first = _trainer(RelayAEC, tmp_path, total_steps=36, **settings)  # 18 moves: 4.5 games, a move still open
    first.train()
    assert first.open_moves.open.any()
    resumed = _trainer(RelayAEC, tmp_path, total_steps=72, **settings)
    resumed.load_training_state(list_checkpoints(tmp_path)[-1])
    resumed.train()
    for key, value in whole.policy.state_dict().items():
        assert torch.equal(value, resumed.policy.state_dict()[key]), key


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    cases = [
        (["pettingzoo:no_such_env_v0"], "cannot import the PettingZoo env"),
        (["pettingzoo:mpe2.simple_spread_v3", "--critic", "state", "--num-envs", "4"], "not a multiple"),
        (["pettingzoo:mpe2.simple_spread_v3", "--selfplay", "true", "--num-envs", "3"], "two-player"),
        (["pettingzoo:mpe2.simple_spread_v3", "--policy-map", "lead=agent_9", "--num-envs", "3"], "no agent of this env"),
    ]
    for argv, text in cases:
        assert main(["train", *argv, "--total-steps", "64", "--run-dir", str(tmp_path / "r"), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and text in err, err
    with pytest.raises(ProximoError, match="neither a gymnasium.Env nor a PettingZoo"):
        from proximo.api import PPO
        PPO(lambda: object())
    with pytest.raises(ConfigError, match="no way to build one"):
        _frames_critic()
    with pytest.raises(ConfigError, match="no global state"):
        _trainer(LeaversParallel, num_envs=2, n_steps=4, batch_size=8, critic="state")


def _frames_critic():
    """A centralized critic on an env with frame observations and no state(): no way to build one."""
    from gymnasium import spaces
    from pettingzoo import ParallelEnv

    class Frames(ParallelEnv):
        possible_agents = ["x", "y"]

        def observation_space(self, agent):
            return spaces.Box(0, 255, (8, 8, 3), np.uint8)

        def action_space(self, agent):
            return spaces.Discrete(2)

        def reset(self, seed=None, options=None):
            self.agents = list(self.possible_agents)
            return {a: np.zeros((8, 8, 3), np.uint8) for a in self.agents}, {a: {} for a in self.agents}

    _trainer(Frames, num_envs=2, n_steps=4, batch_size=8, critic="global")


def test_one_agents_policy_exports_and_acts_as_in_training(tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="the export extra is not installed")
    from proximo.export import export_policy
    from proximo.multiagent.export import agent_input
    from proximo.multiagent.play import PolicyPlayer
    from proximo.saved import policy_metadata

    trainer = _trainer("pettingzoo:mpe2.simple_spread_v3", num_envs=6, n_steps=8, batch_size=48, critic="global",
                       agent_id=True, normalize_obs=True)
    trainer._learn(trainer._collect())  # moved weights and observation statistics
    meta = policy_metadata(trainer.policy, trainer.config, trainer.env, {})
    path = export_policy(trainer.policy, tmp_path / "agent_1.onnx", "onnx", meta, agent_input(meta, "agent_1"))
    session = ort.InferenceSession(str(path))
    env = trainer.maker()
    player = PolicyPlayer(trainer.policy, trainer.layout)
    rng = np.random.default_rng(0)
    for seed in range(5):
        observations, _ = env.reset(seed=seed)
        obs = observations["agent_1"]
        exported = session.run(None, {"obs": obs[None].astype(np.float32)})[0]
        assert int(exported[0]) == player.act(env, "agent_1", obs, rng)


@pytest.mark.slow
def test_connect_four_selfplay_learns_to_beat_random(tmp_path):
    # benchmarks/selfplay_connect4.py's settings, seed 1, 40,960 learner moves; the benchmark's seeds were at
    # 0.95 and 0.90 against random after 32,768 (benchmarks/results/selfplay-connect4.md): 0.8 leaves margin
    from proximo.multiagent.play import PolicyPlayer, RandomPlayer, play_match

    settings = dict(selfplay=True, num_envs=32, n_steps=128, batch_size=1024, n_epochs=4, learning_rate=3e-4,
                    ent_coef=0.01, gamma=0.99, gae_lambda=0.95, net_arch=[128, 128], activation="relu",
                    snapshot_every=30_000, total_steps=40_960, eval_episodes=10)
    trainer = _trainer("pettingzoo:classic.connect_four_v3", tmp_path, **settings)
    trainer.train()
    result = play_match(trainer.maker, PolicyPlayer(trainer.policy, trainer.layout), RandomPlayer(trainer.layout), 50)
    assert result.wins / result.games >= 0.8, result


def test_parallel_selfplay_resume_is_bitwise_exact(tmp_path):
    # rock-paper-scissors has the parallel API: the opponent acts in the same step as the learner
    settings = dict(selfplay=True, num_envs=4, n_steps=8, batch_size=32, snapshot_every=32, save_every=32)
    env = "pettingzoo:classic.rps_v2"
    whole = _trainer(env, tmp_path / "whole", total_steps=128, **settings)
    whole.train()
    first = _trainer(env, tmp_path / "split", total_steps=64, **settings)
    first.train()
    resumed = _trainer(env, tmp_path / "split", total_steps=128, **settings)
    resumed.load_training_state(list_checkpoints(tmp_path / "split")[-1])
    resumed.train()
    for key, value in whole.policy.state_dict().items():
        assert torch.equal(value, resumed.policy.state_dict()[key]), key
    assert whole.league.snapshots == resumed.league.snapshots and whole.last_stats["selfplay_games"] > 0


def test_policy_map_gives_each_group_its_own_networks(tmp_path):
    from proximo.saved import load_policy, save_policy

    trainer = _trainer(LeaversParallel, num_envs=4, n_steps=10, batch_size=20, policy_map="first=p;second=q",
                       normalize_obs=True)
    policy, layout = trainer.policy, trainer.layout
    assert layout.groups == ["first", "second"] and layout.group_of == [0, 1] and layout.id_dim == 2
    assert trainer.learner_choice.startswith("torch")
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    trainer._learn(trainer._collect())
    after = policy.state_dict()
    assert not torch.equal(before["pi_net.0.weight"], after["pi_net.0.weight"])  # group 0 (p) learned
    assert not torch.equal(before["extra.0.pi_net.0.weight"], after["extra.0.pi_net.0.weight"])  # group 1 (q)
    # a row goes to its agent's group: q's networks move q's rows only
    x = torch.zeros(2, layout.width)
    x[0, layout.own_dim], x[1, layout.own_dim + 1] = 1.0, 1.0  # row 0 is p, row 1 is q
    with torch.no_grad():
        values = policy.value(x)
        policy.extra[0].value_head.bias += 1.0
        moved = policy.value(x)
    assert moved[0] == values[0] and torch.isclose(moved[1], values[1] + 1.0)
    save_policy(tmp_path / "policy", policy, trainer.config, LeaversParallel, {})
    loaded, meta = load_policy(tmp_path / "policy")
    assert meta["policy_groups"] == {"group_of_agent": [0, 1], "id_start": layout.own_dim}
    with torch.no_grad():
        assert torch.equal(loaded.value(policy.normalize(x)), policy.value(policy.normalize(x)))


def test_a_recurrent_policy_plays_whole_games_with_each_agents_own_state(tmp_path):
    # end-of-run evaluation and `proximo eval` play mpe2 itself: a recurrent actor carries one state per agent
    from proximo.multiagent.play import PolicyPlayer, play_episode
    trainer = _trainer("pettingzoo:mpe2.simple_spread_v3", tmp_path, num_envs=6, n_steps=25, batch_size=150,
                       total_steps=300, recurrent="lstm", critic="global", eval_episodes=2)
    summary = trainer.train()
    assert np.isfinite(summary["eval_return_mean"])
    policy, layout = trainer.policy, trainer.layout
    env = trainer.maker()
    player, rng = PolicyPlayer(policy, layout), np.random.default_rng(0)
    totals = play_episode(env, {a: player for a in env.possible_agents}, 5, rng)
    # the same episode replayed by hand: the three agents as one batch through actor_step from zero states
    observations, _ = env.reset(seed=5)
    agents, state = list(env.possible_agents), policy.initial_state(3)[:, :policy.actor_state_size]
    x = np.zeros((3, layout.width), dtype=np.float32)
    replay, first = dict.fromkeys(agents, 0.0), True
    while env.agents:
        for i, agent in enumerate(agents):
            layout.lane_vector(agent, observations[agent], None, x[i])
        with torch.inference_mode():
            actions, state = policy.actor_step(policy.prepare_encoded(torch.from_numpy(x)), state,
                                               torch.tensor([first] * 3), None, True)
        first = False
        observations, rewards, _, _, _ = env.step({a: int(actions[i]) for i, a in enumerate(agents)})
        for agent, reward in rewards.items():
            replay[agent] += float(reward)
    assert replay == totals and set(player.states) == set(agents)
    player.begin_episode()
    assert player.states == {}
