"""Server options: the camelCase JSON of initializationOptions and didChangeConfiguration,
checked key by key into typed dataclasses, so one bad value never costs the others."""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass, replace
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import cattrs
from cattrs.gen import make_dict_unstructure_fn, override

from .text import camel, shorten

SECTION = "gptbigcode"

Dtype = Literal["auto", "float32", "float16", "bfloat16"]
Quantize = Literal["none", "int8"]
FimLayout = Literal["auto", "spm", "psm"]
DecodePath = Literal["auto", "torch", "inductor", "native", "cuda-graph"]
EngineKind = Literal["local", "vllm", "llamacpp", "openai"]
DECODE_PATHS: tuple[str, ...] = get_args(DecodePath)
Check = Callable[[Any], "str | None"]  # why a well-typed value is still invalid, or None

_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def _option(default: Any = MISSING, *, factory: Any = MISSING, check: Check | None = None,
            secret: bool = False) -> Any:
    """A field with its check; `secret`: a rejected value is never repeated in a message (a
    key pasted where its variable's name belongs)."""
    return field(default=default, default_factory=factory,
                 metadata={"check": check, "secret": secret})


def _at_least(low: float) -> Check:
    return lambda value: None if value >= low else f"must be at least {low}"


def _device(value: str) -> str | None:
    if _DEVICE.fullmatch(value):
        return None
    return "must be 'auto', 'cpu', 'mps', 'cuda' or 'cuda:N'"


def _non_empty(value: str) -> str | None:
    return None if value else "must not be empty"


def _top_p(value: float) -> str | None:
    return None if 0.0 < value <= 1.0 else "must be in (0, 1]"


def _stop_strings(value: list[str]) -> str | None:
    return None if all(value) else "must not contain an empty string"


def _probability(value: float) -> str | None:
    return None if 0.0 <= value <= 1.0 else "must be in [0, 1]"


def _between(low: int, high: int) -> Check:
    return lambda value: None if low <= value <= high else f"must be in {low}..{high}"


@dataclass(kw_only=True)
class DiagnosticsOptions:
    """Diagnostics from the classification heads (secrets, personal data, likely bugs)."""

    enabled: bool = True
    model: str = _option("default", check=_non_empty)  # diagnostics model folder or "default"
    secrets: bool = True  # hard-coded keys, passwords, user names
    personal_data: bool = True  # email and public IP addresses
    bugs: bool = False  # functions that look wrong (Python): off until precise on real code
    # None: the thresholds calibrated when the model was trained (in its config.json).
    secret_threshold: float | None = _option(None, check=_probability)
    personal_data_threshold: float | None = _option(None, check=_probability)
    bug_threshold: float | None = _option(None, check=_probability)
    debounce_ms: int = _option(400, check=_at_least(0))  # after the last edit
    max_chars: int = _option(1_000_000, check=_at_least(0))  # larger documents are skipped


def _share(value: float) -> str | None:
    return None if 0.0 < value <= 0.5 else "must be in (0, 0.5]"


@dataclass(kw_only=True)
class CrossFileOptions:
    """Context from other files: the workspace's other open documents (and the lines around
    recent edits), in StarCoder's repository format ahead of the current file, those it
    imports or that define names used near the cursor first. Needs a model whose tokenizer
    has <reponame> and <filename> (the status says when it does not)."""

    enabled: bool = True
    share: float = _option(0.25, check=_share)  # of the prompt's token budget, at most


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _env_name(value: str) -> str | None:
    if not value or _ENV_NAME.fullmatch(value):
        return None
    return "must be the name of an environment variable (the key itself is never an option)"


def _engine_url(value: str) -> str | None:
    if not value or re.match(r"https?://[^/?#\s]+", value):
        return None
    return "must be an http:// or https:// URL"


@dataclass(kw_only=True)
class EngineOptions:
    """Where generation runs: in this process, or on a shared serving engine. The model option
    still names the model's folder: its tokenizer (and calibration) are used here."""

    kind: EngineKind = "local"  # "vllm", "llamacpp" (llama-server), "openai": /v1/completions
    url: str = _option("", check=_engine_url)  # e.g. "http://127.0.0.1:8000"
    model: str = ""  # the engine's name for the model; "": the one it serves
    # The environment variable holding the API key: sent only over https, or over http to
    # this machine; never logged. "": no key.
    api_key_env: str = _option("", check=_env_name, secret=True)
    timeout_ms: int = _option(10_000, check=_at_least(100))  # connect, and between tokens


