"""ROS-free core: geometry, encoders, lifting, memory, grounding, spatial reasoning, LMM.

Nothing under this package imports rclpy; it is driven by the ROS nodes, the bag
evaluator and offline tools alike.
"""
