"""Image observations: an Atari env through proximo's preprocessing, the Nature CNN and one update."""
import torch

from proximo import PPO
from proximo.ppo import UpdateSettings, ppo_update


def test_pong_frames_collect_and_update():
    agent = PPO("ALE/Pong-v5", preset="paper-atari", n_steps=16, num_envs=2, batch_size=16, eval_episodes=1)
    policy = agent.policy
    assert policy.image and policy.obs_shape == (4, 84, 84)  # 4 stacked 84x84 grey frames, channel-first
    buffer = agent._trainer.collector.collect()
    assert buffer.obs.dtype == torch.uint8 and buffer.obs.shape == (16, 2, 4, 84, 84)
    assert buffer.obs.float().std() > 0
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
