"""Checkpoint IO: find a Hugging Face checkpoint folder, read and write its safetensors weights,
and load a state dict into a module with every key and shape checked. Pickle files are refused."""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

# The packaged checkpoint that resolve_checkpoint("default") returns; a module constant so
# that tests and packagers can point it elsewhere.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default"

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
SHARD_NAME = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
DEFAULT_IGNORED = (r"\.attn\.(masked_)?bias$",)  # causal-mask buffers of old checkpoints

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}
_SIZE_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # fmt: skip
_MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on the JSON header
_MODEL_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_REVISION = re.compile(r"[\w.-]+(/[\w.-]+)*")
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")
_LISTED = 5  # names shown in an error message before "and N more"


class CheckpointError(ValueError):
    """A checkpoint that cannot be found, read, written or loaded; the message says why."""


@dataclass
class LoadReport:
    """What load_into did besides loading the expected keys."""

    missing_optional: list[str] = field(default_factory=list)  # left as initialised
    ignored: list[str] = field(default_factory=list)  # checkpoint keys dropped by pattern
    unexpected_optional: list[str] = field(default_factory=list)  # allowed extras, not loaded
    tied: list[str] = field(default_factory=list)  # filled from the parameter they share


# -- dtypes ---------------------------------------------------------------------------------


def parse_dtype(value: str | torch.dtype | None) -> torch.dtype | None:
    """A floating torch dtype from a dtype or a name such as "bf16" or "torch.float16"."""
    if value is None:
        return None
    if isinstance(value, torch.dtype):
        if not value.is_floating_point:
            raise CheckpointError(f"dtype must be a floating-point type, got {value}")
        return value
    if not isinstance(value, str):
        raise CheckpointError(f"dtype must be a name or a torch.dtype, got {value!r}")
    name = value.strip().lower().removeprefix("torch.")
    if name not in _DTYPES:
        raise CheckpointError(f"unknown dtype {value!r}; expected one of: {', '.join(_DTYPES)}")
    return _DTYPES[name]


# -- finding a checkpoint -------------------------------------------------------------------


def resolve_checkpoint(path_or_id: str | os.PathLike[str], *, revision: str | None = None) -> Path:
    """The folder for "default", an existing folder, or a model id in the local HF hub cache.

    Nothing is downloaded. `revision` (a ref name such as "main" or a commit hash) applies to
    model ids only.
    """
    text = os.fspath(path_or_id)
    if text == "default" and isinstance(path_or_id, str):
        _reject_revision(revision, "the packaged default model")
        return _packaged_default()
    path = Path(text).expanduser()
    if path.is_dir():
        _reject_revision(revision, f"the local folder {path}")
        return path
    if path.exists():
        raise CheckpointError(
            f"{path} is a file; expected a checkpoint folder holding config.json and {SAFE_WEIGHTS}"
        )
    if not isinstance(path_or_id, str) or not _looks_like_model_id(text):
        raise CheckpointError(f"no such folder: {path}")
    return _find_in_hub_cache(text, revision)


def _reject_revision(revision: str | None, what: str) -> None:
    if revision is not None:
        raise CheckpointError(f"revision={revision!r} applies to model ids only, not to {what}")


def _packaged_default() -> Path:
    folder = DEFAULT_MODEL_DIR
    if not (folder / "config.json").is_file():
        raise CheckpointError(
            f"the packaged default model is not installed ({folder} has no config.json); "
            "reinstall the package, or pass a checkpoint folder or a model id from the local "
            "Hugging Face cache"
        )
    return folder


def _looks_like_model_id(text: str) -> bool:
    return bool(_MODEL_ID.fullmatch(text)) and "--" not in text and ".." not in text


