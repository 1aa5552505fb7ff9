"""Launch the llava3d node on a robot with a ROS 2 install (Humble, Jazzy, Kilted).

    ros2 launch llava3d_ros llava3d.launch.py params_file:=/path/params.yaml \
        namespace:=robot1 use_sim_time:=true log_level:=info \
        color_topic:=/camera/color/image_raw depth_topic:=/camera/depth/image_rect_raw \
        camera_info_topic:=/camera/color/camera_info

The node configures and activates itself (parameter ``autostart``); set it to false to
drive the lifecycle from a lifecycle manager instead. Where ``ros2 launch`` is not
installed, ``llava3d-ros up --params FILE`` starts the same node with the same file.
"""

from __future__ import annotations

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode

ARGUMENTS = {
    "namespace": ("", "namespace of the node and its actions"),
    "use_sim_time": ("false", "follow /clock (rosbag replay, simulation)"),
    "log_level": ("info", "ROS log level"),
    "color_topic": ("/camera/color/image_raw", "remap target for the colour image"),
    "depth_topic": ("/camera/aligned_depth_to_color/image_raw", "remap target for depth"),
    "camera_info_topic": ("/camera/color/camera_info", "remap target for camera info"),
}


def generate_launch_description() -> LaunchDescription:
    default_params = os.path.join(
        get_package_share_directory("llava3d_ros"), "config", "llava3d.yaml"
    )
    args = [
        DeclareLaunchArgument(
            "params_file", default_value=default_params, description="node params YAML"
        )
    ] + [
        DeclareLaunchArgument(name, default_value=default, description=desc)
        for name, (default, desc) in ARGUMENTS.items()
    ]
    params_file = LaunchConfiguration("params_file")
    node = LifecycleNode(
        package="llava3d_ros",
        executable="llava3d_node",
        name="llava3d",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        parameters=[
            params_file,
            {
                "use_sim_time": LaunchConfiguration("use_sim_time"),
                "color_topic": LaunchConfiguration("color_topic"),
                "depth_topic": LaunchConfiguration("depth_topic"),
                "camera_info_topic": LaunchConfiguration("camera_info_topic"),
            },
        ],
        arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level")],
    )
    return LaunchDescription([*args, node])
