"""The RL pruning search: the gymnasium env (``env``), its reward (``reward``), the evaluation of one
candidate architecture (``candidate``: prune, accuracy, compile, measure) and the search loop (``run``)."""
