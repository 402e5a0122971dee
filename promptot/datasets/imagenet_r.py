"""ImageNetR: test-only, class folders named by wnid under imagenet-rendition/imagenet-r/; labels follow the sorted folders
(0..199), names come from the ImageNet class names by wnid."""
from promptot.engine import DATASET_REGISTRY

from .imagenet_variants import ImageNetTestOnly


@DATASET_REGISTRY.register()
class ImageNetR(ImageNetTestOnly):
    dataset_dir = "imagenet-rendition"
    image_dir = "imagenet-r"
    expected_counts = {"test": 30000, "classes": 200}
    counts_verified = False
