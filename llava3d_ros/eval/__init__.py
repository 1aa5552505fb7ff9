"""Evaluation: scene synthesis, rosbag writing and replay, metrics and reports."""
