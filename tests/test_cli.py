"""The command line, in-process: output, JSON, and bad input (one message, exit code 2, no traceback)."""
import json

import pytest

from stitchkit.cli import main


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_models(capsys):
    code, out, _ = _run(capsys, "models", "resnet5*")
    assert code == 0 and "resnet50" in out.split()
    code, out, _ = _run(capsys, "models", "*swin_t")
    assert "torchvision:swin_t" in out.split()


def test_stages_json(capsys):
    code, out, _ = _run(capsys, "stages", "resnet18", "--input-size", "64", "--json")
    data = json.loads(out)
    assert code == 0 and len(data["cuts"]) == 8
    assert data["cuts"][0] == {"stage": 1, "position": "first", "after": "layer1.0", "format": "NCHW",
                               "shape": [64, 16, 16], "prefix_tokens": 0}


def test_stages_table(capsys):
    code, out, _ = _run(capsys, "stages", "torchvision:swin_t", "--input-size", "64")
    assert code == 0 and "features.6" in out and "NHWC" in out
    assert "one block" not in out


def test_stages_table_says_when_a_stage_has_one_block(capsys):
    """regnety_004's stage 1 holds one block: its two rows name the same module, and a note says what that means."""
    code, out, _ = _run(capsys, "stages", "regnety_004", "--input-size", "64")
    assert code == 0 and out.count("s1.b1") == 2
    assert "stage 1 has one block: its first cut is its end (a gap 1:1 removes nothing)" in out


def test_inspect_json_matches_the_api(capsys):
    code, out, _ = _run(capsys, "inspect", "--src", "resnet18", "--dst", "resnet34", "--gap", "1:4",
                        "--input-size", "64", "--json")
    report = json.loads(out)
    assert code == 0
    assert [a["out"] for a in report["adapters"]] == [[128, 8, 8], [256, 4, 4], [512, 2, 2]]
    assert 0 < report["trainable_params"] < report["params"]
    assert report["macs_vs_dst"] == pytest.approx(report["gmacs"] / report["gmacs_dst"])


def test_inspect_text_and_finetune(capsys):
    code, out, _ = _run(capsys, "inspect", "--src", "resnet18", "--dst", "resnet18", "--gap", "2:4", "--input-size",
                        "64", "--adapter", "linear")
    assert code == 0 and "adapter chain (2)" in out and "GMACs" in out
    assert "costs more compute" not in out  # within one model a stitch skips blocks: cheaper than its source
    compute = next(line for line in out.splitlines() if "GMACs" in line)
    assert compute.count("% of resnet18") == 1, compute  # a self-stitch's one model, priced once
    code, out, _ = _run(capsys, "inspect", "--src", "resnet18", "--dst", "resnet50", "--gap", "1:2", "--input-size",
                        "64", "--adapter", "linear")
    assert code == 0 and "costs more compute than resnet18 itself" in out and "resnet50's later stages cost more" in out
    assert "% of resnet18 (" in out and "% of resnet50 (" in out  # two models: a share of each
    # The same model with resize='none': its later stages run at the source's resolution, and the note says that.
    code, out, _ = _run(capsys, "inspect", "--src", "resnet18", "--dst", "resnet18", "--gap", "1:4", "--input-size",
                        "64", "--adapter", "linear", "--resize", "none")
    assert code == 0 and "resnet18's later stages run at 16x16 instead of its own 2x2 (resize='none'" in out, out
    code, out, _ = _run(capsys, "inspect", "--src", "resnet18", "--dst", "resnet18", "--gap", "1:3", "--input-size",
                        "64", "--finetune")
    assert code == 0 and "layer2.0, layer3.0" in out


BAD = [
    (["inspect", "--src", "resnet5", "--dst", "resnet18"], "did you mean: resnet50"),
    (["inspect", "--src", "resnet18", "--dst", "swin_t"], "torchvision:swin_t"),
    (["inspect", "--src", "resnet18", "--dst", "resnet18", "--adapter", "botleneck"], "bottleneck"),
    (["inspect", "--src", "resnet18", "--dst", "resnet18", "--resize", "downsample"], "bilinear"),
    (["inspect", "--src", "resnet18", "--dst", "resnet18", "--gap", "3:1"], "write it as 1:3"),
    (["inspect", "--src", "resnet18", "--dst", "resnet18", "--gap", "0:2"], "outside 1-4"),
    (["inspect", "--src", "resnet18", "--dst", "resnet18", "--gap", "1:5"], "outside 1-4"),
    (["inspect", "--src", "resnet18", "--dst", "resnet18", "--gap", "a:b"], "X:Y"),
    (["inspect", "--src", "resnet18", "--dst", "resnet18", "--adapter", "vit_block"], "image adapter"),
    (["inspect", "--src", "resnet18", "--dst", "vit_tiny_patch16_224", "--finetune"], "same model"),
    (["inspect", "--src", "resnet18", "--dst", "resnet18", "--prefix-in", "avg"], "mean"),
    (["stages", "hrnet_w18_small", "--input-size", "64"], "cannot cut"),
    (["models", "nothing_like_this*"], "no supported model"),
    (["models", "*zzz*"], "; `stitchkit models` lists them all"),  # already as wide as a pattern goes
    # Only hints that match something: '*zzz*' matches nothing, so it is not offered for 'zzz*'.
    (["models", "zzz*"], "no supported model matches 'zzz*'; `stitchkit models` lists them all\n"),
    (["models", "net18d"], "try a wider pattern such as '*net18d*'\n"),
    (["models", "resnet180"], "did you mean: resnet18, "),
    (["models", "--pretrained", "vit_pico*"], "with pretrained weights in timm; 1 match without them (drop "
                                              "--pretrained"),
]


