"""The demo's code path end to end at tiny scale (a few hundred images, one epoch, one thread)."""
import pytest

from stitchkit.demo import RESNET, VIT, DemoScale, demo_sweeps, run_demo
from stitchkit.errors import StitchkitError
from stitchkit.reports.collect import collect
from stitchkit.training.data import find_fashion_mnist

TINY = DemoScale(source_images=192, source_epochs=1, stitch_images=96, stitch_epochs=1, val_images=64, batch_size=32)


def test_demo_plan_matches_the_issue(tmp_path):
    sources, resnet, vit, finetune = demo_sweeps(tmp_path, TINY)
    assert sorted(c.src for c in sources.runnable) == sorted([RESNET, VIT])
    assert sorted((c.gap, c.method) for c in resnet.runnable) == sorted(
        (g, m) for g in ("1:1", "1:2", "1:3", "1:4") for m in ("downsample_linear", "downsample_bottleneck"))
    assert {c.dst for c in vit.runnable} == {VIT} and {c.gap for c in vit.runnable} == {"1:2", "1:3"}
    assert [(c.kind, c.gap) for c in finetune.runnable] == [("finetune", "1:3")]
    # Each pair's stitches share the ResNet's Stage-1 front and train in one pass.
    assert [len(g) for g in resnet.groups(resnet.runnable)] == [8]
    assert [len(g) for g in vit.groups(vit.runnable)] == [4]


@pytest.mark.slow
def test_demo_end_to_end_and_source_models_are_reused(tmp_path, capsys):
    try:
        find_fashion_mnist(None)
    except StitchkitError:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    index = run_demo(tmp_path, scale=TINY, threads=1)
    out = capsys.readouterr().out
    assert index.is_file() and "report:" in out and f"{RESNET} (trained from scratch)" in out
    rows, originals = collect(tmp_path)
    assert len(rows) == 15 and all(r["status"] == "finished" for r in rows)
    assert "(8 stitches in one pass)" in out and "(4 stitches in one pass)" in out
    assert set(originals) == {RESNET, VIT} and all(o["source"].startswith("trained from scratch") for o in originals.values())
    assert (tmp_path / "report" / "table1.md").is_file() and len(list((tmp_path / "report").glob("*.png"))) >= 3
    # A second run trains nothing again: every cell was finished and is skipped.
    run_demo(tmp_path, scale=TINY, threads=1)
    for log in tmp_path.rglob("attempts.log"):
        assert log.read_text().count("start") == 1
