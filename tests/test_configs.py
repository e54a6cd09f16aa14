"""Every shipped config validates offline; real trios pin calibration by URL + sha256."""

from pathlib import Path

import pytest

from rainmerge.config import MergeConfig, load_config
from rainmerge.methods import METHOD_NAMES
from rainmerge.product.pipeline_config import load_pipeline_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_validates(path):
    cfg = load_pipeline_config(path)
    assert cfg.method in METHOD_NAMES
    # the merge library reads the same file and leaves the pipeline sections to the product layer
    merge_cfg = load_config(path)
    assert type(merge_cfg) is MergeConfig and merge_cfg == cfg.merge_config()
    if path.stem != "toy":
        for ref in (cfg.reasoning_calibration, cfg.instruction_calibration):
            assert ref.url.startswith("https://raw.githubusercontent.com/K1nght/RAIN-Merging/05003cc")
            assert len(ref.sha256) == 64
        assert "/" in cfg.reasoning.path and not Path(cfg.reasoning.path).exists()
        assert cfg.hub.enabled is False


def test_overrides_win_over_yaml():
    cfg = load_config(CONFIGS[0], {"strength": 0.3, "stage2.rho": 0.1})
    assert cfg.strength == 0.3 and cfg.stage2.rho == 0.1


def test_a_dotted_override_through_a_value_is_one_config_error():
    from rainmerge.config import load_config
    from rainmerge.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot set 'strength.x': 'strength' is not a section"):
        load_config(str(CONFIGS[0].parent / "toy.yaml"), {"strength.x": 1})
    cfg = load_config(str(CONFIGS[0].parent / "toy.yaml"), {"stage1.radius": 2})  # a leaf inside a section is set
    assert cfg.stage1.radius == 2
