"""The shared mesh helpers and the generic weight loader (family-specific parity lives in the model tests)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from zscir_jax import sharding
from zscir_jax.weights import loader


class TwoLayers(nnx.Module):
    def __init__(self, rngs):
        init = nnx.with_partitioning(nnx.initializers.lecun_normal(), ("embed", "mlp"))
        self.layers = nnx.List([nnx.Linear(4, 8, kernel_init=init, rngs=rngs) for _ in range(2)])
        self.norm = nnx.LayerNorm(8, rngs=rngs)


RULES = [
    loader.Rule(r"l\.(\d+)\.weight", r"layers.\1.kernel", loader.transpose),
    loader.Rule(r"l\.(\d+)\.bias", r"layers.\1.bias"),
    loader.Rule(r"ln\.weight", "norm.scale"),
    loader.Rule(r"ln\.bias", "norm.bias"),
]


def torch_style_tensors():
    rng = np.random.default_rng(0)
    tensors = {}
    for i in range(2):
        tensors[f"l.{i}.weight"] = rng.standard_normal((8, 4)).astype(np.float32)
        tensors[f"l.{i}.bias"] = rng.standard_normal(8).astype(np.float32)
    tensors["ln.weight"] = np.ones(8, np.float32)
    tensors["ln.bias"] = np.zeros(8, np.float32)
    tensors["position_ids"] = np.arange(3)
    return tensors


def test_make_mesh_fills_minus_one_and_rejects_bad_shapes():
    assert dict(sharding.make_mesh((-1, 2, 1)).shape) == {"data": 4, "fsdp": 2, "model": 1}
    assert dict(sharding.make_mesh().shape) == {"data": 8, "fsdp": 1, "model": 1}
    with pytest.raises(ValueError, match="needs 6 devices"):
        sharding.make_mesh((3, 2, 1))
    with pytest.raises(ValueError, match="at most one -1"):
        sharding.make_mesh((-1, -1, 1))


def test_logical_to_spec_never_reuses_a_mesh_axis():
    # batch takes data+fsdp, so embed (fsdp) must fall back to replication on the same array.
    assert sharding.logical_to_spec(("batch", "embed", "mlp")) == jax.sharding.PartitionSpec(
        ("data", "fsdp"), None, "model"
    )


def test_load_from_sharded_safetensors_index(tmp_path):
    tensors = torch_style_tensors()
    names = sorted(tensors)
    shards = {"a.safetensors": names[: len(names) // 2], "b.safetensors": names[len(names) // 2 :]}
    for file, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(tmp_path / file))
    weight_map = {k: f for f, keys in shards.items() for k in keys}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))

    files = loader.safetensors_files(str(tmp_path))
    assert [f.rsplit("/", 1)[1] for f in files] == ["a.safetensors", "b.safetensors"]
    model = loader.load_state(
        nnx.eval_shape(lambda: TwoLayers(nnx.Rngs(0))), loader.LazyTensors(files), RULES, ignore=["position_ids"]
    )
    np.testing.assert_array_equal(np.asarray(model.layers[1].kernel[...]), tensors["l.1.weight"].T)
    x = jnp.ones((2, 4))
    np.testing.assert_allclose(model.layers[0](x), x @ tensors["l.0.weight"].T + tensors["l.0.bias"], rtol=1e-6)


def test_every_problem_is_reported_together():
    tensors = torch_style_tensors()
    tensors["l.0.weight"] = np.zeros((3, 4), np.float32)
    del tensors["ln.bias"]
    tensors["extra.weight"] = np.zeros(2, np.float32)
    with pytest.raises(loader.WeightLoadError) as info:
        loader.load_state(nnx.eval_shape(lambda: TwoLayers(nnx.Rngs(0))), tensors, RULES, ignore=["position_ids"])
    problems = info.value.problems
    assert len(problems) == 3, problems
    text = str(info.value)
    assert "'l.0.weight' -> 'layers.0.kernel': checkpoint gives (4, 3), model expects (4, 8)" in text
    assert "missing: model parameter 'norm.bias'" in text
    assert "unexpected: checkpoint tensor 'extra.weight'" in text


def test_weights_land_with_their_target_sharding():
    tensors = torch_style_tensors()
    mesh = sharding.make_mesh((2, 2, 2))
    with sharding.activate(mesh):
        model = loader.load_state(
            nnx.eval_shape(lambda: TwoLayers(nnx.Rngs(0))), tensors, RULES, ignore=["position_ids"]
        )
    kernel = model.layers[0].kernel[...]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "model")
    assert len(kernel.sharding.device_set) == 8
    np.testing.assert_array_equal(np.asarray(kernel), tensors["l.0.weight"].T)


def test_missing_checkpoint_dir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        loader.safetensors_files(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        loader.safetensors_files(str(tmp_path))
