"""Where the specimens were collected: countries, provinces and coordinates.

Country and province names are those of the real release, including the near
duplicates that stress sort orders and grouping (``Quebec``/``Québec``,
``KwaZulu-Natal``/``Kwazulu-Natal``).
"""

from __future__ import annotations

import math
from array import array

import numpy as np

from .common import _cdf, _draw_index

__all__: list[str] = []

# country, share of the records, [(province, share within the country, lat, lon), ...]
_COUNTRIES = [
    ("Canada", 0.42, [
        ("Ontario", 0.45, 44.5, -79.6), ("Quebec", 0.08, 46.8, -71.2),
        ("Québec", 0.03, 45.5, -73.6), ("British Columbia", 0.12, 49.3, -123.1),
        ("Alberta", 0.06, 53.5, -113.5), ("Nova Scotia", 0.05, 44.7, -63.6),
        ("Manitoba", 0.05, 49.9, -97.1), ("Yukon Territory", 0.04, 60.7, -135.1),
        ("Nunavut", 0.02, 63.7, -68.5), ("Newfoundland and Labrador", 0.03, 47.6, -52.7)]),
    ("Costa Rica", 0.24, [
        ("Guanacaste", 0.35, 10.8, -85.6), ("Alajuela", 0.25, 10.9, -85.1),
        ("Puntarenas", 0.15, 8.9, -83.4), ("Limón", 0.12, 10.0, -83.0),
        ("Heredia", 0.08, 10.4, -84.0), ("San José", 0.05, 9.9, -84.1)]),
    ("South Africa", 0.07, [
        ("KwaZulu-Natal", 0.35, -28.5, 31.0), ("Kwazulu-Natal", 0.05, -29.6, 30.4),
        ("Western Cape", 0.3, -33.9, 18.8), ("Limpopo", 0.15, -23.9, 29.5),
        ("Mpumalanga", 0.15, -25.5, 30.9)]),
    ("Pakistan", 0.05, [
        ("Punjab", 0.4, 31.5, 73.1), ("Sindh", 0.2, 25.9, 68.5),
        ("Khyber Pakhtunkhwa", 0.25, 34.5, 71.9), ("Islamabad Capital Territory", 0.15, 33.7, 73.1)]),
    ("Thailand", 0.04, [
        ("Chiang Mai", 0.5, 18.8, 98.9), ("Nakhon Ratchasima", 0.3, 14.4, 101.4), ("Loei", 0.2, 17.4, 101.6)]),
    ("Germany", 0.03, [
        ("Bavaria", 0.5, 48.1, 11.6), ("Baden-Württemberg", 0.3, 48.5, 9.0), ("Saxony", 0.2, 51.1, 13.7)]),
    ("Finland", 0.02, [("Uusimaa", 0.6, 60.2, 24.9), ("Lapland", 0.4, 67.5, 26.6)]),
    ("Argentina", 0.02, [
        ("Tucumán", 0.5, -26.8, -65.2), ("Misiones", 0.3, -27.4, -55.5), ("Buenos Aires", 0.2, -34.6, -58.4)]),
    ("Kenya", 0.02, [("Nairobi", 0.5, -1.3, 36.8), ("Kakamega", 0.5, 0.3, 34.8)]),
    ("Australia", 0.02, [("Queensland", 0.6, -19.3, 146.8), ("New South Wales", 0.4, -33.9, 151.2)]),
    ("France", 0.01, [("Provence-Alpes-Côte d'Azur", 0.7, 43.9, 6.2), ("Bretagne", 0.3, 48.1, -2.8)]),
    ("United States", 0.03, [("Florida", 0.4, 27.8, -81.7), ("Arizona", 0.3, 31.9, -110.8),
                             ("Alaska", 0.3, 64.8, -147.7)]),
    ("Papua New Guinea", 0.01, [("Morobe", 1.0, -6.7, 146.9)]),
    ("Madagascar", 0.01, [("Toamasina", 0.5, -18.1, 49.4), ("Toliara", 0.5, -23.4, 43.7)]),
    ("Bonaire, Sint Eustatius and Saba", 0.005, [("Bonaire", 1.0, 12.2, -68.3)]),
    ("Saudi Arabia", 0.005, [("Asir", 1.0, 18.2, 42.5)]),
]
_STRESS_PROVINCES = (
    ("Canada", "Quebec"), ("Canada", "Québec"), ("South Africa", "KwaZulu-Natal"),
    ("South Africa", "Kwazulu-Natal"), ("Costa Rica", "Limón"),
    ("France", "Provence-Alpes-Côte d'Azur"), ("Germany", "Baden-Württemberg"),
    ("Bonaire, Sint Eustatius and Saba", "Bonaire"),
)


