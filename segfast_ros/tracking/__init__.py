"""Identity across frames: SegEvery track IDs and prompted targets (no ROS, no torch).

Modules:

* :mod:`.settings`: :class:`~.settings.TrackingSettings`, both trackers' thresholds (the node's
  ``tracking.<field>`` parameters, with their ranges).
* :mod:`.states`: the ``Instance.track_state`` values.
* :mod:`.overlap`: :class:`~.overlap.Footprints` and :func:`~.overlap.iou_matrix`, exact mask
  IoU between two sets of masks at the cost of the column blocks they share.
* :mod:`.associate`: :func:`~.associate.match`, the optimal one-to-one assignment by IoU.
* :mod:`.instances`: :class:`~.instances.InstanceTracker`, stable track IDs for SegEvery
  instances (a cascade of assignments; born after ``min_hits`` frames, dead after
  ``max_missed``; near-identical copies get no ID).
* :mod:`.targets`: :class:`~.targets.TargetTracker`, prompted targets decoded on every frame in
  one batched call; :mod:`.target_state` one target's geometry and lost checks;
  :mod:`.appearance` the colour model that keeps a target off other objects.
"""
