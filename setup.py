"""zscir_jax: zero-shot composed image retrieval in JAX / Flax NNX."""
import setuptools

RUNTIME = [
    "jax>=0.9",
    "flax>=0.12",
    "optax>=0.2.5",
    "orbax-checkpoint>=0.11",
    "grain>=0.2.12",
    "einops>=0.8",
    "ml-collections>=1.0",
    "clu>=0.0.12",
    "tensorflow-datasets>=4.9.8",
    "importlib_resources",  # tensorflow-datasets imports it without declaring it
    "array-record>=0.7",
    "transformers>=5.0",
    "safetensors>=0.5",
    "tokenizers>=0.21",
    "sentencepiece>=0.2",  # SigLIP's tokenizer (spiece.model)
    "pillow>=10",
    "numpy>=1.26",
    "tqdm>=4.66",
    "matplotlib>=3.8",
    # CLU's TensorBoard writer needs TensorFlow; the CPU build is enough for summaries.
    "tensorflow-cpu>=2.18",
    "tensorboard>=2.18",
]

EXTRAS = {
    # Parity tests build transformers' PyTorch models; install torch==2.13.0 first for the CPU build.
    # nbclient / nbformat / ipykernel: tests/test_notebook.py runs notebooks/zscir_demo.ipynb headless.
    # pytest-xdist: the README's test command runs the suite on two workers.
    "test": ["pytest>=8", "pytest-xdist>=3.5", "torch>=2.5", "nbclient>=0.10", "nbformat>=5.9", "ipykernel>=6.29"],
    "cuda": ["jax[cuda12]"],
    "tpu": ["jax[tpu]"],
}

setuptools.setup(
    name="zscir_jax",
    version="0.1.0",
    description="Zero-shot composed image retrieval (PVLF, TransAgg, CoLLM, ...) in JAX / Flax NNX",
    packages=setuptools.find_packages(include=["zscir_jax", "zscir_jax.*"]),
    python_requires=">=3.10",
    install_requires=RUNTIME,
    extras_require=EXTRAS,
)
