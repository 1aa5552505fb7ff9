"""ament_python package llava3d_ros: installable with pip (editable) or colcon."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "llava3d_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.xml")),
        (f"share/{PACKAGE}/models/default_head", glob("models/default_head/*")),
    ],
    package_data={PACKAGE: ["py.typed"]},
    zip_safe=False,
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            f"llava3d-ros = {PACKAGE}.cli:main",
            f"llava3d_node = {PACKAGE}.ros.node:main",
        ]
    },
)
