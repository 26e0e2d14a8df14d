"""One typed check of every Kubernetes object the project renders.

Manifests are built as plain dicts (that is what the API takes), then read into the generated
model classes field by field: :func:`check` takes the kubernetes and kserve clients' models
(OpenAPI-generator classes: Job, InferenceService) and the ``kubeflow`` package's pydantic models
(Katib Experiment, Trainer TrainJob) alike. A key the model does not define, or a value of the
wrong shape, is an error that names its path, so a misspelt field never reaches a cluster silently.
"""

from __future__ import annotations

import datetime
import re
import types
import typing


def check(data, model, path: str = "$"):
    """Read ``data`` (API JSON) into the typed ``model`` and return the instance; ValueError
    naming the first field the model does not accept.

    ``model`` is a class of the kubernetes or kserve client (or its name, such as ``"V1Job"``)
    or a pydantic model of the ``kubeflow`` package.
    """
    if isinstance(model, type) and hasattr(model, "model_fields"):
        return _check_pydantic(data, model, path)
    return _to_typed(data, model, path)


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


def _to_typed(data, klass, path: str = "$"):
    """Return ``data`` as an instance of the generated model ``klass`` (a class or its name).

    Raises ValueError naming the first field that the model does not accept.
    """
    if isinstance(klass, str):
        if match := re.fullmatch(r"list\[(.*)\]", klass):
            if not isinstance(data, list):
                raise ValueError(f"{path}: expected a list, got {type(data).__name__}")
            return [_to_typed(item, match.group(1), f"{path}[{i}]") for i, item in enumerate(data)]
        if match := re.fullmatch(r"dict\(([^,]*), (.*)\)", klass):
            if not isinstance(data, dict):
                raise ValueError(f"{path}: expected a mapping, got {type(data).__name__}")
            return {k: _to_typed(v, match.group(2), f"{path}.{k}") for k, v in data.items()}
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
        kwargs[attr] = _to_typed(value, klass.openapi_types[attr], f"{path}.{key}")
    try:
        return klass(**kwargs)
    except ValueError as err:  # required fields and enums are checked by the model itself
        raise ValueError(f"{path}: {err}") from None


def _check_pydantic(data, model_cls, path: str = "$"):
    """Read ``data`` (API JSON) into the pydantic model ``model_cls``, refusing unknown fields.

    The generated models ignore unknown keys; this walks every level first and raises ValueError
    naming the first key the model does not define. Returns the validated model instance.
    """
    _check_fields(data, model_cls, path)
    try:
        return model_cls.from_dict(data)
    except Exception as err:  # pydantic's ValidationError and the models' own ValueErrors
        raise ValueError(f"{path}: not a valid {model_cls.__name__}: {err}") from err


def _check_fields(data, annotation, path: str) -> None:
    from pydantic import BaseModel

    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            if arg is not type(None):
                _check_fields(data, arg, path)
        return
    if origin in (list, typing.List) and args and isinstance(data, list):  # noqa: UP006
        for i, item in enumerate(data):
            _check_fields(item, args[0], f"{path}[{i}]")
        return
    if origin in (dict, typing.Dict) and len(args) == 2 and isinstance(data, dict):  # noqa: UP006
        for key, item in data.items():
            _check_fields(item, args[1], f"{path}.{key}")
        return
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if "actual_instance" in annotation.model_fields:
            return  # a oneOf wrapper (such as Quantity) of scalars: from_dict validates it
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected an object ({annotation.__name__}), got {data!r}")
        by_alias = {(f.alias or name): f for name, f in annotation.model_fields.items()}
        for key, value in data.items():
            if key not in by_alias:
                allowed = ", ".join(sorted(by_alias))
                raise ValueError(
                    f"{path}.{key}: not a field of {annotation.__name__} (fields: {allowed})"
                )
            _check_fields(value, by_alias[key].annotation, f"{path}.{key}")
