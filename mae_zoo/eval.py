"""Evaluate a pre-trained encoder: ``python -m mae_zoo.eval ckpt=PATH eval=linear|knn|finetune|...``.

The model comes from the checkpoint (``mae_zoo.load``); the data is rebuilt from the checkpoint's
datamodule settings unless ``data=<option>`` is given (a ``data`` node without ``_target_``, such as
the one ``debug=smoke`` sets, only overrides the checkpoint's settings, like ``data_overrides``).
``init=random`` evaluates a randomly initialised encoder of the same shape: the baseline every
record compares against. ``eval.features=pixels`` (linear, knn) probes the raw pixels instead.
Results go to the eval run folder's ``metrics.json``; the last line printed is the run folder.

An evaluator is one module in ``mae_zoo/evaluation/`` plus ``conf/eval/<name>.yaml`` with its
``_target_``; nothing here knows the evaluators by name.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from mae_zoo.api import load
from mae_zoo.core.errors import ConfigError
from mae_zoo.core.module import MaskedAutoencoder
from mae_zoo.data.base import MAEDataModule
from mae_zoo.evaluation.base import EvalData, Evaluator, LimitedDataModule
from mae_zoo.utils.checks import check_values, safe_load
from mae_zoo.utils.console import print_config_tree
from mae_zoo.utils.instantiate import CONF_DIR, config_errors_surface, import_object, instantiate_checked
from mae_zoo.utils.runtime import write_metrics, write_run_records


def eval_options() -> list[str]:
    return sorted(p.stem for p in CONF_DIR.joinpath("eval").glob("*.yaml"))


def load_for_eval(ckpt: str, init: str = "pretrained") -> tuple[MaskedAutoencoder, dict[str, Any]]:
    """The model (pre-trained, or re-initialised with the same shape) and the checkpoint's metadata."""
    if not Path(ckpt).is_file():
        raise ConfigError(f"ckpt={ckpt} is not a file; pass the path of an mae_zoo checkpoint")
    if init not in ("pretrained", "random"):
        raise ConfigError(f"init must be 'pretrained' or 'random', got '{init}'")
    checkpoint = safe_load(ckpt)
    meta = checkpoint.get("mae_zoo") if isinstance(checkpoint, dict) else None
    if meta is None:
        raise ConfigError(f"ckpt={ckpt} is not an mae_zoo checkpoint (no 'mae_zoo' entry)")
    if init == "pretrained":
        model = load(ckpt)
    else:
        model = import_object(meta["class"]).from_hparams(checkpoint["hyper_parameters"]).eval()
    return model, checkpoint


def build_datamodule(cfg: DictConfig, checkpoint: dict[str, Any], model: MaskedAutoencoder) -> MAEDataModule:
    """``data=<option>`` (a node with ``_target_``) wins; otherwise the checkpoint's own data, with
    ``data`` keys without a target (``debug=smoke``) and then ``data_overrides`` applied on top."""
    data = cfg.get("data")
    if data is not None and "_target_" in data:
        return instantiate_checked(data, _convert_="all")
    cls_path = checkpoint.get("mae_zoo", {}).get("datamodule") or model.datamodule_class
    hparams = checkpoint.get("datamodule_hyper_parameters")
    if cls_path is None or hparams is None:
        raise ConfigError("the checkpoint does not record its data; pass data=<option> (e.g. data=fashion_mnist)")
    overrides: dict[str, Any] = {}
    for node in (data, cfg.get("data_overrides")):
        if node:
            values = OmegaConf.to_container(node, resolve=True)
            if not isinstance(values, dict):
                raise ConfigError(f"data overrides must be a mapping of data settings, got {values!r}")
            overrides.update({str(key): value for key, value in values.items()})
    try:
        return import_object(cls_path)(**{**hparams, **overrides})
    except TypeError as err:
        raise ConfigError(f"data override not understood by {cls_path.rsplit('.', 1)[-1]}: {err}") from None


def apply_limits(cfg: DictConfig, evaluator: Evaluator, datamodule: MAEDataModule) -> EvalData:
    """``trainer.max_epochs`` caps an evaluator's ``epochs``; ``trainer.limit_{train,val}_batches``
    cap the batches of every loader the datamodule gives (``debug=smoke`` sets all three)."""
    limits = cfg.get("trainer") or {}
    max_epochs = limits.get("max_epochs")
    if max_epochs is not None and max_epochs > 0 and evaluator.epochs is not None:
        evaluator.epochs = min(evaluator.epochs, int(max_epochs))
    train_limit, val_limit = limits.get("limit_train_batches"), limits.get("limit_val_batches")
    if train_limit is None and val_limit is None:
        return datamodule
    return LimitedDataModule(datamodule, train_limit, val_limit)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run ``cfg.eval`` on the checkpoint ``cfg.ckpt``; return the metrics (also in ``<run>/metrics.json``)."""
    start = time.time()
    if OmegaConf.is_missing(cfg, "ckpt"):
        raise ConfigError("ckpt is required: python -m mae_zoo.eval ckpt=PATH eval=" + "|".join(eval_options()))
    if cfg.get("eval") is None or "_target_" not in cfg.eval:
        raise ConfigError(f"pick an evaluator with eval=<name>; valid: {eval_options()}")
    check_values(cfg)
    run_dir = Path(cfg.paths.run_dir)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    torch.set_float32_matmul_precision(cfg.get("matmul_precision", "high"))
    evaluator = instantiate_checked(cfg.eval, _convert_="all")
    if not isinstance(evaluator, Evaluator):
        raise ConfigError(f"eval._target_ must build an mae_zoo Evaluator, got {type(evaluator).__name__}")
    model, checkpoint = load_for_eval(cfg.ckpt, cfg.init)
    with config_errors_surface():
        datamodule = apply_limits(cfg, evaluator, build_datamodule(cfg, checkpoint, model))
        evaluator.check(model, datamodule)
    write_run_records(cfg, run_dir)
    if cfg.get("print_config", True):
        print_config_tree(cfg)
    name = evaluator.name
    metrics = dict(evaluator(model, datamodule, run_dir))
    metrics[f"eval_{name}/wall_s"] = round(time.time() - start, 2)
    metrics[f"eval_{name}/init"] = cfg.init
    metrics[f"eval_{name}/ckpt"] = str(cfg.ckpt)
    write_metrics(metrics, run_dir)
    return metrics


def _check_argv(argv: list[str]) -> None:
    """Refuse an unknown ``eval=NAME`` in one line before Hydra composes (its own message is a page)."""
    options = eval_options()
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key.lstrip("+~") != "eval" or "(" in value:  # leave sweep functions to Hydra
            continue
        for name in value.split(","):  # -m eval=linear,knn
            if name not in ("null", "") and name not in options:
                print(f"mae_zoo: configuration error: eval={name} is unknown; valid: {options}", file=sys.stderr)
                sys.exit(2)


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    try:
        metrics = evaluate(cfg)
    except (ConfigError, MissingMandatoryValue) as err:
        print(f"mae_zoo: configuration error: {str(err).splitlines()[0]}", file=sys.stderr)
        sys.exit(2)
    for key, value in sorted(metrics.items()):
        print(f"{key}: {value}")
    print(Path(cfg.paths.run_dir).resolve())


if __name__ == "__main__":
    _check_argv(sys.argv[1:])
    main()