def _hub_cache_dir() -> Path:
    """Where huggingface_hub keeps downloaded repositories, by its environment variables."""
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(variable):
            return Path(os.environ[variable]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "huggingface" / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


def _find_in_hub_cache(model_id: str, revision: str | None) -> Path:
    repo = _hub_cache_dir() / ("models--" + model_id.replace("/", "--"))
    if not repo.is_dir():
        raise CheckpointError(
            f"{model_id!r} is not a folder, and no model with that id is in the local Hugging Face "
            f"cache (looked for {repo}). Downloads are not attempted: fetch it first "
            f"(`huggingface-cli download {model_id}`) or pass a checkpoint folder"
        )
    if revision is not None:
        return _snapshot_at(repo, model_id, revision)
    if (repo / "refs" / "main").is_file():
        return _snapshot_at(repo, model_id, "main")
    snapshots = _snapshots(repo)
    if not snapshots:
        raise CheckpointError(
            f"{repo} holds no snapshot of {model_id!r}; downloads are not attempted: "
            f"fetch it first (`huggingface-cli download {model_id}`)"
        )
    return max(snapshots, key=lambda folder: folder.stat().st_mtime)


def _snapshots(repo: Path) -> list[Path]:
    folder = repo / "snapshots"
    return [p for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []


def _snapshot_at(repo: Path, model_id: str, revision: str) -> Path:
    if not _REVISION.fullmatch(revision) or ".." in revision.split("/"):
        raise CheckpointError(f"invalid revision {revision!r} for {model_id!r}")
    ref = repo / "refs" / revision
    commit = ref.read_text(encoding="utf-8").strip() if ref.is_file() else revision
    snapshot = repo / "snapshots" / commit
    if snapshot.is_dir():
        return snapshot
    refs = sorted(p.name for p in (repo / "refs").iterdir()) if (repo / "refs").is_dir() else []
    commits = sorted(p.name for p in _snapshots(repo))
    raise CheckpointError(
        f"revision {revision!r} of {model_id!r} is not in the local Hugging Face cache "
        f"({repo}; refs: {refs or 'none'}; snapshots: {commits or 'none'}). "
        "Downloads are not attempted"
    )


# -- reading --------------------------------------------------------------------------------


def read_state_dict(
    folder: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """All tensors of the folder's model.safetensors, or of the shards its index lists."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"no such folder: {folder}")
    if (folder / SAFE_WEIGHTS).is_file():
        return _read_safetensors(folder / SAFE_WEIGHTS, device)
    if (folder / SAFE_INDEX).is_file():
        return _read_sharded(folder / SAFE_INDEX, device)
    _refuse_pickles(folder)
    present = sorted(p.name for p in folder.iterdir())
    raise CheckpointError(
        f"{folder}: no weights found; expected {SAFE_WEIGHTS} or {SAFE_INDEX} "
        f"(the folder holds: {', '.join(present) or 'nothing'})"
    )


def _refuse_pickles(folder: Path) -> None:
    pickles = sorted(
        p.name for p in folder.iterdir() if p.name.endswith(PICKLE_SUFFIXES + (".bin.index.json",))
    )
    if pickles:
        raise CheckpointError(
            f"{folder} holds only pickle checkpoints ({', '.join(pickles)}). Pickle files can "
            "execute arbitrary code when loaded, so they are refused. Convert the checkpoint to "
            "safetensors once, with transformers installed:\n"
            '  python -c "from transformers import AutoModelForCausalLM as M; '
            f"M.from_pretrained('{folder}').save_pretrained('OUT', safe_serialization=True)\"\n"
            "then pass OUT (copy the tokenizer files along if they are not written)"
        )


def _read_sharded(index: Path, device: str | torch.device) -> dict[str, torch.Tensor]:
    keys_by_shard: dict[str, list[str]] = {}
    for key, shard in _read_weight_map(index).items():
        keys_by_shard.setdefault(shard, []).append(key)
    missing = [shard for shard in keys_by_shard if not (index.parent / shard).is_file()]
    if missing:
        raise CheckpointError(
            f"{index} lists shard file(s) missing from {index.parent}: {', '.join(missing)}"
        )
    state: dict[str, torch.Tensor] = {}
    for shard, keys in keys_by_shard.items():
        state.update(_read_safetensors(index.parent / shard, device, keys))
    return state


def _read_weight_map(index: Path) -> dict[str, str]:
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{index}: not valid JSON ({exc})") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index}: expected a non-empty \"weight_map\" object")
    for key, shard in weight_map.items():
        if not isinstance(shard, str) or "/" in shard or "\\" in shard or shard in ("", ".", ".."):
            raise CheckpointError(f"{index}: {key!r} maps to {shard!r}, not a file in the folder")
    return weight_map


def _read_safetensors(
    path: Path, device: str | torch.device, keys: Iterable[str] | None = None
) -> dict[str, torch.Tensor]:
    _check_safetensors_layout(path)
    try:
        with safe_open(path, framework="pt", device=str(torch.device(device))) as file:
            present = set(file.keys())
            wanted = sorted(present) if keys is None else list(keys)
            absent = [key for key in wanted if key not in present]
            if absent:
                raise CheckpointError(
                    f"{path}: the index maps {_some(absent)} to this shard, "
                    "but it holds no such tensor"
                )
            return {key: file.get_tensor(key) for key in wanted}
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: cannot read safetensors file ({exc})") from None


def _check_safetensors_layout(path: Path) -> None:
    """Raise naming the file when its header and its size disagree (truncated or not safetensors).

    safetensors reports the same as "incomplete metadata" without a file name.
    """
    size = path.stat().st_size

    def corrupt(detail: str) -> CheckpointError:
        return CheckpointError(f"{path}: truncated or corrupt safetensors file ({detail})")

    with path.open("rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            raise corrupt(f"{size} bytes, shorter than the 8-byte header length")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > min(size - 8, _MAX_HEADER_BYTES):
            raise corrupt(f"header length {header_len} exceeds the {size - 8} bytes that follow")
        raw = file.read(header_len)
    try:
        header = json.loads(raw)
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        raise corrupt("the header is not a safetensors JSON header") from None
    data_bytes = size - 8 - header_len
    if max(ends, default=0) != data_bytes:
        raise corrupt(f"the header describes {max(ends, default=0)} bytes of tensor data, "
                      f"the file holds {data_bytes}")


# -- writing --------------------------------------------------------------------------------


def write_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    folder: str | os.PathLike[str],
    max_shard_size: int | str | None = None,
) -> list[Path]:
    """Write safetensors that transformers loads; return the files written.

    One model.safetensors, or model-0000i-of-0000n.safetensors shards plus
    model.safetensors.index.json when the tensors exceed `max_shard_size` ("5GB", "200MB",
    "10KiB" or bytes). Weight files of an earlier save in the folder are removed, since a
    stale model.safetensors would be read in place of new shards.
    """
    folder = Path(folder)
    tensors = _prepare_for_save(state_dict)
    limit = None if max_shard_size is None else _parse_size(max_shard_size)
    shards = _plan_shards(tensors, limit)
    folder.mkdir(parents=True, exist_ok=True)
    if len(shards) == 1:
        written = [_save_atomically(shards[0], folder / SAFE_WEIGHTS)]
    else:
        count = len(shards)
        names = [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]
        written = [_save_atomically(s, folder / n) for s, n in zip(shards, names, strict=True)]
        index = {
            "metadata": {"total_size": sum(_nbytes(t) for t in tensors.values())},
            "weight_map": {key: name for s, name in zip(shards, names, strict=True) for key in s},
        }
        index_path = folder / SAFE_INDEX
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        written.append(index_path)
    _remove_stale_weights(folder, keep=written)
    return written


def _prepare_for_save(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, dense, contiguous tensors that share no storage (safetensors refuses shared ones)."""
    seen: set[int] = set()
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"state dict entry {key!r}: expected a str key and a tensor, "
                f"got {type(key).__name__} -> {type(value).__name__}"
            )
        if value.is_meta:
            raise CheckpointError(f"{key}: tensor is on the meta device (never materialised)")
        tensor = value.detach()
        if tensor.layout != torch.strided:
            tensor = tensor.to_dense()
        tensor = tensor.to("cpu").contiguous()
        storage = tensor.untyped_storage().data_ptr()
        if tensor.numel() and storage in seen:
            tensor = tensor.clone()  # tied or sliced from another entry
        seen.add(tensor.untyped_storage().data_ptr())
        out[key] = tensor
    return out


def _parse_size(size: int | str) -> int:
    if isinstance(size, int) and not isinstance(size, bool):
        value = size
    elif isinstance(size, str) and (m := _SIZE.fullmatch(size)):
        unit = m.group(2).lower()
        if unit not in _SIZE_UNITS:
            raise CheckpointError(f"max_shard_size {size!r}: unknown unit {m.group(2)!r}")
        value = int(float(m.group(1)) * _SIZE_UNITS[unit])
    else:
        raise CheckpointError(f"max_shard_size {size!r}: expected bytes or a size such as '5GB'")
    if value <= 0:
        raise CheckpointError(f"max_shard_size must be positive, got {size!r}")
    return value


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _plan_shards(
    tensors: dict[str, torch.Tensor], limit: int | None
) -> list[dict[str, torch.Tensor]]:
    """Greedy split in key order; a tensor larger than the limit gets a shard of its own."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    filled = 0
    for key, tensor in tensors.items():
        size = _nbytes(tensor)
        if limit is not None and shards[-1] and filled + size > limit:
            shards.append({})
            filled = 0
        shards[-1][key] = tensor
        filled += size
    return shards


def _save_atomically(tensors: dict[str, torch.Tensor], path: Path) -> Path:
    # A crash mid-write leaves the .tmp file, never a truncated model.safetensors.
    partial = path.with_name(path.name + ".tmp")
    save_file(tensors, partial, metadata={"format": "pt"})  # transformers requires "format"
    os.replace(partial, path)
    return path


def _remove_stale_weights(folder: Path, keep: list[Path]) -> None:
    kept = {p.name for p in keep}
    for path in folder.iterdir():
        name = path.name
        ours = name in (SAFE_WEIGHTS, SAFE_INDEX) or SHARD_NAME.fullmatch(name)
        if ours and name not in kept:
            path.unlink()


# -- loading into a module ------------------------------------------------------------------


def load_into(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    expected_prefix: str = "transformer.",
    optional: Collection[str] = (),
    optional_unexpected: Collection[str] = (),
    ignored_patterns: Collection[str] = DEFAULT_IGNORED,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    init_missing: Callable[[nn.Module, str], None] | None = None,
) -> LoadReport:
    """Load a checkpoint's tensors into `module` (which may live on the meta device).

    Checkpoint names gain or lose `expected_prefix` to match the module's. Every parameter
    and persistent buffer must be in the checkpoint unless listed in `optional`; a missing
    optional one is materialised on `device` and passed to `init_missing(owner, key)` if it
    was on meta. Extra checkpoint keys are an error unless in `optional_unexpected`. Floating
    tensors are cast to `dtype` (None: the module's dtype); others keep theirs. Parameters
    the module ties together are loaded once and stay tied. Tensors already of the right
    dtype and device are taken over, not copied.
    """
    optional, optional_unexpected, ignored_patterns = (
        _names(optional), _names(optional_unexpected), _names(ignored_patterns)
    )
    target = module.state_dict(keep_vars=True)
    report = LoadReport()
    checkpoint: dict[str, torch.Tensor] = {}
    for key, (original, tensor) in _match_prefix(state_dict, target, expected_prefix).items():
        if key not in target and any(re.search(p, key) for p in ignored_patterns):
            report.ignored.append(original)
        else:
            checkpoint[key] = tensor
    alias_of = _resolve_ties(module, checkpoint)
    report.tied = sorted(alias_of)
    missing = [k for k in target if k not in checkpoint and k not in alias_of]
    report.missing_optional = [k for k in missing if k in optional]
    report.unexpected_optional = [
        k for k in checkpoint if k not in target and k in optional_unexpected
    ]
    _check_fit(module, checkpoint, target, missing, optional, optional_unexpected)

    to_dtype, to_device = parse_dtype(dtype), None if device is None else torch.device(device)
    converted = {
        key: _convert(tensor, target[key], to_dtype, to_device)
        for key, tensor in checkpoint.items()
        if key in target
    }
    module.load_state_dict(converted, strict=False, assign=True)
    for key in report.missing_optional:
        _settle_missing(module, key, to_dtype, to_device, init_missing)
    for alias, source in alias_of.items():
        owner, attr = _owner(module, alias)
        owner._parameters[attr] = module.get_parameter(source)
    return report


def _names(names: Collection[str]) -> frozenset[str]:
    # A lone string is one name, not a collection of characters.
    return frozenset((names,) if isinstance(names, str) else names)


def _match_prefix(
    state_dict: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], prefix: str
) -> dict[str, tuple[str, torch.Tensor]]:
    """Module-side name -> (checkpoint name, tensor): add the prefix to a bare backbone's keys,
    or strip it when loading a model-with-head checkpoint into the bare backbone."""
    module_has = bool(prefix) and any(k.startswith(prefix) for k in target)
    checkpoint_has = bool(prefix) and any(k.startswith(prefix) for k in state_dict)

    def rename(key: str) -> str:
        if module_has and not checkpoint_has:
            return prefix + key
        if checkpoint_has and not module_has:
            return key.removeprefix(prefix)
        return key

    out: dict[str, tuple[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            kind = type(tensor).__name__
            raise CheckpointError(f"checkpoint entry {key!r} is a {kind}, not a tensor")
        name = rename(key)
        if name in out:
            first = out[name][0]
            raise CheckpointError(f"checkpoint keys {first!r} and {key!r} both map to {name!r}")
        out[name] = (key, tensor)
    return out


def _resolve_ties(module: nn.Module, checkpoint: dict[str, torch.Tensor]) -> dict[str, str]:
    """Alias name -> source name for parameters shared under several names (lm_head / wte).

    The first name in module order that the checkpoint has is the source; the checkpoint's
    tensors for the other names are dropped, as transformers' weight tying does.
    """
    groups: dict[int, list[str]] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    alias_of: dict[str, str] = {}
    for names in groups.values():
        present = [n for n in names if n in checkpoint]
        source = present[0] if present else names[0]
        for name in names:
            if name != source:
                alias_of[name] = source
                checkpoint.pop(name, None)
    return alias_of


def _check_fit(
    module: nn.Module,
    checkpoint: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    missing: list[str],
    optional: Collection[str],
    optional_unexpected: Collection[str],
) -> None:
    problems = []
    required = [k for k in missing if k not in optional]
    if required:
        problems.append(f"missing {len(required)} key(s): {_some(required)}")
    unexpected = [k for k in checkpoint if k not in target and k not in optional_unexpected]
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} key(s): {_some(unexpected)}")
    mismatched = [
        f"{k}: checkpoint shape {tuple(t.shape)}, model expects {tuple(target[k].shape)}"
        for k, t in checkpoint.items()
        if k in target and t.shape != target[k].shape
    ]
    if mismatched:
        problems.append(f"shape mismatch in {len(mismatched)} key(s): {_some(mismatched)}")
    if problems:
        raise CheckpointError(
            f"checkpoint does not fit {type(module).__name__}: " + "; ".join(problems)
        )


def _some(names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown if len(names) <= _LISTED else f"{shown} and {len(names) - _LISTED} more"


def _convert(
    tensor: torch.Tensor,
    current: torch.Tensor,
    dtype: torch.dtype | None,
    device: torch.device | None,
) -> torch.Tensor:
    if device is None:
        device = current.device if not current.is_meta else torch.device("cpu")
    if tensor.is_floating_point():
        keep = current.dtype if current.is_floating_point() else tensor.dtype
        return tensor.detach().to(device=device, dtype=dtype or keep)
    return tensor.detach().to(device=device)


def _settle_missing(
    module: nn.Module,
    key: str,
    dtype: torch.dtype | None,
    device: torch.device | None,
    init_missing: Callable[[nn.Module, str], None] | None,
) -> None:
    """Give an absent optional tensor real storage on the target device and dtype."""
    owner, attr = _owner(module, key)
    current: torch.Tensor | None = owner._parameters.get(attr)
    if current is None:
        current = owner._buffers[attr]
    assert current is not None
    to_device = device or (current.device if not current.is_meta else torch.device("cpu"))
    to_dtype = dtype if dtype is not None and current.is_floating_point() else current.dtype
    if current.is_meta:
        fresh = torch.empty_like(current, device=to_device, dtype=to_dtype)
    else:
        fresh = current.detach().to(device=to_device, dtype=to_dtype)
    _set_tensor(owner, attr, fresh, current)
    if current.is_meta and init_missing is not None:
        init_missing(owner, key)


def _owner(module: nn.Module, key: str) -> tuple[nn.Module, str]:
    path, _, attr = key.rpartition(".")
    return module.get_submodule(path), attr


def _set_tensor(owner: nn.Module, attr: str, tensor: torch.Tensor, like: Any) -> None:
    if attr in owner._parameters:
        owner._parameters[attr] = nn.Parameter(tensor, requires_grad=like.requires_grad)
    else:
        owner._buffers[attr] = tensor
