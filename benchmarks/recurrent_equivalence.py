"""Does proximo's recurrent PPO update compute what sb3-contrib's RecurrentPPO computes? (issue 29)

For each seed: sb3-contrib collects one rollout of proximo/CartPoleNoVel-v1 (8 envs x 32 steps, round 2's
network: LSTM 64, [64] ReLU heads, no orthogonal init); proximo's ActorCritic gets the same weights and that
same rollout (observations, actions, log-probs, values, advantages, returns, episode starts and the LSTM
states at the rollout's start); then each library runs its own update code (one minibatch of the whole
rollout, as rl-zoo's batch 256 makes it). Printed per seed:
- the states sb3-contrib stored at every step against the ones proximo's policy computes step by step;
- the first optimizer step's clipped gradient, proximo minus sb3-contrib, with sb3-contrib's one random cut
  of the rollout per epoch (RecurrentRolloutBuffer.get's split_index) placed at 0 (no cut) and as drawn:
  the cut starts a sequence from the stored state, so gradients stop flowing back through time there;
- the parameters after the whole update (20 epochs; cuts at 0, then as drawn) against how far it moved them.

    python benchmarks/recurrent_equivalence.py [--seeds 3] [--task pendulum-sde]

--task pendulum-sde does the same on proximo/PendulumNoVel-v1 with gSDE on both sides (use_sde, one exploration
matrix per env; rl-zoo's gamma 0.9 and lambda 0.95): Box actions, and the state-dependent Gaussian's log-std
matrix among the parameters compared.

    python benchmarks/recurrent_equivalence.py --collect [--seeds 3] [--rollouts 3]
    python benchmarks/recurrent_equivalence.py --windows --task pendulum-sde [--seeds 3]
    python benchmarks/recurrent_equivalence.py --lockstep [--seeds 1] [--updates 25]
    python benchmarks/recurrent_equivalence.py --evaluate [--seeds 3]

--collect compares the other half, the rollout collection, on the pendulum-zoo-agent setting of
benchmarks/recurrent_zoo.py (PendulumNoVel-v1, 4 envs, gSDE redrawn every 4 steps, observations normalized as
VecNormalize does, gamma 0.9, lambda 0.95): sb3-contrib collects --rollouts rollouts of 256 steps (an episode is
200, so each holds a truncation per env) with no update between them, recording the exploration matrices it
drew; proximo's collector, given the same weights, the same env seeds and those matrices, collects as many.
Printed per rollout: the largest difference in the normalized observations, actions, log-probs, values,
advantages and returns (sb3-contrib's returns carry the truncation bootstrap in the reward, proximo's in the
next value: the advantages must agree all the same).

--windows compares a whole update cut as rl-zoo's batch 64 cuts it: 4 envs x 256 steps in 64-step windows, 10
epochs of 16 minibatches, sb3-contrib's windows at multiples of 64 visited in the same random orders as proximo's.

--lockstep trains both for --updates updates of the pendulum-zoo-agent setting from the same initial weights,
proximo acting with sb3-contrib's exploration matrices and visiting its minibatch orders, so that only float
rounding differs; beside it sb3-contrib trains again from its own weights nudged by 1e-7. Printed per update: how
far proximo's parameters are from sb3-contrib's, and how far the nudged run's are: rounding's reach.

--evaluate checks the two ends of a run on that setting: the initial weights each library draws (per-tensor std,
against the spread between two proximo seeds) and the evaluation (recurrent_zoo's score(), deterministic actions,
frozen observation statistics) of one set of weights in each library.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

N, T, HIDDEN = 8, 32, 64
# sb3-contrib's module names for the parts of proximo's ActorCritic
PARTS = {"action_head.log_std": "log_std", "pi_core.rnn": "lstm_actor", "vf_core.rnn": "lstm_critic",
         "pi_net": "mlp_extractor.policy_net", "vf_net": "mlp_extractor.value_net", "action_head.linear": "action_net",
         "value_head": "value_net"}
# The rollouts compared: rl-zoo's CartPoleNoVel optimization settings, or PendulumNoVel's with gSDE.
TASKS = {"cartpole": dict(env="proximo/CartPoleNoVel-v1", gamma=0.98, gae_lambda=0.8, sde=False),
         "pendulum-sde": dict(env="proximo/PendulumNoVel-v1", gamma=0.9, gae_lambda=0.95, sde=True)}
BUFFER_FIELDS = ("observations", "actions", "log_probs", "values", "advantages", "returns", "episode_starts",
                 "hidden_states_pi", "cell_states_pi", "hidden_states_vf", "cell_states_vf")


def renamed(state: dict) -> dict:
    """An sb3-contrib policy's state dict under proximo's parameter names."""
    out = {}
    for ours, theirs in PARTS.items():
        out.update({ours + key[len(theirs):]: value for key, value in state.items()
                    if key.startswith(theirs + ".") or key == theirs})
    return out


def sb3_update(seed: int, epochs: int, cut_at_zero: bool, task: str = "cartpole", n_envs: int = N,
               n_steps: int = T, batch: int | None = None, orders: list | None = None) -> dict:
    """sb3-contrib's first rollout and update: weights before/after, the buffer, the first step's gradient.

    batch: the minibatch (default the whole rollout); orders: per epoch, the order [n_envs * n_steps / batch] in
    which to visit the minibatches cut at multiples of batch (the random split pinned at 0), as proximo cuts."""
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.env_util import make_vec_env

    h = TASKS[task]
    batch = batch or n_envs * n_steps
    model = RecurrentPPO("MlpLstmPolicy", make_vec_env(h["env"], n_envs=n_envs, seed=seed), n_steps=n_steps,
                         batch_size=batch, gamma=h["gamma"], gae_lambda=h["gae_lambda"], n_epochs=epochs,
                         ent_coef=0.0, learning_rate=1e-3, clip_range=0.2, seed=seed, verbose=0, device="cpu",
                         use_sde=h["sde"],
                         policy_kwargs=dict(ortho_init=False, activation_fn=torch.nn.ReLU, lstm_hidden_size=HIDDEN,
                                            enable_critic_lstm=True, net_arch=dict(pi=[64], vf=[64])))
    found: dict = {"grads": []}
    optimizer_step, train = model.policy.optimizer.step, model.train

    def step(*args, **kwargs):
        found["grads"].append({name: p.grad.clone() for name, p in model.policy.named_parameters()})
        return optimizer_step(*args, **kwargs)

    def patched_train():
        buffer = model.rollout_buffer
        found["before"] = copy.deepcopy(model.policy.state_dict())
        found["buffer"] = {name: np.array(getattr(buffer, name)) for name in BUFFER_FIELDS}
        if orders is not None:
            cut, epochs_left = type(buffer).get, iter(orders)

            def in_order(self, batch_size=None):
                with mock.patch("numpy.random.randint", return_value=0):
                    minibatches = list(cut(self, batch_size))
                for index in next(epochs_left):
                    yield minibatches[int(index)]
            with mock.patch.object(type(buffer), "get", in_order):
                train()
        elif cut_at_zero:
            with mock.patch("numpy.random.randint", return_value=0):
                train()
        else:
            train()
        found["after"] = copy.deepcopy(model.policy.state_dict())
    model.policy.optimizer.step, model.train = step, patched_train
    model.learn(n_envs * n_steps)
    return found


def sb3_settings(epochs: int, batch: int):
    """proximo's UpdateSettings for RecurrentPPO's defaults (clip 0.2, no value clip, vf 0.5, grad norm 0.5,
    advantages normalized per minibatch, no entropy bonus) with `epochs` passes of `batch`-sample minibatches."""
    from proximo.ppo import UpdateSettings

    return UpdateSettings(objective="clip", clip_range=0.2, clip_range_vf=None, kl_coef=1.0, ent_coef=0.0,
                          vf_coef=0.5, max_grad_norm=0.5, n_epochs=epochs, batch_size=batch, target_kl=None,
                          normalize_advantage=True)


def proximo_update(sb3: dict, seed: int, epochs: int, task: str = "cartpole", n_envs: int = N, n_steps: int = T,
                   batch: int | None = None, orders: list | None = None) -> dict:
    """proximo's update of sb3-contrib's rollout from its weights; the state check, first gradient, weights after.
    With batch and orders (see sb3_update) its minibatches are batch-step sequences visited in those orders."""
    from proximo.config import make_config
    from proximo.ppo import ppo_update
    from proximo.rollout import RolloutBuffer
    from proximo.train import Trainer

    h = TASKS[task]
    batch = batch or n_envs * n_steps
    length = n_steps if batch >= n_envs * n_steps else batch  # the sequence: the whole rollout, or one window
    config = make_config(None, num_envs=n_envs, n_steps=n_steps, batch_size=batch, bptt_len=0 if length == n_steps
                         else length, gamma=h["gamma"], gae_lambda=h["gae_lambda"],
                         n_epochs=epochs, learning_rate=1e-3, clip_range=0.2, recurrent="lstm", rnn_hidden=HIDDEN,
                         net_arch=[64], activation="relu", ortho_init=False, seed=seed, eval_episodes=1,
                         diagnostics=False, torch_threads=1, use_sde=h["sde"])
    trainer = Trainer(h["env"], config, None, {}, verbose=False, tensorboard=False)
    policy, data = trainer.policy, sb3["buffer"]
    with torch.no_grad():
        for name, value in renamed(sb3["before"]).items():
            policy.get_parameter(name).copy_(value)
    trainer.optimizer.set_lr(1e-3)

    def stored(t: int) -> torch.Tensor:
        """sb3-contrib's stored (h, c) of actor and critic at step t as proximo's flat state [N, state_size]."""
        part = lambda key: torch.from_numpy(data[key][t])
        return torch.cat([policy.pi_core.pack((part("hidden_states_pi"), part("cell_states_pi"))),
                          policy.vf_core.pack((part("hidden_states_vf"), part("cell_states_vf")))], 1)
    buffer = RolloutBuffer.allocate(n_steps, n_envs, policy, sequence_length=length)
    buffer.obs.copy_(torch.from_numpy(data["observations"]))
    actions = torch.from_numpy(data["actions"])
    buffer.actions.copy_(actions.float() if h["sde"] else actions[..., 0].long())
    for name in ("log_probs", "values", "advantages", "returns"):
        getattr(buffer, name).copy_(torch.from_numpy(data[name]))
    buffer.episode_starts.copy_(torch.from_numpy(data["episode_starts"] > 0))
    for chunk in range(n_steps // length):
        buffer.rnn_states[chunk] = stored(chunk * length)
    state_gap, state = 0.0, stored(0)
    with torch.no_grad():
        for t in range(n_steps):
            state_gap = max(state_gap, float((stored(t) - state).abs().max()))
            state = policy._core_latents(buffer.obs[t][None], state, buffer.episode_starts[t][None])[2]
    grads: list[dict] = []
    optimizer_step = trainer.optimizer.optimizer.step

    def step(*args, **kwargs):
        grads.append({name: p.grad.clone() for name, p in policy.named_parameters()})
        return optimizer_step(*args, **kwargs)
    trainer.optimizer.optimizer.step = step
    settings = sb3_settings(epochs, batch)
    epochs_left = iter(orders or [])
    ppo_update(trainer.learner, buffer, settings, shuffle=lambda n: torch.as_tensor(next(epochs_left)))
    return {"state_gap": state_gap, "grads": grads,
            "after": {name: p.detach().clone() for name, p in policy.named_parameters()}}


WINDOWS_T, WINDOW = 256, 64  # --windows: 4 envs x 256 steps cut into 64-step minibatches (rl-zoo's batch 64)
COLLECT_T = 256  # steps per compared rollout: one 200-step PendulumNoVel episode ends (truncated) in each env
COLLECT_FIELDS = ("observations", "actions", "log_probs", "values", "advantages", "returns")


ZOO_AGENT = dict(num_envs=4, batch_size=64, n_epochs=10, learning_rate=1e-3, clip_range=0.2)  # rl-zoo's PendulumNoVel


def sb3_zoo_agent(seed: int, n_steps: int):
    """sb3-contrib's RecurrentPPO on the pendulum-zoo-agent setting (recurrent_zoo.py): VecNormalize on the
    observations, gSDE redrawn every 4 steps, LSTM 64 with [64] ReLU heads; returns (model, its VecNormalize)."""
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    h = TASKS["pendulum-sde"]
    envs = VecNormalize(make_vec_env(h["env"], n_envs=ZOO_AGENT["num_envs"], seed=seed), norm_obs=True,
                        norm_reward=False, gamma=h["gamma"])
    model = RecurrentPPO("MlpLstmPolicy", envs, n_steps=n_steps, batch_size=ZOO_AGENT["batch_size"],
                         gamma=h["gamma"], gae_lambda=h["gae_lambda"], n_epochs=ZOO_AGENT["n_epochs"], ent_coef=0.0,
                         learning_rate=ZOO_AGENT["learning_rate"], clip_range=ZOO_AGENT["clip_range"], seed=seed,
                         verbose=0, device="cpu", use_sde=True, sde_sample_freq=4,
                         policy_kwargs=dict(ortho_init=False, activation_fn=torch.nn.ReLU, lstm_hidden_size=HIDDEN,
                                            enable_critic_lstm=True, net_arch=dict(pi=[64], vf=[64])))
    return model, envs


def proximo_zoo_agent(seed: int, n_steps: int) -> dict:
    """proximo's settings for the same setting (PPO / make_config keywords; 64-step sequences)."""
    h = TASKS["pendulum-sde"]
    return dict(ZOO_AGENT, n_steps=n_steps, gamma=h["gamma"], gae_lambda=h["gae_lambda"], recurrent="lstm",
                rnn_hidden=HIDDEN, bptt_len=64, net_arch=[64], activation="relu", ortho_init=False,
                normalize_obs=True, use_sde=True, sde_sample_freq=4, seed=seed, eval_episodes=1, diagnostics=False,
                torch_threads=1)


