"""Layer 4: probabilities on disk -> one submission.

    ensemble  the finished models blended by OOF accuracy
    pseudo    fold-honest pseudo-labels from round 0's test predictions
    submit    the id,label CSV, checked before it is written
    heldout   the final held-out accuracy, for inputs that carry test labels
"""
