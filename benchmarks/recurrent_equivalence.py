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


def sb3_update(seed: int, epochs: int, cut_at_zero: bool, task: str = "cartpole") -> dict:
    """sb3-contrib's first rollout and update: weights before/after, the buffer, the first step's gradient."""
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.env_util import make_vec_env

    h = TASKS[task]
    model = RecurrentPPO("MlpLstmPolicy", make_vec_env(h["env"], n_envs=N, seed=seed), n_steps=T,
                         batch_size=N * T, gamma=h["gamma"], gae_lambda=h["gae_lambda"], n_epochs=epochs,
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
        if cut_at_zero:
            with mock.patch("numpy.random.randint", return_value=0):
                train()
        else:
            train()
        found["after"] = copy.deepcopy(model.policy.state_dict())
    model.policy.optimizer.step, model.train = step, patched_train
    model.learn(N * T)
    return found


def proximo_update(sb3: dict, seed: int, epochs: int, task: str = "cartpole") -> dict:
    """proximo's update of sb3-contrib's rollout from its weights; the state check, first gradient, weights after."""
    from proximo.config import make_config
    from proximo.ppo import UpdateSettings, ppo_update
    from proximo.rollout import RolloutBuffer
    from proximo.train import Trainer

    h = TASKS[task]
    config = make_config(None, num_envs=N, n_steps=T, batch_size=N * T, gamma=h["gamma"], gae_lambda=h["gae_lambda"],
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
    buffer = RolloutBuffer.allocate(T, N, policy, sequence_length=T)
    buffer.obs.copy_(torch.from_numpy(data["observations"]))
    actions = torch.from_numpy(data["actions"])
    buffer.actions.copy_(actions.float() if h["sde"] else actions[..., 0].long())
    for name in ("log_probs", "values", "advantages", "returns"):
        getattr(buffer, name).copy_(torch.from_numpy(data[name]))
    buffer.episode_starts.copy_(torch.from_numpy(data["episode_starts"] > 0))
    buffer.rnn_states[0] = stored(0)
    state_gap, state = 0.0, stored(0)
    with torch.no_grad():
        for t in range(T):
            state_gap = max(state_gap, float((stored(t) - state).abs().max()))
            state = policy._core_latents(buffer.obs[t][None], state, buffer.episode_starts[t][None])[2]
    grads: list[dict] = []
    optimizer_step = trainer.optimizer.optimizer.step

    def step(*args, **kwargs):
        grads.append({name: p.grad.clone() for name, p in policy.named_parameters()})
        return optimizer_step(*args, **kwargs)
    trainer.optimizer.optimizer.step = step
    settings = UpdateSettings(objective="clip", clip_range=0.2, clip_range_vf=None, kl_coef=1.0, ent_coef=0.0,
                              vf_coef=0.5, max_grad_norm=0.5, n_epochs=epochs, batch_size=N * T, target_kl=None,
                              normalize_advantage=True)
    ppo_update(trainer.learner, buffer, settings)
    return {"state_gap": state_gap, "grads": grads,
            "after": {name: p.detach().clone() for name, p in policy.named_parameters()}}


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
    args = parser.parse_args()
    torch.set_num_threads(1)
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
