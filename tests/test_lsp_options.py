"""Options: camelCase JSON in every shape clients send, key-by-key validation with messages,
and merging for didChangeConfiguration."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from lsp_server.options import Options, as_json, merge, parse_options


def test_empty_and_null_options_give_defaults_without_messages():
    assert parse_options({}) == (Options(), [])
    assert parse_options(None) == (Options(), [])


def test_camel_case_keys_set_each_field():
    raw = {
        "model": "bigcode/tiny_starcoder_py",
        "device": "cuda:1",
        "dtype": "bfloat16",
        "maxNewTokens": 16,
        "temperature": 0.2,
        "topP": 0.9,
        "contextTokens": 1024,
        "fimLayout": "psm",
        "stop": ["\n\n", "def "],
        "debounceMs": 0,
        "timeBudgetMs": 500,
        "cacheBudgetMb": 256,
    }
    options, messages = parse_options(raw)
    assert messages == []
    assert options == Options(
        model="bigcode/tiny_starcoder_py",
        device="cuda:1",
        dtype="bfloat16",
        max_new_tokens=16,
        temperature=0.2,
        top_p=0.9,
        context_tokens=1024,
        fim_layout="psm",
        stop=["\n\n", "def "],
        debounce_ms=0,
        time_budget_ms=500,
        cache_budget_mb=256,
    )


def test_as_json_round_trips_through_parse_options():
    options = Options(max_new_tokens=8, top_p=0.5, stop=["x"], context_tokens=64)
    json = as_json(options)
    assert json["maxNewTokens"] == 8 and json["contextTokens"] == 64
    assert parse_options(json) == (options, [])


def test_vscode_section_shape_is_unwrapped_and_other_sections_ignored():
    raw = {"gptbigcode": {"maxNewTokens": 12}, "editor": {"tabSize": 4}}
    assert parse_options(raw) == (Options(max_new_tokens=12), [])


def test_unknown_key_is_reported_with_a_suggestion_and_ignored():
    options, messages = parse_options({"maxNewToken": 5, "topP": 0.5})
    assert options == Options(top_p=0.5)
    assert messages == [
        "gptbigcode.maxNewToken: unknown option, ignored (did you mean 'maxNewTokens'?)"
    ]


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        ("maxNewTokens", "64", "expected an integer"),
        ("maxNewTokens", True, "expected an integer"),
        ("maxNewTokens", 2.5, "expected an integer"),
        ("maxNewTokens", 0, "must be at least 1"),
        ("temperature", -0.1, "must be at least 0.0"),
        ("temperature", float("inf"), "expected a finite number"),
        ("topP", 0.0, "must be in (0, 1]"),
        ("topP", 1.5, "must be in (0, 1]"),
        ("contextTokens", 4, "must be at least 16"),
        ("fimLayout", "mps", "expected one of 'auto', 'spm', 'psm'"),
        ("decodePath", "fast", "expected one of 'auto', 'torch', 'inductor', 'native', "
                               "'cuda-graph'"),
        ("dtype", "fp16", "expected one of 'auto', 'float32', 'float16', 'bfloat16'"),
        ("device", "gpu", "must be 'auto', 'cpu', 'mps', 'cuda' or 'cuda:N'"),
        ("model", "", "must not be empty"),
        ("model", 7, "expected a string"),
        ("stop", [1], "expected a list of strings"),
        ("stop", ["a", ""], "must not contain an empty string"),
        ("debounceMs", -1, "must be at least 0"),
        ("cacheBudgetMb", {"gpu": 1}, "expected an integer"),
    ],
)
def test_invalid_value_names_key_and_value_and_keeps_default(key: str, value: object, why: str):
    options, messages = parse_options({key: value})
    default = as_json(Options())[key]
    assert options == Options()
    assert messages == [f"gptbigcode.{key}: {value!r} is invalid ({why}); using {default!r}"]


@pytest.mark.parametrize("path", ["auto", "torch", "inductor", "native", "cuda-graph"])
def test_decode_path_takes_each_path(path: str):
    assert parse_options({"decodePath": path}) == (Options(decode_path=path), [])


@pytest.mark.parametrize(("old", "path"), [(False, "torch"), (True, "auto"), (None, "auto")])
def test_compile_decode_is_still_read_as_decode_path_with_a_deprecation_message(
    old: bool | None, path: str
):
    options, messages = parse_options({"gptbigcode": {"compileDecode": old, "topP": 0.5}})
    assert options == Options(decode_path=path, top_p=0.5)
    [message] = messages
    assert message.startswith("gptbigcode.compileDecode is deprecated: use decodePath")
    assert f"taken as decodePath {path!r}" in message


def test_compile_decode_beside_decode_path_is_ignored_with_a_message():
    options, messages = parse_options({"compileDecode": False, "decodePath": "native"})
    assert options == Options(decode_path="native")
    assert len(messages) == 1 and "deprecated" in messages[0] and "ignored" in messages[0]
    options, messages = parse_options({"compileDecode": "yes"})
    assert options == Options() and "not true, false or null" in messages[0]
    assert "compileDecode" not in as_json(Options())


def test_other_keys_still_apply_when_one_is_invalid():
    options, messages = parse_options({"maxNewTokens": -3, "temperature": 0.7, "stop": "\n"})
    assert (options.max_new_tokens, options.temperature, options.stop) == (64, 0.7, ["\n"])
    assert len(messages) == 1 and messages[0].startswith("gptbigcode.maxNewTokens: -3")


def test_integral_float_is_taken_as_an_integer():
    options, messages = parse_options({"maxNewTokens": 32.0})
    assert messages == [] and options.max_new_tokens == 32
    assert isinstance(options.max_new_tokens, int)


def test_non_object_options_are_ignored_with_a_message():
    assert parse_options(["maxNewTokens", 3]) == (
        Options(),
        ["gptbigcode: options must be an object, got ['maxNewTokens', 3]; ignored"],
    )
    assert parse_options({"gptbigcode": 5})[1] == [
        "gptbigcode: options must be an object, got 5; ignored"
    ]


def test_long_values_are_shortened_in_messages():
    _, messages = parse_options({"device": "x" * 10_000})
    assert len(messages[0]) < 200 and "..." in messages[0]


def test_merge_changes_only_the_keys_present():
    current = Options(max_new_tokens=10, temperature=0.5)
    merged, messages = merge(current, {"gptbigcode": {"temperature": 0.1}})
    assert messages == [] and merged == Options(max_new_tokens=10, temperature=0.1)
    assert current.temperature == 0.5  # the old options are not modified


def test_merge_keeps_current_value_when_new_one_is_invalid():
    merged, messages = merge(Options(max_new_tokens=10), {"maxNewTokens": "lots"})
    assert merged.max_new_tokens == 10
    assert messages == [
        "gptbigcode.maxNewTokens: 'lots' is invalid (expected an integer); using 10"
    ]


def test_merge_null_key_resets_it_to_default():
    merged, _ = merge(
        Options(max_new_tokens=10, stop=["x"], context_tokens=99),
        {"maxNewTokens": None, "stop": None, "contextTokens": None},
    )
    assert merged == Options()


def test_merge_null_settings_change_nothing():
    current = Options(top_p=0.3)
    assert merge(current, None) == (current, [])
    assert merge(current, {"gptbigcode": None}) == (current, [])


# ---- nested sections: a sub-dataclass is merged key by key under a dotted path


@dataclass(kw_only=True)
class _Inner:
    enabled: bool = True
    min_score: float = 0.5


@dataclass(kw_only=True)
class _Outer:
    name: str = "n"
    inner: _Inner = field(default_factory=_Inner)


def test_nested_section_merges_key_by_key_with_dotted_messages():
    merged, messages = merge(_Outer(), {"inner": {"minScore": 0.9, "enabled": "yes", "x": 1}})
    assert merged == _Outer(inner=_Inner(min_score=0.9))
    assert messages == [
        "gptbigcode.inner.enabled: 'yes' is invalid (expected true or false); using True",
        "gptbigcode.inner.x: unknown option, ignored",
    ]


def test_nested_section_that_is_not_an_object_keeps_current_values():
    merged, messages = merge(_Outer(name="a"), {"inner": [1]})
    assert merged == _Outer(name="a")
    assert messages == ["gptbigcode.inner: expected an object, got [1]; keeping the current values"]
