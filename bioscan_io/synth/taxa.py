"""The names the generator draws from: orders, families, subfamilies, genera, epithets.

Real arthropod taxa, weighted as in the release (Diptera dominate: Cecidomyiidae,
Chironomidae, Phoridae, Sciaridae...), and the body plan and colour palette each
order's specimens are drawn with.
"""

from __future__ import annotations

from pathlib import Path

__all__: list[str] = []

#: order -> (phylum, class, share of the records, body plan used for images)
_ORDERS = {
    "Diptera": ("Arthropoda", "Insecta", 0.555, "fly"),
    "Hymenoptera": ("Arthropoda", "Insecta", 0.165, "wasp"),
    "Hemiptera": ("Arthropoda", "Insecta", 0.075, "bug"),
    "Coleoptera": ("Arthropoda", "Insecta", 0.060, "beetle"),
    "Lepidoptera": ("Arthropoda", "Insecta", 0.045, "moth"),
    "Psocodea": ("Arthropoda", "Insecta", 0.022, "generic"),
    "Thysanoptera": ("Arthropoda", "Insecta", 0.016, "generic"),
    "Trichoptera": ("Arthropoda", "Insecta", 0.010, "moth"),
    "Orthoptera": ("Arthropoda", "Insecta", 0.005, "generic"),
    "Neuroptera": ("Arthropoda", "Insecta", 0.004, "fly"),
    "Blattodea": ("Arthropoda", "Insecta", 0.003, "beetle"),
    "Ephemeroptera": ("Arthropoda", "Insecta", 0.002, "fly"),
    "Plecoptera": ("Arthropoda", "Insecta", 0.002, "fly"),
    "Dermaptera": ("Arthropoda", "Insecta", 0.0015, "beetle"),
    "Mecoptera": ("Arthropoda", "Insecta", 0.001, "fly"),
    "Odonata": ("Arthropoda", "Insecta", 0.0005, "fly"),
    "Strepsiptera": ("Arthropoda", "Insecta", 0.0005, "generic"),
    "Araneae": ("Arthropoda", "Arachnida", 0.007, "spider"),
    "Trombidiformes": ("Arthropoda", "Arachnida", 0.004, "spider"),
    "Sarcoptiformes": ("Arthropoda", "Arachnida", 0.002, "spider"),
    "Mesostigmata": ("Arthropoda", "Arachnida", 0.001, "spider"),
    "Opiliones": ("Arthropoda", "Arachnida", 0.0005, "spider"),
    "Entomobryomorpha": ("Arthropoda", "Collembola", 0.004, "springtail"),
    "Symphypleona": ("Arthropoda", "Collembola", 0.0015, "springtail"),
    "Poduromorpha": ("Arthropoda", "Collembola", 0.0005, "springtail"),
    "Isopoda": ("Arthropoda", "Malacostraca", 0.0004, "springtail"),
    "Amphipoda": ("Arthropoda", "Malacostraca", 0.0003, "springtail"),
    "Stylommatophora": ("Mollusca", "Gastropoda", 0.0002, "springtail"),
}

#: The family table (``families.txt`` beside this file): order|family|weight within
#: the order|subfamily:genus,genus;subfamily:genus;-:genus ("-" = genera whose
#: subfamily is not recorded). Genus names are unique.
_FAMILY_TABLE = "\n".join(
    line for line in (Path(__file__).parent / "families.txt").read_text(encoding="utf-8").splitlines()
    if not line.startswith("#")
)

_EPITHETS = (
    "scalaris rufipes pallida nigra flavipes brevicornis longicornis fuscipennis "
    "albipes bicolor tristis minuta obscura elegans vulgaris communis sylvestris "
    "montana borealis australis occidentalis orientalis canadensis costaricensis "
    "africana pakistanensis nigripes maculata punctata striata lineata fasciata "
    "variegata pusilla gracilis robusta crassa tenuis hirta pilosa glabra nitida "
    "opaca aurea rufa lutea viridis cinerea grisea albida nigricans fuscata "
    "testacea ferruginea flavescens marginata cincta annulata dorsalis lateralis "
    "ventralis frontalis palpalis tibialis femorata plumosa setosa spinosa "
    "cornuta bidentata tridentata quadrata rotunda elongata brevis longa magna "
    "parva minor major agilis rapida tarda silvatica campestris palustris "
    "aquatica riparia arenaria saxatilis collina alpina nivalis hiemalis "
    "vernalis aestivalis autumnalis nocturna diurna solitaria socialis "
    "domestica rustica urbana insularis littoralis meridionalis septentrionalis "
    "thoracica abdominalis scutellaris humeralis apicalis basalis discalis "
    "costalis analis caudata furcata serrata dentata crenata undulata "
    "angulata hamata uncinata falcata clavata capitata cylindrica conica "
    "ovata oblonga depressa convexa plana curvata recta obliqua transversa"
).split()

# Category values that stress sort-order rules (case, space, hyphen, non-ASCII),
# forced into every dataset large enough to hold them.
_STRESS_SEEN_SPECIES = ("Polygonia c-album",)
_STRESS_UNSEEN_SPECIES = (
    "Megaselia sp. 3ZZ",
    "Megaselia sp. 3zz",
    "Megaselia sp. CR-17",
    "Megaselia sp. CR 17",
    "Megaselia sp. CR17",
    "Phaonia sp. Ménétriès",
)

# Image appearance per body plan: a palette of body colours.
_PALETTES = {
    "fly": [(45, 40, 35), (70, 55, 40), (110, 85, 50), (150, 120, 70), (35, 35, 38)],
    "wasp": [(30, 28, 26), (120, 75, 30), (160, 110, 40), (60, 45, 30)],
    "bug": [(95, 125, 60), (130, 140, 70), (110, 80, 45), (160, 150, 90)],
    "beetle": [(30, 25, 20), (85, 50, 25), (40, 70, 45), (130, 50, 30), (60, 45, 35)],
    "moth": [(125, 105, 80), (150, 130, 100), (95, 80, 65), (170, 150, 115)],
    "spider": [(110, 70, 40), (150, 95, 50), (70, 50, 35), (160, 120, 80)],
    "springtail": [(120, 115, 130), (150, 140, 110), (90, 90, 100), (170, 160, 140)],
    "generic": [(80, 60, 40), (110, 90, 60), (50, 45, 40), (140, 110, 70)],
}
_PLAN_CODES = {name: i for i, name in enumerate(_PALETTES)}
_PLANS = tuple(_PALETTES)


def _parse_families():
    families = []  # (order, family, weight, [(subfamily, genus), ...])
    seen_genera = set()
    for line in _FAMILY_TABLE.strip().splitlines():
        order, family, weight, groups = line.split("|")
        genera = []
        for group in groups.split(";"):
            sub, names = group.split(":")
            for g in names.split(","):
                assert g not in seen_genera, g
                seen_genera.add(g)
                genera.append((None if sub == "-" else sub, g))
        families.append((order, family, float(weight), genera))
    return families


_FAMILIES = _parse_families()
assert {f[0] for f in _FAMILIES} == set(_ORDERS)
