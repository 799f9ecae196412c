"""Models written back out: the calibrated model as a QDQ ONNX file (:mod:`.qdq`)."""
