"""segfast_ros: efficient Segment Anything (MobileSAM, TinySAM, SAM) for ROS 2 robots."""

__version__ = "0.1.0"
