"""prompt-tuning: soft-prompt, prefix and LoPA tuning of frozen T5 models in JAX/Flax."""
import setuptools

setuptools.setup(
    name="prompt-tuning",
    version="0.1.0",
    description=("Parameter-efficient tuning (prompt tuning, prefix tuning, LoPA) of "
                 "frozen T5 models with JAX/Flax, gin and seqio."),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["prompt_tuning", "prompt_tuning.*",
                                               "tasks", "tasks.*"]),
    include_package_data=True,
    package_data={"prompt_tuning": ["assets/**/*", "configs/**/*.gin"]},
    install_requires=[
        "jax>=0.10",
        "flax>=0.12",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12",
        "tensorstore>=0.1.86",
        "msgpack",
        "numpy>=2",
        "gin-config>=0.5",
        "absl-py",
        "seqio>=0.0.20",
        "tensorflow>=2.21",
        "tensorflow-text",
        "tensorflow-datasets>=4.9.10",
        "sentencepiece",
        "safetensors",
        "sacrebleu",
        "rouge-score",
        "nltk",
        "scikit-learn",
        "matplotlib",
        "clu",
    ],
    extras_require={
        # Side-by-side checks against the PyTorch reference implementations.
        # babel: for the `t5` package, the task tests' reference, which the Makefile
        # installs without its dependencies (see T5_REFERENCE there).
        "test": ["pytest", "pytest-xdist", "pytest-randomly", "hypothesis", "torch==2.13.0",
                 "transformers>=5", "peft", "accelerate", "babel"],
        # Accelerator installs: see the README ("Install").
        "tpu": ["jax[tpu]"],
        "cuda": ["jax[cuda12]"],
    },
    entry_points={"console_scripts": [
        "prompt-tuning-train=prompt_tuning.train:console_main",
        "prompt-tuning-eval=prompt_tuning.eval:console_main",
        "prompt-tuning-infer=prompt_tuning.infer:console_main",
    ]},
)
