"""fer_kaggle: win the FER2013 facial-expression competition with one command.

    bash run.sh train.csv test.csv out.csv

Public API: `read_train`, `read_test`, `CLASS_NAMES`, `FerKaggleError`. Importing the
package registers its `fer_*` backbones in timm's registry.
"""
from . import models  # noqa: F401  (registers fer_* backbones with timm)
from .data import CLASS_NAMES, read_test, read_train
from .errors import FerKaggleError

__version__ = "0.1.0"
__all__ = ["CLASS_NAMES", "FerKaggleError", "read_test", "read_train"]
