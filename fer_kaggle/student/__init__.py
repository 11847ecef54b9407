"""Layer 7: one small model made from a finished run (it trains, so it sits above serving).

    distill.py   students of the run's kept ensemble, fold-honest, scored on OOF beside it
"""
