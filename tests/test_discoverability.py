"""What a user finds by looking: dir(sskt) in a REPL, and the CLI's --help."""
import pytest

import sskt
from sskt.cli import main


def test_dir_lists_the_lazily_loaded_api():
    names = dir(sskt)
    assert {"fit", "distill", "load_model", "register_model", "ExperimentConfig", "__version__"} <= set(names)
    assert set(sskt.__all__) <= set(names) and "__getattr__" in names  # what dir showed before, still there
    assert names == sorted(names)


def _help(capsys, command):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    return capsys.readouterr().out


def test_quickstart_help_says_what_seeds_and_out_are(capsys):
    text = " ".join(_help(capsys, "quickstart").split())
    assert "--seeds N runs of scratch and of SSKT each" in text and "--out DIR folder of the runs" in text


def test_train_help_lists_a_sources_keys(capsys):
    text = " ".join(_help(capsys, "train").split())
    assert "a source (each entry of method.sources" in text
    for key in ("name=(required)", "input_size=null", "adapt=none", "bn_mode=eval", "model_kwargs=null"):
        assert key in text
