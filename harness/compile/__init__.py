"""ONNX -> TVM: export a torch model to ONNX (``export``), resolve a target (``targets``),
MetaSchedule tuning with a persistent per-target database (``tuning``, ``board_runner`` for
tuning measured on an SSH board) and the content-addressed artifact build (``build``)."""