@dataclass(kw_only=True)
class Options:
    """Everything a client may set, with the default each key takes when not set."""

    model: str = _option("default", check=_non_empty)  # folder, Hugging Face id, or "default"
    device: str = _option("auto", check=_device)  # "auto": CUDA when there is one, else CPU
    dtype: Dtype = "auto"  # "auto": bf16 on a GPU or CPU that computes it natively, else fp32
    quantize: Quantize = "none"  # "int8": int8 weights, ~1.4x faster decode in bf16 on a CPU
    # How decode steps run. "auto": a CUDA graph on a GPU; on a CPU the native kernels where
    # they apply, Inductor for half-precision models of 50M parameters or more where they do
    # not, plain PyTorch otherwise. The others ask for one path (where it cannot run: a
    # warning, and "auto").
    decode_path: DecodePath = "auto"
    max_new_tokens: int = _option(64, check=_at_least(1))
    temperature: float = _option(0.0, check=_at_least(0.0))  # 0.0: greedy
    top_p: float = _option(1.0, check=_top_p)
    context_tokens: int | None = _option(None, check=_at_least(16))  # None: n_positions
    # "spm": suffix first, so a keystroke at the cursor appends to the prompt, but a cursor move
    # recomputes it; "psm": prefix first, the cursor's line (and what is typed after it) after
    # <fim_middle>, the suffix capped, so a move recomputes the lines moved over and the
    # suffix; "auto": psm where the backend computes a whole window in more than a second (a
    # large model on a CPU), spm elsewhere. Without FIM tokens: plain text before the cursor.
    fim_layout: FimLayout = "auto"
    stop: list[str] = _option(factory=list, check=_stop_strings)  # a single string is one
    debounce_ms: int = _option(50, check=_at_least(0))
    time_budget_ms: int = _option(2000, check=_at_least(1))  # per request, all candidates
    # Hide a suggestion whose first line the model was less sure of than this (a score in
    # [0, 1] from its token probabilities, engine/confidence.py), and cut one before a later
    # line that scores below it. None: the value calibrated for the loaded model (the
    # packaged one's; 0, no gate, for other models).
    min_confidence: float | None = _option(None, check=_probability)
    # Suggestions per request (the engine's MAX_CANDIDATES at most): the first is the one a
    # single suggestion would be, the others samples of the same prompt (decode steps only),
    # each passing the same gate, repeats dropped. An inline request the user invoked
    # (VS Code's next / previous suggestion) gets at least INVOKED_CANDIDATES.
    candidates: int = _option(1, check=_between(1, 8))
    cross_file: CrossFileOptions = _option(factory=CrossFileOptions)
    cache_budget_mb: int = _option(1024, check=_at_least(0))  # KV cache, all documents
    # Prefill the cache while the editor is idle (after opening a file, after an edit, after a
    # suggestion), where the next request most likely needs it, in short chunks that a
    # keystroke stops; false: the model runs only when asked.
    warm: bool = True
    engine: EngineOptions = _option(factory=EngineOptions)
    diagnostics: DiagnosticsOptions = _option(factory=DiagnosticsOptions)


# ---- strict conversion: JSON values are taken as they are, never coerced ("5" is not 5)


def _structure_int(value: Any, _: type) -> int:
    if isinstance(value, float) and value.is_integer():
        return int(value)  # 64.0 from a client whose numbers are all doubles
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("expected an integer")
    return value


def _structure_float(value: Any, _: type) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError("expected a finite number")
    return float(value)


def _structure_str(value: Any, _: type) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


def _structure_bool(value: Any, _: type) -> bool:
    if not isinstance(value, bool):
        raise ValueError("expected true or false")
    return value


def _structure_strings(value: Any, _: type) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError("expected a list of strings")
    return list(value)


def _structure_literal(value: Any, hint: Any) -> Any:
    choices = get_args(hint)
    if isinstance(value, bool) or value not in choices:
        raise ValueError("expected one of " + ", ".join(map(repr, choices)))
    return value


def _camel_case_fields(converter: cattrs.Converter) -> Callable[[Any], Any]:
    """An unstructure hook factory writing dataclass fields under their camelCase names."""

    def factory(cls: Any) -> Any:
        renames: dict[str, Any] = {f.name: override(rename=camel(f.name)) for f in fields(cls)}
        return make_dict_unstructure_fn(cls, converter, **renames)

    return factory


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter()
    for kind, hook in [
        (int, _structure_int),
        (float, _structure_float),
        (str, _structure_str),
        (bool, _structure_bool),
    ]:
        converter.register_structure_hook(kind, hook)
    converter.register_structure_hook_func(lambda t: t == list[str], _structure_strings)
    converter.register_structure_hook_func(lambda t: get_origin(t) is Literal, _structure_literal)
    converter.register_unstructure_hook_factory(is_dataclass, _camel_case_fields(converter))
    return converter


CONVERTER = _make_converter()

# ---- merging raw JSON into options

T = TypeVar("T")


