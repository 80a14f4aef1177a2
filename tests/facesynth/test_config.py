"""facesynth/config.py: pipeline.yaml into frozen dataclasses, overrides, user files, errors."""
from __future__ import annotations

import dataclasses

import pytest
import yaml

from facesynth.config import DEFAULT_CONFIG, Config, ConfigError, config_from_dict, load_config, override


def _leaves(d: dict, prefix: str = ""):
    """(dotted key, value) of every leaf of a nested dict."""
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield prefix + k, v


def _get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _write(tmp_path, data, name="user.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return p


def _one_line_error(excinfo, *needles: str) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg, f"error message is not one line: {msg!r}"
    for n in needles:
        assert n in msg, f"{n!r} not named in {msg!r}"
    return msg


def test_pipeline_yaml_loads_every_value():
    cfg = load_config()
    assert isinstance(cfg, Config)
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    leaves = list(_leaves(raw))
    assert len(leaves) > 50
    for key, value in leaves:
        got = _get(cfg, key)
        if isinstance(value, list):
            assert isinstance(got, tuple), key
            assert [list(x) if isinstance(x, tuple) else x for x in got] == value, key
        else:
            assert got == value, key
            assert type(got) is type(value) or (type(got), type(value)) == (float, int), key
    # the plain dict round-trips, and the config is frozen
    assert config_from_dict(cfg.to_dict()) == cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.datagen.n = 3


def test_override_changes_the_value_and_checks_its_type():
    cfg = load_config()
    new = override(cfg, "datagen.n", cfg.datagen.n + 7)
    assert new.datagen.n == cfg.datagen.n + 7
    assert cfg.datagen.n != new.datagen.n  # the input is not modified
    assert new.train == cfg.train
    # an int given for a float key becomes a float
    lr = override(cfg, "train.lr", 1)
    assert lr.train.lr == 1.0 and type(lr.train.lr) is float
    deep = override(cfg, "sampling.pose.yaw_std_deg", 3.5)
    assert deep.sampling.pose.yaw_std_deg == 3.5
    assert deep.sampling.pose.pitch_std_deg == cfg.sampling.pose.pitch_std_deg
    # via load_config(overrides=...), None values are skipped
    via = load_config(overrides={"render.image_size": 64, "datagen.seed": None})
    assert via.render.image_size == 64 and via.datagen.seed == cfg.datagen.seed
    for key, bad in (("datagen.n", "ten"), ("datagen.n", 2.5), ("datagen.n", True),
                     ("train.lr", "fast"), ("datagen.detail", 1), ("render.backend", 3)):
        with pytest.raises(ConfigError) as e:
            override(cfg, key, bad)
        _one_line_error(e, f"'{key}'")


@pytest.mark.parametrize("key", ["nonsense", "datagen.nonsense", "sampling.expression.nonsense"])
def test_unknown_key_is_refused_naming_the_dotted_key(tmp_path, key):
    cfg = load_config()
    with pytest.raises(ConfigError) as e:
        override(cfg, key, 1)
    _one_line_error(e, key)
    # the same key in a user file
    data: dict = {}
    node = data
    *parents, leaf = key.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = 1
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, data))
    _one_line_error(e, key)


@pytest.mark.parametrize("data, key", [
    ({"datagen": {"n": "ten"}}, "datagen.n"),
    ({"train": {"lr": [1, 2]}}, "train.lr"),
    ({"datagen": {"color_input": "yes"}}, "datagen.color_input"),
    ({"render": "big"}, "render"),
    ({"render": {"background": "noise"}}, "render.background"),
    ({"sampling": {"expression": {"extreme_sets": [["jawOpen", 3]]}}}, "sampling.expression.extreme_sets[0][1]"),
])
def test_wrong_type_in_user_file_names_the_key(tmp_path, data, key):
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, data))
    _one_line_error(e, f"'{key}'")


def test_unreadable_files_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "missing.yaml")
    _one_line_error(e, "missing.yaml")
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, "datagen: [unclosed\n  n: 3\n"))
    _one_line_error(e, "user.yaml")
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, "- a list\n- not a mapping\n"))
    _one_line_error(e, "user.yaml")


def test_user_file_with_some_keys_merges_over_pipeline_yaml(tmp_path):
    base = load_config()
    user = {"datagen": {"n": base.datagen.n + 5}, "sampling": {"pose": {"roll_std_deg": 1.25}}}
    cfg = load_config(_write(tmp_path, user))
    assert cfg.datagen.n == base.datagen.n + 5
    assert cfg.sampling.pose.roll_std_deg == 1.25
    expected = base.to_dict()
    expected["datagen"]["n"] = base.datagen.n + 5
    expected["sampling"]["pose"]["roll_std_deg"] = 1.25
    assert cfg.to_dict() == expected  # every other key keeps pipeline.yaml's value
    # overrides apply after the user file
    top = load_config(_write(tmp_path, user), overrides={"datagen.n": 3})
    assert top.datagen.n == 3 and top.sampling.pose.roll_std_deg == 1.25
