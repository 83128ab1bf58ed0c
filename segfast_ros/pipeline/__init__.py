"""The ROS-free glue that the node and the replay share.

A frame comes in as image-message fields (:mod:`.image_msgs`), is encoded once on the latest-wins
worker and kept in the stamp-keyed embedding cache (:mod:`.frames`), and its masks go out as
``Instance.msg`` fields, label images and overlays (:mod:`.render`). rclpy and rosbags are never
imported here: each adapter wraps these plain values in its own message types.
"""
