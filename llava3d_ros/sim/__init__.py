"""The synthetic world the evaluation runs in: an asset catalogue, rooms composed from it,
RGB-D rendering, referring expressions and questions with their ground truth, and
walk-through rosbags."""
