"""Where the specimens were collected: countries, provinces and coordinates.

Country and province names are those of the real release, including the near
duplicates that stress sort orders and grouping (``Quebec``/``Québec``,
``KwaZulu-Natal``/``Kwazulu-Natal``).
"""

from __future__ import annotations

import numpy as np

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
    ("United States", 0.03, [("Florida", 0.4, 27.8, -81.7), ("Arizona", 0.3, 31.9, -110.8), ("Alaska", 0.3, 64.8, -147.7)]),
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


def _make_geography(n, homes, grng, country_p):
    """(country, province, lat, lon) of every record; ``homes`` indexes each one's home country.

    Most records come from their species' home country; the stress provinces are
    forced into every dataset large enough to hold them.
    """
    geo = []
    for i in range(n):
        if grng.random() < 0.005:
            geo.append((None, None, None, None))
            continue
        ci = homes[i] if grng.random() < 0.7 else int(grng.choice(len(_COUNTRIES), p=country_p))
        cname, _, provs = _COUNTRIES[ci]
        pp = np.array([p[1] for p in provs])
        pname, _, lat0, lon0 = provs[int(grng.choice(len(provs), p=pp / pp.sum()))]
        geo.append(_geo_point(grng, cname, pname, lat0, lon0))
    if n >= 4 * len(_STRESS_PROVINCES):
        chosen = grng.choice(n, size=len(_STRESS_PROVINCES), replace=False)
        for i, (cname, pname) in zip(chosen.tolist(), _STRESS_PROVINCES):
            provs = next(c[2] for c in _COUNTRIES if c[0] == cname)
            lat0, lon0 = next((p[2], p[3]) for p in provs if p[0] == pname)
            geo[i] = _geo_point(grng, cname, pname, lat0, lon0, allow_missing=False)
    return geo


def _geo_point(rng, cname, pname, lat0, lon0, allow_missing=True):
    if allow_missing and rng.random() < 0.08:
        pname = None
    if allow_missing and rng.random() < 0.04:
        return (cname, pname, None, None)
    d = int(rng.integers(2, 6))
    lat = float(round(float(np.clip(lat0 + rng.normal(0, 0.6), -89.9, 89.9)), d))
    lon = float(round(float(np.clip(lon0 + rng.normal(0, 0.8), -179.9, 179.9)), d))
    return (cname, pname, lat, lon)

