"""Layer 9: benchmarks that print figures, `python -m fer_kaggle.bench` (never timed tests).

    speed       training and inference speed of each backbone, against a matmul's peak
    benchmarks  the bench command: parse, shift, recipe ablations, the planner's table, budget, tree
    selfcheck   the GPU self-check (`bench gpu`)
    chaos       kills and damaged files at random moments, each resumed to the same bytes
"""
