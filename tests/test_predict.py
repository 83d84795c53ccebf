"""stitchkit predict: a finished run's model on image files, preprocessed as its validation images were."""
import json

import pytest

from stitchkit.cli import main
from stitchkit.training import load_config, train
from stitchkit.training.data import SyntheticSource

TINY = ["data.name=synthetic", "data.input_size=32", "data.synthetic_train_size=128", "data.synthetic_val_size=40",
        "optim.batch_size=32", "train.batch_size=16", "train.workers=0", "train.threads=1", "model.pretrained=false",
        "mode=scratch", "model.src=resnet10t", "train.epochs=2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    result = train(load_config(None, [*TINY, f"output.dir={root / 'run'}"]))
    images = root / "images"
    images.mkdir()
    val = SyntheticSource(40, 10, 32 + 32 // 8, offset=10**6)  # the run's validation images, as files
    labels = {}
    for i in range(len(val)):
        image, label = val.load(i)
        image.save(images / f"{i:03d}.png")
        labels[f"{i:03d}.png"] = label
    return root / "run", images, labels, result


def test_predictions_reproduce_the_runs_validation_accuracy(trained, capsys):
    run, images, labels, result = trained
    assert main(["predict", str(run), str(images), "--json", "--top-k", "3", "--batch-size", "16"]) == 0
    answers = json.loads(capsys.readouterr().out)
    assert len(answers) == 40 and all(len(a["top"]) == 3 for a in answers)
    first = answers[0]["top"]
    assert first[0]["class"] == f"class_{first[0]['index']}"  # the run's own class names
    assert first[0]["probability"] >= first[1]["probability"] >= first[2]["probability"] > 0
    correct = sum(a["top"][0]["index"] == labels[a["file"].rsplit("/", 1)[-1]] for a in answers)
    assert 100.0 * correct / 40 == pytest.approx(result["top1"])  # the same pipeline as its evaluation


def test_unreadable_files_are_named_and_skipped(trained, tmp_path, capsys):
    run, images, _, _ = trained
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    (tmp_path / "notes.txt").write_text("hello")
    assert main(["predict", str(run), str(images / "000.png"), str(tmp_path / "broken.jpg"),
                 str(tmp_path / "notes.txt")]) == 0
    out, err = capsys.readouterr()
    assert out.count("\n") == 1 and out.startswith(str(images / "000.png")) and "%" in out
    assert "skipped" in err and "broken.jpg" in err and "notes.txt" in err
    assert main(["predict", str(run), str(tmp_path / "broken.jpg")]) == 2
    assert "none of the 1 files could be read" in capsys.readouterr().err
    assert main(["predict", str(tmp_path), str(images)]) == 2  # not a run folder
    assert "neither a run folder" in capsys.readouterr().err


def test_the_python_predictor_takes_a_batch_of_any_size_even_none(trained):
    from PIL import Image

    from stitchkit.predict import Predictor

    run, images, _, _ = trained
    predictor = Predictor(run)
    assert predictor.predict([]) == []  # torch.stack of nothing raised
    one = predictor.predict([Image.open(images / "000.png")], top_k=2)
    assert len(one) == 1 and len(one[0]) == 2
