"""ROS 2 adapters: message conversions and the segfast node (need rclpy and the interfaces)."""
