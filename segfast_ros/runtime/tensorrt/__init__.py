"""The TensorRT backend (Jetson Orin, NVIDIA GPUs).

Importing this package loads neither ``tensorrt`` nor CUDA: :mod:`.plan` (precision plan,
decoder profile) and :mod:`.cache` (the engine cache) are pure Python, and the modules that
drive TensorRT import it inside the functions that use it.
"""
