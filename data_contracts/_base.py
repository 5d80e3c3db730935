"""Shared pydantic configuration for every contract."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Contract(BaseModel):
    """Base of all data contracts: frozen, no unknown fields, exact JSON round trip.

    NaN and infinities are written as the strings ``"NaN"``/``"Infinity"`` so that a NaN nodata
    value survives the trip through JSON.
    """

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        ser_json_inf_nan="strings",
        validate_default=True,
    )
