"""The pruning search: the gymnasium env (``env``), its reward (``reward``), the evaluation of one
candidate architecture (``candidate``: prune, accuracy, compile, measure), the methods by name
(``methods``), the config (``config``), the recorder and its callbacks (``loop``), the final step
(``final``) and the entry points ``run_search`` / ``resume_search`` (``run``)."""
