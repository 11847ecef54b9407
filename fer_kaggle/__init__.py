"""fer_kaggle: win the FER2013 facial-expression competition with one command.

    bash run.sh train.csv test.csv out.csv

Public API: `read_train`, `read_test`, `CLASS_NAMES`, `FerKaggleError`. Importing the
package registers its `fer_*` backbones in timm's registry.

The package is in layers, one folder each, bottom to top as the data flows (CSV -> arrays -> folds -> units ->
probabilities on disk -> ensemble -> CSV); a layer imports only those below it (tests/test_layers.py):

    core/      errors, settings (config), atomic files, the run folder's layout
    data/      the competition's files -> checked arrays, the shift check, folds
    models/    the backbones and test-time augmentation, shared by training and serving
    training/  augmentation, the recipe, one unit trained
    blend/     probabilities on disk -> ensemble, pseudo-labels, the submission
    run/       the time budget, executors, the pipeline that runs every stage
    serve/     a finished run put to use: inference, photos, ONNX
    analysis/  the report and explanations of a finished run
    bench/     benchmarks that print figures
    cli.py     the one command line; the files beside it hand `python -m fer_kaggle.<command>` to it
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
