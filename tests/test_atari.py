"""Pixels: the Atari pipeline's wrappers, uint8 frames into the CNN, true game scores, resume, MinAtar, bad input."""
import dataclasses
import json
import sys

import cv2
import gymnasium as gym
import numpy as np
import pytest
import torch

from proximo import PPO
from proximo.config import make_config
from proximo.envs.atari import GAME_KEY, EpisodicLife, PixelOptions
from proximo.envs.make import make_single_env
from proximo.nn.encoders import MinAtarCNN, NatureCNN
from proximo.ppo import UpdateSettings, ppo_update
from proximo.cli import main
from tests.test_cli import _one_line_error

pytest.importorskip("ale_py", reason="the Atari tests need ale-py: pip install 'proximo[atari]'")

TRAIN = PixelOptions(episodic_life=True, sign_rewards=True)


def _layer(env: gym.Env, kind: type) -> gym.Env:
    while not isinstance(env, kind):
        env = env.env
    return env


def _record_raw_rewards(env: gym.Env) -> list:
    """Append every reward that leaves AtariPreprocessing (the game's own, summed over a skip) to a list."""
    pre = _layer(env, gym.wrappers.AtariPreprocessing)
    raw, step = [], pre.step

    def recording_step(action):
        out = step(action)
        raw.append(float(out[1]))
        return out
    pre.step = recording_step
    return raw


def test_frames_are_stacked_grey_uint8_and_max_pooled_over_the_last_two_of_each_skip():
    # Pong: no lives, so nothing but FireReset's serve at the start steps the game besides the agent.
    options = PixelOptions(noop_max=0)
    env = make_single_env("ALE/Pong-v5", pixels=options)
    assert env.observation_space.shape == (4, 84, 84) and env.observation_space.dtype == np.uint8
    raw = gym.make("ALE/Pong-v5", frameskip=1, repeat_action_probability=0.0)
    obs, _ = env.reset(seed=5)
    raw.reset(seed=5)
    for serve in (1, 2):  # FireReset's FIRE and action 2, four frames each
        for _ in range(4):
            raw.step(serve)
    differs = 0
    rng = np.random.default_rng(0)
    for _ in range(40):
        action = int(rng.integers(6))
        obs, _, terminated, truncated, _ = env.step(action)
        screens = []
        for _ in range(4):
            raw.step(action)
            screens.append(raw.unwrapped.ale.getScreenGrayscale())
        pooled = cv2.resize(np.maximum(screens[2], screens[3]), (84, 84), interpolation=cv2.INTER_AREA)
        assert obs.dtype == np.uint8 and np.array_equal(obs[-1], pooled)
        differs += not np.array_equal(pooled, cv2.resize(screens[3], (84, 84), interpolation=cv2.INTER_AREA))
        assert not (terminated or truncated)
    assert differs > 0  # the pooling was seen to matter: the test would catch a pipeline without it
    small = make_single_env("ALE/Breakout-v5", pixels=PixelOptions(frame_stack=2, screen_size=64))
    assert small.observation_space.shape == (2, 64, 64)


def test_a_lost_life_ends_the_training_episode_but_the_logged_game_goes_on():
    env = make_single_env("ALE/Breakout-v5", pixels=TRAIN)
    raw = _record_raw_rewards(env)
    env.reset(seed=2)
    rng = np.random.default_rng(2)
    episodes_in_game, lives_seen, game = 0, [], None
    for _ in range(5000):
        _, reward, terminated, truncated, info = env.step(int(rng.integers(4)))
        assert reward in (-1.0, 0.0, 1.0)
        if terminated or truncated:
            episodes_in_game += 1
            lives_seen.append(env.unwrapped.ale.lives())
            if GAME_KEY in info:
                game = info[GAME_KEY]
                break
            assert env.unwrapped.ale.lives() > 0  # a lost life, not the end of the game
            env.reset()  # what the vector env's autoreset does: the same game goes on
            assert env.unwrapped.ale.lives() == lives_seen[-1]
    assert game is not None, "no game ended within 5000 steps"
    assert episodes_in_game == 5 and lives_seen == [4, 3, 2, 1, 0]  # Breakout's five lives
    assert game["r"] == sum(raw)  # the true score of the whole game
    assert _layer(env, EpisodicLife).game_over


