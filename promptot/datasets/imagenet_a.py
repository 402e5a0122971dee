"""ImageNetA: test-only, class folders named by wnid under imagenet-adversarial/imagenet-a/; labels follow the sorted folders
(0..199), names come from the ImageNet class names by wnid."""
from promptot.engine import DATASET_REGISTRY

from .imagenet_variants import ImageNetTestOnly


@DATASET_REGISTRY.register()
class ImageNetA(ImageNetTestOnly):
    dataset_dir = "imagenet-adversarial"
    image_dir = "imagenet-a"
    expected_counts = {"test": 7500, "classes": 200}
    counts_verified = False
