"""Layer 6: a finished run put to use; it loads no training code.

    inference  a run's ensemble as one torch module: pixels in, probabilities out
    predict    the expressions of faces in photos
    export     the ensemble as one ONNX graph
"""