def test_rewards_are_clipped_for_training_only_and_scores_stay_true():
    # Space Invaders pays 5 to 30 points an invader: clipped in training, true in evaluation and the log.
    train = make_single_env("ALE/SpaceInvaders-v5", pixels=TRAIN)
    evaluation = make_single_env("ALE/SpaceInvaders-v5", pixels=TRAIN.for_evaluation())
    for env, clipped in ((train, True), (evaluation, False)):
        raw = _record_raw_rewards(env)
        env.reset(seed=1)
        rng = np.random.default_rng(1)
        seen = []
        for _ in range(400):
            before = len(raw)
            _, reward, terminated, truncated, info = env.step(int(rng.integers(env.action_space.n)))
            seen.append((reward, raw[before:]))
            if terminated or truncated:
                env.reset()
        paid = [(r, inner) for r, inner in seen if sum(inner) > 0]
        assert paid, "no invader was hit in 400 random steps"
        for reward, inner in paid:
            assert reward == (1.0 if clipped else sum(inner))
        assert max(sum(inner) for _, inner in paid) >= 5


def test_collector_logs_true_whole_game_scores_and_stores_uint8_frames():
    # Space Invaders: 3 lives, 5 to 30 points an invader. Small frames (36x36, one per observation)
    # keep the CNN cheap; the pipeline is the same.
    agent = PPO("ALE/SpaceInvaders-v5", preset="paper-atari", n_steps=128, num_envs=1, batch_size=64,
                frame_stack=1, screen_size=36, seed=3)
    collector = agent._trainer.collector
    assert collector.game_scores
    terminated = 0
    for _ in range(20):
        buffer = collector.collect()
        assert buffer.obs.dtype == torch.uint8 and buffer.obs.shape == (128, 1, 1, 36, 36)
        assert set(buffer.rewards.unique().tolist()) <= {0.0, 1.0}  # trained on clipped rewards
        terminated += int(buffer.terminated.sum())
        if collector.episodes.finished >= 1:
            break
    games = list(collector.episodes.returns)
    assert games, "no game ended in 2560 steps"
    # Logged: the game's own score, as gymnasium's episode statistics below the training wrappers saw it.
    assert games == list(_layer(collector.envs.envs[0], gym.wrappers.RecordEpisodeStatistics).return_queue)
    assert all(g % 5 == 0 for g in games) and max(games) >= 5  # true points, not counts of clipped rewards
    assert terminated >= 3 * len(games)  # each lost life ended a training episode


def test_pong_frames_collect_and_update():
    agent = PPO("ALE/Pong-v5", preset="paper-atari", n_steps=16, num_envs=2, batch_size=16, eval_episodes=1)
    policy = agent.policy
    assert policy.image and policy.obs_shape == (4, 84, 84)  # 4 stacked 84x84 grey frames, channel-first
    assert isinstance(policy.torso, NatureCNN) and policy.shared_network
    buffer = agent._trainer.collector.collect()
    assert buffer.obs.dtype == torch.uint8 and buffer.obs.shape == (16, 2, 4, 84, 84)
    assert buffer.obs.float().std() > 0
    # The CNN divides by 255 inside its forward, so the uint8 frames are all that is stored.
    frames = buffer.obs[0]
    with torch.no_grad():
        assert torch.equal(policy.torso(frames), policy.torso.conv(frames.float() / 255.0))
    buffer.compute_advantages(0.99, 0.95)
    before = [p.detach().clone() for p in policy.parameters()]
    assert agent._trainer.learner.name == "torch"  # the CNN torso is autograd's
    stats = ppo_update(agent._trainer.learner, buffer,
                       UpdateSettings(n_epochs=1, batch_size=16, objective="clip", clip_range=0.1, clip_range_vf=None,
                                      kl_coef=0.0, ent_coef=0.01, vf_coef=1.0, max_grad_norm=0.5, target_kl=None,
                                      normalize_advantage=True))
    assert stats["minibatches"] == 2
    assert abs(stats["entropy"] - torch.log(torch.tensor(6.0)).item()) < 0.05  # near-uniform over Pong's 6 actions
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters()))