def test_model_patterns_ignore_case(capsys):
    assert _run(capsys, "models", "ResNet18")[1] == "resnet18\n"


@pytest.mark.parametrize("argv,message", BAD, ids=[" ".join(a[1:5]) for a, _ in BAD])
def test_bad_input_is_one_clear_message(capsys, argv, message):
    code, out, err = _run(capsys, *argv[:1], *argv[1:], *(["--input-size", "64"] if argv[0] == "inspect" else []))
    assert code == 2
    assert message in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_debug_shows_the_traceback():
    from stitchkit.errors import StitchkitError

    with pytest.raises(StitchkitError):
        main(["--debug", "inspect", "--src", "resnet5", "--dst", "resnet18"])


def test_debug_keeps_the_exit_code_of_a_user_error(monkeypatch, capsys):
    """The stitchkit command with --debug: the traceback, and exit code 2 as without it (not Python's 1)."""
    from stitchkit.cli import entry_point

    for argv in (["models", "nothing_like_this*"], ["--debug", "models", "nothing_like_this*"],
                 ["models", "nothing_like_this*", "--debug"]):
        monkeypatch.setattr("sys.argv", ["stitchkit", *argv])
        with pytest.raises(SystemExit) as stop:
            entry_point()
        err = capsys.readouterr().err
        assert stop.value.code == 2 and "no supported model matches" in err
        assert ("Traceback" in err) == ("--debug" in argv), err


def test_a_stray_option_after_the_command_shows_that_commands_usage(capsys):
    for argv, usage in ((["train", "--bogus"], "usage: stitchkit train "),
                        (["--bogus", "train"], "usage: stitchkit [")):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        err = capsys.readouterr().err
        assert stop.value.code == 2 and err.startswith(usage) and "unrecognized arguments: --bogus" in err, err


def test_readme_commands_are_the_ci_commands():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    readme = root.joinpath("README.md").read_text().splitlines()
    fence = readme.index("```bash")
    demo, tests = readme[fence + 1], readme[fence + 2]
    assert demo.startswith("bash scripts/setup.sh && .venv/bin/stitchkit ")
    assert tests in root.joinpath(".ci", "run").read_text().splitlines()


def test_readme_inspect_example_is_what_inspect_prints(capsys):
    """The README's sample of `stitchkit inspect` is the command's real output (it fell behind once)."""
    from pathlib import Path

    readme = Path(__file__).resolve().parents[1].joinpath("README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(readme) if line.startswith("$ stitchkit inspect "))
    shown = readme[start + 1:readme.index("```", start)]
    code, out, _ = _run(capsys, *readme[start].split()[2:])
    assert code == 0 and out.splitlines() == shown


def test_a_closed_pipe_is_not_an_error():
    """`stitchkit models | head -1`: the reader stops early; no BrokenPipeError traceback, exit status 0."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "stitchkit", "models"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait() == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_version_and_help_answer_without_importing_torch(capsys):
    import subprocess
    import sys

    import stitchkit

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"stitchkit {stitchkit.__version__}"
    # `stitchkit --help` must answer at once: nothing it runs may import torch or timm (seconds on a cold start).
    probe = ("import sys\nfrom stitchkit.cli import main\n"
             "for argv in (['--help'], ['train', '--help'], ['sweep', '--help']):\n"
             "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
             "print(sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
    assert "train.epochs=10  passes over the training data" in out  # train --help lists every setting


def test_every_option_has_help():
    from stitchkit.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name, sub in commands.items():
        for action in sub._actions:
            assert action.help, f"stitchkit {name} {'/'.join(action.option_strings) or action.dest} has no help"


def test_help_examples_keep_their_shell_line_continuations():
    """A backslash-newline in a plain string joins an example's two lines into one with a run of spaces; written
    as a backslash, the example shows as it is typed."""
    import re

    from stitchkit.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    for name, sub in commands.items():
        for line in (sub.description or "").splitlines():
            assert not re.search(r"\S {3,}\S", line), f"stitchkit {name} --help: {line!r}"


def test_help_shows_the_defaults_of_optional_positionals_and_no_empty_ones(capsys):
    """Every option shows its default (README): an optional positional too; a repeatable option's [] is noise."""
    for argv, shown in ((["models", "--help"], "(default: *)"), (["findings", "--help"], "fashion_mnist.yaml)")):
        with pytest.raises(SystemExit):
            main(argv)
        assert shown in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["eval-model", "--help"])
    assert "(default: [])" not in capsys.readouterr().out


