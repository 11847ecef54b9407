"""fer_kaggle: win the FER2013 facial-expression competition with one command.

    bash run.sh train.csv test.csv out.csv

Public API: `read_train`, `read_test`, `CLASS_NAMES`, `FerKaggleError`. Importing the
package registers its `fer_*` backbones in timm's registry.
"""
import os

# albumentations asks PyPI for a newer version on import: a timeout on an offline GPU or Kaggle machine
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from fer_kaggle._startup import quiet_interrupts  # noqa: E402

# `python -m fer_kaggle` (run.sh): a Ctrl-C in the seconds torch takes to load ends quietly, not in a traceback
with quiet_interrupts(as_program=__import__("sys").argv[:1] == ["-m"]):
    from fer_kaggle.models import backbones as models  # noqa: E402,F401  (registers fer_* backbones with timm)
    from fer_kaggle.data.competition import CLASS_NAMES, read_test, read_train  # noqa: E402
    from fer_kaggle.core.errors import FerKaggleError  # noqa: E402

__version__ = "0.1.0"
__all__ = ["CLASS_NAMES", "FerKaggleError", "read_test", "read_train"]
