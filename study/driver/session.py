"""The Ray session the study's commands share: started here (with the reaper that ends its processes if the
driver dies), or an existing cluster reached at ``--address``; Ray's own console noise kept in the study's logs.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from trainable import UserError

# Quiet: our own console lines instead of Ray's tables; no CSV/TensorBoard files per trial unless asked for.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


def check_reachable(address: str, source: str = "--address") -> None:
    """Fail at once where nothing listens at ``address`` (given by ``source``): ray.init would retry it for minutes."""
    if address in ("auto", "local") or "://" in address:
        return
    import socket

    # 127.0.0.1 -> the node's IP, as ray.init does (Ray's GCS may listen on that IP only). Ray has no public form of this
    # function; where a Ray lacks it the address is probed as given.
    try:
        from ray._private.services import canonicalize_bootstrap_address
    except ImportError:  # a Ray without it: probe the address as given
        canonicalize_bootstrap_address = str
    try:
        host, _, port = canonicalize_bootstrap_address(address).rpartition(":")
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot reach the Ray cluster at {address}, from {source} ({exc}): start it with ray start --head, "
                        f"or check {source}" + (" (unset it to run on a Ray instance of the study's own)" if source.startswith("$") else "")) from None


def start_ray(address: str | None, log_to_driver: bool = False) -> str:
    """Start Ray for this driver, or join the cluster at ``address`` (else at $RAY_ADDRESS, where it is set); returns the
    one line that says which, every time.

    Without either, the study starts a Ray instance of its own (``address="local"``): a cluster that ``ray start``
    left running on this machine is never joined silently (Ray's own rule would join it)."""
    import ray

    from study.driver import reaper

    env = os.environ.get("RAY_ADDRESS") if not address else None
    joined = address or env
    how = "$RAY_ADDRESS" if env else "--address"
    if joined:
        check_reachable(joined, how)
    else:
        reaper.spawn()  # ends this driver's local Ray processes even if it is killed hard
    if log_to_driver and not sys.stdout.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # workers' lines reach a file or pipe: no ANSI colour codes in it
    kwargs = dict(logging_level=logging.ERROR, log_to_driver=log_to_driver, configure_logging=True)
    try:
        if joined:
            ray.init(address=joined, **kwargs)
        else:
            ray.init(address="local", include_dashboard=False, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {joined}" + (" ($RAY_ADDRESS)" if env else "") if joined else "a local Ray instance"
        auth = ("; a cluster with token authentication (ray start --head's default where ~/.ray/auth_token exists) "
                "also needs RAY_AUTH_MODE=token here") if joined and not os.environ.get("RAY_AUTH_MODE") else ""
        raise UserError(f"cannot start or reach {where} ({str(exc).splitlines()[0]}): check --address, or leave it out{auth}") from None
    resources = ray.cluster_resources()
    size = (f"{len([n for n in ray.nodes() if n.get('Alive')])} node(s), {resources.get('CPU', 0):g} CPU(s), "
            f"{resources.get('GPU', 0):g} GPU(s)")
    if not joined:
        return f"Ray: a local instance started for this run ({size})"
    return f"Ray: the cluster at {joined}, from {how} ({size})"


# Ray loggers whose tracebacks the console need not show: Ray's experiment snapshot (a sync of driver_artifacts that
# races with the next stage's start; the study does not need it to resume) and the controller's traceback of a trial
# whose process died (the study prints its own line for it, and keeps the text in logs/trial-<n>.log). A traceback on
# the console says something broke when nothing did. Their records go to the study's logs/ray.log instead.
RAY_QUIET_LOGGERS = ("ray.tune.execution.experiment_state", "ray.tune.execution.tune_controller")


class _QuietFileHandler(logging.FileHandler):
    def handleError(self, record):
        if isinstance(sys.exc_info()[1], OSError):  # the log's disk is full: the record is lost, never a traceback on the console
            return
        super().handleError(record)  # anything else (a record that cannot be formatted) is a bug worth its traceback


def keep_ray_tracebacks_in(log_file: Path) -> None:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = _QuietFileHandler(log_file, delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in RAY_QUIET_LOGGERS:
        logger = logging.getLogger(name)
        logger.propagate = False
        logger.handlers = [handler]
