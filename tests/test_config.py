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


def _entry_with_values(preset="mujoco"):
    """An env id of the preset's per-env table whose entry changes at least one field."""
    from proximo.config import PRESET_ENVS

    return next(env_id for env_id, entry in PRESET_ENVS[preset].items() if entry["values"])


def test_the_per_env_table_is_applied_for_its_env_ids_only():
    from proximo.config import PRESET_ENVS

    env_id = _entry_with_values()
    entry = PRESET_ENVS["mujoco"][env_id]
    config = make_config("mujoco", env_id)
    for name, value in entry["values"].items():
        assert getattr(config, name) == value
    plain = make_config("mujoco")  # no env id: the preset alone
    assert plain == make_config("mujoco", "Pendulum-v1") == make_config("mujoco", env_id.replace("-v5", "-v4"))
    assert any(getattr(plain, name) != value for name, value in entry["values"].items())
    assert make_config("cartpole", env_id) == make_config("cartpole")  # other presets have no table for it


def test_overrides_beat_the_per_env_table():
    from proximo.config import PRESET_ENVS

    env_id = _entry_with_values()
    name, value = next(iter(PRESET_ENVS["mujoco"][env_id]["values"].items()))
    other = {float: 0.123, int: 4, list: [32, 32], bool: not value, str: value}[type(value)]
    if isinstance(value, float) and name in ("gamma", "gae_lambda"):
        other = 0.5
    assert getattr(make_config("mujoco", env_id, **{name: other}), name) == other


def test_every_table_entry_names_known_fields_has_a_source_and_validates():
    from proximo.config import PRESET_ENVS, check_preset_envs

    check_preset_envs()  # the shipped table
    assert len(PRESET_ENVS["mujoco"]) == 11 and all(e.endswith("-v5") for e in PRESET_ENVS["mujoco"])
    good = {"values": {"learning_rate": 1e-4}, "source": "a test"}
    with pytest.raises(ConfigError, match="Ant-v5 sets unknown config field.*lerning_rate"):
        check_preset_envs({"mujoco": {"Ant-v5": {"values": {"lerning_rate": 1e-4}, "source": "x"}}})
    with pytest.raises(ConfigError, match="empty source"):
        check_preset_envs({"mujoco": {"Ant-v5": {**good, "source": " "}}})
    with pytest.raises(ConfigError, match="unknown preset 'mujocoo'"):
        check_preset_envs({"mujocoo": {"Ant-v5": good}})
    with pytest.raises(ConfigError, match="Ant-v5: gamma must lie in"):
        check_preset_envs({"mujoco": {"Ant-v5": {"values": {"gamma": 2.0}, "source": "x"}}})
    with pytest.raises(ConfigError, match="exactly 'values' and 'source'"):
        check_preset_envs({"mujoco": {"Ant-v5": {"values": {}}}})


def test_the_values_used_line():
    from proximo.config import PRESET_ENVS, describe_preset

    env_id = _entry_with_values()
    entry = PRESET_ENVS["mujoco"][env_id]
    line = describe_preset("mujoco", env_id)
    assert line.startswith(f"preset mujoco + {env_id} entry: ") and f"(source: {entry['source']})" in line
    for name, value in entry["values"].items():
        assert f"{name}={value}" in line
    name = next(iter(entry["values"]))
    flagged = describe_preset("mujoco", env_id, {name: entry["values"][name]})
    assert f"overridden by flags: {name}=" in flagged
    assert describe_preset("mujoco", "Pendulum-v1") == "preset mujoco: its own values (it has no entry for Pendulum-v1)"
    assert describe_preset("cartpole", "CartPole-v1") == "preset cartpole: its own values"
    assert describe_preset(None, env_id) is None
