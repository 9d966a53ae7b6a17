"""Composition rules: presets override the primary config; the command line overrides presets."""

from tests.conftest import compose_cfg


def test_experiment_values_override_primary_defaults(tmp_path):
    cfg = compose_cfg(["experiment=mae_fashion_mnist"], tmp_path)
    assert cfg.optim.warmup_epochs == 3 and cfg.data.dataset == "fashion_mnist" and cfg.trainer.max_epochs == 10


def test_command_line_wins_over_modality_and_experiment(tmp_path):
    cfg = compose_cfg(
        ["experiment=mae_fashion_mnist", "mask=block", "optim.warmup_epochs=7", "data.batch_size=8"], tmp_path
    )
    assert cfg.mask._target_.endswith("BlockMask")
    assert cfg.optim.warmup_epochs == 7 and cfg.data.batch_size == 8


def test_modality_sets_groups_and_links_model_to_data(tmp_path):
    cfg = compose_cfg(["modality=image", "data=mnist"], tmp_path)
    assert cfg.module.in_chans == 1 and cfg.module.img_size == 28 and cfg.module.patch_size == cfg.model.patch_size
    assert cfg.module.mask == cfg.mask