def sb3_collect(seed: int, rollouts: int) -> dict:
    """sb3-contrib's rollouts on the pendulum-zoo-agent setting with no update between them: its weights, the
    buffer of each rollout and the exploration matrices [N, F, d] it acted with at every step."""
    model, _ = sb3_zoo_agent(seed, COLLECT_T)
    found: dict = {"weights": copy.deepcopy(model.policy.state_dict()), "buffers": [], "matrices": []}
    forward = model.policy.forward

    def recorded_forward(*args, **kwargs):
        out = forward(*args, **kwargs)
        found["matrices"].append(model.policy.action_dist.exploration_matrices.detach().clone())
        return out

    def no_update():  # keep the buffer; the weights stay as they were
        found["buffers"].append({name: np.array(getattr(model.rollout_buffer, name)) for name in COLLECT_FIELDS})
    model.policy.forward, model.train = recorded_forward, no_update
    model.learn(rollouts * 4 * COLLECT_T)
    return found


def proximo_collect(sb3: dict, seed: int, rollouts: int) -> list[dict]:
    """proximo's collector on the same setting, weights and env seeds, acting with sb3-contrib's matrices."""
    from proximo.config import make_config
    from proximo.train import Trainer

    h = TASKS["pendulum-sde"]
    config = make_config(None, **proximo_zoo_agent(seed, COLLECT_T))
    trainer = Trainer(h["env"], config, None, {}, verbose=False, tensorboard=False)
    policy = trainer.policy
    with torch.no_grad():
        for name, value in renamed(sb3["weights"]).items():
            policy.get_parameter(name).copy_(value)
    matrices, step, calls = sb3["matrices"], policy.step, [0]

    def step_with_sb3_matrices(*args, **kwargs):
        policy.action_head.exploration = matrices[calls[0]]
        calls[0] += 1
        return step(*args, **kwargs)
    policy.step = step_with_sb3_matrices
    out = []
    for _ in range(rollouts):
        buffer = trainer.collector.collect()
        buffer.compute_advantages(h["gamma"], h["gae_lambda"])
        # copies: the collector writes the next rollout into the same buffer
        out.append({name: getattr(buffer, field).numpy().copy() for name, field in (
            ("observations", "obs"), ("actions", "actions"), ("log_probs", "log_probs"), ("values", "values"),
            ("advantages", "advantages"), ("returns", "returns"))})
    return out


