"""Config validation, presets and JSON round trip."""
import pytest

from proximo.config import PRESETS, PPOConfig, make_config
from proximo.errors import ConfigError


def test_presets_hold_the_published_values():
    paper = make_config("paper-mujoco")
    assert (paper.num_envs, paper.n_steps, paper.learning_rate, paper.n_epochs, paper.batch_size) == (1, 2048, 3e-4, 10, 64)
    assert (paper.gamma, paper.gae_lambda, paper.net_arch, paper.activation) == (0.99, 0.95, [64, 64], "tanh")
    atari = make_config("paper-atari")
    assert (atari.num_envs, atari.n_steps, atari.n_epochs, atari.batch_size, atari.clip_range) == (8, 128, 3, 256, 0.1)
    assert (atari.lr_schedule, atari.clip_schedule, atari.vf_coef, atari.ent_coef) == ("linear", "linear", 1.0, 0.01)
    cart = make_config("cartpole")
    assert (cart.num_envs, cart.n_steps, cart.batch_size, cart.gae_lambda, cart.gamma, cart.n_epochs) == (8, 32, 256, 0.8, 0.98, 20)
    assert (cart.learning_rate, cart.lr_schedule, cart.clip_range, cart.total_steps) == (1e-3, "linear", 0.2, 100_000)
    for name in PRESETS:
        make_config(name)  # every preset validates


@pytest.mark.parametrize("overrides,fragment", [
    (dict(learning_rate=-1e-3), "learning_rate"),
    (dict(gamma=1.01), "gamma"),
    (dict(gae_lambda=-0.1), "gae_lambda"),
    (dict(n_epochs=0), "n_epochs"),
    (dict(num_envs=0), "num_envs"),
    (dict(batch_size=100, num_envs=8, n_steps=32), "does not divide"),
    (dict(objective="trpo"), "objective"),
    (dict(clip_range=0.0), "clip_range"),
    (dict(learning_rate="fast"), "learning_rate must be of type float"),
    (dict(n_steps=3.5), "n_steps must be of type int"),
    (dict(normalize_obs="yes"), "normalize_obs"),
    (dict(net_arch=[]), "net_arch"),
    (dict(lr_schedule="step"), "lr_schedule"),
])
def test_bad_values_are_named(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment):
        make_config(**overrides)


def test_unknown_field_and_preset():
    with pytest.raises(ConfigError, match="lerning_rate"):
        PPOConfig.from_dict({"lerning_rate": 1.0})
    with pytest.raises(ConfigError, match="unknown preset"):
        make_config("halfcheetah-magic")


def test_json_round_trip_and_replace():
    config = make_config("cartpole", seed=7, clip_range_vf=0.3)
    again = PPOConfig.from_dict(__import__("json").loads(config.to_json()))
    assert again == config
    assert config.replace(seed=8).seed == 8 and config.seed == 7
    assert isinstance(make_config(learning_rate=1).learning_rate, float)


def test_divisibility_message_suggests_a_divisor():
    with pytest.raises(ConfigError, match="use a divisor such as 128"):
        make_config("cartpole", batch_size=100)
