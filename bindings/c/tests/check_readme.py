"""c_abi.readme_example: bindings/c/README.md shows the example program as
it is (a test builds and runs it), so the README cannot drift from code
that compiles.

    check_readme.py README EXAMPLE
"""
import sys


def main():
    readme, example = sys.argv[1], sys.argv[2]
    with open(readme, encoding="utf-8") as f:
        text = f.read()
    with open(example, encoding="utf-8") as f:
        code = f.read()
    if f"```c\n{code}```\n" not in text:
        print(f"{readme}: the ```c block differs from {example}; paste the "
              "file into it again")
        return 1
    print(f"{readme} shows {example} as it is")
    return 0


if __name__ == "__main__":
    sys.exit(main())