def test_paper_atari_preset_is_the_papers():
    config = make_config("paper-atari")
    assert (config.num_envs, config.n_steps, config.n_epochs, config.batch_size) == (8, 128, 3, 32 * 8)
    assert (config.learning_rate, config.lr_schedule, config.clip_range, config.clip_schedule) == \
        (2.5e-4, "linear", 0.1, "linear")  # both times alpha, annealed 1 -> 0
    assert (config.vf_coef, config.ent_coef, config.gamma, config.gae_lambda) == (1.0, 0.01, 0.99, 0.95)
    assert config.total_steps == 10_000_000  # agent steps: 40M frames at frame skip 4
    assert (config.net_arch, config.activation, config.shared_network) == ([512], "relu", True)
    assert (config.frame_stack, config.frame_skip, config.noop_max, config.screen_size) == (4, 4, 30, 84)
    assert (config.sticky_actions, config.episodic_life, config.sign_rewards) == (0.0, True, True)


def test_sticky_actions_flag_reaches_ale():
    env = make_single_env("ALE/Pong-v5", pixels=PixelOptions(sticky_actions=0.25))
    assert env.unwrapped.ale.getFloat("repeat_action_probability") == pytest.approx(0.25)
    assert make_single_env("ALE/Pong-v5").unwrapped.ale.getFloat("repeat_action_probability") == 0.0


def test_atari_resume_is_bitwise_exact_without_sticky_actions(tmp_path):
    from tests.test_resume import _assert_same_state, _one_go_vs_resumed

    # Constant schedules: the helper's first half anneals over its own horizon (the schedules' resume is
    # tested on CartPole). 36x36 frames keep the CNN cheap; frame stack, lives and game scores are all there.
    config = make_config("paper-atari", num_envs=2, n_steps=32, batch_size=32, n_epochs=1, eval_episodes=1, seed=4,
                         screen_size=36, lr_schedule="constant", clip_schedule="constant")
    whole, resumed = _one_go_vs_resumed("ALE/Breakout-v5", config, tmp_path, updates=1)
    _assert_same_state(whole, resumed)
    assert torch.equal(whole.collector.next_obs, resumed.collector.next_obs)
    assert list(whole.collector.episodes.returns) == list(resumed.collector.episodes.returns)


def test_minatar_runs_on_the_numpy_cnn_path_repeat_bitwise():
    # The NumPy conv rollout actor draws its noise from torch's RNG and the NumPy CNN learner steps the flat
    # buffer: two runs of one seed must end with identical weights (MinAtar's env state cannot be saved, so
    # a resume restarts its episodes; reproducibility is what this path can promise and does).
    pytest.importorskip("minatar", reason="MinAtar needs the minatar package: pip install 'proximo[atari]'")
    from proximo.train import Trainer

    config = make_config("minatar", num_envs=2, n_steps=64, batch_size=32, n_epochs=2, eval_episodes=1, seed=5,
                         total_steps=256)
    runs = []
    for _ in range(2):  # one after the other: a Trainer seeds torch's global RNG when it is built
        runs.append(Trainer("MinAtar/Breakout-v1", config, run_dir=None, verbose=False, tensorboard=False))
        runs[-1].train()
    assert all(run.learner_choice.startswith("numpy") for run in runs)
    first, second = (run.policy.state_dict() for run in runs)
    assert all(torch.equal(first[key], second[key]) for key in first)
    initial = Trainer("MinAtar/Breakout-v1", config, run_dir=None, verbose=False, tensorboard=False).policy.state_dict()
    assert not torch.equal(first["torso.conv.0.weight"], initial["torso.conv.0.weight"])  # it did train


