"""advjax: adversarial robustness research in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name="advjax",
    version="0.1.0",
    description="Attacks and defences for adversarial robustness, as pure JAX functions.",
    packages=find_packages(include=["advjax", "advjax.*"]),
    # The committed weights of advjax.testing.fmnist_at (the AutoAttack cross-checks' model).
    package_data={"advjax.testing": ["*.npz"]},
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.4.30",
        "jaxlib>=0.4.30",
        "flax>=0.8",
        "optax>=0.2",
        "chex>=0.1.86",
        "ml-collections>=0.1.1",
        "tensorflow-datasets>=4.9.6",
        "array-record>=0.5",
        "orbax-checkpoint>=0.5",
        "numpy",
        "scikit-learn",
        "matplotlib",
        "tensorboardX",
    ],
    extras_require={
        "test": ["pytest", "pytest-xdist", "hypothesis"],
        # Independent implementations used only by tests and benchmarks. torch must be the local
        # CPU build (`pip install torch==2.13.0`); torchattacks/foolbox/pyautoattack (the reference
        # AutoAttack) are installed with --no-deps.
        "peers": ["torchattacks", "foolbox", "pyautoattack", "gitpython", "scipy", "requests",
                  "eagerpy"],
    },
    entry_points={"console_scripts": ["advjax=advjax.cli:main"]},
)