def sb3_lockstep(seed: int, updates: int, perturb: float = 0.0) -> dict:
    """sb3-contrib training on the pendulum-zoo-agent setting (4 envs x 1024 steps, 64-step minibatches cut at
    multiples of 64 and visited in a recorded random order, 10 epochs) for `updates` updates: its initial
    weights, the exploration matrices of every collection step, each epoch's order and the weights after each
    update. perturb: add N(0, perturb^2) noise to every initial weight (float rounding's size: 1e-7)."""
    model, _ = sb3_zoo_agent(seed, 1024)
    if perturb:
        noise = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.policy.parameters():
                p.add_(torch.randn(p.shape, generator=noise) * perturb)
    found: dict = {"weights": copy.deepcopy(model.policy.state_dict()), "matrices": [], "orders": [], "after": [],
                   "returns": []}
    forward, train = model.policy.forward, model.train
    cut = type(model.rollout_buffer).get

    def recorded_forward(*args, **kwargs):
        out = forward(*args, **kwargs)
        found["matrices"].append(model.policy.action_dist.exploration_matrices.detach().clone())
        return out

    def in_recorded_order(self, batch_size=None):
        with mock.patch("numpy.random.randint", return_value=0):
            minibatches = list(cut(self, batch_size))
        order = np.random.permutation(len(minibatches))
        found["orders"].append(order)
        for index in order:
            yield minibatches[index]

    def recorded_train():
        found["returns"].append(float(np.mean(model.rollout_buffer.rewards)))
        with mock.patch.object(type(model.rollout_buffer), "get", in_recorded_order):
            train()
        found["after"].append(copy.deepcopy(model.policy.state_dict()))
    model.policy.forward, model.train = recorded_forward, recorded_train
    model.learn(updates * 4 * 1024)
    return found