def test_global_options_after_the_subcommand_and_overrides_after_options(capsys):
    assert main(["adapters", "--threads", "1"]) == 0
    code, out, _ = _run(capsys, "train", "mode=scratch", "--print-config", "model.src=resnet18", "train.epochs=3")
    assert code == 0 and "src: resnet18" in out and "epochs: 3" in out and "mode: scratch" in out


def test_sweep_print_config_shows_the_resolved_base(tmp_path, capsys):
    sweep = tmp_path / "s.yaml"
    sweep.write_text("base:\n  train: {epochs: 2}\npairs: [[resnet18, resnet18]]\ngaps: ['1:2']\n"
                     "methods: [downsample_linear]\nseeds: [0]\n")
    code, out, _ = _run(capsys, "sweep", str(sweep), "--print-config", "optim.lr=0.01")
    assert code == 0 and "epochs: 2" in out and "lr: 0.01" in out and "batch_size: 512" in out


def test_methods_lines_up_its_columns_for_the_longest_names(capsys):
    """Every column starts at one place on every line, the longest names (parallel_concat_conv3x3_relu) included, with
    at least one space after each cell."""
    from stitchkit.sweeps.methods import list_methods

    assert main(["methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    methods = list_methods()
    assert len(lines) == len(methods) and max(len(m.name) for m in methods) > 26  # longer than the old fixed width
    for field in ("adapter=", "resize="):
        assert len({line.index(field) for line in lines}) == 1, field
    assert len({len(line) - len(m.label) for line, m in zip(lines, methods)}) == 1  # the labels' column
    for line, m in zip(lines, methods):
        assert line.startswith(m.name + " ") and line.endswith(" " + m.label)


@pytest.mark.parametrize("command", ["adapters", "starts"])
def test_adapters_and_starts_line_up_their_columns_for_a_long_registered_name(command, capsys, monkeypatch):
    """A user's adapter or start may have a longer name than the old fixed columns (14 and 12 characters): every
    line's description still starts at one place."""
    from stitchkit import adapters, starts

    registry, existing = ((adapters._ADAPTERS, "bottleneck") if command == "adapters" else
                          (starts._STARTS, "lstsq"))
    monkeypatch.setitem(registry._items, "a_users_own_rather_long_name", registry.get(existing))
    assert main([command]) == 0
    lines = capsys.readouterr().out.splitlines()
    described = {name: registry.get(name).description for name in registry.names()}
    assert len(lines) == len(described)
    starts_at = set()
    for line in lines:
        name = line.split(" ")[0]
        assert line.endswith(" " + described[name]), line
        starts_at.add(len(line) - len(described[name]))
    assert len(starts_at) == 1


def test_inspect_prices_the_fine_tuning_baseline_with_its_new_head(capsys):
    """--num-classes gives the baseline the head mode=finetune trains with (it was ignored: the 1000-class head was
    priced), so inspect agrees with the sweep's dry run and the run's result.json."""
    from stitchkit.finetune import create_finetune_baseline
    from stitchkit.compute import count_params
    from stitchkit.zoo import create_model
    from stitchkit.zoo.models import fit_head

    argv = ["inspect", "--src", "resnet10t", "--dst", "resnet10t", "--gap", "1:3", "--finetune", "--input-size", "32",
            "--json"]
    assert main(argv) == 0
    own = json.loads(capsys.readouterr().out)["params"]
    assert main([*argv, "--num-classes", "10"]) == 0
    ten = json.loads(capsys.readouterr().out)["params"]
    model = create_model("resnet10t", input_size=32)
    fit_head(model, 10)
    assert ten == count_params(create_finetune_baseline(model, "1:3", input_size=32)) < own
    assert own - ten == 990 * (512 + 1)  # 990 fewer classes, each a row of 512 weights and a bias


def test_stages_refuses_a_bad_input_size_in_one_line(capsys):
    """As inspect does (a ViT ended in timm's traceback, a ResNet in a line that named no fix)."""
    for model, size in (("vit_tiny_patch16_224", "0"), ("resnet18", "-3")):
        assert main(["stages", model, "--input-size", size]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "positive whole number" in err, err
