"""A folder that fits neither layout says what was found."""
from __future__ import annotations

import re
import shutil

import pytest

import dataset
from conftest import write_image


# ---------------------------------------------------------------- folders that fit neither layout


def test_loose_photos_are_refused_naming_the_layouts(tmp_path):
    """Loose photos without class folders or Kaggle names: a DataError naming an example and both layouts."""
    for i in range(3):
        write_image(tmp_path / "photos" / f"IMG_000{i}.jpg", seed=i)
    with pytest.raises(dataset.DataError, match=r"3 of its 3 images .*'IMG_0000.jpg'.*ROOT/<class>/<image>.*"
                                                r"ROOT/<class>\.<n>\.<ext>"):
        dataset.find_images(tmp_path / "photos")


def test_dotted_names_are_not_classes(tmp_path):
    """Dotted names that are not <class>.<n>.<ext> are refused, not read as one class per file."""
    write_image(tmp_path / "photos" / "my.holiday.photo.jpg", seed=1)
    write_image(tmp_path / "photos" / "our.trip.jpg", seed=2)
    with pytest.raises(dataset.DataError, match=r"not named <class>\.<n>\.<ext> \(e\.g\. 'my\.holiday\.photo\.jpg'\)"):
        dataset.find_images(tmp_path / "photos")


def test_folder_holding_only_the_class_tree_suggests_it(class_tree):
    """--data at the folder that holds PetImages: a DataError naming the one class folder, suggesting PetImages."""
    with pytest.raises(dataset.DataError, match=rf"1 class folder .*\('PetImages'\), 2 or more are needed: "
                                                rf"did you mean --data {re.escape(str(class_tree))}\?"):
        dataset.find_images(class_tree.parent)


def test_one_class_folder_given_as_data_suggests_its_parent(class_tree):
    """--data at PetImages/Cat, whose photos are loose files: a DataError suggesting PetImages."""
    with pytest.raises(dataset.DataError, match=rf"did you mean --data {re.escape(str(class_tree))}\?$"):
        dataset.find_images(class_tree / "Cat")


def test_kaggle_names_of_one_class_are_refused(tmp_path):
    """Kaggle names of a single class: a DataError naming the class found."""
    for i in range(3):
        write_image(tmp_path / "train" / f"cat.{i}.jpg", seed=i)
    with pytest.raises(dataset.DataError, match=r"1 class in the file names .*\('cat'\), 2 or more are needed"):
        dataset.find_images(tmp_path / "train")


def test_min_classes_one_reads_a_single_class(class_tree):
    """min_classes=1 reads a folder with one class folder (evaluation on a subset of the classes)."""
    shutil.rmtree(class_tree / "Dog")
    shutil.rmtree(class_tree / "Fox")
    files, labels, classes = dataset.find_images(class_tree, min_classes=1)
    assert classes == ["Cat"] and len(files) == 20 and set(labels) == {0}
