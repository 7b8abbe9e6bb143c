"""The harness side of the latency simulator: calibration rows from measurements (``data``) and the zoo's
classic and random graphs exported to ONNX (``graphs``). The simulator itself is ``devices/sim/``."""
