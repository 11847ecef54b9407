"""Layer 5: the whole run, from the files to the submission.

    budget         the plan that fits the time given (--budget), and keeping to it
    executor       where units train: here, in local processes, one per GPU
    ray_executor   or as Ray tasks on a cluster (--executor ray)
    pipeline       the stages in order: inputs, folds, rounds of units, ensemble, submission
"""
