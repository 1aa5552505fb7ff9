"""Scene geometry and objects: TSDF map, instance segmentation, persistent instance ids."""
