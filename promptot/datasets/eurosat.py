"""EuroSAT RGB (10 land-cover classes, renamed as in CoOp)."""
from promptot.engine import DATASET_REGISTRY

from .common import CoOpDataset, read_and_split_data

NEW_CNAMES = {
    "AnnualCrop": "Annual Crop Land",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "River": "River",
    "SeaLake": "Sea or Lake",
}


@DATASET_REGISTRY.register()
class EuroSAT(CoOpDataset):
    dataset_dir = "eurosat"
    image_dir = "2750"
    split_file = "split_zhou_EuroSAT.json"
    required_with_split = ("2750",)
    required = ("2750",)
    expected_counts = {"train": 13500, "val": 5400, "test": 8100, "classes": 10}
    counts_verified = True

    def generate_split(self):
        return read_and_split_data(self.image_dir, new_cnames=NEW_CNAMES)
