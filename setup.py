"""Builds the compiled kernels in src_ext/ (project metadata lives in pyproject.toml)."""

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension(
        "bioscan_io._kmer",
        ["src_ext/_kmer.pyx"],
        include_dirs=[np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=["-O3"],
    ),
    Extension(
        "bioscan_io._pixels",
        ["src_ext/_pixels.pyx"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=["-O3"],
    ),
    Extension(
        "bioscan_io._tar",
        ["src_ext/_tar.pyx"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=["-O3"],
    ),
    # Region JPEG decode (bioscan_io.jpeg_region) against libjpeg-turbo >= 2.1 (jpeglib.h, libjpeg).
    # Optional: without the headers or the library the build goes on without it, and images are
    # decoded by Pillow alone (the same crops; see bioscan_io/jpeg_region.py).
    Extension(
        "bioscan_io._jpeg",
        ["src_ext/_jpeg.pyx"],
        libraries=["jpeg"],
        extra_compile_args=["-O3"],
        optional=True,
    ),
]

ext_modules = cythonize(extensions, language_level=3)
for ext in ext_modules:  # cythonize's copies drop Extension(optional=...): set it again
    ext.optional = any(e.name == ext.name and getattr(e, "optional", False) for e in extensions)
setup(ext_modules=ext_modules)
