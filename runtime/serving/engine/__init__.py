"""The model engine: one process per server that owns the models, shared by every worker.

* :mod:`.arena`: shared memory (memfd) regions and the tensor layout in them,
* :mod:`.channel`: control frames over a Unix socket, with file descriptors attached,
* :mod:`.process`: the engine process (``runtime-engine``),
* :mod:`.remote` and :mod:`.instance`: model instances in processes of their own (``runtime-inst``),
* :mod:`.client`: the worker side,
* :mod:`.supervisor`: the master side (start, watch, restart, stop).
"""
