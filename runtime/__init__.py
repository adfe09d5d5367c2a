"""gdmlc runtime: train, evaluate, save and load force fields built from compiled kernels."""
from .data import DEFAULT_DATA, Dataset, DatasetError, load_dataset
from .model import GDML

__all__ = ["GDML", "load_dataset", "Dataset", "DatasetError", "DEFAULT_DATA"]
