"""`python -m toy_problems inspect --problem NAME ...`; `python -m toy_problems --list` lists the problems, then the methods."""

import sys

from toy_problems.inspect_cli import main

if __name__ == "__main__":
    sys.exit(main())
