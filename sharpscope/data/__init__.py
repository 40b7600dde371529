"""Data sets for sharpness studies: CIFAR-10/100, MNIST, MNIST-1D, any ``.npz``; label noise,
the random-label confusion set, and batch iteration. Every loader returns an :class:`ArrayDataset`.
"""

from sharpscope.data.cache import cache_dir
from sharpscope.data.cifar import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    cifar10,
    cifar100,
    cifar_feature_stats,
    load_numpy_pickle,
)
from sharpscope.data.dataset import ArrayDataset
from sharpscope.data.download import CIFAR10_SHA256, CIFAR10_URL, download_cifar10, extract_tar_safely
from sharpscope.data.generic import npz
from sharpscope.data.loaders import ShuffledLoader, batches
from sharpscope.data.mnist import mnist_npz
from sharpscope.data.mnist1d_gen import mnist1d
from sharpscope.data.noise import confusion_set, fresh_label_noise, label_noise, step_generator
from sharpscope.data.resolve import DATA_SPECS, resolve_data
from sharpscope.data.root import DATA_ROOT_ENV, MissingDataError, data_file, data_root

__all__ = [
    "ArrayDataset",
    "DATA_ROOT_ENV",
    "MissingDataError",
    "CIFAR10_MEAN",
    "CIFAR10_SHA256",
    "CIFAR10_STD",
    "CIFAR10_URL",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "DATA_SPECS",
    "ShuffledLoader",
    "batches",
    "cache_dir",
    "cifar10",
    "cifar100",
    "cifar_feature_stats",
    "confusion_set",
    "data_file",
    "data_root",
    "download_cifar10",
    "extract_tar_safely",
    "label_noise",
    "fresh_label_noise",
    "step_generator",
    "load_numpy_pickle",
    "mnist1d",
    "mnist_npz",
    "npz",
    "resolve_data",
]
