"""`stream` (and `serve`) apply the GIL switch interval of the settings before anything else runs."""

from __future__ import annotations

import sys

from pydantic import ValidationError
from typer.testing import CliRunner

from longretriever.cli import app
from longretriever.core.errors import ServiceUnavailable


def test_stream_applies_the_gil_switch_interval(tmp_path):
    before = sys.getswitchinterval()
    try:
        runner = CliRunner()
        args = ["stream", "--bootstrap", "127.0.0.1:1", "--state-dir", str(tmp_path / "st")]
        r = runner.invoke(app, args, env={"LONGRETRIEVER_GIL_SWITCH_INTERVAL_MS": "7"})
        assert isinstance(r.exception, ServiceUnavailable)  # the broker is unreachable: set before that
        assert abs(sys.getswitchinterval() - 0.007) < 1e-9
        sys.setswitchinterval(before)
        r = runner.invoke(app, args, env={"LONGRETRIEVER_GIL_SWITCH_INTERVAL_MS": "0"})
        assert isinstance(r.exception, ValidationError)  # validated (the CLI's handler: one line, exit 2)
        assert "gil_switch_interval_ms" in str(r.exception)
        assert sys.getswitchinterval() == before
    finally:
        sys.setswitchinterval(before)
