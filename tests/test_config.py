import pytest

from prnet.config import ConfigError, config_from_dict, config_to_dict, load_config


def test_defaults_are_the_paper_setting_with_the_validated_changes():
    cfg = load_config()
    assert cfg.model.backbone == "wide_resnet50_2"
    assert cfg.data.image_size == 256
    assert cfg.data.num_anomalies == 10
    # chosen on validation data instead of the paper's 10 % and top-k mean (docs/experiments.md, rounds 10 and 13)
    assert cfg.prototypes.ratio == 0.25
    assert cfg.eval.image_score == "map_residual_knn" and cfg.eval.knn_weight == 0.25


def test_yaml_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epochs: 7\n  lr: 0.01\ndata:\n  classes: [bottle]\n")
    cfg = load_config(str(f), ["train.epochs=3", "train.lr=1e-3", "data.classes=[a, b]", "data.image_size=[64, 96]",
                               "output_dir=null"])
    assert cfg.train.epochs == 3
    assert cfg.train.lr == pytest.approx(1e-3)
    assert cfg.data.classes == ["a", "b"]
    assert cfg.data.image_size == [64, 96]
    assert cfg.output_dir is None


@pytest.mark.parametrize("override, fragment", [
    ("train.epoch=3", "unknown config key 'train.epoch'"),
    ("trian.epochs=3", "unknown config key 'trian'"),
    ("train.epochs=three", "'train.epochs': expected an integer"),
    ("train.amp=maybe", "'train.amp': expected true or false"),
    ("data.image_size=100", "multiple of 32"),
    ("prototypes.residual=cube", "squared or abs"),
    ("synthesis.texture_weight=beta", "unknown config key 'synthesis.texture_weight'"),
    ("synthesis.texture_colour=gray", "'synthesis.texture_colour': expected auto, rgb or grey"),
    ("train.epochs", "expected key=value"),
    ("synthesis.beta_max=1.5", "'synthesis.beta_max': expected a value in [0, 1], got 1.5"),
    ("train.lr=0", "'train.lr': expected > 0, got 0"),
    ("loss.focal_alpha=-0.1", "'loss.focal_alpha': expected a value in [0, 1]"),
    ("eval.sigma=-1", "'eval.sigma': expected >= 0"),
    ("eval.topk=0", "'eval.topk': expected >= 1"),
])
def test_bad_keys_and_values_name_the_key(override, fragment):
    with pytest.raises(ConfigError, match=None) as info:
        load_config(None, [override])
    assert fragment in str(info.value)


def test_every_ranged_key_accepts_its_ends_and_refuses_beyond_them():
    """Each key of config.RANGES takes the ends its range allows and refuses a value past each end."""
    from prnet.config import RANGES
    for key, (low, high, low_in, high_in) in RANGES.items():
        step = 1 if isinstance(low, int) else 0.01
        for end, inside, sign in ((low, low_in, -1), (high, high_in, +1)):
            if end is None:
                continue
            if inside:
                load_config(None, [f"{key}={end}"])
            for bad in ([end] if not inside else []) + [end + sign * step]:
                with pytest.raises(ConfigError, match=f"'{key}'"):
                    load_config(None, [f"{key}={bad}"])


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "nope.yaml"))


def test_round_trip_through_plain_dict():
    cfg = load_config(None, ["train.epochs=5", "model.head_widths=[8, 16, 32]"])
    again = config_from_dict(config_to_dict(cfg))
    assert again == cfg


def test_default_yaml_lists_every_key_of_the_schema_with_its_default():
    """configs/default.yaml is the commented reference of every option: it holds every key, at the default."""
    import os

    import yaml

    from prnet.config import Config

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "default.yaml")
    with open(path) as fh:
        listed = yaml.safe_load(fh)

    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    assert sorted(flat(listed)) == sorted(flat(config_to_dict(Config())))
    assert load_config(path) == Config()


def test_category_names_with_leading_zeros_stay_names(tmp_path):
    """BTAD's categories are 01, 02, 03: YAML would read 01 as the integer 1."""
    assert load_config(None, ["data.classes=[01, 02]"]).data.classes == ["01", "02"]
    f = tmp_path / "c.yaml"
    f.write_text("data:\n  classes: [03]\ntrain:\n  lr: 0.001\n  epochs: 10\n")
    cfg = load_config(str(f))
    assert cfg.data.classes == ["03"] and cfg.train.lr == 0.001 and cfg.train.epochs == 10


def test_keys_added_later_read_as_their_earlier_behaviour(monkeypatch):
    """A config stored before a key existed reads as the code behaved then, not as today's default."""
    from prnet import config
    stored = config_to_dict(load_config())
    for section, key in config.ADDED_KEYS:
        del stored[section][key]
    assert config_from_dict(stored).synthesis.structure_fraction == 0.0
    assert config_from_dict(stored).eval.anomaly_map == "head"
    assert config_from_dict(stored).eval.second_read == "none" and load_config().eval.second_read == "auto"
    monkeypatch.setitem(config.ADDED_KEYS, ("synthesis", "scratch_fraction"), 0.0)  # earlier behaviour ≠ default
    del stored["synthesis"]["scratch_fraction"]
    assert config_from_dict(stored).synthesis.scratch_fraction == 0.0
    assert load_config().synthesis.scratch_fraction == 0.25
    # a config at the earlier values is the dict of one made before the keys existed; another value is kept
    earlier = config.without_added_keys_at_earlier_values(
        config_to_dict(load_config(None, ["synthesis.scratch_fraction=0", "eval.anomaly_map=head",
                                          "eval.second_read=none", "eval.second_weight=0.5"])))
    assert earlier == stored
    assert config.without_added_keys_at_earlier_values(config_to_dict(load_config()))["eval"]["anomaly_map"] == "head_knn"
    kept = config.without_added_keys_at_earlier_values(
        config_to_dict(load_config(None, ["synthesis.structure_fraction=0.25"])))
    assert kept["synthesis"]["structure_fraction"] == 0.25 and kept["synthesis"]["scratch_fraction"] == 0.25

