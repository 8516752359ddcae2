"""proximo's LSTM actor-critic against sb3-contrib's RecurrentPPO policy, the reference of issue 29's
comparison: with the same weights and the same rollout (episodes starting inside the sequences, a
carried state at the rollout's start) both give the same log-probs and values, step by step while
acting and sequence by sequence in the update. Also the PendulumNoVel task the comparison runs on."""
from unittest import mock

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

from proximo.nn.policy import ActorCritic

HIDDEN, N, T = 16, 4, 12


def _twins():
    """An sb3-contrib MlpLstmPolicy (critic LSTM on, tanh [8, 8]) and a proximo ActorCritic with its weights."""
    policies = pytest.importorskip("sb3_contrib.common.recurrent.policies")
    obs_space = spaces.Box(-np.inf, np.inf, (2,), np.float32)
    reference = policies.RecurrentActorCriticPolicy(
        obs_space, spaces.Discrete(2), lambda _: 1e-3, net_arch=dict(pi=[8, 8], vf=[8, 8]), lstm_hidden_size=HIDDEN,
        enable_critic_lstm=True)
    ours = ActorCritic(obs_space, spaces.Discrete(2), net_arch=[8, 8], activation="tanh", recurrent="lstm",
                       rnn_hidden=HIDDEN)
    pairs = [(ours.pi_core.rnn, reference.lstm_actor), (ours.vf_core.rnn, reference.lstm_critic),
             (ours.pi_net, reference.mlp_extractor.policy_net), (ours.vf_net, reference.mlp_extractor.value_net),
             (ours.action_head.linear, reference.action_net), (ours.value_head, reference.value_net)]
    for mine, theirs in pairs:
        mine.load_state_dict(theirs.state_dict())
    return ours, reference


def test_lstm_policy_acts_and_replays_as_sb3_contrib_does():
    buffers = pytest.importorskip("sb3_contrib.common.recurrent.buffers")
    from sb3_contrib.common.recurrent.type_aliases import RNNStates

    torch.manual_seed(3)
    ours, reference = _twins()
    obs = torch.randn(T, N, 2)
    actions = torch.randint(0, 2, (T, N))
    starts = torch.zeros(T, N, dtype=torch.bool)
    starts[4, 0] = starts[9, 0] = starts[1, 2] = starts[0, 3] = True  # mid-sequence starts, and one at t = 0
    carried = [torch.randn(1, N, HIDDEN) for _ in range(4)]  # the state a previous rollout left
    theirs = RNNStates((carried[0], carried[1]), (carried[2], carried[3]))
    state = torch.cat([ours.pi_core.pack((carried[0], carried[1])), ours.vf_core.pack((carried[2], carried[3]))], 1)
    rollout_state = state.clone()
    buffer = buffers.RecurrentRolloutBuffer(T, reference.observation_space, reference.action_space, (T, 1, N, HIDDEN),
                                            n_envs=N)
    our_log_probs = []
    with torch.no_grad():
        for t in range(T):
            begin = starts[t].float()
            dist, _ = reference.get_distribution(obs[t], theirs.pi, begin)
            log_prob, value = dist.log_prob(actions[t]), reference.predict_values(obs[t], theirs.vf, begin).flatten()
            latent_pi, latent_vf, state = ours._core_latents(obs[t][None], state, starts[t][None])
            mine = ours.action_head(latent_pi[0]).log_prob(actions[t])
            assert torch.allclose(mine, log_prob, atol=1e-5)
            assert torch.allclose(ours._value_of(latent_vf[0]), value, atol=1e-5)
            our_log_probs.append(mine)
            buffer.add(obs[t].numpy(), actions[t].numpy()[:, None], np.zeros(N), starts[t].numpy(), value, log_prob,
                       lstm_states=theirs)
            theirs = RNNStates(reference._process_sequence(obs[t], theirs.pi, begin, reference.lstm_actor)[1],
                               reference._process_sequence(obs[t], theirs.vf, begin, reference.lstm_critic)[1])
        buffer.compute_returns_and_advantage(torch.zeros(N), np.zeros(N))
        # sb3-contrib's one minibatch of the whole rollout (its random roll fixed at 0): per env, sequences cut
        # at every episode start, each from the state stored at its first step, padded.
        with mock.patch("numpy.random.randint", return_value=0):
            sample = next(buffer.get(N * T))
        values, log_probs, _ = reference.evaluate_actions(sample.observations, sample.actions.long().flatten(),
                                                          sample.lstm_states, sample.episode_starts)
        kept = sample.mask > 0
        # proximo's update: each env's T steps are one sequence from the state the rollout began with
        x = obs.transpose(0, 1).reshape(N * T, 2)
        mine_lp, _, mine_v = ours.evaluate(x, actions.transpose(0, 1).reshape(-1), None, rollout_state,
                                           starts.transpose(0, 1).reshape(-1))
    # both lay the samples out env by env, in time order; padding removed, they line up one to one
    assert torch.equal(sample.observations[kept], x)
    assert torch.allclose(mine_lp, log_probs[kept], atol=1e-5)
    assert torch.allclose(mine_v, values.flatten()[kept], atol=1e-5)
    assert torch.allclose(mine_lp, torch.stack(our_log_probs).t().reshape(-1), atol=1e-6)