def proximo_lockstep(sb3: dict, seed: int) -> list[tuple[float, float, float]]:
    """proximo's trainer on the same setting from sb3-contrib's initial weights, acting with its matrices and
    visiting its minibatch orders; per update (largest parameter gap to sb3-contrib, how far sb3-contrib's
    update moved them, proximo's mean reward in the rollout)."""
    from proximo.config import make_config
    from proximo.ppo import ppo_update
    from proximo.train import Trainer

    h = TASKS["pendulum-sde"]
    config = make_config(None, **proximo_zoo_agent(seed, 1024))
    trainer = Trainer(h["env"], config, None, {}, verbose=False, tensorboard=False)
    policy = trainer.policy
    with torch.no_grad():
        for name, value in renamed(sb3["weights"]).items():
            policy.get_parameter(name).copy_(value)
    matrices, orders, step = iter(sb3["matrices"]), iter(sb3["orders"]), policy.step

    def step_with_sb3_matrices(*args, **kwargs):
        policy.action_head.exploration = next(matrices)
        return step(*args, **kwargs)
    policy.step = step_with_sb3_matrices
    settings = sb3_settings(ZOO_AGENT["n_epochs"], ZOO_AGENT["batch_size"])
    rows, before = [], renamed(sb3["weights"])
    trainer.optimizer.set_lr(1e-3)
    for after in sb3["after"]:
        buffer = trainer.collector.collect()
        buffer.compute_advantages(h["gamma"], h["gae_lambda"])
        reward = float(buffer.rewards.mean())
        ppo_update(trainer.learner, buffer, settings, shuffle=lambda n: torch.as_tensor(next(orders)))
        theirs = renamed(after)
        ours = {name: p.detach() for name, p in policy.named_parameters()}
        rows.append((largest_gap(ours, theirs)[0], largest_gap(theirs, before)[0], reward))
        before = theirs
    return rows


