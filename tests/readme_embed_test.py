#!/usr/bin/env python3
"""The README's embedding programs are the example files, to the letter:
examples/embed/main.cc (CI compiles and runs it every way in
scripts/embed-test.sh), bindings/c/example/run_stage.c (c_abi.example and
embed-test) and bindings/python/examples/example.py (python.*).
usage: readme_embed_test.py SOURCE_DIR"""
import re
import sys

root = sys.argv[1]
readme = open(f"{root}/README.md").read()
failed = False
for language, path in (("cpp", "examples/embed/main.cc"),
                       ("c", "bindings/c/example/run_stage.c"),
                       ("python", "bindings/python/examples/example.py")):
    program = open(f"{root}/{path}").read()
    blocks = re.findall(rf"```{language}\n(.*?)```", readme, re.S)
    if program not in blocks:
        print(f"README.md: no ```{language} block is {path} as it is; "
              "paste the file again", file=sys.stderr)
        failed = True
    else:
        print(f"README.md shows {path} as it is")
sys.exit(1 if failed else 0)
