"""Hand-crafted prompt templates per dataset, as tables keyed by ``DATASET.NAME``.

Several reference repositories use different tables for the same datasets (CoOp's zero-shot CLIP, KgCoOp's
knowledge-guided term, ProGrad's teacher), so each table is named after its source and trainers pick one with a
config key. A dataset class may also define ``prompt_template`` (e.g. the Fashion-MNIST datasets), which wins.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional

__all__ = ["TEMPLATE_TABLES", "COOP_TEMPLATES", "KGCOOP_TEMPLATES", "PROGRAD_TEMPLATES", "IMAGENET_TEMPLATES_SELECT",
           "IMAGENET_TEMPLATES",
           "dataset_template"]

#: CoOp's ``CUSTOM_TEMPLATES`` (zero-shot CLIP, ``trainers/zsclip.py``).
COOP_TEMPLATES: Dict[str, str] = {
    "OxfordPets": "a photo of a {}, a type of pet.",
    "OxfordFlowers": "a photo of a {}, a type of flower.",
    "FGVCAircraft": "a photo of a {}, a type of aircraft.",
    "DescribableTextures": "{} texture.",
    "EuroSAT": "a centered satellite photo of {}.",
    "StanfordCars": "a photo of a {}.",
    "Food101": "a photo of {}, a type of food.",
    "SUN397": "a photo of a {}.",
    "Caltech101": "a photo of a {}.",
    "UCF101": "a photo of a person doing {}.",
    "ImageNet": "a photo of a {}.",
    "ImageNetSketch": "a photo of a {}.",
    "ImageNetV2": "a photo of a {}.",
    "ImageNetA": "a photo of a {}.",
    "ImageNetR": "a photo of a {}.",
}

#: KgCoOp's ``CUSTOM_TEMPLATES`` (htyao89/KgCoOp ``trainers/kgcoop.py``): the hand-crafted prompts of the frozen class
#: features of the knowledge-guided term. Differs from CoOp's table for DescribableTextures only.
KGCOOP_TEMPLATES: Dict[str, str] = {
    **COOP_TEMPLATES,
    "DescribableTextures": "a photo of a {}, a type of texture.",
}

#: ProGrad's ``CUSTOM_TEMPLATES`` (BeierZhu/Prompt-align ``ProGrad.public/trainers/prograd.py``): the zero-shot
#: teacher's prompts, and (minus the trailing " {}.") its context initialisation with ``CTX_INIT``. The category
#: phrase comes first ("a type of pet, a photo of a {}.") so that the class name ends the prompt.
PROGRAD_TEMPLATES: Dict[str, str] = {
    **COOP_TEMPLATES,
    "OxfordPets": "a type of pet, a photo of a {}.",
    "OxfordFlowers": "a type of flower, a photo of a {}.",
    "FGVCAircraft": "a type of aircraft, a photo of a {}.",
    "DescribableTextures": "a texture of {}.",
    "Food101": "a type of food, a photo of {}.",
}

#: The ImageNet templates CoOp's ``ZeroshotCLIP2`` ensembles (a selected subset of CLIP's 80).
IMAGENET_TEMPLATES_SELECT: List[str] = [
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
]

#: The 60 templates PromptSRC averages into its frozen "textual diversity" class features, in the order of PromptSRC's
#: ``trainers/imagenet_templates.py`` (drawn from CLIP's ImageNet prompt-engineering notebook).
IMAGENET_TEMPLATES: List[str] = [
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
]

#: name -> table, selectable from configs.
TEMPLATE_TABLES: Dict[str, Mapping[str, str]] = {"coop": COOP_TEMPLATES, "kgcoop": KGCOOP_TEMPLATES,
                                                 "prograd": PROGRAD_TEMPLATES}

DEFAULT_TEMPLATE = "a photo of a {}."


def dataset_template(dataset_name: str, dataset: Optional[object] = None, table: str = "coop",
                     override: str = "") -> str:
    """The template for a dataset: ``override`` if given, else the dataset object's ``prompt_template``, else
    ``TEMPLATE_TABLES[table][dataset_name]``, else ``"a photo of a {}."``."""
    if override:
        return override
    own = getattr(dataset, "prompt_template", None)
    if own:
        return own
    if table not in TEMPLATE_TABLES:
        from .errors import ConfigError

        raise ConfigError(f"unknown template table {table!r}; known: {sorted(TEMPLATE_TABLES)}")
    return TEMPLATE_TABLES[table].get(dataset_name, DEFAULT_TEMPLATE)
