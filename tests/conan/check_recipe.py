#!/usr/bin/env python3
"""Checks conan/conanfile.py offline (Conan is not installable here).

- Both recipes compile.
- Imported with the stand-in `conan` package in tests/conan/stub, the
  recipe's package_info declares one component per target of the CMake
  export (delegate::core ... delegate::delegate, delegate::proto), named
  as those targets, each requiring the libdelegate targets that target links.
- Its generate() turns the apps, tests and benchmarks off and uses
  CMakeToolchain, CMakeDeps and PkgConfigDeps; layout() is cmake_layout.
- Each requirement's version range holds the version Debian installed here.

usage: check_recipe.py SOURCE_DIR BUILD_DIR
"""
import glob
import importlib.util
import os
import py_compile
import re
import subprocess
import sys

problems = []


def problem(text):
    problems.append(text)
    print(f"check_recipe: {text}", file=sys.stderr)


def load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def export_targets(build_dir):
    """{name: [libdelegate targets it links]} from the CMake export."""
    found = glob.glob(os.path.join(build_dir, "libdelegate", "CMakeFiles",
                                   "Export", "*", "libdelegateTargets.cmake"))
    if not found:
        problem(f"no libdelegateTargets.cmake under {build_dir}: configure it")
        return {}
    text = open(found[0]).read()
    targets = {}
    for name in re.findall(r"add_library\(delegate::(\w+) ", text):
        targets[name] = []
    for name, body in re.findall(
            r"set_target_properties\(delegate::(\w+) PROPERTIES(.*?)\n\)",
            text, re.S):
        links = re.search(r'INTERFACE_LINK_LIBRARIES "([^"]*)"', body)
        if links:
            targets[name] = sorted(set(
                re.findall(r"delegate::(\w+)", links.group(1))))
    return targets


def debian_version(package):
    out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package],
                         capture_output=True, text=True)
    if out.returncode != 0:
        return None
    version = out.stdout.split(":")[-1]          # epoch
    version = re.split(r"[-+~]", version)[0]     # Debian revision, dfsg
    return version


def as_tuple(version):
    return tuple(int(p) for p in re.findall(r"\d+", version))


def in_range(version, spec):
    """spec: '[>=a <b]' or a plain version."""
    m = re.fullmatch(r"\[(.*)\]", spec)
    if not m:
        return as_tuple(version) == as_tuple(spec)
    for clause in m.group(1).split():
        op, bound = re.fullmatch(r"(>=|<=|>|<|=)?(.+)", clause).groups()
        v, b = as_tuple(version), as_tuple(bound)
        ok = {">=": v >= b, "<=": v <= b, ">": v > b, "<": v < b,
              "=": v == b, None: v == b}[op]
        if not ok:
            return False
    return True


DEBIAN = {  # recipe requirement -> Debian package installed here
    "abseil": "libabsl-dev",
    "protobuf": "libprotobuf-dev",
    "grpc": "libgrpc++-dev",
    "libcurl": "libcurl4-openssl-dev",
    "openssl": "libssl-dev",
    "libyaml": "libyaml-dev",
    "rapidjson": "rapidjson-dev",
}


def main():
    source, build = sys.argv[1], sys.argv[2]
    recipe = os.path.join(source, "conan", "conanfile.py")
    test_recipe = os.path.join(source, "conan", "test_package", "conanfile.py")
    for path in (recipe, test_recipe):
        try:
            py_compile.compile(path, doraise=True)
        except py_compile.PyCompileError as e:
            problem(f"{path} does not compile: {e}")
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "stub"))
    import conan.tools.cmake as stub_cmake  # noqa: E402

    module = load(recipe, "libdelegate_recipe")
    targets = export_targets(build)
    for shared in (False, True):
        conanfile = module.LibdelegateConan(options={"shared": shared})
        conanfile.layout()
        conanfile.requirements()
        conanfile.build_requirements()
        conanfile.generate()
        conanfile.package_info()
        components = conanfile.cpp_info.components
        kind = "shared" if shared else "static"
        if set(components) != set(targets):
            problem(f"{kind}: components {sorted(components)} differ from "
                    f"the CMake targets {sorted(targets)}")
        for name, component in components.items():
            target = component.properties.get("cmake_target_name")
            if target != f"delegate::{name}":
                problem(f"{kind}: component {name} is named {target}, not "
                        f"delegate::{name}")
            own = sorted(r for r in component.requires if "::" not in r)
            if not shared and name in targets and own != targets[name]:
                problem(f"static: component {name} requires {own}; its CMake "
                        f"target links {targets[name]}")
        if components.get("c") and components["c"].libs != ["delegate_c"]:
            problem(f"{kind}: delegate::c is not libdelegate_c.so")
        if shared and components["delegate"].libs != ["delegate"]:
            problem("shared: delegate::delegate is not libdelegate.so")
        if not shared:
            for name, component in components.items():
                want = "delegate_proto" if name == "proto" else f"delegate_{name}"
                if component.libs != [want]:
                    problem(f"static: component {name} links {component.libs}, "
                            f"not [{want}]")
    variables = conanfile.toolchain.cache_variables
    for option in ("DELEGATE_BUILD_APPS", "DELEGATE_BUILD_TESTS",
                   "DELEGATE_BUILD_BENCH"):
        if variables.get(option) is not False:
            problem(f"generate() does not turn {option} off")
    for generator in ("CMakeToolchain", "CMakeDeps", "PkgConfigDeps"):
        if generator not in stub_cmake.generated:
            problem(f"generate() does not use {generator}")
    if variables.get("DELEGATE_BUILD_C") is not True:
        problem("generate() does not build the C API (DELEGATE_BUILD_C)")
    if not getattr(conanfile, "layout_called", False):
        problem("layout() does not call cmake_layout")
    for ref, _ in conanfile.required:
        name, spec = ref.split("/", 1)
        package = DEBIAN.get(name)
        if package is None:
            problem(f"requirement {ref}: no Debian package to hold it against")
            continue
        version = debian_version(package)
        if version is None:
            problem(f"requirement {ref}: {package} is not installed")
        elif not in_range(version, spec):
            problem(f"requirement {ref} does not hold Debian's {package} "
                    f"{version}")
        else:
            print(f"check_recipe: {ref} holds Debian's {package} {version}")

    test_module = load(test_recipe, "libdelegate_test_recipe")
    test = test_module.LibdelegateTestConan()
    test.requirements()
    if test.required != [("libdelegate/0.1.0", {})]:
        problem(f"test_package requires {test.required}")
    consumer = os.path.join(source, "conan", "test_package", "CMakeLists.txt")
    if "examples/embed/main.cc" not in open(consumer).read():
        problem("test_package does not build examples/embed/main.cc")

    if problems:
        return 1
    print(f"check_recipe: the recipe matches the CMake export "
          f"({', '.join(sorted(targets))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
