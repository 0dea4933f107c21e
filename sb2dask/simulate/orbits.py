"""Circular binary orbits: semi-amplitudes and radial velocities (pure numpy)."""

from __future__ import annotations

import numpy as np

__all__ = ["K_CONSTANT", "k_sum_max", "semi_amplitudes", "radial_velocities"]

#: (2πG·M_sun / 1 day)^(1/3) in km/s, so that for a circular orbit
#: K1+K2 = K_CONSTANT · (M_tot/M_sun)^(1/3) · (P/d)^(-1/3) · sin i.
#: astropy's constants give 212.908; the rounded value stays because every simulated set (the
#: shipped models' included) was drawn with it, and the period redraws depend on it.
K_CONSTANT = 212.9


def k_sum_max(m_total, period_days) -> np.ndarray:
    """K1+K2 [km/s] of a circular, edge-on (sin i = 1) orbit of total mass [M_sun] and period
    [d]."""
    return K_CONSTANT * np.cbrt(np.asarray(m_total, float) / np.asarray(period_days, float))


def semi_amplitudes(k_sum, m1, m2) -> tuple[np.ndarray, np.ndarray]:
    """Split K1+K2 by K1/K2 = M2/M1; returns (K1, K2) [km/s]."""
    m1, m2 = np.asarray(m1, float), np.asarray(m2, float)
    k_sum = np.asarray(k_sum, float)
    return k_sum * m2 / (m1 + m2), k_sum * m1 / (m1 + m2)


def radial_velocities(k1, k2, phase, gamma=0.0) -> tuple[np.ndarray, np.ndarray]:
    """RVs [km/s] of both components of a circular orbit at orbital ``phase`` (0-1, 0 = maximum
    of component 1), around the systemic velocity ``gamma``."""
    c = np.cos(2.0 * np.pi * np.asarray(phase, float))
    return gamma + np.asarray(k1) * c, gamma - np.asarray(k2) * c
