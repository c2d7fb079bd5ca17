"""MONAI bundle implementation of the ``Predictor`` seam.

A bundle folder in the standard layout::

    configs/metadata.json     # read and checked for being a JSON object
    configs/inference.json    # (or .yaml/.yml) holds ``network_def``
    models/model.pt           # the state dict of ``network_def`` (optionally under a "model" key)

The network is built with ``monai.bundle.ConfigParser`` and the weights are loaded with
``torch.load(weights_only=True)`` (no pickled code runs). Detection bundles (``output.kind: boxes``)
are read the same way (``read_config``, ``instantiate``, ``load_network``) by
``inference.runners.detection_bundle``.

**Trust.** A bundle's config is code: ``$...`` strings are Python expressions that MONAI evaluates,
``%file#id`` macros read other files, and ``_target_`` names any importable callable (``os.system``
included). Unless the manifest marks the model ``trusted: true``, the runner builds only a
declarative network: the ``network_def`` item and every item it references with ``@id`` must be
plain data (no ``$`` expression, no ``%`` macro, no ``_requires_``, no ``_mode_`` other than
``default``), and every ``_target_`` must lie in ``monai.networks``, ``monai.apps``, ``torch.nn`` or
``inference.networks`` (tamsoat's own networks, part of the service). Anything else is refused with
one sentence naming the offending item, before ``ConfigParser`` evaluates anything (for a detection
bundle: ``anchor_generator`` too). Items that tamsoat does not build (``run``, ``evaluator``,
``detector_ops``, ...) are never evaluated, trusted or not. Declarative bundles (most network
definitions are) then run without trusting their author; a bundle that needs its expressions runs
after an admin has read it and set ``trusted: true``. Refusing, rather than parsing with expressions
switched off (MONAI's ``MONAI_EVAL_EXPR=0`` would leave ``$...`` strings as literal arguments),
avoids building a network with silently wrong arguments.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser

from inference.runners.onnx_predictor import RunnerError
from inference.runners.torch_predictor import CpuPrecision, GpuPrecision, TorchPredictor, default_device

NETWORK_ID = "network_def"
CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml")
SAFE_TARGET_PREFIXES = ("monai.networks.", "monai.apps.", "torch.nn.", "inference.networks.")
_KEY_SEP = "::"  # MONAI's id separator (``#`` is accepted as well)


class BundleTrustError(RunnerError):
    """An untrusted bundle's network definition would execute code."""


def bundle_root(weights: Path) -> Path:
    """The bundle folder of ``.../models/model.pt``."""
    return weights.parent.parent


def _config_file(root: Path) -> Path:
    for name in CONFIG_NAMES:
        path = root / "configs" / name
        if path.is_file():
            return path
    raise RunnerError(f"MONAI bundle {root} has no configs/inference.json (or .yaml)")


