"""The ROS-free glue that the node and the replay share.

A frame comes in as image-message fields (:mod:`.image_msgs`), is encoded once on the latest-wins
worker and kept in the stamp-keyed embedding cache (:mod:`.frames`), and its masks go out as
``Instance.msg`` fields, label images and overlays (:mod:`.render`). Depth images become metres
and wait in a stamp-keyed cache (:mod:`.depth`); :class:`.spatial.Spatial` matches one to each
colour frame and lifts the masks to 3D through the CameraInfos, or says why a frame stays 2D.
:mod:`.detections` turns records into ``vision_msgs`` detections and point-cloud fields, and a
detector's ``Detection2D`` boxes into prompts. rclpy, rosbags and vision_msgs are never
imported here: each adapter wraps these plain values in its own message types.
"""
