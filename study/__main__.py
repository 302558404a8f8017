from trainable.cli import run_main

from study.run import main

run_main(main)
