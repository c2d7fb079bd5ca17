"""``tamsoat train`` and ``tamsoat evaluate``: the model pipeline from the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from tamsoat.core.settings import REPO_ROOT

SHIPPED_MODEL = REPO_ROOT / "models" / "lung-nodule-phantom"
# The targets for the shipped detector, stated in its model card.
TARGETS = {"cpm": 0.90, "sens_ge_6mm": 0.95}


def shipped_model() -> Path:
    """The default model folder: the newest shipped version (what the service runs by default)."""
    from inference.registry import Registry

    return Registry(SHIPPED_MODEL.parent).get(SHIPPED_MODEL.name).directory


def train(
    config: Annotated[Path, typer.Option("--config", help="Training config (YAML), e.g. training/configs/shipped.yaml.",
                                         exists=True, dir_okay=False)],
    out: Annotated[Path, typer.Option(help="Run folder: checkpoints, metrics.jsonl, config.yaml.")],
    resume: Annotated[bool, typer.Option(help="Continue from the run folder's last checkpoint.")] = False,
    steps: Annotated[int | None, typer.Option(min=1, help="Total steps, overriding the config's (with --resume: "
                                                            "extend a finished run).")] = None,
) -> None:
    """Train a detector on the project's phantoms (reproducible from config + seed; checkpoints and resume)."""
    from training.train import train as run_training

    try:
        best = run_training(config, out, resume=resume, steps=steps)
    except (ValueError, FileNotFoundError) as exc:
        typer.echo(f"tamsoat: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"best checkpoint: {best}\nexport it with: python -m training.export --checkpoint {best} --out DIR")


def evaluate(
    model: Annotated[list[Path] | None, typer.Option(help="Model folder(s) with a manifest (default: the shipped "
                                                          "model); several are compared on the same phantoms.")] = None,
    phantoms: Annotated[int, typer.Option(min=1, help="Held-out phantoms (seeds never used in training).")] = 100,
    tiny: Annotated[bool, typer.Option(help="Small phantoms, for a quick check of the pipeline.")] = False,
    out: Annotated[Path, typer.Option(help="Folder for evaluation.json, .md and froc.png.")] = Path("evaluation"),
    threads: Annotated[int, typer.Option(min=1)] = 2,
    seed_base: Annotated[int, typer.Option(help="First phantom seed: 900000 the held-out set, 800000 the tuning "
                                                "set (for choosing between candidates).")] = 900_000,
    card: Annotated[bool, typer.Option(help="Write the FROC section into the model's model_card.md (one "
                                            "--model; --out inside the model folder).")] = False,
) -> None:
    """FROC and CPM (LUNA16 definitions) on held-out phantoms: JSON report and FROC plot."""
    import matplotlib

    matplotlib.use("Agg")
    from training.evaluate import HELD_OUT_SEED_BASE
    from training.froc import comparison_markdown, evaluate_models, model_card_markdown, phantom_cases, plot_froc

    folders = model or [shipped_model()]
    for folder in folders:
        if not (folder / "manifest.yaml").is_file():
            typer.echo(f"tamsoat: {folder} has no manifest.yaml", err=True)
            raise typer.Exit(2)
    if card and (len(folders) != 1 or not out.resolve().is_relative_to(folders[0].resolve())):
        typer.echo("tamsoat: --card needs exactly one --model and an --out folder inside it "
                   "(the card links the plot)", err=True)
        raise typer.Exit(2)
    cases = phantom_cases(phantoms, tiny=tiny, seed_base=seed_base)
    description = f"{phantoms} held-out {'tiny ' if tiny else ''}phantoms" + (
        f" (seeds {seed_base}..)" if seed_base != HELD_OUT_SEED_BASE else "")
    result = evaluate_models({f.parent.name + "/" + f.name: f for f in folders}, cases, description=description,
                             threads=threads, log=lambda line: typer.echo(line, err=True))
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation.json").write_text(json.dumps(result, indent=2))
    (out / "evaluation.md").write_text("".join(f"## {name}: {description}\n\n{model_card_markdown(result, name)}\n\n"
                                               for name in result["models"]))
    plot_froc(result).savefig(out / "froc.png", dpi=120, bbox_inches="tight")
    if card:
        from training.export import replace_card_section
        from training.froc import model_card_section

        folder = folders[0]
        name = next(iter(result["models"]))
        command = f"tamsoat evaluate --model {folder} --phantoms {phantoms}" + (" --tiny" if tiny else "") + (
            f" --seed-base {seed_base}" if seed_base != HELD_OUT_SEED_BASE else "") + f" --out {out} --card"
        about = ("Small phantoms (40×128×128 at 1.875×1.875×2.5 mm, log-uniform 5–15 mm nodules), a pipeline check."
                 if tiny else "Phantoms never used in training: 300×512×512 at 0.7×0.7×1.25 mm, up to 4 nodules "
                 "each, diameters 3–30 mm and types drawn from the LIDC-IDRI readers' annotations "
                 f"(`training/data/lidc_nodule_mix.json`), {result['nodules']} nodules.")
        section = model_card_section(result, name, command, (out / "froc.png").resolve().relative_to(
            folder.resolve()).as_posix(), about, TARGETS)
        card_file = folder / "model_card.md"
        card_file.write_text(replace_card_section(card_file.read_text() if card_file.is_file() else "", section))
        typer.echo(f"model card: {card_file}")
    typer.echo(comparison_markdown(result))
    typer.echo(f"\nwritten: {out / 'evaluation.json'}, {out / 'froc.png'}")