def test_minatar_frames_and_torso():
    pytest.importorskip("minatar", reason="MinAtar needs the minatar package: pip install 'proximo[atari]'")
    env = make_single_env("MinAtar/Breakout-v1")
    obs, _ = env.reset(seed=1)
    assert obs.dtype == np.uint8 and obs.shape == (10, 10, 4) and set(np.unique(obs)) <= {0, 255}
    agent = PPO("MinAtar/Breakout-v1", preset="minatar", num_envs=2, n_steps=8, batch_size=16)
    assert isinstance(agent.policy.torso, MinAtarCNN) and agent.policy.obs_shape == (4, 10, 10)
    # The NumPy CNN path, chosen by auto: its learner, and rollouts through the NumPy conv actor.
    assert agent._trainer.learner.name == "numpy" and "small CPU CNN" in agent._trainer.learner_choice
    assert type(agent.policy.rollout_actor()).__name__ == "ConvRolloutActor"
    buffer = agent._trainer.collector.collect()
    assert buffer.obs.dtype == torch.uint8 and buffer.obs.shape == (8, 2, 4, 10, 10)
    forced = PPO("MinAtar/Breakout-v1", preset="minatar", num_envs=2, n_steps=8, batch_size=16, learner="torch")
    assert forced._trainer.learner.name == "torch" and forced.policy.rollout_actor() is None


def test_minatar_flat_cells_feed_a_population_of_mlps_and_env_kwargs_reach_minatar(tmp_path):
    pytest.importorskip("minatar", reason="MinAtar needs the minatar package: pip install 'proximo[atari]'")
    frames = make_single_env("MinAtar/Breakout-v1")
    flat = make_single_env("MinAtar/Breakout-v1", pixels=PixelOptions(minatar_obs="flat"))
    a, _ = frames.reset(seed=3)
    b, _ = flat.reset(seed=3)
    # the same cells, row-major as gymnax-blines flattens them, as 0/1 instead of 0/255
    assert b.dtype == np.bool_ and b.shape == (400,) and np.array_equal(b, a.reshape(-1) == 255)
    for _ in range(20):
        a, *_ = frames.step(1)
        b, *_ = flat.step(1)
        assert np.array_equal(b, a.reshape(-1) == 255)
    sticky = make_single_env("MinAtar/Breakout-v1", pixels=PixelOptions(minatar_obs="flat"), sticky_action_prob=0.0)
    assert sticky.unwrapped.game.sticky_action_prob == 0.0 and flat.unwrapped.game.sticky_action_prob == 0.1
    # the preset's MLPs batch as a population (one process, one batched step for the agents)
    run = tmp_path / "pop"
    code = main(["train", "MinAtar/Breakout-v1", "--preset", "minatar-mlp", "--seeds", "1-2", "--num-envs", "4",
                 "--n-steps", "16", "--batch-size", "32", "--total-steps", "128", "--eval-episodes", "1", "--quiet",
                 "--no-tensorboard", "--run-dir", str(run), "--env-kwargs", '{"sticky_action_prob": 0.0}'])
    assert code == 0
    summary = json.loads((run / "s1" / "summary.json").read_text())
    assert summary["learner"].startswith("population-numpy") and summary["global_step"] == 128
    assert json.loads((run / "population.json").read_text())["env_kwargs"] == {"sticky_action_prob": 0.0}
    agent = PPO("MinAtar/Breakout-v1", preset="minatar-mlp", num_envs=2, n_steps=8, batch_size=16)
    assert agent.policy.image is False and agent.policy.obs_shape == (400,)


def test_minatar_mlp_preset_is_gymnax_blines():
    # agents/<Game>-MinAtar/ppo.yaml of gymnax-blines (the same for all five games)
    config = make_config("minatar-mlp", "MinAtar/Breakout-v1")
    assert (config.num_envs, config.n_steps, config.n_epochs) == (64, 128, 4)
    assert config.num_envs * config.n_steps // config.batch_size == 8  # n_minibatch
    assert (config.learning_rate, config.lr_schedule, config.adam_eps) == (5e-4, "constant", 1e-5)
    assert (config.gamma, config.gae_lambda, config.clip_range, config.clip_range_vf) == (0.999, 0.95, 0.2, 0.2)
    assert (config.ent_coef, config.max_grad_norm, config.total_steps) == (0.01, 0.5, 10_000_000)
    assert config.vf_coef == 0.25  # critic_coeff 0.5 x its 0.5 * MSE
    assert (config.net_arch, config.activation, config.shared_network) == ([256, 256], "relu", False)
    assert config.minatar_obs == "flat"