def _walk(node: object, where: str) -> Iterator[tuple[str, object, object]]:
    """(path, key, value) for every mapping entry and list item under ``node``."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield f"{where}{_KEY_SEP}{key}", key, value
            yield from _walk(value, f"{where}{_KEY_SEP}{key}")
    elif isinstance(node, list):
        for n, value in enumerate(node):
            yield f"{where}{_KEY_SEP}{n}", n, value
            yield from _walk(value, f"{where}{_KEY_SEP}{n}")


def _lookup(config: dict[str, Any], ref: str) -> object:
    node: object = config
    for part in ref.replace("#", _KEY_SEP).split(_KEY_SEP):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise BundleTrustError(f"reference @{ref} names no item of the bundle config")
    return node


def check_declarative(config: dict[str, Any], item: str = NETWORK_ID) -> None:
    """Raise ``BundleTrustError`` unless ``config[item]`` and what it references are plain data."""
    if item not in config:
        raise RunnerError(f"the bundle config has no {item!r}")
    pending, seen = [item], set()
    while pending:
        ref = pending.pop()
        if ref in seen:
            continue
        seen.add(ref)
        node = _lookup(config, ref)
        for path, key, value in [(ref, None, node), *_walk(node, ref)]:
            if key in ("_requires_", "_disabled_"):
                raise BundleTrustError(f"{path} is not allowed in an untrusted bundle (mark it trusted: true)")
            if key == "_mode_" and value != "default":
                raise BundleTrustError(f"{path} = {value!r} is not allowed in an untrusted bundle")
            if key == "_target_" and not (isinstance(value, str) and value.startswith(SAFE_TARGET_PREFIXES)):
                raise BundleTrustError(
                    f"{path} = {value!r} is outside {', '.join(SAFE_TARGET_PREFIXES)}; "
                    "mark the bundle trusted: true to allow it"
                )
            if isinstance(value, str):
                if value.startswith("$"):
                    raise BundleTrustError(
                        f"{path} is a Python expression ({value[:40]!r}); an untrusted bundle may not evaluate "
                        "expressions (mark it trusted: true after review)"
                    )
                if value.startswith("%"):
                    raise BundleTrustError(f"{path} is a macro ({value[:40]!r}), not allowed in an untrusted bundle")
                if value.startswith("@"):
                    pending.append(value[1:])


def read_config(root: Path) -> ConfigParser:
    """The bundle's inference config, parsed but not evaluated (``configs/metadata.json`` checked too)."""
    meta = root / "configs" / "metadata.json"
    try:
        metadata = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunnerError(f"MONAI bundle {root}: cannot read configs/metadata.json: {exc}") from exc
    if not isinstance(metadata, dict):
        raise RunnerError(f"MONAI bundle {root}: configs/metadata.json must be a JSON object")
    parser = ConfigParser()
    try:
        parser.read_config(str(_config_file(root)))
    except (OSError, ValueError) as exc:
        raise RunnerError(f"MONAI bundle {root}: cannot read its config: {exc}") from exc
    parser.read_meta(metadata)
    if not isinstance(parser.get(), dict):
        raise RunnerError(f"MONAI bundle {root}: the config must be a mapping")
    return parser


def instantiate(parser: ConfigParser, root: Path, item: str, *, trusted: bool) -> torch.nn.Module:
    """Build the config's ``item``, a torch module; untrusted bundles pass ``check_declarative`` first."""
    if not trusted:
        check_declarative(parser.get(), item)
    try:
        built = parser.get_parsed_content(item, instantiate=True)
    except Exception as exc:  # MONAI wraps whatever the target raises
        raise RunnerError(f"MONAI bundle {root}: cannot build {item}: {exc}") from exc
    if not isinstance(built, torch.nn.Module):
        raise RunnerError(f"MONAI bundle {root}: {item} is a {type(built).__name__}, not a torch module")
    return built


def load_network(parser: ConfigParser, weights: Path, *, trusted: bool) -> torch.nn.Module:
    """The bundle's ``network_def`` with ``models/model.pt`` loaded into it."""
    root = bundle_root(weights)
    network = instantiate(parser, root, NETWORK_ID, trusted=trusted)
    try:
        network.load_state_dict(load_state(weights))
    except RuntimeError as exc:
        raise RunnerError(f"MONAI bundle {root}: models/model.pt does not fit {NETWORK_ID}: {exc}") from exc
    return network


def load_state(weights: Path) -> dict[str, torch.Tensor]:
    """The state dict in ``models/model.pt`` (plain, or under a ``model`` key); tensors only."""
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors have many types
        raise RunnerError(f"cannot read bundle weights {weights}: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise RunnerError(f"bundle weights {weights} are not a state dict")
    return state


class BundlePredictor(TorchPredictor):
    """A MONAI bundle whose ``network_def`` maps ``(N, 1, D, H, W)`` to a same-shaped output."""

    def __init__(self, weights: Path, *, trusted: bool = False, threads: int = 1, device: str | None = None,
                 cpu_precision: CpuPrecision = "fp32", gpu_precision: GpuPrecision = "fp16") -> None:
        root = bundle_root(weights)
        network = load_network(read_config(root), weights, trusted=trusted)
        super().__init__(network, source=str(root), device=device or default_device(),
                         cpu_precision=cpu_precision, gpu_precision=gpu_precision, threads=threads)
        self.root = root
