"""Errors the simulator raises on purpose."""

from __future__ import annotations

from appliance.kernel.errors import BadRequest


class SimInputError(BadRequest):
    """A request the simulator cannot answer: unknown model or GPU, bad shape, bad numbers."""

    code = "sim_invalid_input"
