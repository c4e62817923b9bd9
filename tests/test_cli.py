"""The ``ptobj`` command line: subcommands, their --help, recipes by bundled name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ptobj import cli
from ptobj.recipes.engine.config import ConfigError
from ptobj.recipes.engine.train_config import RECIPES_DIR, bundled_recipes, load_train_config, recipe_path

ROOT = Path(__file__).resolve().parents[1]


def test_usage_lists_every_subcommand(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("train", "prepare", "export", "infill", "evaluate", "sweep", "experiment", "rl", "dpo"):
        assert f"  {name} " in out, name
    assert cli.main([]) == 2
    assert cli.main(["no-such-command"]) == 2
    assert "unknown subcommand 'no-such-command'" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_subcommand_has_help_naming_itself(name, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main([name, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: ptobj {name}"), out[:200]
    assert "-h, --help" in out


def test_recipes_resolve_by_bundled_name_or_path(tmp_path):
    names = bundled_recipes()
    assert "gpt_fim_tiny" in names and len(names) == len(list(RECIPES_DIR.glob("*.yaml")))
    assert recipe_path("gpt_fim_tiny") == recipe_path("gpt_fim_tiny.yaml") == RECIPES_DIR / "gpt_fim_tiny.yaml"
    local = tmp_path / "mine.yaml"
    local.write_text((RECIPES_DIR / "causal_lm_tiny.yaml").read_text())
    assert recipe_path(str(local)) == local
    assert load_train_config("causal_lm_tiny", ["schedule.train_steps=30"]).schedule.train_steps == 30
    with pytest.raises(ConfigError, match="gpt_fim_tinyy: no such file, and no bundled recipe.*gpt_fim_tiny"):
        recipe_path("gpt_fim_tinyy")
    with pytest.raises(ConfigError, match="no such file"):
        recipe_path(str(tmp_path / "gone" / "gpt_fim_tiny.yaml"))     # a path is never a bundled name


def test_the_console_script_runs_from_another_folder(tmp_path):
    """``ptobj`` as installed (the venv's script), run outside the checkout."""
    script = Path(sys.executable).parent / "ptobj"
    if not script.exists():
        pytest.skip("the ptobj console script is not installed in this environment")
    listed = subprocess.run([str(script), "train", "--list"], cwd=tmp_path, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == bundled_recipes()
    bad = subprocess.run([str(script), "train", "gpt_fim_tiny", "optim.lrr=1"], cwd=tmp_path, capture_output=True,
                         text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("config error: gpt_fim_tiny: optim.lrr: unknown key")


def test_output_cut_short_by_its_reader_ends_without_a_traceback(tmp_path):
    """``ptobj train --list | head -1``: the reader has gone when the list is written."""
    proc = subprocess.Popen([str(Path(sys.executable).parent / "ptobj"), "train", "--list"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # long before the command has imported what it needs and printed
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 141
    assert "Traceback" not in err and "BrokenPipe" not in err, err
