"""TFDS builders (array_record, tensor features, no TensorFlow): `sar1m` and a generic
ImageFolder classification builder. Importing this package registers them with TFDS."""

from data_pipelines.tfds.image_folder import SarImageFolder, build_image_folder, load_classification_split
from data_pipelines.tfds.sar1m import Sar1m, build_sar1m

__all__ = ["Sar1m", "SarImageFolder", "build_image_folder", "build_sar1m", "load_classification_split"]