# Shapes accepted (the same keys in each):
#
# - flat: `{"maxNewTokens": 32, "stop": ["\n\n"]}`, as initializationOptions and as the reply
#   to `workspace/configuration` for the section "gptbigcode";
# - under the section: `{"gptbigcode": {...}}`, what VS Code sends in didChangeConfiguration when
#   the client syncs `configurationSection: "gptbigcode"` (keys of other sections beside it are
#   ignored), and what Neovim sends from `settings = { gptbigcode = {...} }`;
# - null (a client using the pull model): nothing changes.
#
# A key set to null takes its default. An unknown key, or a value of the wrong type or out of
# range, gives a message naming the key and the value, and the key keeps its current value.


def parse_options(raw: object) -> tuple[Options, list[str]]:
    """Options from initializationOptions (any shape in the comment above), with one
    message per key that was ignored or kept at its default."""
    return merge(Options(), raw)


def merge(current: T, raw: object) -> tuple[T, list[str]]:
    """`current` with the keys present in `raw` changed (didChangeConfiguration); keys absent
    from raw keep their values. Returns the new options and a message per rejected key."""
    section = raw.get(SECTION) if isinstance(raw, Mapping) and SECTION in raw else raw
    if section is None:
        return current, []
    if not isinstance(section, Mapping):
        got = shorten(repr(section), 60)
        return current, [f"{SECTION}: options must be an object, got {got}; ignored"]
    notes: list[str] = []
    if isinstance(current, Options):
        section, notes = _renamed(section)
    merged, messages = _merge_section(current, section, f"{SECTION}.")
    return merged, notes + messages


def _renamed(section: Mapping[Any, Any]) -> tuple[Mapping[Any, Any], list[str]]:
    """`compileDecode` (true / false / null) is the old, misleading name of `decodePath`: it is
    still taken, false as "torch" and true or null as "auto", with a message saying so."""
    if "compileDecode" not in section:
        return section, []
    value = section["compileDecode"]
    rest = {key: item for key, item in section.items() if key != "compileDecode"}
    paths = ", ".join(map(repr, DECODE_PATHS))
    old = f"{SECTION}.compileDecode is deprecated: use decodePath ({paths})"
    if "decodePath" in rest:
        return rest, [f"{old}; ignored, decodePath is set"]
    if value is not None and not isinstance(value, bool):
        return rest, [f"{old}; {shorten(repr(value), 60)} is not true, false or null, ignored"]
    path = "torch" if value is False else "auto"
    shown = {None: "null", False: "false", True: "true"}[value]
    message = f"{old}; compileDecode {shown} is taken as decodePath {path!r}"
    return {**rest, "decodePath": path}, [message]


def as_json(options: Any) -> dict[str, Any]:
    """The options as the camelCase JSON a client would send (for status and logs)."""
    json: dict[str, Any] = CONVERTER.unstructure(options)
    return json


def _merge_section(current: T, raw: Mapping[Any, Any], path: str) -> tuple[T, list[str]]:
    by_key = {camel(f.name): f for f in fields(current)}  # type: ignore[arg-type]
    hints = get_type_hints(type(current))
    changes: dict[str, Any] = {}
    messages: list[str] = []
    for key, value in raw.items():
        known = by_key.get(key)
        if known is None:
            messages.append(_unknown_key(f"{path}{key}", key, by_key))
            continue
        old = getattr(current, known.name)
        new, problems = _merge_value(old, value, known, hints[known.name], f"{path}{key}")
        changes[known.name] = new
        messages += problems
    return replace(current, **changes), messages  # type: ignore[type-var]


def _merge_value(
    old: Any, value: Any, spec: Field[Any], hint: Any, name: str
) -> tuple[Any, list[str]]:
    """The key's new value and messages; a rejected value leaves `old` in place."""
    if value is None:
        return _default(spec), []
    if is_dataclass(hint):
        if isinstance(value, Mapping):
            return _merge_section(old, value, f"{name}.")
        got = shorten(repr(value), 60)
        return old, [f"{name}: expected an object, got {got}; keeping the current values"]
    try:
        new = CONVERTER.structure(value, hint)
        check = spec.metadata.get("check")
        problem = check(new) if check is not None and new is not None else None
    except ValueError as err:
        problem = str(err)
    if problem is None:
        return new, []
    if spec.metadata.get("secret"):
        return old, [f"{name}: the value given is invalid ({problem}); using {old!r}"]
    return old, [f"{name}: {shorten(repr(value), 60)} is invalid ({problem}); using {old!r}"]


def _default(spec: Field[Any]) -> Any:
    if spec.default_factory is not MISSING:
        return spec.default_factory()
    return spec.default


def _unknown_key(name: str, key: Any, known: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(str(key), list(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{name}: unknown option, ignored{hint}"
