from trainable.cli import run_main

from bench.cli import main

run_main(main)
