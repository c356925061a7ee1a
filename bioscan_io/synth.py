"""Generator of realistic, synthetic BIOSCAN-5M-like datasets.

The generated folder has the layout, columns, types and awkward cases of the real
release (SPEC section 1), so that every other part of the library can be tested
and demonstrated without downloading the dataset::

    ROOT/bioscan5m/metadata/csv/BIOSCAN_5M_Insect_Dataset_metadata.csv
    ROOT/bioscan5m/metadata/jsonld/BIOSCAN_5M_Insect_Dataset_metadata.jsonld
    ROOT/bioscan5m/images/{package}/{split}/[{chunk}/]{processid}.jpg

What is realistic about it:

* eight splits following the paper's rules: ``pretrain`` records never have a
  species (and often no genus); ``train``/``val``/``test`` hold "seen" species
  with scientific binomial names (``val``/``test`` species all occur in
  ``train``); ``key_unseen``/``val_unseen``/``test_unseen`` hold placeholder
  species under scientific genera, disjoint from the seen species
  (``val_unseen``/``test_unseen`` species all occur in ``key_unseen``);
  ``other_heldout`` holds placeholder species whose genus is missing or is
  itself a placeholder.  The splits are scaled so that each one holds at least
  about 3 % of the records (and at least 3 records from ``n_records >= 24``);
* a consistent taxonomy of real arthropod orders, families, subfamilies and
  genera (Diptera dominate: Cecidomyiidae, Chironomidae, Phoridae, Sciaridae...),
  BINs (``BOLD:AAB1234``) that map to mostly one species, and a few category
  values that stress sort orders (case, spaces, hyphens, non-ASCII letters);
* DNA barcodes derived from per-BIN consensus sequences (records of a species
  differ by ~1 %), mostly 658 bases, with N runs, other IUPAC letters, long,
  short and very short barcodes at small rates;
* JPEG images of insect-like specimens on a light background (body ellipses,
  legs, antennae, translucent wings, shadow, blur, sensor noise, vignetting),
  whose pixel statistics are close to the dataset's normalisation constants.

Everything is seeded: the same arguments give byte-identical files, whatever the
number of worker processes.  The metadata does not depend on the image package.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .schema import (
    ARCHIVE_IMAGES_PREFIX,
    CHUNK_LENGTH,
    COLUMNS,
    DATASET_DIR,
    DEFAULT_PACKAGE,
    IMAGE_ARCHIVE_STEM,
    IMAGES_DIR,
    METADATA_CSV,
    METADATA_JSONLD,
    PACKAGES,
    SPLITS,
    BioscanError,
    chunk_of,
    image_relpath,
)

__all__ = [
    "GeneratedDataset",
    "generate",
    "pack_images",
    "demo_root",
    "generate_main",
    "SPLIT_FRACTIONS",
    "DEMO_RECORDS",
]

#: Version of the generated data; bump it when the output of a seed changes.
SYNTH_VERSION = 1

#: Share of the records that each split gets in a generated dataset.  The real
#: release is 91 % pretrain; here the labelled splits are scaled up so that a
#: small dataset still has a useful number of records in every split.
SPLIT_FRACTIONS = {
    "pretrain": 0.65,
    "train": 0.12,
    "val": 0.03,
    "test": 0.05,
    "key_unseen": 0.04,
    "val_unseen": 0.03,
    "test_unseen": 0.03,
    "other_heldout": 0.05,
}
assert tuple(SPLIT_FRACTIONS) == SPLITS and abs(sum(SPLIT_FRACTIONS.values()) - 1) < 1e-9

#: Number of records of the bundled demo dataset (seed 0, cropped_256).
DEMO_RECORDS = 300
DEMO_ENV = "BIOSCAN_IO_DEMO_DIR"
DEMO_DIRNAME = f"demo-v{SYNTH_VERSION}"

#: File written into ``ROOT/bioscan5m`` that marks a folder as generated here.
MARKER_NAME = ".bioscan_io_synth.json"

# Independent random streams (each seeded with (seed, stream)).
_S_TAXONOMY, _S_SPLITS, _S_RECORDS, _S_IDS, _S_BARCODE, _S_GEO, _S_AWKWARD = range(7)
_S_IMAGE = 100

# ----------------------------------------------------------------------------
# Taxonomy
# ----------------------------------------------------------------------------

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

# order|family|weight within the order|subfamily:genus,genus;subfamily:genus;-:genus
# ("-" = genera whose subfamily is not recorded).  Genus names are unique.
_FAMILY_TABLE = """
Diptera|Cecidomyiidae|32|Cecidomyiinae:Contarinia,Dasineura,Asphondylia,Lestodiplosis,Mycodiplosis,Clinodiplosis,Aphidoletes,Resseliella;Lestremiinae:Lestremia,Anarete,Campylomyza;Porricondylinae:Porricondyla,Winnertzia
Diptera|Chironomidae|14|Chironominae:Chironomus,Tanytarsus,Polypedilum,Paratanytarsus,Cladotanytarsus;Orthocladiinae:Orthocladius,Smittia,Bryophaenocladius,Pseudosmittia,Limnophyes,Metriocnemus,Cricotopus;Tanypodinae:Ablabesmyia,Procladius
Diptera|Phoridae|11|Metopininae:Megaselia,Puliciphora,Dohrniphora,Apocephalus;Phorinae:Phora,Diplonevra;Conicerinae:Conicera
Diptera|Sciaridae|10|-:Bradysia,Corynoptera,Scatopsciara,Lycoriella,Pseudolycoriella,Cratyna,Epidapus
Diptera|Ceratopogonidae|5|Forcipomyiinae:Forcipomyia,Atrichopogon;Ceratopogoninae:Culicoides,Stilobezzia;Dasyheleinae:Dasyhelea
Diptera|Psychodidae|4|Psychodinae:Psychoda,Clogmia,Pericoma,Psycha;Phlebotominae:Lutzomyia
Diptera|Mycetophilidae|3|Mycetophilinae:Mycetophila,Exechia,Allodia;Sciophilinae:Sciophila
Diptera|Sphaeroceridae|3|Limosininae:Leptocera,Spelobia,Opacifrons,Rachispoda;Copromyzinae:Copromyza
Diptera|Dolichopodidae|2.5|Dolichopodinae:Dolichopus;Sympycninae:Sympycnus,Teuchophorus;Medeterinae:Medetera,Thrypticus
Diptera|Chloropidae|2.5|Oscinellinae:Oscinella,Tricimba,Elachiptera;Chloropinae:Thaumatomyia
Diptera|Hybotidae|2|Tachydromiinae:Platypalpus,Tachypeza,Drapetis;Ocydromiinae:Oropezella
Diptera|Drosophilidae|1.5|Drosophilinae:Drosophila,Scaptomyza,Chymomyza;Steganinae:Leucophenga
Diptera|Muscidae|1.5|Coenosiinae:Coenosia,Lispocephala;Phaoniinae:Phaonia,Helina;Muscinae:Musca
Diptera|Agromyzidae|1.2|Phytomyzinae:Phytomyza,Liriomyza,Cerodontha;Agromyzinae:Agromyza
Diptera|Empididae|1|Empidinae:Empis,Rhamphomyia;Hemerodromiinae:Chelifera
Diptera|Anthomyiidae|1|Anthomyiinae:Delia,Anthomyia;Pegomyinae:Pegomya
Diptera|Ephydridae|0.8|Hydrelliinae:Hydrellia;Ephydrinae:Scatella
Diptera|Tachinidae|0.6|Exoristinae:Exorista,Lydella;Tachininae:Linnaemya
Diptera|Culicidae|0.5|Culicinae:Aedes,Culex;Anophelinae:Anopheles
Diptera|Simuliidae|0.5|Simuliinae:Simulium
Diptera|Syrphidae|0.4|Syrphinae:Syrphus,Toxomerus,Platycheirus;Eristalinae:Eristalis
Diptera|Limoniidae|0.4|Limoniinae:Dicranomyia,Limonia;Chioneinae:Molophilus
Diptera|Lauxaniidae|0.4|Homoneurinae:Homoneura;Lauxaniinae:Minettia
Diptera|Tipulidae|0.2|Tipulinae:Tipula,Nephrotoma
Hymenoptera|Ichneumonidae|14|Orthocentrinae:Orthocentrus,Stenomacrus,Megastylus;Campopleginae:Campoletis,Diadegma;Cryptinae:Gelis,Phygadeuon;Ichneumoninae:Ichneumon
Hymenoptera|Braconidae|14|Microgastrinae:Apanteles,Cotesia,Glyptapanteles,Microplitis;Alysiinae:Dacnusa,Aphaereta,Dinotrema;Opiinae:Opius;Euphorinae:Meteorus,Leiophron
Hymenoptera|Platygastridae|9|Platygastrinae:Platygaster,Synopeas;Sceliotrachelinae:Amitus
Hymenoptera|Diapriidae|7|Diapriinae:Trichopria,Spilomicrus;Belytinae:Pantoclis,Aclista
Hymenoptera|Eulophidae|7|Entedoninae:Chrysocharis,Closterocerus;Eulophinae:Diglyphus;Tetrastichinae:Aprostocetus
Hymenoptera|Mymaridae|6|-:Anaphes,Gonatocerus,Polynema,Alaptus
Hymenoptera|Scelionidae|5|Scelioninae:Telenomus,Trissolcus,Idris
Hymenoptera|Ceraphronidae|4|-:Aphanogmus,Ceraphron
Hymenoptera|Encyrtidae|3|Encyrtinae:Copidosoma,Ooencyrtus
Hymenoptera|Figitidae|3|Eucoilinae:Leptopilina,Kleidotoma
Hymenoptera|Formicidae|2.5|Myrmicinae:Pheidole,Solenopsis;Formicinae:Lasius,Camponotus;Dolichoderinae:Tapinoma
Hymenoptera|Trichogrammatidae|2|-:Trichogramma
Hymenoptera|Halictidae|0.6|Halictinae:Lasioglossum
Hymenoptera|Apidae|0.4|Apinae:Bombus,Ceratina
Hemiptera|Cicadellidae|40|Typhlocybinae:Empoasca,Erythroneura,Dikraneura;Deltocephalinae:Macrosteles,Balclutha,Exitianus
Hemiptera|Aphididae|14|Aphidinae:Aphis,Myzus,Rhopalosiphum
Hemiptera|Psyllidae|10|Psyllinae:Cacopsylla;Aphalarinae:Craspedolepta
Hemiptera|Miridae|10|Mirinae:Lygus;Phylinae:Plagiognathus
Hemiptera|Delphacidae|8|Delphacinae:Javesella
Hemiptera|Triozidae|6|-:Trioza
Hemiptera|Aleyrodidae|4|Aleyrodinae:Trialeurodes,Bemisia
Hemiptera|Anthocoridae|3|Anthocorinae:Orius
Coleoptera|Staphylinidae|35|Aleocharinae:Atheta,Aleochara;Staphylininae:Philonthus;Pselaphinae:Batrisodes;Tachyporinae:Tachyporus
Coleoptera|Ptiliidae|12|Acrotrichinae:Acrotrichis
Coleoptera|Curculionidae|12|Scolytinae:Xyleborus,Hypothenemus;Curculioninae:Curculio
Coleoptera|Chrysomelidae|12|Galerucinae:Phyllotreta,Longitarsus,Diabrotica;Cryptocephalinae:Cryptocephalus
Coleoptera|Latridiidae|8|Corticariinae:Cortinicara,Corticaria
Coleoptera|Nitidulidae|5|Carpophilinae:Carpophilus;Meligethinae:Brassicogethes
Coleoptera|Carabidae|4|Harpalinae:Amara,Harpalus;Trechinae:Bembidion
Coleoptera|Coccinellidae|4|Coccinellinae:Coccinella,Harmonia;Scymninae:Scymnus
Coleoptera|Cantharidae|3|Cantharinae:Rhagonycha
Coleoptera|Elateridae|3|Elaterinae:Agriotes
Lepidoptera|Gelechiidae|14|Gelechiinae:Gelechia,Aristotelia
Lepidoptera|Tortricidae|14|Olethreutinae:Epinotia,Cydia;Tortricinae:Choristoneura
Lepidoptera|Crambidae|12|Spilomelinae:Diaphania;Crambinae:Crambus
Lepidoptera|Geometridae|12|Larentiinae:Eupithecia;Ennominae:Macaria
Lepidoptera|Noctuidae|10|Noctuinae:Agrotis,Spodoptera
Lepidoptera|Erebidae|8|Arctiinae:Halysidota;Herminiinae:Idia
Lepidoptera|Cosmopterigidae|6|Cosmopteriginae:Cosmopterix
Lepidoptera|Tineidae|5|Tineinae:Tinea
Lepidoptera|Nymphalidae|2|Nymphalinae:Polygonia
Psocodea|Ectopsocidae|3|-:Ectopsocus
Psocodea|Lachesillidae|3|Lachesillinae:Lachesilla
Psocodea|Caeciliusidae|2|Caeciliusinae:Valenzuela
Psocodea|Liposcelididae|1|Liposcelidinae:Liposcelis
Thysanoptera|Thripidae|3|Thripinae:Frankliniella,Thrips
Thysanoptera|Phlaeothripidae|1|Phlaeothripinae:Haplothrips
Trichoptera|Hydroptilidae|2|Hydroptilinae:Hydroptila,Oxyethira
Trichoptera|Leptoceridae|1|Leptocerinae:Oecetis
Orthoptera|Gryllidae|1|Gryllinae:Gryllus
Orthoptera|Acrididae|1|Melanoplinae:Melanoplus
Neuroptera|Hemerobiidae|1|Hemerobiinae:Hemerobius
Neuroptera|Chrysopidae|1|Chrysopinae:Chrysoperla
Blattodea|Ectobiidae|1|Ectobiinae:Ectobius
Blattodea|Termitidae|1|Nasutitermitinae:Nasutitermes
Ephemeroptera|Baetidae|1|-:Baetis
Plecoptera|Nemouridae|1|Nemourinae:Nemoura
Dermaptera|Forficulidae|1|Forficulinae:Forficula
Mecoptera|Panorpidae|1|-:Panorpa
Odonata|Coenagrionidae|1|Ischnurinae:Ischnura
Strepsiptera|Halictophagidae|1|-:Halictophagus
Araneae|Linyphiidae|3|Erigoninae:Erigone,Walckenaeria;Linyphiinae:Tenuiphantes
Araneae|Theridiidae|1|Theridiinae:Theridion
Araneae|Salticidae|1|Salticinae:Pelegrina
Trombidiformes|Eupodidae|1|-:Eupodes
Trombidiformes|Anystidae|1|Anystinae:Anystis
Sarcoptiformes|Oppiidae|1|-:Oppiella
Sarcoptiformes|Scheloribatidae|1|-:Scheloribates
Mesostigmata|Laelapidae|1|-:Stratiolaelaps
Opiliones|Phalangiidae|1|Phalangiinae:Phalangium
Entomobryomorpha|Entomobryidae|2|Entomobryinae:Entomobrya;Seirinae:Seira
Entomobryomorpha|Isotomidae|1|Isotominae:Isotoma
Symphypleona|Sminthuridae|1|Sminthurinae:Sminthurus
Symphypleona|Bourletiellidae|1|-:Bourletiella
Poduromorpha|Hypogastruridae|1|-:Hypogastrura
Isopoda|Armadillidiidae|1|-:Armadillidium
Amphipoda|Talitridae|1|-:Orchestia
Stylommatophora|Agriolimacidae|1|-:Deroceras
"""

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

_IUPAC_AMBIGUOUS = np.frombuffer(b"RYKMSWBDHV", dtype=np.uint8)
_ACGT = np.frombuffer(b"ACGT", dtype=np.uint8)
_N = ord("N")
_CONSENSUS_LENGTH = 1500
_BARCODE_LENGTH = 658


@dataclass(frozen=True)
class _Genus:
    name: str | None  # None: genus not known
    subfamily: str | None
    family: str
    order: str
    klass: str
    phylum: str
    scientific: bool


@dataclass(eq=False)
class _Species:
    name: str
    genus: _Genus
    kind: str  # "seen", "unseen", "other", "hidden"
    weight: float
    bins: list = field(default_factory=list)
    home: int = 0  # index into _COUNTRIES
    colour: tuple = (80, 60, 40)
    size: float = 1.0


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


# ----------------------------------------------------------------------------
# Geography: country, share, home weight, [(province, share, lat, lon), ...]
# ----------------------------------------------------------------------------

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

_PROJECT_CODES = (
    "AACTA", "BBCNP", "CRPAB", "GMCRA", "GMPAK", "UPCCR", "BSCRB", "MGCRA",
    "BCLMN", "SSPAA", "GMZAF", "BIOCA", "ACGAZ", "CNGBA", "GMTHA", "RRMFI",
)
_WELL_ROWS = "ABCDEFGH"

# ----------------------------------------------------------------------------
# Image appearance per order: body plan and colour palette
# ----------------------------------------------------------------------------

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


def _stable_int(*parts) -> int:
    """A platform-independent hash of strings/ints (Python's hash() is salted)."""
    h = hashlib.blake2b("\x1f".join(map(str, parts)).encode("utf-8"), digest_size=8)
    return int.from_bytes(h.digest(), "little")


# ----------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class GeneratedDataset:
    """Summary of a dataset written by :func:`generate`.

    Attributes
    ----------
    root : pathlib.Path
        The dataset root (the folder that contains ``bioscan5m/``).
    n_records : int
        Number of records in the metadata.
    seed : int
        The seed it was generated with.
    package : str or None
        The image package written, or None when no images were written.
    split_counts : dict
        Records per split, in release order.
    csv_path, jsonld_path : pathlib.Path
        The two metadata files.
    images_dir : pathlib.Path or None
        ``ROOT/bioscan5m/images/{package}``, or None without images.
    n_images : int
        Number of image files written.
    image_bytes : int
        Total size of the image files.
    seconds : float
        Wall-clock time the generation took.
    """

    root: Path
    n_records: int
    seed: int
    package: str | None
    split_counts: dict
    csv_path: Path
    jsonld_path: Path
    images_dir: Path | None
    n_images: int
    image_bytes: int
    seconds: float

    def summary(self) -> str:
        """A one-line description of the dataset."""
        splits = ", ".join(f"{s} {c}" for s, c in self.split_counts.items())
        if self.package is None:
            imgs = "no images"
        else:
            mib = self.image_bytes / 2**20
            imgs = f"{self.n_images} {self.package} images ({mib:.1f} MiB)"
        return (
            f"generated {self.n_records} records ({splits}) and {imgs} "
            f"under {self.root} in {self.seconds:.1f} s"
        )


def generate(
    root,
    n_records: int = 10_000,
    seed: int = 0,
    package: str = DEFAULT_PACKAGE,
    workers: int | None = None,
    images: bool = True,
    progress: bool = False,
) -> GeneratedDataset:
    """Write a synthetic BIOSCAN-5M-like dataset under ``root``.

    Writes ``ROOT/bioscan5m/metadata/csv/...csv``, its JSON-LD twin and, with
    ``images=True``, one JPEG per record under
    ``ROOT/bioscan5m/images/{package}/{split}/[{chunk}/]{processid}.jpg``.
    Every chunk folder of the chunked splits is created (256 for ``pretrain``,
    16 for ``train`` and ``other_heldout``), so some stay empty; one
    ``pretrain`` chunk is always left empty.

    Parameters
    ----------
    root : str or os.PathLike
        Dataset root; created if missing.  A ``bioscan5m`` folder already in it
        must have been written by this function (it is then overwritten; images
        of an earlier generation with other arguments are removed).
    n_records : int, default 10_000
        Number of records, at least 1.  Each split gets at least ~3 % of them
        (at least 3 records from 24 records on).
    seed : int, default 0
        Non-negative seed.  The same ``(n_records, seed, package)`` gives
        byte-identical files; the metadata does not depend on ``package``.
    package : str, default "cropped_256"
        Image package to write.  ``"cropped_256"``: shorter side 256 px, longer
        side 256-400 px, the specimen fills the frame; ``"original_256"``:
        landscape 341x256 or 384x256 px, the specimen covers about
        ``area_fraction`` of the frame; ``"cropped"``: shorter side 512-768 px;
        ``"original_full"``: 1024x768 or 1152x768 px.
    workers : int or None, default None
        Worker processes that render images; None uses every CPU (one process
        for small datasets).  The output does not depend on it.
    images : bool, default True
        Whether to write the images (the metadata is always written).
    progress : bool, default False
        Show a progress bar on stderr while rendering images.

    Returns
    -------
    GeneratedDataset
        Paths and counts of what was written.

    Raises
    ------
    BioscanError
        If an argument is invalid, ``root`` is a file, or ``root`` holds a
        ``bioscan5m`` folder that this function did not write.

    Examples
    --------
    >>> from bioscan_io.synth import generate
    >>> ds = generate("/tmp/bioscan-demo", n_records=1000, seed=1)  # doctest: +SKIP
    >>> ds.split_counts["train"]  # doctest: +SKIP
    120
    """
    t0 = time.perf_counter()
    n_records = _check_int("n_records", n_records, minimum=1)
    seed = _check_int("seed", seed, minimum=0)
    if workers is not None:
        workers = _check_int("workers", workers, minimum=1)
    if package not in PACKAGES:
        raise BioscanError(f"unknown image package {package!r}; valid packages are {', '.join(PACKAGES)}")
    root = Path(os.fspath(root)).expanduser()
    if root.exists() and not root.is_dir():
        raise BioscanError(f"dataset root {root} exists and is not a folder")
    dataset_dir = root / DATASET_DIR
    marker_path = dataset_dir / MARKER_NAME
    previous = None
    if dataset_dir.exists():
        if not dataset_dir.is_dir():
            raise BioscanError(f"{dataset_dir} exists and is not a folder")
        if marker_path.is_file():
            try:
                previous = json.loads(marker_path.read_text("utf-8"))
            except (OSError, ValueError):
                previous = {}
        elif any(dataset_dir.iterdir()):
            raise BioscanError(
                f"{dataset_dir} holds a dataset that bioscan_io.synth did not write; "
                "choose an empty or new root"
            )
    try:
        dataset_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BioscanError(f"cannot create dataset folder {dataset_dir}: {e.strerror or e}") from None

    records, render = _make_records(n_records, seed)

    # Stale images of an earlier generation are removed, then the marker updated.
    params = {"generator": "bioscan_io.synth", "version": SYNTH_VERSION, "n_records": n_records, "seed": seed}
    packages = []
    if previous is not None:
        same = all(previous.get(k) == v for k, v in params.items())
        if not same:
            shutil.rmtree(root / IMAGES_DIR, ignore_errors=True)
        else:
            packages = [p for p in previous.get("packages", []) if p in PACKAGES]
    if images:
        shutil.rmtree(root / IMAGES_DIR / package, ignore_errors=True)
        packages = sorted(set(packages) - {package})
    _atomic_write_text(marker_path, json.dumps({**params, "packages": packages}, indent=1) + "\n")

    csv_path = root / METADATA_CSV
    jsonld_path = root / METADATA_JSONLD
    _write_csv(csv_path, records)
    _write_jsonld(jsonld_path, records)

    n_images = image_bytes = 0
    images_dir = None
    if images:
        images_dir = root / IMAGES_DIR / package
        _make_image_folders(images_dir)
        n_images, image_bytes = _render_all(root, records, render, seed, package, workers, progress)
        packages = sorted(set(packages) | {package})
        _atomic_write_text(marker_path, json.dumps({**params, "packages": packages}, indent=1) + "\n")

    counts = {s: 0 for s in SPLITS}
    for r in records:
        counts[r["split"]] += 1
    return GeneratedDataset(
        root=root,
        n_records=n_records,
        seed=seed,
        package=package if images else None,
        split_counts=counts,
        csv_path=csv_path,
        jsonld_path=jsonld_path,
        images_dir=images_dir,
        n_images=n_images,
        image_bytes=image_bytes,
        seconds=time.perf_counter() - t0,
    )


#: Timestamp of every member of a packed archive, so that packing is reproducible.
_ZIP_DATE = (2024, 6, 13, 0, 0, 0)


def pack_images(root, dest=None, package: str = DEFAULT_PACKAGE, parts: int = 1, prefix: bool = True,
                compression: int = zipfile.ZIP_STORED) -> list:
    """Pack a dataset's images into zip archives named and laid out as the published ones.

    Members are ``bioscan5m/images/{package}/{split}/[{chunk}/]{processid}.jpg``
    (with their folders), in name order. One archive is ``BIOSCAN_5M_{package}.zip``;
    ``parts > 1`` cuts the members, in order, into ``BIOSCAN_5M_{package}.01.zip``,
    ``.02.zip``... as the ``original_full`` and ``cropped`` packages are published.

    Parameters
    ----------
    root : str or os.PathLike
        Dataset root holding ``bioscan5m/images/{package}``.
    dest : str or os.PathLike, optional
        Folder to write the archives into (default: ``root``).
    package : str, default "cropped_256"
        Image package to pack.
    parts : int, default 1
        Number of archives.
    prefix : bool, default True
        Start member names with ``bioscan5m/`` (as published); else with ``images/``.
    compression : int, default zipfile.ZIP_STORED
        Compression method of the members.

    Returns
    -------
    list of pathlib.Path
        The archives written.
    """
    parts = _check_int("parts", parts, minimum=1)
    folder = Path(os.fspath(root)) / IMAGES_DIR / package
    if not folder.is_dir():
        raise BioscanError(f"no {package} images to pack: {folder} is not a folder")
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.jpg"))
    base = (ARCHIVE_IMAGES_PREFIX if prefix else "images/") + package + "/"
    stem = IMAGE_ARCHIVE_STEM.format(package=package)
    names = [f"{stem}.zip"] if parts == 1 else [f"{stem}.{i + 1:02d}.zip" for i in range(parts)]
    dest = Path(os.fspath(dest)) if dest is not None else Path(os.fspath(root))
    dest.mkdir(parents=True, exist_ok=True)
    archives = []
    for name, group in zip(names, np.array_split(np.arange(len(files)), parts)):
        with zipfile.ZipFile(dest / name, "w") as zf:
            folders = set()
            for rel in (files[k] for k in group):
                parent = base + rel.rpartition("/")[0] + "/"
                if parent not in folders:  # folder entries, as zip tools write them
                    folders.add(parent)
                    zf.writestr(zipfile.ZipInfo(parent, _ZIP_DATE), b"")
                info = zipfile.ZipInfo(base + rel, _ZIP_DATE)
                info.compress_type = compression
                zf.writestr(info, (folder / rel).read_bytes())
        archives.append(dest / name)
    return archives


def demo_root() -> Path:
    """The root of the bundled demo dataset, generated on first use.

    The demo dataset has :data:`DEMO_RECORDS` records (seed 0, ``cropped_256``
    images).  It lives in ``$BIOSCAN_IO_DEMO_DIR`` when that is set, else in
    ``~/.cache/bioscan-io/demo-v1`` (or a folder in the temporary directory when
    the cache cannot be written).  It is generated into a temporary sibling
    folder and renamed into place, so a reader never sees a half-written
    dataset and two processes may call this at once.

    Returns
    -------
    pathlib.Path
        The folder that contains ``bioscan5m/``.

    Raises
    ------
    BioscanError
        If ``$BIOSCAN_IO_DEMO_DIR`` names a folder that cannot be written or
        that holds something other than the demo dataset.
    """
    override = os.environ.get(DEMO_ENV)
    if override:
        return _ensure_demo(Path(override).expanduser())
    default = Path.home() / ".cache" / "bioscan-io" / DEMO_DIRNAME
    try:
        return _ensure_demo(default)
    except BioscanError:
        try:
            user = str(os.getuid())
        except AttributeError:  # pragma: no cover - Windows
            user = os.environ.get("USERNAME", "user")
        fallback = Path(tempfile.gettempdir()) / f"bioscan-io-{DEMO_DIRNAME}-{user}"
        return _ensure_demo(fallback)


def generate_main(argv=None) -> int:
    """Entry point of ``bioscan-io generate``: write a synthetic dataset.

    Parameters
    ----------
    argv : list of str, optional
        Arguments after ``generate``; default ``sys.argv[1:]``.

    Returns
    -------
    int
        Exit status: 0 on success, 1 on a user error (message on stderr).
    """
    parser = argparse.ArgumentParser(
        prog="bioscan-io generate",
        description="Write a synthetic BIOSCAN-5M-like dataset (metadata CSV, JSON-LD and JPEG images).",
    )
    parser.add_argument("root", help="dataset root folder (bioscan5m/ is written inside it)")
    parser.add_argument("--records", type=int, default=10_000, help="number of records (default 10000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--package", default=DEFAULT_PACKAGE, choices=PACKAGES, help=f"image package (default {DEFAULT_PACKAGE})"
    )
    parser.add_argument("--workers", type=int, default=None, help="image worker processes (default: all CPUs)")
    parser.add_argument("--no-images", action="store_true", help="write the metadata only")
    parser.add_argument("--progress", action="store_true", help="show a progress bar")
    args = parser.parse_args(argv)
    try:
        ds = generate(
            args.root,
            n_records=args.records,
            seed=args.seed,
            package=args.package,
            workers=args.workers,
            images=not args.no_images,
            progress=args.progress,
        )
    except BioscanError as e:
        print(f"bioscan-io generate: error: {e}", file=sys.stderr)
        return 1
    print(ds.summary())
    return 0


# ----------------------------------------------------------------------------
# Helpers: validation, files
# ----------------------------------------------------------------------------


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise BioscanError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise BioscanError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _write_csv(path: Path, records) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(COLUMNS)
            for r in records:
                w.writerow([_cell(r[c]) for c in COLUMNS])
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


#: JSON-LD context: Darwin Core terms where one fits, project terms otherwise.
JSONLD_CONTEXT = {
    "dwc": "http://rs.tdwg.org/dwc/terms/",
    "schema": "https://schema.org/",
    "xsd": "http://www.w3.org/2001/XMLSchema#",
    "bioscan": "https://biodiversitygenomics.net/5M-insects/terms#",
    "bold": "https://portal.boldsystems.org/record/",
    "processid": "dwc:occurrenceID",
    "sampleid": "dwc:materialSampleID",
    "taxon": "dwc:scientificName",
    "phylum": "dwc:phylum",
    "class": "dwc:class",
    "order": "dwc:order",
    "family": "dwc:family",
    "subfamily": "dwc:subfamily",
    "genus": "dwc:genus",
    "species": "bioscan:species",
    "dna_bin": "bioscan:dnaBin",
    "dna_barcode": "bioscan:dnaBarcode",
    "country": "dwc:country",
    "province_state": "dwc:stateProvince",
    "coord-lat": {"@id": "dwc:decimalLatitude", "@type": "xsd:double"},
    "coord-lon": {"@id": "dwc:decimalLongitude", "@type": "xsd:double"},
    "image_measurement_value": {"@id": "bioscan:imageMeasurementValue", "@type": "xsd:double"},
    "area_fraction": {"@id": "bioscan:areaFraction", "@type": "xsd:double"},
    "scale_factor": {"@id": "bioscan:scaleFactor", "@type": "xsd:double"},
    "inferred_ranks": {"@id": "bioscan:inferredRanks", "@type": "xsd:unsignedByte"},
    "split": "bioscan:split",
    "index_bioscan_1M_insect": {"@id": "bioscan:indexBioscan1MInsect", "@type": "xsd:integer"},
    "chunk": "bioscan:chunk",
    "Record": "dwc:Occurrence",
}


def _write_jsonld(path: Path, records) -> None:
    """One JSON document; the @graph array holds one record per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write('{"@context": ')
            f.write(json.dumps(JSONLD_CONTEXT, ensure_ascii=False))
            f.write(',\n"@graph": [\n')
            last = len(records) - 1
            for i, r in enumerate(records):
                doc = {"@id": "bold:" + r["processid"], "@type": "Record"}
                for c in COLUMNS:
                    doc[c] = r[c]
                f.write(json.dumps(doc, ensure_ascii=False, allow_nan=False))
                f.write(",\n" if i < last else "\n")
            f.write("]}\n")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# ----------------------------------------------------------------------------
# Metadata generation
# ----------------------------------------------------------------------------


def _rng(seed, *stream):
    return np.random.default_rng(np.random.SeedSequence([seed, *stream]))


def _split_counts(n: int) -> dict:
    """Records per split: a floor of min(3, n // 8) each, the rest by share."""
    base = min(3, n // len(SPLITS))
    rest = n - base * len(SPLITS)
    raw = {s: rest * f for s, f in SPLIT_FRACTIONS.items()}
    counts = {s: base + int(math.floor(v)) for s, v in raw.items()}
    left = n - sum(counts.values())
    # largest remainder; ties broken by release order
    order = sorted(SPLITS, key=lambda s: (-(raw[s] - math.floor(raw[s])), SPLITS.index(s)))
    for s in order[:left]:
        counts[s] += 1
    assert sum(counts.values()) == n
    return counts


class _Taxonomy:
    """Pools of species for each role, built lazily from one random stream."""

    def __init__(self, rng):
        self.rng = rng
        self.names = set()
        self.bins = set()
        self.genera = {}
        for order, family, _, genera in _FAMILIES:
            phylum, klass, _, _ = _ORDERS[order]
            for sub, g in genera:
                self.genera[g] = _Genus(g, sub, family, order, klass, phylum, True)
        # family choice weights: order share x family weight within the order
        fam_w = []
        for order, family, w, genera in _FAMILIES:
            total = sum(x[2] for x in _FAMILIES if x[0] == order)
            fam_w.append(_ORDERS[order][2] * w / total)
        self.family_p = np.array(fam_w) / sum(fam_w)
        self.placeholder_genera = {}  # family -> [genus]
        self.country_p = np.array([c[1] for c in _COUNTRIES])
        self.country_p /= self.country_p.sum()

    def _random_genus(self):
        order, family, _, genera = _FAMILIES[self.rng.choice(len(_FAMILIES), p=self.family_p)]
        # earlier genera of a family are commoner
        w = 1.0 / np.arange(1, len(genera) + 1) ** 0.8
        sub, g = genera[self.rng.choice(len(genera), p=w / w.sum())]
        return self.genera[g]

    def _new_bin(self):
        while True:
            a = "A" + "ABCDEF"[self.rng.integers(6)] + chr(65 + self.rng.integers(26))
            b = f"BOLD:{a}{self.rng.integers(10000):04d}"
            if b not in self.bins:
                self.bins.add(b)
                return b

    def _finish(self, sp: _Species) -> _Species:
        self.names.add(sp.name)
        r = self.rng.random()
        sp.bins = [self._new_bin()]
        if r < 0.10:
            sp.bins.append(self._new_bin())  # a species split across two BINs
        sp.home = int(self.rng.choice(len(_COUNTRIES), p=self.country_p))
        plan = _ORDERS[sp.genus.order][3]
        pal = _PALETTES[plan]
        # colour is mostly a property of the genus, with a per-species shift
        gbase = pal[_stable_int("colour", sp.genus.name or sp.genus.family) % len(pal)]
        shade = np.exp(self.rng.normal(0, 0.2))
        sp.colour = tuple(int(np.clip(c * shade + self.rng.normal(0, 4), 15, 200)) for c in gbase)
        sp.size = float(np.exp(self.rng.normal(0, 0.15)))
        return sp

    def _epithet(self):
        if self.rng.random() < 0.7:
            return _EPITHETS[self.rng.integers(len(_EPITHETS))]
        a, b = self.rng.choice(len(_EPITHETS), 2)
        stem = _EPITHETS[a][: max(3, len(_EPITHETS[a]) - 3)]
        return stem + _EPITHETS[b][-4:]

    def seen(self, weight, name=None):
        if name is not None:
            genus = self.genera[name.split()[0]]
        else:
            genus = self._random_genus()
            for _ in range(50):
                name = f"{genus.name} {self._epithet()}"
                if name not in self.names:
                    break
            else:  # pragma: no cover - astronomically unlikely
                name = f"{genus.name} {self._epithet()}{len(self.names)}"
        return self._finish(_Species(name, genus, "seen", weight))

    def _placeholder_suffix(self):
        r = self.rng.random()
        i = self.rng.integers
        if r < 0.30:
            return f"sp. BIOUG{i(10000, 99999)}"
        if r < 0.45:
            return f"Malaise{i(100, 9999)}"
        if r < 0.65:
            return f"sp. {i(1, 40)}"
        if r < 0.80:
            return f"sp. {i(1, 9)}{''.join(chr(65 + x) for x in i(0, 26, 2))}"
        if r < 0.90:
            return f"sp. CR{i(1, 60)}"
        return f"sp. nr. {_EPITHETS[i(len(_EPITHETS))]}"

    def unseen(self, weight, name=None):
        if name is not None:
            genus = self.genera[name.split()[0]]
        else:
            genus = self._random_genus()
            while True:
                name = f"{genus.name} {self._placeholder_suffix()}"
                if name not in self.names:
                    break
        return self._finish(_Species(name, genus, "unseen", weight))

    def other(self, weight):
        """A placeholder species whose genus is missing or a placeholder."""
        g = self._random_genus()
        sub = g.subfamily if self.rng.random() < 0.5 else None
        if self.rng.random() < 0.6:
            genus = _Genus(None, sub, g.family, g.order, g.klass, g.phylum, False)
            prefix = g.family
        else:
            pool = self.placeholder_genera.setdefault(g.family, [])
            if not pool or (len(pool) < 6 and self.rng.random() < 0.4):
                code = f"{chr(65 + len(pool))}" if self.rng.random() < 0.5 else f"{len(pool) + 1}"
                pool.append(_Genus(f"{g.family} gen. {code}", sub, g.family, g.order, g.klass, g.phylum, False))
            genus = pool[self.rng.integers(len(pool))]
            prefix = genus.name
        while True:
            name = f"{prefix} {self._placeholder_suffix()}"
            if name not in self.names:
                break
        return self._finish(_Species(name, genus, "other", weight))

    def hidden(self, weight):
        """A species only ever seen unlabelled (pretrain)."""
        r = self.rng.random()
        sp = self.seen(weight) if r < 0.55 else self.unseen(weight) if r < 0.85 else self.other(weight)
        sp.kind = "hidden"
        return sp


def _zipf(rng, k):
    """Long-tailed species abundances (log-normal)."""
    return rng.lognormal(0.0, 1.1, k)


def _pick(rng, pool, n):
    """n species drawn from pool by weight."""
    if n == 0:
        return []
    w = np.array([s.weight for s in pool])
    return [pool[i] for i in rng.choice(len(pool), size=n, p=w / w.sum())]


def _assign_species(counts, tax: _Taxonomy, rng):
    """Hidden true species of every record, per split (list in split order)."""
    out = {}
    n_train = counts["train"]
    seen_pool = [tax.seen(0.0, name) for name in _STRESS_SEEN_SPECIES]
    seen_pool += [tax.seen(0.0) for _ in range(max(4, n_train // 5))]
    for sp, w in zip(seen_pool, _zipf(rng, len(seen_pool))):
        sp.weight = w
    forced = seen_pool[: len(_STRESS_SEEN_SPECIES)] if n_train >= 8 else []
    out["train"] = forced + _pick(rng, seen_pool, n_train - len(forced))
    in_train = list(dict.fromkeys(out["train"])) or seen_pool[:1]
    for s in ("val", "test"):
        out[s] = _pick(rng, in_train, counts[s])

    n_key = counts["key_unseen"]
    unseen_pool = [tax.unseen(0.0, name) for name in _STRESS_UNSEEN_SPECIES]
    unseen_pool += [tax.unseen(0.0) for _ in range(max(3, n_key // 4))]
    for sp, w in zip(unseen_pool, _zipf(rng, len(unseen_pool))):
        sp.weight = w
    forced = unseen_pool[: len(_STRESS_UNSEEN_SPECIES)] if n_key >= 2 * len(_STRESS_UNSEEN_SPECIES) else []
    out["key_unseen"] = forced + _pick(rng, unseen_pool, n_key - len(forced))
    in_key = list(dict.fromkeys(out["key_unseen"])) or unseen_pool[:1]
    for s in ("val_unseen", "test_unseen"):
        out[s] = _pick(rng, in_key, counts[s])

    n_other = counts["other_heldout"]
    other_pool = [tax.other(0.0) for _ in range(max(3, n_other // 3))]
    for sp, w in zip(other_pool, _zipf(rng, len(other_pool))):
        sp.weight = w
    out["other_heldout"] = _pick(rng, other_pool, n_other)

    n_pre = counts["pretrain"]
    hidden_pool = [tax.hidden(0.0) for _ in range(max(4, n_pre // 6))]
    for sp, w in zip(hidden_pool, _zipf(rng, len(hidden_pool))):
        sp.weight = w
    # pretrain also holds unlabelled records of the labelled splits' species
    mix = hidden_pool + seen_pool + unseen_pool + other_pool
    wmix = np.array([s.weight for s in hidden_pool] + [0.3 * s.weight for s in seen_pool + unseen_pool + other_pool])
    out["pretrain"] = [mix[i] for i in rng.choice(len(mix), size=n_pre, p=wmix / wmix.sum())] if n_pre else []
    return out


# Deepest labelled rank of a pretrain record (then capped by what is known).
_PRETRAIN_DEPTH = (("class", 0.01), ("order", 0.06), ("family", 0.55), ("subfamily", 0.08), ("genus", 0.30))
_DEPTH_INDEX = {"phylum": 0, "class": 1, "order": 2, "family": 3, "subfamily": 4, "genus": 5, "species": 6}


def _labels(sp: _Species, depth: str) -> dict:
    g = sp.genus
    d = _DEPTH_INDEX[depth]
    lab = {
        "phylum": g.phylum,
        "class": g.klass if d >= 1 else None,
        "order": g.order if d >= 2 else None,
        "family": g.family if d >= 3 else None,
        "subfamily": g.subfamily if d >= 4 else None,
        "genus": g.name if d >= 5 else None,
        "species": sp.name if d >= 6 else None,
    }
    taxon = None
    for rank in ("species", "genus", "subfamily", "family", "order", "class", "phylum"):
        if lab[rank] is not None:
            taxon = lab[rank]
            break
    lab["taxon"] = taxon
    return lab


def _make_ids(n, rng, splits):
    """Unique processids and sampleids; one pretrain chunk is kept empty."""
    empty_chunk = f"{rng.integers(256):02x}"
    pids, sids = [], []
    used_p, used_s = set(), set()
    for i in range(n):
        while True:
            if rng.random() < 0.3:
                pid = f"BIOUG{rng.integers(10000, 99999)}-{_WELL_ROWS[rng.integers(8)]}{rng.integers(1, 13):02d}"
            else:
                code = _PROJECT_CODES[rng.integers(len(_PROJECT_CODES))]
                pid = f"{code}{rng.integers(1, 100000 if rng.random() < 0.5 else 5000)}-{rng.integers(12, 24)}"
            if pid in used_p:
                continue
            if splits[i] == "pretrain" and chunk_of(pid, "pretrain") == empty_chunk:
                continue
            break
        used_p.add(pid)
        pids.append(pid)
        while True:
            r = rng.random()
            if pid.startswith("BIOUG") and r < 0.7:
                sid = pid
            elif r < 0.75:
                sid = f"BIOUG{rng.integers(10000, 99999)}-{_WELL_ROWS[rng.integers(8)]}{rng.integers(1, 13):02d}"
            elif r < 0.9:
                sid = f"CCDB-{rng.integers(10000, 99999)}-{_WELL_ROWS[rng.integers(8)]}{rng.integers(1, 13):02d}"
            else:
                sid = f"GMP#{rng.integers(10000, 99999):05d}"
            if sid not in used_s:
                break
        used_s.add(sid)
        sids.append(sid)
    return pids, sids, empty_chunk


_CODON_W = np.array([0.35, 0.15, 2.5])  # 3rd codon positions mutate most
_CODON_W = _CODON_W / _CODON_W.mean()
_POS_W = np.resize(_CODON_W, _CONSENSUS_LENGTH)


class _Barcodes:
    """Consensus sequences: class -> order -> family -> genus -> species -> BIN."""

    def __init__(self, rng):
        self.rng = rng
        self.cache = {}

    def _mutate(self, seq, rate):
        mask = self.rng.random(len(seq)) < rate * _POS_W[: len(seq)]
        out = seq.copy()
        out[mask] = (out[mask] + self.rng.integers(1, 4, int(mask.sum()), dtype=np.uint8)) % 4
        return out

    def _get(self, key, parent, rate):
        seq = self.cache.get(key)
        if seq is None:
            if parent is None:  # AT-rich like insect COI
                seq = self.rng.choice(4, size=_CONSENSUS_LENGTH, p=[0.31, 0.15, 0.15, 0.39]).astype(np.uint8)
            else:
                seq = self._mutate(parent, rate)
            self.cache[key] = seq
        return seq

    def consensus(self, sp: _Species, bin_name: str | None):
        g = sp.genus
        root = self._get(("root",), None, 0)
        cls = self._get(("c", g.klass), root, 0.18)
        order = self._get(("o", g.order), cls, 0.14)
        fam = self._get(("f", g.family), order, 0.12)
        gen = self._get(("g", g.name or g.family + "?"), fam, 0.10)
        spc = self._get(("s", sp.name), gen, 0.05)
        return self._get(("b", sp.name, bin_name), spc, 0.015)

    def record(self, sp, bin_name, length):
        seq = self.consensus(sp, bin_name)[:length]
        return self._mutate(seq, 0.005)


def _quota(rng, n, rate, eligible):
    """About rate*n distinct indices among eligible, at least 1 when n >= 50."""
    k = int(round(rate * n))
    if n >= 50:
        k = max(k, 1)
    k = min(k, len(eligible))
    if k == 0:
        return set()
    return set(rng.choice(np.asarray(eligible), size=k, replace=False).tolist())


def _make_barcodes(n, species, bins, seed):
    rng = _rng(seed, _S_BARCODE)
    bc = _Barcodes(rng)
    arng = _rng(seed, _S_AWKWARD)
    idx = np.arange(n)
    perm = arng.permutation(n)
    # exclusive length classes
    k_long, k_short, k_vshort, k_near = (max(1 if n >= 50 else 0, int(round(r * n))) for r in (0.01, 0.04, 0.003, 0.04))
    lengths = np.full(n, _BARCODE_LENGTH)
    p = 0
    for k, lo, hi in ((k_long, 700, 1500), (k_short, 150, 600), (k_vshort, 10, 60), (k_near, 620, 661)):
        sel = perm[p : p + k]
        p += k
        lengths[sel] = arng.integers(lo, hi + 1, len(sel))
    long_enough = idx[lengths >= 100]
    n_inside = _quota(arng, n, 0.03, long_enough)
    n_trailing = _quota(arng, n, 0.03, long_enough)
    iupac = _quota(arng, n, 0.02, long_enough)
    leading = _quota(arng, n, 0.005, long_enough)
    out = []
    for i in range(n):
        L = int(lengths[i])
        codes = bc.record(species[i], bins[i], L)
        s = _ACGT[codes]
        if i in n_inside:
            run = int(arng.integers(1, 26))
            start = int(arng.integers(20, max(21, L - run - 20)))
            s[start : start + run] = _N
        if i in n_trailing:
            s[L - int(arng.integers(5, min(120, L // 3))) :] = _N
        if i in leading:
            s[: int(arng.integers(1, 30))] = _N
        if i in iupac:
            pos = arng.integers(0, L, int(arng.integers(1, 5)))
            s[pos] = _IUPAC_AMBIGUOUS[arng.integers(0, len(_IUPAC_AMBIGUOUS), len(pos))]
        out.append(s.tobytes().decode("ascii"))
    return out


def _make_records(n, seed):
    """The records (dicts with every column) and the per-record image parameters."""
    tax = _Taxonomy(_rng(seed, _S_TAXONOMY))
    srng = _rng(seed, _S_SPLITS)
    counts = _split_counts(n)
    per_split = _assign_species(counts, tax, srng)
    # interleave the splits in a random order, as in the published file
    split_of = np.array([s for s in SPLITS for _ in range(counts[s])], dtype=object)
    perm = srng.permutation(n)
    splits = split_of[perm].tolist()
    position = {s: 0 for s in SPLITS}
    species = []
    for s in splits:
        species.append(per_split[s][position[s]])
        position[s] += 1

    rrng = _rng(seed, _S_RECORDS)
    pids, sids, _ = _make_ids(n, _rng(seed, _S_IDS), splits)

    # labels
    depth_names = [d for d, _ in _PRETRAIN_DEPTH]
    depth_p = np.array([p for _, p in _PRETRAIN_DEPTH])
    depth_p /= depth_p.sum()
    labels = []
    bins = []
    for i in range(n):
        sp = species[i]
        if splits[i] == "pretrain":
            depth = depth_names[rrng.choice(len(depth_names), p=depth_p)]
            if depth == "genus" and sp.genus.name is None:
                depth = "subfamily"
        else:
            depth = "species"
        labels.append(_labels(sp, depth))
        b = sp.bins[0] if len(sp.bins) == 1 or rrng.random() < 0.7 else sp.bins[1]
        bins.append(b)
    # a few BINs shared by two species of a genus ("maps to mostly one species")
    by_genus = {}
    for sp in dict.fromkeys(species):
        if sp.genus.name:
            by_genus.setdefault(sp.genus.name, []).append(sp)
    shared = {}
    for gname, sps in by_genus.items():
        if len(sps) >= 2 and rrng.random() < 0.08:
            a, b = sps[0], sps[1]
            shared[b.name] = a.bins[0]
    bins = [shared.get(species[i].name, bins[i]) if rrng.random() < 0.5 else bins[i] for i in range(n)]
    barcodes = _make_barcodes(n, species, bins, seed)
    # records without a BIN (mostly pretrain); barcodes were made from the true BIN
    bin_missing = rrng.random(n) < np.where(np.array(splits) == "pretrain", 0.02, 0.003)

    # geography
    grng = _rng(seed, _S_GEO)
    country_p = tax.country_p
    geo = []
    for i in range(n):
        if grng.random() < 0.005:
            geo.append((None, None, None, None))
            continue
        ci = species[i].home if grng.random() < 0.7 else int(grng.choice(len(_COUNTRIES), p=country_p))
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

    # image measurements (area_fraction is what the images are drawn with)
    area = np.clip(rrng.beta(2.2, 12.0, n), 0.004, 0.8)
    img_missing = rrng.random(n) < 0.004
    area_missing = img_missing | (rrng.random(n) < 0.002)
    scale = np.exp(rrng.normal(1.05, 0.35, n))
    inferred = rrng.choice(5, size=n, p=[0.78, 0.12, 0.06, 0.03, 0.01])
    # BIOSCAN-1M index for ~22 % of the records, unique
    has_1m = np.flatnonzero(rrng.random(n) < 0.22)
    idx_1m = np.full(n, -1, dtype=np.int64)
    if len(has_1m):
        idx_1m[has_1m] = rrng.choice(1_128_313, size=len(has_1m), replace=False)

    records = []
    render = []
    for i in range(n):
        lab = labels[i]
        country, province, lat, lon = geo[i]
        chunk = chunk_of(pids[i], splits[i])
        rec = {
            "processid": pids[i],
            "sampleid": sids[i],
            "taxon": lab["taxon"],
            "phylum": lab["phylum"],
            "class": lab["class"],
            "order": lab["order"],
            "family": lab["family"],
            "subfamily": lab["subfamily"],
            "genus": lab["genus"],
            "species": lab["species"],
            "dna_bin": None if bin_missing[i] else bins[i],
            "dna_barcode": barcodes[i],
            "country": country,
            "province_state": province,
            "coord-lat": lat,
            "coord-lon": lon,
            "image_measurement_value": None if img_missing[i] else float(round(area[i] * 1024 * 768)),
            "area_fraction": None if area_missing[i] else float(round(area[i], 6)),
            "scale_factor": None if img_missing[i] else float(scale[i]),
            "inferred_ranks": int(min(inferred[i], sum(v is not None for v in lab.values()) - 1)),
            "split": splits[i],
            "index_bioscan_1M_insect": int(idx_1m[i]) if idx_1m[i] >= 0 else None,
            "chunk": chunk,
        }
        records.append(rec)
        sp = species[i]
        render.append((_PLAN_CODES[_ORDERS[sp.genus.order][3]], sp.colour, sp.size, float(area[i])))
    return records, render


def _geo_point(rng, cname, pname, lat0, lon0, allow_missing=True):
    if allow_missing and rng.random() < 0.08:
        pname = None
    if allow_missing and rng.random() < 0.04:
        return (cname, pname, None, None)
    d = int(rng.integers(2, 6))
    lat = float(round(float(np.clip(lat0 + rng.normal(0, 0.6), -89.9, 89.9)), d))
    lon = float(round(float(np.clip(lon0 + rng.normal(0, 0.8), -179.9, 179.9)), d))
    return (cname, pname, lat, lon)


# ----------------------------------------------------------------------------
# Image rendering
# ----------------------------------------------------------------------------

_T24 = np.linspace(0, 2 * np.pi, 24, endpoint=False)
_COS24, _SIN24 = np.cos(_T24), np.sin(_T24)


def _ell(cx, cy, rx, ry, rot=0.0):
    x, y = rx * _COS24, ry * _SIN24
    if rot:
        c, s = math.cos(rot), math.sin(rot)
        x, y = x * c - y * s, x * s + y * c
    return np.stack([cx + x, cy + y], 1)


def _specimen(plan, rng, colour):
    """Shapes of a specimen in body coordinates (head towards +x, length ~1).

    Returns a list of ``(kind, points, rgba, extra)`` drawn in order, where kind
    is "poly" (extra: outline colour or None) or "line" (extra: width in body
    lengths).
    """
    u = rng.uniform
    c = np.asarray(colour, dtype=float)

    c = [float(v) for v in c]

    def col(f=1.0, a=255, add=0.0):
        return tuple(min(255, max(0, int(v * f + add))) for v in c) + (int(a),)

    under, body, over = [], [], []  # legs/antennae, body, wings and head
    lw = u(0.014, 0.020)  # leg width in body lengths
    leg_col = col(0.8, 240)

    def legs(x0, x1, n_pairs, length, spread=1.0):
        xs = np.linspace(x0, x1, n_pairs)
        # angle from the body axis: front legs forward, hind legs backward
        base = np.linspace(0.95, 2.25, n_pairs) if n_pairs > 1 else np.array([1.6])
        for x, b in zip(xs, base):
            bend = (b - 1.6) * 0.55  # knees bend further towards the leg's direction
            for side in (-1, 1):
                a1 = b + u(-0.18, 0.18)
                a2 = a1 + bend + u(-0.2, 0.2)
                a3 = a2 + u(-0.25, 0.25)
                p0 = np.array([x, 0.0])
                p1 = p0 + length * 0.38 * spread * np.array([math.cos(a1), math.sin(a1)])
                p2 = p1 + length * 0.42 * np.array([math.cos(a2), math.sin(a2)])
                p3 = p2 + length * 0.2 * np.array([math.cos(a3), math.sin(a3)])
                pts = np.array([p0, p1, p2, p3]) * np.array([1.0, side])
                under.append(("line", pts[:3], leg_col, lw))
                under.append(("line", pts[2:], leg_col, lw * 0.7))

    def antennae(x, length, segs=3, curl=0.25):
        a0 = u(0.25, 0.6)
        for side in (-1, 1):
            p = np.array([x, 0.02])
            pts = [p]
            a = a0 + u(-0.1, 0.1)
            for _ in range(segs):
                a += u(-curl, curl * 1.5)
                p = p + (length / segs) * np.array([math.cos(a), math.sin(a)])
                pts.append(p)
            under.append(("line", np.array(pts) * np.array([1.0, side]), col(0.75, 235), lw * 0.65))

    def blob(layer, cx, cy, rx, ry, f=1.0, rot=0.0, shine=True):
        layer.append(("poly", _ell(cx, cy, rx, ry, rot), col(f), col(f * 0.6)))
        if shine:  # a soft dorsal highlight gives the body some volume
            layer.append(("poly", _ell(cx + rx * 0.08, cy - ry * 0.15, rx * 0.6, ry * 0.35, rot), col(f, 70, 45), None))

    def stripes(cx, rx, ry, k):
        for j in range(k):
            x = cx + rx * (0.6 - 1.2 * (j + 0.5) / k)
            h = ry * math.sqrt(max(0.0, 1 - ((x - cx) / rx) ** 2)) * 0.95
            body.append(("line", np.array([[x, -h], [x, h]]), col(0.55, 110), lw * 0.6))

    tint = (int(u(200, 225)), int(u(198, 220)), int(u(190, 215)))
    wing_fill = tint + (int(u(70, 110)),)
    e = int(u(70, 110))
    wing_edge = (e, int(e * 0.95), int(e * 0.9), int(u(70, 120)))

    def wing(x, angle, length, width, fill=None, veins=3):
        cx = x - math.cos(angle) * length * 0.5
        cy = math.sin(angle) * length * 0.5
        for side in (-1, 1):
            rot = (math.pi - angle) * side
            over.append(("poly", _ell(cx, cy * side, length / 2, width / 2, rot), fill or wing_fill, wing_edge))
            for v in range(veins):
                t = (v + 1) / (veins + 1) - 0.5
                tip = np.array([cx - math.cos(angle) * length * 0.42, cy + t * width * 0.5])
                pts = np.array([[x, 0.01], tip]) * np.array([1.0, side])
                over.append(("line", pts, wing_edge[:3] + (wing_edge[3] // 2,), lw * 0.3))

    bw = u(0.85, 1.2)  # body width factor
    if plan in ("fly", "generic"):
        legs(0.17, 0.03, 3, u(0.45, 0.8) if rng.random() < 0.7 else u(0.8, 1.1))
        ra = u(0.26, 0.36)
        blob(body, -0.20, 0, ra, 0.12 * bw)
        stripes(-0.20, ra, 0.12 * bw, 4)
        blob(body, 0.10, 0, 0.15, 0.115 * bw, 0.85)
        if plan == "fly" or rng.random() < 0.5:
            wing(0.12, u(0.25, 0.6), u(0.65, 0.95), u(0.2, 0.3))
        blob(over, 0.29, 0, 0.07, 0.09, 0.9, shine=False)
        eye = (int(u(90, 150)), int(u(25, 45)), int(u(20, 35)), 235) if rng.random() < 0.5 else col(0.45)
        for side in (-1, 1):
            over.append(("poly", _ell(0.30, side * 0.055, 0.04, 0.035), eye, None))
        antennae(0.34, u(0.10, 0.45))
    elif plan == "wasp":
        legs(0.15, 0.03, 3, u(0.5, 0.8))
        ra = u(0.22, 0.28)
        blob(body, -0.05 - ra, 0, ra, 0.13 * bw)
        stripes(-0.05 - ra, ra, 0.13 * bw, 3)
        body.append(("poly", _ell(-0.04, 0, 0.05, 0.025), col(0.8), None))  # petiole
        blob(body, 0.12, 0, 0.14, 0.10 * bw, 0.9)
        spread = u(0.2, 0.45)
        wing(0.13, spread, u(0.7, 0.95), u(0.2, 0.26))
        wing(0.08, spread + 0.2, u(0.45, 0.6), u(0.11, 0.15), veins=1)
        blob(over, 0.30, 0, 0.07, 0.09, 0.85, shine=False)
        antennae(0.35, u(0.35, 0.6), segs=4, curl=0.3)
    elif plan == "beetle":
        legs(0.15, -0.08, 3, u(0.45, 0.6))
        for side in (-1, 1):
            blob(body, -0.14, side * 0.07 * bw, 0.33, 0.08 * bw, 1.0 if side < 0 else 0.95)
        body.append(("line", np.array([[0.18, 0], [-0.46, 0]]), col(0.45, 220), lw * 0.5))
        blob(body, 0.23, 0, 0.09, 0.13 * bw, 0.85)
        blob(over, 0.35, 0, 0.05, 0.07, 0.8, shine=False)
        antennae(0.38, u(0.2, 0.35))
    elif plan == "bug":
        legs(0.12, -0.02, 3, u(0.45, 0.65))
        blob(body, -0.12, 0, 0.38, 0.15 * bw, 0.95)
        for side in (-1, 1):  # folded, roof-like forewings
            over.append(("poly", _ell(-0.16, side * 0.05, 0.36, 0.08 * bw, side * 0.05), col(1.05, 170, 10), col(0.6, 150)))
        blob(over, 0.24, 0, 0.08, 0.13 * bw, 0.9)
        blob(over, 0.34, 0, 0.05, 0.09, 0.85, shine=False)
        antennae(0.37, u(0.15, 0.35), segs=2)
    elif plan == "moth":
        legs(0.14, 0.02, 3, u(0.4, 0.55))
        blob(body, -0.18, 0, 0.3, 0.10 * bw, 0.9)
        stripes(-0.18, 0.3, 0.10 * bw, 4)
        blob(body, 0.12, 0, 0.13, 0.11 * bw, 0.85)
        spread = u(0.5, 1.0)
        wf = col(1.1, int(u(190, 235)), 20)
        wing(0.10, spread, u(0.8, 1.0), u(0.35, 0.5), fill=wf, veins=2)
        for side in (-1, 1):  # a spot on each forewing
            over.append(("poly", _ell(0.10 - math.cos(spread) * 0.5, side * math.sin(spread) * 0.5, 0.06, 0.04), col(0.5, 170), None))
        blob(over, 0.28, 0, 0.06, 0.08, 0.8, shine=False)
        antennae(0.32, u(0.3, 0.5), curl=0.15)
    elif plan == "spider":
        legs(0.2, 0.0, 4, u(0.8, 1.15), spread=1.2)
        blob(body, -0.24, 0, u(0.22, 0.3), 0.2 * bw)
        blob(body, 0.12, 0, 0.15, 0.13, 0.85)
        for side in (-1, 1):  # palps
            pts = np.array([[0.25, 0.04], [0.33, 0.08], [0.38, 0.06]]) * np.array([1.0, side])
            under.append(("line", pts, col(0.8, 235), lw))
    else:  # springtails and other soft, wingless bodies
        legs(0.12, -0.04, 3, u(0.3, 0.45))
        blob(body, -0.1, 0, 0.42, 0.13 * bw)
        stripes(-0.1, 0.42, 0.13 * bw, 6)
        blob(over, 0.36, 0, 0.07, 0.09, 0.85, shine=False)
        antennae(0.41, u(0.2, 0.4))
    return under + body + over


def _package_size(package, rng, aspect):
    """Canvas (width, height) for a package; aspect = wanted width/height."""
    if package in ("cropped_256", "cropped"):
        short = 256 if package == "cropped_256" else int(rng.integers(512, 769))
        a = float(np.clip(max(aspect, 1 / aspect), 1.0, 1.5625))
        long_ = int(round(short * a))
    else:
        short = 256 if package == "original_256" else 768
        # camera frames are always landscape
        return int(round(short * (4 / 3 if rng.random() < 0.8 else 1.5))), short
    if aspect >= 1:
        return long_, short
    return short, long_


def _render_image(package, rec_seed, plan_code, colour, size, area_fraction):
    """One specimen photo as a PIL image (deterministic for its arguments)."""
    from PIL import Image, ImageChops, ImageDraw, ImageFilter

    rng = np.random.default_rng(rec_seed)
    plan = _PLANS[plan_code]
    colour = np.clip(np.array(colour) * rng.uniform(0.8, 1.2) + rng.normal(0, 3, 3), 10, 220)
    if plan not in ("bug", "springtail"):  # browns and blacks: keep the hue warm
        colour = np.sort(colour)[::-1]
    shapes = _specimen(plan, rng, colour)
    theta = rng.uniform(0, 2 * np.pi)
    ct, st = math.cos(theta), math.sin(theta)
    rot = np.array([[ct, -st], [st, ct]])
    allpts = np.concatenate([s[1] for s in shapes]) @ rot.T
    lo, hi = allpts.min(0), allpts.max(0)
    ext = hi - lo
    cropped = package in ("cropped_256", "cropped")
    W, H = _package_size(package, rng, ext[0] / ext[1])
    if cropped:
        margin = rng.uniform(1.15, 1.45)
        s = min(W / (ext[0] * margin), H / (ext[1] * margin))
        off = np.array([W, H]) / 2 - (lo + hi) / 2 * s + rng.normal(0, 0.02, 2) * np.array([W, H])
    else:
        s = math.sqrt(area_fraction * W * H / (ext[0] * ext[1])) * size
        s = min(s, 0.9 * W / ext[0], 0.9 * H / ext[1])
        free = np.array([W, H]) - ext * s
        off = -lo * s + free * rng.uniform(0.15, 0.85, 2)

    # background: light grey with a soft gradient and vignetting, built small
    base = 219 + rng.normal(0, 6) + rng.normal(0, 2.0, 3)
    g = 12
    yy, xx = np.mgrid[0:g, 0:g] / (g - 1) - 0.5
    grad = rng.normal(0, 5) * xx + rng.normal(0, 5) * yy
    vign = 1 - rng.uniform(0.08, 0.22) * (xx**2 + yy**2) * 2
    small = (base[None, None, :] + grad[..., None]) * vign[..., None]
    small += rng.normal(0, 1.5, (g, g, 1))
    bg = Image.fromarray(np.clip(small, 0, 255).astype(np.uint8), "RGB").resize((W, H), Image.BICUBIC)

    pix = allpts * s + off
    cuts = np.cumsum([len(sh[1]) for sh in shapes])[:-1]

    # soft shadow: silhouette drawn at quarter size, blurred, scaled up
    q = 4
    sw, sh = max(1, W // q), max(1, H // q)
    mask = Image.new("L", (sw, sh), 0)
    md = ImageDraw.Draw(mask)
    shift = rng.normal(0, 0.012, 2) * np.array([W, H]) + np.array([0.006, 0.01]) * max(W, H)
    for (kind, _, rgba, width), pts in zip(shapes, np.split((pix + shift) / q, cuts)):
        if kind == "poly":
            md.polygon(pts.ravel().tolist(), fill=int(rgba[3] * 0.35))
        else:
            md.line(pts.ravel().tolist(), fill=60, width=max(1, int(width * s / q)))
    mask = mask.filter(ImageFilter.GaussianBlur(max(1.0, 0.035 * s / q))).resize((W, H), Image.BILINEAR)
    dark = Image.new("RGB", (W, H), tuple(int(v) for v in base * 0.55))
    img = Image.composite(dark, bg, mask)

    draw = ImageDraw.Draw(img, "RGBA")
    for (kind, _, rgba, extra), pts in zip(shapes, np.split(pix, cuts)):  # extra: outline or width
        p = pts.ravel().tolist()
        if kind == "poly":
            draw.polygon(p, fill=rgba, outline=extra)
        else:
            draw.line(p, fill=rgba, width=max(1, int(round(extra * s))), joint="curve")
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.1) * max(W, H) / 340))

    # sensor noise (luminance + chroma) from two small tiles of coprime sizes,
    # added around 128 by PIL, which clips
    sig = rng.uniform(1.5, 3.0)
    t1 = (rng.normal(128, sig, (64, 64, 1)) + rng.normal(0, sig * 0.4, (64, 64, 3))).astype(np.uint8)
    t2 = rng.normal(0, sig * 0.6, (45, 45, 1)).astype(np.int8)
    noise = np.tile(t1, (H // 64 + 1, W // 64 + 1, 1))[:H, :W]
    noise += np.tile(t2, (H // 45 + 1, W // 45 + 1, 1))[:H, :W].view(np.uint8)
    return ImageChops.add(img, Image.fromarray(noise, "RGB"), 1.0, -128)


def _image_seed(seed, index, package):
    return np.random.SeedSequence([seed, _S_IMAGE, PACKAGES.index(package), index])


def _render_batch(args):
    root, package, tasks = args
    n = size = 0
    for rel, rec_seed, plan, colour, sz, area in tasks:
        img = _render_image(package, rec_seed, plan, colour, sz, area)
        path = os.path.join(root, rel)
        img.save(path, "JPEG", quality=90)
        size += os.path.getsize(path)
        n += 1
    return n, size


def _make_image_folders(images_dir: Path):
    for split in SPLITS:
        d = images_dir / split
        d.mkdir(parents=True, exist_ok=True)
        k = CHUNK_LENGTH[split]
        if k:
            for c in range(16**k):
                (d / f"{c:0{k}x}").mkdir(exist_ok=True)


def _render_all(root, records, render, seed, package, workers, progress):
    tasks = []
    for i, (rec, (plan, colour, sz, area)) in enumerate(zip(records, render)):
        rel = image_relpath(rec["processid"], rec["split"], rec["chunk"], package)
        tasks.append((rel, _image_seed(seed, i, package), plan, colour, sz, area))
    n = len(tasks)
    if workers is None:
        try:
            cpus = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not on Linux
            cpus = os.cpu_count() or 1
        workers = 1 if n < 600 else min(cpus, 32)
    batch = 32 if package.endswith("256") else 8
    batches = [(str(root), package, tasks[i : i + batch]) for i in range(0, n, batch)]
    bar = None
    if progress:
        try:
            from tqdm import tqdm

            bar = tqdm(total=n, unit="img", desc=f"rendering {package}", file=sys.stderr)
        except ImportError:  # pragma: no cover
            bar = None
    total_n = total_size = 0
    try:
        if workers == 1 or len(batches) == 1:
            results = map(_render_batch, batches)
            for bn, bs in results:
                total_n += bn
                total_size += bs
                if bar is not None:
                    bar.update(bn)
        else:
            import multiprocessing as mp

            methods = mp.get_all_start_methods()
            ctx = mp.get_context("fork" if "fork" in methods else "spawn")
            with ctx.Pool(min(workers, len(batches))) as pool:
                for bn, bs in pool.imap_unordered(_render_batch, batches):
                    total_n += bn
                    total_size += bs
                    if bar is not None:
                        bar.update(bn)
    finally:
        if bar is not None:
            bar.close()
    return total_n, total_size


# ----------------------------------------------------------------------------
# Demo dataset
# ----------------------------------------------------------------------------

_DEMO_DONE = ".bioscan_io_demo_complete"


def _demo_complete(path: Path) -> bool:
    return (path / _DEMO_DONE).is_file() and (path / METADATA_CSV).is_file()


def _ensure_demo(final: Path) -> Path:
    if _demo_complete(final):
        return final
    if final.exists() and (not final.is_dir() or any(final.iterdir())):
        raise BioscanError(f"{final} exists but does not hold the bioscan-io demo dataset")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_tmp(final)
        tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
    except OSError as e:
        raise BioscanError(f"cannot write the demo dataset into {final.parent}: {e.strerror or e}") from None
    try:
        generate(tmp, n_records=DEMO_RECORDS, seed=0, package=DEFAULT_PACKAGE, workers=1)
        (tmp / _DEMO_DONE).write_text(f"bioscan-io demo dataset v{SYNTH_VERSION}\n", encoding="utf-8")
        for attempt in range(5):
            try:
                if final.is_dir() and not any(final.iterdir()):
                    final.rmdir()  # an empty folder (e.g. made for the env var) is replaced
                os.rename(tmp, final)
                break
            except OSError:
                if _demo_complete(final):  # another process got there first
                    break
                if attempt == 4:
                    raise
                time.sleep(0.05 * (attempt + 1))
    except OSError as e:
        raise BioscanError(f"cannot write the demo dataset into {final}: {e.strerror or e}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _remove_stale_tmp(final: Path, max_age_s: float = 3600.0) -> None:
    """Remove temporary demo folders left over by killed processes."""
    now = time.time()
    for p in final.parent.glob(f".{final.name}.tmp-*"):
        try:
            if now - p.stat().st_mtime > max_age_s:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass
