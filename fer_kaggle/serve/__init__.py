"""Layer 6: a finished run put to use; it loads no training code.

    inference  a run's ensemble (or its distilled student) as one torch module: pixels in, probabilities out
    detect     faces found (MTCNN, or OpenCV's Haar cascade) and framed as FER2013's were
    mtcnn      the MTCNN cascade of three small CNNs (our inference, the authors' weights in mtcnn.npz)
    predict    the expressions of faces in photos
    video      ... in a video or from the webcam: tracked, batched, smoothed in time
    export     the ensemble as one ONNX graph
"""
