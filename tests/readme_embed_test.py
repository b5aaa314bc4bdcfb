#!/usr/bin/env python3
"""The README's embedding program is examples/embed/main.cc, to the letter:
what the README shows is what CI compiles and runs (scripts/embed-test.sh).
usage: readme_embed_test.py SOURCE_DIR"""
import re
import sys

root = sys.argv[1]
readme = open(f"{root}/README.md").read()
program = open(f"{root}/examples/embed/main.cc").read()
blocks = re.findall(r"```cpp\n(.*?)```", readme, re.S)
if program not in blocks:
    print("README.md: no ```cpp block is examples/embed/main.cc as it is; "
          "paste the file again", file=sys.stderr)
    sys.exit(1)
print("README.md shows examples/embed/main.cc as it is")
