"""Masks in 3D, no ROS: cameras, depth lifting and point clouds (numpy and cv2 only).

Modules:

* :mod:`.camera`: :class:`~.camera.CameraModel` (pinhole intrinsics from a CameraInfo's ``K``),
  :func:`~.camera.camera_from_info`, and :func:`~.camera.resample_depth` between two cameras
  that share an optical frame (depth "aligned to color" at another resolution).
* :mod:`.lift`: :class:`~.lift.LiftSettings` (the node's ``depth.<field>`` parameters) and
  :func:`~.lift.lift_masks`, each mask's robust centroid, extent and valid-depth numbers.
* :mod:`.cloud`: the masked points, voxel-downsampled, for a ``PointCloud2``.
"""
