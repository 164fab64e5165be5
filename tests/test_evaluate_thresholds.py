"""The evaluation's `--thresholds LABEL=VALUE,...` option: parsed into per-label thresholds,
bad input refused with a message naming what is wrong."""

import pytest

from model.train.evaluate_heads import parse_args
from model.train.evaluate_real import parse_thresholds


def test_parses_labels_and_values() -> None:
    assert parse_thresholds("KEY=0.5, PASSWORD=0.45,") == {"KEY": 0.5, "PASSWORD": 0.45}
    args = parse_args(["--real", "--thresholds", "USERNAME=0.7"])
    assert args.thresholds == {"USERNAME": 0.7}
    assert parse_args(["--real"]).thresholds is None


@pytest.mark.parametrize(("spec", "named"), [
    ("KEY", "'KEY' is not LABEL=VALUE"),
    ("TOKEN=0.5", "'TOKEN=0.5' is not LABEL=VALUE"),
    ("KEY=high", "'high' for KEY is not a number"),
    ("PASSWORD=1.5", "PASSWORD=1.5 is outside [0, 1]"),
])
def test_bad_input_is_named(spec: str, named: str) -> None:
    with pytest.raises(ValueError, match=named.replace("[", r"\[").replace("]", r"\]")):
        parse_thresholds(spec)


def test_bad_option_exits_with_message(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--thresholds", "KEY=2"])
    assert "KEY=2.0 is outside [0, 1]" in capsys.readouterr().err
