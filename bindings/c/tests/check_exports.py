"""c_abi.exports: libdelegate_c.so exports exactly the functions of
delegate/c.h, and its SONAME carries the major version.

    check_exports.py HEADER LIBRARY SONAME

Every defined dynamic symbol (nm -D --defined-only) must be a function the
header declares, and every function the header declares must be defined.
The C++ library inside, and what it takes from headers (templates, inline
functions, type info, vtables), must not show: the version script keeps it
all local.
"""
import re
import subprocess
import sys

from header_functions import header_functions


def main():
    header, library, soname = sys.argv[1:4]
    declared = set(header_functions(header))
    nm = subprocess.run(["nm", "-D", "--defined-only", library], check=True,
                        capture_output=True, text=True).stdout
    exported = {}
    for line in nm.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        kind, name = fields[1], fields[2]
        exported[name.split("@")[0]] = kind
    problems = []
    for name in sorted(declared - exported.keys()):
        problems.append(f"{name}: declared in {header} but not exported")
    for name, kind in sorted(exported.items()):
        if name not in declared:
            problems.append(f"{name} ({kind}): exported but not declared in "
                            f"{header}")
        elif kind != "T":
            problems.append(f"{name}: exported as '{kind}', not a function")
    dynamic = subprocess.run(["readelf", "-d", library], check=True,
                             capture_output=True, text=True).stdout
    found = re.search(r"\(SONAME\)\s+Library soname: \[([^\]]+)\]", dynamic)
    if not found or found.group(1) != soname:
        problems.append(f"SONAME: expected {soname}, got "
                        f"{found.group(1) if found else 'none'}")
    for p in problems:
        print(p)
    if problems:
        return 1
    print(f"{library}: exports exactly the {len(declared)} functions of "
          f"{header}; SONAME {soname}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
