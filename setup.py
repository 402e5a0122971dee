"""Installable library of the promptot prompt-learning toolkit.

Only the ``promptot`` package is installed; ``trainers/``, ``datasets/`` and
``train.py`` stay at the repository root (as in the CoOp family) so that no
generic top-level name such as ``datasets`` lands in site-packages.
"""
from setuptools import find_packages, setup

setup(
    name="promptot",
    version="0.1.0",
    description="Prompt learning for CLIP (CoOp, CoCoOp, PLOT, ALIGN, ...) as a Dassl plugin with batched OT heads",
    python_requires=">=3.9",
    packages=find_packages(include=["promptot", "promptot.*"]),
    include_package_data=True,
    package_data={"promptot": ["assets/*", "assets/**/*"]},
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "open_clip_torch>=2.23",  # CLIP.text_pool_type and the ViT pooling attributes promptot.clip.prompted reads
        "yacs>=0.1.8",
        "tqdm",
        "tabulate",
        "matplotlib",
        "numpy",
        "Pillow",
        "scikit-learn",
        "scipy",
        "tensorboard",
    ],
    # POT is the reference the OT tests compare against; the library itself does not import it.
    extras_require={"dev": ["pytest>=7", "POT>=0.9", "hypothesis>=6"],
                    "slurm": ["submitit>=1.5"]},  # python -m promptot.sweep --slurm-backend submitit
    entry_points={"console_scripts": ["promptot-datasets=promptot.datasets.__main__:cli"]},
)
