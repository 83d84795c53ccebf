"""``stitchkit search``: which stitches of a zoo to train under a compute budget."""
from __future__ import annotations

from ..errors import StitchkitError
from .common import add_command


def add_parser(subparsers) -> None:
    p = add_command(
        subparsers, "search", _search, "choose which stitches of a zoo to train under a compute budget",
        "Price every (source, destination, gap, adapter) stitch of the models without building them, score those "
        "within the budget by training-free proxies on a few hundred training images, train the best few for their "
        "compute as one resumable sweep, and write the accuracy-compute frontier (table, figure, model folders, "
        "report). Killed at any moment, the same command continues.\n\n"
        "example:\n  stitchkit search --models resnet18,mobilenetv3_large_100,vit_small_patch16_224 \\\n"
        "      --budget-gmacs 1.5 --train-top 12 --out runs/search data.name=imagefolder data.root=/data/imagenet")
    p.add_argument("--models", default=None, help="comma-separated model names (timm, torchvision:NAME)")
    p.add_argument("--study", default=None, metavar="FILE",
                   help="instead: the proxies' study (configs/search/fashion_mnist.yaml): train a zoo and every "
                        "candidate, and measure how well each proxy ranks them")
    p.add_argument("--doc", default=None, help="with --study: write its page here (e.g. docs/search.md)")
    p.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH",
                   help="weights for a model (repeat per model); others use model.pretrained")
    p.add_argument("--budget-gmacs", type=float, default=None, help="most compute a stitch may cost, in GMACs")
    p.add_argument("--adapters", default=None,
                   help="comma-separated methods or adapters (bottleneck = downsample_bottleneck; "
                        "default: downsample_linear,downsample_bottleneck); single stitches, no parallel_* methods")
    p.add_argument("--gaps", default=None, help="comma-separated gaps (default: the paper's nine)")
    p.add_argument("--data", default=None, metavar="NAME", help="shorthand for data.name=NAME")
    p.add_argument("--proxy", default=None,
                   help="the proxy that chooses what trains: init_accuracy_quick (the default: accuracy at the "
                        "default start with an eighth of its fitting; ranks as well as the full start, docs/search.md), "
                        "init_accuracy (at the full default start: ~7x dearer), lstsq_accuracy (at the least-squares "
                        "start: cheapest, ranks worse), fit_residual, cka, kl, naswot")
    p.add_argument("--selection", default="frontier", choices=("frontier", "top"),
                   help="frontier: the best predicted stitch at every compute; top: the best K scores")
    p.add_argument("--train-top", type=int, default=10, metavar="K", help="how many candidates to train (0: none)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds each chosen stitch trains with")
    p.add_argument("--calibration-images", type=int, default=None,
                   help="images each start is fitted on (default: as many as training's start measures for the "
                        "stitch, model.init_images or its own choice, 256 to 2048)")
    p.add_argument("--probe-images", type=int, default=256, help="other images the proxies are measured on")
    p.add_argument("--list", action="store_true", help="list the candidates with their cost and stop")
    p.add_argument("--out", default="runs/search", help="output folder (resumable)")
    p.add_argument("--smoke", action="store_true", help="a few hundred images and one epoch: checks the path")
    p.add_argument("--workers", type=int, default=1, help="processes training side by side")
    p.add_argument("settings", nargs="*", metavar="key=value", help="training settings, as for stitchkit train")


def _split(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _search(args) -> int:
    from ..errors import unknown_name
    from ..stitch_search import PROXIES, run_search, search
    from ..stitch_search.run import DEFAULT_PROXY
    from ..training import RunInterrupted
    from ..training.config import _parse_yaml

    if args.proxy is not None and args.proxy not in PROXIES:
        # Checked whatever else is asked (--list, --study): a misspelt proxy is a mistake even where it would not be
        # used this time, and the next run without --list would stop on it.
        raise unknown_name("proxy", args.proxy, list(PROXIES))
    settings = {}
    for item in args.settings:
        if "=" not in item:
            raise StitchkitError(f"expected key=value settings, got {item!r}")
        key, value = item.split("=", 1)
        settings[key] = _parse_yaml(value, f"the value of {key}")
    if args.data:
        settings["data.name"] = args.data
    checkpoints = {}
    for item in args.checkpoint:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise StitchkitError(f"--checkpoint takes NAME=PATH, got {item!r}")
        checkpoints[name] = path
    try:
        seeds = tuple(int(s) for s in _split(args.seeds) or ["0"])
    except ValueError:
        raise StitchkitError(f"--seeds takes comma-separated integers, got {args.seeds!r}") from None
    if args.study:
        from ..stitch_search.study import run_study

        # The study's file names its zoo, gaps, adapters and training, and it measures every proxy: options that
        # choose a search's candidates or what it trains would be ignored, so they are refused.
        defaults = {"models": None, "checkpoint": [], "budget_gmacs": None, "adapters": None, "gaps": None,
                    "data": None, "proxy": None, "selection": "frontier", "train_top": 10, "seeds": "0",
                    "calibration_images": None, "probe_images": 256, "list": False, "settings": []}
        ignored = [name for name, default in defaults.items() if getattr(args, name) != default]
        if ignored:
            spelled = ", ".join("key=value settings" if n == "settings" else "--" + n.replace("_", "-")
                                for n in ignored)
            raise StitchkitError(f"--study runs the study its file describes and measures every proxy; {spelled} "
                                 "would be ignored: drop them (or run a search without --study)")

        try:
            run_study(args.study, args.out if args.out != "runs/search" else "runs/search_study", args.doc,
                      smoke=args.smoke, threads=args.threads, workers=args.workers)
        except RunInterrupted as stop:
            from .demo import _stopped

            return _stopped("search", stop)
        return 0
    if args.doc:
        raise StitchkitError("--doc writes the study's page: it goes with --study FILE (a search writes its report "
                             "under --out)")
    models = _split(args.models) or []
    if not models:
        raise StitchkitError("stitchkit search needs --models A,B,... (or --study FILE)")
    # the image counts too: a count --list would not use is still checked, as the search without --list refuses it
    common = dict(checkpoints=checkpoints, gaps=_split(args.gaps), adapters=_split(args.adapters), settings=settings,
                  calibration_images=args.calibration_images, probe_images=args.probe_images)
    if args.list:
        records = search(models, args.budget_gmacs, proxies=False, **common)
        for r in sorted(records, key=lambda r: (r.get("gmacs") is None, r.get("gmacs") or 0)):
            cost = f"{r['gmacs']:.4f}" if r.get("gmacs") is not None else "-"
            note = f"  ({r['skip_reason']})" if r.get("skip_reason") else ""
            print(f"{cost:>8} GMACs  {r['src']} -> {r['dst'] or '-'}  {r['gap'] or '-'}  {r['method'] or '-'}{note}")
        return 0
    try:
        result = run_search(models, args.out, args.budget_gmacs, train_top=args.train_top,
                            proxy=args.proxy or DEFAULT_PROXY,
                            selection=args.selection, seeds=seeds, workers=args.workers, smoke=args.smoke, **common)
    except RunInterrupted as stop:
        from .demo import _stopped

        return _stopped("search", stop)
    for t in result["frontier"]:
        print(f"{t['gmacs']:.4f} GMACs  {t['top1']:6.2f}%  {t['src']} -> {t['dst']} {t['gap']} {t['method']}")
    return 0