def _country_shares():
    p = np.array([c[1] for c in _COUNTRIES])
    p /= p.sum()
    return p


def _province_cdf(provs):
    pp = np.array([p[1] for p in provs])
    return _cdf(pp / pp.sum())


# Province draws by country: the cumulative shares that Generator.choice searches.
_PROVINCE_CDFS = [_province_cdf(provs) for _, _, provs in _COUNTRIES]


def _make_geography(homes, grng, country_p):
    """Where every record was collected, as compact columns; ``homes`` indexes each one's home country.

    Returns ``(country, province, lat, lon)``: indices into ``_COUNTRIES`` and
    into its provinces (int8, -1: missing), and coordinates (float64, NaN:
    missing).  Most records come from their species' home country; the stress
    provinces are forced into every dataset large enough to hold them.
    """
    n = len(homes)
    country, province, lat, lon = array("b"), array("b"), array("d"), array("d")
    country_cdf, random, nan = _cdf(country_p), grng.random, math.nan
    # a slice at a time: a list of millions of homes would take tens of megabytes
    for home in (h for start in range(0, n, 1 << 16) for h in homes[start : start + (1 << 16)].tolist()):
        if random() < 0.005:
            ci, pi, la, lo = -1, -1, nan, nan
        else:
            ci = home if random() < 0.7 else _draw_index(grng, country_cdf)
            pi = _draw_index(grng, _PROVINCE_CDFS[ci])
            pi, la, lo = _geo_point(grng, ci, pi)
        country.append(ci)
        province.append(pi)
        lat.append(la)
        lon.append(lo)
    geo = tuple(np.frombuffer(a, dtype=a.typecode) for a in (country, province, lat, lon))
    if n >= 4 * len(_STRESS_PROVINCES):
        chosen = grng.choice(n, size=len(_STRESS_PROVINCES), replace=False)
        for i, (cname, pname) in zip(chosen.tolist(), _STRESS_PROVINCES):
            ci = next(k for k, c in enumerate(_COUNTRIES) if c[0] == cname)
            pi = next(k for k, p in enumerate(_COUNTRIES[ci][2]) if p[0] == pname)
            geo[0][i] = ci
            geo[1][i], geo[2][i], geo[3][i] = _geo_point(grng, ci, pi, allow_missing=False)
    return geo


def _geo_point(rng, ci, pi, allow_missing=True):
    """Province (-1: not recorded) and coordinates (NaN: none) of a record from province ``pi`` of country ``ci``."""
    _, _, lat0, lon0 = _COUNTRIES[ci][2][pi]
    if allow_missing and rng.random() < 0.08:
        pi = -1
    if allow_missing and rng.random() < 0.04:
        return pi, math.nan, math.nan
    d = int(rng.integers(2, 6))
    # min/max rather than np.clip: the same floats, a tenth of the time
    lat = round(min(max(lat0 + rng.normal(0, 0.6), -89.9), 89.9), d)
    lon = round(min(max(lon0 + rng.normal(0, 0.8), -179.9), 179.9), d)
    return pi, lat, lon


def _place_names(ci, pi):
    """Country and province names of indices from :func:`_make_geography` (None where missing)."""
    if ci < 0:
        return None, None
    country = _COUNTRIES[ci]
    return country[0], country[2][pi][0] if pi >= 0 else None
