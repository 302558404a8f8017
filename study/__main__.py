from trainable.cli import run_main

from .run import main

run_main(main)
