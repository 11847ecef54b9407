"""Every setting says what it changes (its role), and the unit key follows the roles: a setting that changes
what a unit learns or saves is in its key, one that changes only how this session runs is not."""
import dataclasses

import pytest
import torch

from fer_kaggle.core.config import PRESETS, RESOLVED, ROLES, RUN, SESSION, STUDENT, UNIT, Config, setting
from fer_kaggle.run import pipeline
from fer_kaggle.training.train import autocast_dtype

CPU = torch.device("cpu")
DATA = ("train-fp", "test-fp")
TEACHERS = ["round0/fer_vgg_tiny-1a2b3c4d"]


def _other(field, value):
    """Another valid value of a field: the next choice, the flipped flag, a different number or list."""
    if field.metadata["choices"]:
        return next(choice for choice in field.metadata["choices"] if choice != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, tuple):
        return (*value, "fer_resnet_tiny")
    return value + "-other"


def _key(cfg, round_=0):
    return pipeline.unit_key(cfg, round_, "fer_vgg_tiny", CPU, DATA, TEACHERS if round_ else None)[0]


def test_every_setting_names_what_it_changes():
    unnamed = [f.name for f in dataclasses.fields(Config) if f.metadata.get("role") not in ROLES]
    assert not unnamed, "give each Config field a role: setting(..., role=UNIT|RESOLVED|STUDENT|RUN|SESSION)"
    with pytest.raises(ValueError, match="role 'weights'"):
        setting(1, "a new setting", role="weights")


@pytest.mark.parametrize("field", dataclasses.fields(Config), ids=lambda f: f.name)
def test_the_unit_key_follows_the_settings_role(field):
    base = PRESETS["demo"]
    value = getattr(base, field.name)
    if field.name == "amp":  # a value that changes the arithmetic here: "auto" is bf16 on a bf16 CPU, else off
        changed = base.replace(amp="off" if autocast_dtype("auto", CPU) is not None else "bf16")
    elif field.name == "augment_on":
        changed = base.replace(augment_on="device")  # "auto" is the host on a CPU
    else:
        changed = base.replace(**{field.name: _other(field, value)})
    role = field.metadata["role"]
    if role in (UNIT, RESOLVED):
        assert _key(changed) != _key(base) and _key(changed, 1) != _key(base, 1)
    elif role == STUDENT:
        assert _key(changed) == _key(base), "round 0 ignores the pseudo-labelling settings"
        assert _key(changed, 1) != _key(base, 1)
    else:
        assert role in (RUN, SESSION)
        assert _key(changed) == _key(base) and _key(changed, 1) == _key(base, 1)


def test_the_key_names_the_data():
    base = PRESETS["demo"]
    key = pipeline.unit_key(base, 0, "fer_vgg_tiny", CPU, DATA)[0]
    assert pipeline.unit_key(base, 0, "fer_vgg_tiny", CPU, ("other-train", "test-fp"))[0] != key
    assert pipeline.unit_key(base, 0, "fer_vgg_tiny", CPU, ("train-fp", "other-test"))[0] != key
    assert pipeline.unit_key(base, 1, "fer_vgg_tiny", CPU, DATA, ["round0/a-1"])[0] != \
        pipeline.unit_key(base, 1, "fer_vgg_tiny", CPU, DATA, ["round0/a-2"])[0]