def test_pendulum_without_velocity_shows_the_angle_only():
    import proximo.envs.tasks  # noqa: F401  (registers the ids)

    env = gym.make("proximo/PendulumNoVel-v1")
    assert env.observation_space.shape == (2,)
    obs, _ = env.reset(seed=0)
    for _ in range(5):
        theta, theta_dot = env.unwrapped.state
        assert np.allclose(obs, [np.cos(theta), np.sin(theta)], atol=1e-6)
        obs, _, terminated, truncated, _ = env.step(np.array([1.5], dtype=np.float32))
    assert theta_dot != 0.0  # the hidden velocity is real: the pendulum moves
    steps = 5
    while not (terminated or truncated):
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        steps += 1
    assert truncated and not terminated and steps == 200


@pytest.mark.parametrize("task", ["cartpole", "pendulum-sde"])
def test_a_whole_update_of_the_same_rollout_matches_recurrent_ppo(task):
    # benchmarks/recurrent_equivalence.py: sb3-contrib collects a rollout and updates on it; proximo updates the
    # same weights on the same rollout. With sb3-contrib's random cut of the rollout held at 0 the first step's
    # gradient and the weights after the update agree to float rounding; the cut as drawn changes them.
    # pendulum-sde: Box actions with gSDE on both sides, its log-std matrix among the compared parameters.
    pytest.importorskip("sb3_contrib")
    import proximo.envs.tasks  # noqa: F401
    from benchmarks.recurrent_equivalence import (
        largest_gap,
        proximo_update,
        renamed,
        sb3_update,
    )

    torch.set_num_threads(1)
    reference = sb3_update(seed=2, epochs=2, cut_at_zero=True, task=task)
    ours = proximo_update(reference, seed=2, epochs=2, task=task)
    assert ours["state_gap"] == 0.0
    if task == "cartpole":  # Pendulum's 200-step episodes outlast the 32-step rollout
        assert reference["buffer"]["episode_starts"][1:].sum() > 0  # episodes start inside the sequences
    else:
        assert renamed(reference["before"])["action_head.log_std"].shape == (64, 1)
    for mine, theirs in zip(ours["grads"], reference["grads"], strict=True):
        gap, scale = largest_gap(mine, renamed(theirs))
        assert scale > 0.01 and gap < 1e-6  # the cut as drawn leaves 3e-5 to 2e-4 here
    gap, _ = largest_gap(ours["after"], renamed(reference["after"]))
    moved, _ = largest_gap(renamed(reference["after"]), renamed(reference["before"]))
    assert moved > 1e-3 and gap < 1e-6


def test_gsde_rollout_collection_matches_recurrent_ppo():
    # benchmarks/recurrent_equivalence.py --collect: rl-zoo's PendulumNoVel agent setting (4 envs, gSDE redrawn
    # every 4 steps, observations normalized as VecNormalize does, gamma 0.9). With sb3-contrib's weights, env
    # seeds and exploration matrices, proximo's collector gathers the same 256-step rollout; each env's 200-step
    # episode is truncated inside it, so the bootstrap of a truncation (sb3-contrib: in the reward; proximo: in
    # the next value) is compared through the advantages. Float rounding grows along an episode (the pendulum
    # amplifies it) to <= 8e-5 in the observations and 1.1e-3 in the advantages (entries up to ~70, seed 1);
    # dropping the truncation bootstrap moves the advantages by 1.2e-2 (the untrained values are small), a
    # wrong matrix or a stale normalizer moves actions and observations by far more.
    pytest.importorskip("sb3_contrib")
    import proximo.envs.tasks  # noqa: F401
    from benchmarks.recurrent_equivalence import (
        COLLECT_FIELDS,
        COLLECT_T,
        proximo_collect,
        sb3_collect,
    )

    torch.set_num_threads(1)
    assert COLLECT_T > 200
    reference = sb3_collect(seed=1, rollouts=2)
    ours = proximo_collect(reference, seed=1, rollouts=2)
    limits = {"observations": 1e-3, "actions": 1e-3, "log_probs": 1e-3, "values": 1e-5, "advantages": 5e-3,
              "returns": 5e-3}
    for theirs, mine in zip(reference["buffers"], ours, strict=True):
        for name in COLLECT_FIELDS:
            assert np.abs(theirs[name]).max() > 0.01  # untrained values are ~0.03, the rest ~1 and up
            assert np.abs(mine[name].reshape(theirs[name].shape) - theirs[name]).max() < limits[name], name


