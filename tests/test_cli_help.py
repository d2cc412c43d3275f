"""Every option of `split`, `tiny-checkpoint` and `demo` has help text and `--help` shows its default."""

from __future__ import annotations

import argparse
import importlib

import pytest

from hf_qwen3_deepstack import cli
from hf_qwen3_deepstack.cli_values import HelpFormatter

COMMANDS = ["split", "tiny-checkpoint", "demo"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_has_help_that_states_its_default(command):
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter)
    importlib.import_module(cli.COMMANDS[command][0]).add_arguments(parser)
    formatter = HelpFormatter(command)
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or not action.option_strings:
            continue
        assert action.help, f"{command} {action.option_strings[0]} has no help text"
        if not action.required:
            assert "default" in formatter._get_help_string(action), f"{command} {action.option_strings[0]}"


def test_help_output_shows_defaults(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["split", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert done.value.code == 0
    assert "(default: 5GB)" in out and "(default: auto)" in out and "default: the repo's main branch" in out
    assert "ENCODER_REPO and the language-model folder to LM_REPO" in out


def test_serve_help_leaves_out_the_options_of_a_requests_file(capsys):
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    out = capsys.readouterr().out
    assert "--max-batch-size" in out and "--api-key" in out and "--media-fetch-timeout" in out
    for run_only in ("--requests", "--output", "--print-results", "--summary-json"):
        assert run_only not in out, run_only
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    assert "--summary-json" in capsys.readouterr().out
