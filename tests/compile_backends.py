"""The ``torch.compile`` backend each kind of test compiles with.

Graph breaks, recompiles and graph counts are dynamo's: every backend is handed the same
graphs, so compile-health tests use ``aot_eager`` (dynamo and AOTAutograd, no code
generation: a second per graph instead of a C++ build on CPU). Inductor stays where its
generated code is the point: numerics of the compiled path, the compile cache, launch counts.
"""

HEALTH = "aot_eager"
