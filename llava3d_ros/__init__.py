"""llava3d_ros: LLaVA-3D-style 3D scene understanding for ROS 2.

Layout: ``core`` holds the ROS-free logic (numpy/torch only), ``ros`` the rclpy glue,
``eval`` scene synthesis, bag replay and metrics, and ``cli`` the ``llava3d-ros`` command.
"""

__version__ = "0.1.0"
