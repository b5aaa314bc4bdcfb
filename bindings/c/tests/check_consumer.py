"""c_abi.consumer_lists_every_function: the C11 consumer takes the address
of exactly the functions delegate/c.h declares.

    check_consumer.py HEADER CONSUMER
"""
import subprocess
import sys

from header_functions import header_functions


def main():
    header, consumer = sys.argv[1], sys.argv[2]
    declared = set(header_functions(header))
    listed = subprocess.run([consumer, "--list"], check=True,
                            capture_output=True, text=True).stdout.split()
    problems = []
    for name in sorted(declared - set(listed)):
        problems.append(f"{name}: declared in {header} but not in the "
                        "consumer's list (add it to bindings/c/tests/consumer.c)")
    for name in sorted(set(listed) - declared):
        problems.append(f"{name}: in the consumer's list but not declared in "
                        f"{header}")
    if len(set(listed)) != len(listed):
        problems.append("the consumer lists a function twice")
    for p in problems:
        print(p)
    if problems:
        return 1
    print(f"the consumer takes the address of all {len(declared)} functions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
