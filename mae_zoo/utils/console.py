"""A readable config dump at start-up (rich tree, one branch per config group)."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.syntax import Syntax
from rich.tree import Tree

ORDER = ("module", "model", "mask", "data", "optim", "trainer", "strategy", "callbacks", "logger", "paths")


def print_config_tree(cfg: DictConfig, console: Console | None = None) -> None:
    console = console or Console(stderr=False, soft_wrap=True)
    tree = Tree("config", guide_style="dim")
    keys = [k for k in ORDER if k in cfg] + [k for k in cfg if k not in ORDER]
    scalars = {k: cfg[k] for k in keys if not isinstance(cfg[k], DictConfig)}
    for key in keys:
        if key in scalars:
            continue
        branch = tree.add(f"[bold]{key!s}[/bold]")
        text = OmegaConf.to_yaml(cfg[key], resolve=True).rstrip() or "{}"
        branch.add(Syntax(text, "yaml", theme="ansi_dark", background_color="default"))
    if scalars:
        tree.add(
            Syntax(
                OmegaConf.to_yaml(OmegaConf.create(scalars), resolve=True).rstrip(),
                "yaml",
                theme="ansi_dark",
                background_color="default",
            )
        )
    console.print(tree)
