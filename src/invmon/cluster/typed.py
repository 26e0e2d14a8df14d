"""Check Kubernetes objects against the typed models of the kubernetes and kserve clients.

Manifests are built as plain dicts (that is what the API takes), then read into the generated
model classes field by field. A key the model does not define, or a value of the wrong shape, is
an error that names its path, so a misspelt field never reaches a cluster silently.
"""

from __future__ import annotations

import datetime
import re

_NATIVE = {
    "str": str,
    "int": int,
    "float": (int, float),
    "bool": bool,
    "object": object,
    "datetime": (str, datetime.datetime),
    "date": (str, datetime.date),
}


def _resolve(name: str):
    import kserve.models
    import kubernetes.client.models

    for module in (kserve.models, kubernetes.client.models):
        if hasattr(module, name):
            return getattr(module, name)
    raise ValueError(f"no typed model named {name}")


def to_typed(data, klass, path: str = "$"):
    """Return ``data`` as an instance of the generated model ``klass`` (a class or its name).

    Raises ValueError naming the first field that the model does not accept.
    """
    if isinstance(klass, str):
        if match := re.fullmatch(r"list\[(.*)\]", klass):
            if not isinstance(data, list):
                raise ValueError(f"{path}: expected a list, got {type(data).__name__}")
            return [to_typed(item, match.group(1), f"{path}[{i}]") for i, item in enumerate(data)]
        if match := re.fullmatch(r"dict\(([^,]*), (.*)\)", klass):
            if not isinstance(data, dict):
                raise ValueError(f"{path}: expected a mapping, got {type(data).__name__}")
            return {k: to_typed(v, match.group(2), f"{path}.{k}") for k, v in data.items()}
        if klass in _NATIVE:
            if data is not None and not isinstance(data, _NATIVE[klass]):
                raise ValueError(f"{path}: expected {klass}, got {type(data).__name__} {data!r}")
            return data
        klass = _resolve(klass)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object ({klass.__name__}), got {data!r}")
    by_json_name = {json_name: attr for attr, json_name in klass.attribute_map.items()}
    kwargs = {}
    for key, value in data.items():
        if key not in by_json_name:
            allowed = ", ".join(sorted(by_json_name))
            raise ValueError(f"{path}.{key}: not a field of {klass.__name__} (fields: {allowed})")
        attr = by_json_name[key]
        kwargs[attr] = to_typed(value, klass.openapi_types[attr], f"{path}.{key}")
    try:
        return klass(**kwargs)
    except ValueError as err:  # required fields and enums are checked by the model itself
        raise ValueError(f"{path}: {err}") from None
