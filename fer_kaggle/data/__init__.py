"""Layer 1: the competition's files -> checked uint8 arrays -> folds.

    competition  the CSV forms of FER2013 (read_train, read_test) and the class names
    folders      the image-folder form
    inputs       every form recognised, parsed once and cached in the run folder
    shift        do the test images look like the train images?
    folds        stratified k-fold assignment, identical images kept in one fold
"""
