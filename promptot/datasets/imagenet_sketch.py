"""ImageNetSketch: test-only, class folders named by wnid under imagenet-sketch/images/; labels follow the sorted folders
(0..999), names come from the ImageNet class names by wnid."""
from promptot.engine import DATASET_REGISTRY

from .imagenet_variants import ImageNetTestOnly


@DATASET_REGISTRY.register()
class ImageNetSketch(ImageNetTestOnly):
    dataset_dir = "imagenet-sketch"
    image_dir = "images"
    expected_counts = {"test": 50889, "classes": 1000}
    counts_verified = False
