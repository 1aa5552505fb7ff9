"""rclpy glue: message conversions, RGB-D sync, TF, nodes, action servers, client."""
