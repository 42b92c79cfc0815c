import sys

from cdp.cli import main

main(["worker", *sys.argv[1:]])
