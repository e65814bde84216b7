"""NNX state survives a real Orbax checkpoint: restored into an abstract target, outputs are identical."""
import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from zscir_jax import sharding
from zscir_jax.models import clip


@nnx.jit
def encode(model, px, ids):
    return model.encode_image(px), model.encode_text(ids)


def test_clip_state_roundtrips_through_orbax(tmp_path):
    cfg = clip.CLIPConfig.tiny()
    model = clip.CLIPModel(cfg, rngs=nnx.Rngs(3))
    # Batch 4 splits evenly over the mesh's data axes (data x fsdp = 4) below.
    px = np.random.default_rng(0).standard_normal((4, 32, 32, 3)).astype(np.float32)
    ids = np.array([[1, 5, 9, 999, 0], [1, 7, 999, 0, 0], [1, 999, 0, 0, 0], [1, 4, 4, 4, 999]], np.int32)
    expected_img, expected_txt = encode(model, px, ids)

    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "clip", nnx.state(model))
    checkpointer.wait_until_finished()

    # Restore on one device into an abstract model: bit-identical outputs (same compiled function).
    graphdef, abstract_state = nnx.split(nnx.eval_shape(lambda: clip.CLIPModel(cfg, rngs=nnx.Rngs(0))))
    same = nnx.merge(graphdef, checkpointer.restore(tmp_path / "clip", abstract_state))
    img, txt = encode(same, px, ids)
    np.testing.assert_array_equal(img, expected_img)
    np.testing.assert_array_equal(txt, expected_txt)

    # Restore onto an 8-device mesh into an abstract model: shardings come from the target, not the files.
    mesh = sharding.make_mesh((2, 2, 2))
    with sharding.activate(mesh):
        graphdef, abstract_state = nnx.get_abstract_model(lambda: clip.CLIPModel(cfg, rngs=nnx.Rngs(0)), mesh)
        restored_state = checkpointer.restore(tmp_path / "clip", abstract_state)
        restored = nnx.merge(graphdef, restored_state)
        kernel = restored.text_model.encoder.layers[1].mlp.fc1.kernel[...]
        assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "model")
        for saved, loaded in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(restored_state)):
            np.testing.assert_array_equal(np.asarray(loaded), np.asarray(saved))
        img, txt = encode(restored, px, ids)
    # Sharded matmuls sum in another order: equal up to float32 rounding.
    np.testing.assert_allclose(img, expected_img, atol=1e-5)
    np.testing.assert_allclose(txt, expected_txt, atol=1e-5)
