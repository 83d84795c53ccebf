"""The words a report shows people: column headings for the CSV field names, and counted nouns."""
from __future__ import annotations

# The CSV files keep the field names (scripts read them); the page shows these headings instead, with the field
# name as the heading's tooltip so a reader can find the column in results.csv and summary.csv.
COLUMN_LABELS = {
    "pair": "source -> destination",
    "stitch": "source -> destination",
    # the search's proxies (stitchkit.stitch_search.proxies), measured before training
    "init_accuracy": "top-1 at the start (%)",
    "init_accuracy_quick": "top-1 at the quick start (%)",
    "lstsq_accuracy": "top-1 at the least-squares start (%)",
    "fit_residual": "fit residual",
    "cka": "linear CKA at the cuts",
    "kl": "KL to the destination",
    "naswot": "NASWOT score",
    "src": "source model",
    "dst": "destination model",
    "gap": "gap (stages)",
    "src_stage": "source stage",
    "dst_stage": "destination stage",
    "method": "method",
    "kind": "kind",
    "seed": "seed",
    "lr": "learning rate",
    "n": "seeds",
    "top1": "top-1 (%)",
    "top1_mean": "top-1 (%)",
    "top1_se": "± SE",
    "top5": "top-5 (%)",
    "top5_mean": "top-5 (%)",
    "top1_at_start": "top-1 before training (%)",
    "top1_at_start_mean": "top-1 before training (%)",
    "holdout_top1": "held-out top-1 (%)",
    "holdout_top1_mean": "held-out top-1 (%)",
    "gmacs": "GMACs",
    "params": "parameters",
    "trainable_params": "trained parameters",
    "selected_on": "learning rate chosen on",
    "n_failed": "failed runs",
    "training": "trained on",
    "epochs": "epochs",
    "wall_time_s": "wall time (s)",
    "status": "status",
    "error": "error",
    "dataset": "dataset",
    "input_size": "input size (px)",
    "train_images": "training images",
    "adapter_norm": "adapter norm",
    "sweep": "sweep",
    "also_in": "also in sweeps",
    "subset_of": "every run also in sweep",
    "classes": "classes",
    "settings_id": "settings digest",
    "run_dir": "run folder",
    "model": "model",
    "source": "where the number comes from",
}

# Counts, shown without decimals even where a mean over seeds made them floats (684 parameters, not 684.00).
COUNT_COLUMNS = frozenset({"n", "n_failed", "params", "trainable_params", "epochs", "train_images", "input_size",
                           "seed", "src_stage", "dst_stage"})


def column_label(name: str) -> str:
    """The heading for a field; a field added later without a heading shows its name rather than nothing."""
    return COLUMN_LABELS.get(name, name)


def plural(n: int, noun: str) -> str:
    """``1 seed``, ``3 seeds``, ``0 seeds``: every count the reports print goes through here."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