def init_and_eval(seed: int) -> tuple[float, float, float, float]:
    """The pendulum-zoo-agent networks as each library draws them, and one evaluation: returns (largest relative
    gap between the two libraries' per-tensor weight std, over tensors of more than one entry; the same for
    proximo against itself with seed + 1, the scale of seed noise; proximo's and sb3-contrib's mean evaluation
    return over 5 episodes of recurrent_zoo's score() once sb3-contrib holds the weights and the observation
    statistics of a proximo agent trained for 3 updates)."""
    from benchmarks.recurrent_zoo import score
    from proximo import PPO

    h = TASKS["pendulum-sde"]
    model, envs = sb3_zoo_agent(seed, 1024)
    agent, other = (PPO(h["env"], total_steps=3 * 4096, **proximo_zoo_agent(s, 1024)) for s in (seed, seed + 1))

    def std_gap(a: dict, b: dict) -> float:
        return max(abs(float(a[k].std()) - float(b[k].std())) / float(b[k].std()) for k in b if b[k].numel() > 1
                   and float(b[k].std()) > 0)
    ours = {k: p.detach() for k, p in agent.policy.named_parameters()}
    theirs = renamed(model.policy.state_dict())
    gaps = (std_gap(ours, theirs), std_gap({k: p.detach() for k, p in other.policy.named_parameters()}, ours))
    agent.learn(3 * 4096)
    state = model.policy.state_dict()
    with torch.no_grad():
        for name, value in agent.policy.named_parameters():
            for mine, key in PARTS.items():
                if name == mine or name.startswith(mine + "."):
                    state[key + name[len(mine):]].copy_(value)
    rms = agent.policy.obs_rms
    envs.obs_rms.mean, envs.obs_rms.var = rms.mean.numpy().copy(), rms.var.numpy().copy()
    envs.obs_rms.count, envs.training = float(rms.count), False

    def theirs_act(obs, state, first):
        action, state = model.predict(envs.normalize_obs(obs)[None], state=state, episode_start=np.array([first]),
                                      deterministic=True)
        return action[0], state
    task = "pendulum-zoo-agent"
    mine = score(task, lambda obs, state, first: agent.predict(obs, state=state, episode_start=np.array([first])),
                 5, seed)
    return gaps + (mine["eval_return_mean"], score(task, theirs_act, 5, seed)["eval_return_mean"])


