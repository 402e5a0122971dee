"""The built-in dataset classes (importing this module registers them) and the protocol lists."""
from .caltech101 import Caltech101
from .dtd import DescribableTextures
from .eurosat import EuroSAT
from .fashion_mnist import FashionMNIST, FashionMNISTShift
from .fgvc_aircraft import FGVCAircraft
from .food101 import Food101
from .image_folder import ImageFolder
from .imagenet import ImageNet
from .imagenet_a import ImageNetA
from .imagenet_r import ImageNetR
from .imagenet_sketch import ImageNetSketch
from .imagenetv2 import ImageNetV2
from .oxford_flowers import OxfordFlowers
from .oxford_pets import OxfordPets
from .stanford_cars import StanfordCars
from .sun397 import SUN397
from .ucf101 import UCF101

# The 11 few-shot / base-to-new datasets, then the 4 ImageNet variants (config stems in configs/datasets/).
FEWSHOT_DATASETS = ["ImageNet", "Caltech101", "OxfordPets", "StanfordCars", "OxfordFlowers", "Food101",
                    "FGVCAircraft", "SUN397", "DescribableTextures", "EuroSAT", "UCF101"]
DG_DATASETS = ["ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR"]
BUILTIN_DATASETS = FEWSHOT_DATASETS + DG_DATASETS
BUILTIN_CLASSES = {cls.__name__: cls for cls in (
    ImageNet, Caltech101, OxfordPets, StanfordCars, OxfordFlowers, Food101, FGVCAircraft, SUN397,
    DescribableTextures, EuroSAT, UCF101, ImageNetV2, ImageNetSketch, ImageNetA, ImageNetR, ImageFolder,
    FashionMNIST, FashionMNISTShift)}