def test_minatar_cnn_preset_is_the_same_ppo_with_minatars_network():
    mlp, cnn = make_config("minatar-mlp", "MinAtar/Breakout-v1"), make_config("minatar-cnn", "MinAtar/Breakout-v1")
    network = ("net_arch", "shared_network", "minatar_obs")
    differ = {f.name for f in dataclasses.fields(mlp) if getattr(mlp, f.name) != getattr(cnn, f.name)}
    assert differ == set(network)
    assert (cnn.net_arch, cnn.shared_network, cnn.minatar_obs) == ([128], True, "frames")
    agent = PPO("MinAtar/Breakout-v1", preset="minatar-cnn", num_envs=2, n_steps=8, batch_size=16)
    assert agent.policy.image is True  # MinAtar's conv torso on the uint8 frames


@pytest.mark.parametrize("value,fragment", [("[1]", "is not a JSON object"), ("{bad", "is not JSON")])
def test_bad_env_kwargs_is_one_line(capsys, value, fragment):
    assert fragment in _one_line_error(capsys, ["train", "CartPole-v1", "--env-kwargs", value])


@pytest.mark.slow
def test_minatar_breakout_learns():
    # Random play scores ~0.3 a game; seed 1 of this run reached ~3 by 100k steps (threshold with margin).
    pytest.importorskip("minatar", reason="MinAtar needs the minatar package: pip install 'proximo[atari]'")
    agent = PPO("MinAtar/Breakout-v1", preset="minatar", seed=1, total_steps=100_000, eval_episodes=5)
    agent.learn()
    assert agent.summary["train_return_last100_mean"] > 1.5, agent.summary


@pytest.mark.parametrize("argv,fragment", [
    (["train", "ALE/Pong-v5", "--frame-stack", "0"], "frame_stack must be at least 1, got 0"),
    (["train", "ALE/Pong-v5", "--sticky-actions", "1.5"], "sticky_actions must lie in [0, 1)"),
    (["train", "ALE/Pongg-v5"], "unknown env id 'ALE/Pongg-v5'; did you mean ALE/Pong-v5"),
])
def test_bad_pixel_input_is_one_line(capsys, argv, fragment):
    assert fragment in _one_line_error(capsys, argv)


def test_atari_id_without_ale_py_names_the_extra(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ale_py", None)  # import ale_py now raises ImportError
    err = _one_line_error(capsys, ["train", "ALE/Pong-v5", "--preset", "paper-atari"])
    assert "needs ale-py" in err and "pip install -e '.[atari]'" in err


def test_eval_video_of_an_atari_run_shows_the_real_game_in_colour(tmp_path, capsys):
    import imageio.v2 as imageio

    from proximo.cli import main

    run_dir = tmp_path / "run"
    assert main(["train", "ALE/Breakout-v5", "--preset", "paper-atari", "--num-envs", "2", "--n-steps", "16",
                 "--batch-size", "32", "--total-steps", "32", "--screen-size", "36", "--eval-episodes", "1",
                 "--quiet", "--no-tensorboard", "--run-dir", str(run_dir)]) == 0
    assert main(["eval", str(run_dir), "--episodes", "1", "--video", str(tmp_path / "vid")]) == 0
    out = capsys.readouterr().out
    reader = imageio.get_reader(tmp_path / "vid" / "episode-000.mp4")
    frame = reader.get_data(0)
    assert frame.shape == (210, 160, 3)  # the emulator's RGB screen, not the 36x36 grey input
    assert (frame[..., 0] != frame[..., 1]).any()  # in colour
    assert reader.get_meta_data()["fps"] == 15  # 60 Hz / frame skip 4: real time
    assert "video:" in out and "return" in out
