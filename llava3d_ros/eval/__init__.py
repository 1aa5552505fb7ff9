"""Evaluation: replaying walk-through bags through the node, metrics, reports and the demo.
The rooms and bags themselves come from :mod:`llava3d_ros.sim`."""
