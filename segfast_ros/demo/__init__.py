"""The demo model's world: procedural scenes with exact masks, training and evaluation.

The demo segmenter and detector are small models trained here on generated scenes (no
pretrained weights exist on the development machines). They are labelled as demo models:
they segment synthetic scenes like those of :mod:`.scenes`, not real camera images.

``scenes`` and ``evaluate`` need only numpy/cv2/onnxruntime; ``train`` needs torch.
"""
