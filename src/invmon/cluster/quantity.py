"""Kubernetes resource quantities (``500m``, ``2``, ``4Gi``): checked and compared."""

from __future__ import annotations

import re

# Kubernetes resource quantities as the project writes them: a number, then a decimal or binary
# suffix (``500m``, ``2``, ``4Gi``, ``100M``).
QUANTITY = re.compile(r"(\d+(\.\d+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?")
_SCALE = {
    "": 1,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


def quantity(text: str, what: str) -> float:
    """The value of a Kubernetes quantity (``4Gi``: 4 * 2**30); ValueError naming ``what``."""
    match = QUANTITY.fullmatch(str(text))
    if not match:
        raise ValueError(
            f"{what} {text!r} is not a Kubernetes quantity (a number with an optional suffix: "
            "500m, 2, 4Gi, 100M)"
        )
    return float(match.group(1)) * _SCALE[match.group(3) or ""]
