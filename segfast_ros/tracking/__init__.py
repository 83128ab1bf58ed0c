"""Identity across frames: SegEvery track IDs and prompted targets (no ROS, no torch)."""