def largest_gap(ours: dict, theirs: dict) -> tuple[float, float]:
    """(largest |ours - theirs| over all entries, largest |theirs|)."""
    return (max(float((ours[k] - theirs[k]).abs().max()) for k in theirs),
            max(float(theirs[k].abs().max()) for k in theirs))


def main() -> None:
    """Print the three comparisons for each seed."""
    import proximo.envs.tasks  # noqa: F401  (registers proximo/CartPoleNoVel-v1)

    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--task", choices=tuple(TASKS), default="cartpole")
    parser.add_argument("--collect", action="store_true", help="compare the rollout collection (see the module doc)")
    parser.add_argument("--rollouts", type=int, default=3)
    parser.add_argument("--evaluate", action="store_true", help="compare initial weights and evaluation")
    parser.add_argument("--lockstep", action="store_true", help="train both in lockstep (see the module doc)")
    parser.add_argument("--updates", type=int, default=25)
    parser.add_argument("--windows", action="store_true", help="compare a many-minibatch update (see the module doc)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.evaluate:
        for seed in range(1, args.seeds + 1):
            libs, seeds, mine, theirs = init_and_eval(seed)
            print(f"seed {seed}: per-tensor weight std, proximo vs sb3-contrib: largest relative gap {libs:.1%} "
                  f"(proximo seed {seed} vs seed {seed + 1}: {seeds:.1%}); evaluation of the same weights: proximo "
                  f"{mine:.6f}, sb3-contrib {theirs:.6f}")
        return
    if args.lockstep:
        for seed in range(1, args.seeds + 1):
            sb3 = sb3_lockstep(seed, args.updates)
            nudged = sb3_lockstep(seed, args.updates, perturb=1e-7)
            for u, (ours, theirs, other) in enumerate(zip(proximo_lockstep(sb3, seed), sb3["after"],
                                                           nudged["after"])):
                gap, moved, reward = ours
                twin = largest_gap(renamed(other), renamed(theirs))[0]
                print(f"seed {seed} update {u + 1}: proximo vs sb3-contrib, parameters differ by at most {gap:.1e}; "
                      f"sb3-contrib vs itself from weights nudged by 1e-7, {twin:.1e} (the update moved them by "
                      f"{moved:.1e}); mean reward in the rollout: proximo {reward:.3f}, sb3-contrib "
                      f"{sb3['returns'][u]:.3f}, nudged {nudged['returns'][u]:.3f}")
        return
    if args.windows:
        for seed in range(1, args.seeds + 1):
            shape = dict(n_envs=4, n_steps=WINDOWS_T, batch=WINDOW)
            orders = [np.random.default_rng(seed * 100 + e).permutation(4 * WINDOWS_T // WINDOW) for e in range(10)]
            sb3 = sb3_update(seed, 10, True, args.task, orders=orders, **shape)
            ours = proximo_update(sb3, seed, 10, args.task, orders=orders, **shape)
            after, before = renamed(sb3["after"]), renamed(sb3["before"])
            gap, moved = largest_gap(ours["after"], after)[0], largest_gap(after, before)[0]
            first = largest_gap(ours["grads"][0], renamed(sb3["grads"][0]))
            last = largest_gap(ours["grads"][-1], renamed(sb3["grads"][-1]))
            print(f"seed {seed}: {len(sb3['grads'])} optimizer steps of {WINDOW}-step windows; first gradient "
                  f"differs by {first[0]:.1e} (largest {first[1]:.1e}), last by {last[0]:.1e} (largest {last[1]:.1e}); "
                  f"after 10 epochs the parameters differ by at most {gap:.1e}; the update moved them by {moved:.1e}")
        return
    if args.collect:
        for seed in range(1, args.seeds + 1):
            sb3 = sb3_collect(seed, args.rollouts)
            ours = proximo_collect(sb3, seed, args.rollouts)
            for r, (theirs, mine) in enumerate(zip(sb3["buffers"], ours)):
                gaps = {name: float(np.abs(mine[name].reshape(theirs[name].shape) - theirs[name]).max())
                        for name in COLLECT_FIELDS}
                scale = max(float(np.abs(theirs[name]).max()) for name in COLLECT_FIELDS)
                print(f"seed {seed} rollout {r}: largest difference " + ", ".join(
                    f"{name} {gap:.1e}" for name, gap in gaps.items()) + f" (largest entry {scale:.1e})")
        return
    for seed in range(1, args.seeds + 1):
        for cut_at_zero in (True, False):
            sb3 = sb3_update(seed, 1, cut_at_zero, args.task)
            ours = proximo_update(sb3, seed, 1, args.task)
            gap, scale = largest_gap(ours["grads"][0], renamed(sb3["grads"][0]))
            starts = int(sb3["buffer"]["episode_starts"][1:].sum())
            print(f"seed {seed}: stored vs recomputed LSTM states {ours['state_gap']:.1e}; {starts} episode starts "
                  f"inside the rollout; first gradient, sb3-contrib's cut {'at 0' if cut_at_zero else 'as drawn'}: "
                  f"largest difference {gap:.1e} (largest entry {scale:.1e})")
        for cut_at_zero in (True, False):
            sb3 = sb3_update(seed, 20, cut_at_zero, args.task)
            ours = proximo_update(sb3, seed, 20, args.task)
            after, before = renamed(sb3["after"]), renamed(sb3["before"])
            moved = largest_gap(after, before)[0]
            gap = largest_gap(ours["after"], after)[0]
            print(f"seed {seed}: after 20 epochs (sb3-contrib's cuts {'at 0' if cut_at_zero else 'as drawn'}) the "
                  f"parameters differ by at most {gap:.1e}; the update moved them by at most {moved:.1e}")


if __name__ == "__main__":
    main()
