"""Physical constants in the units the simulator and readers use, taken from astropy."""

from __future__ import annotations

from astropy import constants as _const
from astropy import units as _u

__all__ = ["C_KMS"]

#: Speed of light [km/s].
C_KMS = float(_const.c.to_value(_u.km / _u.s))
