"""Which served LoRA adapter a request names (``--lora NAME=PATH``; the engine applies it per row).

A request names an adapter as its model -- ``NAME`` (the adapter name as the model id, as vLLM serves
LoRA adapters) or ``MODEL:NAME`` (as ``/v1/models`` lists them) -- or in mlx_lm.server's ``adapters``
field, by name or by the folder the server was given. Any other model name reaches the base model (as
without adapters); a ``MODEL:NAME`` whose NAME is not served, or an unknown ``adapters`` value, is a
404 in the API's error shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import APIError


def adapter_ids(adapters: dict[str, str], model_names: tuple[str, ...]) -> tuple[str, ...]:
    """Every model id an adapter is reached by: NAME and MODEL:NAME for each served model name."""
    return (*adapters, *(f"{m}:{name}" for m in model_names for name in adapters))


def adapter_for(req: Any, adapters: dict[str, str], model_names: tuple[str, ...]) -> str | None:
    """The name of the adapter ``req`` asks for (None: the base model), or a 404 APIError."""
    given = getattr(req, "adapters", None)
    served = ", ".join(repr(n) for n in adapters) or "none (start the server with --lora NAME=PATH)"
    if given:
        for name, path in adapters.items():
            if given == name or _same_folder(given, path):
                return name
        raise APIError(404, f"The LoRA adapter {given!r} is not served; adapters: {served}", param="adapters",
                       code="model_not_found")
    model = getattr(req, "model", None) or ""
    if model in adapters:
        return model
    base, sep, name = model.rpartition(":")
    if sep and adapters and base in model_names:
        if name in adapters:
            return name
        raise APIError(404, f"The model '{model}' does not exist: {base} has no LoRA adapter {name!r}; adapters: "
                       f"{served}", param="model", code="model_not_found")
    return None


def _same_folder(given: str, path: str) -> bool:
    try:
        return Path(given).expanduser().resolve() == Path(path)
    except (OSError, ValueError):
        return False
