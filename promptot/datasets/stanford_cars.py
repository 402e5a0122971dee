"""Stanford Cars (196 models; year moved to the front of the name)."""
import os.path as osp

from promptot.engine import DATASET_REGISTRY

from .common import CoOpDataset, split_trainval


def year_first(classname: str) -> str:
    """"Tesla Model S Sedan 2012" -> "2012 Tesla Model S Sedan"."""
    names = classname.split(" ")
    year = names.pop(-1)
    names.insert(0, year)
    return " ".join(names)


@DATASET_REGISTRY.register()
class StanfordCars(CoOpDataset):
    dataset_dir = "stanford_cars"
    image_dir = ""
    split_file = "split_zhou_StanfordCars.json"
    split_relative_to = "dataset"
    required_with_split = ("cars_train", "cars_test")
    required = ("cars_train", "cars_test", "devkit/cars_train_annos.mat", "devkit/cars_meta.mat",
                "cars_test_annos_withlabels.mat")
    expected_counts = {"train": 6509, "val": 1635, "test": 8041, "classes": 196}
    counts_verified = True
    download_hint = ("The original Stanford Cars site is offline; see "
                     "`python -m promptot.datasets download StanfordCars` for where to get it.")

    def generate_split(self):
        meta = osp.join(self.dataset_dir, "devkit", "cars_meta.mat")
        trainval = self.read_data("cars_train", osp.join(self.dataset_dir, "devkit", "cars_train_annos.mat"), meta)
        test = self.read_data("cars_test", osp.join(self.dataset_dir, "cars_test_annos_withlabels.mat"), meta)
        train, val = split_trainval(trainval)
        return train, val, test

    def read_data(self, image_dir, anno_file, meta_file):
        from scipy.io import loadmat

        annos = loadmat(anno_file)["annotations"][0]
        names = loadmat(meta_file)["class_names"][0]
        items = []
        for i in range(len(annos)):
            imname = annos[i]["fname"][0]
            label = int(annos[i]["class"][0, 0]) - 1
            items.append((osp.join(self.dataset_dir, image_dir, imname), label, year_first(str(names[label][0]))))
        return items
