"""The steps of the course experiment, shared by the ``ichlab`` command and the notebooks.

``reproduce`` runs them all: prepare the data, train the 2D, 2.5D and LSTM paths, predict
validation and test, choose thresholds on validation, evaluate on test with intervals,
and explain the LSTM with Grad-CAM. The notebooks call the same steps one at a time.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pandas as pd
import torch

from ichlab import SUBTYPES
from ichlab.config import Config

logger = logging.getLogger(__name__)

ARCHS = ("2d", "2.5d", "lstm")

# Column titles of the F1 table, as in the reference table.
ARCH_TITLES = {"2d": "2D", "2.5d": "2.5D", "lstm": "LSTM"}

# Slices per subtype whose CAMs the main job scores, by mode; each costs a backward pass per model.
CAM_SLICES_PER_SUBTYPE = {"quick": 4, "demo": 30, "full": 100}

# The dataset input each path consumes.
INPUT_KINDS = {"2d": "2d", "2.5d": "2.5d", "lstm": "sequence"}


def model_kwargs(config: Config) -> dict:
    """Return the ``build_model`` keyword arguments that the configuration fixes."""
    return {
        "pretrained": config.model.pretrained,
        "weights_file": config.model.weights_file,
        "backbone": config.model.backbone,
        "context_slices": config.data.context_slices,
        "lstm_hidden": config.model.lstm_hidden,
        "drop_rate": config.model.drop_rate,
    }


def train_path(config: Config, cache, arch: str, *, run_dir: Path | None = None, resume: bool = False, progress: bool = True):
    """Train one path on the cache's train split, early-stopping on its validation split.

    Parameters
    ----------
    config
        The run configuration; ``config.train`` sets the optimisation.
    cache
        A ``SliceCache`` from ``ichlab.data.prepare_data``.
    arch
        ``"2d"``, ``"2.5d"`` or ``"lstm"``.
    run_dir
        Where checkpoints and the history go (default ``config.runs_dir / arch``).
    resume
        Continue from ``run_dir / "last.pt"`` when it exists.

    Returns
    -------
    (model, history)
        The model holding the best validation-loss weights, and the per-epoch history.
    """
    from ichlab import datasets, models, training

    if arch not in ARCHS:
        raise ValueError(f"arch {arch!r} is not one of {', '.join(ARCHS)}")
    run_dir = Path(run_dir) if run_dir is not None else Path(config.runs_dir) / arch
    torch.manual_seed(config.train.seed)
    model = models.build_model(arch, **model_kwargs(config))
    loaders = datasets.make_loaders(cache, arch, config)
    history = training.train(model, loaders, config, run_dir, resume=resume, progress=progress)
    best = training.load_model(run_dir / "best.pt")
    return best, history


def checkpoint_matches(path: Path, config: Config, cache) -> bool:
    """Return True when the checkpoint at ``path`` was trained on this cache with this mode."""
    from ichlab import training

    if not path.is_file():
        return False
    saved = training.load_checkpoint(path).get("config", {})
    data = saved.get("data", {})
    return saved.get("mode") == config.mode and data.get("image_size") == cache.image_size


def load_or_train(config: Config, cache, arch: str, *, progress: bool = True):
    """Return the trained model of ``arch`` from ``config.runs_dir``, training it first if it is missing.

    Notebooks 07 and 08 use the checkpoints that notebooks 04 to 06 saved. When one of them
    runs on its own, this function trains the quick model and logs that it did.
    """
    from ichlab import training

    checkpoint = Path(config.runs_dir) / arch / "best.pt"
    if checkpoint_matches(checkpoint, config, cache):
        logger.info("loading the %s model from %s", arch, checkpoint)
        return training.load_model(checkpoint)
    logger.info("no %s checkpoint for %s mode at %s: training it now", arch, config.mode, checkpoint)
    model, _ = train_path(config, cache, arch, progress=progress)
    return model


def predict_split(config: Config, cache, model, split: str) -> pd.DataFrame:
    """Predict every slice of one split and return the prediction table.

    Returns
    -------
    pandas.DataFrame
        ``image_id``, ``patient_id``, ``series_uid``, ``slice_index``, one ``prob_<subtype>``
        column per subtype and the label columns, one row per slice in cache order.
    """
    from ichlab import datasets, training

    dataset = datasets.SliceDataset(
        cache, split, input_kind=INPUT_KINDS[model.arch], context_slices=config.data.context_slices
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=config.train.batch_size, shuffle=False)
    probabilities, rows = training.predict(model, loader)

    index = cache.index.iloc[rows].reset_index(drop=True)
    table = index[["image_id", "patient_id", "series_uid", "slice_index"]].copy()
    for column, subtype in enumerate(SUBTYPES):
        table[f"prob_{subtype}"] = probabilities[:, column]
    for subtype in SUBTYPES:
        table[subtype] = index[subtype].astype(int).to_numpy()
    return table


def reproduce(config: Config, out_dir: Path, *, archs: tuple[str, ...] = ARCHS, n_bootstrap: int = 1000, progress: bool = True) -> Path:
    """Run the whole course experiment and write its run folder.

    The folder holds ``config.json``, ``log.txt``, one checkpoint folder per path,
    ``predictions/<arch>_<split>.csv``, ``metrics_<arch>.csv``, ``f1_table.csv`` and
    ``f1_table.md`` (subtypes by path, with 95% intervals and the reference values),
    ``gradcam_subtypes.png``, ``cam_scores.csv`` and ``report.md``.

    Returns
    -------
    pathlib.Path
        ``out_dir``.
    """
    from ichlab import data, metrics

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_handler = _attach_log_file(out_dir / "log.txt")
    started = time.perf_counter()
    try:
        (out_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        logger.info("mode %s, writing the run to %s", config.mode, out_dir)

        cache = data.prepare_data(config, progress=progress)
        logger.info("data ready: %d slices, %d skipped", len(cache.index), len(cache.skipped))

        trained = {}
        results = {}
        predictions_dir = out_dir / "predictions"
        predictions_dir.mkdir(exist_ok=True)
        for arch in archs:
            logger.info("training the %s path", arch)
            model, _ = train_path(config, cache, arch, run_dir=out_dir / arch, progress=progress)
            trained[arch] = model
            tables = {}
            for split in ("val", "test"):
                tables[split] = predict_split(config, cache, model, split)
                tables[split].to_csv(predictions_dir / f"{arch}_{split}.csv", index=False)
            results[ARCH_TITLES[arch]] = metrics.evaluate(
                tables["val"], tables["test"], n_bootstrap=n_bootstrap, seed=config.data.seed, progress=progress
            )
            results[ARCH_TITLES[arch]].to_csv(out_dir / f"metrics_{arch}.csv")

        table = metrics.f1_table(results)
        table.to_csv(out_dir / "f1_table.csv")
        markdown = metrics.table_to_markdown(table)
        (out_dir / "f1_table.md").write_text(markdown + "\n")

        lstm_thresholds = results[ARCH_TITLES["lstm"]]["threshold"].to_dict() if "lstm" in trained else {}
        cam_section = _explain(config, cache, trained, lstm_thresholds, out_dir, progress=progress)
        _write_report(out_dir, config, markdown, cam_section, len(cache.skipped), time.perf_counter() - started)
        logger.info("done in %.0f s: %s", time.perf_counter() - started, out_dir)
    finally:
        logging.getLogger("ichlab").removeHandler(log_handler)
        log_handler.close()
    return out_dir


def _explain(config: Config, cache, trained: dict, thresholds: dict, out_dir: Path, *, progress: bool) -> str:
    """Write the Grad-CAM subtype figure and the CAM score table; return the report section.

    The figure shows, per subtype, the most confident true positive of the LSTM at the
    thresholds chosen on validation.
    """
    from ichlab import cam_figures, cam_scoring

    if "lstm" not in trained:
        return "Grad-CAM: the LSTM path was not trained in this run.\n"
    test_predictions = pd.read_csv(out_dir / "predictions" / "lstm_test.csv")
    figure_path = out_dir / "gradcam_subtypes.png"
    cam_figures.save_subtype_figure(
        trained["lstm"],
        cache,
        test_predictions,
        figure_path,
        context_slices=config.data.context_slices,
        thresholds={subtype: thresholds[subtype] for subtype in SUBTYPES},
    )

    section = "## Grad-CAM\n\n![subtype figure](gradcam_subtypes.png)\n\n"
    if cache.masks is None:
        return section + "CAM scores need lesion masks, which only the generated data has.\n"
    named_models = {ARCH_TITLES[arch]: model for arch, model in trained.items()}
    scores = cam_scoring.score_cams(
        named_models,
        cache,
        split="test",
        context_slices=config.data.context_slices,
        max_slices_per_subtype=CAM_SLICES_PER_SUBTYPE[config.mode],
        seed=config.data.seed,
        progress=progress,
    )
    scores.to_csv(out_dir / "cam_scores.csv", index=False)
    return section + cam_scoring.scores_to_markdown(scores) + "\n"


def _write_report(out_dir: Path, config: Config, f1_markdown: str, cam_section: str, n_skipped: int, seconds: float) -> None:
    lines = [
        f"# ichlab run ({config.mode} mode)",
        "",
        f"Data: {config.data.source}, {config.data.n_patients} patients, {config.data.image_size} px; "
        f"{n_skipped} files skipped. Wall time {seconds / 60:.1f} min.",
        "",
    ]
    if config.data.source == "generated":
        lines += [
            "These models were trained on a generated teaching phantom: their numbers say "
            "nothing about clinical performance.",
            "",
        ]
    lines += ["## Per-class F1 on the test split (95% interval by patient bootstrap)", "", f1_markdown, "", cam_section]
    (out_dir / "report.md").write_text("\n".join(lines))


def _attach_log_file(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    package_logger = logging.getLogger("ichlab")
    package_logger.addHandler(handler)
    if package_logger.getEffectiveLevel() > logging.INFO:
        package_logger.setLevel(logging.INFO)
    return handler

