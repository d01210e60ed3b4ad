import json

from gladiff.cli import main


def test_models_table(capsys):
    assert main(["models", "--filter=-S/2"]) == 0
    out = capsys.readouterr().out
    assert "DiG-S/2" in out and "33,081,632" in out and "5.49" in out
    assert "DiT-S/2" in out and "32,963,360" in out


def test_models_json_and_errors(capsys):
    assert main(["models", "--filter", "DiT-B/4", "--json", "--image-size", "512"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["name"] == "DiT-B/4" and rows[0]["latent_size"] == 64
    assert main(["models", "--filter", "nothing-matches"]) == 2
    assert "no model name contains" in capsys.readouterr().err
