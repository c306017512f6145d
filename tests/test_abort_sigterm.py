"""SIGTERM from a launcher (torchrun's agent, the ``mp.spawn`` parent) after another rank failed
must still leave a closed run record: ``aborted`` with the failing rank's reason, or
``interrupted`` when no rank published a failure. Without the handler the process died with
the record saying ``running`` whenever the signal beat the watchdog's next poll."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from typing import List, Tuple

import pytest
import torch.distributed as dist

from fastreid_ext.engine import abort
from fastreid_ext.engine.abort import AbortTiming, AbortWatchdog


class _Ended(Exception):
    pass


def _watchdog(monkeypatch, store: dist.Store) -> Tuple[AbortWatchdog, List[Tuple[str, str]]]:
    calls: List[Tuple[str, str]] = []
    monkeypatch.setattr(abort, "_end_process", lambda code: (_ for _ in ()).throw(_Ended(code)))
    dog = AbortWatchdog(
        store, rank=0, timing=AbortTiming(30.0), on_exit=lambda s, r: calls.append((s, r))
    )
    return dog, calls


def test_sigterm_after_a_peer_failure_records_aborted(monkeypatch):
    store = dist.HashStore()
    dog, calls = _watchdog(monkeypatch, store)
    peer = AbortWatchdog(store, rank=1, timing=AbortTiming(30.0))
    peer.publish("RuntimeError: injected")
    with pytest.raises(_Ended) as ended:
        dog.on_sigterm(signal.SIGTERM)
    assert ended.value.args[0] == abort.EXIT_PEER_FAILED
    assert len(calls) == 1 and calls[0][0] == "aborted"
    assert "rank 1 failed" in calls[0][1] and "RuntimeError: injected" in calls[0][1]


def test_sigterm_without_a_peer_failure_records_interrupted(monkeypatch):
    dog, calls = _watchdog(monkeypatch, dist.HashStore())
    with pytest.raises(_Ended) as ended:
        dog.on_sigterm(signal.SIGTERM)
    assert ended.value.args[0] == 128 + signal.SIGTERM
    assert calls == [("interrupted", "SIGTERM")]


def test_handler_is_installed_in_the_main_thread_and_runs_on_a_real_signal(tmp_path):
    """A real process: install the handler, publish a peer failure, SIGTERM itself."""
    record = tmp_path / "record.json"
    code = textwrap.dedent(
        f"""
        import json, os, signal, time
        import torch.distributed as dist
        from fastreid_ext.engine.abort import AbortTiming, AbortWatchdog
        store = dist.HashStore()
        AbortWatchdog(store, 1, AbortTiming(30.0)).publish("ValueError: boom")
        def on_exit(status, reason):
            open({str(record)!r}, "w").write(json.dumps([status, reason]))
        dog = AbortWatchdog(store, 0, AbortTiming(30.0), on_exit=on_exit)
        previous = dog.install_sigterm_handler()
        assert previous is signal.SIG_DFL, previous
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=60)
    assert proc.returncode == abort.EXIT_PEER_FAILED, proc.stderr.decode()
    status, reason = json.loads(record.read_text())
    assert status == "aborted" and "ValueError: boom" in reason
    assert b"[rank 0] stopping" in proc.stderr
