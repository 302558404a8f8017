"""``python -m study.run``: the study's command line. It parses the options (``study.options``) into what the user asks
for, hands it to the study (``study.stages.study``: ``new_study`` or ``resume_study``) and turns how it ended into an
exit code. Its ``--help`` text is ``study.options.HELP``.
"""

from __future__ import annotations

import datetime as dt
import signal
import sys
from pathlib import Path

from trainable import UserError
from trainable.cli import run_main

from study.options import StudyOptions

EXIT_OK, EXIT_STOPPED, EXIT_BAD_INPUT, EXIT_NO_RESULT = 0, 1, 2, 3


def default_name(data_dir: str | None) -> str:
    stem = Path(data_dir).resolve().name if data_dir else "hotdog"
    return f"{stem}-{dt.datetime.now():%Y%m%d-%H%M%S}"


def main(argv: list[str] | None = None) -> int:
    # SIGTERM (a preempted job) is handled as Ctrl-C throughout: Ray's handler during the trials, else an interrupt
    signal.signal(signal.SIGTERM, lambda signum, frame: signal.raise_signal(signal.SIGINT))
    opts = StudyOptions.parse(list(sys.argv[1:] if argv is None else argv))
    if opts.show_space:
        from study.core.space import load_space, show_space

        print(show_space(load_space(opts.space)))
        return EXIT_OK
    from study.driver.trackers import check_trackers
    from study.stages.study import FINISHED, NO_RESULT, new_study, resume_study

    check_trackers(opts.tensorboard, opts.mlflow)
    if opts.resume and opts.warm_start:
        raise UserError("--warm-start begins a new study: a resumed study keeps how it began; leave --warm-start out")
    if opts.resume:
        if not opts.name:
            raise UserError("--resume needs --name: the study to continue (a folder under --results-dir)")
        outcome = resume_study(opts.name, opts.results_dir, opts.ask_anew, opts.accept_data_change, opts.retry_timed_out)
    else:
        outcome = new_study(opts.request(opts.name or default_name(opts.data_dir)), opts.results_dir, opts.warm_start)
    return {FINISHED: EXIT_OK, NO_RESULT: EXIT_NO_RESULT}.get(outcome.status, EXIT_STOPPED)


if __name__ == "__main__":
    run_main(main)
