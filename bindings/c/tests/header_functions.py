"""The functions include/delegate/c.h declares, for the c_abi tests.

A declaration is `DELEGATE_C_EXPORT <return type> delegate_NAME(`: every
function of the header is marked so, which is also what makes it visible
from libdelegate_c.so. Anything else that looks like a function
declaration is an error, so a function cannot be added without the mark.
"""
import re
import sys


def header_functions(header_path):
    with open(header_path, encoding="utf-8") as f:
        text = f.read()
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    marked = re.findall(r"DELEGATE_C_EXPORT\s+[^;{}()]*?\b(delegate_\w+)\s*\(",
                        text)
    # Every "delegate_x(" at the start of a declaration, marked or not.
    declared = set(re.findall(r"\b(delegate_\w+)\s*\(", text))
    # Callback parameters: "(*name)(" are not functions of the header.
    declared -= set(re.findall(r"\(\s*\*\s*(delegate_\w+)\s*\)", text))
    unmarked = declared - set(marked)
    if unmarked:
        sys.exit(f"{header_path}: declared without DELEGATE_C_EXPORT: "
                 + ", ".join(sorted(unmarked)))
    if len(set(marked)) != len(marked):
        sys.exit(f"{header_path}: a function is declared twice")
    return marked


if __name__ == "__main__":
    for name in header_functions(sys.argv[1]):
        print(name)
