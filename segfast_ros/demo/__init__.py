"""The demo model's world: training and evaluating it, and the commands that run it.

The demo segmenter and detector are small models trained here on generated scenes (no
pretrained weights exist on the development machines). They are labelled as demo models:
they segment synthetic scenes like those of :mod:`segfast_ros.bench.scenes`, not real camera
images.

* ``segfast demo`` and ``segfast replay``: :mod:`.run`, with the model they pick themselves
  and the SegEvery settings that follow from it in :mod:`.model_choice`;
* training (torch): :mod:`.train` (the loop and ``python -m segfast_ros.demo.train``),
  :mod:`.training_data`, :mod:`.segmenter_loss`, :mod:`.detector_model`, :mod:`.export`;
* evaluation (ONNX Runtime, no torch): :mod:`.evaluate` (``python -m
  segfast_ros.demo.evaluate``), :mod:`.metrics` (the scene sets and measures),
  :mod:`.tune` (the SegEvery settings, ``--tune``).
"""