def test_a_windowed_gsde_update_matches_recurrent_ppo():
    # benchmarks/recurrent_equivalence.py --windows: the update cut into 64-step windows (rl-zoo's batch 64 on
    # PendulumNoVel, an episode start inside one window per env), sb3-contrib visiting its windows at multiples
    # of 64 in the same orders as proximo: every optimizer step's gradient and the weights after agree to float
    # rounding (measured: <= 1e-7 over 10 epochs).
    pytest.importorskip("sb3_contrib")
    import proximo.envs.tasks  # noqa: F401
    from benchmarks.recurrent_equivalence import (
        WINDOW,
        WINDOWS_T,
        largest_gap,
        proximo_update,
        renamed,
        sb3_update,
    )

    torch.set_num_threads(1)
    shape = dict(n_envs=4, n_steps=WINDOWS_T, batch=WINDOW)
    orders = [np.random.default_rng(7 + epoch).permutation(4 * WINDOWS_T // WINDOW) for epoch in range(2)]
    reference = sb3_update(2, 2, True, "pendulum-sde", orders=orders, **shape)
    ours = proximo_update(reference, 2, 2, "pendulum-sde", orders=orders, **shape)
    assert len(ours["grads"]) == len(reference["grads"]) == 2 * 4 * WINDOWS_T // WINDOW
    for mine, theirs in zip(ours["grads"], reference["grads"], strict=True):
        assert largest_gap(mine, renamed(theirs))[0] < 1e-6
    gap, _ = largest_gap(ours["after"], renamed(reference["after"]))
    moved, _ = largest_gap(renamed(reference["after"]), renamed(reference["before"]))
    assert moved > 1e-2 and gap < 1e-5


def test_rnn_init_torch_default_draws_the_lstm_as_recurrent_ppo_does():
    # sb3-contrib builds its LSTMs after ActorCriticPolicy's orthogonal init, so under ortho_init they keep
    # PyTorch's uniform(+-1/sqrt(hidden)) weights and biases; rnn_init="torch_default" does the same, while
    # "orthogonal" gives orthonormal columns and zero biases. A two-sample Kolmogorov-Smirnov test compares the
    # entries of each LSTM tensor (256 to 16,384 draws) with the reference's.
    stats = pytest.importorskip("scipy.stats")
    policies = pytest.importorskip("sb3_contrib.common.recurrent.policies")
    hidden = 64
    obs_space = spaces.Box(-np.inf, np.inf, (2,), np.float32)
    torch.manual_seed(0)
    reference = policies.RecurrentActorCriticPolicy(obs_space, spaces.Discrete(2), lambda _: 1e-3,
                                                    lstm_hidden_size=hidden, ortho_init=True)
    made = {init: ActorCritic(obs_space, spaces.Discrete(2), recurrent="lstm", rnn_hidden=hidden, ortho_init=True,
                              rnn_init=init) for init in ("torch_default", "orthogonal")}
    bound = 1 / np.sqrt(hidden)
    for theirs_lstm, name in ((reference.lstm_actor, "pi_core"), (reference.lstm_critic, "vf_core")):
        theirs = dict(theirs_lstm.named_parameters())
        for key, ref in theirs.items():
            ref = ref.detach().flatten().numpy()
            assert np.abs(ref).max() <= bound and ref.std() > 0.5 * bound / np.sqrt(3)  # not orthogonal, not zero
            default = getattr(made["torch_default"], name).rnn.get_parameter(key).detach().flatten().numpy()
            assert np.abs(default).max() <= bound
            assert stats.ks_2samp(default, ref).pvalue > 1e-3
            ortho = getattr(made["orthogonal"], name).rnn.get_parameter(key).detach()
            if key.startswith("bias"):
                assert not ortho.any()
            else:  # tall [4 hidden, inputs] matrices with orthonormal columns
                assert torch.allclose(ortho.t() @ ortho, torch.eye(ortho.shape[1]), atol=1e-5)
                assert float(ortho.abs().max()) > bound  # its near-Gaussian entries pass the uniform's bound


def test_rnn_init_is_a_checked_config_choice():
    from proximo.config import make_config
    from proximo.errors import ConfigError

    with pytest.raises(ConfigError, match="rnn_init"):
        make_config(None, recurrent="lstm", rnn_init="xavier", bptt_len=64)
